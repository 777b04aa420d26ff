"""Trusted-proxy identity and client attribution, end to end through real sidecar processes.

Conformance cases 25–45 and 76–77 of openclaw-tools-invoke.md §(c) (the reference's 10.0.0.5/.6
proxies are 198.51.100.5/.6 here; the reference's client 198.51.100.9 stays a header value), and
the attack-corpus rows about forwarded-header trust (A2, A3, A7, A9, A10, A11) and the tailnet
(I2, I4). Every peer address is genuine: requests come from the `testnet` namespace (clients
203.0.113.7/.8, proxies 198.51.100.5/.6), the loopback cases from 127.0.0.1.

Every refusal asserts status, the exact gateway body and that the backend saw nothing; every
success asserts what the backend received: the identity in the configured user header, one
X-Forwarded-For naming the attributed client, one explicit normalised x-openclaw-scopes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from openclaw_demo.backend import DemoBackend

from .assertions import assert_refused_raw, compact, header_names, header_values, only_forwarded
from .conftest import UPSTREAM_TOKEN
from .expected import (
    AGENTS, AGENTS_RESULT, ATTRIBUTION_REQUIRED, DEFAULT_SCOPES, MISSING_SCOPE, UNAUTHORIZED, not_available,
)
from .harness import RawResponse, SidecarProcess, TestNet, http_request, raw_exchange

TOKEN = "T-shared-secret-for-attribution"
PASSWORD = "P-local-fallback-password"
PROXY_A, PROXY_B = "198.51.100.5", "198.51.100.6"
CLIENT, POD = "203.0.113.7", "203.0.113.8"
REMOTE = "198.51.100.9"  # the reference's forwarded client, only ever a header value here
LISTEN = "203.0.113.1:0"

RATE_LIMITED = {"error": {"message": "Too many failed authentication attempts. Please try again later.",
                          "type": "rate_limited"}}


def tool_body(tool: str) -> bytes:
    return compact({"tool": tool, "args": {}})


# ---- assertions ------------------------------------------------------------------------------


def assert_forwarded(
    response: RawResponse, backend: DemoBackend, *, scopes: str, xff: str | None,
    user: str | None = None, user_header: str = "x-forwarded-user", body: bytes = AGENTS,
    relayed: tuple[str, ...] = (),
) -> dict:
    """What the gateway must receive: our credential, one scopes header, one XFF, the identity,
    and the `relayed` required headers."""
    assert response.status == 200, (response.status, response.body)
    if body == AGENTS:
        assert response.json() == AGENTS_RESULT
    record = only_forwarded(backend)
    assert record["path"] == "/tools/invoke"
    assert record["body"] == body.decode()
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]
    assert header_values(record, "x-openclaw-scopes") == [scopes]
    assert header_values(record, "x-forwarded-for") == ([] if xff is None else [xff])
    assert header_values(record, user_header) == ([] if user is None else [user])
    # Nothing else of the forwarded/tailscale namespaces survives from the client.
    leftover = {n for n in header_names(record) if n.startswith(("x-forwarded-", "tailscale-")) or n in ("forwarded", "x-real-ip")}
    assert leftover <= {"x-forwarded-for", user_header.lower(), *relayed}, leftover
    return record


def assert_reached_backend_with_tool(backend: DemoBackend, tool: str, scopes: str) -> dict:
    """Owner-only tools for owners: the sidecar forwards; the demo backend itself does not know
    the tool, so its own 404 is irrelevant; what matters is that the call was forwarded."""
    record = only_forwarded(backend)
    assert json.loads(record["body"])["tool"] == tool
    assert header_values(record, "x-openclaw-scopes") == [scopes]
    return record


# ---- fixtures ------------------------------------------------------------------------------


def base_sidecar(backend: DemoBackend, listen: str = LISTEN, **more: Any) -> dict:
    return {
        "listen": listen, "upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
        "rateLimit": {"loopbackDelayBaseMs": 0, "loopbackDelayMaxMs": 0}, **more,
    }


def trusted_proxy_config(backend: DemoBackend, listen: str = LISTEN, trusted: list[str] | None = None,
                         tools_allow: tuple[str, ...] = ("gateway",), **trusted_proxy: Any) -> dict:
    return {
        "sidecar": base_sidecar(backend, listen),
        "gateway": {
            "auth": {"mode": "trusted-proxy",
                     "trustedProxy": {"userHeader": "x-forwarded-user", **trusted_proxy}},
            "trustedProxies": [PROXY_A, PROXY_B] if trusted is None else trusted,
            "tools": {"allow": list(tools_allow)},
        },
    }


def token_config(backend: DemoBackend, listen: str = LISTEN, max_attempts: int = 1000, **gateway: Any) -> dict:
    return {
        "sidecar": base_sidecar(backend, listen),
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN,
                     "rateLimit": {"maxAttempts": max_attempts, "windowMs": 60_000, "lockoutMs": 60_000}},
            "trustedProxies": [PROXY_A, PROXY_B],
            **gateway,
        },
    }


@pytest.fixture(scope="module")
def tp_sidecar(module_sidecar: Callable[[dict], SidecarProcess], module_backend: DemoBackend) -> SidecarProcess:
    """trusted-proxy mode: proxies .5/.6, userHeader x-forwarded-user, gateway.tools.allow [gateway]."""
    return module_sidecar(trusted_proxy_config(module_backend))


@pytest.fixture(scope="module")
def token_sidecar(module_sidecar: Callable[[dict], SidecarProcess], module_backend: DemoBackend) -> SidecarProcess:
    """token mode with proxies .5/.6 (no lockout reachable: these tests never send bad tokens)."""
    return module_sidecar(token_config(module_backend))


def send(net: TestNet, source: str, sidecar: SidecarProcess, headers: list[tuple[str, str]],
         body: bytes = AGENTS, method: str = "POST", target: str = "/tools/invoke") -> RawResponse:
    return net.exchange(source, (sidecar.host, sidecar.port), http_request(method, target, headers, body))


def send_local(sidecar: SidecarProcess, headers: list[tuple[str, str]], body: bytes = AGENTS) -> RawResponse:
    return raw_exchange((sidecar.host, sidecar.port), http_request("POST", "/tools/invoke", headers, body))


BEARER = ("Authorization", f"Bearer {TOKEN}")


def via_proxy(user: str | None = "alice", xff: str = REMOTE, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    headers = [("X-Forwarded-For", xff)]
    if user is not None:
        headers.append(("X-Forwarded-User", user))
    return [*headers, *extra]


# ---- ingress / forwarded headers (cases 25–32; corpus A3, A7, A9, A10) ---------------------------


def test_case25_direct_client_with_xff_and_valid_token_is_unattributable(testnet, token_sidecar, module_backend):
    """Case 25 / A9: a non-proxy peer's X-Forwarded-For is never believed: 403 before auth."""
    response = send(testnet, CLIENT, token_sidecar, [("X-Forwarded-For", "10.1.1.1"), BEARER])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


@pytest.mark.parametrize("header", [
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-User", "x"),
    ("X-Forwarded-For", ""),
    ("X-Forwarded-Host", "gateway.internal"),
    ("Forwarded", "for=10.1.1.1;proto=https"),
    ("X-Real-IP", "10.1.1.1"),
    ("Tailscale-User-Login", "alice@example.com"),
], ids=lambda h: h[0] + ("-empty" if not h[1] else ""))
def test_case26_any_forwarded_evidence_from_a_direct_client_is_refused(testnet, token_sidecar, module_backend, header):
    """Case 26 / A7: presence alone (even empty) of any forwarded header from an untrusted peer → 403."""
    response = send(testnet, CLIENT, token_sidecar, [header, BEARER])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


def test_case27_loopback_client_with_xff_when_loopback_is_not_trusted(start_sidecar, backend):
    """Case 27: 127.0.0.1 sending X-Forwarded-For while only .5/.6 are trusted → 403."""
    sidecar = start_sidecar(token_config(backend, listen="127.0.0.1:0"))
    response = send_local(sidecar, [("X-Forwarded-For", REMOTE), BEARER])
    assert_refused_raw(response, backend, 403, ATTRIBUTION_REQUIRED)
    # The same loopback client without forwarded headers is direct-local: no XFF is forwarded.
    response = send_local(sidecar, [BEARER])
    assert_forwarded(response, backend, scopes=DEFAULT_SCOPES, xff=None)


def test_case28_trusted_proxy_without_xff_is_unattributable(testnet, token_sidecar, module_backend):
    """Case 28: a trusted proxy that names no client → 403."""
    response = send(testnet, PROXY_A, token_sidecar, [BEARER])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


@pytest.mark.parametrize("xff", ["127.0.0.1", "::1", "127.0.0.1, 198.51.100.6", "not-an-ip"])
def test_case29_trusted_proxy_naming_only_loopback_or_trusted_hops(testnet, token_sidecar, module_backend, xff):
    """Case 29: XFF with no non-loopback, untrusted, parseable hop leaves no client → 403."""
    response = send(testnet, PROXY_A, token_sidecar, [("X-Forwarded-For", xff), BEARER])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


def test_case30_client_behind_two_trusted_hops_is_the_forwarded_client(testnet, token_sidecar, module_backend):
    """Case 30: socket .5, `XFF: 198.51.100.9, 198.51.100.6` → client 198.51.100.9 (one XFF upstream)."""
    response = send(testnet, PROXY_A, token_sidecar, [("X-Forwarded-For", f"{REMOTE}, {PROXY_B}"), BEARER])
    assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff=REMOTE)


def test_case30_failures_lock_the_forwarded_client_not_the_proxy(testnet, module_sidecar, module_backend):
    """Case 30 (lockout half): bad tokens through proxy .5 lock 198.51.100.9, whichever proxy it
    comes through, even with the right token; other clients of the same proxy are unaffected."""
    sidecar = module_sidecar(token_config(module_backend, max_attempts=3))
    bad = ("Authorization", "Bearer wrong")
    for _ in range(3):
        response = send(testnet, PROXY_A, sidecar, [("X-Forwarded-For", f"{REMOTE}, {PROXY_B}"), bad])
        assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)
    for proxy in (PROXY_A, PROXY_B):
        response = send(testnet, proxy, sidecar, [("X-Forwarded-For", REMOTE), BEARER])
        assert_refused_raw(response, module_backend, 429, RATE_LIMITED)
        assert response.header("retry-after") in ("59", "60")
    response = send(testnet, PROXY_A, sidecar, [("X-Forwarded-For", "198.51.100.10"), BEARER])
    assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff="198.51.100.10")


@pytest.mark.parametrize(("xff", "client"), [
    ("1.1.1.1, 2.2.2.2", "2.2.2.2"),                       # case 31
    ("100.64.0.1, 203.0.113.9", "203.0.113.9"),            # A3: left-most is attacker-chosen
    ("203.0.113.9:4711", "203.0.113.9"),                   # ip:port suffix stripped
    ("[2001:db8::9]:443", "2001:db8::9"),
    ("::ffff:203.0.113.9", "203.0.113.9"),                 # mapped form folded
    ("198.51.100.4, 127.0.0.1", "198.51.100.4"),           # loopback hops skipped
], ids=["case31", "A3-rightmost-untrusted", "port-suffix", "v6-port", "v4-mapped", "loopback-hop"])
def test_case31_rightmost_untrusted_hop_is_the_only_xff_forwarded(testnet, token_sidecar, module_backend, xff, client):
    """Case 31 / A3 / A4: the client is the right-most untrusted hop; the upstream gets that one only."""
    response = send(testnet, PROXY_A, token_sidecar, [("X-Forwarded-For", xff), BEARER])
    assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff=client)


def test_case32_real_ip_fallback_only_when_enabled(testnet, token_sidecar, module_sidecar, module_backend):
    """Case 32: trusted proxy, no XFF, X-Real-IP → attributed only with allowRealIpFallback."""
    headers = [("X-Real-IP", "198.51.100.4"), BEARER]
    assert_refused_raw(send(testnet, PROXY_A, token_sidecar, headers), module_backend, 403, ATTRIBUTION_REQUIRED)
    fallback = module_sidecar(token_config(module_backend, allowRealIpFallback=True))
    response = send(testnet, PROXY_A, fallback, headers)
    record = assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff="198.51.100.4")
    assert header_values(record, "x-real-ip") == []
    module_backend.clear_requests()
    # A loopback X-Real-IP is no client, even with the fallback on.
    response = send(testnet, PROXY_A, fallback, [("X-Real-IP", "127.0.0.1"), BEARER])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


# ---- trusted-proxy mode (cases 33–45) ------------------------------------------------------


def test_case33_trusted_user_without_scopes_header_is_owner_with_default_scopes(testnet, tp_sidecar, module_backend):
    """Case 33 / F1: absent scopes header → forwarded as ONE explicit header with the 7 defaults."""
    response = send(testnet, PROXY_A, tp_sidecar, via_proxy("alice"))
    assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff=REMOTE, user="alice")


@pytest.mark.parametrize("tool", ["sessions", "gateway"])
def test_case33_owner_reaches_owner_only_tools(testnet, tp_sidecar, module_backend, tool):
    """Case 33/60/65: default scopes include admin → owner-only tools (and `gateway`, re-enabled
    by gateway.tools.allow) are forwarded."""
    send(testnet, PROXY_A, tp_sidecar, via_proxy("alice"), body=tool_body(tool))
    record = assert_reached_backend_with_tool(module_backend, tool, DEFAULT_SCOPES)
    assert header_values(record, "x-forwarded-user") == ["alice"]


def test_case34_untrusted_socket_without_forwarded_headers_is_unauthorized(testnet, tp_sidecar, module_backend):
    """Case 34: socket not in trustedProxies, no forwarded headers at all → 401."""
    assert_refused_raw(send(testnet, CLIENT, tp_sidecar, []), module_backend, 401, UNAUTHORIZED)


@pytest.mark.parametrize("user_headers", [[], [("X-Forwarded-User", "")], [("X-Forwarded-User", "   ")]],
                         ids=["absent", "empty", "blank"])
def test_case35_missing_or_blank_user_is_unauthorized(testnet, tp_sidecar, module_backend, user_headers):
    """Case 35 / D5: no user header, or an empty/blank one, is no identity → 401 (never user "")."""
    response = send(testnet, PROXY_A, tp_sidecar, [("X-Forwarded-For", REMOTE), *user_headers])
    assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)


def test_case36_required_header_missing_is_unauthorized(testnet, module_sidecar, module_backend):
    """Case 36: requiredHeaders [x-forwarded-proto]: missing or blank → 401; present → 200, and
    the proxy's X-Forwarded-Proto is handed on once (the gateway demands it of the sidecar)."""
    sidecar = module_sidecar(trusted_proxy_config(module_backend, requiredHeaders=["x-forwarded-proto"]))
    assert_refused_raw(send(testnet, PROXY_A, sidecar, via_proxy("alice")), module_backend, 401, UNAUTHORIZED)
    blank = via_proxy("alice", REMOTE, ("X-Forwarded-Proto", " "))
    assert_refused_raw(send(testnet, PROXY_A, sidecar, blank), module_backend, 401, UNAUTHORIZED)
    present = via_proxy("alice", REMOTE, ("X-Forwarded-Proto", "https"))
    record = assert_forwarded(send(testnet, PROXY_A, sidecar, present), module_backend, scopes=DEFAULT_SCOPES, xff=REMOTE,
                              user="alice", relayed=("x-forwarded-proto",))
    assert header_values(record, "x-forwarded-proto") == ["https"]


def test_case37_allow_users_is_exact_and_case_sensitive(testnet, module_sidecar, module_backend):
    """Case 37: allowUsers [alice]: bob → 401, Alice → 401, alice → 200."""
    sidecar = module_sidecar(trusted_proxy_config(module_backend, allowUsers=["alice"]))
    for user in ("bob", "Alice", "alice ", "alic"):
        response = send(testnet, PROXY_A, sidecar, via_proxy(user))
        if user == "alice ":  # trimmed: this one IS alice
            assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff=REMOTE, user="alice")
            module_backend.clear_requests()
        else:
            assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)
    response = send(testnet, PROXY_A, sidecar, via_proxy("alice"))
    assert_forwarded(response, module_backend, scopes=DEFAULT_SCOPES, xff=REMOTE, user="alice")


def test_case38_loopback_proxy_needs_allow_loopback(start_sidecar, backend):
    """Case 38: 127.0.0.1 trusted as a proxy: allowLoopback unset → 401; true → 200."""
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-User", "alice")]
    refused = start_sidecar(trusted_proxy_config(backend, listen="127.0.0.1:0", trusted=["127.0.0.1"]))
    assert_refused_raw(send_local(refused, headers), backend, 401, UNAUTHORIZED)
    allowed = start_sidecar(trusted_proxy_config(backend, listen="127.0.0.1:0", trusted=["127.0.0.1"],
                                                 allowLoopback=True))
    assert_forwarded(send_local(allowed, headers), backend, scopes=DEFAULT_SCOPES, xff="203.0.113.9", user="alice")


@pytest.mark.parametrize("scopes", ["", "operator.read", "operator.read operator.write", "OPERATOR.WRITE",
                                    "operator.sessions.write", " , ,"],
                         ids=["case39-empty", "case40-read", "case41-space", "case42-upper", "sessions-write", "commas"])
def test_case39_to_42_declared_scopes_without_write_are_forbidden(testnet, tp_sidecar, module_backend, scopes):
    """Cases 39–42 / F5: declared scopes without an exact operator.write/admin → 403 missing scope."""
    response = send(testnet, PROXY_A, tp_sidecar, via_proxy("alice", REMOTE, ("x-openclaw-scopes", scopes)))
    assert_refused_raw(response, module_backend, 403, MISSING_SCOPE)


def test_case43_padded_scopes_are_normalised_and_not_owner(testnet, tp_sidecar, module_backend):
    """Case 43: `  operator.read , operator.write ` passes, forwarded as `operator.read,operator.write`."""
    headers = via_proxy("alice", REMOTE, ("x-openclaw-scopes", "  operator.read , operator.write "))
    response = send(testnet, PROXY_A, tp_sidecar, headers)
    assert_forwarded(response, module_backend, scopes="operator.read,operator.write", xff=REMOTE, user="alice")


@pytest.mark.parametrize("tool", ["sessions", "gateway", "automations", "cron"])
def test_case43_non_owner_gets_404_for_owner_only_tools(testnet, tp_sidecar, module_backend, tool):
    """Cases 43/60/62/65 / F3: operator.write without admin → owner-only tools 404 (never forwarded)."""
    headers = via_proxy("alice", REMOTE, ("x-openclaw-scopes", "operator.read,operator.write"))
    response = send(testnet, PROXY_A, tp_sidecar, headers, body=tool_body(tool))
    assert_refused_raw(response, module_backend, 404, not_available("automations" if tool == "cron" else tool))


def test_case60_admin_scope_reaches_gateway_tool(testnet, tp_sidecar, module_backend):
    """Case 60: trusted operator.admin (declared) → `gateway` (allowed by gateway.tools.allow) forwarded."""
    headers = via_proxy("alice", REMOTE, ("x-openclaw-scopes", "operator.admin"))
    send(testnet, PROXY_A, tp_sidecar, headers, body=tool_body("gateway"))
    assert_reached_backend_with_tool(module_backend, "gateway", "operator.admin")


def test_case44_foreign_origin_is_unauthorized(testnet, tp_sidecar, module_backend):
    """Case 44: Origin without an allowedOrigins match → 401 in trusted-proxy mode."""
    headers = via_proxy("alice", REMOTE, ("Origin", "https://evil.example"))
    assert_refused_raw(send(testnet, PROXY_A, tp_sidecar, headers), module_backend, 401, UNAUTHORIZED)


def test_case45_local_direct_password_fallback(start_sidecar, backend):
    """Case 45: trusted-proxy mode with gateway.auth.password: a loopback client with no forwarded
    headers and Bearer P → 200 with shared-secret (owner) semantics; a wrong password → 401."""
    config = trusted_proxy_config(backend, listen="127.0.0.1:0")
    config["gateway"]["auth"]["password"] = PASSWORD
    sidecar = start_sidecar(config)
    response = send_local(sidecar, [("Authorization", f"Bearer {PASSWORD}"), ("x-openclaw-scopes", "operator.read")])
    assert_forwarded(response, backend, scopes=DEFAULT_SCOPES, xff=None)
    backend.clear_requests()
    send_local(sidecar, [("Authorization", f"Bearer {PASSWORD}")], body=tool_body("sessions"))
    assert_reached_backend_with_tool(backend, "sessions", DEFAULT_SCOPES)
    backend.clear_requests()
    assert_refused_raw(send_local(sidecar, [("Authorization", "Bearer wrong")]), backend, 401, UNAUTHORIZED)
    assert_refused_raw(send_local(sidecar, []), backend, 401, UNAUTHORIZED)


def test_case45_password_fallback_is_not_offered_to_remote_clients(testnet, module_sidecar, module_backend):
    """Case 45 (negative): the fallback is local-direct only; a remote client's Bearer P → 401."""
    config = trusted_proxy_config(module_backend)
    config["gateway"]["auth"]["password"] = PASSWORD
    sidecar = module_sidecar(config)
    response = send(testnet, CLIENT, sidecar, [("Authorization", f"Bearer {PASSWORD}")])
    assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)


# ---- context headers (cases 76–77) ---------------------------------------------------------


def test_case76_sender_is_owner_header_grants_nothing_and_is_never_forwarded(testnet, tp_sidecar, module_backend):
    """Case 76 / B9: x-openclaw-sender-is-owner: true with operator.write is still not owner."""
    claim = ("x-openclaw-sender-is-owner", "true")
    headers = via_proxy("alice", REMOTE, ("x-openclaw-scopes", "operator.write"), claim)
    response = send(testnet, PROXY_A, tp_sidecar, headers, body=tool_body("sessions"))
    assert_refused_raw(response, module_backend, 404, not_available("sessions"))
    record = assert_forwarded(send(testnet, PROXY_A, tp_sidecar, headers), module_backend,
                              scopes="operator.write", xff=REMOTE, user="alice")
    assert header_values(record, "x-openclaw-sender-is-owner") == []


def test_case77_message_to_and_thread_id_are_forwarded_unchanged(testnet, tp_sidecar, module_backend):
    """Case 77: x-openclaw-message-to / x-openclaw-thread-id reach the gateway byte for byte."""
    headers = via_proxy("alice", REMOTE, ("x-openclaw-scopes", "operator.write"),
                        ("x-openclaw-message-to", "channel:24514"), ("x-openclaw-thread-id", "thread-24514"))
    record = assert_forwarded(send(testnet, PROXY_A, tp_sidecar, headers), module_backend,
                              scopes="operator.write", xff=REMOTE, user="alice")
    assert header_values(record, "x-openclaw-message-to") == ["channel:24514"]
    assert header_values(record, "x-openclaw-thread-id") == ["thread-24514"]


# ---- configuration-level trust (A2, A11) ---------------------------------------------------


def logs_after_start(sidecar: SidecarProcess, expected: str, timeout: float = 2.0) -> str:
    """The sidecar's log once `expected` shows up (stderr is drained by a thread), or after timeout."""
    deadline = time.monotonic() + timeout
    while expected not in sidecar.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return sidecar.logs()


def test_A2_empty_trusted_proxies_trusts_no_one(testnet, module_sidecar, module_backend):
    """A2 / §2.1: trusted-proxy mode with no trustedProxies → every request 401, and the start-up
    log says why. (userHeader x-auth-user is not forwarded-header evidence, so these requests
    reach the auth stage rather than the attribution 403.)"""
    config = trusted_proxy_config(module_backend, trusted=[], userHeader="x-auth-user")
    sidecar = module_sidecar(config)
    for source in (PROXY_A, PROXY_B, CLIENT):
        response = send(testnet, source, sidecar, [("X-Auth-User", "alice")])
        assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)
    # With forwarded headers it is refused too (no one is a trusted proxy, so they are unattributable).
    response = send(testnet, PROXY_A, sidecar, [("X-Forwarded-For", REMOTE), ("X-Auth-User", "alice")])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)
    logs = logs_after_start(sidecar, "gateway.trustedProxies is empty")
    assert "gateway.trustedProxies is empty" in logs, logs


def test_A2_empty_trusted_proxies_refuses_loopback_too(start_sidecar, backend):
    """A2: a loopback client is no more trusted than anyone else when trustedProxies is empty."""
    config = trusted_proxy_config(backend, listen="127.0.0.1:0", trusted=[], userHeader="x-auth-user",
                                  allowLoopback=True)
    sidecar = start_sidecar(config)
    assert_refused_raw(send_local(sidecar, [("X-Auth-User", "alice")]), backend, 401, UNAUTHORIZED)


def test_A11_unauthenticated_proxy_config_starts_with_a_loud_warning(module_sidecar, module_backend):
    """A11: trusted-proxy with neither allowUsers nor requiredHeaders starts, with a WARNING; with
    either one set there is no such warning."""
    open_config = module_sidecar(trusted_proxy_config(module_backend, listen="127.0.0.1:0"))  # no test network needed
    logs = logs_after_start(open_config, "allowUsers")
    warnings = [line for line in logs.splitlines() if " WARNING " in line and "allowUsers" in line]
    assert warnings, open_config.logs()
    assert "requiredHeaders" in warnings[0]
    for narrowed in ({"allowUsers": ["alice"]}, {"requiredHeaders": ["x-forwarded-proto"]}):
        sidecar = module_sidecar(trusted_proxy_config(module_backend, listen="127.0.0.1:0", **narrowed))
        logs = logs_after_start(sidecar, "listening on")
        assert "allowUsers" not in logs, logs


# ---- direct pods and tailnet (A10, I2, I4) -------------------------------------------------


@pytest.mark.parametrize("mode", ["trusted-proxy", "token"])
def test_A10_I4_pod_connecting_directly_with_forged_identity_is_refused(testnet, tp_sidecar, token_sidecar,
                                                                        module_backend, mode):
    """A10 / I4: a pod (203.0.113.8, not a trusted proxy) sending XFF + identity headers straight
    to the sidecar → 403, in trusted-proxy mode and with a valid token alike."""
    forged = [("X-Forwarded-For", REMOTE), ("Tailscale-User-Login", "admin@example.com"),
              ("X-Forwarded-User", "admin"), ("x-openclaw-scopes", "operator.admin")]
    sidecar = tp_sidecar if mode == "trusted-proxy" else token_sidecar
    extra = [] if mode == "trusted-proxy" else [BEARER]
    response = send(testnet, POD, sidecar, [*forged, *extra], body=tool_body("gateway"))
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


def test_I4_pod_with_only_the_user_header_is_refused(testnet, tp_sidecar, module_backend):
    """I4: the configured user header alone is forwarded-header evidence from a non-proxy → 403."""
    response = send(testnet, POD, tp_sidecar, [("X-Forwarded-User", "admin")])
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


@pytest.mark.parametrize("mode", ["token", "trusted-proxy"])
def test_I2_funnel_request_through_a_trusted_proxy_is_unauthorized(testnet, tp_sidecar, token_sidecar, module_backend, mode):
    """I2: `Tailscale-Funnel-Request: ?1` through a trusted proxy → 401 in every mode that can
    listen beyond loopback (the sidecar's hardening; Funnel traffic carries no user identity)."""
    funnel = ("Tailscale-Funnel-Request", "?1")
    if mode == "token":
        sidecar, headers = token_sidecar, [("X-Forwarded-For", REMOTE), funnel, BEARER]
    else:
        sidecar, headers = tp_sidecar, [*via_proxy("alice"), funnel]
    assert_refused_raw(send(testnet, PROXY_A, sidecar, headers), module_backend, 401, UNAUTHORIZED)


# ---- this host's own addresses (§2.3 step 3) -------------------------------------------------


def test_trusted_proxy_connecting_from_this_hosts_own_address_is_refused(start_sidecar, module_backend, testnet):
    """A trusted peer that is a non-loopback address of the sidecar's own host could be anything
    running on the host (I1): 401 trusted_proxy_local_interface_source, as upstream."""
    host_ip = TestNet.HOST_IP
    sidecar = start_sidecar(trusted_proxy_config(module_backend, trusted=[host_ip, PROXY_A]))
    sock = socket.socket()
    sock.bind((host_ip, 0))  # the host side of the test network: one of this host's addresses
    response = raw_exchange((sidecar.host, sidecar.port), http_request("POST", "/tools/invoke", via_proxy(), AGENTS), sock=sock)
    assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)
    deadline = time.monotonic() + 5
    while not sidecar.audit_lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line["reason"] for line in sidecar.audit_lines()] == ["trusted_proxy_local_interface_source"]
    # The same request from a trusted proxy elsewhere is accepted.
    assert send(testnet, PROXY_A, sidecar, via_proxy()).status == 200
