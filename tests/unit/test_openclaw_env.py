"""sidecar.openclaw_env: the gateway's `${NAME}` substitution and reference detection, run side
by side with the gateway's own resolveConfigEnvVars and containsEnvVarReference (in its Node)."""

from __future__ import annotations

import itertools

import pytest

from sidecar.openclaw_env import contains_reference, secret_reference, substitute
from tests.gateway.oracle import call_gateway
from tests.gateway.real_gateway import unavailable_reason

ENV = {"A": "value-a", "B_1": "b", "EMPTY": "", "_X": "x", "lower": "never"}
PARTS = ["$", "$$", "${", "$${", "{", "}", "A", "B_1", "EMPTY", "_X", "lower", "a-", "1"]


def corpus() -> list[str]:
    return sorted({"".join(c) for n in range(1, 5) for c in itertools.product(PARTS, repeat=n)})


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"REAL GATEWAY TESTS SKIPPED: {unavailable_reason()}")
def test_strings_are_substituted_and_references_found_as_the_gateway_does() -> None:
    texts = corpus()
    theirs = call_gateway(["resolveConfigEnvVars", "containsEnvVarReference"], """
        const { resolveConfigEnvVars: resolve, containsEnvVarReference: contains } = gateway;
        answer(input.texts.map((text) => [resolve(text, input.env, { onMissing() {} }), contains(text)]));""",
                          {"texts": texts, "env": ENV})
    mine = [[substitute(text, ENV), contains_reference(text)] for text in texts]
    differ = [(text, m, t) for text, m, t in zip(texts, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(texts)} differ, first: {differ[:5]}"
    assert sum(contains for _, contains in theirs) >= 100  # references, escaped and not, are represented


@pytest.mark.parametrize("value, reference", [
    ("${OPENCLAW_GATEWAY_TOKEN}", ("env", "OPENCLAW_GATEWAY_TOKEN")),
    (" $GW_TOKEN ", ("env", "GW_TOKEN")),
    ({"source": "env", "id": "GW"}, ("env", "GW")),
    ({"source": "env", "provider": "default", "id": "GW"}, ("env", "GW")),
    ({"source": "env", "provider": "vault", "id": "GW"}, ("provider", "GW")),
    ({"source": "file", "provider": "filemain", "id": "/gateway/token"}, ("file", "/gateway/token")),
    ("$lower", None), ("$${GW}", None), ("pre${GW}", None), ("plain", None), ({"id": "GW"}, None),
])
def test_secret_references_are_recognised_as_the_gateway_writes_them(value: object, reference: tuple | None) -> None:
    assert secret_reference(value) == reference
