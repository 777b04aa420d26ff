"""sidecar.toolchain: the gateway's tool policy chain from config (issue 12).

Ground truth: the 163 cases run against the real 2026.9.6 modules (tests/data/toolchain/
verified-2026.9.6.jsonl: config, request, the gateway's answer), the reference's conformance
cases 58-75 that config decides, and the reference's catalogue lists. Every layer gets a test in
which it alone refuses.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar import envelopes
from sidecar.body import read_invoke_body
from sidecar.config import RULE_KEYS, OpenClawRules
from sidecar.tool_lists import HTTP_DENY_2026_9_6, OWNER_ONLY_2026_9_6
from sidecar.toolchain import (
    Policy, SessionError, ToolChain, ToolDecision, ToolRequest, agent_id_strict, catalogue, first_match,
    _account_id, normalize_session_key, pick_policy,
)
from tests.gateway.oracle import call_gateway, needs_gateway

VERIFIED = [json.loads(line) for line in (Path(__file__).parents[1] / "data/toolchain/verified-2026.9.6.jsonl").open()]


def chain(config: dict[str, Any] | None = None) -> ToolChain:
    return ToolChain(OpenClawRules.model_validate({k: v for k, v in (config or {}).items() if k in RULE_KEYS}))


def decide(config: dict[str, Any] | None, body: dict[str, Any], *, owner: bool = True, channel: str | None = None,
           account: str | None = None) -> ToolDecision:
    invoke = read_invoke_body(json.dumps(body).encode())
    return chain(config).decide(ToolRequest(invoke, owner, channel, account))


def refusing_layers(decision: ToolDecision) -> list[str]:
    return [step.layer for step in decision.steps if step.verdict == "deny"]


# ---- the catalogue, against the reference's lists (§5, §6) ------------------------------------------


def test_catalogue_is_the_pinned_release_and_matches_the_reference_lists() -> None:
    cat = catalogue()
    assert cat.version == "2026.9.6" and len(cat.core_ids) == 61
    assert set(cat.profiles) == {"minimal", "coding", "messaging", "full"}
    assert cat.profiles["minimal"] == ("session_status", "gateway") and cat.profiles["full"] == ("*",)
    assert {"automations", "gateway", "plugins", "screen", "terminal", "portal", "get_goal", "image_generate",
            "bundle-mcp"} <= set(cat.profiles["coding"])
    assert {"message", "sessions_send", "secrets", "theme", "ask_user", "session_status", "gateway",
            "bundle-mcp"} <= set(cat.profiles["messaging"])
    # Reference §6 lists 13 groups: `group:plugins` is the plugin expansion, not a catalogue group.
    assert {g.removeprefix("group:") for g in cat.groups} == {
        "fs", "runtime", "web", "memory", "sessions", "ui", "messaging", "automation", "nodes", "agents", "media", "openclaw"}
    named = {t for members in (*cat.groups.values(), *cat.profiles.values()) for t in members} - {"*", "bundle-mcp"}
    assert named <= cat.core_ids
    assert HTTP_DENY_2026_9_6 - {"spawn", "shell", "fs_write", "fs_delete", "fs_move"} <= cat.core_ids
    assert OWNER_ONLY_2026_9_6 <= cat.core_ids


def test_catalogue_filters_and_fixed_lists() -> None:
    cat = catalogue()
    node = cat.provider_filters["node"]
    assert node["mode"] == "allowOnly" and set(node["allow"]) == {"canvas", "pdf", "tts", "view_image", "web_fetch", "web_search"}
    assert cat.provider_filters["voice"]["deny"] == cat.provider_filters["discord-voice"]["deny"] == ["tts"]
    assert set(cat.subagent_deny_always) == {"gateway", "agents_list", "openclaw", "session_status", "progress_card",
                                             "automations", "message", "sessions_send", "conversations_list",
                                             "conversations_send", "conversations_turn"}
    assert set(cat.subagent_deny_leaf) == {"subagents", "sessions_list", "sessions_history", "sessions_search", "sessions_spawn"}
    never = set(cat.surface["neverBuilt"])
    assert {"ls", "read", "write", "edit", "apply_patch", "exec", "process", "view_image", "pdf"} <= never <= cat.core_ids
    assert {"browser", "canvas", "memory_search", "memory_get", "code_execution", "x_search"} <= set(cat.plugin_of) & cat.core_ids


# ---- matching (§4) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("entries, name, expected", [
    (["*"], "agents_list", "*"),
    (["sess*"], "sessions_list", "sess*"),
    (["SESSIONS_*"], "sessions_list", "SESSIONS_*"),  # lower-cased like every entry
    (["ess*"], "sessions_list", None),  # anchored at the start
    (["*list"], "sessions_list", "*list"),
    (["*list"], "sessions_list_x", None),  # anchored at the end
    (["sessions.*"], "sessions_list", None),  # every other character is literal
    (["sessions?list"], "sessions_list", None),
    (["cron*"], "automations", None),  # aliases apply to whole names only
    (["cron"], "automations", "cron"),
    (["CRON"], "automations", "CRON"),
    (["bash"], "exec", "bash"),
    (["apply-patch"], "apply_patch", "apply-patch"),
    (["group:sessions"], "sessions_list", "group:sessions"),
    (["group:sessions"], "agents_list", None),
    (["update_plan"], "progress_card", "update_plan"),  # shipped rename
    (["canvas"], "show_widget", "canvas"),
    (["file-transfer"], "dir_list", "file-transfer"),  # a plugin id stands for its tools
    (["memory-core"], "intent", "memory-core"),
    (["group:plugins"], "file_fetch", "group:plugins"),
    (["group:plugins"], "browser", "group:plugins"),  # a core id the browser plugin provides
    (["group:plugins"], "some_mcp_tool", "group:plugins"),  # an unknown name can only be a plugin's
    (["group:plugins"], "agents_list", None),
    (["", "  ", 5, None], "agents_list", None),
    (["unknown_plugin_id"], "some_mcp_tool", None),  # unknown ids match nothing
    (["sessions_*", "sessions_list"], "sessions_list", "sessions_*"),  # the first entry that matches is named
    (["*", " * "], "theme", "*"),
])
def test_entries_match_as_upstream(entries: list[Any], name: str, expected: str | None) -> None:
    assert first_match(entries, name) == expected


@pytest.mark.parametrize("policy, name, allowed", [
    (Policy("p", ("agents_list",), ("agents_list",)), "agents_list", False),  # deny first
    (Policy("p", None, ("group:sessions",)), "sessions_list", False),
    (Policy("p", None, ()), "agents_list", True),  # no allow list
    (Policy("p", (), ()), "agents_list", True),  # an empty allow list allows everything not denied
    (Policy("p", ("", " "), ()), "agents_list", True),  # blank entries are dropped
    (Policy("p", ("session_status",), ()), "agents_list", False),
    (Policy("p", ("group:plugins",), ()), "agents_list", False),  # hides core tools
    (Policy("p", ("write",), ()), "apply_patch", True),  # write allows apply_patch
    (Policy("p", ("wr*",), ()), "apply_patch", True),
    (Policy("p", ("edit",), ()), "apply_patch", False),
    (Policy("p", ("write",), ()), "exec", False),  # write covers apply_patch alone
])
def test_layer_judgement(policy: Policy, name: str, allowed: bool) -> None:
    assert policy.judge(name)[0] is allowed


# ---- every layer alone refusing -------------------------------------------------------------------

ALONE = [
    ("lookup", {}, {"name": "Agents_List"}, {}),
    ("http-surface", {}, {"name": "read"}, {}),
    ("http-surface", {"tools": {"web": {"fetch": {"enabled": False}}}}, {"name": "web_fetch"}, {}),
    ("http-surface", {"tools": {"updatePlan": False}}, {"name": "progress_card"}, {}),
    ("http-surface", {}, {"name": "sessions_yield", "sessionKey": "agent:main:cron:job1"}, {}),
    ("http-surface", {}, {"name": "ask_user", "sessionKey": "acp:x"}, {}),
    ("http-surface", {"agents": {"defaults": {"sandbox": {"mode": "all"}}}, "tools": {"sandbox": {"tools": {"allow": []}}}},
     {"name": "skill_workshop"}, {}),
    ("message-provider", {}, {"name": "agents_list"}, {"channel": " NODE "}),
    ("message-provider", {}, {"name": "tts"}, {"channel": "voice"}),
    ("message-provider", {}, {"name": "some_plugin_tool"}, {"channel": "node"}),  # allowOnly drops plugin names too
    ("http-surface", {"agents": {"list": [{"id": "openclaw"}]}, "gateway": {"tools": {"allow": ["openclaw"]}}},
     {"name": "openclaw", "sessionKey": "agent:openclaw:main"}, {}),
    ("profile", {"tools": {"profile": "minimal"}}, {"name": "agents_list"}, {}),
    # The agent's alsoAllow replaces the global one even when empty.
    ("profile", {"tools": {"profile": "minimal", "alsoAllow": ["agents_list"]},
                 "agents": {"list": [{"id": "main", "tools": {"alsoAllow": []}}]}}, {"name": "agents_list"}, {}),
    ("profile", {"tools": {"profile": "minimal", "alsoAllow": ["agents_list"]},
                 "agents": {"list": [{"id": "main", "tools": {"alsoAllow": ["theme"]}}]}}, {"name": "agents_list"}, {}),
    ("tools", {"tools": {"deny": ["agents_*"]}}, {"name": "agents_list"}, {}),
    ("tools", {"tools": {"allow": ["session_status"]}}, {"name": "agents_list"}, {}),
    ("agent", {"agents": {"list": [{"id": "ops", "tools": {"deny": ["agents_list"]}}]}}, {"name": "agents_list"}, {}),
    ("agent", {"agents": {"defaults": {"tools": {"allow": ["theme"]}}}}, {"name": "agents_list"}, {}),
    ("group", {"channels": {"irc": {"groups": {"123": {"tools": {"deny": ["agents_list"]}}}}}},
     {"name": "agents_list", "sessionKey": "irc:group:123"}, {}),
    ("group", {"channels": {"irc": {"accounts": {"work": {"groups": {"*": {"toolsBySender": {"*": {"deny": ["agents_list"]}}}}}}}}},
     {"name": "agents_list", "sessionKey": "agent:main:irc:channel:7:thread:9"}, {"account": "Work"}),
    ("sandbox", {"agents": {"defaults": {"sandbox": {"mode": "non-main"}}}}, {"name": "agents_list", "sessionKey": "side"}, {}),
    # An explicit sandbox `group:plugins` re-allows no default-denied name (upstream expands no plugin groups there).
    ("sandbox", {"agents": {"defaults": {"sandbox": {"mode": "all"}}}, "tools": {"sandbox": {"tools": {"allow": ["group:plugins"]}}}},
     {"name": "feishu"}, {}),
    ("group", {"channels": {"irc": {"groups": {"123:topic:9": None, "123": {"tools": {"deny": ["agents_list"]}}}}}},
     {"name": "agents_list", "sessionKey": "irc:group:123:topic:9"}, {}),  # a falsy candidate is passed over
    # An agent's sandbox mode, even "", wins over the defaults' (upstream `agentSandbox?.mode ?? agent?.mode`).
    ("sandbox", {"agents": {"defaults": {"sandbox": {"mode": "off"}}, "list": [{"id": "main", "sandbox": {"mode": ""}}]}},
     {"name": "agents_list", "sessionKey": "side"}, {}),
    ("subagent", {}, {"name": "session_status", "sessionKey": "subagent:x"}, {}),
    ("subagent", {"agents": {"defaults": {"subagents": {"maxSpawnDepth": 1.5}}}},  # floored: depth 1 is the leaf
     {"name": "sessions_list", "sessionKey": "agent:main:subagent:a"}, {}),
    ("subagent", {"agents": {"defaults": {"subagents": {"maxSpawnDepth": 2}}}},
     {"name": "sessions_list", "sessionKey": "agent:main:subagent:a:subagent:b"}, {}),
    ("subagent", {"tools": {"subagents": {"tools": {"deny": ["theme"]}}}}, {"name": "theme", "sessionKey": "subagent:x"}, {}),
    ("gateway", {}, {"name": "sessions_spawn"}, {}),
    ("gateway", {"gateway": {"tools": {"deny": ["agents_*"]}}}, {"name": "agents_list"}, {}),
    ("gateway", {}, {"name": "sessions"}, {"owner": False}),
]


@pytest.mark.parametrize("layer, config, body, request_kw", ALONE, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALONE)])
def test_each_layer_alone_refuses(layer: str, config: dict[str, Any], body: dict[str, Any], request_kw: dict[str, Any]) -> None:
    decision = decide(config, body, **request_kw)
    assert refusing_layers(decision) == [layer], decision.steps
    assert decision.status == 404 and decision.message == f"Tool not available: {body['name']}"
    assert decision.reason == "tool_denied" and decision.detail is not None and decision.detail.startswith(f"{layer}: ")


def test_without_those_rules_the_same_requests_pass() -> None:
    """The control for the table above: the bare config forwards each tool the layers refused."""
    for body, request_kw in (({"name": "agents_list"}, {"channel": "webchat"}), ({"name": "tts"}, {"channel": "discord"}),
                             ({"name": "theme", "sessionKey": "irc:group:123"}, {}), ({"name": "sessions"}, {})):
        decision = decide({}, body, **request_kw)
        assert not decision.refused, decision.steps


def test_by_provider_and_sender_policies_never_apply_on_http() -> None:
    config = {"tools": {"byProvider": {"openai": {"deny": ["agents_list"]}}, "toolsBySender": {"*": {"deny": ["agents_list"]}}}}
    decision = decide(config, {"name": "agents_list"}, channel="webchat")
    assert not decision.refused
    assert {s.layer: s.verdict for s in decision.steps}["byProvider"] == "n/a"


def test_agent_by_provider_policy_is_reported_as_not_applying() -> None:
    config = {"agents": {"list": [{"id": "main", "tools": {"byProvider": {"openai": {"deny": ["agents_list"]}}}}]}}
    decision = decide(config, {"name": "agents_list"})
    assert not decision.refused and {s.layer: s.verdict for s in decision.steps}["byProvider"] == "n/a"


def test_pick_policy_unions_also_allow_as_upstream() -> None:
    """unionAllow: alsoAllow widens a non-empty allow list; with `allow: []` it means '*' too."""
    narrow = pick_policy("t", {"allow": ["session_status"], "alsoAllow": ["theme"]})
    assert narrow is not None and narrow.judge("theme")[0] and not narrow.judge("agents_list")[0]
    wide = pick_policy("t", {"allow": [], "alsoAllow": ["theme"]})
    assert wide is not None and wide.judge("agents_list")[0]


@pytest.mark.parametrize("sandbox_tools, name, allowed", [
    ({"allow": [], "alsoAllow": ["theme"]}, "agents_list", True),  # mergeAllowlist: `allow: []` stays empty
    ({"allow": ["group:automation"]}, "automations", True),  # an explicit group lifts the default deny
])
def test_sandbox_policy_explicit_lists(sandbox_tools: dict[str, Any], name: str, allowed: bool) -> None:
    policy = chain({"tools": {"sandbox": {"tools": sandbox_tools}}})._sandbox("main")
    assert policy.judge(name)[0] is allowed, policy


def test_an_empty_account_groups_replaces_the_channels_when_several_accounts_exist() -> None:
    groups = {"123": {"tools": {"deny": ["agents_list"]}}}
    body = {"name": "agents_list", "sessionKey": "irc:group:123"}
    several = {"channels": {"irc": {"groups": groups, "accounts": {"work": {"groups": {}}, "home": {}}}}}
    assert not decide(several, body, account="work").refused
    sole = {"channels": {"irc": {"groups": groups, "accounts": {"work": {"groups": {}}}}}}
    assert refusing_layers(decide(sole, body, account="work")) == ["group"]


@needs_gateway
def test_account_groups_replace_the_channels_as_the_gateway_resolves_them() -> None:
    groups = {"123": {"tools": {"deny": ["agents_list"]}}}
    cases = [({"channels": {"irc": {"groups": groups, "accounts": {"work": {"groups": {}}, "home": {}}}}}, "work"),
             ({"channels": {"irc": {"groups": groups, "accounts": {"work": {"groups": {}}}}}}, "work"),
             ({"channels": {"irc": {"groups": groups, "accounts": {"Work": {"groups": {"9": {}}}}}}}, " WORK ")]
    theirs = call_gateway(["group-policy:resolveChannelGroups"], """
        answer(input.map(([cfg, account]) => gateway.resolveChannelGroups(cfg, "irc", account) ?? null));""", cases)
    ours = [chain(config)._channel_groups("irc", _account_id(account))[0] for config, account in cases]
    assert ours == theirs


def test_sandbox_agent_list_replaces_the_global_one_even_when_empty() -> None:
    config = {"tools": {"sandbox": {"tools": {"allow": ["theme"]}}},
              "agents": {"list": [{"id": "main", "tools": {"sandbox": {"tools": {"allow": []}}}}]}}
    assert chain(config)._sandbox("main").judge("agents_list")[0]


def test_subagent_depth_counts_whole_subagent_segments() -> None:
    policy = chain({"agents": {"defaults": {"subagents": {"maxSpawnDepth": 2}}}})._subagent("agent:main:subagent:a:xsubagent:b")
    assert policy is not None and "orchestrator" in policy.source


def test_what_needs_gateway_state_is_left_to_the_gateway() -> None:
    for body in ({"name": "file_fetch"}, {"name": "some_plugin_tool"}, {"name": "agents_wait"}, {"name": "image_generate"},
                 {"name": "agents_list", "sessionKey": "agent:main:harness:codex:x"}):
        decision = decide({}, body)
        assert not decision.refused and any(s.verdict == "gateway" for s in decision.steps), body


def test_plugin_tools_pass_the_profile_and_core_ids_do_not() -> None:
    assert not decide({"tools": {"profile": "minimal"}}, {"name": "file_fetch"}).refused
    assert refusing_layers(decide({"tools": {"profile": "minimal"}}, {"name": "browser"})) == ["profile"]
    assert refusing_layers(decide({"tools": {"profile": "minimal", "allow": ["session_status"]}}, {"name": "file_fetch"})) == ["tools"]


# ---- sessions and agents (§1) ----------------------------------------------------------------------

TWO = {"agents": {"list": [{"id": "a"}, {"id": "b"}]}}


@pytest.mark.parametrize("config, body, message", [
    ({}, {"sessionKey": "agent:main"}, 'malformed session key "agent:main"'),  # case 74
    ({}, {"sessionKey": " agent::x "}, 'malformed session key "agent::x"'),
    ({}, {"sessionKey": "agent:main:"}, 'malformed session key "agent:main:"'),
    ({}, {"sessionKey": "AGENT:main::x"}, 'malformed session key "AGENT:main::x"'),
    ({}, {"agentId": "ghost"}, 'Unknown agent id "ghost"'),  # case 75
    ({}, {"agentId": "!!!"}, 'Unknown agent id "!!!"'),
    ({}, {"agentId": "Main"}, 'agent id "Main" does not match session agent "main"'),
    ({"agents": {"list": [{"id": "main"}, {"id": "other"}]}}, {"sessionKey": "agent:main:main", "agentId": "other"},
     'agent "other" does not match session key agent "main"'),  # case 75 in 2026.9.6's wording
    (TWO, {}, 'Multiple agents are configured, but session key "main" has no explicit owner. '
              "Pass agentId or use an agent-prefixed session key."),
    ({"agents": {"list": [{"id": "a", "default": True}, {"id": "b", "default": True}]}}, {"sessionKey": " x "},
     'Multiple agents are configured, but session key "x" has no explicit owner. Pass agentId or use an agent-prefixed session key.'),
    ({"session": {"scope": "global"}}, {"sessionKey": "agent:zz:main"}, 'Unknown agent id "zz"'),
    ({"session": {"store": "/var/lib/sessions.json"}, "agents": {"defaults": {"sessionStore": {"agentId": "gone"}}}},
     {"sessionKey": "x"}, 'session key belongs to retired agent "gone"'),
    # The sidecar's own refusal: upstream would run these with no agent policy at all.
    (TWO, {"sessionKey": "agent:c:x"}, 'Unknown agent id "c"'),
    ({}, {"sessionKey": "agent:Foo Bar:x"}, 'Unknown agent id "foo bar"'),
    ({"agents": {"list": [{"id": "ops", "default": True, "tools": {"deny": ["agents_list"]}}]}},
     {"sessionKey": "agent:main:main"}, 'Unknown agent id "main"'),
])
def test_session_and_agent_errors_are_the_gateways_400(config: dict[str, Any], body: dict[str, Any], message: str) -> None:
    decision = decide(config, {"name": "agents_list", **body})
    assert (decision.status, decision.message, decision.reason) == (400, message, "session_invalid")
    assert decision.envelope() == envelopes.invalid_request(message)
    assert decision.envelope().body == json.dumps(
        {"ok": False, "error": {"type": "invalid_request", "message": message}}, separators=(",", ":")).encode()


@pytest.mark.parametrize("config, key, agent, stored", [
    ({"agents": {"list": [{"id": "a"}, {"id": "b", "default": True}]}}, None, "b", "agent:b:main"),
    ({"agents": {"ownership": "explicit", "defaults": {"systemAgent": {"agentId": "b"}}, "list": [{"id": "a"}, {"id": "b"}]}},
     "main", "b", "agent:b:main"),
    ({"agents": {"entries": {"x": {}}}}, None, "x", "agent:x:main"),
    ({"session": {"mainKey": "Work"}}, "WORK", "main", "agent:main:work"),
    ({"session": {"scope": "global"}}, "agent:main:main", "main", "global"),
    ({}, "agent:main:signal:group:AbC", "main", "agent:main:signal:group:AbC"),  # Signal ids keep their case
    ({}, "Discord:Group:ABC", "main", "agent:main:discord:group:abc"),
])
def test_session_resolution(config: dict[str, Any], key: str | None, agent: str, stored: str) -> None:
    session = chain(config).resolve_session(key, None)
    assert (session.agent, session.key) == (agent, stored)


def test_agent_ids_normalise_as_upstream() -> None:
    assert [agent_id_strict(v) for v in ("Main", " ops ", "Foo Bar", "!!!", "a" * 70, "ſ")] == \
        ["main", "ops", "foo-bar", None, "a" * 64, None]
    assert normalize_session_key(" AGENT:Main:matrix:group:!Room:Srv:thread:T1 ") == "agent:main:matrix:group:!Room:Srv:thread:T1"


SESSION_KEY_PARTS = (
    ("", "agent:main:", "AGENT:Main:", " agent:ops:"),
    ("matrix:group:", "Matrix:Channel:", "signal:group:", "SIGNAL:Group:", "discord:group:"),
    ("!AbC", " !AbC", "!AbC:Srv", " ABC:thread:XY", "!R:thread: T1 ", "AbC:THREAD:x", "\tAb", "Ab \u00a0", "\ufeffAb:Thread:C"),
    ("", " ", ":thread:Q", "\ufeff"),
)


@needs_gateway
def test_session_keys_keep_the_case_of_opaque_ids_as_the_gateway_keeps_it() -> None:
    """Matrix room tails and Signal group ids keep their case, the rest folds; where the gateway
    looks for a thread marker (in the trimmed tail) decides which letters keep theirs."""
    keys = ["".join(parts) for parts in itertools.product(*SESSION_KEY_PARTS)]
    theirs = call_gateway(["session-key:normalizeSessionKeyPreservingOpaquePeerIds"], """
        const normalize = gateway.normalizeSessionKeyPreservingOpaquePeerIds;
        answer(input.map((key) => normalize(key)));""", keys)
    differ = [(key, normalize_session_key(key), gateway) for key, gateway in zip(keys, theirs, strict=True)
              if normalize_session_key(key) != gateway]
    assert differ == [], f"{len(differ)} of {len(keys)} differ, first: {differ[:5]}"


# ---- the 163 verified cases --------------------------------------------------------------------------

# Where the sidecar is stricter than 2026.9.6 on purpose (module docstring).
STRICTER = {
    "key agent:other:main (unconfigured agent)", "two agents, key agent:c:x", "agent deny, key for unconfigured agent zz",
    "roster w/o main, key agent:main:main -> no agent policy", "gateway.tools.deny glob sess*",
    "gateway.tools.deny group:sessions",
}
# The gateway's 404 here comes from plugin state or a tool that does not exist: the sidecar
# forwards and says so in the trace.
GATEWAY_DECIDES = {
    "default cfg, no key, bogus tool", "AGENT:Main:x", "agentId main key agent:main:main", "two agents default b",
    "two agents default b, agentId a", "plugins.enabled false, file_fetch", "plugins.enabled false, memory_search",
    "memory slot none, memory_search", "plugins.entries.browser.enabled false", "plugins.deny browser",
    "plugins.allow [canvas], browser", "workboard (disabled by default plugin)", "llm-task optional",
    "harness", "bare harness",
}


@pytest.mark.parametrize("row", [r for r in VERIFIED if r["kind"] == "session"], ids=lambda r: r["label"])
def test_verified_session_resolution(row: dict[str, Any]) -> None:
    try:
        session = chain(row["config"]).resolve_session(row["sessionKey"], row["agentId"])
        assert {"agent": session.agent, "storedKey": session.key} == row["gateway"]
    except SessionError as exc:
        assert row["gateway"] == {"error": str(exc)}


@pytest.mark.parametrize("row", [r for r in VERIFIED if r["kind"] == "invoke" and r["body"].get("name", r["body"].get("tool"))],
                         ids=lambda r: r["label"])
def test_verified_invocations(row: dict[str, Any]) -> None:
    decision = decide(row["config"], row["body"], owner=row["owner"], channel=row.get("channel"), account=row.get("account"))
    gateway = row["gateway"]
    if row["label"] in STRICTER:
        assert decision.refused and gateway["status"] != decision.status
    elif row["label"] in GATEWAY_DECIDES:
        assert not decision.refused and any(s.verdict == "gateway" for s in decision.steps)
    else:
        assert (decision.status or 200) == gateway["status"], decision.steps
        if decision.refused:
            assert decision.message == gateway.get("message", f"Tool not available: {decision.name}")


# ---- conformance cases 58-75 (reference (c)) that config decides --------------------------------------

SETUP = {"agents": {"list": [{"id": "main", "default": True, "tools": {"allow": ["agents_list", "session_status"]}}]}}


def with_agent_allow(*names: str, gateway_allow: tuple[str, ...] = (), gateway_deny: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"agents": {"list": [{"id": "main", "default": True, "tools": {"allow": list(names)}}]},
            "gateway": {"tools": {"allow": list(gateway_allow), "deny": list(gateway_deny)}}}


def refused_404(decision: ToolDecision, name: str) -> bool:
    return decision.status == 404 and decision.envelope() == envelopes.tool_not_available(name)


def test_c58_c59_sessions_spawn_needs_gateway_allow() -> None:
    assert refused_404(decide(with_agent_allow("sessions_spawn"), {"tool": "sessions_spawn"}), "sessions_spawn")
    assert not decide(with_agent_allow("sessions_spawn", gateway_allow=("sessions_spawn",)), {"tool": "sessions_spawn"}).refused


def test_c60_to_c62_gateway_allow_reaches_owners_only_and_deny_wins() -> None:
    config = with_agent_allow("gateway", "automations", "nodes", gateway_allow=("gateway", "cron", "nodes"))
    assert refused_404(decide(config, {"tool": "gateway"}, owner=False), "gateway")
    assert not decide(config, {"tool": "gateway"}, owner=True).refused
    assert refused_404(decide(with_agent_allow("gateway", gateway_allow=("gateway",), gateway_deny=("gateway",)),
                              {"tool": "gateway"}), "gateway")
    for name, shown in (("cron", "automations"), ("gateway", "gateway"), ("nodes", "nodes")):
        assert refused_404(decide(config, {"tool": name}, owner=False), shown)


def test_c63_c64_cron_and_hard_denied_tools() -> None:
    assert refused_404(decide({}, {"tool": "cron"}), "automations")
    config = with_agent_allow("exec", "apply_patch", "nodes")
    assert [refusing_layers(decide(config, {"tool": n})) for n in ("exec", "apply_patch", "nodes")] == \
        [["http-surface", "gateway"], ["http-surface", "gateway"], ["gateway"]]


def test_c65_c66_c67_owner_only_deny_and_case_insensitive_allow() -> None:
    config = with_agent_allow("sessions", "screen")
    assert refused_404(decide(config, {"tool": "sessions"}, owner=False), "sessions")
    assert not decide(config, {"tool": "sessions"}, owner=True).refused
    assert refusing_layers(decide(config, {"tool": "screen"}, owner=True)) == ["http-surface"]  # never built on HTTP
    assert refused_404(decide({"gateway": {"tools": {"deny": ["browser"]}}}, {"tool": "browser"}), "browser")
    assert not decide({"gateway": {"tools": {"allow": ["CRON"]}}}, {"tool": "automations"}).refused


def test_c68_c69_c70_agent_deny_profile_also_allow_default_agent() -> None:
    assert refused_404(decide({"agents": {"list": [{"id": "main", "tools": {"deny": ["agents_list"]}}]}}, {"tool": "agents_list"}),
                       "agents_list")
    assert refused_404(decide({"tools": {"profile": "minimal"}}, {"tool": "agents_list"}), "agents_list")
    assert not decide({"tools": {"profile": "minimal", "alsoAllow": ["agents_list"]}}, {"tool": "agents_list"}).refused
    two = {"agents": {"list": [{"id": "main", "tools": {"deny": ["agents_list"]}},
                               {"id": "ops", "default": True, "tools": {"allow": ["agents_list"]}}]}}
    for body in ({"tool": "agents_list"}, {"tool": "agents_list", "sessionKey": "main"}):
        decision = decide(two, body)
        assert not decision.refused and decision.session is not None and decision.session.agent == "ops"


def test_c73_c74_c75_sessions() -> None:
    harness = decide(SETUP, {"tool": "agents_list", "sessionKey": "agent:main:harness:codex:supervision:native-thread"})
    assert not harness.refused and harness.steps[0].verdict == "gateway"  # only the gateway's store can tell
    assert decide(SETUP, {"tool": "agents_list", "sessionKey": "agent:main"}).message == 'malformed session key "agent:main"'
    assert decide(SETUP, {"tool": "agents_list", "agentId": "ghost"}).message == 'Unknown agent id "ghost"'


# ---- what a stream of strangers' long inputs leaves behind ------------------------------------------


@pytest.mark.parametrize("field", ["sessionKey", "agentId", "tool", "channel"])
def test_distinct_long_inputs_are_decided_but_not_kept(field: str) -> None:
    """Decisions and session-key parses are cached for a steady stream of callers; a caller who
    sends distinct 100 KB keys must not get 100 KB kept per request (4,096 of them filled memory)."""
    import gc
    import tracemalloc

    tools = chain()
    assert tools.decide(ToolRequest(read_invoke_body(b'{"tool":"agents_list"}'), True)).status is None

    def one(i: int) -> ToolDecision:
        long = f"{i:04d}" + "x" * 100_000
        body = {"tool": "agents_list", "sessionKey": "agent:main:main"}
        if field == "sessionKey":
            body["sessionKey"] = f"agent:main:{long}"
        elif field in ("agentId", "tool"):
            body[field] = long
        invoke = read_invoke_body(json.dumps(body).encode())
        return tools.decide(ToolRequest(invoke, True, long if field == "channel" else None))

    one(-1)  # first-use allocations (regexes, policies) are not what is measured
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30):
            one(i)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"{kept:,} bytes kept after 30 requests with 100 KB of {field}"
