"""addons/tools_invoke.py driven without sockets: mitmproxy's taddons context and tflow factories.

Only the adapter's own paths are exercised: view → pipeline → flow. `answer_directly` needs a
live proxyserver connection; without one it returns False, so the fallback (setting
`flow.response`) is what these tests observe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons import compat, tools_invoke
from addons.tools_invoke import ADMITTED, ADMITTED_BY, ToolsInvokeGuard, answer_directly, response_of, view_of
from sidecar import envelopes
from sidecar.config import load_config
from sidecar.envelopes import Envelope
from sidecar.metrics import INTERNAL_ERRORS, VANISHED_REQUESTS
from sidecar.pipeline import Admitted
from sidecar.reasons import Reason, answer
from sidecar.runtime import Runtime, build_runtime
from sidecar.scopes import DEFAULT_SCOPES

from tests.builders import write_config

TOKEN = "T"
UPSTREAM = "UP"
CLIENT = "203.0.113.7"
PROXY = "198.51.100.5"
UPSTREAM_URL = "http://127.0.0.1:18789"
BODY = b'{"tool":"agents_list","args":{}}'


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/unit/conftest.py


def make_flow(
    *, peer: str = CLIENT, method: str = "POST", path: str = "/tools/invoke",
    headers: list[tuple[str | bytes, str | bytes]] | None = None, body: bytes = b"",
    authority: str = "", trailers: list[tuple[bytes, bytes]] | None = None,
) -> http.HTTPFlow:
    """A live reverse-mode flow from `peer`; headers exactly as given (Host/Content-Length added when absent).

    tflow's defaults (loopback peer, regular mode, `content-length: 7`, body b"content") are
    all overridden so no test silently takes the loopback exemption.
    """
    def b(x: str | bytes) -> bytes:
        return x if isinstance(x, bytes) else x.encode("latin-1")

    fields = [(b(n), b(v)) for n, v in (headers or [])]
    names = {n.lower() for n, _ in fields}
    if b"host" not in names:
        fields.insert(0, (b"Host", b"gw.example"))
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        fields.append((b"Content-Length", str(len(body)).encode()))
    request = tutils.treq(
        host="127.0.0.1", port=18789, method=method.encode(), scheme=b"http", authority=authority.encode(),
        path=path.encode("latin-1"), headers=http.Headers(fields), content=body,
        trailers=http.Headers(trailers) if trailers else None,
    )
    client = tflow.tclient_conn()
    client.peername = (peer, 40_000)
    client.sockname = ("127.0.0.1", 18790)
    client.proxy_mode = ProxyMode.parse(f"reverse:{UPSTREAM_URL}")
    client.tls = False
    return tflow.tflow(client_conn=client, req=request, live=True)


BASE_CONFIG: dict[str, Any] = {
    "sidecar": {"upstream": UPSTREAM_URL, "upstreamAuth": {"token": UPSTREAM},
                "rateLimit": {"loopbackDelayBaseMs": 0},
                "routes": {"allow": ["openai-embeddings"]}},  # a POST route other than /tools/invoke
    "gateway": {"auth": {"token": TOKEN}, "trustedProxies": [PROXY],
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},  # serves /v1/models and /v1/embeddings
}


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = build_runtime(load_config(write_config(tmp_path / "sidecar.yaml", BASE_CONFIG), environ={}))
    yield rt
    await rt.aclose()


@pytest.fixture
async def guard(runtime: Runtime) -> AsyncIterator[ToolsInvokeGuard]:
    addon = ToolsInvokeGuard(runtime)
    with taddons.context(addon, loadcore=False):
        yield addon
        addon.done()


async def run(guard: ToolsInvokeGuard, flow: http.HTTPFlow) -> http.HTTPFlow:
    """The client-side hook sequence up to the point a request would go upstream."""
    await guard.requestheaders(flow)
    await guard.request(flow)
    return flow


def assert_answer(flow: http.HTTPFlow, envelope: Envelope) -> None:
    assert flow.response is not None, "fail closed: a refused flow must carry a response"
    assert flow.response.status_code == envelope.status
    assert flow.response.raw_content == envelope.body
    # Response.make adds the length itself, after the envelope's own headers
    expected = [*envelope.headers, ("content-length", str(len(envelope.body)))]
    assert [(k.decode(), v.decode()) for k, v in flow.response.headers.fields] == expected


AUTH = ("Authorization", f"Bearer {TOKEN}")


# ---- helpers -------------------------------------------------------------------------------------


def test_make_flow_sets_peer_and_reverse_mode() -> None:
    flow = make_flow(peer="198.51.100.7", body=BODY, headers=[AUTH])
    assert flow.client_conn.peername[0] == "198.51.100.7"
    assert flow.client_conn.proxy_mode.type_name == "reverse"
    assert flow.request.raw_content == BODY
    assert flow.request.headers["content-length"] == str(len(BODY))
    assert flow.live


def test_view_of_keeps_raw_target_order_and_duplicates() -> None:
    flow = make_flow(path="/tools/%2e/invoke", headers=[("A", "1"), ("a", "2"), ("X_Y", b"\xff")])
    v = view_of(flow)
    assert (v.method, v.target, v.peer_ip) == ("POST", "/tools/%2e/invoke", CLIENT)
    assert v.headers == ((b"Host", b"gw.example"), (b"A", b"1"), (b"a", b"2"), (b"X_Y", b"\xff"))


def test_response_of_is_byte_exact() -> None:
    response = response_of(envelopes.method_not_allowed("POST"), "GET")
    assert response.status_code == 405
    assert response.raw_content == b"Method Not Allowed"
    assert response.headers["Allow"] == "POST"
    assert response.headers["content-length"] == "18"


def test_the_answer_to_a_head_request_has_the_length_and_no_body() -> None:
    response = response_of(envelopes.method_not_allowed("POST"), "HEAD")
    assert response.raw_content == b"" and response.headers["content-length"] == "18"


async def test_answer_directly_without_proxyserver_falls_back(guard: ToolsInvokeGuard) -> None:
    assert answer_directly(make_flow(), envelopes.unauthorized()) is False


# ---- refused heads --------------------------------------------------------------------------------

HEAD_REFUSALS = [
    # (id, make_flow kwargs, envelope)
    ("1-get-no-auth", dict(method="GET"), envelopes.method_not_allowed("POST")),
    ("5-no-auth", dict(body=BODY), envelopes.unauthorized()),
    ("6-bad-token", dict(headers=[("Authorization", "Bearer wrong")], body=BODY), envelopes.unauthorized()),
    ("25-untrusted-xff", dict(headers=[AUTH, ("X-Forwarded-For", "10.1.1.1")], body=BODY), envelopes.proxy_attribution_required()),
    ("27-loopback-xff", dict(peer="127.0.0.1", headers=[AUTH, ("X-Forwarded-For", "198.51.100.9")], body=BODY),
     envelopes.proxy_attribution_required()),
    ("28-trusted-proxy-no-xff", dict(peer=PROXY, headers=[AUTH, ("X-Forwarded-Proto", "https")], body=BODY),
     envelopes.proxy_attribution_required()),
    ("D1-duplicate-auth", dict(headers=[AUTH, AUTH], body=BODY), envelopes.bad_request("header 'authorization' is repeated")),
    ("B3-underscore", dict(headers=[AUTH, ("Tailscale_User_Login", "admin")], body=BODY),
     envelopes.bad_request("header name 'Tailscale_User_Login' aliases a protected header")),
    ("D7-obs-fold", dict(headers=[AUTH, ("X-Custom", b"a\r\n b")], body=BODY), envelopes.bad_request("control character in header 'X-Custom'")),
    ("E3-dot-segment", dict(path="/tools/./invoke", headers=[AUTH], body=BODY), envelopes.invalid_request_url()),
    ("46-declared-too-large", dict(headers=[AUTH, ("Content-Length", "2097153")]), envelopes.payload_too_large()),
    ("12-bad-token-large", dict(headers=[("Authorization", "Bearer wrong"), ("Content-Length", "5242880")]), envelopes.unauthorized()),
    ("chunked-no-auth", dict(headers=[("Transfer-Encoding", "chunked")]), envelopes.unauthorized()),
]


@pytest.mark.parametrize("kwargs, envelope", [c[1:] for c in HEAD_REFUSALS], ids=[c[0] for c in HEAD_REFUSALS])
async def test_refused_head_sets_the_envelope(guard: ToolsInvokeGuard, kwargs: dict, envelope: Envelope) -> None:
    flow = make_flow(**kwargs)
    original_headers = flow.request.headers.fields
    await guard.requestheaders(flow)
    assert_answer(flow, envelope)
    assert ADMITTED not in flow.metadata
    # Already answered: the body and response-head hooks leave it alone, which is why the
    # embedded Master skips them (compat.skip_request_stages_of_head_answers).
    await guard.request(flow)
    guard.responseheaders(flow)
    assert_answer(flow, envelope)
    assert not flow.error and flow.live
    assert flow.request.headers.fields == original_headers  # nothing rebuilt for a refused request


async def test_same_request_admitted_from_loopback(guard: ToolsInvokeGuard) -> None:
    """The peer matters: without XFF the loopback client is direct-local and admitted."""
    flow = await run(guard, make_flow(peer="127.0.0.1", headers=[AUTH], body=BODY))
    assert flow.response is None
    assert "x-forwarded-for" not in flow.request.headers


# ---- admitted requests ------------------------------------------------------------------------


async def test_admitted_request_is_rebuilt_in_request_hook(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(path="/tools/invoke?x=1", body=BODY, headers=[
        AUTH, ("x-openclaw-scopes", "operator.read"), ("X-OpenClaw-Sender-Is-Owner", "true"),
        ("x-openclaw-message-to", "channel:24514"), ("Connection", "keep-alive, x-openclaw-scopes"),
        ("Proxy-Authorization", "Basic x"), ("Accept", "*/*"), ("X-Request-Id", "forged"),
    ])
    received = flow.request.headers.fields
    await guard.requestheaders(flow)
    assert isinstance(flow.metadata[ADMITTED], Admitted)
    assert flow.response is None
    assert flow.request.headers.fields == received  # the head hook decides; the body hook rewrites
    assert flow.request.path == "/tools/invoke?x=1"
    await guard.request(flow)
    assert flow.response is None
    assert flow.request.path == "/tools/invoke?x=1"
    assert flow.request.authority == ""
    assert flow.request.raw_content == BODY  # original bytes forwarded
    assert flow.request.headers.fields == (
        (b"Host", b"gw.example"), (b"x-openclaw-message-to", b"channel:24514"), (b"Accept", b"*/*"),
        (b"Content-Length", str(len(BODY)).encode()), (b"Connection", b"keep-alive"),
        (b"Authorization", f"Bearer {UPSTREAM}".encode()),
        (b"x-openclaw-scopes", ",".join(DEFAULT_SCOPES).encode()),
        (b"X-Forwarded-For", CLIENT.encode()),
        (b"X-Request-Id", flow.id.encode()),  # ours, the audit line's; the client's copy is dropped
    )


async def test_trusted_proxy_client_is_forwarded(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(peer=PROXY, body=BODY, headers=[AUTH, ("X-Forwarded-For", "1.1.1.1, 198.51.100.9")]))
    assert flow.response is None
    assert flow.request.headers.get_all("x-forwarded-for") == ["198.51.100.9"]


async def test_absolute_form_tools_target_is_refused(guard: ToolsInvokeGuard) -> None:
    """H2/E3: mitmproxy splits an absolute-form target; the guard still judges all of it."""
    flow = await run(guard, make_flow(authority="gw.example", headers=[AUTH], body=BODY))
    assert flow.response is not None and flow.response.status_code == 400
    assert json.loads(flow.response.content) == {"error": "bad_request", "message": "Invalid request URL"}


async def test_absolute_form_for_own_host_is_forwarded_in_origin_form(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(method="GET", path="/v1/models", authority="gw.example", headers=[AUTH]))
    assert flow.response is None
    assert flow.request.authority == ""
    assert flow.request.path == "/v1/models"


async def test_absolute_form_naming_a_foreign_host_is_refused(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(method="GET", path="/v1/models", authority="evil.example", headers=[AUTH]))
    assert_answer(flow, answer(Reason.FOREIGN_HOST))


async def test_other_route_path_is_canonicalised(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(method="GET", path="/x/../v1/models?a=1", headers=[AUTH]))
    assert flow.response is None
    assert flow.request.path == "/v1/models?a=1"


async def test_rewritten_body_updates_content_length(guard: ToolsInvokeGuard) -> None:
    body = b'{"name":"agents_list","tool":"exec"}'
    flow = await run(guard, make_flow(headers=[AUTH], body=body))
    assert flow.response is None
    forwarded = b'{"name":"agents_list","tool":"agents_list"}'
    assert flow.request.raw_content == forwarded
    assert flow.request.headers.get_all("content-length") == [str(len(forwarded))]


@pytest.mark.parametrize("nominated", ["content-length", "Content-Length, x-openclaw-scopes"])
async def test_connection_nomination_keeps_request_framing(guard: ToolsInvokeGuard, nominated: str) -> None:
    """H1: `Connection: content-length` must not strip the framing of the forwarded request, or the
    upstream reads the body bytes as the next request on the connection (request smuggling)."""
    flow = await run(guard, make_flow(headers=[AUTH, ("Connection", nominated)], body=BODY))
    assert flow.response is None
    assert flow.request.headers.get_all("content-length") == [str(len(BODY))]


async def test_connection_nomination_keeps_framing_on_other_routes(guard: ToolsInvokeGuard) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\nX-OpenClaw-Scopes: operator.admin\r\n\r\n"
    flow = await run(guard, make_flow(path="/v1/embeddings", headers=[AUTH, ("Connection", "content-length")], body=smuggled))
    assert flow.response is None
    assert flow.request.headers.get_all("content-length") == [str(len(smuggled))]


# ---- body refusals ---------------------------------------------------------------------------

BODY_REFUSALS = [
    ("50-empty", b"", envelopes.missing_tool_name()),
    ("52-blank-name", b'{"name":"","tool":"agents_list"}', envelopes.missing_tool_name()),
    ("63-cron", b'{"tool":"cron"}', envelopes.tool_not_available("automations")),
    ("64-exec", b'{"tool":"exec"}', envelopes.tool_not_available("exec")),
]


@pytest.fixture
def body_arrived(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], None]:
    """mitmproxy's reader holds `received` past the head (the body came with it); without this
    fixture the test flows have no reader, as when the body is still on its way."""
    def arrive(received: bytes) -> None:
        monkeypatch.setattr(compat, "unread_request_prefix", lambda client, n: received[:n] if len(received) >= n else None)
    return arrive


@pytest.mark.parametrize("with_head", [True, False], ids=["body-with-head", "body-later"])
@pytest.mark.parametrize("body, envelope", [c[1:] for c in BODY_REFUSALS], ids=[c[0] for c in BODY_REFUSALS])
async def test_body_refusal_sets_the_envelope(guard: ToolsInvokeGuard, body_arrived: Callable[[bytes], None], with_head: bool,
                                              body: bytes, envelope: Envelope) -> None:
    if with_head:
        body_arrived(body)
    flow = make_flow(headers=[AUTH], body=body)
    await guard.requestheaders(flow)
    if with_head:  # judged with the head: answered there, before mitmproxy's request stage
        assert_answer(flow, envelope)
    await guard.request(flow)
    assert_answer(flow, envelope)
    assert flow.request.headers["authorization"] == f"Bearer {TOKEN}"  # not rebuilt: nothing went upstream


async def test_a_body_judged_with_its_head_goes_on_as_judged(guard: ToolsInvokeGuard, body_arrived: Callable[[bytes], None]) -> None:
    body_arrived(BODY)
    flow = make_flow(headers=[AUTH], body=BODY)
    await guard.requestheaders(flow)
    assert flow.response is None
    await guard.request(flow)
    assert flow.response is None and flow.request.raw_content == BODY
    assert flow.request.headers["authorization"] == f"Bearer {UPSTREAM}"


async def test_a_body_other_than_the_one_judged_with_the_head_fails_closed(guard: ToolsInvokeGuard,
                                                                            body_arrived: Callable[[bytes], None]) -> None:
    """What is forwarded is what was judged: if mitmproxy delivered other bytes than its reader
    held at the head, the request is refused with 500, not judged again or sent."""
    body_arrived(BODY)
    delivered = BODY.replace(b"agents_list", b"session_lst")
    assert len(delivered) == len(BODY)
    flow = await run(guard, make_flow(headers=[AUTH], body=delivered))
    assert_answer(flow, envelopes.internal_error())


async def test_a_tool_refusal_is_audited_with_its_layer(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import audit

    entries: list[audit.AuditEntry] = []
    monkeypatch.setattr(audit, "record", entries.append)
    await run(guard, make_flow(headers=[AUTH], body=b'{"tool":"read"}'))
    (entry,) = entries
    assert (entry.decision, entry.reason, entry.tool) == ("refused", "tool_denied", "read")
    assert entry.detail is not None and entry.detail.startswith("http-surface: never built on HTTP")


async def test_invalid_json_is_400(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(headers=[AUTH], body=b'{"tool":'))
    with pytest.raises(json.JSONDecodeError) as parse_error:
        json.loads(b'{"tool":')
    assert_answer(flow, answer(Reason.INVALID_JSON, parse_error.value.msg))


async def test_trailers_are_refused(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(headers=[AUTH, ("Transfer-Encoding", "chunked")], body=BODY,
                                      trailers=[(b"x-openclaw-scopes", b"operator.admin")]))
    assert_answer(flow, envelopes.bad_request("request trailers are not accepted"))


# ---- fail closed ----------------------------------------------------------------------------


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("secret internal detail")


async def test_exception_in_on_head_is_a_sanitised_500(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.runtime.pipeline, "on_head", boom)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert_answer(flow, envelopes.internal_error())
    assert b"secret" not in flow.response.raw_content


async def test_exception_in_the_error_hook_is_a_sanitised_500(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unguarded, mitmproxy would send its own HTML error page."""
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    monkeypatch.setattr(guard.runtime.pipeline, "review_response", boom)
    monkeypatch.setattr(guard, "_cancel_timer", boom)
    flow.error = Error("upstream went away")
    guard.error(flow)
    assert_answer(flow, envelopes.internal_error())


async def test_exception_in_on_body_is_a_sanitised_500(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.runtime.pipeline, "on_body", boom)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert_answer(flow, envelopes.internal_error())


@pytest.mark.parametrize("with_head", [True, False], ids=["body-with-head", "body-later"])
async def test_a_fault_answered_on_the_client_socket_leaves_nothing_to_send_upstream(
        guard: ToolsInvokeGuard, body_arrived: Callable[[bytes], None], monkeypatch: pytest.MonkeyPatch, with_head: bool) -> None:
    """Live, the 500 goes straight to the client's socket, of which mitmproxy knows nothing: after
    the request hook it sends whatever flow is neither answered nor killed upstream, as it stands
    (red team: the client got 500, the gateway ran the unjudged call)."""
    import socket

    ours, peer = socket.socketpair()
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), ours)
    monkeypatch.setattr(compat, "client_writer", lambda client: asyncio.StreamWriter(transport, protocol, None, asyncio.get_running_loop()))
    monkeypatch.setattr(guard.runtime.pipeline, "on_body", boom)
    if with_head:
        body_arrived(BODY)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert flow.metadata[tools_invoke.ANSWERED] == 500 and flow.response is None
    assert not flow.live and flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    await asyncio.sleep(0)
    assert peer.recv(4096).startswith(b"HTTP/1.1 500 ")
    peer.close()


async def test_the_sidecars_own_500_is_not_reviewed_as_an_upstream_answer(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """The response hook also fires for answers we set; only upstream answers are reviewed."""
    monkeypatch.setattr(guard.runtime.pipeline, "on_body", boom)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    guard.response(flow)
    assert_answer(flow, envelopes.internal_error())


async def test_exception_in_review_is_a_sanitised_500(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway has run the call: it is audited, with how it ended."""
    from sidecar import audit

    entries: list[audit.AuditEntry] = []
    monkeypatch.setattr(audit, "record", entries.append)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    monkeypatch.setattr(guard.runtime.pipeline, "review_response", boom)
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true,"result":"secret"}')
    guard.response(flow)
    assert_answer(flow, envelopes.internal_error())
    (entry,) = entries
    assert (entry.decision, entry.tool, entry.outcome) == ("forwarded", "agents_list", "internal_error")


@pytest.mark.parametrize(
    "body, status",
    [
        pytest.param(b'{"tool":" \\ud800"}', 404, id="lone-surrogate-name"),
        pytest.param(b'{"name":"agents_list","tool":"exec","x":"\\udfff"}', None, id="lone-surrogate-rewrite"),
    ],
)
async def test_odd_client_input_is_decided_never_crashes(guard: ToolsInvokeGuard, body: bytes, status: int | None) -> None:
    """Lone surrogates: refused as a look-alike name, or forwarded as strict UTF-8 JSON naming the checked tool."""
    flow = await run(guard, make_flow(headers=[AUTH], body=body))
    if status is not None:
        assert flow.response is not None and flow.response.status_code == status
        return
    assert flow.response is None
    payload = json.loads(flow.request.raw_content.decode("utf-8"))
    assert payload["name"] == payload["tool"] == "agents_list"
    assert flow.request.headers.get_all("content-length") == [str(len(flow.request.raw_content))]


async def test_no_runtime_fails_closed() -> None:
    addon = ToolsInvokeGuard(None)
    with taddons.context(addon, loadcore=False):
        flow = await run(addon, make_flow(headers=[AUTH], body=BODY))
        assert_answer(flow, envelopes.internal_error())


async def test_body_hook_without_head_decision_fails_closed(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(headers=[AUTH], body=BODY)
    await guard.request(flow)  # requestheaders never ran
    assert_answer(flow, envelopes.internal_error())


async def test_broken_view_fails_closed(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = make_flow(headers=[AUTH], body=BODY)
    monkeypatch.setattr(tools_invoke, "view_of", boom)
    await guard.requestheaders(flow)
    assert_answer(flow, envelopes.internal_error())


async def test_a_client_gone_before_its_address_was_read_is_dropped_unjudged(guard: ToolsInvokeGuard) -> None:
    """uvloop reads a connection's address when first asked; after a reset there is none. No one
    is left to judge or answer: the flow is killed and counted, not an internal error."""
    flow = make_flow(headers=[AUTH], body=BODY)
    flow.client_conn.peername = None
    vanished, errors = VANISHED_REQUESTS._value.get(), INTERNAL_ERRORS._value.get()
    await run(guard, flow)
    assert flow.response is None and flow.error is not None and not flow.live
    assert VANISHED_REQUESTS._value.get() == vanished + 1 and INTERNAL_ERRORS._value.get() == errors


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda f: setattr(f, "response", tutils.tresp()), id="already-answered"),
        pytest.param(lambda f: setattr(f, "error", tflow.terr()), id="errored"),
        pytest.param(lambda f: setattr(f, "live", False), id="not-live"),
    ],
)
async def test_hooks_leave_handled_flows_alone(guard: ToolsInvokeGuard, prepare: Callable[[http.HTTPFlow], None]) -> None:
    flow = make_flow(method="GET")  # would be a 405
    prepare(flow)
    before = flow.response
    await guard.requestheaders(flow)
    assert flow.response is before
    assert ADMITTED not in flow.metadata


# ---- review of upstream responses -------------------------------------------------------------


async def test_upstream_500_body_is_replaced(guard: ToolsInvokeGuard) -> None:
    """Case 71: the upstream's error text never reaches the client."""
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.response = tutils.tresp(status_code=500, content=b'{"ok":false,"error":{"message":"boom at /srv/secret.js:12"}}')
    guard.response(flow)
    assert_answer(flow, envelopes.tool_execution_failed())


@pytest.mark.parametrize("status", [200, 400, 403, 404])
async def test_other_upstream_statuses_pass_through(guard: ToolsInvokeGuard, status: int) -> None:
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    upstream = tutils.tresp(status_code=status, content=b'{"ok":true}')
    flow.response = upstream
    guard.response(flow)
    assert flow.response is upstream and flow.response.raw_content == b'{"ok":true}'


async def test_500_on_other_route_passes_through(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(method="GET", path="/v1/models", headers=[AUTH]))
    upstream = tutils.tresp(status_code=500, content=b"upstream page")
    flow.response = upstream
    guard.response(flow)
    assert flow.response is upstream


def _streaming_answer(status: int, headers: list[tuple[bytes, bytes]]) -> http.Response:
    response = tutils.tresp(status_code=status, content=None)
    response.headers = http.Headers(headers)
    return response


@pytest.mark.parametrize("status, headers, streamed", [
    (200, [(b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")], True),
    (200, [(b"content-type", b"text/event-stream; charset=utf-8"), (b"content-length", b"9")], True),
    (200, [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")], True),
    (200, [(b"content-type", b"application/json"), (b"content-length", b"11")], False),
    (500, [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")], False),  # reviewed whole
])
async def test_an_answer_without_a_known_end_is_relayed_as_it_arrives(guard: ToolsInvokeGuard, status, headers, streamed) -> None:
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.response = _streaming_answer(status, headers)
    guard.responseheaders(flow)
    assert bool(flow.response.stream) is streamed


async def test_response_hook_ignores_flows_it_refused(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(method="GET")
    await guard.requestheaders(flow)
    guard.response(flow)
    assert_answer(flow, envelopes.method_not_allowed("POST"))


# ---- options (mitmdump -s) -------------------------------------------------------------------


async def test_sidecar_config_option_builds_the_runtime(tmp_path: Path) -> None:
    addon = ToolsInvokeGuard()
    with taddons.context(addon, loadcore=False) as tctx:
        tctx.configure(addon, sidecar_config=str(write_config(tmp_path / "sidecar.yaml", BASE_CONFIG)))
        assert addon.runtime is not None
        try:
            flow = await run(addon, make_flow(method="GET"))
            assert_answer(flow, envelopes.method_not_allowed("POST"))
        finally:
            addon.done()
            await addon.runtime.aclose()


async def test_bad_sidecar_config_is_an_options_error(tmp_path: Path, runtime: Runtime) -> None:
    addon = ToolsInvokeGuard(runtime)
    with taddons.context(addon, loadcore=False) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"sidecar_config: .*sidecar\.listne"):
            tctx.configure(addon, sidecar_config=str(write_config(tmp_path / "sidecar.yaml", {"sidecar": {"listne": "x"}})))
        assert addon.runtime is runtime  # the one it had keeps serving


async def test_without_any_config_the_addon_refuses_to_start() -> None:
    addon = ToolsInvokeGuard()
    with taddons.context(addon, loadcore=False) as tctx:
        with pytest.raises(exceptions.OptionsError, match="sidecar_config is required"):
            tctx.configure(addon, sidecar_config="")


# ---- the WebSocket RPC hooks -----------------------------------------------------------------------

WS_UPGRADE = [AUTH, ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


@pytest.fixture
async def ws_guard(runtime: Runtime) -> AsyncIterator[ToolsInvokeGuard]:
    """With mitmproxy's proxyserver loaded: it provides the `inject.websocket` command."""
    from mitmproxy.addons.proxyserver import Proxyserver

    addon = ToolsInvokeGuard(runtime)
    with taddons.context(Proxyserver(), addon, loadcore=False):
        yield addon
        addon.done()


async def rpc_flow(guard: ToolsInvokeGuard) -> http.HTTPFlow:
    """A real upgrade decision on a flow that then became a WebSocket."""
    upgrade = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    assert isinstance(upgrade.metadata.get(ADMITTED), Admitted) and upgrade.metadata[ADMITTED].rpc
    flow = tflow.twebsocketflow()
    flow.metadata.update({k: upgrade.metadata[k] for k in (ADMITTED, ADMITTED_BY)})
    flow.websocket.messages.clear()
    guard.websocket_start(flow)
    return flow


async def client_sends(guard: ToolsInvokeGuard, flow: http.HTTPFlow, frame: dict) -> Any:
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    message = WebSocketMessage(Opcode.TEXT, True, json.dumps(frame).encode())
    flow.websocket.messages.append(message)
    await guard.websocket_message(flow)
    return message


async def test_connect_frame_is_rewritten_before_the_gateway_reads_it(ws_guard: ToolsInvokeGuard) -> None:
    guard = ws_guard
    flow = await rpc_flow(guard)
    message = await client_sends(guard, flow, {"type": "req", "id": "c1", "method": "connect", "params": {
        "role": "operator", "scopes": ["operator.read"], "client": {"mode": "cli"}, "auth": {"token": "ignored"}}})
    assert not message.dropped
    assert json.loads(message.content)["params"]["auth"] == {"token": UPSTREAM}  # authenticated at the upgrade
    denied = await client_sends(guard, flow, {"type": "req", "id": "t", "method": "terminal.open", "params": {}})
    assert denied.dropped  # answered by the sidecar, never relayed
    assert not flow.metadata.get("openclaw_sidecar.ws_closing")  # ...and the connection stays
    guard.websocket_end(flow)


async def test_mitmproxys_layer_drops_an_unreadable_frame_and_closes_in_the_gateways_words(
        ws_guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer an upgrade with a negotiated extension gets acts on a verdict as the sidecar's own
    relay does: a frame the gateway would ignore once connected is dropped and the connection
    stays; a close carries the gateway's text."""
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    closed: list[tuple[int, str]] = []
    monkeypatch.setattr("addons.tools_invoke.close_websocket", lambda flow, code, reason, answer=None: closed.append((code, reason)))
    flow = await rpc_flow(ws_guard)
    await client_sends(ws_guard, flow, {"type": "req", "id": "c1", "method": "connect", "params": {
        "role": "operator", "scopes": ["operator.read"], "client": {"mode": "cli"}, "auth": {"token": "ignored"}}})
    unreadable = WebSocketMessage(Opcode.TEXT, True, b"not json")
    flow.websocket.messages.append(unreadable)
    await ws_guard.websocket_message(flow)
    assert unreadable.dropped and closed == []
    ws_guard.websocket_end(flow)

    fresh = await rpc_flow(ws_guard)
    first = await client_sends(ws_guard, fresh, {"type": "req", "id": "h", "method": "health", "params": {}})
    assert first.dropped and closed == [(1008, "invalid handshake: first request must be connect")]
    ws_guard.websocket_end(fresh)


async def test_a_long_session_keeps_only_the_message_being_judged(ws_guard: ToolsInvokeGuard) -> None:
    """mitmproxy appends every message of both directions to the flow; the guard trims the list."""
    flow = await rpc_flow(ws_guard)
    await client_sends(ws_guard, flow, {"type": "req", "id": "c1", "method": "connect", "params": {
        "role": "operator", "scopes": ["operator.read"], "client": {"mode": "cli"}, "auth": {"token": "ignored"}}})
    for n in range(5):
        last = await client_sends(ws_guard, flow, {"type": "req", "id": f"h{n}", "method": "health", "params": {}})
    assert flow.websocket is not None and flow.websocket.messages == [last]
    ws_guard.websocket_end(flow)


async def test_a_frame_judge_that_raises_fails_closed(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """mitmproxy would relay the frame if the hook only logged: it is dropped and the connection closed."""
    flow = await rpc_flow(guard)
    session = flow.metadata["openclaw_sidecar.rpc"]

    async def boom(content: bytes) -> None:
        raise RuntimeError("judge broke")

    monkeypatch.setattr(session, "client_frame", boom)
    message = await client_sends(guard, flow, {"type": "req", "id": "c1", "method": "connect", "params": {}})
    assert message.dropped and flow.metadata["openclaw_sidecar.ws_closing"]
    later = await client_sends(guard, flow, {"type": "req", "id": "h", "method": "health", "params": {}})
    assert later.dropped  # nothing after the close is relayed
    guard.websocket_end(flow)


async def test_a_reload_closes_open_websockets_only_when_the_configuration_changed(
        guard: ToolsInvokeGuard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions were admitted, and are judged, under the old rules; an upgrade admitted before the
    reload whose 101 comes after it too. A reload that changed nothing (a SIGHUP) keeps them."""
    closed: list[tuple[str, int]] = []
    monkeypatch.setattr(tools_invoke, "close_websocket", lambda flow, code, reason, answer=None: closed.append((flow.id, code)))
    session = await rpc_flow(guard)
    upgrade = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    guard.use_runtime(build_runtime(load_config(write_config(tmp_path / "same.yaml", BASE_CONFIG), environ={})))
    assert closed == []
    changed = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "scopeCeilings": {"default": ["operator.read"]}}}
    guard.use_runtime(build_runtime(load_config(write_config(tmp_path / "changed.yaml", changed), environ={})))
    assert closed == [(session.id, 4001)]
    late = tflow.twebsocketflow()
    late.metadata.update({k: upgrade.metadata[k] for k in (ADMITTED, ADMITTED_BY)})
    guard.websocket_start(late)
    assert closed[-1] == (late.id, 4001)


@pytest.mark.parametrize("body_with_head", [True, False], ids=["body-with-head", "body-later"])
@pytest.mark.parametrize("stage", ["on_head", "on_body"])
async def test_a_reload_that_lands_while_a_judgement_waits_voids_it(
        guard: ToolsInvokeGuard, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str,
        body_with_head: bool) -> None:
    """A Redis-backed limiter makes a judgement wait; a reload revoking the caller's token landed
    meanwhile, and the request was forwarded on the old rules' decision after the reload was
    logged done (red team). Whatever stage was waiting, the request is judged again by the new rules."""
    if body_with_head:  # as the reader holds it when the body came in the head's read
        monkeypatch.setattr(compat, "unread_request_prefix", lambda client, length: BODY)
    waiting, release = asyncio.Event(), asyncio.Event()
    judge = getattr(runtime.pipeline, stage)

    async def slow(*args: Any) -> Any:
        waiting.set()
        await release.wait()
        return await judge(*args)

    monkeypatch.setattr(runtime.pipeline, stage, slow)
    judged = asyncio.create_task(run(guard, make_flow(headers=[AUTH], body=BODY)))
    await waiting.wait()
    revoked = {**BASE_CONFIG, "gateway": {**BASE_CONFIG["gateway"], "auth": {"token": "NEW"}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "revoked.yaml", revoked), environ={}))
    guard.use_runtime(reloaded)
    release.set()
    flow = await asyncio.wait_for(judged, 10)
    assert_answer(flow, envelopes.unauthorized())
    assert tools_invoke.FORWARDED not in flow.metadata
    await reloaded.aclose()


class FakeTransport:
    """What let_go needs of a client socket: `queued` is what the client has not read yet."""

    def __init__(self, queued: int = 0) -> None:
        self.closed = self.aborted = False
        self.queued = queued

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.queued


async def test_let_go_drops_what_a_client_does_not_read_but_waits_for_a_slow_reader() -> None:
    """asyncio's close waits until everything queued is read: a client that never read kept its
    socket and its slot for good (red team); one that reads slowly still gets the end (review).
    Each linger after the close, what is left is dropped unless the client read enough of it."""
    stuck, slow, read = FakeTransport(100_000), FakeTransport(100_000), FakeTransport(0)
    for transport in (stuck, slow, read):
        tools_invoke.let_go(transport)  # type: ignore[arg-type]
    assert stuck.closed and slow.closed and read.closed
    slow.queued -= tools_invoke.MIN_DRAIN_BYTES  # what it read during the linger
    tools_invoke._drop_if_unread(stuck, 100_000)  # type: ignore[arg-type]
    tools_invoke._drop_if_unread(slow, 100_000)  # type: ignore[arg-type]
    assert (stuck.aborted, slow.aborted, read.aborted) == (True, False, False)
    tools_invoke._drop_if_unread(slow, slow.queued + 1)  # type: ignore[arg-type]  # then it nearly stopped
    assert slow.aborted


async def test_a_drain_closes_connections_with_no_exchange_in_flight(guard: ToolsInvokeGuard) -> None:
    """As Node's server.close() closes idle ones: a call sent on one in the drain's last moments
    was forwarded, then cut off by the stop, and nothing audited it (red team)."""
    idle, busy = FakeTransport(), FakeTransport()
    guard._clients = {name: tools_invoke.OpenClient(make_flow().client_conn, None, transport)  # type: ignore[arg-type]
                      for name, transport in (("idle", idle), ("busy", busy))}
    guard._in_flight["busy"] = {"flow": make_flow()}
    guard.begin_drain()
    assert (idle.closed, busy.closed) == (True, False)


async def test_the_drain_waits_for_an_exchange_that_began_while_the_last_answers_left(
        guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools_invoke, "WRITE_FLUSH_SECONDS", 0.5)
    waiting = asyncio.create_task(guard.wait_idle(5))
    await asyncio.sleep(0.01)  # inside the flush pause: a request arrives
    guard._in_flight["late"] = {"flow": make_flow()}
    await asyncio.sleep(0.6)  # past the pause: it saw the exchange
    assert not waiting.done()
    del guard._in_flight["late"]
    assert await waiting is True


async def test_room_is_made_only_by_connections_still_here(guard: ToolsInvokeGuard) -> None:
    """A hook that waited on Redis resumed after its client was gone and armed a pace for it: making
    room with that entry counted a slot as freed that never was, and the cap grew by one each time
    (review)."""
    fired: list[str] = []
    guard._evictable.arm("gone", 0.25, lambda: fired.append("gone"))
    guard._arm_evictable("also gone", 0.25, lambda: fired.append("also gone"))
    assert guard._make_room() is False
    assert fired == ["gone"] and guard._leaving == set() and len(guard._evictable) == 0


async def test_a_timer_whose_flow_was_answered_meanwhile_does_nothing(
        guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unauthenticated body's timer outlived a 413 answered directly, and firing it (at its time,
    or to make room) wrote a second audit line for the request (review)."""
    audited: list[object] = []
    monkeypatch.setattr(guard, "_audit", lambda *args, **kwargs: audited.append(args))
    flow = make_flow()
    flow.metadata[tools_invoke.ANSWERED] = 413
    guard._audited(flow, lambda: True, Reason.BODY_TIMEOUT)()
    assert audited == []


async def test_a_request_answered_at_its_head_is_killed_when_its_body_hook_runs(guard: ToolsInvokeGuard) -> None:
    """Answered on the socket, a request must never go on to mitmproxy's upstream hop when its body
    hook runs: killed, not merely left alone (a mutation that only returned survived)."""
    flow = make_flow(body=b'{"tool":"agents_list"}')
    flow.metadata[tools_invoke.ANSWERED] = 401
    assert flow.killable
    await guard.request(flow)
    assert not flow.killable and flow.error is not None and flow.response is None


# ---- edges a mutation sweep of the adapter found unpinned ----------------------------------------


def test_an_absolute_form_target_is_judged_with_the_scheme_it_was_sent_with() -> None:
    flow = make_flow(authority="gw.example", path="/v1/models")
    flow.request.data.scheme = b"https"
    assert tools_invoke.raw_target(flow.request) == "https://gw.example/v1/models"


async def test_a_lower_case_method_is_judged_as_sent_not_as_mitmproxy_upper_cases_it(guard: ToolsInvokeGuard) -> None:
    """Node answers `post` with 400; mitmproxy's `.method` would have made it a POST the sidecar admits."""
    flow = make_flow(method="post", headers=[AUTH], body=BODY)
    assert view_of(flow).method == "post"
    await run(guard, flow)
    assert flow.response is not None and flow.response.status_code == 400
    assert tools_invoke.FORWARDED not in flow.metadata


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"application/json"), (b"content-length", b"12x")],  # no length mitmproxy can trust
    [(b"content-type", b"Text/Event-Stream"), (b"content-length", b"9")],  # media types are case-insensitive
])
def test_answers_whose_end_is_not_known_by_their_head_are_relayed_as_they_arrive(headers: list[tuple[bytes, bytes]]) -> None:
    assert tools_invoke.relayed_as_it_arrives(_streaming_answer(200, headers)) is True


def test_the_connection_cap_keeps_descriptors_spare_whatever_is_configured() -> None:
    assert tools_invoke.connection_cap(None, 1024) == (1024 - 256) // 2
    assert tools_invoke.connection_cap(10_000, 1024) == (1024 - 256) // 2
    assert tools_invoke.connection_cap(10, 1024) == 10
    assert tools_invoke.connection_cap(None, 100) == 16


@pytest.fixture
async def client_socket(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """compat.client_writer answers with a real socket's writer; yields the client's end."""
    import socket

    ours, peer = socket.socketpair()
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), ours)
    writer = asyncio.StreamWriter(transport, protocol, None, asyncio.get_running_loop())
    monkeypatch.setattr(compat, "client_writer", lambda client: None if writer.is_closing() else writer)
    peer.settimeout(2)
    yield peer
    transport.abort()
    peer.close()


def read_all(peer: Any) -> bytes:
    data = b""
    while chunk := peer.recv(65536):
        data += chunk
    return data


async def test_an_answer_written_directly_is_the_connections_last_word(guard: ToolsInvokeGuard, client_socket: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One answer, `Connection: close`, then EOF; mitmproxy can no longer write to it (its error
    page, its `100 Continue` for an Expect it would still see)."""
    from mitmproxy.connection import ConnectionState

    monkeypatch.setattr(tools_invoke, "LINGER_SECONDS", 30)  # the EOF comes before the linger's close
    flow = make_flow(headers=[("Expect", "100-continue")], body=BODY)
    assert answer_directly(flow, envelopes.unauthorized()) is True
    assert answer_directly(flow, envelopes.internal_error()) is True  # answered already: nothing more is written
    assert "expect" not in flow.request.headers
    assert not flow.client_conn.state & ConnectionState.CAN_WRITE
    assert flow.metadata[tools_invoke.ANSWERED] == 401
    await asyncio.sleep(0.05)
    data = read_all(client_socket)  # ends: our EOF
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(envelopes.unauthorized().body)


async def test_a_slow_reader_is_checked_again_each_linger_until_it_stops_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools_invoke, "LINGER_SECONDS", 0.01)
    slow = FakeTransport(100_000)
    tools_invoke._drop_if_unread(slow, 100_000 + 2 * tools_invoke.MIN_DRAIN_BYTES)  # type: ignore[arg-type]  # it read enough
    assert not slow.aborted
    await asyncio.sleep(0.1)  # and then nothing more: the next check drops the rest
    assert slow.aborted


async def test_an_answered_exchange_leaves_nothing_in_flight(guard: ToolsInvokeGuard) -> None:
    """A drain waits while anything is in flight: an exchange left there kept it waiting to its deadline."""
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert flow.client_conn.id in guard._in_flight
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true}')
    guard.response(flow)
    assert guard._in_flight == {}


async def test_a_stop_audits_only_the_calls_already_forwarded(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import audit

    entries: list[audit.AuditEntry] = []
    monkeypatch.setattr(audit, "record", entries.append)
    forwarded = await run(guard, make_flow(headers=[AUTH], body=BODY))
    arriving = make_flow(headers=[AUTH, ("Content-Length", "100")])
    await guard.requestheaders(arriving)  # its body is still on its way: it reached no one
    assert guard.abandon_in_flight() == 1
    (entry,) = entries
    assert (entry.request_id, entry.decision, entry.outcome) == (forwarded.id, "forwarded", "shutdown")


async def test_a_drain_waits_for_open_websockets_too(guard: ToolsInvokeGuard) -> None:
    guard._websockets["ws"] = make_flow()
    assert await asyncio.wait_for(guard.wait_idle(0.2), 2) is False
    del guard._websockets["ws"]
    assert await guard.wait_idle(1) is True


async def test_a_drain_closes_websockets_going_away_and_spares_connections_still_in_use(
        guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open WebSockets get 1001; their connections, and one whose next head has begun, are not cut."""
    closed: list[tuple[str, int]] = []
    monkeypatch.setattr(tools_invoke, "close_websocket", lambda flow, code, reason, answer=None: closed.append((flow.id, code)))
    socket_flow = make_flow()
    idle, relaying, begun = FakeTransport(), FakeTransport(), FakeTransport()
    begun_client = make_flow().client_conn
    guard._clients = {"idle": tools_invoke.OpenClient(make_flow().client_conn, None, idle),  # type: ignore[arg-type]
                      socket_flow.client_conn.id: tools_invoke.OpenClient(socket_flow.client_conn, None, relaying),  # type: ignore[arg-type]
                      "begun": tools_invoke.OpenClient(begun_client, None, begun)}  # type: ignore[arg-type]
    guard._websockets[socket_flow.id] = socket_flow
    monkeypatch.setattr(compat, "head_begun", lambda client: client is begun_client)
    guard.begin_drain()
    assert closed == [(socket_flow.id, 1001)]
    assert (idle.closed, relaying.closed, begun.closed) == (True, False, False)


async def test_a_reload_does_not_close_again_a_websocket_already_closing(guard: ToolsInvokeGuard, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    monkeypatch.setattr(tools_invoke, "close_websocket", lambda flow, code, reason, answer=None: closed.append(flow.id))
    closing, open_ = make_flow(), make_flow()
    closing.metadata["openclaw_sidecar.ws_closing"] = True
    guard._websockets = {closing.id: closing, open_.id: open_}
    changed = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "scopeCeilings": {"default": ["operator.read"]}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "changed.yaml", changed), environ={}))
    guard.use_runtime(reloaded)
    assert closed == [open_.id]
    await reloaded.aclose()


async def test_running_applies_the_proxy_options_the_guard_depends_on(runtime: Runtime) -> None:
    from mitmproxy.addons.onboarding import Onboarding
    from mitmproxy.addons.proxyserver import Proxyserver

    addon = ToolsInvokeGuard(runtime)
    with taddons.context(Proxyserver(), Onboarding(), addon, loadcore=False) as tctx:
        tctx.options.update(connection_strategy="eager", keep_host_header=False, rawtcp=True, onboarding=True)
        addon.running()
        options = tctx.options
        assert (options.connection_strategy, options.keep_host_header, options.rawtcp, options.onboarding) == ("lazy", True, False, False)
        assert options.body_size_limit == str(2 * 1024 * 1024)
        addon.done()


def armed(deadlines: Any, key: str) -> bool:
    return any(key in queue for queue in deadlines._by_duration.values())


def new_client(peer: str) -> Any:
    client = tflow.tclient_conn()
    client.peername = (peer, 40_000)
    return client


async def test_a_client_over_its_share_of_the_cap_is_closed_at_accept(guard: ToolsInvokeGuard) -> None:
    guard._connection_shares.per_client = 1
    first, second, other = new_client(CLIENT), new_client(CLIENT), new_client("203.0.113.8")
    for client in (first, second, other):
        guard.client_connected(client)
    assert (first.error, second.error, other.error) == (None, "per-client connection limit reached", None)
    assert armed(guard._evictable, first.id)  # its head deadline runs from the accept
    guard.client_disconnected(first)  # its share goes with it
    again = new_client(CLIENT)
    guard.client_connected(again)
    assert again.error is None


async def test_a_connection_refused_at_a_full_cap_spends_none_of_its_clients_share(guard: ToolsInvokeGuard) -> None:
    guard._max_connections, guard._connection_shares.per_client = 1, 1
    busy, refused = new_client(CLIENT), new_client("203.0.113.8")
    guard.client_connected(busy)
    guard._evictable.cancel(busy.id)  # it holds admitted work: no room to make
    guard.client_connected(refused)
    assert refused.error == "connection limit reached"
    guard.client_disconnected(busy)
    later = new_client("203.0.113.8")
    guard.client_connected(later)
    assert later.error is None


async def test_connections_made_room_with_no_longer_count_against_the_cap(guard: ToolsInvokeGuard) -> None:
    """A stranger answered to make room for a connection that has gone since holds no slot while it closes."""
    guard._max_connections = 2
    stranger, caller, newcomer = new_client(CLIENT), new_client("203.0.113.8"), new_client("203.0.113.9")
    guard.client_connected(stranger)
    guard.client_connected(caller)
    guard._evictable.cancel(caller.id)  # it holds admitted work
    assert guard._make_room() is True and guard._leaving == {stranger.id}
    guard.client_connected(newcomer)
    assert newcomer.error is None


async def test_room_is_made_with_the_nearest_deadline_not_already_leaving(guard: ToolsInvokeGuard) -> None:
    fired: list[str] = []
    for name in ("leaving", "next"):
        guard._clients[name] = tools_invoke.OpenClient(new_client(CLIENT), None, None)
        guard._evictable.arm(name, 5, lambda name=name: fired.append(name))
    guard._leaving.add("leaving")
    assert guard._make_room() is True
    assert fired == ["leaving", "next"] and guard._leaving == {"leaving", "next"}


async def test_connections_lingering_past_the_slack_are_dropped_oldest_first(guard: ToolsInvokeGuard,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools_invoke, "EVICTION_SLACK", 1)
    transports = {name: FakeTransport() for name in ("old", "new")}
    for name, transport in transports.items():
        guard._clients[name] = tools_invoke.OpenClient(new_client(CLIENT), None, transport)  # type: ignore[arg-type]
        guard._evictable.arm(name, 5, lambda: None)
        assert guard._make_room() is True
    assert (transports["old"].aborted, transports["new"].aborted) == (True, False)
    assert list(guard._lingering) == ["new"]


async def test_a_disconnected_client_lets_go_of_its_socket_and_everything_it_held(guard: ToolsInvokeGuard,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    transport = FakeTransport()
    monkeypatch.setattr(compat, "client_transport", lambda client: transport)
    flow = make_flow(headers=[AUTH, ("Content-Length", "100")])
    guard.client_connected(flow.client_conn)
    await guard.requestheaders(flow)  # its body never comes
    assert flow.client_conn.id in guard._in_flight
    guard.client_disconnected(flow.client_conn)
    assert transport.closed and guard._in_flight == {} and guard._clients == {}


async def test_after_an_authenticated_call_the_connection_waits_as_a_caller_and_its_upstream_is_closed_when_idle(
        guard: ToolsInvokeGuard) -> None:
    """An idle caller is made room with only when no stranger is left (_make_room)."""
    flow = make_flow(headers=[AUTH], body=BODY)
    guard.client_connected(flow.client_conn)
    await run(guard, flow)
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true}')
    guard.response(flow)
    client = flow.client_conn.id
    assert armed(guard._idle_callers, client) and not armed(guard._evictable, client)
    assert armed(guard._idle_upstreams, client)
    refused = make_flow(method="GET")
    guard.client_connected(refused.client_conn)
    await guard.requestheaders(refused)
    guard.response(refused)
    assert armed(guard._evictable, refused.client_conn.id) and not armed(guard._idle_callers, refused.client_conn.id)


async def test_a_new_connection_that_sent_nothing_is_closed_at_once_with_its_408(guard: ToolsInvokeGuard, client_socket: Any,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No linger: a flood of silent connections made room only as fast as their lingers ended."""
    monkeypatch.setattr(compat, "head_begun", lambda client: False)
    client = new_client(CLIENT)
    writer = compat.client_writer(client)
    guard._head_deadline_passed(client, answered=False)
    assert writer is not None and writer.transport.is_closing()
    assert read_all(client_socket).startswith(b"HTTP/1.1 408 ")


async def test_a_head_stops_its_deadline_and_a_body_that_arrives_stops_its_own(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(headers=[AUTH, ("Content-Length", str(len(BODY)))])
    guard.client_connected(flow.client_conn)
    await guard.requestheaders(flow)
    assert not armed(guard._evictable, flow.client_conn.id)
    assert armed(guard._timers, flow.id)  # the body's deadline
    guard._evictable.arm(flow.client_conn.id, 5, lambda: None)
    flow.request.content = BODY
    await guard.request(flow)
    assert not armed(guard._evictable, flow.client_conn.id)
    assert armed(guard._timers, flow.id)  # now the upstream's


async def test_a_reload_voids_a_body_verdict_reached_under_the_old_rules(guard: ToolsInvokeGuard, body_arrived: Callable[[bytes], None],
                                                                         tmp_path: Path) -> None:
    """The body judged with its head is judged again too: the new rules deny its tool."""
    body_arrived(BODY)
    flow = make_flow(headers=[AUTH], body=BODY)
    await guard.requestheaders(flow)
    assert tools_invoke.JUDGED_BODY in flow.metadata
    denied = {**BASE_CONFIG, "gateway": {**BASE_CONFIG["gateway"], "tools": {"deny": ["agents_list"]}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "denied.yaml", denied), environ={}))
    guard.use_runtime(reloaded)
    await guard.request(flow)
    assert flow.response is not None and flow.response.status_code == 404
    assert tools_invoke.FORWARDED not in flow.metadata
    await reloaded.aclose()


async def test_answers_during_a_drain_close_their_connection(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    guard.draining = True
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true}')
    guard.response(flow)
    assert flow.response.headers["Connection"] == "close"


async def test_a_forwarded_call_is_audited_once_when_the_upstream_answers(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.flow import Error
    from sidecar import audit

    entries: list[audit.AuditEntry] = []
    monkeypatch.setattr(audit, "record", entries.append)
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true}')
    guard.response(flow)
    flow.error = Error("client disconnected")  # then the client left
    guard.error(flow)
    (entry,) = entries
    assert (entry.decision, entry.status, entry.upstream_status, entry.tool, entry.outcome) == ("forwarded", 200, 200, "agents_list", None)
    assert (entry.target, entry.method, entry.client, entry.auth) == ("/tools/invoke", "POST", CLIENT, "token")


@pytest.fixture
def audited(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from sidecar import audit

    entries: list[audit.AuditEntry] = []
    monkeypatch.setattr(audit, "record", entries.append)
    return entries


@pytest.mark.parametrize("message, status, reason", [
    ("Connection timed out", 504, "upstream_timeout"),
    ("TcpTimeout: read timeout", 504, "upstream_timeout"),
    ("[Errno 111] Connect call failed", 502, "upstream_unreachable"),
])
async def test_an_upstream_that_never_answered_gets_the_gateways_json_and_the_call_is_audited(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any], message: str, status: int, reason: str) -> None:
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.error = Error(message)
    guard.error(flow)
    assert client_socket.recv(4096).startswith(f"HTTP/1.1 {status} ".encode())
    (entry,) = audited
    assert (entry.decision, entry.reason, entry.status, entry.upstream_status, entry.outcome) == ("forwarded", reason, status, None, reason)


async def test_an_upstream_failure_nobody_can_be_told_of_is_audited_as_the_client_gone(guard: ToolsInvokeGuard, audited: list[Any]) -> None:
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))  # no client socket to write to
    flow.error = Error("[Errno 111] Connect call failed")
    guard.error(flow)
    (entry,) = audited
    assert (entry.status, entry.outcome) == (None, "client_gone")


async def test_an_answer_that_broke_off_before_any_of_it_was_relayed_gets_our_502(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any]) -> None:
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.response = tutils.tresp(status_code=200, content=b"")
    flow.error = Error("peer closed connection")
    guard.error(flow)
    assert client_socket.recv(4096).startswith(b"HTTP/1.1 502 ")
    (entry,) = audited
    assert (entry.status, entry.upstream_status, entry.outcome) == (502, 200, "upstream_failed")


async def test_a_streamed_answer_that_broke_off_gets_nothing_written_after_its_head(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any]) -> None:
    """Its head went to the client already: a 502 now would be read as part of its body."""
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.response = tutils.tresp(status_code=200, content=b"")
    flow.response.stream = True
    flow.error = Error("peer closed connection")
    guard.error(flow)
    assert tools_invoke.ANSWERED not in flow.metadata
    client_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        client_socket.recv(4096)
    (entry,) = audited
    assert (entry.status, entry.outcome) == (200, "upstream_failed")


async def test_a_body_over_the_limit_is_refused_with_the_gateways_413_and_audited(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any]) -> None:
    from mitmproxy.flow import Error

    flow = make_flow(headers=[AUTH, ("Content-Length", "2000000")])
    await guard.requestheaders(flow)
    flow.error = Error("Request body exceeds mitmproxy's body_size_limit.")
    guard.error(flow)
    assert client_socket.recv(4096).startswith(b"HTTP/1.1 413 ")
    (entry,) = audited
    assert (entry.decision, entry.reason, entry.status) == ("refused", "payload_too_large", 413)
    guard.error(flow)  # mitmproxy reports it again: answered already, nothing more is said
    assert len(audited) == 1


async def test_a_request_answered_at_its_head_that_then_errs_is_not_audited_twice(guard: ToolsInvokeGuard, client_socket: Any,
                                                                                    audited: list[Any]) -> None:
    from mitmproxy.flow import Error

    flow = make_flow(headers=[AUTH, ("Content-Length", "2000000")])
    await guard.requestheaders(flow)
    answer_directly(flow, envelopes.payload_too_large())
    flow.error = Error("Request body exceeds mitmproxy's body_size_limit.")
    guard.error(flow)
    assert audited == []


def capture_timers(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[], None]]:
    actions: dict[str, Callable[[], None]] = {}
    monkeypatch.setattr(guard._timers, "arm", lambda key, seconds, action: actions.__setitem__(key, action))
    return actions


async def test_the_upstream_deadline_answers_504_only_while_no_answer_came(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    actions = capture_timers(guard, monkeypatch)
    answered = await run(guard, make_flow(headers=[AUTH], body=BODY))
    answered.response = tutils.tresp(status_code=200, content=None)  # its head came; the body is streaming
    actions[answered.id]()
    assert tools_invoke.ANSWERED not in answered.metadata and audited == []
    silent = await run(guard, make_flow(headers=[AUTH], body=BODY))
    actions[silent.id]()
    assert client_socket.recv(4096).startswith(b"HTTP/1.1 504 ")
    (entry,) = audited
    assert (entry.request_id, entry.status, entry.outcome) == (silent.id, 504, "upstream_timeout")


async def test_the_upstream_deadline_ends_with_the_upstreams_answer_head(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert armed(guard._timers, flow.id)
    flow.response = tutils.tresp(status_code=200, content=b'{"ok":true}')
    guard.responseheaders(flow)
    assert not armed(guard._timers, flow.id)


async def test_a_deadline_action_that_answered_nothing_is_not_audited(guard: ToolsInvokeGuard, audited: list[Any]) -> None:
    flow = make_flow()
    guard._audited(flow, lambda: False, Reason.BODY_TIMEOUT)()
    assert audited == []


async def test_a_rewritten_chunked_body_is_not_given_a_content_length(guard: ToolsInvokeGuard) -> None:
    """Both framings on one request: the upstream would read it one way, a proxy in between the other."""
    flow = await run(guard, make_flow(headers=[AUTH, ("Transfer-Encoding", "chunked")], body=b'{"name":"agents_list","tool":"exec"}'))
    assert flow.response is None and flow.request.raw_content == b'{"name":"agents_list","tool":"agents_list"}'
    assert "content-length" not in flow.request.headers


async def test_only_an_authenticated_call_ends_a_clients_refusal_streak(guard: ToolsInvokeGuard, runtime: Runtime) -> None:
    pacer = runtime.refusal_pacer
    pacer._streaks[CLIENT] = (5, 0.0)
    public = await run(guard, make_flow(method="GET", path="/healthz"))
    assert public.response is None and tools_invoke.FORWARDED in public.metadata
    assert CLIENT in pacer._streaks
    await run(guard, make_flow(headers=[AUTH], body=BODY))
    assert CLIENT not in pacer._streaks


async def test_a_refused_head_whose_body_is_still_coming_is_answered_now_and_its_body_dropped(
        guard: ToolsInvokeGuard, client_socket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[bool] = []
    monkeypatch.setattr(compat, "drop_request_body", lambda client, dropped_=True, **kw: dropped.append(kw.get("dropped", dropped_)))
    flow = make_flow(headers=[("Content-Length", "100")])
    await guard.requestheaders(flow)
    assert dropped == [True] and flow.response is None
    assert client_socket.recv(4096).startswith(b"HTTP/1.1 401 ")


async def test_a_refused_head_that_cannot_be_answered_now_waits_for_its_body(guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[bool] = []
    monkeypatch.setattr(compat, "drop_request_body", lambda client, dropped_=True, **kw: dropped.append(kw.get("dropped", dropped_)))
    flow = make_flow(headers=[("Content-Length", "100")])
    await guard.requestheaders(flow)
    assert dropped == [True, False]
    assert_answer(flow, envelopes.unauthorized())


async def test_a_refusal_is_held_as_long_as_its_pace_says(guard: ToolsInvokeGuard, runtime: Runtime,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def paced(flow: http.HTTPFlow, delay: float) -> bool:
        delays.append(delay)
        return False

    monkeypatch.setattr(runtime.refusal_pacer, "refused", lambda client: 0.75)
    monkeypatch.setattr(guard, "_paced", paced)
    flow = await run(guard, make_flow(method="GET"))
    assert delays == [0.75]
    assert_answer(flow, envelopes.method_not_allowed("POST"))


async def test_a_paced_refusal_made_room_with_is_answered_on_its_socket_and_killed(
        guard: ToolsInvokeGuard, runtime: Runtime, client_socket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def made_room(flow: http.HTTPFlow, delay: float) -> bool:
        return True

    monkeypatch.setattr(runtime.refusal_pacer, "refused", lambda client: 0.75)
    monkeypatch.setattr(guard, "_paced", made_room)
    flow = make_flow(headers=[("Authorization", "Bearer wrong")], body=BODY)
    await guard.requestheaders(flow)
    assert flow.response is None and not flow.live and flow.error is not None
    assert client_socket.recv(4096).startswith(b"HTTP/1.1 401 ")


CONNECT = {"type": "req", "id": "c1", "method": "connect", "params": {
    "role": "operator", "scopes": ["operator.read"], "client": {"mode": "cli"}, "auth": {"token": "ignored"}}}


async def upgraded(guard: ToolsInvokeGuard, headers: list[tuple[str | bytes, str | bytes]] = WS_UPGRADE, path: str = "/",
                   **kwargs: Any) -> http.HTTPFlow:
    """A flow the guard admitted (or not) whose upstream then answered 101; not started yet."""
    request = await run(guard, make_flow(method="GET", path=path, headers=headers, **kwargs))
    flow = tflow.twebsocketflow()
    flow.metadata.update({k: request.metadata[k] for k in (ADMITTED, ADMITTED_BY) if k in request.metadata})
    flow.websocket.messages.clear()
    guard._clients[flow.client_conn.id] = tools_invoke.OpenClient(flow.client_conn, None, None)
    return flow


@pytest.fixture
def ws_closed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    closed: list[tuple[int, str]] = []

    def close(flow: http.HTTPFlow, code: int, reason: str, answer: bytes | None = None) -> bool:
        flow.metadata["openclaw_sidecar.ws_closing"] = True
        closed.append((code, reason))
        return True

    monkeypatch.setattr(tools_invoke, "close_websocket", close)
    return closed


async def test_a_101_to_a_request_admitted_as_no_upgrade_is_closed_as_a_protocol_error(
        guard: ToolsInvokeGuard, ws_closed: list[tuple[int, str]]) -> None:
    flow = await upgraded(guard, headers=[AUTH], body=BODY)  # an ordinary call the upstream answered with 101
    assert isinstance(flow.metadata[ADMITTED], Admitted)
    guard.websocket_start(flow)
    assert ws_closed == [(1002, "protocol error")]


async def test_a_websocket_opened_during_a_drain_is_closed_going_away(guard: ToolsInvokeGuard, ws_closed: list[tuple[int, str]]) -> None:
    flow = await upgraded(guard)
    guard.draining = True
    guard.websocket_start(flow)
    assert ws_closed == [(1001, "going away")]


async def test_an_rpc_session_that_cannot_be_built_is_closed_and_relays_nothing(
        guard: ToolsInvokeGuard, ws_closed: list[tuple[int, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.runtime.pipeline, "rpc_session", boom)
    flow = await upgraded(guard)
    guard.websocket_start(flow)
    assert ws_closed == [(1011, "internal error")]
    message = await client_sends(guard, flow, CONNECT)
    assert message.dropped


async def test_a_session_without_its_judge_relays_no_frame(ws_guard: ToolsInvokeGuard) -> None:
    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    del flow.metadata["openclaw_sidecar.rpc"]
    message = await client_sends(ws_guard, flow, CONNECT)
    assert message.dropped


async def test_the_connect_deadline_runs_until_the_connect_is_accepted_and_the_connect_is_audited(
        ws_guard: ToolsInvokeGuard, audited: list[Any]) -> None:
    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    assert armed(ws_guard._evictable, flow.client_conn.id) and ws_guard._websockets == {flow.id: flow}
    await client_sends(ws_guard, flow, CONNECT)
    assert not armed(ws_guard._evictable, flow.client_conn.id)
    (entry,) = [e for e in audited if e.method == "connect"]
    assert (entry.decision, entry.scopes) == ("forwarded", ("operator.read",))  # granted, not the upgrade's ceiling
    ws_guard.websocket_end(flow)
    assert ws_guard._websockets == {}


async def test_frames_after_the_close_began_are_dropped_unjudged(ws_guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    await client_sends(ws_guard, flow, CONNECT)
    flow.metadata["openclaw_sidecar.ws_closing"] = True
    message = await client_sends(ws_guard, flow, {"type": "req", "id": "h", "method": "health", "params": {}})
    assert message.dropped


async def test_a_frame_whose_connection_closed_while_it_was_judged_is_dropped(ws_guard: ToolsInvokeGuard,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    session = flow.metadata["openclaw_sidecar.rpc"]
    judge = session.client_frame

    async def closed_meanwhile(content: bytes) -> Any:
        verdict = await judge(content)
        flow.metadata["openclaw_sidecar.ws_closing"] = True  # a reload closed it while the judge waited
        return verdict

    monkeypatch.setattr(session, "client_frame", closed_meanwhile)
    message = await client_sends(ws_guard, flow, CONNECT)
    assert message.dropped


async def test_a_message_the_sidecar_injected_is_not_judged_again(ws_guard: ToolsInvokeGuard) -> None:
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    injected = WebSocketMessage(Opcode.TEXT, True, b'{"type":"res","id":"x","ok":false}', injected=True)
    flow.websocket.messages.append(injected)
    await ws_guard.websocket_message(flow)
    assert not injected.dropped


async def test_a_websocket_on_mitmproxys_layer_is_closed_with_the_answer_then_the_close_then_eof(
        client_socket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from addons import ws_relay

    monkeypatch.setattr(ws_relay, "CLOSE_LINGER_SECONDS", 0.01)
    flow = tflow.twebsocketflow()
    assert tools_invoke.close_websocket(flow, 1008, "policy", b'{"type":"res"}') is True
    await asyncio.sleep(0.1)
    expected = ws_relay.frame(ws_relay.TEXT, b'{"type":"res"}') + ws_relay.frame(ws_relay.CLOSE, ws_relay.close_payload(1008, "policy"))
    assert read_all(client_socket) == expected  # and then the socket closed
    assert flow.metadata["openclaw_sidecar.ws_closing"]


async def test_sidecar_config_option_opens_the_configured_audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import audit

    opened: list[object] = []
    monkeypatch.setattr(audit, "configure", opened.append)
    addon = ToolsInvokeGuard()
    with taddons.context(addon, loadcore=False) as tctx:
        config = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "auditLog": str(tmp_path / "audit.jsonl")}}
        tctx.configure(addon, sidecar_config=str(write_config(tmp_path / "sidecar.yaml", config)))
        assert addon.runtime is not None
        assert opened == [addon.runtime.config.sidecar.audit_log] and opened[0] is not None
        await addon.runtime.aclose()


async def test_an_rpc_upgrade_counts_against_its_clients_preauth_sockets_until_it_is_no_socket(guard: ToolsInvokeGuard,
                                                                                                runtime: Runtime) -> None:
    """The count of unauthenticated RPC sockets goes down when the upgrade got no 101; a 101 keeps it
    until the connect is accepted."""
    held = runtime.pipeline.preauth._held
    socket_flow = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    assert sum(held.values()) == 1
    socket_flow.response = tutils.tresp(status_code=101, content=b"")
    guard.response(socket_flow)
    assert sum(held.values()) == 1
    refused = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    assert sum(held.values()) == 2
    refused.response = tutils.tresp(status_code=403, content=b"")
    guard.response(refused)
    assert sum(held.values()) == 1


async def test_a_websocket_message_may_grow_as_the_gateway_lets_it_for_what_was_admitted(guard: ToolsInvokeGuard) -> None:
    from sidecar import rpc

    upgrade = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    assert tools_invoke.websocket_message_limit(upgrade) == rpc.PREAUTH_MAX_BYTES
    other = await run(guard, make_flow(headers=[AUTH], body=BODY))  # admitted, no RPC upgrade
    assert tools_invoke.websocket_message_limit(other) == rpc.GATEWAY_MAX_MESSAGE_BYTES


async def test_a_refusal_after_authentication_is_audited_with_who_was_refused(guard: ToolsInvokeGuard, tmp_path: Path,
                                                                               audited: list[Any]) -> None:
    """A head refused past its auth stage (a scope its ceiling leaves out) names its caller, the
    secret it used and, behind a trusted proxy, the forwarded client: the refusal's, as no call was admitted."""
    rotating = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "auth": {"previousTokens": ["OLD"]},
                                           "scopeCeilings": {"default": ["operator.read"]}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "rotating.yaml", rotating), environ={}))
    guard.use_runtime(reloaded)
    flow = make_flow(peer=PROXY, headers=[("Authorization", "Bearer OLD"), ("X-Forwarded-For", "198.51.100.9")], body=BODY)
    await guard.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    (entry,) = audited
    assert (entry.decision, entry.reason, entry.auth, entry.previous_secret, entry.client, entry.peer) == (
        "refused", "missing_scope", "token", True, "198.51.100.9", PROXY)
    await reloaded.aclose()


async def test_a_forwarded_call_is_audited_as_the_client_sent_it_not_as_rewritten(guard: ToolsInvokeGuard, audited: list[Any]) -> None:
    flow = await run(guard, make_flow(method="GET", path="/x/../v1/models", headers=[AUTH]))
    assert flow.request.path == "/v1/models"
    flow.response = tutils.tresp(status_code=200, content=b"{}")
    guard.response(flow)
    (entry,) = audited
    assert (entry.decision, entry.target, entry.status) == ("forwarded", "/x/../v1/models", 200)


async def test_a_policy_refusal_in_shadow_mode_is_forwarded_and_audited_as_shadowed(guard: ToolsInvokeGuard, tmp_path: Path,
                                                                                     audited: list[Any]) -> None:
    shadow = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "enforce": False}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "shadow.yaml", shadow), environ={}))
    guard.use_runtime(reloaded)
    flow = await run(guard, make_flow(headers=[AUTH], body=b'{"tool":"exec"}'))
    assert flow.response is None
    flow.response = tutils.tresp(status_code=404, content=b"{}")
    guard.response(flow)
    (entry,) = audited
    assert entry.decision == "shadowed" and entry.shadowed
    await reloaded.aclose()


async def test_room_is_made_with_a_stranger_before_a_caller_idle_since_its_call(guard: ToolsInvokeGuard) -> None:
    fired: list[str] = []
    for name, table in (("caller", guard._idle_callers), ("stranger", guard._evictable)):
        guard._clients[name] = tools_invoke.OpenClient(new_client(CLIENT), None, None)
        table.arm(name, 5, lambda name=name: fired.append(name))
    assert guard._make_room() is True
    assert fired == ["stranger"]


async def test_a_client_body_that_broke_off_is_not_blamed_on_the_upstream(guard: ToolsInvokeGuard, client_socket: Any,
                                                                           audited: list[Any]) -> None:
    """No answer came because the request never went whole: no 502 naming the upstream unreachable."""
    from mitmproxy.flow import Error

    flow = make_flow(headers=[AUTH, ("Transfer-Encoding", "chunked")])
    await guard.requestheaders(flow)
    flow.request.timestamp_end = None  # its body is still arriving
    flow.error = Error("HTTP/1 protocol error: Invalid chunked encoding length")
    guard.error(flow)
    assert tools_invoke.ANSWERED not in flow.metadata and audited == []
    client_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        client_socket.recv(4096)


async def test_a_connect_authority_is_not_read_as_an_absolute_url(guard: ToolsInvokeGuard) -> None:
    """mitmproxy keeps a CONNECT's authority-form target as its authority; made into `http://host:port`
    it would be judged as an absolute-form request naming a host. Refused either way, never forwarded;
    the answer is the one for a target that is no URL path."""
    flow = await run(guard, make_flow(method="CONNECT", path="", authority="gw.example:443", headers=[AUTH]))
    assert_answer(flow, envelopes.invalid_request_url())
    assert tools_invoke.FORWARDED not in flow.metadata


async def test_an_idle_keep_alive_connection_is_closed_without_a_408(guard: ToolsInvokeGuard, client_socket: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As Node closes one: a 408 there answers a request nobody sent."""
    monkeypatch.setattr(compat, "head_begun", lambda client: False)
    guard._head_deadline_passed(new_client(CLIENT), answered=True)
    await asyncio.sleep(0.05)
    assert read_all(client_socket) == b""


async def test_an_http_2_0_request_line_is_answered_as_node_answers_1_0(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(headers=[AUTH], body=BODY)
    flow.request.http_version = "HTTP/2.0"
    await run(guard, flow)
    assert flow.request.http_version == "HTTP/1.0"


async def test_a_public_download_relayed_as_it_arrives_can_make_room_and_ends_at_the_upstream_deadline(
        guard: ToolsInvokeGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = make_flow(method="GET", path="/healthz")
    guard.client_connected(flow.client_conn)
    await run(guard, flow)
    assert flow.metadata[ADMITTED].auth.method == "unauthenticated-route"
    transport = FakeTransport()
    guard._clients[flow.client_conn.id] = guard._clients[flow.client_conn.id]._replace(transport=transport)
    flow.response = _streaming_answer(200, [(b"content-type", b"text/plain")])  # no length: relayed as it arrives
    guard.responseheaders(flow)
    assert flow.response.stream
    assert armed(guard._evictable, flow.client_conn.id)
    guard._evictable.fire_earliest()
    assert transport.aborted


async def test_trailers_delivered_after_a_body_judged_with_its_head_fail_closed(guard: ToolsInvokeGuard,
                                                                                 body_arrived: Callable[[bytes], None]) -> None:
    """A body judged at its head has a Content-Length and so no trailers; should mitmproxy deliver
    some anyway, what arrives is not what was judged: 500, nothing forwarded."""
    body_arrived(BODY)
    flow = make_flow(headers=[AUTH], body=BODY)
    await guard.requestheaders(flow)
    assert tools_invoke.JUDGED_BODY in flow.metadata
    flow.request.trailers = http.Headers([(b"x-openclaw-scopes", b"operator.admin")])
    await guard.request(flow)
    assert_answer(flow, envelopes.internal_error())
    assert tools_invoke.FORWARDED not in flow.metadata


async def test_an_upgrade_judged_again_after_a_reload_gives_back_its_first_preauth_count(
        guard: ToolsInvokeGuard, runtime: Runtime, tmp_path: Path) -> None:
    flow = make_flow(method="GET", path="/", headers=WS_UPGRADE)
    await guard.requestheaders(flow)
    assert sum(runtime.pipeline.preauth._held.values()) == 1
    reloaded = build_runtime(load_config(write_config(tmp_path / "same.yaml", BASE_CONFIG), environ={}))
    guard.use_runtime(reloaded)
    await guard.request(flow)
    assert flow.metadata[ADMITTED_BY] is reloaded.pipeline
    assert sum(runtime.pipeline.preauth._held.values()) == 0
    assert sum(reloaded.pipeline.preauth._held.values()) == 1  # the new rules' own
    await reloaded.aclose()


async def test_an_upgrade_whose_101_failed_review_gives_back_its_preauth_count(guard: ToolsInvokeGuard, runtime: Runtime,
                                                                                monkeypatch: pytest.MonkeyPatch, audited: list[Any]) -> None:
    flow = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    monkeypatch.setattr(runtime.pipeline, "review_response", boom)
    flow.response = tutils.tresp(status_code=101, content=b"")
    guard.response(flow)
    assert_answer(flow, envelopes.internal_error())
    assert sum(runtime.pipeline.preauth._held.values()) == 0
    (entry,) = audited
    assert (entry.route, entry.outcome) == ("rpc-websocket", "internal_error")


async def test_the_connects_answer_on_mitmproxys_layer_loses_the_device_token_the_gateway_minted(ws_guard: ToolsInvokeGuard) -> None:
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    await client_sends(ws_guard, flow, CONNECT)
    answer_ = {"type": "res", "id": "c1", "ok": True, "payload": {"auth": {"deviceToken": "minted", "role": "operator"}}}
    message = WebSocketMessage(Opcode.TEXT, False, json.dumps(answer_).encode())
    flow.websocket.messages.append(message)
    await ws_guard.websocket_message(flow)
    assert json.loads(message.content)["payload"]["auth"] == {"role": "operator"}


async def test_an_upgrade_whose_101_negotiated_an_extension_keeps_mitmproxys_layer(guard: ToolsInvokeGuard) -> None:
    """The sidecar's relay reads frames raw: a compressed one it would misjudge."""
    from mitmproxy.proxy.context import Context
    from mitmproxy import ctx

    flow = await upgraded(guard)
    context = Context(flow.client_conn, ctx.options)
    assert isinstance(guard._websocket_layer(context, flow), tools_invoke.ws_relay.RpcRelay)
    flow.response.headers["Sec-WebSocket-Extensions"] = "permessage-deflate"
    assert guard._websocket_layer(context, flow) is None


async def test_shadowed_frames_past_their_budget_are_counted_not_written(ws_guard: ToolsInvokeGuard, tmp_path: Path,
                                                                         audited: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import audit

    counted: list[Any] = []
    monkeypatch.setattr(audit, "count", counted.append)
    shadow = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "enforce": False,
                                         "websocket": {"refusedFrames": {"burst": 1, "perSecond": 0.001}}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "shadow.yaml", shadow), environ={}))
    ws_guard.use_runtime(reloaded)
    flow = await upgraded(ws_guard)
    ws_guard.websocket_start(flow)
    await client_sends(ws_guard, flow, CONNECT)
    for n in range(3):
        await client_sends(ws_guard, flow, {"type": "req", "id": f"t{n}", "method": "terminal.open", "params": {}})
    written = [e for e in audited if e.method == "terminal.open"]
    assert len(written) == 1 and written[0].decision == "shadowed"
    assert [e.decision for e in counted] == ["shadowed", "shadowed"]
    await reloaded.aclose()


async def test_a_frame_speaking_the_rpc_on_an_opened_plugin_socket_is_dropped_closed_and_audited(
        guard: ToolsInvokeGuard, tmp_path: Path, ws_closed: list[tuple[int, str]], audited: list[Any]) -> None:
    from sidecar.rpc import NOT_THIS_PROTOCOL

    opened = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "routes": {"allow": ["plugin:browser-extension"]}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "plugin.yaml", opened), environ={}))
    guard.use_runtime(reloaded)
    flow = await upgraded(guard, path="/browser/extension")
    admitted = flow.metadata[ADMITTED]
    assert admitted.websocket and not admitted.rpc
    guard.websocket_start(flow)
    message = await client_sends(guard, flow, CONNECT)
    assert message.dropped and ws_closed == [NOT_THIS_PROTOCOL]
    assert [(e.decision, e.reason) for e in audited] == [("refused", "rpc_on_plugin_socket")]
    await reloaded.aclose()


async def test_a_101_is_left_to_the_websocket_layer_not_relayed_as_a_body(guard: ToolsInvokeGuard) -> None:
    flow = await run(guard, make_flow(method="GET", path="/", headers=WS_UPGRADE))
    flow.response = _streaming_answer(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
    guard.responseheaders(flow)
    assert not flow.response.stream


async def test_an_opened_plugin_socket_relays_nothing_once_its_close_began(guard: ToolsInvokeGuard, tmp_path: Path) -> None:
    """Its frames are relayed unread, so the closing flag alone stops them (an RPC session's judge
    would stop them too)."""
    opened = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "routes": {"allow": ["plugin:browser-extension"]}}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "plugin.yaml", opened), environ={}))
    guard.use_runtime(reloaded)
    flow = await upgraded(guard, path="/browser/extension")
    guard.websocket_start(flow)
    cdp = {"id": 1, "method": "Page.navigate", "params": {"url": "about:blank"}}
    assert not (await client_sends(guard, flow, cdp)).dropped  # relayed unread while open
    flow.metadata["openclaw_sidecar.ws_closing"] = True
    assert (await client_sends(guard, flow, cdp)).dropped
    await reloaded.aclose()


async def test_a_paced_refusal_made_room_with_ends_its_wait_at_once(guard: ToolsInvokeGuard) -> None:
    flow = make_flow(method="GET")
    guard._clients[flow.client_conn.id] = tools_invoke.OpenClient(flow.client_conn, None, None)
    paced = asyncio.create_task(guard._paced(flow, 30))
    await asyncio.sleep(0.01)
    assert guard._make_room() is True
    assert await asyncio.wait_for(paced, 2) is True
    unpaced = make_flow(method="GET")
    guard._clients[unpaced.client_conn.id] = tools_invoke.OpenClient(unpaced.client_conn, None, None)
    assert await asyncio.wait_for(guard._paced(unpaced, 0.01), 2) is False


async def test_a_body_nobody_authenticated_waits_on_a_deadline_that_can_make_room(guard: ToolsInvokeGuard, tmp_path: Path) -> None:
    """A route that checks its own credential (hooks) admits a stranger's head; its body's deadline
    is one room can be made with, an authenticated call's is not."""
    hooks = {**BASE_CONFIG, "sidecar": {**BASE_CONFIG["sidecar"], "routes": {"allow": ["hooks"]}}, "hooks": {"enabled": True}}
    reloaded = build_runtime(load_config(write_config(tmp_path / "hooks.yaml", hooks), environ={}))
    guard.use_runtime(reloaded)
    stranger = make_flow(path="/hooks/wake", headers=[("Content-Type", "application/json"), ("Content-Length", "100")])
    caller = make_flow(headers=[AUTH, ("Content-Length", "100")], peer="203.0.113.8")
    for flow in (stranger, caller):
        guard.client_connected(flow.client_conn)
        await guard.requestheaders(flow)
        assert isinstance(flow.metadata.get(ADMITTED), Admitted) and flow.response is None
    assert not stranger.metadata[ADMITTED].authenticated
    assert armed(guard._evictable, stranger.client_conn.id) and not armed(guard._timers, stranger.id)
    assert armed(guard._timers, caller.id) and not armed(guard._evictable, caller.client_conn.id)
    await reloaded.aclose()


async def test_an_upstream_failure_after_the_client_stopped_reading_is_audited_under_the_calls_own_reason(
        guard: ToolsInvokeGuard, client_socket: Any, audited: list[Any]) -> None:
    """The client was sent nothing: the line says the client went, not that it was told 502."""
    from mitmproxy.connection import ConnectionState
    from mitmproxy.flow import Error

    flow = await run(guard, make_flow(headers=[AUTH], body=BODY))
    flow.client_conn.state &= ~ConnectionState.CAN_WRITE
    flow.error = Error("[Errno 111] Connect call failed")
    guard.error(flow)
    (entry,) = audited
    assert (entry.decision, entry.reason, entry.status, entry.outcome) == ("forwarded", "allowed", None, "client_gone")
