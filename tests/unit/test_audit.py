"""Audit lines: pure JSON, one per decision, client-supplied values escaped (corpus D8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar import audit
from sidecar.metrics import DECISIONS, SHADOWED


@pytest.fixture
def audit_file(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    audit.configure(str(path))
    yield path
    audit.configure("stderr")


def entry(**overrides) -> audit.AuditEntry:
    fields = dict(request_id="r1", route="tools-invoke", decision="refused", reason="tool_denied", status=404,
                  method="POST", target="/tools/invoke", client="203.0.113.7", peer="203.0.113.7")
    return audit.AuditEntry(**{**fields, **overrides})


def test_client_values_cannot_forge_a_log_line(audit_file: Path) -> None:
    audit.record(entry(target="/tools/invoke\r\n{\"event\":\"forged\"}", identity="eve\nadmin", tool="exec\u2028\x00"))
    audit.close()  # lines are written by a thread of their own: flush
    text = audit_file.read_text()
    assert text.count("\n") == 1 and "\r" not in text and "\x00" not in text and "\u2028" not in text
    line = json.loads(text)
    assert line["target"] == "/tools/invoke\r\n{\"event\":\"forged\"}"
    assert line["identity"] == "eve\nadmin" and line["tool"] == "exec\u2028\x00"


def test_a_line_is_one_json_object_with_every_field(audit_file: Path) -> None:
    audit.record(entry(decision="forwarded", reason="allowed", status=200, upstream_status=200, duration_ms=3.5,
                       auth="token", previous_secret=True, scopes=("operator.write",), tool="agents_list"))
    audit.close()
    line = json.loads(audit_file.read_text())
    assert line.keys() >= {"time", "request_id", "client", "peer", "auth", "identity", "scopes", "route", "tool",
                           "method", "decision", "reason", "status", "upstream_status", "duration_ms"}
    assert line["time"].endswith("Z") and line["previous_secret"] is True and line["scopes"] == ["operator.write"]


def test_a_refusal_carries_its_detail_and_others_omit_it(audit_file: Path) -> None:
    audit.record(entry(detail="group: channels.irc.groups['9'].tools: deny 'agents_list'"))
    audit.record(entry(decision="forwarded", reason="allowed", status=200))
    audit.close()
    refused, forwarded = map(json.loads, audit_file.read_text().splitlines())
    assert refused["reason"] == "tool_denied" and refused["detail"] == "group: channels.irc.groups['9'].tools: deny 'agents_list'"
    assert "detail" not in forwarded


def test_every_decision_is_counted_and_shadowed_ones_by_reason() -> None:
    counter = DECISIONS.labels(route="other", outcome="shadowed", reason="allowed")
    shadowed = SHADOWED.labels(reason="route_refused")
    before, shadowed_before = counter._value.get(), shadowed._value.get()
    audit.record(entry(route="other", decision="shadowed", reason="allowed", shadowed=("route_refused",)))
    assert counter._value.get() == before + 1
    assert shadowed._value.get() == shadowed_before + 1


def test_a_destination_that_stops_reading_never_blocks_a_decision(tmp_path: Path, monkeypatch) -> None:
    """A FIFO nobody reads (as a stuck log pipe): lines beyond the queue are dropped and counted."""
    import os
    import threading

    from sidecar.metrics import AUDIT_LINES_DROPPED

    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    monkeypatch.setattr(audit, "QUEUE_LINES", 10)
    audit.configure(str(fifo))
    before = AUDIT_LINES_DROPPED._value.get()
    for _ in range(2_000):  # ~400 KB: far past the pipe's 64 KiB and the 10-line queue
        audit.record(entry(target="/" + "x" * 200))
    assert AUDIT_LINES_DROPPED._value.get() > before
    drained = threading.Event()

    def drain() -> None:
        os.set_blocking(reader, True)
        while os.read(reader, 65536):
            pass
        drained.set()

    threading.Thread(target=drain, daemon=True).start()
    audit.close()  # returns once the writer got every queued line out, then closes the pipe
    assert drained.wait(5)
    os.close(reader)


def test_stopping_does_not_wait_for_ever_on_a_destination_that_takes_nothing(tmp_path: Path, monkeypatch) -> None:
    """A stop waited on a full pipe for ever: a rolling restart ended in SIGKILL (red team). It
    gives up after CLOSE_SECONDS and counts what it could not write."""
    import os

    from sidecar.metrics import AUDIT_LINES_DROPPED

    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read
    monkeypatch.setattr(audit, "CLOSE_SECONDS", 0.5)
    audit.configure(str(fifo))
    for _ in range(2_000):  # ~400 KB: the pipe's 64 KiB fill, the writer blocks in write()
        audit.record(entry(target="/" + "x" * 200))
    before = AUDIT_LINES_DROPPED._value.get()
    audit.close()  # returns
    assert AUDIT_LINES_DROPPED._value.get() > before
    os.close(reader)  # the writer's write fails, and its thread ends


def test_lines_that_cannot_be_written_are_counted_as_dropped(tmp_path: Path) -> None:
    """The warning is rate-limited, so only the counter tells an alert how many lines were lost."""
    from sidecar.metrics import AUDIT_LINES_DROPPED

    before = AUDIT_LINES_DROPPED._value.get()
    audit.configure(str(tmp_path / "gone" / "audit.log"))  # a directory removed after start-up
    for _ in range(3):
        audit.record(entry())
    audit.close()
    assert AUDIT_LINES_DROPPED._value.get() == before + 3


@pytest.mark.parametrize("target, logged", [
    ("/__openclaw__/assistant-media?source=/x.png&token=gw-secret", "/__openclaw__/assistant-media?source=/x.png&token=[redacted]"),
    ("/share/session?%74oken=gw-secret&x=1", "/share/session?%74oken=[redacted]&x=1"),
    ("/sessions/main/history?BT=ticket#frag", "/sessions/main/history?BT=[redacted]#frag"),
    ("/?oc_cap=cap-secret", "/?oc_cap=[redacted]"),
    ("/__openclaw__/cap/cap-secret/tools/invoke", "/__openclaw__/cap/[redacted]/tools/invoke"),
    ("/tools/invoke?tokens=1&a=token", "/tools/invoke?tokens=1&a=token"),
    # bearer tickets and codes the red team found logged in clear (gateway-surface N8)
    ("/__openclaw__/assistant-media?source=/x.png&mediaTicket=media-secret", "/__openclaw__/assistant-media?source=/x.png&mediaTicket=[redacted]"),
    ("/ui/api/artifacts/download/conn-1/art-secret?x=1", "/ui/api/artifacts/download/conn-1/[redacted]?x=1"),
    ("/j/setup-secret", "/j/[redacted]"),
    ("/x/j/a/J/setup-secret", "/x/j/a/J/[redacted]"),
    ("/oauth/mcp/callback?code=oauth-secret&state=state-secret", "/oauth/mcp/callback?code=[redacted]&state=[redacted]"),
    ("/__OPENCLAW__/cap/cap-secret/x", "/__OPENCLAW__/cap/[redacted]/x"),
    ("/jobs/j?x=1", "/jobs/j?x=1"),
])
def test_credentials_in_a_target_never_reach_the_audit_line(target: str, logged: str) -> None:
    """The requests refused for carrying them are audited; the secrets are not."""
    line = json.loads(entry(target=target).line(0))
    assert line["target"] == logged
    assert "-secret" not in json.dumps(line) and "ticket" not in json.dumps(line)


def test_a_target_is_cut_before_it_is_searched_for_secrets() -> None:
    """A 16 KiB target of `/a` segments after a capability prefix took the redaction's backtracking
    regex half a second on the event loop (review); only the kept part is searched now."""
    target = "/__openclaw__/cap/cap-secret" + "/a" * 8000 + "/j/setup-secret?token=tok-secret"
    line = json.loads(entry(target=target).line(0))
    assert line["target"] == ("/__openclaw__/cap/[redacted]" + "/a" * 8000)[:512 - len("cap-secret") + len("[redacted]")]
    assert "secret" not in line["target"]
