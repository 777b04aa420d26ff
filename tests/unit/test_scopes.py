"""sidecar.scopes: header parsing as upstream (§4, cases 10, 33, 39-43, 76), ceilings, the header we forward (F1-F5)."""

from __future__ import annotations

import random

import pytest

from sidecar.rpc import scope_satisfied
from sidecar.scopes import (
    DEFAULT_SCOPES,
    KNOWN_SCOPES,
    ResolvedScopes,
    ScopeCeilings,
    ceilings_from_config,
    parse_scope_header,
    resolve_scopes,
    shared_secret_scopes,
)
from tests.gateway.oracle import call_gateway, needs_gateway

DEFAULTS_L = (
    "operator.admin", "operator.read", "operator.write", "operator.approvals",
    "operator.questions", "operator.pairing", "operator.talk.secrets",
)


def test_default_and_known_sets_are_the_2026_9_6_lists() -> None:
    assert DEFAULT_SCOPES == DEFAULTS_L
    assert len(KNOWN_SCOPES) == 10 and set(DEFAULT_SCOPES) <= set(KNOWN_SCOPES)


GATEWAY_SCOPE_CONSTANTS = ["ADMIN_SCOPE", "READ_SCOPE", "WRITE_SCOPE", "SESSION_READ_SCOPE", "SESSION_WRITE_SCOPE",
                           "APPROVALS_SCOPE", "QUESTIONS_SCOPE", "PAIRING_SCOPE", "TALK_SCOPE", "TALK_SECRETS_SCOPE"]


@needs_gateway
def test_the_known_scopes_are_the_gateways_to_the_letter() -> None:
    """Its scope constants, and its isOperatorScope over them and their near misses: a scope the
    sidecar drops as unknown the gateway would grant, and the reverse."""
    near = [variant for scope in KNOWN_SCOPES for variant in (scope.upper(), scope + " ", scope + "s", scope[:-1])]
    candidates = [*KNOWN_SCOPES, *near, "", "operator", "operator.sessions", "operator.talk.secret"]
    constants, known = call_gateway(["isOperatorScope", *GATEWAY_SCOPE_CONSTANTS], """
        const { isOperatorScope, ...constants } = gateway;
        answer([Object.values(constants), input.map((scope) => isOperatorScope(scope))]);""", candidates)
    assert sorted(constants) == sorted(KNOWN_SCOPES)
    assert [scope for scope, theirs in zip(candidates, known, strict=True) if theirs != (scope in KNOWN_SCOPES)] == []


@pytest.mark.parametrize(
    "header, parsed",
    [
        (None, DEFAULTS_L),  # absent → defaults (F1)
        ("", ()),  # case 39: present but empty → nothing
        ("   ", ()),
        (",,, ,", ()),
        ("operator.read", ("operator.read",)),  # case 40
        ("operator.read operator.write", ("operator.read operator.write",)),  # case 41: one token
        ("OPERATOR.WRITE", ("OPERATOR.WRITE",)),  # case 42: case kept
        ("  operator.read , operator.write ", ("operator.read", "operator.write")),  # case 43
        ("operator.write,operator.write", ("operator.write", "operator.write")),  # upstream keeps duplicates
        ("operator.write, operator.read, operator.write", ("operator.write", "operator.read", "operator.write")),
    ],
)
def test_parse_scope_header(header: str | None, parsed: tuple[str, ...]) -> None:
    assert parse_scope_header(header) == parsed


@pytest.mark.parametrize(
    "header, allows, owner, forwarded",
    [
        (None, True, True, ",".join(DEFAULTS_L)),  # case 33: absent → owner
        ("", False, False, ""),  # case 39
        ("operator.read", False, False, "operator.read"),  # case 40
        ("operator.read operator.write", False, False, ""),  # case 41
        ("OPERATOR.WRITE", False, False, ""),  # case 42
        ("  operator.read , operator.write ", True, False, "operator.read,operator.write"),  # case 43
        ("operator.write", True, False, "operator.write"),  # case 76: write alone is not owner
        ("operator.admin", True, True, "operator.admin"),
        ("operator.sessions.write", False, False, "operator.sessions.write"),
        ("operator.write,operator.write,operator.read", True, False, "operator.write,operator.read"),  # de-duplicated
        ("operator.write,operator.root,x", True, False, "operator.write"),  # unknown dropped (F5)
        ("operator.read,OPERATOR.ADMIN", False, False, "operator.read"),
    ],
)
def test_resolved_scopes(header: str | None, allows: bool, owner: bool, forwarded: str) -> None:
    resolved = resolve_scopes(parse_scope_header(header), None)
    assert scope_satisfied("operator.write", resolved.granted) is allows
    assert resolved.owner is owner
    assert resolved.header_value == forwarded


@pytest.mark.parametrize(
    "declared, ceiling, expected",
    [
        (DEFAULTS_L, frozenset({"operator.read", "operator.write"}), ("operator.read", "operator.write")),
        (("operator.admin",), frozenset({"operator.write"}), ()),  # the ceiling removes admin
        (("operator.write", "operator.admin"), frozenset({"operator.write"}), ("operator.write",)),
        (("operator.write",), frozenset(), ()),
        (("operator.write",), None, ("operator.write",)),
    ],
)
def test_ceiling_caps_declared_scopes(declared: tuple[str, ...], ceiling: frozenset[str] | None, expected: tuple[str, ...]) -> None:
    assert resolve_scopes(declared, ceiling).scopes == expected


@pytest.mark.parametrize(
    "ceiling, expected_owner, expected_allows",
    [
        (None, True, True),
        (frozenset({"operator.write", "operator.read"}), False, True),
        (frozenset({"operator.read"}), False, False),
    ],
)
def test_shared_secret_gets_defaults_capped_by_ceiling(ceiling: frozenset[str] | None, expected_owner: bool, expected_allows: bool) -> None:
    """Case 10: declared scopes are ignored for shared-secret callers; only the sidecar ceiling caps them."""
    resolved = shared_secret_scopes(ceiling)
    assert resolved.owner is expected_owner
    assert scope_satisfied("operator.write", resolved.granted) is expected_allows
    expected = DEFAULTS_L if ceiling is None else tuple(s for s in DEFAULTS_L if s in ceiling)
    assert resolved.scopes == expected


@pytest.mark.parametrize(
    "default, identities, identity, expected",
    [
        (None, None, "alice", None),
        (None, {}, "alice", None),
        (["operator.write"], None, "alice", frozenset({"operator.write"})),
        (["operator.write"], {"root": ["operator.admin"]}, "root", frozenset({"operator.admin"})),
        (["operator.write"], {"root": ["operator.admin"]}, "Root", frozenset({"operator.write"})),  # exact match
        # an e-mail in another case is the same person at the gateway (identityScopes, profiles)
        (None, {"alice@x.com": ["operator.read"]}, "ALICE@X.com", frozenset({"operator.read"})),
        (None, {"Alice@x.com": ["operator.read"], "alice@x.com": []}, "alice@x.com", frozenset()),  # exact first
        (None, {"Alice@x.com": ["operator.read"], "ALICE@x.com": []}, "alice@x.com", frozenset({"operator.read"})),  # then the first
        (None, {"alice": ["operator.read"]}, "ALICE", None),  # not an e-mail: exact only, as the gateway
        (None, {"alice": ["operator.read"]}, "ALICE@x.com", None),
        (["operator.write"], {"root": ["operator.admin"]}, None, frozenset({"operator.write"})),
        (None, {"root": ["operator.admin"]}, "alice", None),
        ([], None, "alice", frozenset()),  # an empty default ceiling is "nothing", not "no ceiling"
    ],
)
def test_ceilings_from_config(default, identities, identity: str | None, expected) -> None:
    assert ceilings_from_config(default, identities).ceiling_for(identity) == expected


def test_no_ceiling_by_default() -> None:
    assert ScopeCeilings().ceiling_for("anyone") is None


@pytest.mark.parametrize(
    "scopes, value",
    [((), ""), (("operator.write",), "operator.write"), (("operator.read", "operator.write"), "operator.read,operator.write")],
)
def test_header_value_is_comma_joined_and_explicit(scopes: tuple[str, ...], value: str) -> None:
    """F1: always one explicit header; an empty resolution is an empty value, never an absent header."""
    assert ResolvedScopes(scopes).header_value == value


# Every latin-1 character JavaScript's trim and Python's strip disagree on, and some both trim.
BLANKS = [" ", "\t", "\x0b", "\x0c", "\xa0", "\x85", "\x1c", "\x1d", "\x1e", "\x1f", "\r", "\n", "\x00", "\xc2"]
NAMES = ["operator.read", "operator.write", "operator.admin", "OPERATOR.READ", ""]


def scope_header_values(rng: random.Random, count: int) -> list[str]:
    def item() -> str:
        pad = lambda: "".join(rng.choice(BLANKS) for _ in range(rng.randint(0, 2)))  # noqa: E731
        return pad() + rng.choice(NAMES) + pad()
    return sorted({",".join(item() for _ in range(rng.randint(1, 3))) for _ in range(count)})


@needs_gateway
def test_a_declared_scope_header_splits_and_trims_as_the_gateways() -> None:
    """The gateway's resolveTrustedHttpOperatorScopes, in its Node, over header values (latin-1, as
    both read the bytes): a scope Python's strip would free from `\x85` or `\x1c` is no scope there."""
    values = scope_header_values(random.Random(20261204), 600)
    theirs = call_gateway(["http-auth-utils-:resolveTrustedHttpOperatorScopes"], """
        answer(input.map((value) => gateway.resolveTrustedHttpOperatorScopes(
            {headers: value === null ? {} : {"x-openclaw-scopes": value}}, {trustDeclaredOperatorScopes: true})));""",
                          [None, *values])
    mine = [list(parse_scope_header(value)) for value in [None, *values]]
    assert [(value, m, t) for value, m, t in zip([None, *values], mine, theirs, strict=True) if m != t] == []
    assert sum(1 for scopes in theirs if "operator.write" in scopes) > 50
