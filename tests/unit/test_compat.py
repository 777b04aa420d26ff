"""Pins every assumption the two compatibility modules make about library internals
(addons/compat.py: mitmproxy and h11; sidecar/limits_compat.py: limits), so an upgrade that
changes one fails here, by name, before it silently weakens a guarantee."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import socket
import time
from collections.abc import Callable

import h11
import pytest
import wsproto
import wsproto.events
from h11 import _readers as h11_readers
from limits.aio.storage import MemoryStorage
from mitmproxy import exceptions, hooks, http
from mitmproxy.connection import ConnectionState
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, events, layer, server
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes, websocket
from mitmproxy.proxy.layers.http import (HttpLayer, HttpStream, ReceiveHttp, RequestData, RequestEndOfMessage, ResponseEndOfMessage,
                                         ResponseHeaders, _http1)
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from addons import compat
from sidecar.body import MAX_BODY_BYTES
from sidecar.limits_compat import SweepThrottledMemoryStorage
from sidecar.metrics import HEAD_REFUSALS
from sidecar.pipeline import MAX_HEAD_BYTES

UPSTREAM_HOOK_ARGS = hooks.Hook.args  # before any test applies cache_hook_arguments


# ---- mitmproxy ------------------------------------------------------------------------------------


def test_the_patched_methods_exist_with_the_shapes_wrapped() -> None:
    assert list(inspect.signature(inspect.unwrap(HttpStream.check_body_size)).parameters) == ["self", "request"]
    for method in map(inspect.unwrap, (_http1.Http1Server.read_headers, _http1.Http1Server.read_body,
                                       _http1.Http1Client.read_headers, websocket.WebsocketLayer.start)):
        assert len(inspect.signature(method).parameters) == 2, method  # (self, event): generator hooks
    assert issubclass(_http1.ChunkedReader, h11_readers.ChunkedReader)


def test_the_message_typecheck_dropped_is_only_a_debug_typecheck() -> None:
    """skip_debug_typechecks removes MessageData.__post_init__: upstream defines it only under
    `if __debug__:` and it does nothing but check field types."""
    from mitmproxy import http

    source = inspect.getsource(http.MessageData)
    assert "if __debug__:" in source and "def __post_init__" in source
    body = source.split("def __post_init__", 1)[1].split("def ", 1)[0]
    assert "typecheck.check_option_type" in body and "self." not in body.replace("getattr(self,", "")
    compat.skip_debug_typechecks()
    assert http.MessageData.__post_init__ is compat._no_typecheck
    response = http.Response.make(404, b"{}", {"content-type": "application/json"})
    assert (response.status_code, response.content, response.headers["content-length"]) == (404, b"{}", "2")


def test_mitmproxys_own_error_answers_are_bare_and_counted() -> None:
    """Upstream's make_error_response writes an HTML page naming mitmproxy and its version; the
    patched one answers as Node does, and counts a refused head. Http1Server looks the function
    up as a module global, so replacing it there reaches both of its callers."""
    source = inspect.getsource(_http1.Http1Server)
    assert source.count("make_error_response(") == 2
    compat.answer_protocol_errors_as_node()
    before = HEAD_REFUSALS._value.get()
    assert _http1.make_error_response(400, "Received invalid header name") == compat.HEAD_MALFORMED
    assert HEAD_REFUSALS._value.get() == before + 1
    assert _http1.make_error_response(502, "upstream failed") == (
        b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


def test_a_refused_heads_bytes_stay_out_of_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    """mitmproxy quotes the request line it refused, which may carry a password or a token."""
    compat.answer_protocol_errors_as_node()
    with caplog.at_level(logging.DEBUG):
        _http1.make_error_response(400, "Bad HTTP request line: b'GET http://u:pw-secret@h/?token=tok-secret HTTP/1.1'")
    assert "answered 400 at the HTTP layer: Bad HTTP request line" in caplog.text
    assert "secret" not in caplog.text


def test_cached_hook_arguments_are_the_fields_in_order() -> None:
    """cache_hook_arguments replaces Hook.args, which upstream spells as the fields in order."""
    from mitmproxy import hooks

    assert "for field in fields(self)" in inspect.getsource(UPSTREAM_HOOK_ARGS)
    compat.cache_hook_arguments()
    for hook_class in set(hooks.all_hooks.values()):
        values = [object() for _ in dataclasses.fields(hook_class)]
        hook = hook_class(*values)
        assert hook.args() == UPSTREAM_HOOK_ARGS(hook) == values, hook_class


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls


class SyncHook(Recorder):
    def requestheaders(self, flow: object) -> None:
        self.calls.append(f"{self.name}:sync")


class AsyncHook(Recorder):
    async def requestheaders(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}:async")


class FailingHook(Recorder):
    def requestheaders(self, flow: object) -> None:
        self.calls.append(f"{self.name}:fails")
        raise RuntimeError("addon bug")


class HaltingHook(Recorder):
    def requestheaders(self, flow: object) -> None:
        self.calls.append(f"{self.name}:halts")
        raise exceptions.AddonHalt()


class ModuleNamedLikeAHook(Recorder):
    requestheaders = inspect  # upstream skips a module imported under a hook's name


def _chain(calls: list[str]) -> list[Recorder]:
    return [SyncHook("a", calls), Recorder("no-hook", calls), ModuleNamedLikeAHook("module", calls), AsyncHook("b", calls),
            FailingHook("c", calls), SyncHook("d", calls), HaltingHook("e", calls), SyncHook("f", calls)]


async def _dispatch(direct: bool) -> list[str]:
    from mitmproxy.http import HTTPFlow
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
    from mitmproxy.test import taddons, tflow

    calls: list[str] = []
    with taddons.context() as context:
        manager = context.master.addons
        for addon in _chain(calls):
            manager.chain.append(addon)
        if direct:
            compat.dispatch_hooks_directly(manager)
        flow: HTTPFlow = tflow.tflow()
        await manager.handle_lifecycle(HttpRequestHeadersHook(flow))
    return calls


async def test_direct_hook_dispatch_runs_the_hooks_upstream_runs_in_its_order() -> None:
    """dispatch_hooks_directly keeps trigger_event's semantics: only addons defining the hook,
    in chain order, sync and async, an addon's error logged and the rest still run, AddonHalt
    ending the chain, a module named like a hook skipped."""
    upstream = await _dispatch(direct=False)
    direct = await _dispatch(direct=True)
    assert upstream == ["a:sync", "b:async", "c:fails", "d:sync", "e:halts"]
    assert direct == upstream


async def test_direct_hook_dispatch_refuses_nested_chains_and_defers_to_a_changed_one() -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
    from mitmproxy.test import taddons, tflow

    class Parent:
        addons: list[object] = []

    with taddons.context() as context:
        manager = context.master.addons
        manager.chain.append(Parent())
        with pytest.raises(ValueError):
            compat.dispatch_hooks_directly(manager)
    calls: list[str] = []
    with taddons.context() as context:
        manager = context.master.addons
        compat.dispatch_hooks_directly(manager)
        manager.chain.append(SyncHook("late", calls))  # added after: mitmproxy's own walk finds it
        await manager.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
    assert calls == ["late:sync"]


def _commands_handled(function: object) -> list[str]:
    """The command classes a function tests `command` against, in order."""
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    return [test.args[1].attr for test in ast.walk(tree)
            if isinstance(test, ast.Call) and getattr(test.func, "id", None) == "isinstance"
            and getattr(test.args[0], "id", None) == "command" and isinstance(test.args[1], ast.Attribute)]


def test_inline_hooks_handle_every_command_upstream_handles() -> None:
    """complete_hooks_inline replaces ConnectionHandler.server_event: it takes hooks and writes to
    open connections itself, every other command (a write to a closed one included) is handled as
    upstream writes it, and upstream's hook task is the one it stands in for."""
    compat.complete_hooks_inline()
    upstream = inspect.unwrap(server.ConnectionHandler.server_event)
    assert upstream is not compat._server_event
    handled = _commands_handled(upstream)
    taken_first = _commands_handled(compat._server_event.__code__)  # its own source, not the one it wraps
    assert sorted(taken_first) == ["SendData", "StartHook"]
    assert [name for name in handled if name not in taken_first] == _commands_handled(compat._run_command)
    assert "self.hook_task(command)" in inspect.getsource(upstream)
    hook_task = inspect.getsource(server.ConnectionHandler.hook_task)
    assert "await self.handle_hook(hook)" in hook_task and "events.HookCompleted(hook)" in hook_task
    assert "_server_event_lock" in inspect.getsource(upstream)


class ScriptedLayer:
    """Stands for a connection's layer stack: answers Start with the given commands, records
    every event it is handed."""

    def __init__(self, commands: list[object]) -> None:
        self.commands, self.seen = commands, []  # type: ignore[var-annotated]

    def handle_event(self, event: object):  # type: ignore[no-untyped-def]
        self.seen.append(event)
        if type(event).__name__ == "Start":
            for command in self.commands:
                if isinstance(command, Exception):
                    raise command  # a bug in the layers, mid-event
                yield command


def _hook_handler(commands: list[object], waiting: set[int] = frozenset(),  # type: ignore[assignment]
                  on_hook: Callable[[object], None] = lambda hook: None):  # type: ignore[no-untyped-def]
    from mitmproxy import options
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import tflow

    class Handler(server.ConnectionHandler):
        async def handle_hook(self, hook: object) -> None:
            on_hook(hook)
            if id(hook) in waiting:
                await asyncio.sleep(0)

    handler = Handler(Context(tflow.tclient_conn(), options.Options()))
    handler.layer = ScriptedLayer(commands)  # type: ignore[assignment]
    return handler


def _completed(handler: server.ConnectionHandler) -> list[object]:
    from mitmproxy.proxy import events

    return [event.command for event in handler.layer.seen if isinstance(event, events.HookCompleted)]  # type: ignore[attr-defined]


async def test_hooks_that_do_not_wait_complete_in_the_same_server_event() -> None:
    from mitmproxy.proxy import events
    from mitmproxy.proxy.server_hooks import ClientConnectedHook
    from mitmproxy.test import tflow

    compat.complete_hooks_inline()
    first, waits, last = (ClientConnectedHook(tflow.tclient_conn()) for _ in range(3))
    handler = _hook_handler([first, waits, last], waiting={id(waits)})
    tasks_before = len(asyncio.all_tasks())
    await handler.server_event(events.Start())
    assert _completed(handler) == [first, last]  # no task, no turn of the loop for those two
    assert len(asyncio.all_tasks()) == tasks_before + 1  # the one that waits goes on as a task
    for _ in range(5):
        await asyncio.sleep(0)
    assert _completed(handler) == [first, last, waits]


async def test_inline_hooks_are_bounded_per_server_event() -> None:
    from mitmproxy.proxy import events
    from mitmproxy.proxy.server_hooks import ClientConnectedHook
    from mitmproxy.test import tflow

    compat.complete_hooks_inline()
    hooks = [ClientConnectedHook(tflow.tclient_conn()) for _ in range(compat.INLINE_HOOKS_PER_EVENT + 3)]
    handler = _hook_handler(hooks)  # type: ignore[arg-type]
    await handler.server_event(events.Start())
    assert _completed(handler) == hooks[:compat.INLINE_HOOKS_PER_EVENT]  # the rest wait for the loop
    for _ in range(10):
        await asyncio.sleep(0)
    assert _completed(handler) == hooks


def test_the_request_stages_skipped_for_head_answers_are_upstreams_and_idle_on_answered_flows() -> None:
    """skip_request_stages_of_head_answers keeps upstream's end of a request body minus two
    hooks; in the embedded chain only the guard acts in those hooks (tests/unit/test_adapter.py,
    tests/unit/test_embedded.py)."""
    compat.skip_request_stages_of_head_answers()
    source = inspect.getsource(inspect.unwrap(HttpStream.state_consume_request_body))
    body_end = source.split("elif isinstance(event, RequestEndOfMessage):", 1)[1]
    for step in ("self.flow.request.timestamp_end = time.time()", "self.flow.request.data.content = bytes(self.request_body_buf)",
                 "self.client_state = self.state_done", "yield HttpRequestHook(self.flow)",
                 "elif self.flow.response:", "yield HttpResponseHeadersHook(self.flow)", "yield from self.send_response()"):
        assert step in body_end, step


@pytest.mark.parametrize("upstream", ["http://127.0.0.1:1", "https://127.0.0.1:1"])
def test_the_reverse_proxy_stack_never_terminates_client_tls(upstream: str) -> None:
    """For a ClientHello mitmproxy stacks client TLS before HTTP; patched, the hello reaches the
    HTTP layer (and Node's 400) and only an https:// upstream's own TLS stays."""
    compat.plain_http_listener()
    with taddons.context() as tctx:
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse(f"reverse:{upstream}")
        context = Context(client, tctx.options)
        modes.ReverseProxy(context), layer.NextLayer(context)  # what stands above it on a connection
        stack, chain = NextLayer._setup_reverse_proxy(context, b"\x16\x03\x01\x00\x05"), []
        while stack is not None:
            chain.append(type(stack))
            stack = getattr(stack, "child_layer", None)
    assert chain == ([ServerTLSLayer] if upstream.startswith("https") else []) + [HttpLayer]


def test_the_unread_body_is_found_through_the_layer_stack() -> None:
    """unread_request_prefix walks handler.layer (NextLayer) → .layer (the mode) → .child_layer
    (NextLayer) → .layer (HttpLayer) → .connections[client] (Http1Server) → .buf; the e2e test of
    a refused request keeping its connection checks the result."""
    assert "self.layer = layer.NextLayer(" in inspect.getsource(server.ConnectionHandler.__init__)
    assert "self.child_layer = layer.NextLayer(" in inspect.getsource(modes.ReverseProxy)
    assert "self.connections" in inspect.getsource(HttpLayer.__init__)
    assert "self.buf = ReceiveBuffer()" in inspect.getsource(_http1.Http1Connection)
    # unread_request_prefix copies the start of the buffer's bytearray
    from h11._receivebuffer import ReceiveBuffer

    assert "self._data = bytearray()" in inspect.getsource(ReceiveBuffer.__init__)


def test_the_websocket_layer_builds_its_connections_through_the_module_name() -> None:
    """The message bound swaps `websocket.WebsocketConnection`; start() must look it up there."""
    source = inspect.getsource(inspect.unwrap(websocket.WebsocketLayer.start))  # upstream's, patched or not
    assert "WebsocketConnection(" in source and "self.client_ws" in source
    assert "frame_buf" in inspect.getsource(websocket.WebsocketLayer.relay_messages)
    assert issubclass(compat._BoundedWebsocketConnection, websocket.WebsocketConnection)


def _bounded_websocket_events(*frames: tuple[str, bool]) -> list[wsproto.events.Event]:
    """What mitmproxy's own layer reads of a client's frames with a 100-byte message limit."""
    flow = tflow.twebsocketflow()
    server = compat._BoundedWebsocketConnection(wsproto.ConnectionType.SERVER, conn=flow.client_conn)
    server.flow, server.message_limit = flow, lambda _: 100  # type: ignore[method-assign,assignment]
    client = wsproto.Connection(wsproto.ConnectionType.CLIENT)
    for data, finished in frames:
        server.receive_data(client.send(wsproto.events.TextMessage(data, message_finished=finished)))
    return list(server.events())


def test_mitmproxys_websocket_layer_bounds_each_client_message_as_it_grows() -> None:
    """For upgrades the relay does not take (a negotiated extension): each message on its own."""
    read = _bounded_websocket_events(("x" * 60, False), ("x" * 40, True), ("x" * 100, True))
    assert [len(event.data) for event in read] == [60, 40, 100]
    *_, last = _bounded_websocket_events(("x" * 60, False), ("x" * 41, False))
    assert isinstance(last, wsproto.events.CloseConnection) and last.code == 1009


def test_upgraded_flows_build_their_layer_through_the_websocket_layer_class() -> None:
    """choose_websocket_layer redirects `websocket.WebsocketLayer(...)`, which flow_done calls by
    that name; the relay replaces it whole (tests/unit/test_ws_relay.py drives both)."""
    assert "websocket.WebsocketLayer(self.context, self.flow)" in inspect.getsource(inspect.unwrap(HttpStream.flow_done))
    assert websocket.WebsocketLayer.__init__ is not object.__init__  # the relay's __init__ is its own


def test_client_writer_reaches_the_transport_the_way_the_proxyserver_keeps_it() -> None:
    assert isinstance(Proxyserver().connections, dict)
    handler_init = inspect.getsource(server.ConnectionHandler.__init__)
    assert "self.transports" in handler_init and "self.client" in handler_init
    assert {"reader", "writer"} <= set(inspect.signature(server.ConnectionIO).parameters)


# ---- request heads, however they are cut into reads ---------------------------------------------

_HEADS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # CR LF before a request line: skipped
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  chunked \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x0b\r\n\r\n",  # a control byte at a value's end
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",  # a CR inside a value
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n",  # a bare LF ending a line
    b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n",
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip, Chunked \t \r\n\r\n",
    b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n",  # the request line as Node reads it
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na\nb",  # a body is not judged as a head
]
_MALFORMED = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12}


def _answered_malformed(reads: list[bytes]) -> bool:
    with taddons.context() as tctx:
        context = Context(tflow.tclient_conn(), tctx.options)
        reader = _http1.Http1Server(context)
        commands_out = list(reader.handle_event(events.Start()))
        for data in reads:
            commands_out += reader.handle_event(events.DataReceived(context.client, data))
    return any(isinstance(c, commands.SendData) and c.data == compat.HEAD_MALFORMED for c in commands_out)


@pytest.mark.parametrize("index", range(len(_HEADS)))
def test_a_head_is_judged_the_same_however_it_is_cut_into_reads(index: int) -> None:
    """Each read judges only the bytes earlier reads left unjudged (a head dripped a byte at a time
    rescanned whole on every read); whole, in two reads at every cut, or a byte at a time, the
    verdict is the same."""
    compat.limit_request_heads(16 * 1024)
    head = _HEADS[index]
    cuts = [[head], [head[i:i + 1] for i in range(len(head))]] + [[head[:i], head[i:]] for i in range(1, len(head))]
    assert {_answered_malformed(reads) for reads in cuts} == {index in _MALFORMED}


def _head_answer(reads: list[bytes]) -> list[bytes]:
    compat.limit_request_heads(MAX_HEAD_BYTES)
    with taddons.context() as tctx:
        context = Context(tflow.tclient_conn(), tctx.options)
        reader = _http1.Http1Server(context)
        out = list(reader.handle_event(events.Start()))
        for data in reads:
            out += reader.handle_event(events.DataReceived(context.client, data))
    return [c.data for c in out if isinstance(c, commands.SendData)]


def test_a_head_up_to_the_limit_is_read_and_one_byte_more_gets_431() -> None:
    """The limit counts the whole head; Node's count leaves a few bytes of it out (a head of
    16,408 bytes passed it), so nothing Node refuses is read here."""
    start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    exact = start + b"b" * (MAX_HEAD_BYTES - len(start) - len(end)) + end
    assert _head_answer([exact]) == []
    assert _head_answer([exact[:-4] + b"b" + end]) == [compat.HEAD_TOO_LARGE]


def test_a_head_node_cannot_parse_gets_400_even_with_a_large_body_behind_it() -> None:
    assert _head_answer([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\n\n" + b"a" * 20_000]) == [compat.HEAD_MALFORMED]


def test_the_next_request_on_a_connection_is_judged_from_its_first_byte() -> None:
    """What earlier reads judged of one head says nothing about the next one's bytes."""
    compat.limit_request_heads(16 * 1024)
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n"
    with taddons.context() as tctx:
        context = Context(tflow.tclient_conn(), tctx.options)
        reader = _http1.Http1Server(context)
        list(reader.handle_event(events.Start()))
        list(reader.handle_event(events.DataReceived(context.client, first[:30])))
        list(reader.handle_event(events.DataReceived(context.client, first[30:])))
        list(reader.handle_event(ResponseHeaders(1, http.Response.make(204), True)))
        list(reader.handle_event(ResponseEndOfMessage(1)))
        out = list(reader.handle_event(events.DataReceived(context.client, b"GET / HTTP/1.1\nHost: x\r\n\r\n")))
    assert [c.data for c in out if isinstance(c, commands.SendData)] == [compat.HEAD_MALFORMED]
    assert not any(isinstance(c, ReceiveHttp) for c in out)


def _body_commands(head: bytes, body: bytes, *, refused: bool = False,
                   writable: bool = True) -> tuple[list[commands.Command], int]:
    """What the patched Http1Server gives for a request whose body arrives in one read after its
    head, and how many bytes it left in its buffer."""
    compat.answer_malformed_bodies(compat.MAX_BODY_BYTES + compat.UNREAD_BODY_MARGIN)
    with taddons.context() as tctx:
        context = Context(tflow.tclient_conn(), tctx.options)
        reader = _http1.Http1Server(context)
        list(reader.handle_event(events.Start()))
        list(reader.handle_event(events.DataReceived(context.client, head)))
        if refused:
            compat.drop_request_body(context.client)
        if not writable:
            context.client.state = ConnectionState.CAN_READ
        out = list(reader.handle_event(events.DataReceived(context.client, body)))
        return out, len(reader.buf)


_CHUNKED = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def _body_data(out: list[commands.Command]) -> list[bytes]:
    return [c.event.data for c in out if isinstance(c, ReceiveHttp) and isinstance(c.event, RequestData)]


def test_the_pieces_one_read_decodes_go_on_as_one() -> None:
    """Each 1-byte chunk walked mitmproxy's HTTP layers and our hooks on its own: 12 MB of them
    held the event loop 26 s (red team)."""
    out, _ = _body_commands(_CHUNKED, b"1\r\nx\r\n" * 500 + b"0\r\n\r\n")
    assert _body_data(out) == [b"x" * 500]
    assert any(isinstance(c, ReceiveHttp) and isinstance(c.event, RequestEndOfMessage) for c in out)


@pytest.mark.parametrize("line, answer", [(b"1;a=" + b"b" * 20_000 + b"\r\n", compat.CHUNK_LINE_TOO_LONG), (b"1 x\r\n", compat.HEAD_MALFORMED)])
def test_a_chunk_size_line_is_answered_as_node_answers_it(line: bytes, answer: bytes) -> None:
    compat.refuse_trailers()
    compat.strict_chunk_headers()
    out, _ = _body_commands(_CHUNKED, line)
    assert [c.data for c in out if isinstance(c, commands.SendData)] == [answer]


def test_bytes_pipelined_behind_a_request_are_bounded_by_one_whole_requests_worth() -> None:
    """Past a head's and a body's limit of unread bytes the connection is closed."""
    bound = MAX_HEAD_BYTES + MAX_BODY_BYTES
    compat.bound_pipelined_bytes(bound)
    for pipelined, closes in ((bound, False), (bound + 1, True)):
        with taddons.context() as tctx:
            context = Context(tflow.tclient_conn(), tctx.options)
            reader = _http1.Http1Server(context)
            list(reader.handle_event(events.Start()))
            list(reader.handle_event(events.DataReceived(context.client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")))
            out = list(reader.handle_event(events.DataReceived(context.client, b"A" * pipelined)))
        assert any(isinstance(c, commands.CloseConnection) for c in out) is closes


def test_each_piece_of_a_body_counts_toward_its_limit() -> None:
    """50,000 one-byte chunks are 300 KB on the wire and cost what 50,000 requests' parsing does."""
    out, _ = _body_commands(_CHUNKED, b"1\r\nx\r\n" * 50_000)
    assert any(isinstance(c, commands.CloseConnection) for c in out) and _body_data(out) == []


def test_the_body_of_a_request_refused_at_its_head_is_dropped_unparsed() -> None:
    """It was parsed and held (2 MB a connection, and the freed buffers stayed with the process)."""
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    out, left = _body_commands(head, b"A" * 500_000, refused=True)
    assert _body_data(out) == [] and left == 0 and not any(isinstance(c, commands.CloseConnection) for c in out)
    out, left = _body_commands(head, b"A" * 500_000)
    assert _body_data(out) == [b"A" * 500_000]


def test_the_body_of_a_request_that_can_no_longer_be_answered_is_dropped_unparsed() -> None:
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    out, left = _body_commands(head, b"A" * 500, writable=False)
    assert _body_data(out) == [] and left == 0


def test_a_dropped_body_still_counts_toward_the_limit() -> None:
    """Dropped unparsed, a refused request's body is still bounded: past the limit the connection closes."""
    limit = compat.MAX_BODY_BYTES + compat.UNREAD_BODY_MARGIN
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * limit)
    out, _ = _body_commands(head, b"A" * limit, refused=True)
    assert not any(isinstance(c, commands.CloseConnection) for c in out)
    out, _ = _body_commands(head, b"A" * (limit + 1), refused=True)
    assert any(isinstance(c, commands.CloseConnection) for c in out)


# ---- h11 ------------------------------------------------------------------------------------------


def test_h11_reads_chunk_size_lines_through_the_module_pattern() -> None:
    compat.strict_chunk_headers()
    reader = h11_readers.ChunkedReader()
    buf = h11._receivebuffer.ReceiveBuffer()
    buf += b"20 \r\n"
    with pytest.raises(h11.LocalProtocolError):
        reader(buf)  # h11's own pattern accepts the space; ours, found through the module, does not
    buf = h11._receivebuffer.ReceiveBuffer()
    buf += b"2\r\nok\r\n"
    assert bytes(h11_readers.ChunkedReader()(buf).data) == b"ok"


# ---- limits ---------------------------------------------------------------------------------------


def test_the_redis_bridge_reads_one_prefixed_key_as_get_many_reads_several() -> None:
    """get_many's MGET is the bridge's own `get`, for several keys: the prefixed key read from the
    read connection, a missing key counted as 0."""
    from limits.aio.storage.redis.redispy import RedispyBridge

    source = inspect.getsource(RedispyBridge.get)
    assert "key = self.prefixed_key(key)" in source
    assert "return int(await self.get_connection(readonly=True).get(key) or 0)" in source


@pytest.mark.redis
async def test_get_many_reads_what_get_reads(redis_url: str) -> None:
    from sidecar.limits_compat import get_many
    from sidecar.ratelimit import async_storage_uri

    from limits.storage import storage_from_string

    storage = storage_from_string(async_storage_uri(redis_url), implementation="redispy", key_prefix="compat-test")
    await storage.incr("a", 60, amount=7)
    assert await get_many(storage, ["a", "missing"]) == [await storage.get("a"), await storage.get("missing")] == [7, 0]
    memory = SweepThrottledMemoryStorage(sweep_interval_s=3600)
    await memory.incr("a", 60, amount=3)
    assert await get_many(memory, ["a", "missing"]) == [3, 0]


async def test_get_many_fails_as_get_fails() -> None:
    """A Redis that is not there: the same StorageError from both, so the limiter's outage policy
    reads it as a storage failure, not as a bug."""
    from limits.errors import StorageError
    from limits.storage import storage_from_string

    from sidecar.limits_compat import get_many
    from tests.ports import free_port

    storage = storage_from_string(f"async+redis://127.0.0.1:{free_port()}/0", implementation="redispy",
                                  wrap_exceptions=True, socket_connect_timeout=1)
    with pytest.raises(StorageError):
        await storage.get("a")
    with pytest.raises(StorageError):
        await get_many(storage, ["a", "b"])


@pytest.mark.redis
async def test_get_many_asks_redis_once_for_every_key(redis_url: str) -> None:
    """One MGET, not a GET per key: the limiter reads an address's counters on every request."""
    import redis

    from sidecar.limits_compat import get_many
    from sidecar.ratelimit import async_storage_uri

    from limits.storage import storage_from_string

    storage = storage_from_string(async_storage_uri(redis_url), implementation="redispy", key_prefix="compat-test")
    await storage.incr("a", 60, amount=2)
    observer = redis.Redis.from_url(redis_url)
    observer.config_resetstat()
    assert await get_many(storage, ["a", "b", "c"]) == [2, 0, 0]
    stats = observer.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1 and "cmdstat_get" not in stats
    observer.close()


async def test_get_many_fails_as_get_fails_when_the_storage_does_not_wrap_its_errors() -> None:
    """Unwrapped, both raise redis-py's own ConnectionError (not a NameError of ours)."""
    import redis.exceptions
    from limits.storage import storage_from_string

    from sidecar.limits_compat import get_many
    from tests.ports import free_port

    storage = storage_from_string(f"async+redis://127.0.0.1:{free_port()}/0", implementation="redispy",
                                  socket_connect_timeout=1)
    for read in (storage.get("a"), get_many(storage, ["a", "b"])):
        with pytest.raises(redis.exceptions.ConnectionError):
            await read


def test_limits_memory_storage_keeps_the_mappings_the_sweep_clears() -> None:
    storage = MemoryStorage()
    for name in ("storage", "expirations", "locks"):
        assert hasattr(storage, name), name


async def test_the_throttled_sweep_expires_keys_when_read_and_counts_as_upstream() -> None:
    storage = SweepThrottledMemoryStorage(sweep_interval_s=3600)
    assert await storage.incr("k", expiry=0.05) == 1
    assert await storage.incr("k", expiry=0.05) == 2
    await asyncio.sleep(0.1)
    assert await storage.get("k") == 0  # upstream `get` drops the expired key
    assert await storage.incr("k", expiry=60) == 1
    assert "k" in storage.expirations and "k" in storage.storage


class FrozenClock:
    """time.time for `limits`' memory storage and the sweep alike, moved by hand: expiry and the
    sweep's interval without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        monkeypatch.setattr(time, "time", lambda: self.now)


async def test_an_expired_counter_starts_again_at_its_next_increment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No read in between: the increment itself drops the expired count (a failure window that
    never ended would lock a client out for good)."""
    clock = FrozenClock(monkeypatch)
    storage = SweepThrottledMemoryStorage(sweep_interval_s=3600)
    assert [await storage.incr("k", expiry=60) for _ in range(3)] == [1, 2, 3]
    clock.now += 30
    assert await storage.incr("k", expiry=60) == 4
    assert storage.expirations["k"] == clock.now + 30  # a fixed window: counted from its first failure
    clock.now += 30
    assert await storage.incr("k", expiry=60) == 1
    assert storage.expirations["k"] == clock.now + 60


async def test_the_sweep_clears_expired_keys_once_per_interval_never_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every expired key leaves all three mappings at a sweep; between sweeps an expired key is
    left to be read lazily (a sweep per increment scanned every key per failed login)."""
    clock = FrozenClock(monkeypatch)
    storage = SweepThrottledMemoryStorage(sweep_interval_s=10)  # the first sweep is due 10 s from now
    clock.now += 5
    await storage.incr("old", expiry=1)
    clock.now += 4.5  # "old" has expired; the first interval has not passed
    await storage.incr("live", expiry=100)
    assert "old" in storage.storage
    clock.now += 0.5  # the interval to the byte
    await storage.incr("live", expiry=100)
    assert all("old" not in mapping for mapping in (storage.storage, storage.expirations, storage.locks))
    await storage.incr("brief", expiry=1)
    await storage.incr("exact", expiry=10)  # expires at the next sweep to the byte, and goes with it
    clock.now += 9  # "brief" has expired; the next sweep is due 10 s after the last
    await storage.incr("live", expiry=100)
    assert "brief" in storage.storage and storage.storage["live"] == 3
    clock.now += 1
    await storage.incr("live", expiry=100)
    assert list(storage.storage) == ["live"] and list(storage.expirations) == ["live"]


class RecordingWriter(asyncio.StreamWriter):
    """A real stream writer that also records how it was asked to write."""

    calls: list[tuple[str, object]]

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.calls.append(("write", bytes(data)))
        super().write(data)


async def _socket_writer() -> tuple[RecordingWriter, socket.socket]:
    ours, peer = socket.socketpair()
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), ours)
    writer = RecordingWriter(transport, protocol, None, asyncio.get_running_loop())
    writer.calls = []
    return writer, peer


async def test_consecutive_writes_to_a_connection_leave_in_one_send_in_order() -> None:
    """The server event joins consecutive SendData to one connection (a message's head and body)
    into one write; a write to another connection, any other command, or a hook (which may write
    to the socket itself) sends what was gathered first."""
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy.server_hooks import ClientConnectedHook
    from mitmproxy.test import tflow

    compat.complete_hooks_inline()
    client, other = tflow.tclient_conn(), tflow.tserver_conn()
    hook = ClientConnectedHook(client)
    script = [commands.SendData(client, b"head "), commands.SendData(client, b"body "),
              commands.SendData(other, b"elsewhere"), commands.SendData(client, b"more "),
              commands.Log("between"), commands.SendData(client, b"before-hook "), hook,
              commands.SendData(client, b"last")]
    client_writer, client_peer = await _socket_writer()
    other_writer, other_peer = await _socket_writer()
    handler = _hook_handler(script, on_hook=lambda _: client_writer.write(b"hook-wrote "))
    handler.transports = {client: server.ConnectionIO(writer=client_writer),
                          other: server.ConnectionIO(writer=other_writer)}
    await handler.server_event(events.Start())
    assert client_writer.calls == [("write", b"head body "), ("write", b"more "),
                                   ("write", b"before-hook "), ("write", b"hook-wrote "), ("write", b"last")]
    assert other_writer.calls == [("write", b"elsewhere")]
    await asyncio.sleep(0)
    assert client_peer.recv(1000) == b"head body more before-hook hook-wrote last"
    for writer, peer in ((client_writer, client_peer), (other_writer, other_peer)):
        writer.close()
        peer.close()


async def test_a_large_message_is_written_so_that_a_client_that_does_not_read_is_waited_for() -> None:
    """Past the join limit head and body are written one by one: each write lets the transport
    pause the connection, so mitmproxy's drain waits for a client that does not read. (The
    standard loop's writelines never pauses: pipelined 3.5 MB answers then grew the heap.)"""
    from mitmproxy.proxy import commands, events
    from mitmproxy.test import tflow

    compat.complete_hooks_inline()
    client = tflow.tclient_conn()
    writer, peer = await _socket_writer()
    body = b"x" * (4 * 1024 * 1024)
    handler = _hook_handler([commands.SendData(client, b"head "), commands.SendData(client, body)])
    handler.transports = {client: server.ConnectionIO(writer=writer)}
    await handler.server_event(events.Start())
    assert [call[0] for call in writer.calls] == ["write", "write"]
    drained = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0)
    assert not drained.done()  # paused: the peer has read nothing
    peer.setblocking(False)
    received = 0
    while not drained.done():
        try:
            received += len(peer.recv(1 << 20))
        except BlockingIOError:
            await asyncio.sleep(0.001)
    assert received >= 4 * 1024 * 1024 - 64 * 1024  # what was left below the low-water mark may follow
    writer.close()
    peer.close()


async def test_a_crash_in_the_layers_is_logged_and_what_they_wrote_before_it_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    """As upstream, which had written it already: the crash ends the event, not the connection."""
    from mitmproxy.proxy import commands, events
    from mitmproxy.test import tflow

    compat.complete_hooks_inline()
    client = tflow.tclient_conn()
    writer, peer = await _socket_writer()
    handler = _hook_handler([commands.SendData(client, b"before "), commands.SendData(client, b"the bug"),
                             RuntimeError("layer bug")])
    handler.transports = {client: server.ConnectionIO(writer=writer)}
    await handler.server_event(events.Start())
    assert writer.calls == [("write", b"before the bug")]
    assert "mitmproxy has crashed!" in caplog.text and "layer bug" in caplog.text
    caplog.clear()
    writer.write_eof()  # a write after our EOF raises in asyncio, for upstream's write as for ours
    await handler.server_event(events.Start())  # logged, not raised into the connection handler
    assert "after write_eof" in caplog.text
    writer.close()
    peer.close()
