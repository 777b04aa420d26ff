"""sidecar.toolpolicy: the HTTP hard deny list, owner-only layer, gateway.tools overrides and
tool-name normalisation (reference §5, cases 58-67; corpus J1, J4)."""

from __future__ import annotations

import pytest

from sidecar.tool_lists import HTTP_DENY_2026_4_26, HTTP_DENY_2026_9_6, OWNER_ONLY_2026_9_6, OWNER_ONLY_SIDECAR_REVIEW
from sidecar.toolpolicy import HARD_DENY, OWNER_ONLY, ToolGate, ToolName, normalize_policy_name, normalize_tool_name

# The union over 2026.9.6 (21) and 2026.4.26 (12 + whatsapp_login), aliases folded: 22 names.
EXPECTED_HARD_DENY = sorted({
    "exec", "spawn", "shell", "fs_write", "fs_delete", "fs_move", "apply_patch", "terminal", "portal",
    "sessions_spawn", "sessions_send", "conversations_list", "conversations_send", "conversations_turn",
    "automations", "gateway", "plugins", "nodes", "computer", "mobile_ui", "openclaw", "whatsapp_login",
})
GATEWAY_OWNER_ONLY = sorted({
    "automations", "gateway", "plugins", "sessions", "screen", "terminal", "portal", "conversations_list",
    "conversations_send", "conversations_turn", "nodes", "computer", "mobile_ui", "openclaw",
})
# Ours: the gateway gives them to non-owners, and their actions are admin-only methods (red team).
EXPECTED_OWNER_ONLY = sorted({*GATEWAY_OWNER_ONLY, "skill_workshop", "secrets", "browser"})


def gate(allow=(), deny=()) -> ToolGate:
    return ToolGate.from_config(allow, deny)


def blocked(name: str, *, owner: bool, allow=(), deny=()) -> bool:
    return gate(allow, deny).refusal(normalize_tool_name(name), owner=owner) is not None


def test_tables() -> None:
    assert len(HTTP_DENY_2026_9_6) == 21
    assert len(HTTP_DENY_2026_4_26) == 13
    assert sorted(HARD_DENY) == EXPECTED_HARD_DENY and len(HARD_DENY) == 22
    assert sorted(OWNER_ONLY_2026_9_6) == GATEWAY_OWNER_ONLY
    assert sorted(OWNER_ONLY) == EXPECTED_OWNER_ONLY == sorted(OWNER_ONLY_2026_9_6 | OWNER_ONLY_SIDECAR_REVIEW)


@pytest.mark.parametrize("name", EXPECTED_HARD_DENY)
@pytest.mark.parametrize("owner", [True, False])
def test_hard_deny_blocks_even_owners(name: str, owner: bool) -> None:
    """Case 64: the hard deny list applies to owners too."""
    assert blocked(name, owner=owner)


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("bash", "exec"), ("BASH", "exec"), (" Bash ", "exec"), ("apply-patch", "apply_patch"),
        ("Apply-Patch", "apply_patch"), ("cron", "automations"), ("CRON", "automations"), ("EXEC", "exec"),
        (" exec ", "exec"), ("Sessions_Spawn", "sessions_spawn"),
    ],
)
def test_aliases_and_case_are_folded_then_blocked(spelling: str, canonical: str) -> None:
    """J1 and case 63: aliases resolve to the denied name (message names the post-alias tool)."""
    tool = normalize_tool_name(spelling)
    assert tool == ToolName(canonical, True)
    assert blocked(spelling, owner=True)


@pytest.mark.parametrize("name", ["agents_list", "session_status", "sessions_list", "theme", "echo", "server__exec", "mcp.search", "ns:tool", "web-fetch"])
@pytest.mark.parametrize("owner", [True, False])
def test_ordinary_tools_pass(name: str, owner: bool) -> None:
    assert not blocked(name, owner=owner)


# ---- gateway.tools.allow / deny ---------------------------------------------------------------


@pytest.mark.parametrize(
    "allow, name, owner, is_blocked",
    [
        (["sessions_spawn"], "sessions_spawn", True, False),  # case 59
        (["sessions_spawn"], "sessions_spawn", False, False),
        ([], "sessions_spawn", True, True),  # case 58
        (["gateway"], "gateway", False, True),  # case 60: operator.write → 404 (owner-only stays)
        (["gateway"], "gateway", True, False),  # case 60: admin / Bearer → reaches the tool
        (["cron", "gateway", "nodes"], "cron", False, True),  # case 62
        (["cron", "gateway", "nodes"], "gateway", False, True),
        (["cron", "gateway", "nodes"], "nodes", False, True),
        (["cron", "gateway", "nodes"], "automations", True, False),
        (["CRON"], "automations", True, False),  # case 67: re-enables automations for owners
        (["CRON"], "cron", True, False),
        (["automations"], "cron", True, False),
        (["bash"], "exec", True, False),  # allow ["bash"] re-enables exec
        (["Apply-Patch"], "apply_patch", True, False),
        (["exec"], "shell", True, True),  # allow removes only the entries it names
        (["*"], "exec", True, True),  # no glob expansion at the final filter
        (["sessions"], "sessions", False, True),  # allow cannot lift owner-only
        (["screen"], "screen", False, True),
    ],
)
def test_allow_removes_only_default_deny_entries(allow: list[str], name: str, owner: bool, is_blocked: bool) -> None:
    assert blocked(name, owner=owner, allow=allow) is is_blocked


@pytest.mark.parametrize(
    "allow, deny, name",
    [
        (["gateway"], ["gateway"], "gateway"),  # case 61: deny wins
        (["CRON"], ["automations"], "cron"),
        (["cron"], ["CRON"], "automations"),
        ([], ["browser"], "browser"),  # case 66
        ([], ["Browser"], "BROWSER"),
        ([], ["bash"], "exec"),
        ([], ["agents_list"], " agents_list "),
    ],
)
@pytest.mark.parametrize("owner", [True, False])
def test_deny_wins(allow: list[str], deny: list[str], name: str, owner: bool) -> None:
    assert blocked(name, owner=owner, allow=allow, deny=deny)


@pytest.mark.parametrize("name", EXPECTED_OWNER_ONLY)
def test_owner_only_blocks_non_owners(name: str) -> None:
    """Cases 60, 62, 65, 76: not-owner callers never reach owner-only tools, allow list or not."""
    assert blocked(name, owner=False, allow=EXPECTED_HARD_DENY)


@pytest.mark.parametrize("name", ["sessions", "screen", "skill_workshop", "secrets", "browser"])
def test_owner_only_tools_available_to_owners(name: str) -> None:
    """Case 65: sessions/screen are owner-only but not hard-denied."""
    assert not blocked(name, owner=True)


# ---- normalisation: look-alikes and odd names (J1, J4) ----------------------------------------

UNACCEPTABLE = [
    pytest.param("ｅｘｅｃ", id="fullwidth"),
    pytest.param("ex\u200bec", id="zero-width-space"),
    pytest.param("ex\u200dec", id="zero-width-joiner"),
    pytest.param("\ufeffexec", id="bom"),
    pytest.param("ex\u00adec", id="soft-hyphen"),
    pytest.param("ſhell", id="long-s"),
    pytest.param("ｂａｓｈ", id="fullwidth-alias"),
    pytest.param("agents_list\u0301", id="combining-mark"),
    pytest.param("аgents_list", id="cyrillic-a"),
    pytest.param("agents\u2024list", id="one-dot-leader"),
    pytest.param("ⅇxec", id="double-struck-e"),
    pytest.param("agents list", id="inner-space"),
    pytest.param("agents\tlist", id="tab"),
    pytest.param("agents\nlist", id="newline"),
    pytest.param("agents/list", id="slash"),
    pytest.param("_agents_list", id="leading-underscore"),
    pytest.param("-agents", id="leading-dash"),
    pytest.param(".agents", id="leading-dot"),
    pytest.param("a" * 129, id="129-chars"),
    pytest.param("x" * 10_000, id="10k-chars"),
    pytest.param("exec\x00", id="nul"),
    pytest.param("agents_list;", id="semicolon"),
    # ASCII separators JavaScript's trim keeps (the gateway reads no such tool) and Python's
    # strip() removes (mutation testing: strip() for js_trim survived)
    pytest.param("\x1cagents_list", id="file-separator"),
    pytest.param("agents_list\x1f", id="unit-separator"),
]


@pytest.mark.parametrize("name", UNACCEPTABLE)
@pytest.mark.parametrize("owner", [True, False])
def test_look_alike_and_odd_names_are_refused(name: str, owner: bool) -> None:
    tool = normalize_tool_name(name)
    assert not tool.acceptable
    assert gate(allow=["*", name, "exec", "agents_list"]).refusal(tool, owner=owner) == \
        "a look-alike name (not ASCII snake case)"


@pytest.mark.parametrize("name", ["a", "a" * 128, "agents_list", "server__exec", "mcp.tool", "ns:tool", "web-fetch", "0day", "tool_v2"])
def test_strict_charset_accepts_real_names(name: str) -> None:
    assert normalize_tool_name(name).acceptable


@pytest.mark.parametrize(
    "raw, normalized",
    [(" Exec ", "exec"), ("BASH", "exec"), ("apply-patch", "apply_patch"), ("Cron", "automations"), ("Foo", "foo")],
)
def test_normalize_policy_name(raw: str, normalized: str) -> None:
    assert normalize_policy_name(raw) == normalized


@pytest.mark.parametrize("name, owner, why", [
    ("agents_list", False, "gateway.tools.deny lists 'agents_list'"),
    ("bash", True, "'exec' is on the HTTP hard deny list and gateway.tools.allow does not lift it"),
    ("sessions", False, "'sessions' is owner-only and the caller lacks operator.admin"),
    ("secrets", False, "'secrets' is owner-only (the sidecar's: its actions are admin-only methods) and the caller "
                       "lacks operator.admin"),
])
def test_a_refusal_says_which_layer_removed_the_tool(name: str, owner: bool, why: str) -> None:
    """The words `explain` and the audit line show: which list, and whether the gateway's owner-only
    list or the sidecar's own review put a tool there."""
    assert gate(deny=["agents_list"]).refusal(normalize_tool_name(name), owner=owner) == why
