"""enigmo.serve's changes to twisted's hot path. The direct write: a frame goes to the socket at
once when nothing is queued, and what the kernel does not take (or an error) goes through
twisted's queue, in order. The dispatch without a log context: a failing callback is logged,
never raised into the loop. The integer masker: RFC 6455's unmasking, also across pieces. The
relay's direct send: a frame reaches daphne's socket only while that socket is open."""

from __future__ import annotations

import os
import random
import signal
import socket

import pytest
from twisted.internet import asyncioreactor, main, tcp
from twisted.python import log

from enigmo.serve import IntMasker, _dispatch_without_a_log_context, _write_now_when_nothing_is_queued


class Reactor:
    """Just what a twisted FileDescriptor asks of its reactor here: who wants to write."""

    def __init__(self) -> None:
        self.writers: list[object] = []

    def addWriter(self, writer: object) -> None:  # noqa: N802 - twisted's interface
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: object) -> None:  # noqa: N802
        if writer in self.writers:
            self.writers.remove(writer)


@pytest.fixture
def link(monkeypatch):
    monkeypatch.setattr(tcp.Connection, "write", tcp.Connection.write)  # restored after the test
    # as in the server process (Python ignores SIGPIPE at start-up; a library in the test run may not)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _write_now_when_nothing_is_queued()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    reactor = Reactor()
    connection = tcp.Connection(ours, None, reactor)
    connection.connected = 1
    yield connection, peer, reactor
    ours.close()
    peer.close()
    signal.signal(signal.SIGPIPE, previous)


def _read_all(peer: socket.socket, size: int, connection: tcp.Connection, reactor: Reactor) -> bytes:
    got = bytearray()
    peer.settimeout(2)
    while len(got) < size:
        if reactor.writers:  # the reactor's turn: the queued rest goes out as the peer reads
            assert connection.doWrite() is None
        got += peer.recv(1 << 20)
    return bytes(got)


def test_a_small_frame_is_on_the_socket_before_the_loop_turns(link):
    connection, peer, reactor = link
    connection.write(b"frame one")
    assert reactor.writers == []  # nothing waits for writability
    peer.settimeout(1)
    assert peer.recv(100) == b"frame one"


def test_what_the_kernel_does_not_take_is_queued_and_everything_arrives_in_order(link):
    connection, peer, reactor = link
    big = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold
    connection.write(big)
    assert reactor.writers == [connection]  # the rest waits for writability
    connection.write(b"after")  # queued behind the rest, never ahead of it
    assert _read_all(peer, len(big) + 5, connection, reactor) == big + b"after"
    assert reactor.writers == []
    connection.write(b"direct again")
    assert peer.recv(100) == b"direct again"


def test_a_write_to_a_closed_peer_reports_the_lost_connection(link):
    connection, peer, reactor = link
    peer.close()
    connection.write(b"x" * 100)  # nothing written: it takes the queued path
    assert reactor.writers == [connection]
    assert connection.doWrite() is main.CONNECTION_LOST


def test_the_reactor_dispatch_returns_the_callbacks_result_and_logs_its_failure(monkeypatch):
    monkeypatch.setattr(asyncioreactor, "callWithLogger", asyncioreactor.callWithLogger)  # restored after
    _dispatch_without_a_log_context()
    logged = []
    monkeypatch.setattr(log, "err", lambda *args, **kwargs: logged.append(kwargs))
    assert asyncioreactor.callWithLogger(object(), lambda a, b: a + b, 2, b=3) == 5

    def broken():
        raise RuntimeError("callback failed")

    assert asyncioreactor.callWithLogger(object(), broken) is None
    assert len(logged) == 1
    with pytest.raises(KeyboardInterrupt):
        asyncioreactor.callWithLogger(object(), lambda: (_ for _ in ()).throw(KeyboardInterrupt()))


def test_the_integer_masker_unmasks_rfc_6455s_example_and_any_payload_in_any_pieces():
    masked_hello = bytes.fromhex("7f9f4d5158")  # RFC 6455 section 5.7, key 37 fa 21 3d
    assert IntMasker(bytes.fromhex("37fa213d")).process(masked_hello) == b"Hello"
    rng = random.Random(6455)
    for _ in range(300):
        key, payload = os.urandom(4), os.urandom(rng.randrange(0, 5000))
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        masker, out, at = IntMasker(key, len(payload)), b"", 0
        while at < len(payload):  # a frame split across reads, at arbitrary offsets
            step = rng.randrange(1, 700)
            out += masker.process(memoryview(payload)[at : at + step])
            at += step
        assert out == expected and masker.pointer() == len(payload)
        masker.reset()
        assert masker.pointer() == 0 and masker.process(payload[:3]) == expected[:3]
    assert IntMasker(b"abcd").process(b"") == b""


class Protocol:
    """What daphne's server and the relay's direct send ask of a WebSocket protocol."""

    STATE_OPEN, STATE_CLOSING = 1, 2

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.frames: list[str] = []  # written straight to the socket
        self.replies: list[dict] = []  # handed to daphne's reply path

    def serverSend(self, content: str, binary: bool = False) -> None:  # noqa: N802 - autobahn's name
        assert not binary
        self.frames.append(content)

    def handle_reply(self, message: dict) -> None:
        self.replies.append(message)


async def test_a_relay_frame_goes_to_daphnes_socket_only_while_it_is_open():
    """A token socket's frames skip Channels' and daphne's reply coroutines, but only to an open
    socket daphne still holds: one closing goes through daphne's own reply path (which refuses
    it there), and to one daphne has seen disconnect nothing is written."""
    from functools import partial

    from daphne.server import Server

    from messaging.consumers import RelayConsumer, _daphne_connection

    server = Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"], signal_handlers=False)
    protocol = Protocol()
    server.connections = {protocol: {}}
    consumer = RelayConsumer()
    consumer.base_send = partial(server.handle_reply, protocol)
    consumer.direct = _daphne_connection(consumer.base_send)
    assert consumer.direct == (server, protocol)
    assert _daphne_connection(partial(Protocol.handle_reply, protocol)) is None  # not daphne's: the ASGI send

    await consumer.send_text('{"type":"sent"}')
    assert protocol.frames == ['{"type":"sent"}'] and protocol.replies == []

    protocol.state = Protocol.STATE_CLOSING
    await consumer.send_text('{"type":"receipt"}')
    assert protocol.frames == ['{"type":"sent"}']
    assert protocol.replies == [{"type": "websocket.send", "text": '{"type":"receipt"}'}]

    server.connections[protocol]["disconnected"] = 1.0
    protocol.state = Protocol.STATE_OPEN
    await consumer.send_text('{"type":"envelope"}')
    assert protocol.frames == ['{"type":"sent"}'] and len(protocol.replies) == 1
