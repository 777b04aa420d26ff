"""sidecar.scopes: header parsing as upstream (§4, cases 10, 33, 39-43, 76), ceilings, the header we forward (F1-F5)."""

from __future__ import annotations

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

DEFAULTS_L = (
    "operator.admin", "operator.read", "operator.write", "operator.approvals",
    "operator.questions", "operator.pairing", "operator.talk.secrets",
)


def test_default_and_known_sets_are_the_2026_9_6_lists() -> None:
    assert DEFAULT_SCOPES == DEFAULTS_L
    assert len(KNOWN_SCOPES) == 10 and set(DEFAULT_SCOPES) <= set(KNOWN_SCOPES)


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
