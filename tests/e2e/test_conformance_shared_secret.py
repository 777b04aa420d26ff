"""Conformance cases §(c) 1-18, 46-57 and 58-67 of the /tools/invoke reference, end to end.

Every case runs through a real `openclaw-sidecar run` process in front of the real demo backend
(which requires the sidecar's upstream credential, like a gateway). Shared-secret (token,
password) and `none` modes; "trusted caller" = mode none + `x-openclaw-scopes: operator.write`.

For 58-67 only what the sidecar owns is tested: the hard deny list (2026.9.6's 21 entries plus
2026.4.26's `whatsapp_login`; `cron` is an alias of `automations`), `gateway.tools.allow` only
removing default-deny entries, `gateway.tools.deny` always winning, and the owner-only layer for
non-owners. Agent-policy 404s belong to the gateway. A tool that passes the sidecar but that the
demo backend does not know is answered 404 by the BACKEND: such tests assert the backend saw it.

Sidecars whose config does not change between cases are shared per module (each test clears the
backend's record first); loopback failure delays are switched off on those, so loopback bad-token
cases answer at once (loopback is never locked).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend

from .conftest import UPSTREAM_TOKEN
from .assertions import (
    BACKEND_SERVER, JSON_CT, assert_refused, body_of, header_of, header_values, only_forwarded, status_of,
)
from .expected import not_available
from .harness import (
    RawResponse,
    SidecarProcess,
    http_request,
    raw_exchange,
    read_response,
)
from .harness import TestNet as _TestNet

TOKEN = "T"
PASSWORD = "P"
MAX_BODY = 2 * 1024 * 1024

UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized"}}
PAYLOAD_TOO_LARGE = {"error": {"message": "Payload too large", "type": "invalid_request_error"}}
BODY_TIMEOUT = {"error": {"message": "Request body timeout", "type": "invalid_request_error"}}
MISSING_NAME = {"ok": False, "error": {"type": "invalid_request", "message": "tools.invoke requires name"}}
RATE_LIMITED = {"error": {"message": "Too many failed authentication attempts. Please try again later.",
                          "type": "rate_limited"}}
DEFAULT_SCOPES = ("operator.admin,operator.read,operator.write,operator.approvals,operator.questions,"
                  "operator.pairing,operator.talk.secrets")

# DEFAULT_GATEWAY_HTTP_TOOL_DENY in 2026.9.6 (21) plus whatsapp_login (2026.4.26 docs / GHSA fix).
HARD_DENY_L = (
    "exec", "spawn", "shell", "fs_write", "fs_delete", "fs_move", "apply_patch", "terminal", "portal",
    "sessions_spawn", "sessions_send", "conversations_list", "conversations_send", "conversations_turn",
    "automations", "gateway", "plugins", "nodes", "computer", "mobile_ui", "openclaw",
)
HARD_DENY = (*HARD_DENY_L, "whatsapp_login")
# GATEWAY_OWNER_ONLY_CORE_TOOLS in 2026.9.6.
OWNER_ONLY = (
    "automations", "gateway", "plugins", "sessions", "screen", "terminal", "portal", "conversations_list",
    "conversations_send", "conversations_turn", "nodes", "computer", "mobile_ui", "openclaw",
)
# Requested spelling -> the name the refusal names: the gateway renames `cron` alone and looks every
# other spelling up exactly, naming it as sent.
ALIASES = {"cron": "automations"}


# ------------------------------------------------------------------ helpers






def assert_backend_answered(resp: httpx.Response | RawResponse, backend: DemoBackend) -> dict[str, Any]:
    """The reply came from the backend; returns the one request the backend recorded."""
    assert BACKEND_SERVER in (header_of(resp, "server") or ""), (status_of(resp), body_of(resp))
    return only_forwarded(backend)


def backend_json(record: dict[str, Any]) -> Any:
    return json.loads(record["body"])


def base_config(backend: DemoBackend, auth: dict[str, Any], *, tools: dict[str, Any] | None = None,
                sidecar: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None) -> dict[str, Any]:
    side = {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
            "rateLimit": {"loopbackDelayBaseMs": 0}}
    side.update(sidecar or {})
    gw: dict[str, Any] = {"auth": auth}
    if tools is not None:
        gw["tools"] = tools
    gw.update(gateway or {})
    return {"sidecar": side, "gateway": gw}


def invoke(http: httpx.Client, sc: SidecarProcess, body: Any = None, *, token: str | None = TOKEN,
           content: bytes | None = None, headers: dict[str, str] | None = None,
           target: str = "/tools/invoke", method: str = "POST") -> httpx.Response:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if content is None and body is not None:
        content = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    return http.request(method, sc.url + target, content=content, headers=hdrs)


WRITE = {"x-openclaw-scopes": "operator.write"}  # trusted caller, not owner
ADMIN = {"x-openclaw-scopes": "operator.admin"}  # trusted caller, owner


# ------------------------------------------------------------------ module fixtures


@pytest.fixture(scope="module")
def be(module_backend: DemoBackend) -> DemoBackend:
    return module_backend


@pytest.fixture(scope="module")
def token_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "token", "token": TOKEN}))


@pytest.fixture(scope="module")
def password_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "password", "password": PASSWORD}))


@pytest.fixture(scope="module")
def none_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "none"}))


# Every owner-only tool that the hard deny list also holds is re-enabled, so the owner-only layer
# alone decides (plus sessions_spawn for case 59, browser/sessions_list denied for case 66).
NONE_ALLOW = ("sessions_spawn", "gateway", "cron", "nodes", "plugins", "terminal", "portal",
              "conversations_list", "conversations_send", "conversations_turn", "computer", "mobile_ui",
              "openclaw")


@pytest.fixture(scope="module")
def none_allow_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "none"},
                                      tools={"allow": list(NONE_ALLOW), "deny": ["Browser", "sessions_list"]}))


@pytest.fixture(scope="module")
def token_allow_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "token", "token": TOKEN},
                                      tools={"allow": ["gateway", "CRON", "sessions_spawn", "exec"],
                                             "deny": ["exec"]}))


@pytest.fixture(scope="module")
def allow_deny_sc(be, module_sidecar) -> SidecarProcess:
    return module_sidecar(base_config(be, {"mode": "none"}, tools={"allow": ["gateway"], "deny": ["gateway"]}))


# ================================================================== routing and method (1-4)


def test_c01_get_without_auth_is_405_before_auth(http, be, token_sc):
    resp = http.get(token_sc.url + "/tools/invoke")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.content == b"Method Not Allowed"
    assert BACKEND_SERVER not in resp.headers.get("server", "")
    assert be.requests() == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"])
def test_c02_other_methods_with_valid_token_are_405(http, be, token_sc, method):
    resp = invoke(http, token_sc, method=method, content=b"" if method != "HEAD" else None)
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"
    assert resp.headers["content-type"].startswith("text/plain")
    if method != "HEAD":
        assert resp.content == b"Method Not Allowed"
    assert be.requests() == []


def test_c03_query_string_is_ignored_for_routing(http, be, token_sc):
    resp = invoke(http, token_sc, {"tool": "agents_list", "args": {}}, target="/tools/invoke?x=1")
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert record["path"] == "/tools/invoke?x=1"


@pytest.mark.parametrize("target", ["/tools/invoke/", "/Tools/Invoke"])
@pytest.mark.parametrize("token", [TOKEN, None])
def test_c04_near_miss_paths_are_not_the_tools_route(http, be, token_sc, target, token):
    """Not the tools route, nor any other: the gateway answers 404 there, and so does the
    sidecar (never 405, never a tool call), token or not."""
    resp = invoke(http, token_sc, {"tool": "exec"}, target=target, token=token)
    assert (resp.status_code, resp.content) == (404, b"Not Found")
    assert be.requests() == []


# ================================================================== authentication (5-14)


def test_c05_missing_authorization_is_401(http, be, token_sc):
    assert_refused(invoke(http, token_sc, {"tool": "agents_list"}, token=None), 401, UNAUTHORIZED, be)


@pytest.mark.parametrize("authorization", [
    "Bearer wrong", "Bearer T2", "Bearer t", "Bearer", "Basic dDpU", "Token T", "T", "Bearer T T",
])
def test_c06_c08_wrong_or_non_bearer_credentials_are_401(http, be, token_sc, authorization):
    resp = invoke(http, token_sc, {"tool": "agents_list"}, token=None, headers={"Authorization": authorization})
    assert_refused(resp, 401, UNAUTHORIZED, be)


@pytest.mark.parametrize("authorization", ["bearer T", "BEARER T", "BeArEr T"])
def test_c07_bearer_scheme_is_case_insensitive(http, be, token_sc, authorization):
    resp = invoke(http, token_sc, {"tool": "agents_list"}, token=None, headers={"Authorization": authorization})
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]


def test_c09_authorization_value_is_trimmed(be, token_sc):
    body = b'{"tool":"agents_list","args":{}}'
    raw = http_request("POST", "/tools/invoke", [("Authorization", "   Bearer    T   "),
                                                  ("Content-Type", "application/json")], body)
    resp = raw_exchange((token_sc.host, token_sc.port), raw)
    assert resp.status == 200, resp.body
    assert resp.json()["ok"] is True
    assert_backend_answered(resp, be)


def test_c10_declared_scopes_are_ignored_for_bearer_callers_who_are_owners(http, be, token_sc):
    resp = invoke(http, token_sc, {"tool": "agents_list"}, headers={"x-openclaw-scopes": "operator.approvals"})
    assert resp.status_code == 200
    record = assert_backend_answered(resp, be)
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    # Owner: an owner-only tool passes the sidecar (the demo backend does not know it: its own 404).
    be.clear_requests()
    resp = invoke(http, token_sc, {"tool": "sessions"}, headers={"x-openclaw-scopes": "operator.approvals"})
    assert resp.status_code == 404
    assert resp.json() == not_available("sessions")
    record = assert_backend_answered(resp, be)
    assert backend_json(record)["tool"] == "sessions"


def test_c11_password_mode_accepts_the_password_only(http, be, password_sc):
    resp = invoke(http, password_sc, {"tool": "agents_list"}, token=PASSWORD)
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]
    be.clear_requests()
    assert_refused(invoke(http, password_sc, {"tool": "agents_list"}, token=TOKEN), 401, UNAUTHORIZED, be)
    assert_refused(invoke(http, password_sc, {"tool": "agents_list"}, token=None), 401, UNAUTHORIZED, be)


def test_c12_bad_token_with_5mb_declared_body_is_401_not_413(be, token_sc):
    """Answered from the head: the sidecar never waits for (or reads) the 5 MB."""
    head = http_request("POST", "/tools/invoke", [("Authorization", "Bearer wrong"),
                                                  ("Content-Type", "application/json")])
    head = head.replace(b"Content-Length: 0", b"Content-Length: 5242880")
    with socket.create_connection((token_sc.host, token_sc.port), timeout=10) as sock:
        sock.sendall(head + b'{"tool":"agents_list","args":{"pad":"' + b"x" * 1000)
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 401, UNAUTHORIZED, be)


def test_c13_bad_token_with_invalid_json_is_401(http, be, token_sc):
    resp = invoke(http, token_sc, content=b'{"tool":', token="wrong")
    assert_refused(resp, 401, UNAUTHORIZED, be)


@pytest.mark.parametrize("configured", ["undefined", "null", "", "   ", "UNDEFINED"])
def test_c14_missing_literal_token_refuses_every_request(http, be, start_sidecar, configured):
    sc = start_sidecar(base_config(be, {"mode": "token", "token": configured}))
    for token in (configured.strip() or "x", "undefined", "null", TOKEN):
        assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=token), 401, UNAUTHORIZED, be)
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=None), 401, UNAUTHORIZED, be)
    logs = sc.logs()
    assert "every authenticated request will get 401" in logs
    assert "no token resolved" in logs


# ------------------------------------------------------------------ secret resolution (§2.1)


def test_unset_mode_with_password_resolves_as_password_mode(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"token": TOKEN, "password": PASSWORD}))
    resp = invoke(http, sc, {"tool": "agents_list"}, token=PASSWORD)
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=TOKEN), 401, UNAUTHORIZED, be)


def test_unset_mode_with_env_password_resolves_as_password_mode(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"token": TOKEN}), env={"OPENCLAW_GATEWAY_PASSWORD": "envpass"})
    resp = invoke(http, sc, {"tool": "agents_list"}, token="envpass")
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=TOKEN), 401, UNAUTHORIZED, be)


def test_unset_mode_without_password_resolves_as_token_mode(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"token": TOKEN}))
    resp = invoke(http, sc, {"tool": "agents_list"}, token=TOKEN)
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=PASSWORD), 401, UNAUTHORIZED, be)


def test_env_token_is_used_when_config_has_none(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"mode": "token"}), env={"OPENCLAW_GATEWAY_TOKEN": "env-token"})
    resp = invoke(http, sc, {"tool": "agents_list"}, token="env-token")
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token=TOKEN), 401, UNAUTHORIZED, be)


def test_config_token_wins_over_env_token(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"mode": "token", "token": TOKEN}), env={"OPENCLAW_GATEWAY_TOKEN": "env-token"})
    resp = invoke(http, sc, {"tool": "agents_list"}, token=TOKEN)
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token="env-token"), 401, UNAUTHORIZED, be)


def test_legacy_clawdbot_token_env_is_ignored(http, be, start_sidecar):
    sc = start_sidecar(base_config(be, {"mode": "token"}), env={"CLAWDBOT_GATEWAY_TOKEN": "legacy"})
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token="legacy"), 401, UNAUTHORIZED, be)
    assert "no token resolved" in sc.logs()


def test_token_file_is_read(http, be, start_sidecar, tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text("file-token\n")
    sc = start_sidecar(base_config(be, {"mode": "token", "tokenFile": str(token_file)}))
    resp = invoke(http, sc, {"tool": "agents_list"}, token="file-token")
    assert resp.status_code == 200
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, sc, {"tool": "agents_list"}, token="file-token\n".strip() + "x"), 401,
                   UNAUTHORIZED, be)


# ================================================================== rate limiting (15-18)

CLIENT = "203.0.113.7"
OTHER_CLIENT = "203.0.113.8"


def _net_invoke(testnet: _TestNet, sc: SidecarProcess, source: str, authorization: str | None) -> RawResponse:
    headers = [("Content-Type", "application/json")]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    raw = http_request("POST", "/tools/invoke", headers, b'{"tool":"agents_list","args":{}}')
    return testnet.exchange(source, (sc.host, sc.port), raw)


@pytest.fixture
def net(testnet: _TestNet) -> _TestNet:
    """The shared test network, once it carries traffic.

    A freshly created namespace (or one whose /24 another concurrently running test session
    also routes) can drop the first SYNs; wait, boundedly, until a client reaches the host.
    """
    listener = socket.create_server((_TestNet.HOST_IP, 0))
    port = listener.getsockname()[1]
    deadline = time.monotonic() + 60
    try:
        while True:
            sock = testnet.socket_from(CLIENT)
            sock.settimeout(0.5)
            try:
                sock.connect((_TestNet.HOST_IP, port))
                return testnet
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("test network unreachable: is another test session holding 203.0.113.0/24?")
            finally:
                sock.close()
    finally:
        listener.close()


def _net_sidecar(start_sidecar, be, max_attempts: int | None = None) -> SidecarProcess:
    auth: dict[str, Any] = {"mode": "token", "token": TOKEN}
    if max_attempts is not None:
        auth["rateLimit"] = {"maxAttempts": max_attempts}
    return start_sidecar(base_config(be, auth, sidecar={"listen": "203.0.113.1:0",
                                                        "rateLimit": {"storage": "memory://"}}))


def test_c15_ten_failures_lock_the_client_even_for_the_right_token(be, start_sidecar, net):
    sc = _net_sidecar(start_sidecar, be)  # default maxAttempts 10, windowMs 60000, lockoutMs 300000
    for _ in range(10):
        assert_refused(_net_invoke(net, sc, CLIENT, "Bearer wrong"), 401, UNAUTHORIZED, be)
    locked = _net_invoke(net, sc, CLIENT, "Bearer T")
    assert_refused(locked, 429, RATE_LIMITED, be)
    assert locked.header("retry-after") in ("299", "300")
    # Another client is not affected.
    ok = _net_invoke(net, sc, OTHER_CLIENT, "Bearer T")
    assert ok.status == 200, ok.body
    record = assert_backend_answered(ok, be)
    assert header_values(record, "x-forwarded-for") == [OTHER_CLIENT]


def test_c16_a_success_resets_the_failure_count(be, start_sidecar, net):
    sc = _net_sidecar(start_sidecar, be, max_attempts=3)
    for _ in range(2):
        assert_refused(_net_invoke(net, sc, CLIENT, "Bearer wrong"), 401, UNAUTHORIZED, be)
    ok = _net_invoke(net, sc, CLIENT, "Bearer T")
    assert ok.status == 200, ok.body
    be.clear_requests()
    for _ in range(2):
        assert_refused(_net_invoke(net, sc, CLIENT, "Bearer wrong"), 401, UNAUTHORIZED, be)
    ok = _net_invoke(net, sc, CLIENT, "Bearer T")
    assert ok.status == 200, ok.body
    assert_backend_answered(ok, be)


def test_c17_missing_authorization_is_never_counted(be, start_sidecar, net):
    sc = _net_sidecar(start_sidecar, be, max_attempts=3)
    for _ in range(50):
        assert_refused(_net_invoke(net, sc, CLIENT, None), 401, UNAUTHORIZED, be)
    ok = _net_invoke(net, sc, CLIENT, "Bearer T")
    assert ok.status == 200, ok.body


def test_c18_a_locked_client_without_authorization_gets_429(be, start_sidecar, net):
    sc = _net_sidecar(start_sidecar, be, max_attempts=3)
    for _ in range(3):
        assert_refused(_net_invoke(net, sc, CLIENT, "Bearer wrong"), 401, UNAUTHORIZED, be)
    locked = _net_invoke(net, sc, CLIENT, None)
    assert_refused(locked, 429, RATE_LIMITED, be)
    assert locked.header("retry-after") in ("299", "300")


def test_c15_via_trusted_loopback_proxy_locks_the_forwarded_client(http, be, start_sidecar):
    """Same lock when 127.0.0.1 is a trusted proxy: the key is the XFF client, not the proxy."""
    sc = start_sidecar(base_config(be, {"mode": "token", "token": TOKEN, "rateLimit": {"maxAttempts": 3}},
                                   gateway={"trustedProxies": ["127.0.0.1"]}))
    xff = {"X-Forwarded-For": "198.51.100.9"}
    for _ in range(3):
        assert_refused(invoke(http, sc, {"tool": "agents_list"}, token="wrong", headers=xff), 401, UNAUTHORIZED, be)
    locked = invoke(http, sc, {"tool": "agents_list"}, headers=xff)
    assert_refused(locked, 429, RATE_LIMITED, be)
    assert locked.headers["retry-after"] in ("299", "300")
    ok = invoke(http, sc, {"tool": "agents_list"}, headers={"X-Forwarded-For": "198.51.100.10"})
    assert ok.status_code == 200
    record = assert_backend_answered(ok, be)
    assert header_values(record, "x-forwarded-for") == ["198.51.100.10"]


# ================================================================== body handling (46-57)


def test_c46_declared_length_over_2mib_is_413_with_connection_close(be, token_sc):
    head = http_request("POST", "/tools/invoke", [("Authorization", "Bearer T"),
                                                  ("Content-Type", "application/json")])
    head = head.replace(b"Content-Length: 0", f"Content-Length: {MAX_BODY + 1}".encode())
    with socket.create_connection((token_sc.host, token_sc.port), timeout=10) as sock:
        sock.sendall(head)
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 413, PAYLOAD_TOO_LARGE, be)
    assert (resp.header("connection") or "").lower() == "close"


def _padded_body(size: int, tool: str = "agents_list") -> bytes:
    prefix, suffix = f'{{"tool":"{tool}","pad":"'.encode(), b'"}'
    return prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix


def test_c47_exactly_2mib_body_is_processed_and_forwarded_byte_for_byte(http, be, token_sc):
    body = _padded_body(MAX_BODY)
    assert len(body) == MAX_BODY
    resp = invoke(http, token_sc, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert record["body_length"] == MAX_BODY
    assert record["body"].encode() == body


def test_c48_chunked_body_passing_2mib_is_413(be, token_sc):
    head = (b"POST /tools/invoke HTTP/1.1\r\nHost: sidecar.test\r\nAuthorization: Bearer T\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    with socket.create_connection((token_sc.host, token_sc.port), timeout=10) as sock:
        opening = b'{"tool":"agents_list","pad":"'
        sock.sendall(head + b"%x\r\n" % len(opening) + opening + b"\r\n")
        try:
            for _ in range(MAX_BODY // len(chunk) + 1):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 413, PAYLOAD_TOO_LARGE, be)


def _chunked(body: bytes, size: int = 65536) -> bytes:
    out = b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n" for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


CHUNKED_HEAD = (b"POST /tools/invoke HTTP/1.1\r\nHost: sidecar.test\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_c47_chunked_body_of_exactly_2mib_is_processed(be, token_sc):
    body = _padded_body(MAX_BODY)
    resp = raw_exchange((token_sc.host, token_sc.port), CHUNKED_HEAD % b"T" + _chunked(body))
    assert resp.status == 200, resp.body
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert record["body_length"] == MAX_BODY
    assert record["body"].encode() == body


def test_c12_bad_token_with_large_chunked_body_is_401(be, token_sc):
    with socket.create_connection((token_sc.host, token_sc.port), timeout=10) as sock:
        sock.sendall(CHUNKED_HEAD % b"wrong" + b"500000\r\n" + b"a" * 1000)
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 401, UNAUTHORIZED, be)


def test_c49_invalid_json_is_400(http, be, token_sc):
    resp = invoke(http, token_sc, content=b'{"tool":')
    assert resp.status_code == 400
    assert resp.headers["content-type"] == JSON_CT
    data = resp.json()
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type"}
    assert data["error"]["type"] == "invalid_request_error"
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    assert be.requests() == []


def test_c50_empty_body_is_missing_name(http, be, token_sc):
    assert_refused(invoke(http, token_sc, content=b""), 400, MISSING_NAME, be)


@pytest.mark.parametrize("content", [
    b'{"tool":"   "}', b'{"tool":5}', b"[]", b"null", b'"x"', b"  \n ", b"{}", b'{"name":null}',
    b'{"tool":null}', b'{"tool":["agents_list"]}', b"42",
])
def test_c51_unusable_tool_names_are_missing_name(http, be, token_sc, content):
    assert_refused(invoke(http, token_sc, content=content), 400, MISSING_NAME, be)


def test_c52_name_wins_over_tool(http, be, token_sc):
    resp = invoke(http, token_sc, {"name": "agents_list", "tool": "nope"})
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = assert_backend_answered(resp, be)
    assert backend_json(record)["tool"] == "agents_list"


def test_c52_blank_name_does_not_fall_back_to_tool(http, be, token_sc):
    assert_refused(invoke(http, token_sc, {"name": "", "tool": "agents_list"}), 400, MISSING_NAME, be)


def test_c53_content_type_is_not_checked(http, be, token_sc):
    resp = invoke(http, token_sc, content=b'{"tool":"agents_list","args":{}}', headers={"Content-Type": "text/plain"})
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    assert_backend_answered(resp, be)


def test_c54_stalled_body_is_408(be, module_sidecar):
    sc = module_sidecar(base_config(be, {"mode": "token", "token": TOKEN}, sidecar={"timeouts": {"bodyReadSeconds": 1}}))
    body = b'{"tool":"agents_list","args":{"pad":"' + b"x" * 60 + b'"}}'
    raw = http_request("POST", "/tools/invoke", [("Authorization", "Bearer T"),
                                                 ("Content-Type", "application/json")], body)
    with socket.create_connection((sc.host, sc.port), timeout=10) as sock:
        sock.sendall(raw[: len(raw) - len(body) // 2])  # head + half the body, then nothing
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 408, BODY_TIMEOUT, be)
    assert (resp.header("connection") or "").lower() == "close"


def test_c54_stalled_chunked_body_is_408(be, module_sidecar):
    sc = module_sidecar(base_config(be, {"mode": "token", "token": TOKEN}, sidecar={"timeouts": {"bodyReadSeconds": 1}}))
    with socket.create_connection((sc.host, sc.port), timeout=10) as sock:
        sock.sendall(CHUNKED_HEAD % b"T" + b"20\r\n" + b'{"tool":"agents_list"')
        resp = read_response(sock, timeout=10)
    assert_refused(resp, 408, BODY_TIMEOUT, be)


@pytest.mark.parametrize("args", [[1, 2], "x", None, 5])
def test_c55_non_object_args_are_treated_as_empty(http, be, token_sc, args):
    resp = invoke(http, token_sc, {"tool": "agents_list", "args": args})
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "result": {"agents": [{"id": "main", "default": True}], "action": None}}
    assert_backend_answered(resp, be)


def test_c56_action_reaches_a_tool_whose_schema_has_action(http, be, token_sc):
    resp = invoke(http, token_sc, {"tool": "agents_list", "action": "json"})
    assert resp.status_code == 200
    assert resp.json()["result"]["action"] == "json"
    be.clear_requests()
    resp = invoke(http, token_sc, {"tool": "agents_list", "action": "json", "args": {"action": "keep"}})
    assert resp.status_code == 200
    assert resp.json()["result"]["action"] == "keep"
    be.clear_requests()
    resp = invoke(http, token_sc, {"tool": "echo", "action": "json"})
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "result": {"args": {}}}
    assert_backend_answered(resp, be)


def test_c57_dry_run_still_executes(http, be, token_sc):
    resp = invoke(http, token_sc, {"tool": "echo", "args": {"a": 1}, "dryRun": True})
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "result": {"args": {"a": 1}}}
    record = assert_backend_answered(resp, be)
    assert backend_json(record)["dryRun"] is True


# ================================================================== deny list, owner-only, policy (58-67)


@pytest.mark.parametrize("requested", [*HARD_DENY, "cron", "bash", "apply-patch"])
def test_hard_deny_list_refuses_owners_with_404(http, be, token_sc, requested):
    """Bearer callers are owners; the hard deny list still applies (union of L and A + whatsapp_login)."""
    expected = ALIASES.get(requested, requested)
    assert_refused(invoke(http, token_sc, {"tool": requested}), 404, not_available(expected), be)


@pytest.mark.parametrize("requested", ["exec", "sessions_spawn", "whatsapp_login", "cron"])
def test_hard_deny_list_applies_via_name_field_and_password_mode(http, be, password_sc, requested):
    expected = ALIASES.get(requested, requested)
    assert_refused(invoke(http, password_sc, {"name": requested, "args": {}}, token=PASSWORD), 404,
                   not_available(expected), be)


def test_c58_sessions_spawn_is_denied_for_trusted_callers_without_gateway_allow(http, be, none_sc):
    assert_refused(invoke(http, none_sc, {"tool": "sessions_spawn"}, token=None, headers=WRITE), 404,
                   not_available("sessions_spawn"), be)
    assert_refused(invoke(http, none_sc, {"tool": "sessions_spawn"}, token=None, headers=ADMIN), 404,
                   not_available("sessions_spawn"), be)


def test_c59_gateway_tools_allow_lets_sessions_spawn_reach_the_gateway(http, be, none_allow_sc, token_allow_sc):
    for sc, kwargs in ((none_allow_sc, {"token": None, "headers": WRITE}), (token_allow_sc, {})):
        be.clear_requests()
        resp = invoke(http, sc, {"tool": "sessions_spawn", "args": {}}, **kwargs)
        # The demo backend has no sessions_spawn: its own 404, after the sidecar let it through.
        assert resp.status_code == 404
        assert resp.json() == not_available("sessions_spawn")
        record = assert_backend_answered(resp, be)
        assert backend_json(record)["tool"] == "sessions_spawn"


def test_c60_gateway_allow_reaches_owners_only(http, be, none_allow_sc, token_allow_sc):
    assert_refused(invoke(http, none_allow_sc, {"tool": "gateway"}, token=None, headers=WRITE), 404,
                   not_available("gateway"), be)
    for sc, kwargs in ((none_allow_sc, {"token": None, "headers": ADMIN}), (token_allow_sc, {})):
        be.clear_requests()
        resp = invoke(http, sc, {"tool": "gateway"}, **kwargs)
        assert resp.status_code == 404
        assert resp.json() == not_available("gateway")
        record = assert_backend_answered(resp, be)
        assert backend_json(record)["tool"] == "gateway"


@pytest.mark.parametrize("scopes", [WRITE, ADMIN, {}])
def test_c61_gateway_tools_deny_wins_over_allow(http, be, allow_deny_sc, scopes):
    assert_refused(invoke(http, allow_deny_sc, {"tool": "gateway"}, token=None, headers=scopes), 404,
                   not_available("gateway"), be)


def test_c61_deny_wins_over_allow_for_bearer_owners(http, be, token_allow_sc):
    assert_refused(invoke(http, token_allow_sc, {"tool": "exec"}), 404, not_available("exec"), be)
    assert_refused(invoke(http, token_allow_sc, {"tool": "bash"}), 404, not_available("bash"), be)


@pytest.mark.parametrize("requested", ["cron", "gateway", "nodes"])
def test_c62_owner_only_tools_stay_404_for_write_scope_despite_allow(http, be, none_allow_sc, requested):
    expected = ALIASES.get(requested, requested)
    assert_refused(invoke(http, none_allow_sc, {"tool": requested}, token=None, headers=WRITE), 404,
                   not_available(expected), be)


def test_c63_cron_is_refused_under_its_post_alias_name(http, be, token_sc, none_sc):
    assert_refused(invoke(http, token_sc, {"tool": "cron"}), 404, not_available("automations"), be)
    assert_refused(invoke(http, none_sc, {"tool": "cron"}, token=None, headers=ADMIN), 404,
                   not_available("automations"), be)


@pytest.mark.parametrize("requested", ["exec", "apply_patch", "nodes"])
def test_c64_hard_denied_tools_are_404_even_for_admin(http, be, none_sc, requested):
    assert_refused(invoke(http, none_sc, {"tool": requested}, token=None, headers=ADMIN), 404,
                   not_available(requested), be)


def test_c65_screen_is_never_built_on_http(http, be, none_sc):
    """2026.9.6 builds `screen` only for clients announcing `ui-commands`: HTTP has none, so even
    an admin gets the gateway's 404 (reference case 65 predates it)."""
    assert_refused(invoke(http, none_sc, {"tool": "screen"}, token=None, headers=ADMIN), 404, not_available("screen"), be)


@pytest.mark.parametrize("requested", ["sessions"])
def test_c65_owner_only_tools_404_for_write_and_reach_gateway_for_admin(http, be, none_sc, requested):
    assert_refused(invoke(http, none_sc, {"tool": requested}, token=None, headers=WRITE), 404,
                   not_available(requested), be)
    # Spaced and mixed lists still are not owner without operator.admin (case 43 semantics).
    assert_refused(invoke(http, none_sc, {"tool": requested}, token=None,
                          headers={"x-openclaw-scopes": "operator.read , operator.write"}), 404,
                   not_available(requested), be)
    resp = invoke(http, none_sc, {"tool": requested}, token=None, headers=ADMIN)
    assert resp.status_code == 404
    assert resp.json() == not_available(requested)
    record = assert_backend_answered(resp, be)
    assert backend_json(record)["tool"] == requested
    assert header_values(record, "x-openclaw-scopes") == ["operator.admin"]


def test_none_mode_without_scope_header_is_owner_by_default(http, be, none_sc):
    resp = invoke(http, none_sc, {"tool": "sessions"}, token=None)
    assert resp.status_code == 404
    record = assert_backend_answered(resp, be)
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]


def test_c76_sender_is_owner_header_does_not_make_an_owner(http, be, none_sc):
    headers = {**WRITE, "x-openclaw-sender-is-owner": "true"}
    assert_refused(invoke(http, none_sc, {"tool": "sessions"}, token=None, headers=headers), 404,
                   not_available("sessions"), be)


@pytest.mark.parametrize("requested", [*OWNER_ONLY, "cron"])
def test_owner_only_list_refuses_non_owners_even_when_allowed(http, be, none_allow_sc, requested):
    expected = ALIASES.get(requested, requested)
    assert_refused(invoke(http, none_allow_sc, {"tool": requested}, token=None, headers=WRITE), 404,
                   not_available(expected), be)


@pytest.mark.parametrize("requested", [*(t for t in OWNER_ONLY if t != "screen"), "cron"])
def test_owner_only_list_passes_owners_when_allowed(http, be, none_allow_sc, requested):
    expected = ALIASES.get(requested, requested)
    resp = invoke(http, none_allow_sc, {"tool": requested}, token=None, headers=ADMIN)
    assert resp.status_code == 404
    assert resp.json() == not_available(expected)  # the backend's own answer: it has no such tool
    record = assert_backend_answered(resp, be)
    assert backend_json(record)["tool"] == expected


def test_write_scope_caller_still_reaches_ordinary_tools(http, be, none_allow_sc):
    resp = invoke(http, none_allow_sc, {"tool": "agents_list"}, token=None, headers=WRITE)
    assert resp.status_code == 200
    record = assert_backend_answered(resp, be)
    assert header_values(record, "x-openclaw-scopes") == ["operator.write"]


@pytest.mark.parametrize("requested", ["browser", "BROWSER", "sessions_list"])
def test_c66_gateway_tools_deny_refuses_the_tool(http, be, none_allow_sc, requested):
    assert_refused(invoke(http, none_allow_sc, {"tool": requested}, token=None, headers=ADMIN), 404,
                   not_available(requested), be)


def test_c67_a_request_spelled_other_than_the_tool_is_the_gateways_404(http, be, token_allow_sc):
    """`CRON` in gateway.tools.allow lifts automations, but the lookup itself is exact."""
    assert_refused(invoke(http, token_allow_sc, {"tool": "CRON"}), 404, not_available("CRON"), be)


@pytest.mark.parametrize("requested", ["cron", "automations"])
def test_c67_allow_cron_in_any_case_reenables_automations_for_owners(http, be, token_allow_sc, requested):
    resp = invoke(http, token_allow_sc, {"tool": requested})
    assert resp.status_code == 404
    assert resp.json() == not_available("automations")  # the backend's 404: it has no automations tool
    record = assert_backend_answered(resp, be)
    sent = backend_json(record)
    assert sent["tool"] == "automations"
    assert sent.get("name", "automations") == "automations"


def test_gateway_tools_allow_is_not_an_allowlist(http, be, token_allow_sc):
    """Allow only removes default-deny entries: tools it does not name still work."""
    resp = invoke(http, token_allow_sc, {"tool": "session_status"})
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    assert_backend_answered(resp, be)
    be.clear_requests()
    assert_refused(invoke(http, token_allow_sc, {"tool": "nodes"}), 404, not_available("nodes"), be)
