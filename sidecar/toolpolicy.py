"""Tool-name normalisation and the gateway's HTTP hard deny list, owner-only layer and overrides."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .tool_lists import HTTP_DENY_2026_4_26, HTTP_DENY_2026_9_6, OWNER_ONLY_2026_9_6, TOOL_ALIASES_2026_9_6

# Every alias spelling is folded before lookup, so the union holds post-alias names only.
HARD_DENY = frozenset(TOOL_ALIASES_2026_9_6.get(n, n) for n in HTTP_DENY_2026_9_6 | HTTP_DENY_2026_4_26)
OWNER_ONLY = OWNER_ONLY_2026_9_6

# Real core and plugin tool names are ASCII snake case, sometimes namespaced (`server__exec`,
# `mcp.tool`, `ns:tool`); anything else is a look-alike or an injection attempt (corpus J1, J4).
_STRICT_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,127}")


def normalize_policy_name(name: str) -> str:
    """Lower-case and alias, as upstream's normalizeToolPolicyName does for config entries."""
    lowered = name.strip().lower()
    return TOOL_ALIASES_2026_9_6.get(lowered, lowered)


@dataclass(frozen=True)
class ToolName:
    """A requested tool name after normalisation; `acceptable` is False for look-alikes."""

    name: str
    acceptable: bool


def normalize_tool_name(raw: str) -> ToolName:
    """Lower-case, trim, alias, then NFKC; a name NFKC changes or outside the charset is unusable."""
    aliased = normalize_policy_name(raw)
    folded = unicodedata.normalize("NFKC", aliased)
    # Checked on the name as sent too: lower() maps some non-ASCII letters onto ASCII (K → k).
    acceptable = raw.isascii() and folded == aliased and _STRICT_NAME.fullmatch(folded) is not None
    return ToolName(aliased, acceptable)


@dataclass(frozen=True)
class ToolGate:
    """The final HTTP filter of tool-resolution.ts: deny-minus-allow ∪ owner-only ∪ deny."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, allow: Iterable[str], deny: Iterable[str]) -> "ToolGate":
        return cls(frozenset(map(normalize_policy_name, allow)), frozenset(map(normalize_policy_name, deny)))

    def blocks(self, tool: ToolName, *, owner: bool) -> bool:
        if not tool.acceptable:
            return True
        if tool.name in self.deny:
            return True
        if tool.name in HARD_DENY and tool.name not in self.allow:
            return True
        return not owner and tool.name in OWNER_ONLY
