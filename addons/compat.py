"""Every place the sidecar relies on mitmproxy's (or h11's) private internals, in one module.

mitmproxy is pinned below 13; each patch here is covered by tests that fail if an upgrade
changes what it relies on (tests/unit/test_compat.py and the end-to-end suites).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
import re
import time
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import wsproto.events
from h11 import _readers as h11_readers
from h11._readers import ChunkedReader
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, ctx, exceptions, hooks, http
from mitmproxy.addonmanager import AddonManager, safecall
from mitmproxy.addons import next_layer
from mitmproxy.http import MessageData
from mitmproxy.net.http import status_codes
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events, layer, server
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import websocket
from mitmproxy.proxy.layers.http import HttpLayer, HttpStream, ReceiveHttp, RequestData, RequestEndOfMessage, _http1
from mitmproxy.proxy.layers.tls import ClientTLSLayer, ServerTLSLayer
from mitmproxy.utils import asyncio_utils

from sidecar import request_line
from sidecar.body import MAX_BODY_BYTES
from sidecar.headers import TOKEN_CHAR
from sidecar.metrics import HEAD_REFUSALS

from .coroutines import resume

log = logging.getLogger("sidecar.adapter")

# Node's own answers to an oversize head (HPE_HEADER_OVERFLOW) and to a head it cannot parse,
# which the gateway never sees.
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
CHUNK_LINE_TOO_LONG = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# Node's limit on a chunk's extensions (their names and values), and how long a size line may grow
# before it is refused unread (room for as many separators, and a size).
MAX_CHUNK_EXTENSIONS_BYTES = 16 * 1024
MAX_CHUNK_LINE_BYTES = 2 * MAX_CHUNK_EXTENSIONS_BYTES + 64
# Body bytes read past the 2 MiB limit before the connection is closed: more than one read, so a
# request the guard is not holding gets its 413 from the body-size check first.
UNREAD_BODY_MARGIN = 1024 * 1024
_BODY_READ: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # by body reader: one per request
_BODY_REFUSED: weakref.WeakSet[connection.Client] = weakref.WeakSet()  # clients whose request was refused at its head


def drop_request_body(client: connection.Client, dropped: bool = True) -> None:
    """The client's request is refused at its head: what comes of its body is read and dropped
    (or, `dropped` False, read again: the answer waits for the whole request after all)."""
    if dropped:
        _BODY_REFUSED.add(client)
    else:
        _BODY_REFUSED.discard(client)
HEAD_MALFORMED = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_HEAD_END = re.compile(rb"\n\r?\n")
# A chunk-size line as Node reads it: at most 16 significant hex digits (no 64-bit overflow), no
# whitespace before the CRLF, extension names and values that may be empty, quoted values without
# control bytes; h11 allows whitespace and overflow (a size that overflows left the request hanging).
_TOKEN = TOKEN_CHAR.encode()
_VALUE = rb'=(?:' + _TOKEN + rb'*|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*")'
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STRICT_CHUNK_HEADER = re.compile(
    rb"(?P<chunk_size>0*[0-9A-Fa-f]{1,16})(?P<chunk_ext>(?:;(?:" + _TOKEN + rb"+(?:" + _VALUE + rb")?|" + _VALUE + rb"))*)\r\n")


def limit_request_bodies_only() -> None:
    """Apply mitmproxy's body_size_limit to request bodies only.

    The 2 MiB cap is the gateway's request rule; a tool result larger than that must still
    reach the client. mitmproxy applies one limit to both directions, so its size check is
    narrowed to requests here (mitmproxy is pinned < 13; tests cover both directions).
    """
    original = HttpStream.check_body_size
    if getattr(original, "_sidecar_requests_only", False):
        return

    def check_body_size(self: HttpStream, request: bool):  # type: ignore[no-untyped-def]
        if not request:
            return (yield from ())
        return (yield from original(self, request))

    check_body_size._sidecar_requests_only = True  # type: ignore[attr-defined]
    check_body_size.__wrapped__ = original  # type: ignore[attr-defined]
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


def skip_request_stages_of_head_answers() -> None:
    """A response set in `requestheaders` goes to the client once the body is read, without the
    `request` hook and the emulated `responseheaders` hook upstream runs first.

    For the embedded Master only, whose chain is known: the guard answers refusals in
    `requestheaders`, and no other addon there acts in `request` or `responseheaders` (the guard
    returns at once on a flow that already has its response); two hooks, each a
    dispatch and a completion walked down five layers, were a fifth of a refusal's CPU. Upstream's
    steps otherwise kept: the body read, timestamps, the kill check, `send_response` (and with it
    the `response` hook). A response set later takes upstream's path.
    """
    original = HttpStream.state_consume_request_body
    if getattr(original, "_sidecar_head_answers", False):
        return

    def state_consume_request_body(self: HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
        if not isinstance(event, RequestEndOfMessage) or self.flow.response is None:
            return (yield from original(self, event))
        self.flow.request.timestamp_end = time.time()
        self.flow.request.data.content = bytes(self.request_body_buf)
        self.request_body_buf.clear()
        self.client_state = self.state_done
        if (yield from self.check_killed(True)):
            return None
        self.flow.response.timestamp_start = time.time()
        return (yield from self.send_response())

    state_consume_request_body._sidecar_head_answers = True  # type: ignore[attr-defined]
    state_consume_request_body.__wrapped__ = original  # type: ignore[attr-defined]
    HttpStream.state_consume_request_body = state_consume_request_body  # type: ignore[method-assign]


class _NodeChunkedReader(ChunkedReader):
    """h11's chunked reader held to what Node reads.

    - A chunk-size line is bounded as it arrives. h11 waits for a whole line without limit, so
      `20;a=` and endless bytes after it were buffered (500 MB in a second, from a stranger whose
      refusal had already been sent). Node answers an extension over 16 KiB with 413.
    - Trailers are refused at their first byte (corpus B6: nothing after the body may reach the
      gateway), a bare LF ending the body included, as Node refuses it. mitmproxy 12 raised
      NotImplementedError on trailers, and h11 buffered them without limit too.
    """

    line_too_long = False

    def __call__(self, buf):  # type: ignore[no-untyped-def]
        data = buf._data  # h11 offers no bounded look at its buffer; nothing here copies it
        if self._reading_trailer:
            if data and not b"\r\n".startswith(data[:2]):
                raise h11.RemoteProtocolError("trailers are not accepted")
        elif not self._bytes_in_chunk and self._extensions_too_long(data, len(self._bytes_to_discard)):
            self.line_too_long = True
            raise h11.RemoteProtocolError("chunk extensions too long")
        return super().__call__(buf)

    @staticmethod
    def _extensions_too_long(data: bytearray, start: int) -> bool:
        """Whether the size line at `start` (after the CRLF ending the previous chunk) carries
        more extension bytes than Node takes, or has gone on too long to ever end in time."""
        end = data.find(b"\r\n", start, start + MAX_CHUNK_LINE_BYTES)
        if end < 0:
            return len(data) - start >= MAX_CHUNK_LINE_BYTES
        extensions = data.find(b";", start, end)
        if extensions < 0:
            return False
        # Node counts names and values, a quoted value whole (quotes, `;` and `=` inside included).
        separators = data.count(b";", extensions, end) + data.count(b"=", extensions, end)
        if data.find(b'"', extensions, end) >= 0:
            for quoted in _QUOTED.finditer(data, extensions, end):
                separators -= quoted.group().count(b";") + quoted.group().count(b"=")
        return end - extensions - separators > MAX_CHUNK_EXTENSIONS_BYTES


_INTERIM_HEAD = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9]{2}[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n")


def skip_interim_answers() -> None:
    """An upstream's 1xx answer other than 101 is interim; mitmproxy took it for the final one, and
    the real answer then went to the client's next request. Dropped, as Node's client drops them.
    (The gateway sends one only for `Expect: 100-continue`, which mitmproxy answers itself.)"""
    original = getattr(_http1.Http1Client.read_headers, "__wrapped__", _http1.Http1Client.read_headers)

    def read_headers(self: _http1.Http1Client, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
        if isinstance(event, events.DataReceived) and self.request:
            while interim := _INTERIM_HEAD.match(bytes(self.buf)):
                self.buf.maybe_extract_at_most(interim.end())
        yield from original(self, event)

    read_headers.__wrapped__ = original  # type: ignore[attr-defined]
    _http1.Http1Client.read_headers = read_headers  # type: ignore[method-assign]


def refuse_trailers() -> None:
    _http1.ChunkedReader = _NodeChunkedReader  # type: ignore[misc]


def strict_chunk_headers() -> None:
    """h11 reads chunk-size lines through this module-level pattern (see _STRICT_CHUNK_HEADER)."""
    h11_readers.chunk_header_re = _STRICT_CHUNK_HEADER


def answer_protocol_errors_as_node() -> None:
    """Where mitmproxy answers on its own (a head it cannot parse: a bad header name, an unknown
    Transfer-Encoding, Content-Length with Transfer-Encoding, an HTTP/0.9 line; an upstream
    failure no hook answered), Node's bare status line and close, instead of mitmproxy's HTML
    page with `Server: mitmproxy <version>` and a hint about its options: nothing on the port
    should name the proxy or how to loosen it."""
    if getattr(_http1.make_error_response, "_sidecar_bare", False):
        return

    def make_error_response(status_code: int, message: str = "") -> bytes:
        # Strangers choose these heads: counted, and logged at debug only (one line per request),
        # without the bytes mitmproxy quotes after the colon: a request line may carry a password
        # (`http://user:pw@host/`) or a `?token=`.
        log.debug("answered %d at the HTTP layer: %s", status_code, message.split(":", 1)[0][:200] if message else "")
        if status_code == 400:
            HEAD_REFUSALS.inc()
            return HEAD_MALFORMED
        reason = status_codes.RESPONSES.get(status_code, "")
        return f"HTTP/1.1 {status_code} {reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode()

    make_error_response._sidecar_bare = True  # type: ignore[attr-defined]
    _http1.make_error_response = make_error_response


# What one decoded piece of a body costs beyond its bytes (h11 parses each chunk on its own),
# counted against the body limit: a body of 1-byte chunks is six times its size on the wire.
BODY_PIECE_CHARGE = 64


def answer_malformed_bodies(max_body_bytes: int) -> None:
    """A request body h11 cannot parse (a bad chunk-size line) gets Node's 400 before the close,
    an over-long one its 413; mitmproxy closed the connection without a word. Not after an answer
    we already sent.

    And a body is bounded as it is read: while its request waits on a hook (a refusal the pacer
    holds back), mitmproxy kept decoding chunks and queueing them on the paused stream, where the
    2 MiB check could not see them (a stranger's endless chunked body grew the process by 150 MB
    in 0.17 s). Past `max_body_bytes` the connection is closed, as in Http1Server.wait; each
    decoded piece counts BODY_PIECE_CHARGE bytes more.

    The pieces one read decodes go on as one: mitmproxy walked every 1-byte chunk through its HTTP
    layers and our hooks on its own, and 12 MB of them took 26 s of the event loop. The body of a
    request refused at its head (drop_request_body; answered or not yet) is dropped as it arrives,
    unparsed and never buffered: read only so that the client's writes do not fail before it reads
    our answer (each such connection held 2 MB, and the freed buffers stayed with the process:
    +600 MB after 1.6 GB of refused bodies)."""
    original = getattr(_http1.Http1Server.read_body, "__wrapped__", _http1.Http1Server.read_body)

    def over_the_limit(self: _http1.Http1Server, read: int) -> bool:
        """Counts `read` more bytes of the request's body; whether it is now past the limit."""
        total = _BODY_READ[self.body_reader] = _BODY_READ.get(self.body_reader, 0) + read
        return total > max_body_bytes

    def read_body(self: _http1.Http1Server, event: events.Event):  # type: ignore[no-untyped-def]
        if isinstance(event, events.DataReceived) and (
                self.conn in _BODY_REFUSED or not self.conn.state & ConnectionState.CAN_WRITE):
            dropped = len(self.buf)
            self.buf.maybe_extract_at_most(dropped)
            if over_the_limit(self, dropped):
                self.state = self.done
                yield commands.CloseConnection(self.conn)
            return None
        body = original(self, event)
        sent = None
        pieces: list[bytes] = []
        stream_id = 0
        while True:
            try:
                command = body.send(sent)
            except StopIteration as done:
                if pieces:
                    yield ReceiveHttp(RequestData(stream_id, b"".join(pieces)))
                return done.value
            if isinstance(command, ReceiveHttp) and isinstance(command.event, RequestData):
                if over_the_limit(self, len(command.event.data) + BODY_PIECE_CHARGE):
                    HEAD_REFUSALS.inc()
                    self.state = self.done
                    yield commands.CloseConnection(self.conn)
                    return None
                pieces.append(command.event.data)
                stream_id = command.event.stream_id
                sent = None
                continue
            if pieces:
                yield ReceiveHttp(RequestData(stream_id, b"".join(pieces)))
                pieces = []
            if (isinstance(command, commands.CloseConnection) and isinstance(event, events.DataReceived)
                    and self.conn.state & ConnectionState.CAN_WRITE):
                too_long = getattr(self.body_reader, "line_too_long", False)
                yield commands.SendData(self.conn, CHUNK_LINE_TOO_LONG if too_long else HEAD_MALFORMED)
            sent = yield command

    read_body.__wrapped__ = original  # type: ignore[attr-defined]
    _http1.Http1Server.read_body = read_body  # type: ignore[method-assign,assignment]


def plain_http_listener() -> None:
    """The gateway's port speaks plain HTTP, and so does ours. mitmproxy's reverse mode puts TLS
    before HTTP when the first bytes look like a ClientHello and answers with a handshake: a
    certificate its own CA mints for any name the stranger sends, and a signature per handshake,
    before any credential. Without that layer the hello is read as HTTP and gets Node's 400 at its
    first byte (limit_request_heads). An https:// upstream keeps its TLS.

    Patched where the stack is built rather than in a `next_layer` hook: under mitmdump a script's
    hook runs before NextLayer has chosen."""
    original = next_layer.NextLayer._setup_reverse_proxy
    if getattr(original, "_sidecar_plain", False):
        return

    def setup_reverse_proxy(context: Context, data_client: bytes) -> layer.Layer:
        top = original(context, data_client)
        if isinstance(top, ClientTLSLayer):
            return top.child_layer
        if isinstance(top, ServerTLSLayer) and isinstance(top.child_layer, ClientTLSLayer):
            top.child_layer = top.child_layer.child_layer
        return top

    setup_reverse_proxy._sidecar_plain = True  # type: ignore[attr-defined]
    next_layer.NextLayer._setup_reverse_proxy = staticmethod(setup_reverse_proxy)  # type: ignore[method-assign]


def bound_pipelined_bytes(max_bytes: int) -> None:
    """While a request waits for its answer, mitmproxy keeps appending what the client sends and
    reads none of it (Http1Server.wait): bytes pipelined behind a slow or paced request grew the
    process by 600 MB, from a stranger. Past `max_bytes` (one whole request: the head and body
    limits) the connection is closed; Node stops reading instead, which mitmproxy's read loop
    cannot do."""
    original = _http1.Http1Server.wait
    if getattr(original, "_sidecar_pipelined", None) == max_bytes:
        return

    def wait(self: _http1.Http1Server, event: events.Event):  # type: ignore[no-untyped-def]
        if isinstance(event, events.DataReceived) and len(self.buf) > max_bytes:
            HEAD_REFUSALS.inc()
            self.buf = ReceiveBuffer()
            self.state = self.done
            yield commands.CloseConnection(self.conn)
            return
        yield from original(self, event)

    wait._sidecar_pipelined = max_bytes  # type: ignore[attr-defined]
    wait.__wrapped__ = original  # type: ignore[attr-defined]
    _http1.Http1Server.wait = wait  # type: ignore[method-assign,assignment]


def limit_request_heads(max_bytes: int) -> None:
    """Refuse a request head over `max_bytes` as it arrives, with Node's 431, and one Node cannot
    parse with its 400 (as soon as that is known: a TLS ClientHello at its first byte).

    mitmproxy buffers a head without bound ("FIXME: protect against header size DoS" in
    Http1Server.read_headers): a 3 MB request line was accepted and parsed. The buffer is checked
    on every read, so it never grows past the limit plus one read; each check reads only what
    earlier reads left unjudged, so a head dripped a byte at a time costs no more than one sent
    whole (every read rescanned all of it: 12 KB dripped took 1.25 s of CPU).
    """
    original = _http1.Http1Server.read_headers
    if getattr(original, "_sidecar_head_limit", None) == max_bytes:
        return

    def read_headers(self: _http1.Http1Server, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
        if isinstance(event, events.DataReceived):
            data = bytes(self.buf)
            if skip := request_line.blank_prefix(data):
                data = data[skip:]
                self.buf = ReceiveBuffer()
                self.buf += data
            judged = _JUDGED_HEAD.pop(self, 0)
            end = _HEAD_END.search(data, max(judged - 2, 0))
            head_end = end.end() if end else len(data)
            refusal = HEAD_TOO_LARGE if head_end > max_bytes else HEAD_MALFORMED if request_line.head_refused(data, judged, head_end) else None
            if refusal is not None:
                HEAD_REFUSALS.inc()
                yield commands.SendData(self.conn, refusal)
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
            if end is None:  # the last byte stays unjudged: a CR there is judged by what follows it
                _JUDGED_HEAD[self] = max(len(data) - 1, 0)
        yield from original(self, event)

    read_headers._sidecar_head_limit = max_bytes  # type: ignore[attr-defined]
    read_headers.__wrapped__ = original  # type: ignore[attr-defined]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


# By server: how many bytes of the head it is still reading were judged by earlier reads.
_JUDGED_HEAD: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


class _BoundedWebsocketConnection(websocket.WebsocketConnection):
    """For upgrades on mitmproxy's own layer (RPC sessions have the relay's bound, addons/ws_relay.py):
    mitmproxy reassembles a whole WebSocket message (decompressed) before any hook sees it, so
    a stranger could send one without end. Client messages over the flow's limit end the
    connection with 1009 as they grow, as the gateway's own `maxPayload` does."""

    flow: http.HTTPFlow | None = None
    message_limit: Callable[[http.HTTPFlow], int] | None = None
    _pending = 0

    def events(self):  # type: ignore[no-untyped-def]
        for event in super().events():
            if isinstance(event, wsproto.events.Message) and self.flow is not None and self.message_limit is not None:
                self._pending += len(event.data)
                if self._pending > self.message_limit(self.flow):
                    self.frame_buf = [b""]
                    yield wsproto.events.CloseConnection(code=1009, reason="message too big")
                    return
                if event.message_finished:
                    self._pending = 0
            yield event


def limit_websocket_messages(limit: Callable[[http.HTTPFlow], int]) -> None:
    """Bound every client message by `limit(flow)` bytes (see _BoundedWebsocketConnection)."""
    _BoundedWebsocketConnection.message_limit = staticmethod(limit)  # type: ignore[assignment]
    if getattr(websocket.WebsocketLayer.start, "_sidecar_bounded", False):
        return
    websocket.WebsocketConnection = _BoundedWebsocketConnection  # type: ignore[misc]
    original_start = websocket.WebsocketLayer.start

    def start(self: websocket.WebsocketLayer, event: events.Start):  # type: ignore[no-untyped-def]
        yield from original_start(self, event)
        self.client_ws.flow = self.flow  # type: ignore[attr-defined]

    start._sidecar_bounded = True  # type: ignore[attr-defined]
    start.__wrapped__ = original_start  # type: ignore[attr-defined]
    websocket.WebsocketLayer.start = start  # type: ignore[method-assign]
    websocket.WebsocketLayer._handle_event = start  # type: ignore[method-assign]


def choose_websocket_layer(factory: Callable[[Context, http.HTTPFlow], layer.Layer | None]) -> None:
    """Let `factory` pick the layer for an upgraded flow (the sidecar's RPC relay), None keeping
    mitmproxy's own. HttpStream.flow_done builds `websocket.WebsocketLayer(self.context,
    self.flow)` with no hook in between; the construction itself is redirected (`__new__` may
    return an object of another class, whose own __init__ has then already run)."""
    layer_class = websocket.WebsocketLayer

    def __new__(cls, context: Context, flow: http.HTTPFlow):  # type: ignore[no-untyped-def]
        chosen = factory(context, flow) if cls is layer_class else None
        return chosen if chosen is not None else object.__new__(cls)

    layer_class.__new__ = staticmethod(__new__)  # type: ignore[assignment]


def client_writer(client: connection.Client) -> asyncio.StreamWriter | None:
    """The client's socket writer, for answers written outside mitmproxy's hook sequence (it has
    no API for that): the proxyserver's connection handler and its transports are internals.
    None once it is closing."""
    writer = _client_stream(client)
    return None if writer is None or writer.is_closing() else writer


def client_transport(client: connection.Client) -> asyncio.WriteTransport | None:
    """The client's socket, kept from its connection's start to let go of it for good at its end
    (mitmproxy's own close waits for a client that may never read)."""
    writer = _client_stream(client)
    return writer.transport if isinstance(writer, asyncio.StreamWriter) else None


def _client_stream(client: connection.Client) -> asyncio.StreamWriter | None:
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    transport = handler.transports.get(handler.client) if handler else None
    return transport.writer if transport else None


def unread_request_prefix(client: connection.Client, length: int) -> bytes | None:
    """The first `length` bytes the client sent past the current request head, which mitmproxy's
    HTTP/1 reader holds unread (None until all of them have arrived): during `requestheaders`, a
    Content-Length body exactly as the reader will deliver it."""
    reader = _request_reader(client)
    if reader is None or len(reader.buf) < length:
        return None
    return bytes(reader.buf._data[:length])


def head_begun(client: connection.Client) -> bool:
    """Whether any byte of the client's next request has arrived (mitmproxy holds them unread)."""
    reader = _request_reader(client)
    return reader is not None and len(reader.buf) > 0


def _request_reader(client: connection.Client) -> _http1.Http1Server | None:
    """The client's Http1Server (see _http_layer)."""
    found = _http_layer(client)
    reader = found[1].connections.get(client) if found else None
    return reader if isinstance(reader, _http1.Http1Server) else None


def _http_layer(client: connection.Client) -> tuple[server.ConnectionHandler, HttpLayer] | None:
    """The client's connection handler and HttpLayer, found by walking the connection's layer
    stack (NextLayer → mode layer → NextLayer → HttpLayer); mitmproxy has no API for them."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    node = handler.layer if handler else None
    for _ in range(8):  # a reverse proxy is four deep
        if node is None or isinstance(node, HttpLayer):
            break
        node = node.layer if isinstance(node, layer.NextLayer) else getattr(node, "child_layer", None)
    return (handler, node) if handler is not None and isinstance(node, HttpLayer) else None


def close_idle_upstreams(client: connection.Client) -> None:
    """Close the client's upstream connections that carry no request. The gateway closes a
    keep-alive connection idle for 5 s (Node's keepAliveTimeout), and a request sent on it as it
    closes was lost: a 502, where a client of the gateway sees its connection closed and retries.
    Closed first (as the CloseConnection command does: at once, for the layers too), the next
    request opens a fresh one."""
    found = _http_layer(client)
    if found is None:
        return
    handler, http_layer = found
    for conn, peer in list(http_layer.connections.items()):
        protocol = getattr(peer, "child_layer", None)  # an HttpClient, speaking through its child
        if isinstance(conn, connection.Server) and conn.connected and isinstance(protocol, _http1.Http1Client) \
                and protocol.stream_id is None:
            handler.close_connection(conn)


def skip_debug_typechecks() -> None:
    """mitmproxy type-checks every field of every request and response it builds, in a
    `__post_init__` that exists only when Python runs without -O (`if __debug__:`): ~30 µs for
    each message, several per proxied call, checking types its own parsers and ours construct.
    Dropped here as `python -O` drops it; unlike -O, mitmproxy's asserts all stay."""
    MessageData.__post_init__ = _no_typecheck  # type: ignore[method-assign]


def _no_typecheck(self: MessageData) -> None:
    """The dataclass __init__ of each message class calls __post_init__: it must stay defined."""


def cache_hook_arguments() -> None:
    """mitmproxy calls `Hook.args()` several times for every hook it runs (the proxy server,
    the lifecycle handler, each addon), and each call walks `dataclasses.fields`. A hook class's
    fields never change: their names are read once per class. Same list, same order."""
    hooks.Hook.args = _hook_args  # type: ignore[method-assign]


_HOOK_FIELDS: dict[type, tuple[str, ...]] = {}


def _hook_args(self: hooks.Hook) -> list[Any]:
    names = _HOOK_FIELDS.get(type(self))
    if names is None:
        names = _HOOK_FIELDS[type(self)] = tuple(field.name for field in dataclasses.fields(self))  # type: ignore[arg-type]
    return [getattr(self, name) for name in names]


def dispatch_hooks_directly(manager: AddonManager) -> None:
    """For one Master whose addon chain is final and flat (the embedded one): run a hook only on
    the addons that define it.

    mitmproxy's `trigger_event` enters, for every addon, a coroutine, two generators and a
    `safecall` context, whether or not the addon has the hook; each flow hook is triggered twice
    (the hook, then `update`), four hooks per request, five addons: some forty idle invocations
    per request. Kept as upstream does it: the attribute is looked up at each call, an addon's
    error is logged by `safecall` and the others still run, AddonHalt ends the chain. A chain
    changed since, or a non-callable attribute, goes to mitmproxy's own walk.
    """
    chain = tuple(manager.chain)
    if any(hasattr(addon, "addons") for addon in chain):
        raise ValueError("nested addon chains are walked by mitmproxy itself")
    walk = manager.trigger_event

    async def trigger_event(event: hooks.Hook) -> None:
        if len(manager.chain) != len(chain):
            return await walk(event)
        name, args = event.name, None
        for addon in chain:
            func = getattr(addon, name, None)
            if not func or isinstance(func, types.ModuleType):
                continue
            if not callable(func):
                return await walk(event)
            if args is None:
                args = event.args()
            try:
                with safecall():
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
        return None

    manager.trigger_event = trigger_event  # type: ignore[method-assign]


# Hooks completed inline per server event before the rest wait for the loop's next turn, so that
# one connection's pipelined requests cannot hold the loop for long (four hooks a request).
INLINE_HOOKS_PER_EVENT = 16


def complete_hooks_inline() -> None:
    """Run each mitmproxy hook as far as it goes when the layers ask for it, and feed its
    completion back into the layers in the same server event.

    Upstream starts every hook as an eager task; the task runs the addons at once but must then
    queue for the connection's event lock to report back, so each hook costs a task, a future,
    a lock hand-off and a turn of the loop: about a fifth of a refused call's CPU, four hooks
    per request. Here a hook whose addons did not wait is completed directly, in the order upstream
    would complete it (the task was the lock's first waiter); one that waits goes on as a task,
    as upstream. Every other command is handled as upstream's `server_event` handles it; a test
    pins the two lists of commands to each other (tests/unit/test_compat.py).
    """
    if server.ConnectionHandler.server_event is not _server_event:
        _server_event.__wrapped__ = server.ConnectionHandler.server_event  # type: ignore[attr-defined]
        server.ConnectionHandler.server_event = _server_event  # type: ignore[method-assign]


async def _server_event(self: server.ConnectionHandler, event: events.Event) -> None:
    """Upstream's `server_event` (see there for the lock), with a queue of inline completions
    and the writes gathered into sends."""
    async with self._server_event_lock:
        self.timeout_watchdog.register_activity()
        queue = collections.deque((event,))
        inline = INLINE_HOOKS_PER_EVENT
        writes: list[commands.SendData] = []  # consecutive, to one connection: one send
        while queue:
            try:
                for command in self.layer.handle_event(queue.popleft()):
                    if isinstance(command, commands.SendData) and command.connection in self.transports:
                        if writes and writes[0].connection is not command.connection:
                            _send(self, writes)
                        writes.append(command)
                        continue
                    if writes:  # before anything else happens, hooks included (they may write too)
                        _send(self, writes)
                    if isinstance(command, commands.StartHook):
                        if inline:
                            inline -= 1
                            _start_hook(self, command, queue)
                        else:
                            asyncio_utils.create_task(self.hook_task(command), name=f"handle_hook({command.name})",
                                                      keep_ref=True, client=self.client.peername)
                    else:
                        _run_command(self, command)
            except Exception:
                self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
            try:  # the event's last writes (after a crash too: upstream had sent them already)
                if writes:
                    _send(self, writes)
            except Exception:
                self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)


# Messages up to this size are joined (one copy) into one write; larger ones go chunk by chunk.
_JOIN_AT_MOST = 64 * 1024


def _send(self: server.ConnectionHandler, writes: list[commands.SendData]) -> None:
    """Upstream writes each SendData as it comes: a message's head and body are then two
    syscalls (and two packets). The same bytes, in the same order, go in one write (up to
    64 KiB; a stream's, never a datagram's). Not
    `writelines`: the standard loop's (CPython 3.12.1) never pauses the protocol, so a client that
    does not read would be buffered without bound."""
    writer = self.transports[writes[0].connection].writer
    chunks = [write.data for write in writes]
    writes.clear()
    assert writer
    if writer.is_closing():
        return
    if len(chunks) > 1 and isinstance(writer, asyncio.StreamWriter) and sum(map(len, chunks)) <= _JOIN_AT_MOST:
        writer.write(b"".join(chunks))
    else:
        for chunk in chunks:
            writer.write(chunk)


def _start_hook(self: server.ConnectionHandler, command: commands.StartHook, completions: collections.deque) -> None:
    hook = self.handle_hook(command)
    try:
        awaiting = hook.send(None)
    except StopIteration:
        if command.blocking:
            completions.append(events.HookCompleted(command))
        return
    except Exception:  # as an upstream hook task's failure: logged, the hook never completes
        self.log(f"hook {command.name} failed", logging.ERROR, exc_info=True)
        return
    asyncio_utils.create_task(_finish_hook(self, command, resume(hook, awaiting)), name=f"handle_hook({command.name})",
                              keep_ref=True, client=self.client.peername)


async def _finish_hook(self: server.ConnectionHandler, command: commands.StartHook,
                       rest: Awaitable[None]) -> None:
    await rest
    if command.blocking:
        await self.server_event(events.HookCompleted(command))


def _run_command(self: server.ConnectionHandler, command: commands.Command) -> None:
    """Upstream's handling of every command but StartHook and SendData to an open connection
    (`_server_event` takes those itself), as written in `server_event`."""
    if isinstance(command, commands.OpenConnection):
        assert command.connection not in self.transports
        handler = asyncio_utils.create_task(
            self.open_connection(command),
            name=f"server connection handler {command.connection.address}",
            keep_ref=False,
            client=self.client.peername,
        )
        self.transports[command.connection] = server.ConnectionIO(handler=handler)
    elif isinstance(command, commands.RequestWakeup):
        task = asyncio_utils.create_task(
            self.wakeup(command),
            name=f"wakeup timer ({command.delay:.1f}s)",
            keep_ref=False,
            client=self.client.peername,
        )
        assert task is not None
        self.wakeup_timer.add(task)
    elif isinstance(command, commands.ConnectionCommand) and command.connection not in self.transports:
        pass  # The connection has already been closed.
    elif isinstance(command, commands.CloseTcpConnection):
        self.close_connection(command.connection, command.half_close)
    elif isinstance(command, commands.CloseConnection):
        self.close_connection(command.connection, False)
    elif isinstance(command, commands.Log):
        self.log(command.message, command.level)
    else:
        raise RuntimeError(f"Unexpected command: {command}")


def apply_patches(max_head_bytes: int, websocket_message_limit: Callable[[http.HTTPFlow], int],
                  websocket_layer: Callable[[Context, http.HTTPFlow], layer.Layer | None]) -> None:
    skip_debug_typechecks()
    cache_hook_arguments()
    complete_hooks_inline()
    limit_request_bodies_only()
    refuse_trailers()
    strict_chunk_headers()
    answer_malformed_bodies(MAX_BODY_BYTES + UNREAD_BODY_MARGIN)
    skip_interim_answers()
    answer_protocol_errors_as_node()
    plain_http_listener()
    limit_request_heads(max_head_bytes)
    bound_pipelined_bytes(max_head_bytes + MAX_BODY_BYTES)
    limit_websocket_messages(websocket_message_limit)
    choose_websocket_layer(websocket_layer)
