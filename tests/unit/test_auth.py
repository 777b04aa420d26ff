"""sidecar.auth: bearer parsing (cases 5-9, 11), safe_equal (§2.2), identity decoding (D5, D6),
origin policy (§2.3 step 8, §2.5, case 44), trusted-proxy checks in order (§2.3, cases 33-38)
and the local-direct password fallback (case 45)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sidecar.attribution import Attribution, attribute
from sidecar.auth import (
    AuthOutcome,
    NoneAuth,
    OriginPolicy,
    SharedSecretAuth,
    TrustedProxyAuth,
    bearer_credential,
    build_authenticator,
    parse_origin,
    read_identity,
    safe_equal,
)
from sidecar.config import load_config
from sidecar.ipaddrs import parse_network

from tests.builders import view, write_config
from tests.gateway.oracle import call_gateway, needs_gateway

PROXY = "198.51.100.5"
CLIENT = "198.51.100.9"


# ---- bearer parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),  # case 5
        ("Bearer wrong", "wrong"),  # case 6 (parsed; comparison fails later)
        ("bearer T", "T"),  # case 7
        ("BEARER T", "T"),
        ("BeArEr T", "T"),
        ("Basic dDpU", None),  # case 8
        ("   Bearer    T   ", "T"),  # case 9
        ("Bearer\tT", None),  # the scheme must be followed by a space
        ("BearerT", None),
        ("Bearer ", None),
        ("Bearer      ", None),
        ("", None),
        ("Token T", None),
        ("Bearer a b", "a b"),  # everything after the scheme, trimmed
        ("Bearer T, Bearer U", "T, Bearer U"),  # a joined duplicate never equals the token
    ],
)
def test_bearer_credential(header: str | None, expected: str | None) -> None:
    v = view() if header is None else view(("Authorization", header))
    assert bearer_credential(v) == expected


def test_a_repeated_authorization_is_read_by_its_first_value_as_node_does() -> None:
    """Node keeps the first Authorization (the pipeline refuses a repeat anyway, D1)."""
    assert bearer_credential(view(("Authorization", "Bearer wrong"), ("Authorization", "Bearer T"))) == "wrong"



# Scheme spellings, and the latin-1 blanks JavaScript's trim and Python's strip disagree on.
SCHEMES = ["Bearer", "bearer", "BEARER", "bEaReR", "Bearer:", "Basic", "Bearerx", ""]
BLANKS = ["", " ", "  ", "\t", "\xa0", "\x85", "\x1c", "\x0b", "\x0c"]
CREDENTIALS = ["T", "tok en", "T,U", "", "\xe9"]


def authorization_values(rng: random.Random, count: int) -> list[str]:
    def pad() -> str:
        return "".join(rng.choice(BLANKS) for _ in range(rng.randint(0, 2)))
    return sorted({pad() + rng.choice(SCHEMES) + rng.choice([" ", " ", "\t", "\xa0", ""]) + pad() + rng.choice(CREDENTIALS) + pad()
                   for _ in range(count)})


@needs_gateway
def test_the_bearer_credential_is_read_as_the_gateways_get_bearer_token() -> None:
    """The gateway's getBearerToken, in its Node, over Authorization values (latin-1, as both read
    the bytes): a credential the sidecar read differently would be checked against another string."""
    values = authorization_values(random.Random(20261204), 800)
    theirs = call_gateway(["http-header-value-:getBearerToken"], """
        answer(input.map((value) => gateway.getBearerToken({headers: {authorization: value}}) ?? null));""", values)
    mine = [bearer_credential(view(("Authorization", value))) for value in values]
    assert [(v, m, t) for v, m, t in zip(values, mine, theirs, strict=True) if m != t] == []
    assert sum(1 for found in theirs if found) >= 80

@pytest.mark.parametrize(
    "presented, expected, equal",
    [
        ("T", "T", True), ("T", "U", False), ("T", "TT", False), ("TT", "T", False), ("", "", True),
        ("T", "T\0", False),  # zero padding must not make a prefix equal
        ("T\0", "T", False), ("", "T", False), ("sécret", "sécret", True), ("secret", "sécret", False),
        ("a" * 1000, "a" * 1000, True), ("a" * 1000, "a" * 999 + "b", False),
        # A connect frame's JSON may hold a lone surrogate: Node's UTF-8 makes it U+FFFD.
        ("\ud800", "T", False), ("T\udfff", "T\ufffd", True), ("\ud800\ud800", "\ufffd", False),
    ],
)
def test_safe_equal(presented: str, expected: str, equal: bool) -> None:
    assert safe_equal(presented, expected) is equal


@pytest.mark.parametrize(
    "method, secret, header, ok, reason, presented",
    [
        ("token", "T", None, False, "credential_missing", False),  # case 5
        ("token", "T", "Bearer wrong", False, "token_mismatch", True),  # case 6
        ("token", "T", "bearer T", True, "ok", True),  # case 7
        ("token", "T", "Basic dDpU", False, "credential_missing", False),  # case 8: not counted
        ("token", "T", "  Bearer   T  ", True, "ok", True),  # case 9
        ("password", "P", "Bearer P", True, "ok", True),  # case 11
        ("password", "P", "Bearer T", False, "password_mismatch", True),  # case 11
        ("token", None, "Bearer anything", False, "token_not_configured", True),  # case 14
        ("token", None, "Bearer undefined", False, "token_not_configured", True),
        ("password", None, "Bearer anything", False, "password_not_configured", True),  # no config builds it: pinned here
    ],
)
def test_shared_secret_auth(method: str, secret: str | None, header: str | None, ok: bool, reason: str, presented: bool) -> None:
    v = view() if header is None else view(("Authorization", header))
    attribution = Attribution("direct-remote", "203.0.113.7", "203.0.113.7")
    outcome = SharedSecretAuth(method, secret).authenticate(v, attribution)
    assert outcome == AuthOutcome(ok, method, reason, presented=presented, shared_secret=True)
    # only a presented, mismatched credential counts towards the lockout (cases 17, 6)
    assert outcome.counts_as_failure is (presented and not ok)


# ---- identity: one string, as the gateway reads it (D5, D6) -------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, None),
        ("", None),  # Tailscale sends "" for invalid UTF-8: no identity, never user ""
        ("   ", None),
        ("alice", "alice"),
        ("  alice  ", "alice"),
        ("Alice Smith", "Alice Smith"),  # an inner space is part of the name, not a control character
        # RFC 2047 words stay as spelled: the gateway compares them undecoded
        ("=?utf-8?q?J=C3=B6rg?=", "=?utf-8?q?J=C3=B6rg?="),
        ("=?utf-8?q?alice?=", "=?utf-8?q?alice?="),
        ("=?utf-8?q?alice=0D=0Ax-openclaw-scopes:_operator.admin?=", "=?utf-8?q?alice=0D=0Ax-openclaw-scopes:_operator.admin?="),
        ("=?bogus-charset?q?alice?=", "=?bogus-charset?q?alice?="),
        ("=?\xc3\xa9?q?alice?=", "=?\xc3\xa9?q?alice?="),  # once a CharsetError: now just a name
        ("a\x00b", None),
        ("a\x1fb", None), ("a\x7fb", None),  # every C0 control and DEL (defence in depth)
    ],
)
def test_read_identity(raw: str | None, expected: str | None) -> None:
    assert read_identity(raw) == expected


# ---- origin policy ----------------------------------------------------------------------------

REMOTE = Attribution("direct-remote", "203.0.113.7", "203.0.113.7")
LOCAL = Attribution("direct-local", "127.0.0.1", "127.0.0.1")


@pytest.mark.parametrize(
    "allowed, headers, attribution, permits",
    [
        ((), [], REMOTE, True),  # no Origin: nothing to check
        ((), [("Origin", "")], REMOTE, True),  # blank is none to the gateway (`origin?.trim()`), and JS-trimmed:
        ((), [("Origin", " \u00a0")], REMOTE, True),  # it was refused here (red team)
        ((), [("Origin", "\x1c")], REMOTE, False),  # ... but only JavaScript's blanks: Python's strip()
        ((), [("Origin", "\x85")], REMOTE, False),  # also drops these, which JavaScript's trim keeps
        # Node joins a repeated Origin with ", ": the gateway judges "a, b", no origin at all
        (("https://ui.example",), [("Origin", "https://ui.example"), ("Origin", "https://evil.example")], REMOTE, False),
        (("https://ui.example",), [("Origin", "https://ui.example"), ("Origin", "")], REMOTE, False),
        ((), [("Origin", "https://evil.example")], REMOTE, False),  # case 44
        (("https://ui.example",), [("Origin", "https://ui.example")], REMOTE, True),
        (("https://ui.example",), [("Origin", "HTTPS://UI.EXAMPLE:443/")], REMOTE, True),  # URL.origin: default port dropped
        (("https://ui.example/",), [("Origin", "https://ui.example")], REMOTE, False),  # entries compared as written
        (("https://ui.example",), [("Origin", "https://ui.example.evil")], REMOTE, False),
        (("https://ui.example",), [("Origin", "http://ui.example")], REMOTE, False),
        (("*",), [("Origin", "https://anything.example")], REMOTE, True),
        ((), [("Origin", "null")], REMOTE, False),
        ((), [("Origin", "http://localhost:3000")], LOCAL, True),  # loopback origin from a local client
        ((), [("Origin", "http://127.0.0.1:3000")], LOCAL, True),
        ((), [("Origin", "http://[::1]:3000")], LOCAL, True),
        ((), [("Origin", "http://localhost:3000")], REMOTE, False),  # ... but not from a remote one
        ((), [("Origin", "http://10.0.0.2:18789"), ("Host", "10.0.0.2:18789")], REMOTE, True),  # same-origin private
        ((), [("Origin", "http://10.0.0.2:18789"), ("Host", "10.0.0.3:18789")], REMOTE, False),
        ((), [("Origin", "https://gw.example"), ("Host", "gw.example")], REMOTE, False),  # same host, public name
        ((), [("Origin", "http://93.184.216.34"), ("Host", "93.184.216.34")], REMOTE, False),  # same host, public IP
        # names only a tailnet or the local network resolves: `tailscale serve` and mDNS hosts
        ((), [("Origin", "https://gw.tail1234.ts.net"), ("Host", "gw.tail1234.ts.net")], REMOTE, True),
        ((), [("Origin", "http://gw.local:18789"), ("Host", "gw.local:18789")], REMOTE, True),
        ((), [("Origin", "https://gw.ts.net.evil.example"), ("Host", "gw.ts.net.evil.example")], REMOTE, False),
        # a loopback Host is trusted as same-origin for local clients only
        ((), [("Origin", "http://localhost:18790"), ("Host", "localhost:18790")], REMOTE, False),
        ((), [("Origin", "http://127.0.0.1:18790"), ("Host", "127.0.0.1:18790")], REMOTE, False),
        ((), [("Origin", "http://localhost:18790"), ("Host", "localhost:18790")], LOCAL, True),
        ((), [("Origin", "http://user@10.0.0.2"), ("Host", "10.0.0.2")], REMOTE, False),  # credentials: not an origin
        ((), [("Origin", "http://10.0.0.2/x"), ("Host", "10.0.0.2")], REMOTE, False),  # a path: not an origin
    ],
)
def test_origin_policy(allowed: tuple[str, ...], headers: list[tuple[str, str]], attribution: Attribution, permits: bool) -> None:
    local = attribution.kind == "direct-local"
    assert OriginPolicy(allowed).permits(view(*headers), local_client=local) is permits


@pytest.mark.parametrize("raw, origin", [
    ("http://@localhost", "http://localhost"), ("http://:@localhost", "http://localhost"),  # empty credentials
    ("http://@@localhost", None), ("http://:@:@localhost", None),  # the username is "%40": credentials
    ("http://h\\x", None), ("foo://h\\x", None),  # a backslash: a path to the URL parser, refused by the shape
    ("foo://h:65535", "foo://h:65535"), ("foo://h:65536", None), ("foo://a\x01b", None),  # controls refused, stricter
    ("foo://H:0080", "foo://h:80"), ("foo://h:", "foo://h"), ("foo://[::1]:5", "foo://[::1]:5"),
    ("file://localhost", None), ("foo://localhost:99999", None), ("foo://a b", None), ("http://h:65536", None),
    ("\ufeffhttp://h", "http://h"), ("http://h/ ", "http://h"),
    ("https://App.XN--P1AI.:0443/", "https://app.xn--p1ai."), ("https://xn--p1ai:8443", "https://xn--p1ai:8443"), ("https://xn--zz.example", None), ("https://xn--p1ai%2f", None),
    ("https://a%2eb.xn--p1ai", None), ("https://a%2e%2eb.xn--p1ai", None),  # escapes in an IDN name: refused, the strict side
    # opaque hosts as Node's URL serialises them (code review: these were passed through unparsed)
    ("foo://[1:2]", None), ("foo://[::1::2]", None), ("foo://[1.2.3.4]", None), ("foo://:80", None),
    ("foo://[::ffff:1.2.3.4]", "foo://[::ffff:102:304]"), ("foo://[0:0:0:0:0:0:0:1]", "foo://[::1]"),
    ("foo://\u00a0x", "foo://%c2%a0x"), ("foo://é.X", "foo://%c3%a9.x"), ("foo://a%41", "foo://a%41"),
])
def test_parse_origin_reads_as_new_url_does(raw: str, origin: str | None) -> None:
    """The gateway's parseOrigin over Node's URL (checked against Node 24; file URLs, and IDN hosts
    other than valid IDNA 2008 A-labels, are refused here, stricter)."""
    parsed = parse_origin(raw)
    assert (parsed.origin if parsed else None) == origin


def test_the_host_header_fallback_lets_any_same_host_origin_in() -> None:
    """gateway.controlUi.dangerouslyAllowHostHeaderOriginFallback, honoured as the gateway does."""
    headers = view(("Origin", "https://gw.example"), ("Host", "gw.example"))
    assert OriginPolicy((), host_header_fallback=True).permits(headers, local_client=False)
    assert not OriginPolicy(()).permits(headers, local_client=False)


@pytest.mark.parametrize("origin, ok", [(None, True), ("https://evil.example", False), ("https://ui.example", True)])
def test_none_auth_checks_origin(origin: str | None, ok: bool) -> None:
    v = view() if origin is None else view(("Origin", origin))
    outcome = NoneAuth(OriginPolicy(("https://ui.example",))).authenticate(v, REMOTE)
    assert (outcome.ok, outcome.method, outcome.reason) == (ok, "none", "ok" if ok else "origin_not_allowed")
    assert not outcome.counts_as_failure  # case 24: none mode never touches the limiter


@pytest.mark.parametrize("attribution, ok", [
    (LOCAL, True),
    (REMOTE, False),
    (Attribution("trusted-proxy", "203.0.113.7", "127.0.0.1"), False),  # a page elsewhere, relayed by a local proxy
    (Attribution("unattributable", None, "127.0.0.1"), False),  # loopback, but forwarded: not direct
])
def test_none_auth_lets_a_loopback_origin_in_from_a_direct_local_client_only(attribution: Attribution, ok: bool) -> None:
    """The gateway's isLocalDirectRequest: a loopback socket with no forwarding header."""
    v = view(("Origin", "http://localhost:3000"), host="gw.example")
    assert NoneAuth(OriginPolicy(())).authenticate(v, attribution).ok is ok


def test_token_mode_ignores_origin() -> None:
    """Open question 8: Origin is checked only in none and trusted-proxy modes."""
    v = view(("Authorization", "Bearer T"), ("Origin", "https://evil.example"))
    assert SharedSecretAuth("token", "T").authenticate(v, REMOTE).ok


# ---- trusted-proxy (§2.3) --------------------------------------------------------------------


def tp_auth(**overrides) -> TrustedProxyAuth:
    base = dict(
        trusted=(parse_network(PROXY),), user_header="x-forwarded-user", required_headers=(),
        allow_users=frozenset(), allow_loopback=False, origins=OriginPolicy(()), fallback=None,
    )
    base.update(overrides)
    return TrustedProxyAuth(**base)


def tp_check(auth: TrustedProxyAuth, peer: str, *headers: tuple[str, str | bytes], fallback: bool = False) -> AuthOutcome:
    v = view(*headers, peer=peer)
    attribution = attribute(v, auth.trusted, fallback)
    return auth.authenticate(v, attribution)


XFF = ("X-Forwarded-For", CLIENT)
USER = ("X-Forwarded-User", "alice")

TP_CASES = [
    # (id, auth overrides, peer, headers, expected reason or user)
    ("33-ok-owner", {}, PROXY, [XFF, USER], "user:alice"),
    ("34-untrusted-source", {}, "10.0.0.9", [], "trusted_proxy_untrusted_source"),
    ("untrusted-source-with-headers", {}, "203.0.113.7", [XFF, USER], "trusted_proxy_untrusted_source"),
    ("not-configured-no-header", {"user_header": None}, PROXY, [XFF, USER], "trusted_proxy_not_configured"),
    ("not-configured-no-proxies", {"trusted": ()}, PROXY, [XFF, USER], "trusted_proxy_not_configured"),
    ("38-loopback-refused", {"trusted": (parse_network("127.0.0.1/32"),)}, "127.0.0.1", [XFF, USER], "trusted_proxy_loopback_source"),
    ("38-loopback-allowed", {"trusted": (parse_network("127.0.0.1/32"),), "allow_loopback": True}, "127.0.0.1", [XFF, USER], "user:alice"),
    ("36-required-header-missing", {"required_headers": ("x-forwarded-proto",)}, PROXY, [XFF, USER], "trusted_proxy_missing_header_x-forwarded-proto"),
    ("36-required-header-blank", {"required_headers": ("x-forwarded-proto",)}, PROXY, [XFF, USER, ("X-Forwarded-Proto", "  ")], "trusted_proxy_missing_header_x-forwarded-proto"),
    ("36-required-header-js-nonblank", {"required_headers": ("x-forwarded-proto",)}, PROXY, [XFF, USER, ("X-Forwarded-Proto", "\x85")], "user:alice"),
    ("36-required-header-present", {"required_headers": ("x-forwarded-proto",)}, PROXY, [XFF, USER, ("X-Forwarded-Proto", "https")], "user:alice"),
    ("35-user-missing", {}, PROXY, [XFF], "trusted_proxy_user_missing"),
    ("user-empty", {}, PROXY, [XFF, ("X-Forwarded-User", "")], "trusted_proxy_user_missing"),
    ("user-blank", {}, PROXY, [XFF, ("X-Forwarded-User", "   ")], "trusted_proxy_user_missing"),
    ("user-trimmed", {}, PROXY, [XFF, ("X-Forwarded-User", "  alice ")], "user:alice"),
    ("user-trimmed-js", {}, PROXY, [XFF, ("X-Forwarded-User", "\xa0alice\t")], "user:alice"),
    ("user-rfc2047-as-spelled", {}, PROXY, [XFF, ("X-Forwarded-User", "=?utf-8?q?J=C3=B6rg?=")], "user:=?utf-8?q?J=C3=B6rg?="),
    ("37-user-not-allowed", {"allow_users": frozenset({"alice"})}, PROXY, [XFF, ("X-Forwarded-User", "bob")], "trusted_proxy_user_not_allowed"),
    ("37-user-case-sensitive", {"allow_users": frozenset({"alice"})}, PROXY, [XFF, ("X-Forwarded-User", "Alice")], "trusted_proxy_user_not_allowed"),
    ("37-user-allowed", {"allow_users": frozenset({"alice"})}, PROXY, [XFF, USER], "user:alice"),
    ("allow-users-as-spelled", {"allow_users": frozenset({"=?utf-8?q?J=C3=B6rg?="})}, PROXY,
     [XFF, ("X-Forwarded-User", "=?utf-8?q?J=C3=B6rg?=")], "user:=?utf-8?q?J=C3=B6rg?="),
    ("allow-users-never-decoded", {"allow_users": frozenset({"Jörg"})}, PROXY,
     [XFF, ("X-Forwarded-User", "=?utf-8?q?J=C3=B6rg?=")], "trusted_proxy_user_not_allowed"),
    ("attribution-required-no-xff", {}, PROXY, [USER], "trusted_proxy_attribution_required"),
    ("attribution-required-loopback-xff", {}, PROXY, [USER, ("X-Forwarded-For", "127.0.0.1")], "trusted_proxy_attribution_required"),
    # a loopback proxy allowed and a user header that is no forwarding evidence: its request without
    # XFF is attributable (direct-local), yet names no client behind the proxy
    ("attribution-required-loopback-no-xff", {"trusted": (parse_network("127.0.0.1/32"),), "allow_loopback": True,
                                              "user_header": "x-auth-user"},
     "127.0.0.1", [("X-Auth-User", "carol")], "trusted_proxy_attribution_required"),
    ("origin-not-allowed", {}, PROXY, [XFF, USER, ("Origin", "https://evil.example")], "trusted_proxy_origin_not_allowed"),
    ("origin-allowed", {"origins": OriginPolicy(("https://ui.example",))}, PROXY, [XFF, USER, ("Origin", "https://ui.example")], "user:alice"),
    # a request through the proxy is never a local client: a loopback Origin, even on a loopback
    # Host, is a page elsewhere (checkBrowserOrigin with isLocalClient false)
    ("loopback-origin-through-a-loopback-proxy", {"trusted": (parse_network("127.0.0.1/32"),), "allow_loopback": True},
     "127.0.0.1", [XFF, USER, ("Host", "localhost:18790"), ("Origin", "http://localhost:18790")], "trusted_proxy_origin_not_allowed"),
    ("loopback-origin-through-the-proxy", {}, PROXY, [XFF, USER, ("Origin", "http://127.0.0.1:3000")], "trusted_proxy_origin_not_allowed"),
    ("custom-user-header", {"user_header": "x-auth-user"}, PROXY, [XFF, ("X-Auth-User", "carol"), USER], "user:carol"),
    # order: each earlier failure masks the later ones
    ("order-source-before-user", {}, "10.0.0.9", [XFF], "trusted_proxy_untrusted_source"),
    ("order-required-before-user", {"required_headers": ("x-proto",)}, PROXY, [XFF], "trusted_proxy_missing_header_x-proto"),
    ("order-user-before-allow", {"allow_users": frozenset({"alice"})}, PROXY, [XFF], "trusted_proxy_user_missing"),
    ("order-allow-before-attribution", {"allow_users": frozenset({"alice"})}, PROXY, [("X-Forwarded-User", "bob")], "trusted_proxy_user_not_allowed"),
    ("order-attribution-before-origin", {}, PROXY, [USER, ("Origin", "https://evil.example")], "trusted_proxy_attribution_required"),
    ("order-loopback-before-required", {"trusted": (parse_network("127.0.0.1/32"),), "required_headers": ("x-proto",)}, "127.0.0.1", [XFF], "trusted_proxy_loopback_source"),
]


@pytest.mark.parametrize("overrides, peer, headers, expected", [c[1:] for c in TP_CASES], ids=[c[0] for c in TP_CASES])
def test_trusted_proxy_checks_in_order(overrides: dict, peer: str, headers: list, expected: str) -> None:
    outcome = tp_check(tp_auth(**overrides), peer, *headers)
    assert outcome.method == "trusted-proxy"
    assert not outcome.shared_secret and not outcome.counts_as_failure  # never touches the limiter
    if expected.startswith("user:"):
        assert (outcome.ok, outcome.user, outcome.reason) == (True, expected[5:], "ok")
        assert outcome.user_header_value == expected[5:]  # as forwarded upstream: trimmed, as the gateway reads it
    else:
        assert (outcome.ok, outcome.user, outcome.reason) == (False, None, expected)


# ---- local-direct password fallback (case 45) ---------------------------------------------------

FALLBACK_CASES = [
    # (id, peer, headers, expected (ok, method, reason))
    ("45-loopback-password", "127.0.0.1", [("Authorization", "Bearer P")], (True, "password", "ok")),
    ("45-loopback-v6", "::1", [("Authorization", "Bearer P")], (True, "password", "ok")),
    ("loopback-wrong-password", "127.0.0.1", [("Authorization", "Bearer nope")], (False, "password", "password_mismatch")),
    ("loopback-no-bearer", "127.0.0.1", [], (False, "trusted-proxy", "trusted_proxy_untrusted_source")),
    ("loopback-basic", "127.0.0.1", [("Authorization", "Basic UA==")], (False, "trusted-proxy", "trusted_proxy_untrusted_source")),
    ("loopback-with-forwarded-headers", "127.0.0.1", [("Authorization", "Bearer P"), ("X-Forwarded-Proto", "https")], (False, "trusted-proxy", "trusted_proxy_untrusted_source")),
    ("remote-never-falls-back", "203.0.113.7", [("Authorization", "Bearer P")], (False, "trusted-proxy", "trusted_proxy_untrusted_source")),
    ("proxy-ok-wins-over-fallback", PROXY, [XFF, USER, ("Authorization", "Bearer P")], (True, "trusted-proxy", "ok")),
    ("proxy-failure-no-fallback", PROXY, [XFF, ("Authorization", "Bearer P")], (False, "trusted-proxy", "trusted_proxy_user_missing")),
]


@pytest.mark.parametrize("peer, headers, expected", [c[1:] for c in FALLBACK_CASES], ids=[c[0] for c in FALLBACK_CASES])
def test_local_direct_password_fallback(peer: str, headers: list, expected: tuple[bool, str, str]) -> None:
    outcome = tp_check(tp_auth(fallback=SharedSecretAuth("password", "P")), peer, *headers)
    assert (outcome.ok, outcome.method, outcome.reason) == expected
    if outcome.method == "password":
        assert outcome.shared_secret  # owner semantics, counted by the limiter
        assert outcome.user is None


def test_no_fallback_without_password() -> None:
    outcome = tp_check(tp_auth(), "127.0.0.1", ("Authorization", "Bearer P"))
    assert (outcome.ok, outcome.reason) == (False, "trusted_proxy_untrusted_source")


# ---- build_authenticator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth_yaml, kind, method",
    [
        ("{token: T}", SharedSecretAuth, "token"),
        ("{password: P}", SharedSecretAuth, "password"),
        ("{mode: password, token: T, password: P}", SharedSecretAuth, "password"),
        ("{mode: none}", NoneAuth, None),
        ("{mode: trusted-proxy, trustedProxy: {userHeader: X-Auth-User, requiredHeaders: [X-Proto]}}", TrustedProxyAuth, None),
    ],
)
def test_build_authenticator(tmp_path: Path, auth_yaml: str, kind: type, method: str | None) -> None:
    text = f"gateway:\n  auth: {auth_yaml}\n  trustedProxies: [{PROXY}]\n"
    authenticator = build_authenticator(load_config(write_config(tmp_path / "c.yaml", text), environ={}))
    assert isinstance(authenticator, kind)
    if method is not None:
        assert authenticator.method == method
    if isinstance(authenticator, TrustedProxyAuth):
        assert authenticator.user_header == "x-auth-user"
        assert authenticator.required_headers == ("x-proto",)
        assert authenticator.fallback is None


def test_build_authenticator_unreadable_interfaces_refuse_non_loopback_proxies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Fail closed, and say so at start-up: without this host's addresses, a trusted proxy's
    request may be one of its own."""
    def unreadable() -> set[str]:
        raise OSError("no /proc")
    monkeypatch.setattr("sidecar.auth.local_interface_addresses", unreadable)
    text = f"gateway:\n  auth: {{mode: trusted-proxy, trustedProxy: {{userHeader: x-forwarded-user}}}}\n  trustedProxies: [{PROXY}]\n"
    authenticator = build_authenticator(load_config(write_config(tmp_path / "c.yaml", text), environ={}))
    assert isinstance(authenticator, TrustedProxyAuth) and authenticator.local_addresses is None
    assert tp_check(authenticator, PROXY, XFF, USER).reason == "trusted_proxy_local_interface_check_failed"
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name == "sidecar.auth"] == [
        ("sidecar.auth", "ERROR", "cannot read this host's interface addresses (no /proc): trusted-proxy requests "
                                  "from non-loopback peers will be refused")]


def test_build_authenticator_password_mode_secret(tmp_path: Path) -> None:
    """Case 11: password mode compares with the password, never the token."""
    config = load_config(write_config(tmp_path / "c.yaml", "gateway:\n  auth: {mode: password, token: T, password: P}\n"), environ={})
    authenticator = build_authenticator(config)
    assert authenticator.authenticate(view(("Authorization", "Bearer P")), REMOTE).ok
    assert not authenticator.authenticate(view(("Authorization", "Bearer T")), REMOTE).ok


def test_build_authenticator_literal_undefined_token(tmp_path: Path) -> None:
    """Case 14: `token: "undefined"` is missing config; even `Bearer undefined` is refused."""
    config = load_config(write_config(tmp_path / "c.yaml", "gateway:\n  auth: {token: undefined}\n"), environ={})
    outcome = build_authenticator(config).authenticate(view(("Authorization", "Bearer undefined")), REMOTE)
    assert (outcome.ok, outcome.reason) == (False, "token_not_configured")


def test_build_authenticator_trusted_proxy_fallback_password(tmp_path: Path) -> None:
    text = f"gateway:\n  auth: {{mode: trusted-proxy, password: P, trustedProxy: {{userHeader: x-user}}}}\n  trustedProxies: [{PROXY}]\n"
    authenticator = build_authenticator(load_config(write_config(tmp_path / "c.yaml", text), environ={}))
    assert isinstance(authenticator, TrustedProxyAuth)
    assert authenticator.fallback == SharedSecretAuth("password", "P")


@pytest.mark.parametrize("method", ["token", "password"])
def test_previous_secrets_are_accepted_and_marked(method: str) -> None:
    auth = SharedSecretAuth(method, "new", ("old", "older"))
    current, previous, wrong = auth.check("new"), auth.check("older"), auth.check("newer")
    assert (current.ok, current.previous_secret) == (True, False)
    assert (previous.ok, previous.previous_secret, previous.shared_secret) == (True, True, True)
    assert (wrong.ok, wrong.reason, wrong.counts_as_failure) == (False, f"{method}_mismatch", True)
    assert "new" not in repr(auth) and "old" not in repr(auth)


@pytest.mark.parametrize(
    ("auth_yaml", "kept", "other"),
    [
        ("{mode: token, token: T, password: P}", "OLD-T", "OLD-P"),
        ("{mode: password, token: T, password: P}", "OLD-P", "OLD-T"),
        ("{mode: trusted-proxy, password: P, trustedProxy: {userHeader: x-user}}", "OLD-P", "OLD-T"),
    ],
    ids=["token", "password", "trusted-proxy-fallback"],
)
def test_each_mode_keeps_the_rotated_secrets_of_its_own_kind_only(tmp_path: Path, auth_yaml: str, kept: str, other: str) -> None:
    """A rotated password must keep working in password mode (and for trusted-proxy's local fallback),
    and a rotated token must not open password mode, nor the other way round."""
    text = (f"sidecar:\n  auth: {{previousTokens: [OLD-T], previousPasswords: [OLD-P]}}\n"
            f"gateway:\n  auth: {auth_yaml}\n  trustedProxies: [{PROXY}]\n")
    authenticator = build_authenticator(load_config(write_config(tmp_path / "c.yaml", text), environ={}))
    checker = authenticator.fallback if isinstance(authenticator, TrustedProxyAuth) else authenticator
    assert isinstance(checker, SharedSecretAuth)
    accepted, refused = checker.check(kept), checker.check(other)
    assert (accepted.ok, accepted.previous_secret) == (True, True)
    assert (refused.ok, refused.reason) == (False, f"{checker.method}_mismatch")
