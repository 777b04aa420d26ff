"""Tool-name normalisation and the gateway's HTTP hard deny list, owner-only layer and overrides."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .tool_lists import (
    HTTP_DENY_2026_4_26, HTTP_DENY_2026_9_6, OWNER_ONLY_2026_9_6, OWNER_ONLY_SIDECAR_REVIEW, TOOL_ALIASES_2026_9_6,
)

# Every alias spelling is folded before lookup, so the union holds post-alias names only.
HARD_DENY = frozenset(TOOL_ALIASES_2026_9_6.get(n, n) for n in HTTP_DENY_2026_9_6 | HTTP_DENY_2026_4_26)
OWNER_ONLY = OWNER_ONLY_2026_9_6 | OWNER_ONLY_SIDECAR_REVIEW

# Real core and plugin tool names are ASCII snake case, sometimes namespaced (`server__exec`,
# `mcp.tool`, `ns:tool`); anything else is a look-alike or an injection attempt (corpus J1, J4).
_STRICT_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,127}")
# What JavaScript's String.prototype.trim removes: Python's str.strip() also strips \x1c-\x1f and
# \x85 but keeps U+FEFF, so a name padded with those would be read differently by the two.
JS_WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def js_trim(value: str) -> str:
    """`value.trim()` as the gateway (JavaScript) computes it."""
    return value.strip(JS_WHITESPACE)


def well_formed(text: str) -> str:
    """A JavaScript string as UTF-8 sees it (USVString, `Buffer.from(text, "utf8")`): each lone
    surrogate becomes U+FFFD. ASCII text, every credential and nearly every target, has none and
    is returned as it is: this runs on every secret compared and every target parsed."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def normalize_policy_name(name: str) -> str:
    """Lower-case and alias, as upstream's normalizeToolPolicyName does for config entries."""
    lowered = js_trim(name).lower()
    return TOOL_ALIASES_2026_9_6.get(lowered, lowered)


@dataclass(frozen=True)
class ToolName:
    """A requested tool name after normalisation; `acceptable` is False for look-alikes."""

    name: str
    acceptable: bool


def normalize_tool_name(raw: str) -> ToolName:
    """Lower-case, trim, alias; a name sent with any non-ASCII character (a look-alike, one NFKC or
    lower() would map onto ASCII, as K onto k) or outside the charset is unusable."""
    aliased = normalize_policy_name(raw)
    acceptable = raw.isascii() and _STRICT_NAME.fullmatch(aliased) is not None
    return ToolName(aliased, acceptable)


@dataclass(frozen=True)
class ToolGate:
    """The final HTTP filter of tool-resolution.ts: deny-minus-allow ∪ owner-only ∪ deny."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, allow: Iterable[str], deny: Iterable[str]) -> "ToolGate":
        return cls(frozenset(map(normalize_policy_name, allow)), frozenset(map(normalize_policy_name, deny)))

    def refusal(self, tool: ToolName, *, owner: bool) -> str | None:
        """Why this filter removes the tool (for the audit line and `explain`), or None."""
        if not tool.acceptable:
            return "a look-alike name (not ASCII snake case)"
        if tool.name in self.deny:
            return f"gateway.tools.deny lists {tool.name!r}"
        if tool.name in HARD_DENY and tool.name not in self.allow:
            return f"{tool.name!r} is on the HTTP hard deny list and gateway.tools.allow does not lift it"
        if not owner and tool.name in OWNER_ONLY:
            whose = "" if tool.name in OWNER_ONLY_2026_9_6 else " (the sidecar's: its actions are admin-only methods)"
            return f"{tool.name!r} is owner-only{whose} and the caller lacks operator.admin"
        return None
