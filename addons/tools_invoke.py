"""The mitmproxy adapter: flow → RequestView → pipeline decision → flow.

No policy lives here. Each hook guards, translates, asks the pipeline and applies the answer,
and fails closed itself: mitmproxy only logs an exception raised in a hook and then sends the
request upstream anyway.

Also usable on its own: `mitmdump -s addons/tools_invoke.py --mode reverse:URL
--set sidecar_config=FILE`; the guard applies the proxy options it depends on itself
(REQUIRED_OPTIONS: lazy upstream connections, the client's Host, the 2 MiB request limit, no
raw TCP after an unasked 101).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import Layer

try:  # loaded by mitmdump -s, the repository root may not be on sys.path
    import sidecar  # noqa: F401
except ImportError:  # pragma: no cover - depends on how mitmdump was started
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons import compat, ws_relay
from addons.deadlines import Deadlines

from sidecar import audit, envelopes
from sidecar.config import Timeouts, load_config
from sidecar.body import MAX_BODY_BYTES
from sidecar.envelopes import Envelope
from sidecar.errors import ConfigError
from sidecar.ipaddrs import ip_text
from sidecar.logging_limits import LOG_ONCE_PER_INTERVAL
from sidecar.metrics import (
    CLIENT_CONNECTIONS, CONNECTIONS_EVICTED, CONNECTIONS_REFUSED, DECISION_SECONDS, HEAD_TIMEOUTS, INTERNAL_ERRORS, REFUSALS_PACED,
    VANISHED_REQUESTS,
)
from sidecar.pipeline import MAX_HEAD_BYTES, PUBLIC_READ_METHOD, Admitted, Forward, Refuse
from sidecar.reasons import Reason, ReasonCode, answer
from sidecar.rpc import (
    CONNECT_TIMEOUT, NOT_THIS_PROTOCOL, RULES_CHANGED, FrameVerdict, RpcSession, client_message_limit, rpc_on_plugin_socket,
)
from sidecar.runtime import Runtime, build_runtime
from sidecar.shares import ClientShare, ClientShares, connections_per_client
from sidecar.view import RequestView

log = logging.getLogger("sidecar.adapter")

VIEW = "openclaw_sidecar.view"
ADMITTED = "openclaw_sidecar.admitted"
ADMITTED_BY = "openclaw_sidecar.admitted_by"  # the pipeline that admitted the head
FORWARDED = "openclaw_sidecar.forwarded"
ANSWERED = "openclaw_sidecar.answered"
CUT_OFF = "openclaw_sidecar.cut_off"  # audited at a stop (outcome shutdown): its end says nothing more
JUDGED_BODY = "openclaw_sidecar.judged_body"  # (body, Forward): decided in requestheaders
RPC_SESSION = "openclaw_sidecar.rpc"
WRITE_FLUSH_SECONDS = 0.2
LINGER_SECONDS = 1.0
MIN_DRAIN_BYTES = 4096  # a client closed on that reads less per linger loses what is left (let_go)
# Connections made room with that may still linger while their answer leaves: past this many,
# the oldest is dropped at once. The derived cap keeps 256 descriptors spare, so this many more
# connections of two descriptors each stay inside the limit.
EVICTION_SLACK = 64


# Proxy settings the guard's guarantees depend on, applied whichever way it is loaded.
REQUIRED_OPTIONS = {
    "connection_strategy": "lazy",  # a refused request never opens an upstream connection
    "keep_host_header": True,  # decide on the client's Host, as the gateway would
    # mitmproxy reads no request body beyond this; the guard turns the overflow into the
    # gateway's JSON 413 (head refusals are answered before the limit applies).
    "body_size_limit": str(MAX_BODY_BYTES),
    # A 101 without an upgrade the guard admitted made mitmproxy tunnel the connection's next
    # bytes to the upstream unread; without a protocol to upgrade to, it closes instead.
    "rawtcp": False,
}


STREAM_ABOVE_BYTES = 64 * 1024  # answers longer than this are relayed as they arrive
# An upstream connection idle this long is closed before the gateway closes it (Node: 5 s).
UPSTREAM_IDLE_SECONDS = 4.0

# Under `mitmdump -s`: mitmproxy's onboarding app answers requests for `mitm.it` itself (its CA
# certificate, naming the proxy) after the guard admitted them; the embedded Master has no such addon.
MITMDUMP_OPTIONS = {"onboarding": False}


def raw_target(request: http.Request) -> str:
    """The request target as sent: mitmproxy splits an absolute-form target into scheme,
    authority and path, and the pipeline must judge the whole of it."""
    path = request.data.path.decode("latin-1")
    if request.data.authority and request.method != "CONNECT":
        scheme = request.data.scheme.decode("latin-1") or "http"
        return f"{scheme}://{request.data.authority.decode('latin-1')}{path}"
    return path


def view_of(flow: http.HTTPFlow) -> RequestView:
    request = flow.request
    return RequestView(
        target=raw_target(request),
        method=request.data.method.decode("latin-1"),  # as sent: mitmproxy upper-cases `.method`
        headers=tuple(request.headers.fields),
        peer_ip=flow.client_conn.peername[0],
        request_id=flow.id,
    )


def peer_ip(flow: http.HTTPFlow) -> str:
    """The connection's peer, in the one spelling every per-client table uses."""
    peer: str = flow.client_conn.peername[0]
    return ip_text(peer)


def response_of(envelope: Envelope, method: str | None) -> http.Response:
    """Built directly, with its length: `Response.make` re-derives the body's encoding for each one.
    The answer to a HEAD request (`method`, None before any request) has the length and no body,
    as Node sends it: a body there would be read as the start of the next response."""
    fields = [(k.encode(), v.encode()) for k, v in envelope.headers]
    fields.append((b"content-length", str(len(envelope.body)).encode()))
    now = time.time()
    return http.Response(b"HTTP/1.1", envelope.status, status_codes.RESPONSES.get(envelope.status, "").encode(),
                         http.Headers(fields), b"" if method == "HEAD" else envelope.body, None, now, now)


def relayed_as_it_arrives(response: http.Response) -> bool:
    """An answer mitmproxy should not hold whole: one whose end is not known from its head (an
    event stream, no Content-Length), which would never reach the client, and a large one, which
    a client reading slowly would make the sidecar hold (4.4 MB a connection for a public asset
    of the Control UI, red team). Small answers, nearly every tool result, are read whole: that
    costs less."""
    content_type = response.headers.get("content-type", "")
    length = response.headers.get("content-length")
    return (content_type.lower().startswith("text/event-stream") or length is None
            or not length.isdigit() or int(length) > STREAM_ABOVE_BYTES)


def close_websocket(flow: http.HTTPFlow, code: int, reason: str, answer: bytes | None = None) -> bool:
    """Send `answer` (a text frame) and a close frame with `code` to the client, then end the
    connection; nothing the client sends after that is relayed. A relayed RPC flow is closed by
    its relay (between gateway messages). On mitmproxy's own layer, which has no API to close one
    side with a code, the frames are written to the client transport directly, between whole
    frames (that layer writes whole frames only, and asyncio runs one writer at a time)."""
    flow.metadata[ws_relay.WS_CLOSING] = True
    if ws_relay.request_close(flow, code, reason, answer):
        return True
    writer = compat.client_writer(flow.client_conn)
    if writer is not None:
        if answer is not None:
            writer.write(ws_relay.frame(ws_relay.TEXT, answer))
        writer.write(ws_relay.frame(ws_relay.CLOSE, ws_relay.close_payload(code, reason)))
        # The client's EOF makes mitmproxy close the gateway side too.
        asyncio.get_running_loop().call_later(ws_relay.CLOSE_LINGER_SECONDS, let_go, writer.transport)
    return True


def answer_directly(flow: http.HTTPFlow, envelope: Envelope) -> bool:
    """Write a complete answer to the client socket now, outside the normal hook sequence, and
    close the connection after a short linger.

    Used where mitmproxy would otherwise read a whole body first, or send its own HTML error
    (oversize, stalled body, upstream failures). Clearing CAN_WRITE makes mitmproxy's own
    error page a no-op. HTTP/1 only, which is all the sidecar listens for.
    """
    if flow.metadata.get(ANSWERED):
        return True
    writer = compat.client_writer(flow.client_conn)
    if writer is None or not (flow.client_conn.state & ConnectionState.CAN_WRITE):
        return False
    # mitmproxy would otherwise write its own `100 Continue` after our answer and our EOF.
    flow.request.headers.pop("expect", None)
    write_final_answer(writer, envelope, flow.request.method)
    flow.client_conn.state &= ~ConnectionState.CAN_WRITE
    flow.metadata[ANSWERED] = envelope.status
    return True


def write_final_answer(writer: asyncio.StreamWriter, envelope: Envelope, method: str | None, *, linger: bool = True) -> None:
    """The last thing said on a connection: the answer with `Connection: close`, our EOF, then the
    socket closed. After a linger, where the client's bytes may still be arriving: closing on
    unread bytes sends a reset, which can destroy the answer before the client reads it."""
    response = response_of(envelope, method)
    response.headers["Connection"] = "close"
    writer.write(http1.assemble_response(response))
    if writer.can_write_eof():
        writer.write_eof()
    if linger:
        asyncio.get_running_loop().call_later(LINGER_SECONDS, let_go, writer.transport)
    else:
        let_go(writer.transport)  # what is written is still sent first


def let_go(transport: asyncio.WriteTransport | None) -> None:
    """Close a client socket for good. asyncio's close waits until the client has read what is
    still queued for it: a client that never reads kept its socket, and its slot, past every
    deadline (red team). What is still queued is dropped once the client reads less than
    MIN_DRAIN_BYTES in a linger (a slow reader still gets the end of its answer)."""
    if transport is None:
        return
    transport.close()
    if queued := transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(LINGER_SECONDS, _drop_if_unread, transport, queued)


def _drop_if_unread(transport: asyncio.WriteTransport, queued: float) -> None:
    left = transport.get_write_buffer_size()  # 0 once closed
    if left and queued - left < MIN_DRAIN_BYTES:
        transport.abort()
    elif left:
        asyncio.get_running_loop().call_later(LINGER_SECONDS, _drop_if_unread, transport, left)


def preauth_over(flow: http.HTTPFlow) -> None:
    """An RPC upgrade no longer waiting for its connect: its client's count goes down (once)."""
    admitted = flow.metadata.get(ADMITTED)
    if isinstance(admitted, Admitted) and admitted.preauth is not None:
        admitted.preauth.release()


def websocket_message_limit(flow: http.HTTPFlow) -> int:
    admitted = flow.metadata.get(ADMITTED)
    return client_message_limit(flow.metadata.get(RPC_SESSION), isinstance(admitted, Admitted) and admitted.rpc)


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int | None, fd_limit: int) -> int:
    """Kept below the descriptor limit, so a flood is refused at accept instead of breaking the
    process: each proxied connection holds two descriptors, and some are kept for everything else."""
    derived = max(16, (fd_limit - 256) // 2)
    return min(configured, derived) if configured is not None else derived


class OpenClient(NamedTuple):
    """A client connection: its share of the cap (where its client has one), and its socket. (Not
    a dataclass: `mitmdump -s` loads this file outside sys.modules, where dataclasses fail.)"""

    client: connection.Client
    share: ClientShare | None
    transport: asyncio.WriteTransport | None


class ToolsInvokeGuard:
    """Enforces the /tools/invoke contract (and hygiene on every other route) in front of a gateway."""

    name = "openclaw_sidecar"

    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime
        # One per flow at a time (body, upstream answer, WebSocket connect frame), by flow id.
        self._timers = Deadlines()
        self._clients: dict[str, OpenClient] = {}
        # By client: the deadline of a connection that holds nothing admitted, one waiting for a
        # request head (new, or idle since its last answer) or an RPC socket whose connect is not
        # accepted yet. When the cap is full, the one nearest its deadline makes room (_make_room);
        # one idle since an authenticated call only when no other is left.
        self._evictable = Deadlines()
        self._idle_callers = Deadlines()
        self._leaving: set[str] = set()  # made room with, and not gone yet
        self._lingering: dict[str, None] = {}  # of those, the ones still closing (oldest first)
        self._idle_upstreams = Deadlines()  # by client: its upstream connection, once idle
        self._max_connections = connection_cap(None, raise_fd_limit())
        self._connection_shares = ClientShares(connections_per_client(self._max_connections))
        # Exchanges not yet answered (client id → flows by id) and open WebSockets: what a drain waits for.
        self._in_flight: dict[str, dict[str, http.HTTPFlow]] = {}
        self._websockets: dict[str, http.HTTPFlow] = {}
        self.draining = False
        self._relay_judge = ws_relay.Judge(session=lambda flow: flow.metadata.get(RPC_SESSION),
                                           message_limit=websocket_message_limit, judged=self._frame_judged)

    def _exchange_over(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flow.response.status_code != 101:
            preauth_over(flow)  # no RPC socket came of it (refused, unreachable, gone)
        flows = self._in_flight.get(flow.client_conn.id)
        if flows is not None:
            flows.pop(flow.id, None)
            if not flows:
                del self._in_flight[flow.client_conn.id]

    def _live_runtime(self) -> Runtime:
        """The runtime, inside a hook whose guard has already refused to work without one (a
        method: mitmproxy reads every attribute of an addon when it registers it)."""
        if self.runtime is None:
            raise RuntimeError("no sidecar configuration loaded (set sidecar_config)")
        return self.runtime

    def use_runtime(self, runtime: Runtime) -> None:
        """Swap in a reloaded runtime: requests from here on are judged by it. Open WebSockets were
        admitted, and are judged, under the old one (a secret since revoked, a ceiling since
        lowered): if the configuration changed, they are closed as the gateway closes its own when
        its secret changes, so their clients reconnect under the new rules."""
        changed = self.runtime is None or self.runtime.config != runtime.config
        self.runtime = runtime
        for flow in list(self._websockets.values()) if changed else ():
            if not flow.metadata.get(ws_relay.WS_CLOSING):
                close_websocket(flow, *RULES_CHANGED)

    def begin_drain(self) -> None:
        """Answers from now on close their connection; WebSockets are closed with 1001, and
        connections with no exchange in flight are closed now, as Node's server.close() closes idle
        ones: a call sent on one as the process stopped was forwarded and cut off (red team)."""
        self.draining = True
        relaying = {flow.client_conn.id for flow in self._websockets.values()}
        for flow in list(self._websockets.values()):
            close_websocket(flow, 1001, "going away")
        for client_id, record in list(self._clients.items()):
            if client_id not in self._in_flight and client_id not in relaying and not compat.head_begun(record.client):
                let_go(record.transport)

    def abandon_in_flight(self) -> int:
        """The process stops with calls still in flight (the drain deadline, a second signal): each
        one already forwarded is audited now, `outcome: shutdown`, while the audit log is still
        open. The upstream may have acted on it; after the stop, nothing would say so. Returns how
        many were (a request still arriving reached no one and is not)."""
        forwarded = [flow for by_id in self._in_flight.values() for flow in by_id.values() if FORWARDED in flow.metadata]
        for flow in forwarded:
            self._audit_unfinished(flow, "shutdown")
            flow.metadata[CUT_OFF] = True
        return len(forwarded)

    async def wait_idle(self, seconds: float) -> bool:
        """Until no exchange is in flight (True) or `seconds` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            while self._in_flight or self._websockets:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.05)
            await asyncio.sleep(WRITE_FLUSH_SECONDS)  # the last answers leave the socket buffers
            if not (self._in_flight or self._websockets):  # nothing came in meanwhile
                return True

    # ---- options (only for `mitmdump -s`; the embedded runner passes a runtime) -----------

    def load(self, loader: Any) -> None:
        loader.add_option("sidecar_config", str | None, None, "Path to the openclaw-sidecar YAML/JSON5 config file.")
        compat.apply_patches(MAX_HEAD_BYTES, websocket_message_limit, self._websocket_layer)

    def configure(self, updated: set[str]) -> None:
        if "sidecar_config" not in updated:
            return
        if not ctx.options.sidecar_config:
            if self.runtime is None:  # loaded by mitmdump without a config: refuse to start
                raise exceptions.OptionsError("sidecar_config is required: --set sidecar_config=FILE")
            return
        try:
            config = load_config(Path(ctx.options.sidecar_config))
            runtime = build_runtime(config)  # the storage and its password file
        except ConfigError as exc:
            raise exceptions.OptionsError(f"sidecar_config: {exc}") from None
        audit.configure(config.sidecar.audit_log)
        self.runtime = runtime

    # ---- connections: bounded before anyone is authenticated -------------------------------

    def running(self) -> None:
        ctx.options.update(**REQUIRED_OPTIONS)
        ctx.options.update_known(**MITMDUMP_OPTIONS)
        if self.runtime is not None:
            self._max_connections = connection_cap(self.runtime.config.sidecar.max_connections, raise_fd_limit())
            self._connection_shares.per_client = connections_per_client(self._max_connections)
        CLIENT_CONNECTIONS.set_function(lambda: len(self._clients))

    def client_connected(self, client: connection.Client) -> None:
        peer = client.peername[0] if client.peername else None  # uvloop has none once the client reset
        who = self.runtime.pipeline.connection_client(peer) if self.runtime and peer else None
        share = self._connection_shares.acquire(who) if who is not None else None
        if who is not None and share is None:
            CONNECTIONS_REFUSED.inc()
            LOG_ONCE_PER_INTERVAL.warning(log, "one client holds its share (%d) of the connection cap: closing its new "
                                          "connections at accept", self._connection_shares.per_client)
            client.error = "per-client connection limit reached"
            return
        if len(self._clients) - len(self._leaving) >= self._max_connections and not self._make_room():
            if share is not None:
                share.release()
            CONNECTIONS_REFUSED.inc()
            LOG_ONCE_PER_INTERVAL.warning(log, "connection cap (%d) reached: closing new connections at accept", self._max_connections)
            client.error = "connection limit reached"
            return
        self._clients[client.id] = OpenClient(client, share, compat.client_transport(client))
        self._arm_head_deadline(client)

    def _make_room(self) -> bool:
        """The cap is full: the connection nearest its deadline gets, now, what that deadline would
        give it (408, a silent close for an idle keep-alive one, 1008 for an RPC socket), and a new
        one takes its slot; a connection idle since an authenticated call goes only when no other
        is left. Many addresses, each within its share, filled the cap with sockets that never
        sent a head, and every other client was closed at accept. False when every connection
        holds admitted work."""
        evicted = self._room_from(self._evictable) or self._room_from(self._idle_callers)
        if evicted is None:
            return False
        self._leaving.add(evicted)
        self._lingering[evicted] = None
        while len(self._lingering) > EVICTION_SLACK:  # a flood outran their lingers
            oldest = next(iter(self._lingering))
            del self._lingering[oldest]
            self._drop_client(oldest)
        CONNECTIONS_EVICTED.inc()
        LOG_ONCE_PER_INTERVAL.warning(log, "connection cap (%d) reached: answering the connection nearest its head or "
                                      "connect deadline early to make room", self._max_connections)
        return True

    def _room_from(self, table: Deadlines) -> str | None:
        """The connection whose deadline in `table` is nearest, answered now; None: none left."""
        while (key := table.fire_earliest()) is not None:
            if key in self._clients and key not in self._leaving:
                return str(key)
        return None

    def _arm_evictable(self, client_id: str, seconds: float, action: Callable[[], object]) -> None:
        """A deadline that may make room, for a connection that is still here and not leaving: a
        hook that waited (the limiter's Redis) resumes after its client is gone, and an entry
        armed then would have counted as room made while none was (review)."""
        if client_id in self._clients and client_id not in self._leaving:
            self._evictable.arm(client_id, seconds, action)

    def client_disconnected(self, client: connection.Client) -> None:
        """mitmproxy has closed the socket, and waits for the client to read what is left: the
        sidecar lets go of it, and its slot, now (finished by let_go)."""
        gone = self._clients.pop(client.id, None)
        if gone is not None:
            if gone.share is not None:
                gone.share.release()
            let_go(gone.transport)
        self._leaving.discard(client.id)
        self._lingering.pop(client.id, None)
        self._disarm_head_deadline(client)
        self._idle_upstreams.cancel(client.id)
        self._in_flight.pop(client.id, None)

    def _arm_head_deadline(self, client: connection.Client, *, answered: bool = False, caller: bool = False) -> None:
        """The next request head must be complete within headReadSeconds (also closes idle
        keep-alive connections: dripping bytes never extends it). `answered`: it follows an
        answer on this connection, not its opening; `caller`: to an authenticated call."""
        # Without a configuration (mitmdump -s before sidecar_config is set) requests are refused
        # anyway; the connection still gets the default deadline.
        timeouts = self.runtime.config.sidecar.timeouts if self.runtime else Timeouts()
        seconds = timeouts.head_read_seconds
        deadlines = self._idle_callers if caller else self._evictable
        deadlines.arm(client.id, seconds, lambda: self._head_deadline_passed(client, answered))

    def _disarm_head_deadline(self, client: connection.Client) -> None:
        self._evictable.cancel(client.id)
        self._idle_callers.cancel(client.id)

    def _head_deadline_passed(self, client: connection.Client, answered: bool) -> None:
        """408, as from Node's headersTimeout, for a head begun and not finished and for a new
        connection that sent nothing; a connection idle since its last answer is closed without
        a word, as Node closes an idle keep-alive one (a 408 there answered a request nobody
        sent). Checked against the gateway: silent close at ~6 s, 408 at ~60-90 s. A connection
        that sent nothing is closed at once, with no linger: a flood of them made room for others
        (_make_room) only as fast as their lingers ended."""
        HEAD_TIMEOUTS.inc()
        writer = compat.client_writer(client)
        if writer is None:
            return
        begun = compat.head_begun(client)
        if answered and not begun:
            let_go(writer.transport)
        else:
            write_final_answer(writer, envelopes.head_timeout(), None, linger=begun)

    # ---- hooks ----------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._disarm_head_deadline(flow.client_conn)
        self._idle_upstreams.cancel(flow.client_conn.id)
        if flow.response or flow.error or not flow.live:
            return
        if flow.client_conn.peername is None:  # reset before its address was read: no one to judge or answer
            VANISHED_REQUESTS.inc()
            flow.kill()
            return
        if flow.request.http_version == "HTTP/2.0":
            # Node keeps a 2.0 line's connection as it keeps a 1.0 one (llhttp_should_keep_alive):
            # closed after the answer unless asked otherwise. mitmproxy kept it open and read on.
            flow.request.http_version = "HTTP/1.0"
        self._in_flight.setdefault(flow.client_conn.id, {})[flow.id] = flow
        started = time.perf_counter()
        try:
            pipeline = self._live_runtime().pipeline
            view = view_of(flow)
            flow.metadata[VIEW] = view
            pending = view.declared_length()  # None: chunked or unknown
            # Usually the whole body came in with the head (None: not all of it, or chunked).
            body = b"" if pending == 0 else None if pending is None else compat.unread_request_prefix(flow.client_conn, pending)
            decision = await pipeline.on_head(view)
            if isinstance(decision, Refuse):
                # A refused head with a body still to come is answered at once and the connection
                # closed: a stranger never makes us wait for a body or keep a flow open for one.
                # A body already here costs nothing more: that answer keeps the connection, since
                # a reconnect costs us far more than it costs the client.
                await self._refuse(flow, decision, early=body is None)
                return
            flow.metadata[ADMITTED], flow.metadata[ADMITTED_BY] = decision, pipeline
            if body is None:
                self._start_body_timer(flow)
                return
            # The body came with its head: judged now, so that a refusal is answered here, without
            # mitmproxy's request and emulated responseheaders stages (a 404 then costs what a 401
            # does). The request hook forwards it only if mitmproxy delivers these very bytes.
            verdict = await pipeline.on_body(decision, body)
            if isinstance(verdict, Refuse):
                await self._refuse(flow, verdict, early=False)
            else:
                flow.metadata[JUDGED_BODY] = (body, verdict)
        except Exception:
            self._fail_closed(flow, "requestheaders")
        finally:
            DECISION_SECONDS.observe(time.perf_counter() - started)

    async def request(self, flow: http.HTTPFlow) -> None:
        self._cancel_timer(flow)
        self._evictable.cancel(flow.client_conn.id)  # the body of an unauthenticated call is here
        if flow.metadata.get(ANSWERED):
            if flow.killable:
                flow.kill()  # already answered directly; nothing may go upstream
            return
        if flow.response or flow.error or not flow.live:
            return
        try:
            if not isinstance(flow.metadata.get(ADMITTED), Admitted):
                raise RuntimeError("request reached the body stage without a head decision")
            body = flow.request.raw_content or b""
            judged = flow.metadata.pop(JUDGED_BODY, None)
            if judged is not None and (judged[0] != body or flow.request.trailers):
                raise RuntimeError("the body mitmproxy delivered is not the one judged with the head")
            while True:
                pipeline = self._live_runtime().pipeline
                if flow.metadata.get(ADMITTED_BY) is not pipeline:
                    # A reload came while the request was judged or its body arrived: a secret since
                    # revoked, a ceiling since lowered, admit nothing more. The whole request is
                    # judged again by today's rules.
                    judged = None
                    preauth_over(flow)  # the earlier decision's count; the new one takes its own
                    del flow.metadata[ADMITTED]  # a refusal now is audited as the new rules' alone
                    head = await pipeline.on_head(flow.metadata[VIEW])
                    if isinstance(head, Refuse):
                        await self._refuse(flow, head, early=False)
                        return
                    flow.metadata[ADMITTED], flow.metadata[ADMITTED_BY] = head, pipeline
                decision = judged[1] if judged is not None else await pipeline.on_body(flow.metadata[ADMITTED], body, bool(flow.request.trailers))
                if isinstance(decision, Refuse):
                    await self._refuse(flow, decision, early=False)
                    return
                if self._live_runtime().pipeline is pipeline:  # no reload landed while the judgement waited
                    self._forward(flow, decision)
                    return
        except Exception:
            self._fail_closed(flow, "request")

    def response(self, flow: http.HTTPFlow) -> None:
        """Review what the upstream answered (the hook also fires for answers we set ourselves)."""
        self._exchange_over(flow)
        if flow.websocket is None and flow.client_conn.id in self._clients:
            admitted = flow.metadata.get(ADMITTED)  # the exchange is over: next head, or idle
            self._arm_head_deadline(flow.client_conn, answered=True, caller=isinstance(admitted, Admitted) and admitted.authenticated)
            client = flow.client_conn
            self._idle_upstreams.arm(client.id, UPSTREAM_IDLE_SECONDS, lambda: compat.close_idle_upstreams(client))
        if self.draining and flow.websocket is None and flow.response is not None:
            flow.response.headers["Connection"] = "close"
        admitted = flow.metadata.get(ADMITTED)
        forward: Forward | None = flow.metadata.get(FORWARDED)
        if forward is None or not isinstance(admitted, Admitted) or flow.response is None:
            return
        upstream_status = flow.response.status_code
        try:
            replacement = self._live_runtime().pipeline.review_response(admitted, upstream_status)
            if replacement is not None:
                log.warning("upstream answered %s on %s; body replaced", upstream_status, admitted.route)
                flow.response = response_of(replacement, flow.request.method)
            self._audit_forward(flow, forward, flow.response.status_code, upstream_status)
        except Exception:
            self._fail_closed(flow, "response")

    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy is about to send its own HTML error page; send the gateway-style one instead."""
        self._exchange_over(flow)
        try:
            self._answer_error(flow)
        except Exception:
            self._fail_closed(flow, "error")

    def _answer_error(self, flow: http.HTTPFlow) -> None:
        self._cancel_timer(flow)
        if flow.error is None:
            return
        message = flow.error.msg.lower()
        if flow.metadata.get(ANSWERED) or "client disconnected" in message or not flow.client_conn.state & ConnectionState.CAN_WRITE:
            self._audit_unfinished(flow, "client_gone")  # a forwarded call its client left (else audited)
            return
        if "request body exceeds" in message:
            reason = Reason.PAYLOAD_TOO_LARGE
        elif self._upstream_failed(flow):
            timed_out = "timeout" in message or "timed out" in message
            reason = Reason.UPSTREAM_TIMEOUT if timed_out else Reason.UPSTREAM_UNREACHABLE
            log.warning("upstream failure: %s", flow.error.msg)
        elif flow.response is not None and not flow.response.stream:
            # Its answer broke off before any of it was relayed: ours, not mitmproxy's bare 502.
            reason = Reason.UPSTREAM_UNREACHABLE
            log.warning("upstream failure during its answer: %s", flow.error.msg)
        else:  # a streamed answer broke off after its head reached the client
            self._audit_unfinished(flow, "upstream_failed")
            return
        envelope = answer(reason)
        answered = answer_directly(flow, envelope)
        if FORWARDED in flow.metadata:
            ended = reason if flow.response is None else "upstream_failed"
            self._audit_unfinished(flow, ended if answered else "client_gone", reason=reason)
        elif answered and CUT_OFF not in flow.metadata:
            self._audit(flow, "refused", reason, envelope.status)

    def _audit_unfinished(self, flow: http.HTTPFlow, outcome: str, *, reason: ReasonCode | None = None) -> None:
        """A forwarded call whose client did not get the upstream's whole answer is audited too,
        once: with what the client was sent (our 502 or 504, under its `reason`; the upstream's
        status once its head was relayed; or none) and how it ended."""
        forward: Forward | None = flow.metadata.get(FORWARDED)
        if forward is None:
            return
        upstream_status = flow.response.status_code if flow.response is not None else None
        self._audit_forward(flow, forward, flow.metadata.get(ANSWERED) or upstream_status, upstream_status,
                            reason=reason, outcome=outcome)

    @staticmethod
    def _upstream_failed(flow: http.HTTPFlow) -> bool:
        """The request was admitted and sent whole, and no answer came."""
        return flow.metadata.get(ADMITTED) is not None and flow.response is None and bool(flow.request.timestamp_end)

    def done(self) -> None:
        self._timers.clear()
        self._evictable.clear()
        self._idle_callers.clear()
        self._idle_upstreams.clear()

    # ---- helpers ----------------------------------------------------------------------------

    async def _refuse(self, flow: http.HTTPFlow, decision: Refuse, *, early: bool) -> None:
        if early:
            compat.drop_request_body(flow.client_conn)  # nothing will read it: not even while the pacer waits
        pace = self._live_runtime().refusal_pacer.refused(decision.client_ip or peer_ip(flow))
        if pace > 0:
            REFUSALS_PACED.inc()
        delay = max(decision.delay_s, pace)
        made_room = delay > 0 and await self._paced(flow, delay)
        self._audit(flow, "refused", decision.reason, decision.envelope.status, refusal=decision)
        if made_room:
            answer_directly(flow, decision.envelope)  # now, and the connection closed
            if flow.killable:
                flow.kill()
            return
        if early and answer_directly(flow, decision.envelope):
            return
        if early:
            compat.drop_request_body(flow.client_conn, dropped=False)  # mitmproxy answers once the body is in
        flow.response = response_of(decision.envelope, flow.request.method)

    async def _paced(self, flow: http.HTTPFlow, delay: float) -> bool:
        """Wait out a refusal's pace; True when its connection was made room with meanwhile. A
        paced connection holds nothing admitted, and a flood of paced refusals, cheap by design,
        held every slot (red team)."""
        client = flow.client_conn.id
        over = asyncio.Event()
        # Not asyncio.wait_for: hooks run inline in the connection's task (compat), and a timeout
        # would cancel that task, the connection with it.
        paced = asyncio.get_running_loop().call_later(delay, over.set)
        self._arm_evictable(client, delay, over.set)
        try:
            await over.wait()
        finally:
            paced.cancel()
            self._evictable.cancel(client)
        return client in self._leaving

    def _forward(self, flow: http.HTTPFlow, decision: Forward) -> None:
        admitted = decision.admitted
        request = flow.request
        request.authority = ""
        request.path = admitted.target
        request.headers = http.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in admitted.headers])
        if decision.body is not None:
            request.raw_content = decision.body
            if "transfer-encoding" not in request.headers:
                request.headers["content-length"] = str(len(decision.body))
        flow.metadata[FORWARDED] = decision  # audited once the upstream has answered (or failed)
        if admitted.authenticated:  # a public call anyone makes would wipe a stranger's streak (red team)
            self._live_runtime().refusal_pacer.let_through(admitted.client_ip or peer_ip(flow))
        self._start_upstream_timer(flow)

    def _audit_forward(self, flow: http.HTTPFlow, forward: Forward, status: int | None, upstream_status: int | None,
                       *, reason: ReasonCode | None = None, outcome: str | None = None) -> None:
        if flow.metadata.pop(FORWARDED, None) is None:
            return  # audited already (a WebSocket upgrade's 101, then its end)
        decision = "shadowed" if forward.shadowed else "forwarded"
        self._audit(flow, decision, reason or forward.reason, status, tool=forward.tool, upstream_status=upstream_status,
                    shadowed=forward.shadowed, detail=forward.detail, outcome=outcome)

    def _audit(self, flow: http.HTTPFlow, decision: str, reason: ReasonCode, status: int | None, *,
               refusal: Refuse | None = None, tool: str | None = None, method: str | None = None,
               upstream_status: int | None = None, shadowed: tuple[str, ...] = (), detail: str | None = None,
               outcome: str | None = None, granted: tuple[str, ...] | None = None, line: bool = True) -> None:
        """Logged from the view the decision was made on, not from the flow we may have rewritten;
        `method` names a WebSocket RPC method instead of the HTTP one, `granted` the scopes its
        connection was granted at connect (the upgrade's are only a ceiling); `line` False counts
        the decision without writing its line."""
        view: RequestView | None = flow.metadata.get(VIEW)
        admitted: Admitted | None = flow.metadata.get(ADMITTED)
        auth = admitted.auth if admitted else refusal.auth if refusal else None
        scopes = granted if granted is not None else tuple(admitted.scopes.scopes) if admitted and admitted.scopes else None
        started = flow.request.timestamp_start
        (audit.record if line else audit.count)(audit.AuditEntry(
            request_id=flow.id, route=admitted.route if admitted else (refusal.route if refusal else None) or "head",
            decision=decision, reason=reason, status=status,
            method=method or (view.method if view else flow.request.data.method.decode("latin-1")),
            target=view.target if view else raw_target(flow.request),
            client=admitted.client_ip if admitted else refusal.client_ip if refusal else None,
            peer=peer_ip(flow),
            auth=auth.method if auth else None, identity=auth.user if auth else None,
            previous_secret=auth.previous_secret if auth else False,
            scopes=scopes,
            tool=tool or (refusal.tool if refusal else None), upstream_status=upstream_status,
            duration_ms=round((time.time() - started) * 1000, 2) if started else None, shadowed=shadowed,
            detail=detail or (refusal.detail if refusal else None), outcome=outcome,
        ))

    def _fail_closed(self, flow: http.HTTPFlow, hook: str) -> None:
        """Answer 500 and make sure nothing goes upstream; raises nothing (mitmproxy would only log
        it and relay the request)."""
        INTERNAL_ERRORS.inc()
        log.exception("internal error in %s; request refused with 500", hook)
        preauth_over(flow)  # an upgrade answered 500 never becomes an RPC session
        envelope = envelopes.internal_error()
        try:
            answered = answer_directly(flow, envelope)
        except Exception:
            log.exception("could not write the 500 to the client")
            answered = False
        if not answered:
            flow.response = response_of(envelope, flow.request.method)
        elif flow.killable:
            # Answered on the socket, which mitmproxy does not know: unless killed, a flow that
            # failed in the request hook still went upstream, raw (red team: the client got 500,
            # the gateway ran the unjudged call).
            flow.kill()
        try:
            self._audit_unfinished(flow, "internal_error")  # a call already forwarded: the gateway may have acted
        except Exception:
            log.exception("could not audit the call that failed")

    def _start_body_timer(self, flow: http.HTTPFlow) -> None:
        """A body nobody authenticated (a route that checks its own credential) holds a slot that
        can be made room with, as a head would."""
        seconds = self._live_runtime().config.sidecar.timeouts.body_read_seconds
        fire = self._audited(flow, lambda: answer_directly(flow, answer(Reason.BODY_TIMEOUT)), Reason.BODY_TIMEOUT)
        if flow.metadata[ADMITTED].authenticated:
            self._timers.arm(flow.id, seconds, fire)
        else:
            self._arm_evictable(flow.client_conn.id, seconds, fire)

    def _start_upstream_timer(self, flow: http.HTTPFlow) -> None:
        seconds = self._live_runtime().config.sidecar.timeouts.upstream_read_seconds

        def expire() -> None:
            if flow.response is None and flow.live:
                log.warning("upstream did not answer within %ss", seconds)
                answered = answer_directly(flow, answer(Reason.UPSTREAM_TIMEOUT))
                self._audit_unfinished(flow, Reason.UPSTREAM_TIMEOUT if answered else "client_gone", reason=Reason.UPSTREAM_TIMEOUT)

        self._timers.arm(flow.id, seconds, expire)

    def _audited(self, flow: http.HTTPFlow, action: Any, audit_as: Reason) -> Callable[[], None]:
        """`action`, with a refusal it made audited as `audit_as`."""

        def fire() -> None:
            if flow.metadata.get(ANSWERED):
                return  # answered meanwhile (an oversized body, an upstream failure): nothing more to say
            if action():
                self._audit(flow, "refused", audit_as, flow.metadata.get(ANSWERED))

        return fire

    def _cancel_timer(self, flow: http.HTTPFlow) -> None:
        self._timers.cancel(flow.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The upstream answered: no more upstream deadline. An answer whose end is not known (an
        event stream, a chunked or close-delimited body) or a large one is relayed as it arrives
        (relayed_as_it_arrives); not one the review may replace (that needs the whole answer)."""
        self._cancel_timer(flow)
        response, admitted = flow.response, flow.metadata.get(ADMITTED)
        if response is None or response.status_code == 101 or not isinstance(admitted, Admitted) or not relayed_as_it_arrives(response):
            return
        try:
            runtime = self._live_runtime()
            if runtime.pipeline.review_response(admitted, response.status_code) is None:
                response.stream = True
                if admitted.auth.method == PUBLIC_READ_METHOD:
                    # A public download holds its slot for as long as the client takes to read it
                    # (a Control UI asset, never read, held one with no deadline at all: red
                    # team): it can make room, and it ends at the upstream deadline.
                    client = flow.client_conn.id
                    self._arm_evictable(client, runtime.config.sidecar.timeouts.upstream_read_seconds,
                                        lambda: self._drop_client(client))
        except Exception:
            self._fail_closed(flow, "responseheaders")

    def _drop_client(self, client_id: str) -> None:
        """Abort a client's connection now, whatever is still queued for it."""
        record = self._clients.get(client_id)
        if record is not None and record.transport is not None:
            record.transport.abort()

    # ---- the gateway's WebSocket RPC ----------------------------------------------------------

    def _websocket_layer(self, context: Context, flow: http.HTTPFlow) -> Layer | None:
        """RPC sessions get the sidecar's own relay (addons/ws_relay.py); other upgrades, and any
        whose 101 negotiated an extension, mitmproxy's layer and the websocket_message hook."""
        admitted = flow.metadata.get(ADMITTED)
        if isinstance(admitted, Admitted) and admitted.rpc and not ws_relay.extensions(flow):
            return ws_relay.RpcRelay(context, flow, self._relay_judge)
        return None

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._websockets[flow.id] = flow
        admitted = flow.metadata.get(ADMITTED)
        if not isinstance(admitted, Admitted) or not admitted.websocket:
            # A 101 to a request that was no upgrade the sidecar admitted (a hostile upstream):
            # mitmproxy would relay what the client sends next as frames no one judged.
            close_websocket(flow, 1002, "protocol error")
            return
        if self.draining:
            close_websocket(flow, 1001, "going away")
            return
        try:
            runtime = self._live_runtime()
            if flow.metadata.get(ADMITTED_BY) is not runtime.pipeline:
                close_websocket(flow, *RULES_CHANGED)  # admitted before a reload: see use_runtime
                return
            if not admitted.rpc:
                return
            flow.metadata[RPC_SESSION] = runtime.pipeline.rpc_session(admitted)
            seconds = runtime.config.sidecar.websocket.connect_seconds
            self._arm_evictable(flow.client_conn.id, seconds, self._audited(flow, lambda: close_websocket(flow, *CONNECT_TIMEOUT),
                                                                            Reason.WEBSOCKET_CONNECT_TIMEOUT))
        except Exception:
            INTERNAL_ERRORS.inc()
            log.exception("internal error in websocket_start; connection closed")
            close_websocket(flow, 1011, "internal error")

    async def rpc_verdict(self, pending: ws_relay.PendingVerdict) -> None:
        """A relayed frame whose judge had to wait: finished here, while its relay pauses."""
        await pending.finish()

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """On mitmproxy's own layer: judge each client frame before the gateway reads it; server
        frames pass unchanged, but for the connect's answer (`RpcSession.server_message`)."""
        assert flow.websocket is not None
        messages = flow.websocket.messages
        message = messages[-1]
        # mitmproxy keeps every message of a connection for its UI; a long RPC session would grow
        # without bound. Only the one being judged is needed (the layer holds it by reference).
        del messages[:-1]
        if message.injected:
            return
        if not message.from_client:
            session = flow.metadata.get(RPC_SESSION)
            if session is not None and session.answer_pending and message.is_text:
                message.content = session.server_message(message.content) or message.content
            return
        if flow.metadata.get(ws_relay.WS_CLOSING):
            message.drop()
            return
        session = flow.metadata.get(RPC_SESSION)
        admitted = flow.metadata.get(ADMITTED)
        try:
            if session is None:
                if isinstance(admitted, Admitted) and admitted.rpc:
                    message.drop()  # the session could not be built: nothing is relayed unread
                elif isinstance(admitted, Admitted) and rpc_on_plugin_socket(admitted.route, message.content):
                    # Another upgrade the sidecar admitted is relayed unread, unless a frame speaks
                    # the gateway's RPC on an opened plugin's socket.
                    message.drop()
                    close_websocket(flow, *NOT_THIS_PROTOCOL)
                    self._audit(flow, "refused", Reason.RPC_ON_PLUGIN_SOCKET, None)
                return
            verdict = await session.client_frame(message.content)
            if flow.metadata.get(ws_relay.WS_CLOSING):
                message.drop()  # closed while the judgement waited (a reload): its rules are gone
                return
            if verdict.verdict == "forward":
                if verdict.payload is not None:
                    message.content = verdict.payload
            elif verdict.verdict == "reply":
                message.drop()
                ctx.master.commands.call("inject.websocket", flow, True, verdict.payload, True)  # text, as the gateway
            elif verdict.verdict == "close":
                message.drop()
                close_websocket(flow, verdict.close_code, verdict.close_text, verdict.payload)
            else:  # "drop": neither relayed nor answered, and the connection stays
                message.drop()
            self._frame_judged(flow, session, verdict)
        except Exception:
            INTERNAL_ERRORS.inc()
            log.exception("internal error judging a WebSocket frame; connection closed")
            message.drop()
            close_websocket(flow, 1011, "internal error")

    def _frame_judged(self, flow: http.HTTPFlow, session: RpcSession, verdict: FrameVerdict) -> None:
        """After each verdict, on either layer: a connected session needs no connect timer; refusals,
        connects and shadowed frames are audited."""
        if session.connected:
            self._evictable.cancel(flow.client_conn.id)
            preauth_over(flow)
        if verdict.verdict != "forward" or verdict.method == "connect" or verdict.shadowed:
            decision = "shadowed" if verdict.shadowed else "forwarded" if verdict.verdict == "forward" else "refused"
            self._audit(flow, decision, verdict.reason, None, tool=verdict.tool, method=verdict.method,
                        shadowed=(verdict.reason,) if verdict.shadowed else (), detail=verdict.detail, granted=session.granted,
                        line=verdict.audited)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        preauth_over(flow)
        self._websockets.pop(flow.id, None)
        self._evictable.cancel(flow.client_conn.id)
        flow.metadata.pop(RPC_SESSION, None)


addons = [ToolsInvokeGuard()]
