"""sidecar.identities: a login's entry in a per-identity table, found as the gateway finds it."""

from __future__ import annotations

import random

from sidecar.identities import for_identity, js_lower, person_key
from tests.gateway.oracle import call_gateway, needs_gateway

# Letters whose case mappings are not one ASCII letter to another: dotted and dotless i, the Kelvin
# sign, long s, sharp s and its capital, final sigma, ligatures and Cherokee.
ODD_LETTERS = ["İ", "ı", "K", "ſ", "ß", "ẞ", "Σ", "ς", "σ", "ﬀ", "Ꭰ", "ꭰ", "Ǆ", "ǅ", "ǆ", "Ω", "Å"]


def logins(rng: random.Random, count: int) -> list[str]:
    """E-mails and plain logins in every case, some with letters whose case differs between
    alphabets, a few that are spelt only by their case."""
    def word() -> str:
        letters = [rng.choice("abcdefgksiz") for _ in range(rng.randint(1, 5))]
        letters += rng.sample(ODD_LETTERS, rng.randint(0, 2))
        rng.shuffle(letters)
        return "".join(c.upper() if rng.random() < 0.4 else c for c in letters)
    return [f"{word()}@{word()}.example" if rng.random() < 0.8 else word() for _ in range(count)]


@needs_gateway
def test_a_login_finds_the_entry_the_gateways_resolve_identity_operator_scopes_finds() -> None:
    """Exact first; for an e-mail, then the first e-mail key equal but for case (JavaScript's
    toLowerCase); a plain login by its spelling only. Each entry's value names its key."""
    rng = random.Random(20261204)
    keys = list(dict.fromkeys(logins(rng, 40)))
    table = {key: [key] for key in keys}
    probes = keys + [key.swapcase() for key in keys] + [key.upper() for key in keys] + [key.lower() for key in keys] \
        + logins(rng, 200)
    theirs = call_gateway(["operator-identity-scopes-:resolveIdentityOperatorScopes"], """
        answer(input.probes.map((login) => gateway.resolveIdentityOperatorScopes(login, input.table)));""",
                          {"probes": probes, "table": table})
    mine = [for_identity(table, login, []) for login in probes]
    assert [(login, m, t) for login, m, t in zip(probes, mine, theirs, strict=True) if m != t] == []
    assert sum(1 for login, found in zip(probes, theirs) if found and found[0] != login) > 50  # found but for case


@needs_gateway
def test_an_e_mail_is_lower_cased_and_finds_its_entry_as_in_the_gateways_node() -> None:
    """Every code point below U+20000, in the gateway's own Node: its Unicode is newer than this
    Python's (17 to 15 for Node 24 and Python 3.12), and `ɤ@x.example`'s entry stayed unknown to
    `Ɤ@x.example` (U+A7CB, Unicode 16), whom the gateway served as one person."""
    seen = call_gateway(["operator-identity-scopes-:resolveIdentityOperatorScopes"], """
        const points = [];
        for (let c = 0; c < 0x20000; c++) if (c < 0xd800 || c > 0xdfff) points.push(String.fromCodePoint(c));
        const letters = points.filter((point) => point.toLowerCase() !== point);
        const table = Object.fromEntries(letters.map((letter) => [`${letter.toLowerCase()}@x.example`, [letter]]));
        const probes = letters.map((letter) => `${letter}@x.example`);
        answer({ lowered: points.map((point) => point.toLowerCase()), table, probes,
                 theirs: probes.map((login) => gateway.resolveIdentityOperatorScopes(login, table)) });""", None)
    points = [chr(c) for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF]
    assert [(point, theirs) for point, theirs in zip(points, seen["lowered"], strict=True) if js_lower(point) != theirs] == []
    mine = [for_identity(seen["table"], login, []) for login in seen["probes"]]
    assert [(login, m, t) for login, m, t in zip(seen["probes"], mine, seen["theirs"], strict=True) if m != t] == []
    assert all(seen["theirs"]) and "\ua7cb@x.example" in seen["probes"]


def test_a_budget_is_one_per_person_for_an_e_mail_and_per_spelling_for_a_plain_login() -> None:
    assert person_key("Alice@X.example") == person_key("alice@x.EXAMPLE") == "alice@x.example"
    assert person_key("Alice") != person_key("alice")
