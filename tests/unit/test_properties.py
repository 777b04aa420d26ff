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
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import load_config
from tests.unit.fakes import NeverLimits
from sidecar.pipeline import Admitted, Forward, Pipeline, Refuse
from sidecar.rpc import RpcSession
from sidecar.toolpolicy import normalize_tool_name
from sidecar.view import RequestView

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TOKEN = "property-token"


def _pipeline() -> Pipeline:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"openclaw-sidecar-properties-{os.getpid()}.json"
    path.write_text(json.dumps({
        "gateway": {"auth": {"token": TOKEN}, "tools": {"deny": ["agents_list"]}},
        "sidecar": {"runtimeDir": str(path.with_suffix(".run"))},
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
        forwarded = json.loads(decision.body if decision.body is not None else body)
        name = forwarded.get("name") if forwarded.get("name") is not None else forwarded.get("tool")
        tool = normalize_tool_name(name)
        assert not PIPELINE.gate.blocks(tool, owner=True), name
        assert tool.name not in ("exec", "agents_list", "nodes")


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

    async def check_secret(presented: str | None) -> AuthOutcome:
        return AuthOutcome(presented == TOKEN, "token", "ok" if presented == TOKEN else "token_mismatch", shared_secret=True)

    async def limit(user: str | None, tool: str) -> str | None:
        return None

    async def run() -> None:
        session = RpcSession(PIPELINE.rpc_policy, AuthOutcome(True, "token", shared_secret=True),
                             ResolvedScopes(DEFAULT_SCOPES), check_secret, limit)
        for content in frames:
            verdict = await session.client_frame(content)
            assert verdict.verdict in ("forward", "reply", "close")
            if verdict.verdict == "close":
                return
            if verdict.verdict == "forward" and session.connected and verdict.method != "connect":
                sent = json.loads(verdict.payload if verdict.payload is not None else content)
                assert sent["method"] not in PIPELINE.rpc_policy.denied
                if sent["method"] == "tools.invoke":
                    assert not PIPELINE.gate.blocks(normalize_tool_name(sent["params"]["name"]), owner=True)

    asyncio.run(run())
