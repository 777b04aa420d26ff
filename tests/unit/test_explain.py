"""`openclaw-sidecar explain`: golden outputs for a handful of decisions (tests/data/explain/).

Set UPDATE_EXPLAIN_GOLDEN=1 to rewrite the files after a deliberate change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sidecar.cli import main

DATA = Path(__file__).parents[1] / "data" / "explain"
CONFIG = DATA / "policy.json5"

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


def test_a_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"gateway": {"trustedProxies": ["not-an-ip"]}}')
    assert main(["explain", "--config", str(bad), "--tool", "agents_list"]) == 1
    assert "gateway.trustedProxies" in capsys.readouterr().err


@pytest.mark.parametrize("tool, session_key", [
    ("agents_list", None), ("theme", "agent:main:subagent:a"), ("exec", None), ("  ", None), ("", None),
    ("file_fetch", None), ("agents_list", "agent:zz:main"), ("agents_list", "bad key\x00"),
])
def test_an_rpc_call_is_explained_with_the_answer_the_proxy_gives(tool: str, session_key: str | None) -> None:
    """explain's verdict on a tools.invoke frame is the running proxy's, word for word (it printed
    `tools.invoke requires name` for a blank name, where the proxy says `... params: name required`)."""
    from sidecar.config import load_config
    from sidecar.explain import explain
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
