"""Per-identity tables of the config, looked up as the gateway looks up a login.

The gateway finds a login's `identityScopes` by its exact spelling and, for an e-mail, by an entry
equal to it but for case; it keys a person's profile by the lower-cased e-mail. A table of the
sidecar's own (scope ceilings, pinned context headers, request budgets) keyed only by spelling
gave `ALICE@x.com` none of `alice@x.com`'s limits, while the gateway served both as one person
(red team).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")


def for_identity(table: Mapping[str, V], identity: str | None, default: V) -> V:
    """`table[identity]`; else, for an e-mail, the first entry that is an e-mail equal to it but for
    case (resolveIdentityOperatorScopes); else `default`."""
    if identity is None:
        return default
    if identity in table:
        return table[identity]
    if "@" not in identity:
        return default
    person = person_key(identity)
    return next((value for key, value in table.items() if "@" in key and person_key(key) == person), default)


def person_key(identity: str) -> str:
    """One key per person for a budget: an e-mail lower-cased, as the gateway keys its profile."""
    return identity.lower() if "@" in identity else identity
