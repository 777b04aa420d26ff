"""Operator scopes: parsing as the gateway does, ceilings, the write gate and ownership (§4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from .identities import for_identity
from .toolpolicy import js_trim

ADMIN = "operator.admin"

# KNOWN_OPERATOR_SCOPES in 2026.9.6.
KNOWN_SCOPES = (
    "operator.admin", "operator.read", "operator.write", "operator.sessions.read",
    "operator.sessions.write", "operator.approvals", "operator.questions", "operator.pairing",
    "operator.talk", "operator.talk.secrets",
)
# CLI_DEFAULT_OPERATOR_SCOPES in 2026.9.6 (7; the docs' list of 6 is drift).
DEFAULT_SCOPES = (
    "operator.admin", "operator.read", "operator.write", "operator.approvals",
    "operator.questions", "operator.pairing", "operator.talk.secrets",
)


def parse_scope_header(value: str | None) -> tuple[str, ...]:
    """Upstream parsing: absent → defaults; present → comma split, trim, drop empties, case kept."""
    if value is None:
        return DEFAULT_SCOPES
    return tuple(part for part in (js_trim(piece) for piece in value.split(",")) if part)


@dataclass(frozen=True)
class ScopeCeilings:
    """The sidecar's own extension: the most any identity may hold (None = no ceiling)."""

    default: frozenset[str] | None = None
    by_identity: Mapping[str, frozenset[str]] | None = None

    def ceiling_for(self, identity: str | None) -> frozenset[str] | None:
        return for_identity(self.by_identity or {}, identity, self.default)


@dataclass(frozen=True)
class ResolvedScopes:
    scopes: tuple[str, ...]

    @cached_property
    def granted(self) -> frozenset[str]:
        """For scope checks; a shared-secret caller's are built once, so this is too."""
        return frozenset(self.scopes)

    @property
    def owner(self) -> bool:
        return ADMIN in self.scopes

    @property
    def header_value(self) -> str:
        """The value of the one explicit header we forward (empty when no scope survived: an
        absent header would mean the full default set upstream, F1)."""
        return ",".join(self.scopes)


def resolve_scopes(
    declared: tuple[str, ...], ceiling: frozenset[str] | None
) -> ResolvedScopes:
    """Known scopes the caller declared, de-duplicated in order, capped by the ceiling (F4, F5)."""
    seen: list[str] = []
    for scope in declared:
        if scope in KNOWN_SCOPES and scope not in seen and (ceiling is None or scope in ceiling):
            seen.append(scope)
    return ResolvedScopes(tuple(seen))


def shared_secret_scopes(ceiling: frozenset[str] | None) -> ResolvedScopes:
    """Token and password callers: declared scopes are ignored; they get the full default set."""
    return resolve_scopes(DEFAULT_SCOPES, ceiling)


def ceilings_from_config(
    default: Iterable[str] | None, by_identity: Mapping[str, Iterable[str]] | None
) -> ScopeCeilings:
    return ScopeCeilings(
        None if default is None else frozenset(default),
        None if not by_identity else {k: frozenset(v) for k, v in by_identity.items()},
    )
