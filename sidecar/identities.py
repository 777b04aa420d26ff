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

# Lower cases the gateway's JavaScript knows (Node 24: Unicode 17) and Python's tables do not
# (3.12: Unicode 15.0, 3.13: 15.1), where each of these letters is its own lower case.
# tests/unit/test_identities.py asks the gateway's Node for every letter, so a newer Node shows
# what this lacks.
_NEWER_LOWER_CASES = {
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
    0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
    **{capital: capital + 0x20 for capital in range(0x10D50, 0x10D66)},  # Garay
    **{capital: capital + 0x1B for capital in range(0x16EA0, 0x16EB9)},  # Beria Erfe
}


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
    return js_lower(identity) if "@" in identity else identity


def js_lower(text: str) -> str:
    """JavaScript's toLowerCase as the gateway's Node computes it."""
    return text.lower().translate(_NEWER_LOWER_CASES)
