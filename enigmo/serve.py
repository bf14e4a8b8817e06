"""Start daphne with Enigmo's WebSocket limits taken from settings, so a frame over
MAX_WS_FRAME_BYTES is refused by the protocol layer itself (close 1009) before any consumer
sees it, a dead peer is dropped by keepalive pings within a minute (WS_PING_INTERVAL_SECONDS +
WS_PING_TIMEOUT_SECONDS), and a socket is closed after WS_MAX_AGE_SECONDS (the client reconnects).

    python -m enigmo.serve -b 127.0.0.1 -p 8000 [other daphne options]
"""

from __future__ import annotations

import os
import sys
import time


def daphne_arguments(argv: list[str]) -> list[str]:
    from django.conf import settings

    return [
        "--websocket-max-message-size", str(settings.MAX_WS_FRAME_BYTES),
        "--ping-interval", str(settings.WS_PING_INTERVAL_SECONDS),
        "--ping-timeout", str(settings.WS_PING_TIMEOUT_SECONDS),
        "--websocket_timeout", str(settings.WS_MAX_AGE_SECONDS),
        *argv,
        "enigmo.asgi:application",
    ]


def _close_cleanly_on_protocol_errors() -> None:
    """autobahn drops the TCP connection on a protocol violation (the client sees 1006); with
    failByDrop off it sends the close code first, so an oversized frame is reported as 1009."""
    from daphne.ws_protocol import WebSocketFactory

    original = WebSocketFactory.setProtocolOptions

    def set_options(self, **options):  # type: ignore[no-untyped-def]
        options.setdefault("failByDrop", False)
        return original(self, **options)

    WebSocketFactory.setProtocolOptions = set_options  # type: ignore[method-assign]


def _allow_protocol_close_codes() -> None:
    """autobahn lets an application close only with 1000 or 3000–4999, but RFC 6455 lets a
    server end a socket with 1008 (policy violation: a frame flood) or 1009 (too big); those
    two are sent as close frames directly. After a 1008 the server parses nothing more from
    that peer: parsing the rest of a flood would stall every other socket on the process. It
    still reads (and drops) what arrives, so the flooder is not left blocked on a full send
    buffer, and the connection is dropped only after FLOOD_CLOSE_SECONDS (its close reply goes
    unseen among the dropped bytes): closing while the flooder still sends would answer its
    data with a reset, which discards the error and close frames it has not read yet."""
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.serverClose

    def server_close(self, code=None):  # type: ignore[no-untyped-def]
        if code == 1008:
            self.closeHandshakeTimeout = FLOOD_CLOSE_SECONDS
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
            self.dataReceived = _discard  # the rest of the flood is read and dropped unparsed
        elif code == 1009:
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
        else:
            original(self, code)

    WebSocketProtocol.serverClose = server_close  # type: ignore[method-assign]


FLOOD_CLOSE_SECONDS = 5


def _discard(data: bytes) -> None:
    return None


def _no_colour_for_discarded_debug_lines() -> None:
    """autobahn builds the arguments of a debug log line (coloured names through click.style)
    for every frame it sends, even though the line is dropped below DEBUG: a few percent of
    the server's CPU under load. Unless debug logging is on, those argument builders hand
    their argument back unchanged."""
    import logging

    if logging.getLogger("autobahn").isEnabledFor(logging.DEBUG) or os.environ.get("ENIGMO_LOG_LEVEL", "").upper() == "DEBUG":
        return
    import autobahn.twisted.websocket
    import autobahn.websocket.protocol

    for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
        for name in ("hl", "hltype", "hlval"):
            if hasattr(module, name):
                setattr(module, name, _plain)


def _plain(value, *args, **kwargs):  # type: ignore[no-untyped-def]
    return value


def _write_now_when_nothing_is_queued() -> None:
    """Twisted queues every write and sends it on a later turn of the loop: it registers the
    socket for writability, waits for the selector to say so, writes, and unregisters it (two
    epoll_ctl calls and a reactor dispatch per frame sent, about a sixth of the relay's event
    loop under load). When nothing is queued ahead of it, the data goes to the socket at once,
    as asyncio's own transports do; whatever the kernel does not take, and every error, takes
    the queued path, so order and error handling stay twisted's."""
    from twisted.internet import tcp

    queued = tcp.Connection.write

    def write(self, data):  # type: ignore[no-untyped-def]
        if (
            self.TLS or self.dataBuffer or self._tempDataBuffer or not self.connected or self.disconnecting
            or self._writeDisconnected or type(data) is not bytes or not data
        ):
            return queued(self, data)
        sent = self.writeSomeData(data)
        if isinstance(sent, Exception) or sent < 0:
            return queued(self, data)  # nothing was written: the queued path reports the loss
        if sent < len(data):
            queued(self, data[sent:])
        return None

    tcp.Connection.write = write  # type: ignore[method-assign]


def _dispatch_without_a_log_context() -> None:
    """The asyncio reactor calls every read and write through twisted's legacy callWithLogger,
    which builds a log-context dictionary for each call (its "system" prefix for twisted's own
    log lines, which Enigmo does not use): about 5 % of the event loop under load. The
    replacement keeps what matters, an exception from a callback is logged, not raised."""
    from twisted.internet import asyncioreactor
    from twisted.python import log

    def call_logging_errors(selectable, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system="-")

    asyncioreactor.callWithLogger = call_logging_errors  # type: ignore[attr-defined]


def _unmask(key: bytes, payload: bytes) -> bytes:
    """RFC 6455 masking: `payload` XOR the 4-byte `key` repeated, in one C-level operation."""
    n = len(payload)
    return (int.from_bytes(payload, "little") ^ int.from_bytes((key * ((n >> 2) + 1))[:n], "little")).to_bytes(n, "little")


class IntMasker:
    """RFC 6455 (un)masking of one frame's payload with Python's integers: the payload XOR the
    4-byte key repeated, in one C-level operation. autobahn's native masker allocates two cffi
    buffers and a C object for every frame and copies the payload twice; for the relay's
    frames (a few hundred bytes) that was ~4 % of the event loop. process() may be called
    with the payload in pieces (a frame split across reads): the key rotates with pointer()."""

    __slots__ = ("_key", "_at")

    def __init__(self, mask: bytes, length: int | None = None) -> None:
        self._key = bytes(mask)
        self._at = 0

    def pointer(self) -> int:
        return self._at

    def reset(self) -> None:
        self._at = 0

    def process(self, data: bytes) -> bytes:
        turn = self._at & 3
        self._at += len(data)
        return _unmask(self._key[turn:] + self._key[:turn], data)


def _mask_with_integers() -> None:
    import autobahn.websocket.protocol

    autobahn.websocket.protocol.create_xor_masker = IntMasker  # type: ignore[attr-defined]


def _read_whole_text_frames_directly() -> None:
    """autobahn parses every frame through a state machine of about a dozen calls (frame begin,
    data and end, message begin, frame and end, UTF-8 validator, a txaio event fired per
    message): about a tenth of the relay's event loop under load, for frames that are almost
    all one whole, masked, unfragmented text frame of a few hundred bytes. Such a frame, when
    it is wholly in the buffer, within the size caps and valid UTF-8, goes straight to the
    application's queue, as daphne's onMessage would put it. Anything else (a fragment, a
    control or binary frame, a frame still arriving, one over a cap, invalid UTF-8, a closing
    or muted socket) takes autobahn's own path, which answers it exactly as before."""
    from autobahn.websocket.protocol import WebSocketProtocol as Base
    from daphne.ws_protocol import WebSocketProtocol

    parse = Base.processData
    open_state = Base.STATE_OPEN

    def process_data(self):  # type: ignore[no-untyped-def]
        data = self.data
        if (
            self.current_frame is None and len(data) >= 6 and data[0] == 0x81 and self.state == open_state
            and not self.inside_message and self._perMessageCompress is None and not self.failedByMe
            and not self.muted and not self.logFrames and not self.trackedTimings
        ):
            n = data[1] ^ 0x80  # masked (as a client's frames must be): the length; unmasked: > 127
            if n < 126:
                start = 6
            elif n == 126 and len(data) >= 8:
                n, start = int.from_bytes(data[2:4], "big"), 8
                if n < 126:  # not the minimal encoding: autobahn's path fails it
                    return parse(self)
            else:
                return parse(self)
            end = start + n
            if len(data) >= end and not 0 < self.maxMessagePayloadSize < n and not 0 < self.maxFramePayloadSize < n:
                try:
                    text = _unmask(data[start - 4 : start], data[start:end]).decode("utf-8")
                except UnicodeDecodeError:
                    return parse(self)  # closes with 1007, as before
                self.data = data[end:]
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()
                self.last_ping = time.time()
                self.application_queue.put_nowait({"type": "websocket.receive", "text": text})
                return len(self.data) > 0
        return parse(self)

    WebSocketProtocol.processData = process_data  # type: ignore[method-assign]


def _send_text_frames_directly() -> None:
    """The reverse: a text message to an open socket with nothing queued ahead of it is framed
    here (RFC 6455: FIN and text opcode, the length, no mask from a server) and written, instead
    of through sendMessage, sendFrame and sendData with their per-call checks, counters and
    debug-log calls. Anything else takes autobahn's path."""
    from autobahn.websocket.protocol import WebSocketProtocol as Base
    from daphne.ws_protocol import WebSocketProtocol

    send = WebSocketProtocol.serverSend
    open_state, ground = Base.STATE_OPEN, Base.SEND_STATE_GROUND

    def server_send(self, content, binary=False):  # type: ignore[no-untyped-def]
        if (
            not binary and self.state == open_state and self.send_state == ground and not self.send_queue
            and self._perMessageCompress is None and not self.logFrames and not self.trackedTimings
            and not self.maskServerFrames and not self.autoFragmentSize
        ):
            payload = content.encode("utf8")
            n = len(payload)
            if not 0 < self.maxMessagePayloadSize < n:
                if n < 126:
                    header = bytes((0x81, n))
                elif n < 65536:
                    header = b"\x81\x7e" + n.to_bytes(2, "big")
                else:
                    header = b"\x81\x7f" + n.to_bytes(8, "big")
                self.transport.write(header + payload)
                return
        send(self, content, binary)

    WebSocketProtocol.serverSend = server_send  # type: ignore[method-assign]


YOUNG_THRESHOLD = 100_000


def _settle_the_heap() -> None:
    """Load the application, then move everything alive at start-up (Django, DRF, the URL
    conf: a few hundred thousand objects) out of the collector's reach with gc.freeze(), and
    collect the young generation less often. A full collection otherwise walks every one of
    those objects again, stalling every socket for tens of milliseconds at a time under load.

    A young collection walks every young object still alive, and under load most of those are
    the messages in flight (their coroutines, futures and frames: ~25,000 objects at 1,000
    sockets in a closed loop), while almost everything else is freed by reference counting and
    never reaches the collector. At a threshold of 10,000 the collector ran six times a second
    there and walked that same in-flight state each time, ~10 % of the process (measured with
    gc.callbacks); at 100,000 it runs a few times a run. What it still finds (garbage in
    cycles) waits at most that many allocations longer."""
    import gc

    import enigmo.asgi  # noqa: F401 - what daphne will serve, imported once here

    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enigmo.settings")
    import django

    django.setup()
    from daphne.cli import CommandLineInterface

    _settle_the_heap()

    _close_cleanly_on_protocol_errors()
    _allow_protocol_close_codes()
    _no_colour_for_discarded_debug_lines()
    _write_now_when_nothing_is_queued()
    _dispatch_without_a_log_context()
    _mask_with_integers()
    _read_whole_text_frames_directly()
    _send_text_frames_directly()
    CommandLineInterface().run(daphne_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
