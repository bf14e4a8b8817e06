"""The relay's WebSocket framing on a live server, byte by byte. enigmo.serve reads whole text
frames and writes text messages itself, and leaves everything else to autobahn: frames split
across reads or several in one read, 7-, 16- and 64-bit lengths both ways, a fragmented
message with a ping between its fragments are all answered as RFC 6455 says, and what
autobahn refuses (invalid UTF-8, a non-minimal length, an unmasked client frame) is still
refused with its close code."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
import time
from typing import Any

import pytest

from tests.support import Account, HttpTransport

pytestmark = pytest.mark.live


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True, masked: bool = True, wide: bool = False) -> bytes:
    """One client frame: masked (as clients must), the length in its minimal encoding unless
    `wide` asks for the 16-bit form whatever the length."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    flag = 0x80 if masked else 0
    if n < 126 and not wide:
        head += bytes([flag | n])
    elif n < 65536:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A WebSocket client written out by hand, so the test decides where the bytes split."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Token {token}\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("the server closed the connection")
        return data

    def frame(self) -> tuple[bool, int, bytes]:
        """The next server frame: (fin, opcode, payload)."""
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "a server frame is never masked"
                n, at = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, at = struct.unpack("!H", self.buf[2:4])[0], 4
                    assert n >= 126, "a 16-bit length in its minimal encoding"
                elif n == 127 and len(self.buf) >= 10:
                    n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
                    assert n >= 65536, "a 64-bit length in its minimal encoding"
                if (b1 & 0x7F) < 126 or at > 2:
                    if len(self.buf) >= at + n:
                        payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
                        return bool(b0 & 0x80), b0 & 0x0F, payload
            self.buf += self._recv()

    def reply(self, kind: str) -> dict[str, Any]:
        """The next JSON text frame of type `kind` (presence and the like are skipped)."""
        while True:
            fin, opcode, payload = self.frame()
            assert opcode == 1 and fin, (opcode, payload[:100])
            message = json.loads(payload)
            if message["type"] == kind:
                return message

    def close_code(self) -> int:
        """The code of the server's close frame (text frames before it are skipped)."""
        while True:
            _, opcode, payload = self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    from tests.live import drop_database, start_live_server

    server = start_live_server({})
    account = Account("alice")
    account.register(HttpTransport(server.http_url))
    yield server, account
    server.stop()
    drop_database(server.database_url)


def _open(relay: Any) -> RawSocket:
    server, account = relay
    ws = RawSocket(server.port, account.token)
    assert ws.reply("backlog")["has_more"] is False
    return ws


def _ping(ref: str) -> bytes:
    return client_frame(json.dumps({"type": "ping", "ref": ref}).encode())


def test_frames_in_any_pieces_and_of_every_length_are_answered_in_order(relay):
    ws = _open(relay)
    refs = ["a", "b" * 300, "c", "d" * 70_000, "é" * 50]  # 7-, 16- and 64-bit lengths both ways
    stream = b"".join(_ping(ref) for ref in refs)
    rng = random.Random(6455)
    at = 0
    while at < len(stream):  # split anywhere: inside headers, masks and payloads
        step = rng.choice([1, 2, 3, 7, 50, 1000])
        ws.send(stream[at : at + step])
        at += step
        if step < 10:
            time.sleep(0.002)  # so the pieces arrive in reads of their own
    assert [ws.reply("pong")["ref"] for _ in refs] == refs
    ws.send(stream)  # and all of them in one write
    assert [ws.reply("pong")["ref"] for _ in refs] == refs
    ws.close()


def test_a_fragmented_message_with_a_ping_between_its_fragments(relay):
    ws = _open(relay)
    text = json.dumps({"type": "ping", "ref": "in pieces"}).encode()
    ws.send(client_frame(text[:10], opcode=1, fin=False) + client_frame(b"are you there", opcode=9) + client_frame(text[10:], opcode=0))
    fin, opcode, payload = ws.frame()
    assert (fin, opcode, payload) == (True, 10, b"are you there")  # the pong control frame first
    assert ws.reply("pong")["ref"] == "in pieces"
    ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(b'{"type": "ping", "ref": "\xff"}'), 1007),  # not UTF-8
        (client_frame(b'{"type": "ping"}', wide=True), 1002),  # 16 bytes with a 16-bit length
        (client_frame(b'{"type": "ping"}', masked=False), 1002),  # a client frame must be masked
    ],
    ids=["invalid-utf8", "non-minimal-length", "unmasked"],
)
def test_frames_autobahn_refuses_are_still_refused(relay, frame, code):
    ws = _open(relay)
    ws.send(_ping("before"))
    assert ws.reply("pong")["ref"] == "before"
    ws.send(frame + _ping("after"))
    assert ws.close_code() == code
    ws.close()
