"""Property-based tests of the pure pipeline (hypothesis).

For arbitrary methods, targets, header lists and bodies the pipeline returns a decision and never
raises; a forwarded /tools/invoke never carries a name the tool policy refuses; adding a hostile
header never turns a refusal into a forward. `make test` runs the bounded CI profile; set
HYPOTHESIS_PROFILE=long for a longer search.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import load_config
from tests.unit.fakes import NeverLimits
from sidecar.pipeline import Admitted, Forward, Pipeline, Refuse
from sidecar.rpc import RpcSession
from sidecar.body import read_invoke_body
from sidecar.toolchain import ToolRequest
from sidecar.view import RequestView

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TOKEN = "property-token"


def _pipeline() -> Pipeline:
    with tempfile.TemporaryDirectory(prefix="openclaw-sidecar-properties-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps({
            "gateway": {"auth": {"token": TOKEN}, "tools": {"deny": ["agents_list"]}},
            "sidecar": {"runtimeDir": str(Path(tmp) / "run")},
        }))
        return Pipeline(load_config(path, environ={}), NeverLimits())


PIPELINE = _pipeline()

METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "post", "CONNECT", "OPTIONS", ""]) | st.text(max_size=8)
TARGETS = st.one_of(
    st.sampled_from(["/tools/invoke", "/", "/healthz", "/v1/models", "/__openclaw__/cap/x/tools/invoke", "//x/y",
                     "http://h/tools/invoke", "/tools/./invoke", "/j/abc", "/API/V1/Admin/RPC"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60).map(lambda t: "/" + t),
    st.text(max_size=40),
)
HEADER_NAMES = st.sampled_from([
    "Host", "Authorization", "Content-Length", "Transfer-Encoding", "X-Forwarded-For", "x-openclaw-scopes",
    "x_openclaw_scopes", "Upgrade", "Connection", "Expect", "Trailer", "Origin", "X-Real-IP", "Forwarded",
    "x-openclaw-sender-is-owner", "Tailscale-User-Login", "Sec-WebSocket-Version", "Sec-WebSocket-Key", "X-Other",
])
HEADER_VALUES = st.binary(max_size=40) | st.sampled_from([b"Bearer " + TOKEN.encode(), b"websocket", b"13", b"0", b"5",
                                                           b"chunked", b"operator.admin", b"1.2.3.4", b"\xb2"])
HEADERS = st.lists(st.tuples(HEADER_NAMES.map(str.encode), HEADER_VALUES), max_size=8)
BODIES = st.binary(max_size=200) | st.builds(
    lambda name, tool: json.dumps({"name": name, "tool": tool, "args": {}}).encode(),
    st.text(max_size=12) | st.sampled_from(["exec", "EXEC", " agents_list ", "ｅｘｅｃ", "sessions_list", "nodes"]),
    st.none() | st.text(max_size=8),
)
PEERS = st.sampled_from(["127.0.0.1", "203.0.113.7", "::1", "::ffff:10.0.0.1"])


def decide(view: RequestView, body: bytes) -> Refuse | Admitted | Forward:
    async def run() -> Refuse | Admitted | Forward:
        head = await PIPELINE.on_head(view)
        if isinstance(head, Refuse):
            return head
        return await PIPELINE.on_body(head, body)

    return asyncio.run(run())


@given(METHODS, TARGETS, HEADERS, BODIES, PEERS)
def test_the_pipeline_always_decides_and_never_raises(method, target, headers, body, peer) -> None:
    decision = decide(RequestView(method, target, tuple(headers), peer), body)
    assert isinstance(decision, (Refuse, Forward))
    if isinstance(decision, Refuse):
        assert 400 <= decision.envelope.status < 600
        assert b"Traceback" not in decision.envelope.body and b"recursion" not in decision.envelope.body


@given(HEADERS, BODIES)
def test_a_forwarded_tool_call_never_names_a_refused_tool(headers, body) -> None:
    auth = ((b"Host", b"gw"), (b"Authorization", b"Bearer " + TOKEN.encode()))
    decision = decide(RequestView("POST", "/tools/invoke", auth + tuple(headers), "203.0.113.7"), body)
    if isinstance(decision, Forward) and decision.admitted.route == "tools-invoke":
        forwarded = read_invoke_body(decision.body if decision.body is not None else body)
        assert not PIPELINE.tools.decide(ToolRequest(forwarded, owner=True)).refused, forwarded.spelled
        assert forwarded.tool.name not in ("exec", "agents_list", "nodes")


HOSTILE = st.sampled_from([
    (b"X-Forwarded-For", b"9.9.9.9"), (b"x-openclaw-scopes", b"operator.admin"), (b"x_openclaw_scopes", b"operator.admin"),
    (b"Authorization", b"Bearer " + TOKEN.encode()), (b"Forwarded", b"for=1.2.3.4"), (b"X-Real-IP", b"1.2.3.4"),
    (b"Tailscale-User-Login", b"admin"), (b"x-openclaw-sender-is-owner", b"true"), (b"Transfer-Encoding", b"chunked"),
    (b"Trailer", b"x"), (b"Expect", b"nonsense"), (b"Connection", b"x-openclaw-scopes"), (b"X-Pad", b"a" * 17_000),
])


@given(METHODS, TARGETS, HEADERS, BODIES, HOSTILE)
def test_adding_a_hostile_header_never_turns_a_refusal_into_a_forward(method, target, headers, body, hostile) -> None:
    before = decide(RequestView(method, target, ((b"Host", b"gw"), *headers), "203.0.113.7"), body)
    if isinstance(before, Refuse):
        after = decide(RequestView(method, target, ((b"Host", b"gw"), *headers, hostile), "203.0.113.7"), body)
        # The secret itself is not hostile when it was missing: only its repeat is.
        if hostile[0] != b"Authorization" or any(n.lower() == b"authorization" for n, _ in headers):
            assert isinstance(after, Refuse), (before.reason, hostile)


FRAMES = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda method, params: json.dumps({"type": "req", "id": "x", "method": method, "params": params}).encode(),
              st.sampled_from(["connect", "health", "terminal.open", "config.patch", "tools.invoke", "agent", "node.event",
                               "portal.open", "sessions.list", "Terminal.open"]) | st.text(max_size=12),
              st.dictionaries(st.sampled_from(["name", "tool", "role", "scopes", "auth", "message", "device"]),
                              st.text(max_size=10) | st.lists(st.text(max_size=16), max_size=3) | st.none(), max_size=4)),
)


@given(st.lists(FRAMES, min_size=1, max_size=5))
def test_rpc_frames_always_get_a_verdict_and_denied_methods_never_pass(frames) -> None:
    from sidecar.auth import AuthOutcome
    from sidecar.scopes import DEFAULT_SCOPES, ResolvedScopes

    async def check_secret(auth: dict) -> AuthOutcome:
        presented = auth.get("token")
        return AuthOutcome(presented == TOKEN, "token", "ok" if presented == TOKEN else "token_mismatch", shared_secret=True)

    async def limit(user: str | None, tool: str) -> str | None:
        return None

    async def judge_signed(signed: str, is_upstream: bool) -> AuthOutcome:
        return AuthOutcome(is_upstream, "token", "ok" if is_upstream else "token_mismatch", shared_secret=True)

    async def run() -> None:
        session = RpcSession(PIPELINE.rpc_policy, AuthOutcome(True, "token", shared_secret=True),
                             ResolvedScopes(DEFAULT_SCOPES), check_secret, limit, judge_signed)
        for content in frames:
            verdict = await session.client_frame(content)
            assert verdict.verdict in ("forward", "reply", "drop", "close")
            if verdict.verdict == "close":
                return
            if verdict.verdict == "forward" and session.connected and verdict.method != "connect":
                sent = json.loads(verdict.payload if verdict.payload is not None else content)
                assert sent["method"] not in PIPELINE.rpc_policy.denied
                if sent["method"] == "tools.invoke":
                    judged = read_invoke_body(json.dumps(sent["params"]).encode())
                    assert not PIPELINE.tools.decide(ToolRequest(judged, owner=True)).refused

    asyncio.run(run())


# ---- the tool policy chain: more rules never open a tool ---------------------------------------------

TOOLS = st.sampled_from(["agents_list", "session_status", "sessions_list", "theme", "tts", "web_fetch", "gateway", "sessions",
                         "browser", "file_fetch", "message", "progress_card", "ask_user", "create_goal", "subagents",
                         "some_plugin_tool", "read", "apply_patch", "sessions_spawn", "automations"])
ENTRIES = TOOLS | st.sampled_from(["*", "sess*", "*_list", "group:sessions", "group:agents", "group:plugins", "file-transfer",
                                   "update_plan", "web_*", "write", "BASH", "cron", "Theme"])
# Mostly permissive lists, so that a refusal often hinges on the one list an example edits.
LIST = st.lists(st.sampled_from(["*", "*", "*"]) | ENTRIES, min_size=1, max_size=4)
DENY = st.lists(st.sampled_from(["zz_other", "zz_other"]) | ENTRIES, min_size=1, max_size=3)
KEYS = st.sampled_from(["main", "agent:main:main", "agent:ops:main", "irc:group:9", "irc:group:7:thread:1", "subagent:x",
                        "agent:main:subagent:a:subagent:b", "side", "agent:main:cron:j", "agent:ops:irc:channel:9"])


def _policy() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"allow": LIST, "alsoAllow": LIST, "deny": DENY})


POLICY_CONFIGS = st.fixed_dictionaries({
    "tools": st.fixed_dictionaries({
        "profile": st.sampled_from([None, None, "minimal", "coding", "messaging", "full"]), "allow": LIST, "alsoAllow": LIST,
        "deny": DENY, "sandbox": st.fixed_dictionaries({"tools": _policy()}),
        "subagents": st.fixed_dictionaries({"tools": _policy()}),
    }),
    "agents": st.fixed_dictionaries({
        "ownership": st.just("explicit"),
        "defaults": st.fixed_dictionaries({
            "systemAgent": st.just({"agentId": "main"}), "sandbox": st.fixed_dictionaries({"mode": st.sampled_from(["off", "off", "all", "non-main"])}),
            "subagents": st.fixed_dictionaries({"maxSpawnDepth": st.integers(1, 3)}),
        }),
        "list": st.tuples(_policy(), _policy()).map(lambda p: [{"id": "main", "tools": p[0]}, {"id": "ops", "tools": p[1]}]),
    }),
    "channels": st.fixed_dictionaries({"irc": st.fixed_dictionaries({"groups": st.fixed_dictionaries({
        "9": st.fixed_dictionaries({"tools": st.fixed_dictionaries({"allow": LIST, "deny": DENY})}),
        "*": st.fixed_dictionaries({"tools": st.fixed_dictionaries({"allow": LIST, "deny": DENY})}),
    })})}),
    "gateway": st.fixed_dictionaries({"tools": st.fixed_dictionaries({"allow": LIST, "deny": DENY})}),
})
CALLS = st.fixed_dictionaries({"name": TOOLS, "sessionKey": KEYS})
DENY_PATHS = [("tools", "deny"), ("tools", "sandbox", "tools", "deny"), ("tools", "subagents", "tools", "deny"),
              ("agents", "list", 0, "tools", "deny"), ("agents", "list", 1, "tools", "deny"),
              ("channels", "irc", "groups", "9", "tools", "deny"), ("channels", "irc", "groups", "*", "tools", "deny"),
              ("gateway", "tools", "deny")]
ALLOW_PATHS = [("tools", "allow"), ("tools", "alsoAllow"), ("tools", "sandbox", "tools", "allow"),
               ("tools", "sandbox", "tools", "alsoAllow"), ("tools", "subagents", "tools", "allow"),
               ("tools", "subagents", "tools", "alsoAllow"), ("agents", "list", 0, "tools", "allow"),
               ("agents", "list", 0, "tools", "alsoAllow"), ("agents", "list", 1, "tools", "allow"),
               ("channels", "irc", "groups", "9", "tools", "allow"), ("channels", "irc", "groups", "*", "tools", "allow"),
               ("gateway", "tools", "allow")]


def _refused(config: dict, call: dict, channel: str | None, owner: bool) -> bool:
    """Whether the chain refuses the call (tool and session key) with that config and caller."""
    from sidecar.config import OpenClawRules
    from sidecar.toolchain import ToolChain

    chain = ToolChain(OpenClawRules.model_validate(config))
    return chain.decide(ToolRequest(read_invoke_body(json.dumps(call).encode()), owner, channel)).refused


def _edited(config: dict, path: tuple, edit) -> dict:
    copy = json.loads(json.dumps(config))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = edit(node[path[-1]])
    return copy


# Every list of POLICY_CONFIGS, each allowing everything: an example that starts from it and sets
# only the list it edits makes the refusal hinge on that one list.
PERMISSIVE = json.loads(json.dumps({
    "tools": {"profile": None, "allow": ["*"], "alsoAllow": ["*"], "deny": ["zz_other"],
              "sandbox": {"tools": {"allow": ["*"], "alsoAllow": ["*"], "deny": ["zz_other"]}},
              "subagents": {"tools": {"allow": ["*"], "alsoAllow": ["*"], "deny": ["zz_other"]}}},
    "agents": {"ownership": "explicit", "defaults": {"systemAgent": {"agentId": "main"}, "sandbox": {"mode": "all"},
                                                     "subagents": {"maxSpawnDepth": 3}},
               "list": [{"id": agent, "tools": {"allow": ["*"], "alsoAllow": ["*"], "deny": ["zz_other"]}} for agent in ("main", "ops")]},
    "channels": {"irc": {"groups": {g: {"tools": {"allow": ["*"], "deny": ["zz_other"]}} for g in ("9", "*")}}},
    "gateway": {"tools": {"allow": ["zz_other"], "deny": ["zz_other"]}},
}))
REQUESTS = st.tuples(CALLS, st.sampled_from([None, "node", "voice"]), st.booleans())


def _start(focus: bool, random_config: dict, path: tuple, entries: list) -> dict:
    return _edited(PERMISSIVE, path, lambda _: entries) if focus else random_config


@given(st.booleans(), POLICY_CONFIGS, st.sampled_from(DENY_PATHS), st.lists(st.just("*") | ENTRIES, min_size=1, max_size=3),
       REQUESTS, ENTRIES)
def test_adding_a_deny_entry_never_turns_a_refusal_into_an_allow(focus, random_config, path, entries, request, entry) -> None:
    config = _start(focus, random_config, path, entries)
    if _refused(config, *request):
        assert _refused(_edited(config, path, lambda listed: [*listed, entry]), *request)


@given(st.booleans(), POLICY_CONFIGS, st.sampled_from(ALLOW_PATHS), st.lists(ENTRIES, min_size=2, max_size=4), REQUESTS,
       st.integers(0, 3))
def test_removing_an_allow_entry_never_turns_a_refusal_into_an_allow(focus, random_config, path, entries, request, index) -> None:
    """Of a list that keeps an entry: emptying an allow list means "no restriction" upstream."""
    config = _start(focus, random_config, path, entries)
    listed = config
    for key in path:
        listed = listed[key]
    if len(listed) < 2 or not _refused(config, *request):
        return
    assert _refused(_edited(config, path, lambda e: e[:index % len(e)] + e[index % len(e) + 1:]), *request)
