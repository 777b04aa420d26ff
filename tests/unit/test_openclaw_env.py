"""sidecar.openclaw_env: the gateway's `${NAME}` substitution and reference detection, run side
by side with the gateway's own resolveConfigEnvVars and containsEnvVarReference (in its Node)."""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
from importlib import resources

import pytest

from sidecar.openclaw_env import contains_reference, file_environment, secret_reference, substitute
from tests.gateway.oracle import call_gateway, needs_gateway
from tests.gateway.real_gateway import PACKAGE
from tests.node import gateway_node

ENV = {"A": "value-a", "B_1": "b", "EMPTY": "", "_X": "x", "lower": "never"}
PARTS = ["$", "$$", "${", "$${", "{", "}", "A", "B_1", "EMPTY", "_X", "lower", "a-", "1"]


def corpus() -> list[str]:
    return sorted({"".join(c) for n in range(1, 5) for c in itertools.product(PARTS, repeat=n)})


@needs_gateway
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


ENV_NAMES = ["GW_TOKEN", " GW_TOKEN ", "gw_token", "HOME", "NODE_OPTIONS", "LD_PRELOAD", "openclaw_include_roots", "1BAD",
             "A-B", "PATH", "BASH_ENV", "DYLD_X", "GIT_CONFIG_X", "CARGO_TARGET_X86_RUNNER", "SSLKEYLOGFILE", "shellEnv", "vars"]
ENV_VALUES = ["tok", "", "   ", "${OTHER}", "$${X}", 5, None, " padded "]


def env_sections() -> list[dict]:
    """`env` sections (entries in `vars` and beside it, odd names and values) with process environments."""
    rng = random.Random(7)
    cases = []
    for _ in range(1500):
        section = {k: rng.choice(ENV_VALUES) for k in rng.sample(ENV_NAMES, rng.randint(0, 3))}
        if rng.random() < 0.8:
            section["vars"] = {k: rng.choice(ENV_VALUES) for k in rng.sample(ENV_NAMES, rng.randint(0, 3))}
        environ = {k: rng.choice(["", "  ", "from-env"]) for k in rng.sample(["GW_TOKEN", "HOME", "OTHER", "NODE_OPTIONS"], rng.randint(0, 3))}
        cases.append({"section": section, "environ": environ})
    return cases


@needs_gateway
def test_the_env_section_fills_in_the_environment_as_the_gateway_applies_it() -> None:
    """Compared on the names `${NAME}` can reach, an empty value counting as unset on both sides."""
    cases = env_sections()
    theirs = call_gateway(["applyConfigEnvVars"], """
        answer(input.map(({ section, environ }) => { const env = { ...environ }; gateway.applyConfigEnvVars({ env: section }, env); return env; }));""",
                          cases)
    differ = []
    for case, their_env in zip(cases, theirs):
        my_env = file_environment({"env": case["section"]}, case["environ"])
        names = {n for n in {*my_env, *their_env} if re.fullmatch(r"[A-Z_][A-Z0-9_]*", n)}
        if any((my_env.get(n) or None) != (their_env.get(n) or None) for n in names):
            differ.append((case, my_env, their_env))
    assert differ == [], f"{len(differ)} of {len(cases)} differ, first: {differ[:3]}"
    applied = sum(bool(set(t) - set(c["environ"])) for c, t in zip(cases, theirs))
    assert applied >= 300  # sections the gateway took variables from are represented


@needs_gateway
def test_the_refused_names_are_the_gateways_host_policy() -> None:
    """sidecar/data/gateway-env-policy-2026.9.6.json against the policy literal in the gateway's bundle."""
    (bundle,) = [f for f in (PACKAGE / "dist").glob("host-env-security-*.mjs") if "var host_env_security_policy_default" in f.read_text()]
    read = subprocess.run([gateway_node(), "-e", """
        const text = require("fs").readFileSync(process.argv[1], "utf8");
        const start = text.indexOf("=", text.indexOf("var host_env_security_policy_default")) + 1;
        process.stdout.write(JSON.stringify(Function("return " + text.slice(start, text.indexOf("};", start) + 1))()));""",
                           str(bundle)], capture_output=True, text=True, check=True, timeout=60)
    policy = json.loads(read.stdout)
    ours = json.loads(resources.files("sidecar").joinpath("data/gateway-env-policy-2026.9.6.json").read_text())
    upper = lambda names: sorted({n.upper() for n in names})  # noqa: E731
    assert {k: ours[k] for k in ("blockedKeys", "blockedPrefixes", "blockedOverrideKeys", "blockedOverridePrefixes")} == {
        "blockedKeys": upper(policy["blockedEverywhereKeys"]), "blockedPrefixes": upper(policy["blockedPrefixes"]),
        "blockedOverrideKeys": upper(policy["blockedOverrideOnlyKeys"]),
        "blockedOverridePrefixes": upper(policy["blockedOverridePrefixes"])}


def credential_values() -> list[object]:
    """Credentials written as strings around `$NAME` and `${NAME}`, and as objects, with the
    spaces, marks and keys the two languages read differently."""
    edges = ["", " ", "\ufeff", "\u00a0", "\u0085", "\u200b", "\u3000", "\n"]
    bodies = ["$GW_TOKEN", "${GW_TOKEN}", "$gw", "$$GW", "${GW", "GW", "$GW-X", "$_GW",
              "$" + "G" * 128, "${" + "G" * 128 + "}", "$" + "G" * 129, "${" + "G" * 129 + "}"]  # 128 characters at most
    texts: list[object] = [pre + body + post for pre in edges for body in bodies for post in edges]
    ids = ["GW", " GW ", "\ufeffGW", "", " ", "\ufeff", 5, None]
    providers = [{}, {"provider": "default"}, {"provider": "vault"}, {"provider": " "}, {"provider": "\ufeff"},
                 {"provider": None}, {"provider": " default "}]
    objects: list[object] = [{"source": source, "id": ref_id, **provider, **extra}
                             for source in ("env", "file", "exec", "store", "vault", None) for ref_id in ids
                             for provider in providers for extra in ({}, {"note": "x"})]
    return texts + objects


@needs_gateway
def test_secret_references_are_found_as_the_gateways_coerce_secret_ref_finds_them() -> None:
    values = credential_values()
    theirs = call_gateway(["coerceSecretRef"], """
        answer(input.map((value) => {
          const ref = gateway.coerceSecretRef(value);
          if (!ref) return null;
          return [ref.source === "env" ? (ref.provider === "default" ? "env" : "provider") : ref.source, ref.id.trim()];
        }));""", values)
    mine = [list(ref) if (ref := secret_reference(value)) else None for value in values]
    differ = [(value, m, t) for value, m, t in zip(values, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(values)} differ, first: {differ[:5]}"
    assert sum(t is not None for t in theirs) >= 100  # references, strings and objects, are represented


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
