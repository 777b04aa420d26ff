"""Header hygiene end to end: what a client may and may not make the gateway see.

Attack corpus classes A1/A8 (rewrite headers), B (identity spoofing and aliasing, trailers,
context headers), C (Connection-nominated headers), D (duplicates, control bytes, encodings,
obs-fold) and F (scope-header semantics and ceilings). Malformed heads go over raw sockets
(httpx would normalise them away); peers are genuine non-loopback addresses from `testnet`
(clients 203.0.113.7/.8, proxy 198.51.100.5).

Refusals assert status, body and that the backend saw nothing; forwards assert the exact header
lines the backend received.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from openclaw_demo.backend import DemoBackend

from .assertions import assert_refused_raw, header_names, header_values, only_forwarded
from .conftest import OPENAI_ENDPOINTS, UPSTREAM_TOKEN
from .expected import AGENTS, ATTRIBUTION_REQUIRED, DEFAULT_SCOPES, MISSING_SCOPE, UNAUTHORIZED, not_available
from .harness import RawResponse, SidecarProcess, TestNet, raw_exchange

TOKEN = "T-shared-secret-for-hygiene"
PROXY, CLIENT, OTHER = "198.51.100.5", "203.0.113.7", "203.0.113.8"
FORWARDED_CLIENT = "203.0.113.9"
LISTEN = "203.0.113.1:0"

ALICE, BOB = "alice@example.com", "bob@example.com"


# ---- raw requests ----------------------------------------------------------------------------


def raw_head(method: str, target: str, headers: list[tuple[str, str | bytes]], body: bytes = b"",
             host: str | None = "sidecar.test", content_length: bool = True) -> bytes:
    """A request head written byte for byte: any name, any value bytes, repeats kept."""
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    if host is not None:
        lines.append(f"Host: {host}".encode())
    for name, value in headers:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(name.encode("latin-1") + b": " + raw)
    if content_length and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_bad_request(response: RawResponse, backend: DemoBackend, mentions: str | None = None) -> None:
    """A malformed-head 400: the sidecar's JSON (type invalid_request_error), nothing upstream."""
    assert_refused_raw(response, backend, 400)
    payload = response.json()
    assert payload["error"]["type"] == "invalid_request_error", payload
    if mentions is not None:
        assert mentions.lower() in payload["error"]["message"].lower(), payload


def assert_owned_headers(record: dict, *, scopes: str, xff: str | None, user: str | None = None,
                         user_header: str = "tailscale-user-login") -> None:
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]
    assert header_values(record, "x-openclaw-scopes") == [scopes]
    assert header_values(record, "x-forwarded-for") == ([] if xff is None else [xff])
    if user_header:
        assert header_values(record, user_header) == ([] if user is None else [user])


# ---- fixtures ------------------------------------------------------------------------------


def sidecar_section(backend: DemoBackend, **more: Any) -> dict:
    return {"listen": LISTEN, "upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
            "timeouts": {"bodyReadSeconds": 1}} | more


def token_config(backend: DemoBackend, **sidecar: Any) -> dict:
    return {"sidecar": sidecar_section(backend, **sidecar),
            "gateway": {"auth": {"mode": "token", "token": TOKEN}, "trustedProxies": [PROXY], "http": OPENAI_ENDPOINTS}}


def tp_config(backend: DemoBackend, user_header: str = "Tailscale-User-Login", trusted_proxy: dict | None = None,
              **sidecar: Any) -> dict:
    return {
        "sidecar": sidecar_section(backend, **sidecar),
        "gateway": {"auth": {"mode": "trusted-proxy",
                             "trustedProxy": {"userHeader": user_header, **(trusted_proxy or {})}},
                    "trustedProxies": [PROXY]},
    }


@pytest.fixture(scope="module")
def token_sc(module_sidecar, module_backend) -> SidecarProcess:
    # One POST route besides /tools/invoke opened, so rules "on other routes" meet a forwarded one.
    return module_sidecar(token_config(module_backend, routes={"allow": ["openai-chat-completions"]}))


@pytest.fixture(scope="module")
def tp_sc(module_sidecar, module_backend) -> SidecarProcess:
    """trusted-proxy via Tailscale-User-Login, with pinned context headers and per-identity ceilings."""
    return module_sidecar(tp_config(
        module_backend,
        contextHeaders={"pinned": {
            ALICE: {"x-openclaw-message-channel": "webchat", "x-openclaw-account-id": "acct-alice"},
            "*": {"x-openclaw-message-channel": "restricted"},
        }},
        scopeCeilings={"identities": {
            "capped@example.com": ["operator.read", "operator.write"],
            "viewer@example.com": ["operator.read"],
        }},
    ))


BEARER = ("Authorization", f"Bearer {TOKEN}")
VIA = ("X-Forwarded-For", FORWARDED_CLIENT)


def send(net: TestNet, source: str, sidecar: SidecarProcess, data: bytes, timeout: float = 10.0) -> RawResponse:
    return net.exchange(source, (sidecar.host, sidecar.port), data, timeout=timeout)


def invoke(headers: list[tuple[str, str | bytes]], body: bytes = AGENTS, target: str = "/tools/invoke") -> bytes:
    return raw_head("POST", target, headers, body)


def bob_via_proxy_plus(extra: list[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    """bob through the trusted proxy, with `extra` replacing any base header of the same name."""
    replaced = {name.lower() for name, _ in extra}
    return [h for h in (VIA, ("Tailscale-User-Login", BOB)) if h[0].lower() not in replaced] + list(extra)


def as_user(user: str | bytes, *extra: tuple[str, str | bytes]) -> list[tuple[str, str | bytes]]:
    return [VIA, ("Tailscale-User-Login", user), *extra]


# ---- A1 / A8: rewrite and forwarded-path headers ---------------------------------------------


@pytest.mark.parametrize("header", [
    ("X-Forwarded-Uri", "/healthz"), ("X-Original-URL", "/healthz"), ("X-Rewrite-URL", "/healthz"),
    ("X-Forwarded-Prefix", "/public"), ("X-Forwarded-Path", "/healthz"), ("X-Forwarded-Host", "gateway.internal"),
    ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443"), ("X-Original-URI", "/healthz"),
    ("X-Original-Method", "GET"),
], ids=lambda h: h[0])
def test_A1_A8_rewrite_headers_from_a_proxied_client_never_reach_the_gateway(testnet, token_sc, module_backend, header):
    """A1/A8: the sidecar decides on the target it forwards; path/host-rewrite headers are
    removed by namespace (x-forwarded-*, x-original-*, x-rewrite-*), not by a fixed list."""
    record = only_forwarded(module_backend, send(testnet, PROXY, token_sc, invoke([VIA, header, BEARER])))
    assert record["path"] == "/tools/invoke"
    assert header[0].lower() not in header_names(record), record["headers"]
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user_header="")


@pytest.mark.parametrize("header", [("X-Original-URL", "/healthz"), ("X-Rewrite-URL", "/healthz")], ids=lambda h: h[0])
def test_A1_rewrite_headers_from_a_direct_client_are_dropped(testnet, token_sc, module_backend, header):
    """A1: X-Original-URL / X-Rewrite-URL are not forwarded-header evidence, but still never forwarded."""
    record = only_forwarded(module_backend, send(testnet, CLIENT, token_sc, invoke([header, BEARER])))
    assert header[0].lower() not in header_names(record)
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=CLIENT, user_header="")


def test_A1_forwarded_uri_from_a_direct_client_is_unattributable(testnet, token_sc, module_backend):
    """A1/A7: X-Forwarded-Uri is an x-forwarded-* header: from a non-proxy peer → 403."""
    response = send(testnet, CLIENT, token_sc, invoke([("X-Forwarded-Uri", "/healthz"), BEARER]))
    assert_refused_raw(response, module_backend, 403, ATTRIBUTION_REQUIRED)


# ---- B1 / B2: client identity headers ------------------------------------------------------


def test_B1_B2_token_mode_forwards_no_identity_at_all(testnet, token_sc, module_backend):
    """B1/B2: in token mode no identity source exists, so client identity headers are deleted and
    nothing is set in their place."""
    forged = [("Tailscale-User-Login", "admin@example.com"), ("Tailscale-User-Name", "Admin"),
              ("Tailscale-User-Profile-Pic", "https://x/p.png"), ("X-Forwarded-User", "admin"),
              ("X-Forwarded-Email", "admin@example.com"), ("X-Forwarded-Groups", "admins")]
    record = only_forwarded(module_backend, send(testnet, PROXY, token_sc, invoke([VIA, *forged, BEARER])))
    leaked = {n for n in header_names(record) if n.startswith(("tailscale-", "x-forwarded-")) and n != "x-forwarded-for"}
    assert leaked == set(), record["headers"]
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user_header="")


def test_B2_only_the_sidecar_set_identity_reaches_the_gateway(testnet, tp_sc, module_backend):
    """B2: the proxy-asserted user is forwarded once, in the user header; other identity headers
    the client added (x-forwarded-user, tailscale-user-name) are gone."""
    headers = as_user(BOB, ("X-Forwarded-User", "root"), ("Tailscale-User-Name", "Root"),
                      ("Tailscale-User-Profile-Pic", "x"))
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(headers)))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user=BOB)
    assert {"x-forwarded-user", "tailscale-user-name", "tailscale-user-profile-pic"} & header_names(record) == set()


def test_B2_identity_goes_in_the_configured_upstream_user_header(testnet, module_sidecar, module_backend):
    """B2: with upstreamAuth.userHeader = X-Forwarded-User the identity travels there and the
    client-side Tailscale-User-Login (the header the proxy asserted it in) is not forwarded."""
    sidecar = module_sidecar(tp_config(module_backend, upstreamAuth={"token": UPSTREAM_TOKEN, "userHeader": "X-Forwarded-User"}))
    headers = as_user(BOB, ("X-Forwarded-User", "root"))
    record = only_forwarded(module_backend, send(testnet, PROXY, sidecar, invoke(headers)))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user=BOB, user_header="x-forwarded-user")
    assert header_values(record, "tailscale-user-login") == []


# ---- B3 / B4 / B5 / B7: aliases that fold onto protected names -------------------------------


@pytest.mark.parametrize("name", [
    "Tailscale_User_Login", "Tailscale.User.Login", "x_openclaw_scopes", "X.OpenClaw.Scopes", "x-openclaw_scopes",
    "X_Forwarded_Proto", "X_Forwarded_For", "x.forwarded.user", "X_OPENCLAW_SENDER_IS_OWNER", "x_session_key",
    "Author_ization", "X_Real_IP",
])
def test_B3_B5_B7_protected_name_aliases_are_refused(testnet, token_sc, module_backend, name):
    """B3/B4/B5/B7: a name that folds (case, `-`, `_`, `.`) onto a protected header → 400, nothing upstream."""
    response = send(testnet, CLIENT, token_sc, invoke([(name, "operator.admin"), BEARER]))
    assert_bad_request(response, module_backend, mentions=name)


def test_B3_alias_of_the_configured_user_header_is_refused(testnet, module_sidecar, module_backend):
    """B3: the configured trusted-proxy user header (X-Auth-User) is protected too: X_Auth_User → 400."""
    sidecar = module_sidecar(tp_config(module_backend, user_header="X-Auth-User"))
    response = send(testnet, PROXY, sidecar, invoke([VIA, ("X-Auth-User", "bob"), ("X_Auth_User", "root")]))
    assert_bad_request(response, module_backend, mentions="X_Auth_User")
    record = only_forwarded(module_backend, send(testnet, PROXY, sidecar, invoke([VIA, ("X-Auth-User", "bob")])))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user="bob", user_header="x-auth-user")


# ---- B6: trailers --------------------------------------------------------------------------


def chunked(target: str, headers: list[tuple[str, str]], body: bytes, trailer: bytes) -> bytes:
    head = raw_head("POST", target, [*headers, ("Transfer-Encoding", "chunked")], content_length=False)
    return head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer + b"\r\n"


def send_expecting_refusal_or_close(testnet, source, sidecar, data: bytes) -> int | None:
    """The status of a refusal, or None when the sidecar closed the connection without one.
    A hang is a failure (TimeoutError propagates)."""
    try:
        return send(testnet, source, sidecar, data, timeout=5).status
    except ConnectionError:
        return None


@pytest.mark.parametrize("trailer", [b"X-OpenClaw-Scopes: operator.admin\r\n", b"Tailscale-User-Login: root\r\n",
                                     b"X-Harmless: 1\r\n"], ids=["scopes", "identity", "harmless"])
def test_B6_trailers_on_the_tools_route_are_refused(testnet, tp_sc, module_backend, trailer):
    """B6: a chunked request carrying trailers never reaches the gateway. mitmproxy closes the
    connection at the trailers before any hook runs, so the refusal is a clean close."""
    data = chunked("/tools/invoke", as_user(BOB, ("x-openclaw-scopes", "operator.write")), AGENTS, trailer)
    assert send_expecting_refusal_or_close(testnet, PROXY, tp_sc, data) in (None, 400)
    assert module_backend.requests() == []


def test_B6_trailers_on_other_routes_are_refused(testnet, token_sc, module_backend):
    data = chunked("/v1/chat/completions", [BEARER], b'{"model":"x"}', b"X-OpenClaw-Scopes: operator.admin\r\n")
    assert send_expecting_refusal_or_close(testnet, CLIENT, token_sc, data) in (None, 400)
    assert module_backend.requests() == []


def test_B6_announced_trailers_get_400(testnet, token_sc, module_backend):
    data = chunked("/tools/invoke", [BEARER, ("Trailer", "X-OpenClaw-Scopes")], AGENTS, b"X-OpenClaw-Scopes: operator.admin\r\n")
    response = send(testnet, CLIENT, token_sc, data, timeout=5)
    assert response.status == 400
    assert_refused_raw(response, module_backend, 400)


# ---- B9 / B11: context headers -------------------------------------------------------------


def test_B9_owner_and_session_headers_are_always_removed(testnet, token_sc, module_backend):
    """B9: x-openclaw-sender-is-owner, x-session-key, unlisted x-openclaw-* / x-clawdbot-*,
    Proxy-Authorization never reach the gateway; allow-listed context headers do."""
    headers = [("x-openclaw-sender-is-owner", "true"), ("x-session-key", "agent:main:main"),
               ("x-openclaw-debug", "1"), ("X-Clawdbot-Scopes", "operator.admin"),
               ("Proxy-Authorization", "Basic cm9vdDpyb290"), ("x-openclaw-account-id", "acct-7"), BEARER]
    record = only_forwarded(module_backend, send(testnet, CLIENT, token_sc, invoke(headers)))
    removed = {"x-openclaw-sender-is-owner", "x-session-key", "x-openclaw-debug", "x-clawdbot-scopes",
               "proxy-authorization"}
    assert removed & header_names(record) == set(), record["headers"]
    assert header_values(record, "x-openclaw-account-id") == ["acct-7"]
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=CLIENT, user_header="")


def test_B11_pinned_context_headers_override_the_client_per_identity(testnet, tp_sc, module_backend):
    """B11: alice's channel and account are pinned; her own values are replaced, not appended."""
    headers = as_user(ALICE, ("x-openclaw-message-channel", "telegram-admins"),
                      ("x-openclaw-account-id", "acct-root"), ("x-openclaw-message-to", "channel:1"),
                      ("x-openclaw-unlisted", "x"))
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(headers)))
    assert header_values(record, "x-openclaw-message-channel") == ["webchat"]
    assert header_values(record, "x-openclaw-account-id") == ["acct-alice"]
    assert header_values(record, "x-openclaw-message-to") == ["channel:1"]
    assert header_values(record, "x-openclaw-unlisted") == []
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user=ALICE)


def test_B11_wildcard_pin_applies_to_other_identities(testnet, tp_sc, module_backend):
    """B11: identities without their own pin get the "*" pin; unpinned allow-listed headers pass."""
    headers = as_user(BOB, ("x-openclaw-message-channel", "telegram-admins"), ("x-openclaw-account-id", "acct-bob"))
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(headers)))
    assert header_values(record, "x-openclaw-message-channel") == ["restricted"]
    assert header_values(record, "x-openclaw-account-id") == ["acct-bob"]


def test_B11_context_allow_list_is_configurable(testnet, module_sidecar, module_backend):
    """B11: with contextHeaders.allow = [x-openclaw-message-to] every other x-openclaw-* is removed."""
    sidecar = module_sidecar(tp_config(module_backend, contextHeaders={"allow": ["X-OpenClaw-Message-To"]}))
    headers = as_user(BOB, ("x-openclaw-message-to", "channel:9"), ("x-openclaw-thread-id", "t-9"),
                      ("x-openclaw-message-channel", "telegram-admins"), ("x-openclaw-account-id", "a"))
    record = only_forwarded(module_backend, send(testnet, PROXY, sidecar, invoke(headers)))
    forwarded = {n for n in header_names(record) if n.startswith("x-openclaw-")}
    assert forwarded == {"x-openclaw-message-to", "x-openclaw-scopes"}, record["headers"]
    assert header_values(record, "x-openclaw-message-to") == ["channel:9"]


# ---- C1–C4: Connection-nominated headers -------------------------------------------------------


@pytest.mark.parametrize("connection", [
    [("Connection", "x-openclaw-scopes, tailscale-user-login, x-forwarded-for, authorization, x-custom")],
    [("Connection", "keep-alive, X-OpenClaw-Scopes"), ("Connection", "Tailscale-User-Login, X-Forwarded-For, X-Custom")],
], ids=["one-line", "two-lines"])
def test_C1_C4_connection_cannot_remove_or_shadow_sidecar_headers(testnet, tp_sc, module_backend, connection):
    """C1–C4: headers nominated in Connection are removed from the client's request, but the
    sidecar's own (scopes, identity, XFF, upstream Authorization) are set after that and survive,
    once each; the Connection header forwarded keeps only close/keep-alive."""
    headers = [*as_user(BOB, ("x-openclaw-scopes", "operator.write"), ("X-Custom", "nominated")), *connection]
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(headers)))
    assert_owned_headers(record, scopes="operator.write", xff=FORWARDED_CLIENT, user=BOB)
    assert header_values(record, "x-custom") == []
    tokens = {t.strip().lower() for v in header_values(record, "connection") for t in v.split(",")}
    assert tokens <= {"close", "keep-alive"}, record["headers"]


def test_C1_connection_cannot_remove_the_upstream_credential_in_token_mode(testnet, token_sc, module_backend):
    """C1: `Connection: authorization, x-openclaw-scopes` does not strip the upstream credential."""
    headers = [BEARER, ("Connection", "authorization, x-openclaw-scopes, x-forwarded-for")]
    record = only_forwarded(module_backend, send(testnet, CLIENT, token_sc, invoke(headers)))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=CLIENT, user_header="")


# ---- D1 / D2: repeated headers ---------------------------------------------------------------


@pytest.mark.parametrize("repeat", [
    [BEARER, BEARER],
    [BEARER, ("authorization", "Bearer other")],
    [("Host", "evil.example")],
    [("x-openclaw-scopes", "operator.write"), ("X-OpenClaw-Scopes", "operator.admin")],
    [("Tailscale-User-Login", BOB), ("tailscale-user-login", "root@example.com")],
    [("X-Forwarded-For", FORWARDED_CLIENT), ("X-Forwarded-For", "198.51.100.77")],
], ids=["authorization", "authorization-case", "host", "scopes", "tailscale-user-login", "xff"])
def test_D1_D2_repeated_security_headers_are_refused(testnet, tp_sc, module_backend, repeat):
    """D1/D2: a repeat of Authorization, Host, x-openclaw-scopes, Tailscale-User-Login or
    X-Forwarded-For would be read differently by the sidecar and by Node → 400."""
    headers = bob_via_proxy_plus(repeat)
    response = send(testnet, PROXY, tp_sc, invoke(headers))
    assert response.status == 400, (response.status, response.body)
    assert_refused_raw(response, module_backend, 400)


# ---- D3 / D4 / D7: control bytes, encodings, obs-fold ------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("Tailscale-User-Login", b"bob@example.com\x00root@example.com"),
    ("x-openclaw-scopes", b"operator.write\x01"),
    ("Authorization", b"Bearer " + TOKEN.encode() + b"\x7f"),
    ("X-Custom", b"a\x0bb"),
    ("User-Agent", b"curl\x1b[31m"),
], ids=["nul-identity", "soh-scopes", "del-authorization", "vt-custom", "esc-user-agent"])
def test_D3_control_characters_in_header_values_are_refused(testnet, tp_sc, module_backend, name, value):
    """D3: NUL and other control bytes in a header value → 400 (mitmproxy may refuse a few first:
    any 400 will do, provided nothing reaches the backend)."""
    headers = bob_via_proxy_plus([(name, value)])
    response = send(testnet, PROXY, tp_sc, invoke(headers))
    assert response.status == 400, (response.status, response.body)
    assert_refused_raw(response, module_backend, 400)


def test_D4_non_utf8_identity_bytes_are_refused(testnet, tp_sc, module_backend):
    """D4: a protected header whose bytes are not UTF-8 fails closed (400), never passes through."""
    response = send(testnet, PROXY, tp_sc, invoke([VIA, ("Tailscale-User-Login", b"b\xffb@example.com")]))
    assert_bad_request(response, module_backend)


@pytest.mark.parametrize("folded", [
    [("Tailscale-User-Login", b"bob@example.com\r\n root@example.com")],
    [("X-Custom", b"first\r\n\tsecond")],
], ids=["identity", "custom"])
def test_D7_obs_fold_is_refused(testnet, tp_sc, module_backend, folded):
    """D7: an obs-folded line (Node answers 400; mitmproxy would forward it) → 400."""
    headers = bob_via_proxy_plus(folded)
    response = send(testnet, PROXY, tp_sc, invoke(headers))
    assert response.status == 400, (response.status, response.body)
    assert_refused_raw(response, module_backend, 400)


# ---- D5 / D6: RFC 2047 identities: one string, as the gateway reads it ----------------------------

JORG_Q = "=?utf-8?q?j=C3=B6rg@example.com?="
JORG_B = "=?UTF-8?B?" + base64.b64encode("jörg@example.com".encode()).decode() + "?="
LI_Q = "=?utf-8?q?=E6=9D=8E@example.com?="


@pytest.fixture(scope="module")
def allow_users_sc(module_sidecar, module_backend) -> SidecarProcess:
    # Listed as Tailscale spells them, as the gateway (which never decodes them) needs them too.
    return module_sidecar(tp_config(module_backend, trusted_proxy={"allowUsers": [JORG_Q, LI_Q, ALICE]}))


@pytest.mark.parametrize("encoded", [JORG_Q, LI_Q], ids=["latin-1", "outside-latin-1"])
def test_D5_an_rfc2047_identity_is_judged_and_forwarded_as_spelled(testnet, allow_users_sc, module_backend, encoded):
    """D5: one identity string per request: allowUsers, ceilings and pins see exactly what the
    gateway will see, so no caller has one name in the sidecar and another upstream."""
    record = only_forwarded(module_backend, send(testnet, PROXY, allow_users_sc, invoke([VIA, ("Tailscale-User-Login", encoded)])))
    assert header_values(record, "tailscale-user-login") == [encoded]


@pytest.mark.parametrize("encoded", [JORG_B, "jörg@example.com".encode().decode("latin-1"),
                                     "=?utf-8?q?mallory@example.com?=", "=?utf-8?q?Alice@example.com?="])
def test_D5_another_spelling_is_another_identity(testnet, allow_users_sc, module_backend, encoded):
    """The B-encoded or decoded spelling of an allowed login is not that login (nor for the gateway)."""
    response = send(testnet, PROXY, allow_users_sc, invoke([VIA, ("Tailscale-User-Login", encoded)]))
    assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)


@pytest.mark.parametrize("empty", ["", "   "], ids=["empty", "blank"])
def test_D5_empty_identity_is_no_identity(testnet, tp_sc, module_backend, empty):
    """D5: Tailscale sends "" for undecodable logins: that is no identity (401), never user ""
    (tp_sc has no allowUsers, so an empty user would otherwise be accepted)."""
    response = send(testnet, PROXY, tp_sc, invoke([VIA, ("Tailscale-User-Login", empty)]))
    assert_refused_raw(response, module_backend, 401, UNAUTHORIZED)


@pytest.mark.parametrize("encoded", [
    "=?utf-8?q?bob@example.com=0D=0AX-OpenClaw-Scopes:_operator.admin?=",
    "=?utf-8?q?bob@example.com=0Aroot?=",
    "=?utf-8?q?bob=00root@example.com?=",
    "=?utf-8?b?" + base64.b64encode(b"bob\r\nx: y").decode() + "?=",
], ids=["crlf-q", "lf-q", "nul-q", "crlf-b"])
def test_D6_encoded_control_characters_never_become_headers(testnet, tp_sc, module_backend, encoded):
    """D6: never decoded, an encoded CR/LF/NUL stays text: the identity is forwarded exactly as
    spelled, in one header, and no header it might smuggle appears."""
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke([VIA, ("Tailscale-User-Login", encoded)])))
    assert header_values(record, "tailscale-user-login") == [encoded]
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    assert header_values(record, "x") == []


# ---- F: scope header semantics and ceilings ----------------------------------------------------


def test_F1_absent_scopes_header_is_forwarded_as_one_explicit_header(testnet, tp_sc, module_backend):
    """F1: no x-openclaw-scopes from the proxy → exactly one explicit header (the default set)."""
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(as_user(BOB))))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user=BOB)


def test_F1_F5_none_mode_scopes(module_sidecar, module_backend):
    """F1/F5 in none mode (on loopback: beyond it, none is a start-up error): absent → one
    explicit default header; space-separated → 403; comma list with unknown/duplicate entries →
    normalised."""
    sidecar = module_sidecar({"sidecar": sidecar_section(module_backend, listen="127.0.0.1:0"), "gateway": {"auth": {"mode": "none"}}})
    address = (sidecar.host, sidecar.port)
    record = only_forwarded(module_backend, raw_exchange(address, invoke([])))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=None, user_header="")
    module_backend.clear_requests()
    response = raw_exchange(address, invoke([("x-openclaw-scopes", "operator.read operator.write")]))
    assert_refused_raw(response, module_backend, 403, MISSING_SCOPE)
    messy = "operator.write,operator.bogus, operator.read ,operator.write,,OPERATOR.ADMIN"
    record = only_forwarded(module_backend, raw_exchange(address, invoke([("x-openclaw-scopes", messy)])))
    assert_owned_headers(record, scopes="operator.write,operator.read", xff=None, user_header="")


def test_F2_token_mode_ignores_declared_scopes(testnet, token_sc, module_backend):
    """F2: a shared-secret caller's declared scopes are replaced by the full default set."""
    headers = [("x-openclaw-scopes", "operator.read"), BEARER]
    record = only_forwarded(module_backend, send(testnet, CLIENT, token_sc, invoke(headers)))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=CLIENT, user_header="")


def test_F5_space_separated_scopes_are_forbidden_in_trusted_proxy_mode(testnet, tp_sc, module_backend):
    """F5: the gateway splits on commas only; `operator.read operator.write` is one unknown token."""
    response = send(testnet, PROXY, tp_sc, invoke(as_user(BOB, ("x-openclaw-scopes", "operator.read operator.write"))))
    assert_refused_raw(response, module_backend, 403, MISSING_SCOPE)


def test_F5_declared_scopes_are_normalised(testnet, tp_sc, module_backend):
    """F5: de-duplicated, trimmed, unknown scopes dropped, comma form."""
    declared = " operator.read,operator.write ,operator.bogus,operator.read,operator.write"
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(as_user(BOB, ("x-openclaw-scopes", declared)))))
    assert_owned_headers(record, scopes="operator.read,operator.write", xff=FORWARDED_CLIENT, user=BOB)


def test_F4_per_identity_ceiling_caps_absent_and_declared_scopes(testnet, tp_sc, module_backend):
    """F4 / ceilings: capped@ gets at most read+write: an absent header gets the ceiling (never
    the admin default), a declared admin is dropped, and owner-only tools stay 404."""
    capped = "capped@example.com"
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(as_user(capped))))
    assert_owned_headers(record, scopes="operator.read,operator.write", xff=FORWARDED_CLIENT, user=capped)
    module_backend.clear_requests()
    declared = as_user(capped, ("x-openclaw-scopes", "operator.admin,operator.write"))
    record = only_forwarded(module_backend, send(testnet, PROXY, tp_sc, invoke(declared)))
    assert_owned_headers(record, scopes="operator.write", xff=FORWARDED_CLIENT, user=capped)
    module_backend.clear_requests()
    response = send(testnet, PROXY, tp_sc, invoke(as_user(capped), body=b'{"tool":"sessions"}'))
    assert_refused_raw(response, module_backend, 404, not_available("sessions"))
    only_admin = as_user(capped, ("x-openclaw-scopes", "operator.admin"))
    assert_refused_raw(send(testnet, PROXY, tp_sc, invoke(only_admin)), module_backend, 403, MISSING_SCOPE)


def test_F4_ceiling_without_write_forbids_invoke(testnet, tp_sc, module_backend):
    """Ceilings: viewer@ (ceiling operator.read) → 403 whatever it declares or omits."""
    for extra in ([], [("x-openclaw-scopes", "operator.write,operator.admin")]):
        response = send(testnet, PROXY, tp_sc, invoke(as_user("viewer@example.com", *extra)))
        assert_refused_raw(response, module_backend, 403, MISSING_SCOPE)


def test_F4_default_ceiling_applies_to_everyone_but_listed_identities(testnet, module_sidecar, module_backend):
    """Ceilings: sidecar.scopeCeilings.default caps every identity not listed; a listed one gets its own."""
    sidecar = module_sidecar(tp_config(module_backend, scopeCeilings={
        "default": ["operator.read", "operator.write"],
        "identities": {"root@example.com": DEFAULT_SCOPES.split(",")},
    }))
    record = only_forwarded(module_backend, send(testnet, PROXY, sidecar, invoke(as_user(BOB))))
    assert_owned_headers(record, scopes="operator.read,operator.write", xff=FORWARDED_CLIENT, user=BOB)
    module_backend.clear_requests()
    record = only_forwarded(module_backend, send(testnet, PROXY, sidecar, invoke(as_user("root@example.com"))))
    assert_owned_headers(record, scopes=DEFAULT_SCOPES, xff=FORWARDED_CLIENT, user="root@example.com")


def test_F2_default_ceiling_caps_shared_secret_callers(testnet, module_sidecar, module_backend):
    """F2 / ceilings: in token mode the sidecar enforces its own ceiling before forwarding: the
    token caller gets the capped set and is not owner (owner-only tools 404)."""
    sidecar = module_sidecar(token_config(module_backend, scopeCeilings={"default": ["operator.read", "operator.write"]}))
    record = only_forwarded(module_backend, send(testnet, CLIENT, sidecar, invoke([BEARER])))
    assert_owned_headers(record, scopes="operator.read,operator.write", xff=CLIENT, user_header="")
    module_backend.clear_requests()
    response = send(testnet, CLIENT, sidecar, invoke([BEARER], body=b'{"tool":"sessions"}'))
    assert_refused_raw(response, module_backend, 404, not_available("sessions"))
