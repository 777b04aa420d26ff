"""The sidecar's own relay for the gateway's RPC WebSocket, in place of mitmproxy's layer.

mitmproxy's WebsocketLayer parses and re-serialises every frame of both directions and starts a
hook task per message: about 93% of the cost of a judged frame. Here client frames are read
strictly (RFC 6455) and each message is judged inline, the hook machinery used only when the
judge really waits (the limiter's store, the loopback failure delay); gateway bytes pass through
raw, only their frame boundaries tracked, so that whatever the sidecar says to the client lands
between whole gateway messages. The policy stays in sidecar/rpc.py: this module only translates
frames to and from it, and fails closed (1011) on any error of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.commands import StartHook
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.websocket import WebsocketEndHook, WebsocketStartHook
from mitmproxy.proxy.utils import expect

from sidecar.metrics import INTERNAL_ERRORS
from sidecar.rpc import RPC_MAX_MESSAGE_BYTES, FrameVerdict, RpcSession

from .coroutines import resume

log = logging.getLogger("sidecar.adapter")

RELAYED = "openclaw_sidecar.ws_relayed"
# Set when a close is asked for (timer, reload, drain): a relay paused on a verdict reads it before
# its CloseRequest, queued behind the pause, arrives.
WS_CLOSING = "openclaw_sidecar.ws_closing"
CLOSE_LINGER_SECONDS = 0.25  # after our close frame, before the socket closes: the client reads it first
CLOSE_DEADLINE_SECONDS = 1.0  # the longest our close frame waits for a gateway message to end

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (TEXT, BINARY)
# What a held continuation frame costs beyond its payload (two bytes objects, two list slots),
# rounded up: counted against a message's limit, so no message holds more than about twice it.
FRAGMENT_CHARGE = 128
_MOST_HELD = RPC_MAX_MESSAGE_BYTES + 14  # a whole gateway message and its frame header
_CONTROL = (CLOSE, PING, PONG)
_ZERO_MASK = b"\0\0\0\0"
# Close codes a peer may send (RFC 6455 §7.4; 1004-1006 and 1015 never go on the wire).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def extensions(flow: http.HTTPFlow) -> str:
    """The extensions the 101 negotiated: a relay that reads frames raw cannot take any (the
    gateway negotiates none; such a flow keeps mitmproxy's layer)."""
    return flow.response.headers.get("Sec-WebSocket-Extensions", "") if flow.response else ""


def frame(opcode: int, payload: bytes, *, masked: bool = False) -> bytes:
    """One final frame (RFC 6455 §5.2): unmasked toward the client, masked toward the gateway."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes([0x80 | opcode, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key (masking and unmasking are the same), as one big-integer XOR."""
    if key == _ZERO_MASK or not payload:
        return payload
    length = len(payload)
    stream = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's body: the reason cut to 120 bytes at a character boundary, as the gateway
    cuts it (truncateUtf8Prefix); RFC 6455 wants UTF-8 there, and a reason can carry a client's
    own text (an unexpected property's name)."""
    return code.to_bytes(2, "big") + reason.encode()[:120].decode("utf-8", "ignore").encode()


class ProtocolError(Exception):
    """A client frame RFC 6455 does not allow (or over the size limit): closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """A complete client message or control frame, and the frames it came in as sent."""

    opcode: int
    payload: bytes
    raw: list[bytes]


class ClientFrames:
    """Strict reader of client frames: masking required, no RSV bits (no extension is
    negotiated), known opcodes, control frames final and ≤ 125 bytes, continuations only inside a
    fragmented message, minimal lengths, and a message over `limit()` bytes refused (1009) as
    soon as a frame header announces it, before its payload is buffered. Each continuation frame
    counts `FRAGMENT_CHARGE` bytes more, what holding it costs: else empty fragments, which add
    nothing to a message's size, would hold memory without end (about 55 bytes for every 6 sent)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self._buf = b""  # a frame header split across reads (at most 13 bytes)
        self._parts: list[bytes] = []  # a frame whose header has arrived, its chunks so far
        self._have = 0
        self._need = 0
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._payloads: list[bytes] = []
        self._raw: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Message]:
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data, self._parts = b"".join(self._parts), []
        elif self._buf:
            data = self._buf + data
        self._buf = b""
        messages: list[Message] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
                if length < 126:
                    raise ProtocolError(1002, "non-minimal frame length")
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
                if length < 1 << 16 or length >= 1 << 63:
                    raise ProtocolError(1002, "bad frame length")
            fin, opcode = b0 & 0x80, b0 & 0x0F
            counted = self._check_header(b0, b1, fin, opcode, length)
            frame_end = pos + head + 4 + length
            if frame_end > end:
                # Collect the rest in chunks, joined once: re-joining a growing buffer on every
                # read would let a client dripping a frame byte by byte cost quadratic copying.
                self._parts, self._have, self._need = [data[pos:]], end - pos, frame_end - pos
                return messages
            key = data[pos + head:pos + head + 4]
            payload = unmask(data[pos + head + 4:frame_end], key)
            raw = data[pos:frame_end]
            pos = frame_end
            if opcode >= CLOSE:
                messages.append(Message(opcode, payload, [raw]))
                continue
            self._payloads.append(payload)
            self._raw.append(raw)
            self._size += counted
            if opcode:
                self._opcode = opcode
            if fin:
                messages.append(Message(self._opcode, b"".join(self._payloads), self._raw))
                self._opcode, self._payloads, self._raw, self._size = 0, [], [], 0
        self._buf = data[pos:]
        return messages

    def _check_header(self, b0: int, b1: int, fin: int, opcode: int, length: int) -> int:
        """Refuses a frame the rules above forbid; what it counts toward its message's limit."""
        if b0 & 0x70:
            raise ProtocolError(1002, "reserved bits set")
        if not b1 & 0x80:
            raise ProtocolError(1002, "unmasked client frame")
        if opcode >= CLOSE:
            if opcode not in _CONTROL:
                raise ProtocolError(1002, "unknown opcode")
            if not fin or length > 125:
                raise ProtocolError(1002, "fragmented or oversized control frame")
            return 0
        if opcode not in _DATA and opcode != CONTINUATION:
            raise ProtocolError(1002, "unknown opcode")
        if (opcode == CONTINUATION) != bool(self._opcode):
            raise ProtocolError(1002, "unexpected continuation" if opcode == CONTINUATION else "expected a continuation")
        counted = length + (FRAGMENT_CHARGE if opcode == CONTINUATION else 0)
        if self._size + counted > self.limit():
            raise ProtocolError(1009, "message too big")
        return counted


class ServerFrames:
    """Where the gateway's byte stream stands, read from frame headers only: inside a frame,
    between the fragments of a message, or between whole messages (where we may speak)."""

    def __init__(self) -> None:
        self._head = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to pass
        self._fin = True
        self._opcode = 0
        self._fragmented = False
        self.closed = False  # the gateway's close frame has passed

    @property
    def at_boundary(self) -> bool:
        return not self._head and not self._skip and not self._fragmented

    def advance(self, data: bytes, *, stop_at_boundary: bool = False) -> int:
        """Walk over `data` (all of it, or only up to the first point between whole messages when
        `stop_at_boundary`); returns how far it went."""
        pos, end = 0, len(data)
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    return end
                self._frame_done()
            if stop_at_boundary and self.at_boundary or pos >= end:
                return pos
            pos = self._read_head(data, pos)
            if self._head:
                return end
            if not self._skip:
                self._frame_done()

    def _read_head(self, data: bytes, pos: int) -> int:
        had = len(self._head)
        buf = self._head + data[pos:pos + 14]
        if len(buf) < 2:
            self._head = buf
            return len(data)
        length, size = buf[1] & 0x7F, 2
        if length == 126:
            size = 4
        elif length == 127:
            size = 10
        size += 4 if buf[1] & 0x80 else 0
        if len(buf) < size:
            self._head = buf
            return len(data)
        if length == 126:
            length = int.from_bytes(buf[2:4], "big")
        elif length == 127:
            length = int.from_bytes(buf[2:10], "big")
        self._head = b""
        self._fin, self._opcode, self._skip = bool(buf[0] & 0x80), buf[0] & 0x0F, length
        return pos + size - had

    def _frame_done(self) -> None:
        if self._opcode == CLOSE:
            self.closed = True
        elif self._opcode < CLOSE:
            self._fragmented = not self._fin


def whole_server_frame(data: bytes) -> tuple[int, bool, bytes, int] | None:
    """The gateway frame `data` starts with (opcode, final, payload, its size in `data`), or None
    while it has not all arrived."""
    if len(data) < 2:
        return None
    length, masked = data[1] & 0x7F, bool(data[1] & 0x80)  # the gateway never masks; read past a key all the same
    extended = {126: 2, 127: 8}.get(length, 0)
    head = 2 + extended + 4 * masked
    if len(data) < head:
        return None
    if extended:
        length = int.from_bytes(data[2:2 + extended], "big")
    if len(data) < head + length:
        return None
    payload = data[head:head + length]
    if masked:
        payload = unmask(payload, data[head - 4:head])
    return data[0] & 0x0F, bool(data[0] & 0x80), payload, head + length


class PendingVerdict:
    """A judgement that had to wait, finished by the `rpc_verdict` hook while the relay pauses."""

    def __init__(self, coro: Coroutine[Any, Any, FrameVerdict], awaiting: Any) -> None:
        self._coro, self._awaiting = coro, awaiting
        self.verdict: FrameVerdict | None = None
        self.error: BaseException | None = None

    async def finish(self) -> None:
        try:
            self.verdict = await resume(self._coro, self._awaiting)
        except Exception as exc:
            self.error = exc


@dataclass
class RpcVerdictHook(StartHook):
    """A client frame whose judge suspended. The relay layer pauses on it (as on any hook), so
    every later event of the connection waits behind it, in order. One argument: mitmproxy's
    proxy server hands every hook exactly one."""

    pending: PendingVerdict


@dataclass
class CloseRequest(events.MessageInjected[tuple[int, str, "bytes | None"]]):
    """Close a relayed connection from outside its events (connect timer, drain, start failure):
    `message` is (code, reason, answer)."""


@dataclass(frozen=True)
class Judge:
    """What the relay needs from the guard: the flow's RPC session (None: it could not be built,
    and the guard is closing the connection), the message limit now, and its record of each
    verdict (connect timer, audit)."""

    session: Callable[[http.HTTPFlow], RpcSession | None]
    message_limit: Callable[[http.HTTPFlow], int]
    judged: Callable[[http.HTTPFlow, RpcSession, FrameVerdict], None]


def request_close(flow: http.HTTPFlow, code: int, reason: str, answer: bytes | None) -> bool:
    """Ask a relayed flow's layer to close it (False: the flow is not relayed by us)."""
    if not flow.metadata.get(RELAYED):
        return False
    proxyserver = ctx.master.addons.get("proxyserver")
    try:
        proxyserver.inject_event(CloseRequest(flow, (code, reason, answer)))
    except ValueError:
        pass  # the connection is already gone
    return True


class RpcRelay(layer.Layer):
    """Relays one RPC WebSocket: client messages judged, gateway bytes passed through raw."""

    def __init__(self, context: Context, flow: http.HTTPFlow, judge: Judge) -> None:
        super().__init__(context)
        self.flow = flow
        self.judge = judge
        self.client_frames = ClientFrames(lambda: judge.message_limit(flow))
        self.server_frames = ServerFrames()
        self.session: RpcSession | None = None
        self._to_client: list[bytes] = []  # our frames, waiting for a gateway message to end
        self._to_server: list[bytes] = []  # forwarded frames, sent once per read
        self._held = b""  # the gateway's bytes while the connect's answer is awaited
        self._closing = False  # client input is no longer read
        self._close_sent = False  # our close frame is out: nothing of the gateway's follows it
        self._linger = CLOSE_LINGER_SECONDS
        self._deadline = 0.0
        self._closed_by_client = False  # who began the close, for the flow's record
        self._reply_to_server = True  # the gateway gets a close frame from us at the end
        self._queued = 0  # client bytes mitmproxy queued while a verdict waits
        self._overflowed = False  # more than a message's limit arrived while one waited: dropped

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        """While a verdict waits, mitmproxy keeps reading the client and queues what it reads, with
        no bound (a loopback client's failure delay lasts seconds). Past a message's limit what the
        client sends meanwhile is dropped, and the session closes with 1009 once the verdict is in."""
        if not self._paused:
            self._queued = 0
        elif isinstance(event, events.DataReceived) and event.connection == self.context.client:
            self._queued += len(event.data)
            if self._overflowed or self._queued > self.client_frames.limit():
                self._overflowed = True
                return
        yield from super().handle_event(event)

    @expect(events.Start)
    def start(self, _: events.Event) -> layer.CommandGenerator[None]:
        self.flow.metadata[RELAYED] = True
        yield WebsocketStartHook(self.flow)
        self.session = self.judge.session(self.flow)
        self._handle_event = self.relay

    _handle_event = start

    @expect(events.DataReceived, events.ConnectionClosed, events.Wakeup, CloseRequest)
    def relay(self, event: events.Event) -> layer.CommandGenerator[None]:
        try:
            if isinstance(event, events.DataReceived):
                if event.connection == self.context.client:
                    yield from self._from_client(event.data)
                else:
                    yield from self._from_server(event.data)
            elif isinstance(event, CloseRequest):
                yield from self._close(*event.message)
            elif isinstance(event, events.Wakeup) and self._closing:
                # A loop timer may fire a little before time.monotonic() reaches the deadline
                # (uvloop's clock is libuv's, in whole milliseconds), and an older wakeup may
                # arrive after a later deadline was set: either way, wait for what is left.
                left = self._deadline - time.monotonic()
                if left > 0:
                    yield commands.RequestWakeup(left)
                else:
                    yield from self._finish()
            elif isinstance(event, events.ConnectionClosed):
                yield from self._connection_closed(event.connection == self.context.client)
        except Exception:
            INTERNAL_ERRORS.inc()
            log.exception("internal error relaying a WebSocket; connection closed")
            self._to_server.clear()
            yield from self._close(1011, "internal error")

    @expect(events.DataReceived, events.ConnectionClosed, events.Wakeup, CloseRequest)
    def done(self, _: events.Event) -> layer.CommandGenerator[None]:
        yield from ()

    # ---- client → gateway ---------------------------------------------------------------------

    @property
    def _closing_or_asked(self) -> bool:
        return self._closing or bool(self.flow.metadata.get(WS_CLOSING))

    def _from_client(self, data: bytes) -> layer.CommandGenerator[None]:
        if self._closing_or_asked:
            return  # nothing the client sends after a close is relayed
        if self._overflowed:
            yield from self._close(1009, "message too big")
            return
        refused: ProtocolError | None = None
        try:
            messages = self.client_frames.feed(data)
        except ProtocolError as error:
            messages, refused = [], error
        for message in messages:
            if self._closing_or_asked:
                break
            if message.opcode in _DATA:
                yield from self._judge(message)
            elif message.opcode == CLOSE:
                yield from self._client_close(message)
            else:  # ping and pong go on as sent
                self._to_server += message.raw
        if refused is not None and not self._closing:
            yield from self._close(refused.code, refused.reason)
        yield from self._send_to_server()
        yield from self._flush_to_client()

    def _judge(self, message: Message) -> layer.CommandGenerator[None]:
        if message.opcode == TEXT:
            try:
                message.payload.decode("utf-8")
            except UnicodeDecodeError:
                yield from self._close(1007, "invalid UTF-8")
                return
        session = self.session
        if session is None:
            return  # never built: the guard is closing the connection; nothing is relayed unread
        coro = session.client_frame(message.payload)
        try:
            awaiting = coro.send(None)
        except StopIteration as done:
            verdict: FrameVerdict = done.value
        else:  # it waits for something: pause the relay behind a hook until it is decided
            yield from self._send_to_server()
            yield from self._flush_to_client()
            pending = PendingVerdict(coro, awaiting)
            yield RpcVerdictHook(pending)
            if pending.error is not None or pending.verdict is None:
                raise RuntimeError("a suspended frame judgement failed") from pending.error
            verdict = pending.verdict
            if self._closing_or_asked:
                return  # closed while it waited (timer, reload, drain): dropped unrelayed
        if verdict.verdict == "forward":
            self._to_server += message.raw if verdict.payload is None else [frame(message.opcode, verdict.payload, masked=True)]
        elif verdict.verdict == "reply":
            assert verdict.payload is not None
            self._to_client.append(frame(TEXT, verdict.payload))  # the gateway answers in text, always
        elif verdict.verdict == "close":
            yield from self._close(verdict.close_code, verdict.close_text, verdict.payload)
        # "drop": neither relayed nor answered
        self.judge.judged(self.flow, session, verdict)

    def _client_close(self, message: Message) -> layer.CommandGenerator[None]:
        """The client's close goes to the gateway as sent; the client gets its echo (between
        gateway messages), then both sockets close, as mitmproxy's own layer does."""
        payload = message.payload
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if len(payload) < 2 or code not in _SENDABLE_CLOSE_CODES and not 3000 <= code < 5000:
                yield from self._close(1002, "invalid close frame")
                return
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                yield from self._close(1007, "invalid UTF-8")
                return
        self._to_server += message.raw
        yield from self._send_to_server()
        yield from self._close_with(frame(CLOSE, payload[:2]), linger=0.0, by_client=True, reply_to_server=False)

    def _send_to_server(self) -> layer.CommandGenerator[None]:
        if self._to_server:
            data = self._to_server[0] if len(self._to_server) == 1 else b"".join(self._to_server)
            self._to_server.clear()
            yield commands.SendData(self.context.server, data)

    # ---- gateway → client ---------------------------------------------------------------------

    def _from_server(self, data: bytes) -> layer.CommandGenerator[None]:
        if self._close_sent:
            return  # after our close frame the client hears nothing more
        if self.session is not None and self.session.answer_pending:
            if not self._held and not self.server_frames.at_boundary:  # hold from a message's start
                cut = self.server_frames.advance(data, stop_at_boundary=True)
                if cut:
                    yield commands.SendData(self.context.client, data[:cut])
                data = data[cut:]
            data = self._connect_answer(data) if self.server_frames.at_boundary else data
            if not data:
                return
        if self._to_client:  # pass up to the first point between messages, speak there
            cut = self.server_frames.advance(data, stop_at_boundary=True)
            if cut:
                yield commands.SendData(self.context.client, data[:cut])
            data = data[cut:]
            yield from self._flush_to_client()
            if self._close_sent:
                return
        if data:
            self.server_frames.advance(data)
            yield commands.SendData(self.context.client, data)
        if self.server_frames.closed and not self._closing:
            # The gateway closed: its close frame reached the client; it gets our reply.
            self._closing = True
            yield from self._finish()

    def _connect_answer(self, data: bytes) -> bytes:
        """While the connect's answer is awaited the gateway's bytes are held until whole messages
        stand; returned as they came but for that answer, which the session rewrites. A fragmented
        message, or more held than the gateway could send, ends the wait: relayed unread."""
        session = self.session
        assert session is not None
        held, out = self._held + data, list[bytes]()
        while session.answer_pending:
            found = whole_server_frame(held)
            if found is None:
                if len(held) <= _MOST_HELD:
                    self._held = held
                    return b"".join(out)
                session.answer_pending = False
                break
            opcode, fin, payload, size = found
            if not fin:
                session.answer_pending = False
                break
            rewritten = session.server_message(payload) if opcode == TEXT else None
            out.append(held[:size] if rewritten is None else frame(TEXT, rewritten))
            held = held[size:]
        self._held = b""
        return b"".join(out) + held

    def _flush_to_client(self) -> layer.CommandGenerator[None]:
        if not self._to_client or not self.server_frames.at_boundary:
            return
        data = b"".join(self._to_client)
        self._close_sent = self._closing
        self._to_client.clear()
        yield commands.SendData(self.context.client, data)
        if self._close_sent:
            if self._linger:
                self._deadline = time.monotonic() + self._linger
                yield commands.RequestWakeup(self._linger)
            else:
                yield from self._finish()

    # ---- closing ------------------------------------------------------------------------------

    def _close(self, code: int, reason: str, answer: bytes | None = None) -> layer.CommandGenerator[None]:
        """Our close: `answer` (a text frame) and the close frame to the client between gateway
        messages; nothing more of the client's is read. The gateway's side closes after a linger."""
        yield from self._send_to_server()
        frames = [frame(TEXT, answer)] if answer is not None else []
        yield from self._close_with(*frames, frame(CLOSE, close_payload(code, reason)), linger=CLOSE_LINGER_SECONDS)

    def _close_with(self, *frames: bytes, linger: float, by_client: bool = False,
                    reply_to_server: bool = True) -> layer.CommandGenerator[None]:
        if self._closing:
            return
        self._closing = True
        self._linger = linger
        self._closed_by_client, self._reply_to_server = by_client, reply_to_server
        self._to_client += frames
        yield from self._flush_to_client()
        if not self._close_sent:  # a gateway message is still passing: wait for its end, not forever
            self._deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
            yield commands.RequestWakeup(CLOSE_DEADLINE_SECONDS)

    def _connection_closed(self, by_client: bool) -> layer.CommandGenerator[None]:
        """A socket closed without a close frame: the other side gets a normal close (the client
        only between gateway messages), then both are closed."""
        if not by_client and not self._closing:
            self._to_client.append(frame(CLOSE, close_payload(1000, "")))
            self._closing = True
            self._linger = 0.0
            yield from self._flush_to_client()
        self._closed_by_client, self._reply_to_server = by_client, by_client
        yield from self._finish()

    def _finish(self) -> layer.CommandGenerator[None]:
        if self._handle_event == self.done:
            return
        self._handle_event = self.done
        if self._reply_to_server:
            yield commands.SendData(self.context.server, frame(CLOSE, close_payload(1000, ""), masked=True))
        yield commands.CloseConnection(self.context.server)
        yield commands.CloseConnection(self.context.client)
        websocket = self.flow.websocket
        if websocket is not None:
            websocket.timestamp_end = time.time()
            websocket.closed_by_client = self._closed_by_client
        yield WebsocketEndHook(self.flow)
        self.flow.live = False
