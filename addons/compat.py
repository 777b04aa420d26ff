"""Every place the sidecar relies on mitmproxy's (or h11's) private internals, in one module.

mitmproxy is pinned below 13; each patch here is covered by tests that fail if an upgrade
changes what it relies on (tests/unit/test_compat.py and the end-to-end suites).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import h11
import wsproto.events
from h11._readers import ChunkedReader
from mitmproxy import http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import websocket
from mitmproxy.proxy.layers.http import HttpStream, _http1

from sidecar.metrics import HEAD_REFUSALS

# Node's own answer to an oversize head (HPE_HEADER_OVERFLOW), which the gateway never sees.
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_HEAD_END = re.compile(rb"\n\r?\n")


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
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


class _TrailerRefusingReader(ChunkedReader):
    """mitmproxy 12 raises NotImplementedError on HTTP/1 trailers, logging a crash and leaving
    the connection hanging; as a protocol error it closes the connection cleanly instead. The
    sidecar refuses trailers anyway (corpus B6): nothing after the body may reach the gateway."""

    def __call__(self, buf):  # type: ignore[no-untyped-def]
        event = super().__call__(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            raise h11.RemoteProtocolError("trailers are not accepted")
        return event


def refuse_trailers() -> None:
    _http1.ChunkedReader = _TrailerRefusingReader  # type: ignore[misc]


def limit_request_heads(max_bytes: int) -> None:
    """Refuse a request head over `max_bytes` as it arrives, with Node's 431.

    mitmproxy buffers a head without bound ("FIXME: protect against header size DoS" in
    Http1Server.read_headers): a 3 MB request line was accepted and parsed. The buffer is checked
    on every read, so it never grows past the limit plus one read.
    """
    original = _http1.Http1Server.read_headers
    if getattr(original, "_sidecar_head_limit", None) == max_bytes:
        return

    def read_headers(self: _http1.Http1Server, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
        if isinstance(event, events.DataReceived):
            data = bytes(self.buf)
            end = _HEAD_END.search(data)
            if (end.end() if end else len(data)) > max_bytes:
                HEAD_REFUSALS.inc()
                yield commands.SendData(self.conn, HEAD_TOO_LARGE)
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from original(self, event)

    read_headers._sidecar_head_limit = max_bytes  # type: ignore[attr-defined]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


class _BoundedWebsocketConnection(websocket.WebsocketConnection):
    """mitmproxy reassembles a whole WebSocket message (decompressed) before any hook sees it, so
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
    websocket.WebsocketLayer.start = start  # type: ignore[method-assign]
    websocket.WebsocketLayer._handle_event = start  # type: ignore[method-assign]


def apply_patches(max_head_bytes: int, websocket_message_limit: Callable[[http.HTTPFlow], int]) -> None:
    limit_request_bodies_only()
    refuse_trailers()
    limit_request_heads(max_head_bytes)
    limit_websocket_messages(websocket_message_limit)
