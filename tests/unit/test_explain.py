"""`openclaw-sidecar explain`: golden outputs for a handful of decisions (tests/data/explain/).

Set UPDATE_EXPLAIN_GOLDEN=1 to rewrite the files after a deliberate change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import load_config
from sidecar.explain import explain
from sidecar.pipeline import Admitted, Pipeline, Refuse

from tests import builders
from tests.unit.fakes import NeverLimits

DATA = Path(__file__).parents[1] / "data" / "explain"
CONFIG = DATA / "policy.json5"
PROXY = "10.0.0.5"  # policy.json5's trusted proxy
TOKEN_CONFIG: dict[str, Any] = {"gateway": {"auth": {"mode": "token", "token": "T"}}}
READ_CEILING: dict[str, Any] = {**TOKEN_CONFIG, "sidecar": {"scopeCeilings": {"default": ["operator.read"]}}}
SHADOW_READ_CEILING: dict[str, Any] = {**TOKEN_CONFIG, "sidecar": {**READ_CEILING["sidecar"], "enforce": False}}
TOOLS_DENIED: dict[str, Any] = {**TOKEN_CONFIG, "sidecar": {"routes": {"deny": ["/tools"]}}}

CASES = {
    "group-deny": ["--tool", "theme", "--session-key", "irc:group:123", "--scopes", "operator.write"],
    "account-group": ["--tool", "sessions_list", "--session-key", "agent:main:irc:group:123", "--account", "Work"],
    "unknown-key-agent": ["--tool", "agents_list", "--session-key", "agent:zz:main"],
    "pinned-voice": ["--tool", "tts", "--user", "voice-bot", "--channel", "webchat"],
    "plugin-forwarded": ["--tool", "file_fetch"],
    "agent-allow-list": ["--tool", "file_fetch", "--agent-id", "ops"],
    "missing-scope": ["--tool", "agents_list", "--scopes", "operator.read"],
    "rpc-subagent": ["--tool", "theme", "--websocket-method", "tools.invoke", "--session-key", "agent:main:subagent:a"],
    "rpc-denied-method": ["--websocket-method", "terminal.open"],  # no tool to name
    "rpc-allowed-method": ["--websocket-method", "chat.history"],
    "blank-tool": ["--tool", "  "],
    "no-scopes": ["--tool", "agents_list", "--scopes", ""],
    "non-ascii-tool": ["--tool", "thème"],  # printed as sent, in the request and in the answer
    "gateway-decides-twice": ["--tool", "file_fetch", "--session-key", "agent:main:subagent:a"],
}


@pytest.mark.parametrize("form", ["txt", "json"])
@pytest.mark.parametrize("case", CASES)
def test_explain_matches_its_golden_file(case: str, form: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--config", str(CONFIG), *CASES[case], *(["--json"] if form == "json" else [])]) == 0
    out = capsys.readouterr().out
    golden = DATA / f"{case}.{form}"
    if os.environ.get("UPDATE_EXPLAIN_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text()


def test_json_and_text_tell_the_same_decision(capsys: pytest.CaptureFixture[str]) -> None:
    for case, argv in CASES.items():
        main(["explain", "--config", str(CONFIG), *argv, "--json"])
        result = json.loads(capsys.readouterr().out)
        main(["explain", "--config", str(CONFIG), *argv])
        text = capsys.readouterr().out
        assert f"decision {result['decision']}" in text, case
        assert all(layer["rule"] in text for layer in result["layers"]), case


@pytest.mark.parametrize("argv, error", [
    ([], "--tool is required"), (["--websocket-method", "tools.invoke"], "--tool is required"),
    (["--websocket-method", "chat.history", "--tool", "agents_list"], "and only there"),  # it showed invented params
])
def test_a_tool_is_named_where_one_is_judged_and_only_there(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--config", str(CONFIG), *argv]) == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("document, error", [
    ({"gateway": {"trustedProxies": ["not-an-ip"]}}, "gateway.trustedProxies"),
    # It loads, and the sidecar answers every request 401: explain once said "forward", exit 0.
    ({"gateway": {"auth": {"mode": "token"}}}, "no token resolved"),
])
@pytest.mark.usefixtures("clean_env")
def test_a_bad_config_is_reported(tmp_path: Path, document: dict[str, Any], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = builders.write_config(tmp_path / "bad.json", document)
    assert main(["explain", "--config", str(bad), "--tool", "agents_list"]) == 1
    out, err = capsys.readouterr()
    assert error in err and out == ""


@pytest.mark.parametrize("tool, session_key", [
    ("agents_list", None), ("theme", "agent:main:subagent:a"), ("exec", None), ("  ", None), ("", None), ("sessions", None),
    ("file_fetch", None), ("agents_list", "agent:zz:main"), ("agents_list", "bad key\x00"),
])
def test_an_rpc_call_is_explained_with_the_answer_the_proxy_gives(tool: str, session_key: str | None) -> None:
    """explain's verdict on a tools.invoke frame is the running proxy's, word for word (it printed
    `tools.invoke requires name` for a blank name, where the proxy says `... params: name required`)."""
    from sidecar.rpc import FrameVerdict, judge_tool_frame
    from sidecar.scopes import DEFAULT_SCOPES
    from sidecar.toolchain import ToolChain

    config = load_config(CONFIG, environ={})
    explained = explain(config, tool, session_key=session_key, websocket_method="tools.invoke")
    params = {"name": tool, **({"sessionKey": session_key} if session_key is not None else {})}
    judged, _ = judge_tool_frame(ToolChain(config.rules), "explain", params, "operator.admin" in DEFAULT_SCOPES, frozenset())
    if isinstance(judged, FrameVerdict):
        assert (explained["decision"], explained["reason"]) == ("refuse", judged.reason)
        assert explained["body"] == json.loads(judged.payload or b"null")
    else:
        assert (explained["decision"], explained["body"]) == ("forward", None)


async def _proxy_answer(config_path: Path, tool: str, scopes: str | None, user: str | None) -> tuple[str, str, int | None, Any]:
    """What the running pipeline does with the same POST /tools/invoke (a token caller, or one
    that `user` names through policy.json5's trusted proxy): the decision, why (a shadowed
    refusal's reason), and a refusal's status and body."""
    headers = [("x-openclaw-scopes", scopes)] if scopes is not None else []
    if user is not None:
        headers += [("x-forwarded-user", user), ("X-Forwarded-For", "198.51.100.9")]
    view = builders.view(*headers, host="gw.example", peer=PROXY if user else "203.0.113.7",
                         auth=None if user else "Bearer T")
    pipeline = Pipeline(load_config(config_path, environ={}), NeverLimits(), None)
    verdict = await pipeline.on_head(view)
    if isinstance(verdict, Admitted):
        verdict = await pipeline.on_body(verdict, json.dumps({"name": tool}).encode())
    if isinstance(verdict, Refuse):
        body = verdict.envelope.body
        text = dict(verdict.envelope.headers)["Content-Type"].startswith("text/plain")
        return "refuse", verdict.reason, verdict.envelope.status, body.decode() if text else json.loads(body)
    return "forward", verdict.shadowed[0] if verdict.shadowed else verdict.reason, None, None


@pytest.mark.parametrize("document, tool, scopes, user, expected", [
    # A token caller's x-openclaw-scopes is ignored on HTTP (explain once answered 403 here).
    (TOKEN_CONFIG, "agents_list", "operator.read", None, ("forward", "allowed")),
    (TOKEN_CONFIG, "  ", None, None, ("refuse", "missing_tool_name")),
    (READ_CEILING, "agents_list", None, None, ("refuse", "missing_scope")),  # the ceiling still holds
    (SHADOW_READ_CEILING, "agents_list", None, None, ("forward", "missing_scope")),  # explain once said refuse
    (None, "agents_list", "operator.read", "alice", ("refuse", "missing_scope")),  # an identity's scopes are its own
    (None, "agents_list", "operator.write", "alice", ("forward", "allowed")),
    (None, "sessions_history", None, "alice", ("refuse", "tool_denied")),
    # sidecar.routes.deny answers 404 before anything else is asked (explain once said forward)
    (TOOLS_DENIED, "agents_list", None, None, ("refuse", "route_denied")),
    ({**TOOLS_DENIED, "sidecar": {"routes": {"deny": ["/tools//"]}}}, "agents_list", None, None, ("refuse", "route_denied")),
    ({**TOOLS_DENIED, "sidecar": {"routes": {"deny": ["/tools/invoke/"]}}}, "agents_list", None, None, ("forward", "allowed")),
    ({**TOOLS_DENIED, "sidecar": {"routes": {"deny": ["/tools"], "allow": []}, "enforce": False}}, "agents_list", None, None,
     ("forward", "route_denied")),
])
async def test_explain_answers_as_the_running_pipeline(tmp_path: Path, document: dict[str, Any] | None, tool: str,
                                                       scopes: str | None, user: str | None, expected: tuple[str, str]) -> None:
    config_path = CONFIG if document is None else builders.write_config(tmp_path / "c.json", document)
    explained = explain(load_config(config_path, environ={}), tool, scopes=scopes, user=user)
    refused = explained["decision"] == "refuse"
    answer = explained["decision"], explained["reason"], explained["status"] if refused else None, explained["body"] if refused else None
    assert answer[:2] == expected
    assert answer == await _proxy_answer(config_path, tool, scopes, user)


@pytest.mark.parametrize("deny, refused", [(["/"], True), (["//"], True), (["/ws"], False)])
async def test_a_denied_route_refuses_the_rpc_socket_as_the_running_pipeline_does(
        tmp_path: Path, deny: list[str], refused: bool) -> None:
    """The RPC socket is served at any path: explain asks about `/`, where a client opens it."""
    config = load_config(builders.write_config(tmp_path / "c.json", {**TOKEN_CONFIG, "sidecar": {"routes": {"deny": deny}}}),
                         environ={})
    explained = explain(config, None, websocket_method="chat.history")
    upgrade = builders.view(("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), method="GET", target="/", host="gw.example",
                            auth="Bearer T")
    verdict = await Pipeline(config, NeverLimits(), None).on_head(upgrade)
    if refused:
        assert isinstance(verdict, Refuse) and (verdict.reason, verdict.envelope.status) == ("route_denied", 404)
        assert (explained["decision"], explained["reason"], explained["status"], explained["body"]) == (
            "refuse", "route_denied", 404, "Not Found")
        assert explained["layers"] == [{"layer": "route", "verdict": "deny",
                                        "rule": f"the RPC socket's upgrade at / is under sidecar.routes.deny {deny[0]}"}]
    else:
        assert isinstance(verdict, Admitted)
        assert (explained["decision"], explained["reason"]) == ("forward", "allowed")


@pytest.mark.parametrize("mode", ["token", "password"])
def test_a_shared_secret_callers_scopes_header_is_ignored_on_http(mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the gateway (resolveSharedSecretHttpOperatorScopes) and the sidecar read it: the default set."""
    config = builders.write_config(tmp_path / "c.json", {"gateway": {"auth": {"mode": mode, mode: "T"}}})
    assert main(["explain", "--config", str(config), "--tool", "agents_list", "--scopes", "operator.read"]) == 0
    text = capsys.readouterr().out
    assert f"may invoke tools ({mode} caller: x-openclaw-scopes ignored)\n" in text
    assert "\ndecision forward\n" in text
    assert main(["explain", "--config", str(config), "--tool", "agents_list"]) == 0
    assert "may invoke tools\n" in capsys.readouterr().out  # no header sent, none ignored


def test_a_user_is_refused_where_no_caller_has_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A token caller has no identity: its ceiling and pins are the defaults, whatever --user says."""
    config = builders.write_config(tmp_path / "c.json", TOKEN_CONFIG)
    assert main(["explain", "--config", str(config), "--tool", "tts", "--user", "voice-bot"]) == 2
    assert "--user is a trusted-proxy identity; a token caller has none" in capsys.readouterr().err


def test_shadow_mode_forwards_and_says_what_enforcing_would_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = builders.write_config(tmp_path / "c.json", SHADOW_READ_CEILING)
    assert main(["explain", "--config", str(config), "--tool", "agents_list"]) == 0
    text = capsys.readouterr().out
    [decision] = (line for line in text.splitlines() if line.startswith("decision "))
    assert decision.startswith("decision forward (shadow mode: sidecar.enforce false; enforcing would refuse 403 {")
    assert decision.endswith("})")
    assert text.splitlines()[-2] == "reason   missing_scope (scopes: POST /tools/invoke needs operator.write or operator.admin)"
