"""sidecar.headers: refused heads (corpus B3, B5, B7, D1, D3, D4, D6, D7) and the upstream header
list (B1, B9, B10, C1-C4).

The header spellings live in tests/data/protected_headers.json so each one is its own case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.headers import HeaderPlan, aliases_protected, connection_tokens, fold, head_problem, rebuild_headers

from tests.builders import view

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "protected_headers.json").read_text())
SINGLETONS: list[str] = DATA["singletons"]
PROTECTED: list[str] = DATA["protected"]
PREFIXED: list[str] = DATA["prefix_examples"]
UNPROTECTED: list[str] = DATA["unprotected"]


def alias_spellings(name: str) -> list[str]:
    """`_` and `.` spellings of a dashed name, in several cases, plus a half-aliased one."""
    under, dotted = name.replace("-", "_"), name.replace("-", ".")
    out = [under, dotted, under.upper(), dotted.title(), under.title()]
    if name.count("-") >= 2:
        out.append(name.replace("-", "_", 1))  # x_forwarded-for
    if "-" not in name:  # e.g. "authorization", "host", "forwarded": only a trailing/embedded alias
        out = [f"{name}_", f"_{name}", f"{name[:2]}.{name[2:]}", f"{name[:2]}_{name[2:]}"]
    return list(dict.fromkeys(out))


ALIAS_CASES = [(name, alias) for name in PROTECTED + PREFIXED for alias in alias_spellings(name)]


# ---- aliasing (B3, B5, B7) --------------------------------------------------------------------


@pytest.mark.parametrize("name, alias", ALIAS_CASES, ids=[a for _, a in ALIAS_CASES])
def test_alias_of_protected_header_is_refused(name: str, alias: str) -> None:
    assert fold(alias) == fold(name)
    assert aliases_protected(alias)
    problem = head_problem(view((alias, "admin@example.com")))
    assert problem is not None and "aliases a protected header" in problem


@pytest.mark.parametrize("name", PROTECTED + PREFIXED)
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title, lambda s: s[0].upper() + s[1:]])
def test_case_variants_of_dashed_names_are_fine(name: str, case) -> None:
    spelled = case(name)
    assert not aliases_protected(spelled)
    value = "1" if "length" in name else "chunked" if "transfer" in name else "gateway.example" if name == "host" else "x"
    assert head_problem(view((spelled, value))) is None


@pytest.mark.parametrize("name", UNPROTECTED)
def test_unprotected_names_may_use_underscore_and_dot(name: str) -> None:
    assert head_problem(view((name, "x"))) is None


@pytest.mark.parametrize("alias", ["X_Auth_User", "x.auth.user", "X_AUTH_USER"])
def test_alias_of_configured_user_header_is_refused(alias: str) -> None:
    extra = frozenset({"x-auth-user"})
    assert head_problem(view((alias, "alice"))) is None  # not protected by default
    problem = head_problem(view((alias, "alice")), extra)
    assert problem is not None and "aliases" in problem


# ---- duplicates (D1, D2) ------------------------------------------------------------------------


def _value_for(name: str) -> str:
    return {"content-length": "0", "transfer-encoding": "chunked", "host": "gw.example"}.get(name, "v")


@pytest.mark.parametrize("name", SINGLETONS)
@pytest.mark.parametrize("second", [str.lower, str.upper, str.title])
def test_repeated_singleton_is_refused(name: str, second) -> None:
    problem = head_problem(view((name, _value_for(name)), (second(name), _value_for(name))))
    assert problem == f"header {name!r} is repeated"


@pytest.mark.parametrize("name", SINGLETONS)
def test_single_singleton_is_fine(name: str) -> None:
    assert head_problem(view((name, _value_for(name)))) is None


@pytest.mark.parametrize("name", ["accept", "cookie", "x-custom", "via"])
def test_repeated_ordinary_header_is_fine(name: str) -> None:
    assert head_problem(view((name, "a"), (name, "b"))) is None


def test_repeated_configured_user_header_is_refused() -> None:
    problem = head_problem(view(("x-auth-user", "a"), ("X-Auth-User", "b")), frozenset({"x-auth-user"}))
    assert problem == "header 'x-auth-user' is repeated"


# ---- control characters and encodings (D3, D4, D6, D7) -----------------------------------------


CONTROL_VALUES = [
    pytest.param(b"alice\x00", id="nul"),
    pytest.param(b"al\x01ice", id="soh"),
    pytest.param(b"al\x08ice", id="bs"),  # the last byte below the tab, which is allowed
    pytest.param(b"alice\nx-openclaw-scopes: operator.admin", id="lf"),
    pytest.param(b"alice\rx", id="cr"),
    pytest.param(b"alice\r\n bob", id="obs-fold"),
    pytest.param(b"alice\r\n\tbob", id="obs-fold-tab"),
    pytest.param(b"alice\x1b[31m", id="esc"),
    pytest.param(b"alice\x1f", id="us"),
    pytest.param(b"alice\x7f", id="del"),
]


@pytest.mark.parametrize("value", CONTROL_VALUES)
@pytest.mark.parametrize("name", ["Tailscale-User-Login", "Authorization", "x-openclaw-scopes", "User-Agent", "X-Custom"])
def test_control_characters_are_refused_in_any_header(name: str, value: bytes) -> None:
    problem = head_problem(view((name, value)))
    assert problem == f"control character in header {name!r}"


@pytest.mark.parametrize("value", [b"a\tb", b"\tleading", b"caf\xc3\xa9", b"~!@#$%^&*()"])
def test_tab_and_printable_bytes_are_fine(value: bytes) -> None:
    assert head_problem(view(("X-Custom", value), ("Tailscale-User-Login", value))) is None


NON_UTF8 = [b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]  # latin-1, BOM-ish, truncated, surrogate


@pytest.mark.parametrize("value", NON_UTF8)
@pytest.mark.parametrize("name", PROTECTED + PREFIXED)
def test_non_utf8_in_protected_header_is_refused(name: str, value: bytes) -> None:
    assert head_problem(view((name, value))) == f"header {name!r} is not valid UTF-8"


@pytest.mark.parametrize("value", NON_UTF8)
def test_non_utf8_in_configured_user_header_is_refused(value: bytes) -> None:
    assert head_problem(view(("X-Auth-User", value)), frozenset({"x-auth-user"})) is not None


@pytest.mark.parametrize("value", NON_UTF8)
def test_non_utf8_in_ordinary_header_is_accepted(value: bytes) -> None:
    """Node reads header bytes as latin-1; only security-relevant headers must be UTF-8 (D4)."""
    assert head_problem(view(("User-Agent", value))) is None


def test_alias_is_reported_before_other_problems() -> None:
    problem = head_problem(view(("Authorization", "a"), ("Authorization", "b"), ("x_openclaw_scopes", "x")))
    assert problem is not None and "aliases" in problem


# ---- Connection tokens ------------------------------------------------------------------------


def test_connection_tokens_are_split_trimmed_and_lowered() -> None:
    v = view(("Connection", "Keep-Alive, X-OpenClaw-Scopes ,"), ("connection", " Upgrade"))
    assert connection_tokens(v) == ["keep-alive", "x-openclaw-scopes", "upgrade"]


# ---- rebuild_headers (B1, B9, B10, C1-C4) ------------------------------------------------------

OWNED = (("Authorization", "Bearer UPSTREAM"), ("x-openclaw-scopes", "operator.write"), ("X-Forwarded-For", "203.0.113.7"))
CONTEXT = frozenset({"x-openclaw-message-channel", "x-openclaw-account-id", "x-openclaw-message-to", "x-openclaw-thread-id"})


def plan(**overrides) -> HeaderPlan:
    base = dict(owned=OWNED, context_allow=CONTEXT, pinned={}, drop=frozenset(), websocket=False)
    base.update(overrides)
    return HeaderPlan(**base)


def names(headers: tuple[tuple[str, str], ...]) -> list[str]:
    return [n.lower() for n, _ in headers]


CLIENT_OWNED_COPIES = [
    ("Authorization", "Bearer client"), ("Proxy-Authorization", "Basic x"), ("X-OpenClaw-Scopes", "operator.admin"),
    ("X-OpenClaw-Sender-Is-Owner", "true"), ("X-Session-Key", "agent:main:main"), ("Forwarded", "for=1.2.3.4"),
    ("X-Real-IP", "1.2.3.4"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-User", "admin"),
    ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Uri", "/healthz"), ("Tailscale-User-Login", "admin@x"), ("Tailscale-Funnel-Request", "?1"),
    ("X-Clawdbot-Scopes", "operator.admin"), ("X-Original-URL", "/x"), ("X-Rewrite-URL", "/x"),
    ("X-OpenClaw-Unknown-Context", "x"), ("X-Request-Id", "client-chosen"),
]


@pytest.mark.parametrize("name, value", CLIENT_OWNED_COPIES, ids=[n for n, _ in CLIENT_OWNED_COPIES])
def test_client_copy_of_owned_header_never_reaches_upstream(name: str, value: str) -> None:
    out = rebuild_headers(view(("Host", "gw"), (name, value), ("Accept", "*/*")), plan())
    assert (name, value) not in out
    assert out == (("Host", "gw"), ("Accept", "*/*"), *OWNED)


@pytest.mark.parametrize("name, value", CLIENT_OWNED_COPIES, ids=[n.upper() for n, _ in CLIENT_OWNED_COPIES])
def test_client_copy_is_deleted_in_any_case(name: str, value: str) -> None:
    out = rebuild_headers(view((name.upper(), value), (name.lower(), value)), plan())
    assert out == OWNED


def test_owned_headers_are_set_exactly_once_after_deletion() -> None:
    out = rebuild_headers(view(*CLIENT_OWNED_COPIES), plan())
    assert out == OWNED
    for name in ("authorization", "x-openclaw-scopes", "x-forwarded-for"):
        assert names(out).count(name) == 1


def test_empty_owned_set_leaves_no_identity_behind() -> None:
    """B1: an identity source that yields nothing means no identity header, never the client's."""
    out = rebuild_headers(view(*CLIENT_OWNED_COPIES, ("Accept", "x")), plan(owned=()))
    assert out == (("Accept", "x"),)


def test_order_and_values_of_ordinary_headers_are_kept() -> None:
    v = view(("Host", "gw"), ("Accept", "a"), ("Cookie", "c1"), ("Cookie", "c2"), ("User-Agent", b"caf\xe9"))
    out = rebuild_headers(v, plan(owned=()))
    assert out == (("Host", "gw"), ("Accept", "a"), ("Cookie", "c1"), ("Cookie", "c2"), ("User-Agent", "café"))


@pytest.mark.parametrize(
    "nominated",
    [
        "x-openclaw-scopes", "authorization", "x-forwarded-for", "X-OpenClaw-Scopes, Authorization, X-Forwarded-For",
        "tailscale-user-login", "x-forwarded-user",
    ],
)
def test_connection_nomination_cannot_remove_owned_headers(nominated: str) -> None:
    """C1-C4: nominating our headers in Connection achieves nothing; they are set after deletion."""
    out = rebuild_headers(view(("Connection", nominated), ("X-OpenClaw-Scopes", "operator.admin")), plan())
    assert out == OWNED
    assert "connection" not in names(out)


def test_connection_nominated_ordinary_headers_are_removed() -> None:
    v = view(("Connection", "close, X-Custom, via"), ("X-Custom", "1"), ("Via", "p"), ("Accept", "a"))
    out = rebuild_headers(v, plan(owned=()))
    assert out == (("Accept", "a"), ("Connection", "close"))


@pytest.mark.parametrize(
    "connection, expected",
    [
        ("close", "close"), ("keep-alive", "keep-alive"), ("Keep-Alive, close", "keep-alive, close"),
        ("close, close", "close"), ("upgrade", None), ("x-foo", None), ("", None),
    ],
)
def test_connection_keeps_only_close_and_keep_alive(connection: str, expected: str | None) -> None:
    out = dict(rebuild_headers(view(("Connection", connection)), plan(owned=())))
    assert out.get("Connection") == expected


@pytest.mark.parametrize("hop", ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", "Expect"])
def test_hop_by_hop_headers_are_not_relayed(hop: str) -> None:
    out = rebuild_headers(view((hop, "x"), ("Accept", "a")), plan(owned=()))
    assert out == (("Accept", "a"),)


def test_websocket_keeps_upgrade_and_connection_upgrade() -> None:
    v = view(("Host", "gw"), ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"),
             ("Sec-WebSocket-Version", "13"))
    out = rebuild_headers(v, plan(websocket=True))
    assert out == (
        ("Host", "gw"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"), ("Sec-WebSocket-Version", "13"),
        ("Connection", "upgrade"), *OWNED,
    )


def test_websocket_upgrade_dropped_when_not_a_websocket() -> None:
    out = rebuild_headers(view(("Connection", "Upgrade"), ("Upgrade", "h2c")), plan(owned=()))
    assert out == ()


@pytest.mark.parametrize("hop", ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Expect"])
def test_websocket_keeps_upgrade_but_no_other_hop_by_hop_header(hop: str) -> None:
    """A WebSocket handshake relays `Upgrade` only: the other hop-by-hop headers stop here as for any request."""
    v = view(("Connection", "Upgrade"), ("Upgrade", "websocket"), (hop, "x"))
    out = rebuild_headers(v, plan(owned=(), websocket=True))
    assert out == (("Upgrade", "websocket"), ("Connection", "upgrade"))


def test_a_plan_is_not_for_a_websocket_unless_it_says_so() -> None:
    """The default plan (explain builds one) relays no client `Upgrade`: upgrading is opted into."""
    v = view(("Connection", "Upgrade"), ("Upgrade", "websocket"))
    assert rebuild_headers(v, HeaderPlan(owned=(), context_allow=frozenset(), pinned={})) == ()


@pytest.mark.parametrize("name", sorted(CONTEXT))
def test_allow_listed_context_header_is_forwarded(name: str) -> None:
    out = rebuild_headers(view((name, "channel:24514")), plan(owned=()))
    assert out == ((name, "channel:24514"),)


@pytest.mark.parametrize("name", sorted(CONTEXT))
def test_context_header_not_on_allow_list_is_dropped(name: str) -> None:
    out = rebuild_headers(view((name, "x")), plan(owned=(), context_allow=frozenset()))
    assert out == ()


def test_pinned_context_header_replaces_client_value() -> None:
    v = view(("X-OpenClaw-Message-Channel", "discord"), ("x-openclaw-account-id", "evil"), ("Accept", "a"))
    out = rebuild_headers(v, plan(pinned={"X-OpenClaw-Message-Channel": "webchat", "x-openclaw-account-id": "acct"}))
    assert out == (
        ("Accept", "a"), ("x-openclaw-account-id", "acct"), ("x-openclaw-message-channel", "webchat"), *OWNED,
    )


def test_pinned_header_is_set_even_when_not_allow_listed() -> None:
    out = rebuild_headers(view(), plan(owned=(), context_allow=frozenset(), pinned={"x-openclaw-message-channel": "webchat"}))
    assert out == (("x-openclaw-message-channel", "webchat"),)


def test_pinned_header_cannot_be_removed_by_connection() -> None:
    out = rebuild_headers(view(("Connection", "x-openclaw-message-channel")), plan(owned=(), pinned={"x-openclaw-message-channel": "webchat"}))
    assert out == (("x-openclaw-message-channel", "webchat"),)


def test_passthrough_header_is_relayed_once_as_sent_in_its_place() -> None:
    """A route's own credential (a hooks token, a ticket Bearer) goes on unread, where the client put
    it and exactly once, though the sidecar owns the name elsewhere; the sidecar's headers still follow."""
    v = view(("Authorization", "Bearer hooks-secret"), ("X-Hook-Signature", b"caf\xe9"), ("Accept", "a"))
    out = rebuild_headers(v, plan(owned=(("x-openclaw-scopes", ""),), passthrough=frozenset({"authorization", "x-hook-signature"})))
    assert out == (("Authorization", "Bearer hooks-secret"), ("X-Hook-Signature", "café"), ("Accept", "a"), ("x-openclaw-scopes", ""))


def test_drop_removes_configured_user_header() -> None:
    out = rebuild_headers(view(("X-Auth-User", "mallory"), ("Accept", "a")),
                          plan(owned=(("x-auth-user", "alice"),), drop=frozenset({"x-auth-user"})))
    assert out == (("Accept", "a"), ("x-auth-user", "alice"))


@pytest.mark.parametrize(
    "owned_name",
    ["x-openclaw-scopes", "x-openclaw-sender-is-owner", "authorization", "x-forwarded-for", "forwarded", "x-real-ip",
     "x-session-key"],
)
def test_allow_listing_an_owned_name_never_forwards_a_client_copy(owned_name: str) -> None:
    """B10: whatever the context allow-list says, a header the sidecar owns is never the client's.

    A misconfigured `contextHeaders.allow: [x-openclaw-scopes]` must not let a client add a second
    scopes line (which the gateway would join with ours, widening the scope set); the same for
    `X-Forwarded-For`, which the sidecar sets itself (exactly one line upstream).
    """
    out = rebuild_headers(view((owned_name, "operator.admin")), plan(context_allow=CONTEXT | {owned_name}))
    assert (owned_name, "operator.admin") not in out


@pytest.mark.parametrize("framing", [("Content-Length", "22"), ("Transfer-Encoding", "chunked")])
def test_connection_nomination_cannot_remove_message_framing(framing: tuple[str, str]) -> None:
    """A client naming Content-Length/Transfer-Encoding in Connection must not strip the framing
    of the request we forward: the upstream would read the body bytes as a second request (H1)."""
    out = rebuild_headers(view(("Host", "gw"), ("Connection", framing[0]), framing), plan(owned=()))
    assert framing in out


def test_connection_nomination_cannot_remove_the_host() -> None:
    """The gateway decides same-origin and its route base on Host: a client's `Connection: host`
    must not make the hop drop it, so the gateway reads a Host the sidecar never judged."""
    out = rebuild_headers(view(("Host", "gw"), ("Connection", "host")), plan(owned=()))
    assert ("Host", "gw") in out


@pytest.mark.parametrize("spelling", ["Trailer", "trailer", "TRAILER"])
def test_a_request_announcing_trailers_is_refused_at_its_head(spelling: str) -> None:
    """Trailers arrive after the body, past every header check (corpus B6): announcing them is enough."""
    assert head_problem(view((spelling, "x-openclaw-scopes"))) == "request trailers are not accepted"


# ---- Header names ------------------------------------------------------------------------------


def test_header_names_are_refused_exactly_where_nodes_parser_refuses_them() -> None:
    """Every byte inside a header name, judged by head_problem and by the gateway's own parser
    (Node's llhttp, no lenient flags): a name Node refuses never reaches the policy as if it were
    a header, even where a layer in front did not already answer 400. `:` ends a name; CR and LF
    end a line."""
    from tests.node import node_http_parse

    spellings = [b"X" + bytes([c]) + b"Y" for c in range(256) if c not in b":\r\n"]
    parsed, _ = node_http_parse([b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\n\r\n" for name in spellings])
    refused_by_node = {name for name, seen in zip(spellings, parsed) if seen["error"] is not None}
    refused_here = {name for name in spellings if head_problem(view((name.decode("latin-1"), "v"))) is not None}
    assert refused_here == refused_by_node
    assert b"X Y" in refused_here and b"X~Y" not in refused_here  # the comparison is not vacuous


@pytest.mark.parametrize("name", ["Foo Bar", "Foo@", "F\xe9o", "X(Y)", "{x}", "", "X\x00"])
def test_a_name_that_is_no_token_is_refused(name: str) -> None:
    assert head_problem(view((name, "v"))) == f"header name {name!r} is not a token"
