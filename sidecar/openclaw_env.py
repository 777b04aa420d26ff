"""How the gateway's config loader reads strings and credentials (2026.9.6), so that the sidecar
reading the same file takes the same values from it.

* `${NAME}` (upper-case names) is replaced by the environment's value in every string; a variable
  that is unset or empty stays visibly `${NAME}`, and `$${NAME}` is the literal `${NAME}`.
* The file's `env` (`env.vars`, and `env.NAME` strings) fills in variables the process
  environment leaves unset or blank, except host-dangerous names such as `NODE_OPTIONS`.
* A credential is an env SecretRef when written `$NAME`, `${NAME}` or `{source: "env", id}`;
  file, exec and store SecretRefs are resolved by the gateway's providers, which the sidecar
  does not run.
* A credential that still holds a `${NAME}` reference is no credential at all, and a redaction
  marker or a published example placeholder is refused outright: taken literally, each would be a
  shared secret anyone can read in the docs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from .toolpolicy import js_trim

_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_ENV_SECRET_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]{0,127})\}|\$([A-Z][A-Z0-9_]{0,127})")
_SECRET_SOURCES = frozenset({"env", "file", "exec", "store"})

# Display markers (config.get shows these in place of secrets), never credential material.
REDACTED_SECRET_VALUES = frozenset({
    "__OPENCLAW_REDACTED__", "REDACTED", "xoxb-REDACTED", "xapp-REDACTED", "***", "[redacted]", "[REDACTED]",
    "<redacted>", "[REDACTED_PRIVATE_KEY]", "[REDACTED CREDENTIAL]",
})
# Placeholders that shipped in .env.example or onboarding docs.
KNOWN_WEAK_SECRETS = {
    "token": frozenset({"change-me-to-a-long-random-token", "change-me-now"}),
    "password": frozenset({"change-me-to-a-strong-password"}),
}


def _reference_at(text: str, at: int) -> tuple[str, str, int] | None:
    """parseEnvTokenAt: ("escaped" | "substitution", name, index of the closing brace)."""
    escaped = text.startswith("$${", at)
    if not escaped and not text.startswith("${", at):
        return None
    start = at + (3 if escaped else 2)
    end = text.find("}", start)
    if end == -1 or not _NAME.fullmatch(text[start:end]):
        return None
    return ("escaped" if escaped else "substitution"), text[start:end], end


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """One string as the gateway's loader substitutes it."""
    if "$" not in text:
        return text
    out, at = [], 0
    while at < len(text):
        found = _reference_at(text, at) if text[at] == "$" else None
        if found is None:
            out.append(text[at])
            at += 1
            continue
        kind, name, end = found
        value = environ.get(name) if kind == "substitution" else None
        out.append(value or f"${{{name}}}")  # unset, empty or escaped: the reference as written
        at = end + 1
    return "".join(out)


def substitute_all(value: Any, environ: Mapping[str, str]) -> Any:
    """Every string in a parsed config, at any depth."""
    if isinstance(value, str):
        return substitute(value, environ)
    if isinstance(value, Mapping):
        return {k: substitute_all(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_all(v, environ) for v in value]
    return value


def contains_reference(text: str) -> bool:
    """An unescaped `${NAME}` left in the text."""
    at = 0
    while (at := text.find("$", at)) != -1:
        found = _reference_at(text, at)
        if found is not None and found[0] == "substitution":
            return True
        at = found[2] + 1 if found is not None else at + 1
    return False


# Names the gateway never takes from the file's `env` (config-env-vars.ts), in any case: its own
# three, and its host policy's dangerous names (NODE_OPTIONS, LD_*, ...), kept as data.
_BLOCKED_FILE_VARIABLES = frozenset({"OPENCLAW_ALLOW_OLDER_BINARY_DESTRUCTIVE_ACTIONS", "OPENCLAW_INCLUDE_ROOTS",
                                     "OPENCLAW_CONFIG_READONLY"})
_PORTABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CARGO_TARGET_EXECUTABLE = re.compile(r"CARGO_TARGET_[A-Z0-9_]+_(?:LINKER|RUNNER)")


@cache
def _host_policy(version: str = "2026.9.6") -> tuple[frozenset[str], tuple[str, ...]]:
    """(names, prefixes) of sidecar/data/gateway-env-policy-<version>.json, upper-case."""
    policy = json.loads(resources.files("sidecar").joinpath(f"data/gateway-env-policy-{version}.json").read_text(encoding="utf-8"))
    return (frozenset(policy["blockedKeys"]) | frozenset(policy["blockedOverrideKeys"]) | _BLOCKED_FILE_VARIABLES,
            tuple(policy["blockedPrefixes"]) + tuple(policy["blockedOverridePrefixes"]))


def _refused_name(name: str) -> bool:
    names, prefixes = _host_policy()
    upper = name.upper()
    return upper in names or upper.startswith(prefixes) or bool(_CARGO_TARGET_EXECUTABLE.fullmatch(upper))


def _declared_variables(env: Any) -> dict[str, str]:
    """The variables the file's `env` section sets, as collectConfigEnvVarsByTarget reads them:
    `env.vars`, then every other string entry but `shellEnv` (a later one wins); names trimmed and
    portable, values not blank and holding no `${NAME}`, and no name the gateway refuses."""
    if not isinstance(env, Mapping):
        return {}
    vars_ = env.get("vars")
    entries = [*(vars_.items() if isinstance(vars_, Mapping) else ()),
               *((k, v) for k, v in env.items() if k not in ("vars", "shellEnv"))]
    declared: dict[str, str] = {}
    for raw_name, value in entries:
        name = js_trim(raw_name) if isinstance(raw_name, str) else ""
        if (isinstance(value, str) and js_trim(value) and _PORTABLE_NAME.fullmatch(name)
                and not _refused_name(name) and not contains_reference(value)):
            declared[name] = value
    return declared


def file_environment(document: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the file's strings are read in (applyConfigEnvVars): what the file's `env`
    declares fills in each variable the process leaves unset or blank."""
    merged = dict(environ)
    for name, value in _declared_variables(document.get("env")).items():
        if not js_trim(merged.get(name, "")):
            merged[name] = value
    return merged


def secret_reference(value: Any) -> tuple[str, str] | None:
    """(source, id) when a credential is written as a SecretRef, as the gateway's coerceSecretRef
    finds one (trimmed as JavaScript trims: a byte-order mark too), else None. An env SecretRef of
    a provider other than the default one is resolved by that provider: its source is "provider"."""
    if isinstance(value, str):
        match = _ENV_SECRET_REF.fullmatch(js_trim(value))
        return ("env", match.group(1) or match.group(2)) if match else None
    if not (isinstance(value, Mapping) and value.get("source") in _SECRET_SOURCES
            and isinstance(value.get("id"), str) and js_trim(value["id"])):
        return None
    if "provider" in value:  # a full SecretRef: exactly source, provider and id
        provider = value["provider"]
        if len(value) != 3 or not isinstance(provider, str) or not js_trim(provider):
            return None
    else:
        provider = "default"
    source, ref_id = value["source"], js_trim(value["id"])
    return ("env" if provider == "default" else "provider", ref_id) if source == "env" else (source, ref_id)
