"""Path and route confusion end to end (attack corpus E1–E9, H2).

The gateway routes on `new URL(req.url, "http://" + Host).pathname`, so every spelling that the
WHATWG parser folds into `/tools/invoke` reaches its tool handler. Through the sidecar such a
spelling is refused (400, nothing forwarded); near misses are no route at all (the gateway's
404); the other routes get the route table's policy, auth and the same header hygiene, and are
forwarded in their canonical form only; `sidecar.routes.deny` refuses prefixes outright.
Requests are raw bytes (httpx would normalise the targets away).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from openclaw_demo.backend import DemoBackend

from .assertions import assert_not_found_raw, assert_refused_raw, header_values, only_forwarded
from .conftest import OPENAI_ENDPOINTS, UPSTREAM_TOKEN
from .expected import AGENTS, AGENTS_RESULT, ATTRIBUTION_REQUIRED, DEFAULT_SCOPES, UNAUTHORIZED
from .harness import RawResponse, SidecarProcess, TestNet, raw_exchange

TOKEN = "T-shared-secret-for-routes"
INVALID_URL = {"error": "bad_request", "message": "Invalid request URL"}
BEARER = ("Authorization", f"Bearer {TOKEN}")


def raw(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"",
        host: str = "sidecar.test") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_hygienic(record: dict, xff: str | None = None) -> None:
    """What every forwarded request carries, on every route: our credential, one explicit
    default-scope header (token mode), the attributed client, nothing the client owned."""
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    assert header_values(record, "x-forwarded-for") == ([] if xff is None else [xff])
    for name in ("x-openclaw-sender-is-owner", "x-session-key", "x-original-url", "x-rewrite-url", "proxy-authorization"):
        assert header_values(record, name) == [], record["headers"]


# ---- fixtures ------------------------------------------------------------------------------


def config(backend: DemoBackend, listen: str = "127.0.0.1:0", **sidecar: Any) -> dict:
    return {
        "sidecar": {"listen": listen, "upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                    "rateLimit": {"loopbackDelayBaseMs": 0, "loopbackDelayMaxMs": 0}, **sidecar},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}, "trustedProxies": ["198.51.100.5"], "http": OPENAI_ENDPOINTS},
    }


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory, module_backend: DemoBackend) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config(module_backend), tmp_path_factory.mktemp("routes"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def deny_sc(tmp_path_factory: pytest.TempPathFactory, module_backend: DemoBackend) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config(module_backend, routes={"deny": ["/api/channels", "/sessions/"]}),
                             tmp_path_factory.mktemp("deny"))
    yield process
    process.stop()


OPENED = ["openai-chat-completions", "session-kill", "plugin:channels"]


@pytest.fixture(scope="module")
def opened_sc(tmp_path_factory: pytest.TempPathFactory, module_backend: DemoBackend) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config(module_backend, routes={"allow": OPENED}), tmp_path_factory.mktemp("opened"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def net_sc(tmp_path_factory: pytest.TempPathFactory, module_backend: DemoBackend, testnet: TestNet) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config(module_backend, listen="203.0.113.1:0"), tmp_path_factory.mktemp("net"))
    yield process
    process.stop()


def exchange(sidecar: SidecarProcess, data: bytes) -> RawResponse:
    return raw_exchange((sidecar.host, sidecar.port), data)


# ---- E1–E3, E6: spellings the gateway folds into /tools/invoke ---------------------------------

TOOLS_SPELLINGS = [
    "/tools/./invoke", "/tools/%2e/invoke", "/tools/%2E/invoke", "/x/../tools/invoke", "/./tools/invoke",
    "/tools/%2E%2E/tools/invoke", "/tools/invoke/%2e%2e/invoke", "/x/.%2e/tools/invoke", "/tools/invoke/../invoke",
    "/tools\\invoke", "/tools\\.\\invoke", "/tools/invoke#frag", "/tools/invoke?x=1#frag", "/tools/invoke?",
]


@pytest.mark.parametrize("target", TOOLS_SPELLINGS)
@pytest.mark.parametrize("auth", ["token", "none"])
def test_E1_E3_E6_non_canonical_tools_spellings_are_refused(sc, module_backend, target, auth):
    """E1/E2/E3/E6: a spelling Node folds into /tools/invoke is refused with the gateway's
    `Invalid request URL` 400, before auth, and nothing is forwarded (not even rewritten)."""
    headers = [BEARER] if auth == "token" else []
    response = exchange(sc, raw("POST", target, headers, AGENTS))
    assert_refused_raw(response, module_backend, 400, INVALID_URL)


@pytest.mark.parametrize("target", [
    "http://evil/tools/invoke", "HTTP://EVIL/tools/invoke", "https://evil/tools/invoke", "http://evil/x/../tools/invoke",
    "http://sidecar.test/tools/invoke", "http://sidecar.test/tools/./invoke",
])
def test_E3_H2_absolute_form_tools_targets_are_refused(sc, module_backend, target):
    """E3/H2: absolute-form requests naming the tools route (foreign host or not) → 400, with a
    valid token, and the backend sees nothing."""
    response = exchange(sc, raw("POST", target, [BEARER], AGENTS))
    assert_refused_raw(response, module_backend, 400)
    payload = response.json()
    assert payload in (INVALID_URL, {"error": {"message": "request target names a foreign host",
                                                "type": "invalid_request_error"}}), payload


# ---- E5: the query never changes the route -------------------------------------------------


def test_E5_query_containing_a_path_is_still_the_tools_route(sc, module_backend):
    """E5: /tools/invoke?x=/health is the tools route: the full pipeline applies."""
    target = "/tools/invoke?x=/health"
    assert_refused_raw(exchange(sc, raw("POST", target, [], AGENTS)), module_backend, 401, UNAUTHORIZED)
    response = exchange(sc, raw("GET", target))
    assert_refused_raw(response, module_backend, 405)
    assert response.body == b"Method Not Allowed" and response.header("allow") == "POST"
    response = exchange(sc, raw("POST", target, [BEARER], b'{"tool":"sessions_spawn"}'))
    assert_refused_raw(response, module_backend, 404, {"ok": False, "error": {"type": "not_found",
                                                                    "message": "Tool not available: sessions_spawn"}})
    response = exchange(sc, raw("POST", target, [BEARER], AGENTS))
    record = only_forwarded(module_backend, response)
    assert response.json() == AGENTS_RESULT
    assert record["path"] == target
    assert_hygienic(record)


# ---- E4 / E8: near misses are no route at all ------------------------------------------------

NEAR_MISSES = ["/tools/invoke/", "/TOOLS/invoke", "/Tools/Invoke", "/tools%2finvoke", "/tools//invoke",
               "/tools/invoke;a=b", "/%74ools/invoke", "/tools/invoke%2F"]


@pytest.mark.parametrize("target", NEAR_MISSES)
@pytest.mark.parametrize("auth", ["token", "none"])
def test_E4_E8_near_misses_are_never_the_tools_route(sc, module_backend, target, auth):
    """E4/E8: no gateway handler but the Control UI takes these. A POST gets the gateway's own
    404, token or not; a GET is either that 404 or, for a plain path, the public Control UI page,
    forwarded without our credential, as the gateway serves it. Never a 405, never a tool call."""
    headers = [BEARER] if auth == "token" else []
    assert_not_found_raw(exchange(sc, raw("POST", target, headers, AGENTS)), module_backend)
    response = exchange(sc, raw("GET", target, headers))
    if response.status == 404:
        assert_not_found_raw(response, module_backend)
    else:
        record = only_forwarded(module_backend, response)
        assert (record["method"], record["path"]) == ("GET", target)
        assert header_values(record, "authorization") == []


def test_E4_double_slash_names_a_host_not_the_tools_route(sc, module_backend):
    """E4: `//tools/invoke` is host `tools`, path `/invoke` for Node. The sidecar either refuses it
    (a target naming a foreign host) or treats it as another route needing auth; it is never
    the tools route (no 405) and never forwarded without auth."""
    for method in ("GET", "POST"):
        response = exchange(sc, raw(method, "//tools/invoke", [], AGENTS if method == "POST" else b""))
        assert response.status in (400, 401), (response.status, response.body)
        assert_refused_raw(response, module_backend, response.status)
    response = exchange(sc, raw("POST", "//tools/invoke", [BEARER], AGENTS))
    if response.status == 400:
        assert_refused_raw(response, module_backend, 400)
    else:
        record = only_forwarded(module_backend, response)
        assert record["path"] in ("/invoke", "//tools/invoke")


@pytest.mark.parametrize(("target", "canonical"), [
    ("/x/../v1/models", "/v1/models"),
    ("/v1/./models", "/v1/models"),
    ("/v1/%2e/models", "/v1/models"),
    ("/v1\\models", "/v1/models"),
    ("/v1/models#frag", "/v1/models"),
    ("/sessions/x/../main/history", "/sessions/main/history"),
    ("http://sidecar.test/v1/models", "/v1/models"),
])
def test_E1_E7_other_routes_are_forwarded_in_canonical_form(sc, module_backend, target, canonical):
    """E1/E7: one route decision for policy and forwarding: the gateway receives exactly the
    canonical target the sidecar decided on, never the raw spelling."""
    record = only_forwarded(module_backend, exchange(sc, raw("GET", target, [BEARER])))
    assert record["path"] == canonical
    assert_hygienic(record)


def test_E6_fragment_cannot_smuggle_a_path_past_an_unauthenticated_route(sc, module_backend):
    """E6: `/healthz#/../tools/invoke` is /healthz for Node; it is forwarded (if at all) as /healthz."""
    response = exchange(sc, raw("GET", "/healthz#/../tools/invoke"))
    if response.status == 400:
        assert_refused_raw(response, module_backend, 400)
        return
    record = only_forwarded(module_backend, response)
    assert record["path"] == "/healthz"


def test_public_routes_are_exact_paths(sc, module_backend):
    """Health is public on its exact paths only: /healthz passes without a token (and without our
    credential); /healthz/ and /healthz%2f are no route at all; /HEALTHZ is a Control UI page
    for the gateway (its probe paths are case-sensitive), public too."""
    record = only_forwarded(module_backend, exchange(sc, raw("GET", "/healthz", [("x-openclaw-sender-is-owner", "true")])))
    assert header_values(record, "x-openclaw-sender-is-owner") == []
    assert header_values(record, "authorization") == []
    assert header_values(record, "x-openclaw-scopes") == [""]
    module_backend.clear_requests()
    for target in ("/healthz/", "/healthz%2f"):
        assert_not_found_raw(exchange(sc, raw("GET", target)), module_backend)
    record = only_forwarded(module_backend, exchange(sc, raw("GET", "/HEALTHZ", [BEARER])))
    assert (record["path"], header_values(record, "authorization")) == ("/HEALTHZ", [])


# ---- E9: every other route gets the table's policy, auth and hygiene -------------------------

READ_ROUTES = [("GET", "/v1/models"), ("GET", "/sessions/x/history"), ("GET", "/control-ui-config.json")]
ACTING_ROUTES = [("POST", "/v1/chat/completions"), ("POST", "/sessions/x/kill"), ("GET", "/api/channels/x")]
HOSTILE_HEADERS = [BEARER, ("x-openclaw-scopes", "operator.admin"), ("x-openclaw-sender-is-owner", "true"),
                   ("x-session-key", "agent:main:main"), ("X-Original-URL", "/tools/invoke"),
                   ("Connection", "x-openclaw-scopes")]


def body_for(method: str) -> bytes:
    return b'{"model":"x"}' if method == "POST" else b""


@pytest.mark.parametrize(("method", "target"), READ_ROUTES)
def test_E9_read_routes_need_auth(sc, module_backend, method, target):
    """E9: reads need the token like the tools route."""
    assert_refused_raw(exchange(sc, raw(method, target)), module_backend, 401, UNAUTHORIZED)
    assert_refused_raw(exchange(sc, raw(method, target, [("Authorization", "Basic dDpU")])), module_backend, 401, UNAUTHORIZED)


@pytest.mark.parametrize(("method", "target"), READ_ROUTES)
def test_E9_read_routes_get_the_same_hygiene(sc, module_backend, method, target):
    """E9: forwarded with our credential and one explicit scopes header; client-owned headers gone."""
    record = only_forwarded(module_backend, exchange(sc, raw(method, target, HOSTILE_HEADERS)))
    assert (record["path"], record["method"]) == (target, method)
    assert_hygienic(record)


@pytest.mark.parametrize(("method", "target"), ACTING_ROUTES)
@pytest.mark.parametrize("auth", ["token", "none"])
def test_E9_acting_routes_are_refused_by_default(sc, module_backend, method, target, auth):
    """Agent turns, admin actions and channel plugins: the gateway's 404 until opened by name."""
    headers = [BEARER] if auth == "token" else []
    assert_not_found_raw(exchange(sc, raw(method, target, headers, body_for(method))), module_backend)


@pytest.mark.parametrize(("method", "target"), ACTING_ROUTES)
def test_E9_opened_routes_need_auth_and_get_the_same_hygiene(opened_sc, module_backend, method, target):
    assert_refused_raw(exchange(opened_sc, raw(method, target, [], body_for(method))), module_backend, 401, UNAUTHORIZED)
    record = only_forwarded(module_backend, exchange(opened_sc, raw(method, target, HOSTILE_HEADERS, body_for(method))))
    assert (record["path"], record["method"]) == (target, method)
    assert_hygienic(record)


@pytest.mark.parametrize("bad", [
    [("x_openclaw_scopes", "operator.admin")],
    [("Authorization", "Bearer x"), BEARER],
    [("X-Custom", "a\x01b")],
], ids=["alias", "duplicate-authorization", "control-char"])
def test_E9_malformed_heads_are_refused_on_other_routes(sc, module_backend, bad):
    """E9 + B3/D1/D3: malformed heads are refused on every route, not only /tools/invoke."""
    headers = bad if bad[0][0] == "Authorization" else [BEARER, *bad]
    response = exchange(sc, raw("GET", "/v1/models", headers))
    assert_refused_raw(response, module_backend, 400)


def test_E9_other_routes_refuse_unattributable_forwarded_headers(testnet, net_sc, module_backend):
    """E9 + A7: a non-proxy peer sending X-Forwarded-For to /v1/models → 403, with a valid token."""
    data = raw("GET", "/v1/models", [("X-Forwarded-For", "10.1.1.1"), BEARER])
    response = testnet.exchange("203.0.113.7", (net_sc.host, net_sc.port), data)
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)
    data = raw("GET", "/v1/models", [("X-Forwarded-For", "10.1.1.1"), BEARER])
    record = only_forwarded(module_backend, testnet.exchange("198.51.100.5", (net_sc.host, net_sc.port), data))
    assert_hygienic(record, xff="10.1.1.1")


# ---- routes.deny -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/sessions/x/history", "/sessions/x/../y/history", "/x/../sessions/y/history",
                                    "/sessions/./x/history", "/api/channels/x"])
@pytest.mark.parametrize("auth", ["token", "none"])
def test_routes_deny_refuses_prefixes_with_404(deny_sc, module_backend, target, auth):
    """sidecar.routes.deny: a denied prefix of the path the gateway routes on → 404 with or without
    a token, nothing forwarded (a spelling that only canonicalises into the prefix is denied too)."""
    headers = [BEARER] if auth == "token" else []
    assert_not_found_raw(exchange(deny_sc, raw("GET", target, headers)), module_backend)


def test_routes_deny_leaves_other_routes_alone(deny_sc, module_backend):
    """routes.deny is a prefix list, not a blanket: /v1/models and the tools route still work."""
    record = only_forwarded(module_backend, exchange(deny_sc, raw("GET", "/v1/models", [BEARER])))
    assert record["path"] == "/v1/models"
    module_backend.clear_requests()
    response = exchange(deny_sc, raw("POST", "/tools/invoke", [BEARER], AGENTS))
    only_forwarded(module_backend, response)
    assert response.json() == AGENTS_RESULT
