"""Audit lines: pure JSON, one per decision, client-supplied values escaped (corpus D8)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar import audit
from sidecar.logging_limits import OncePerInterval
from sidecar.metrics import AUDIT_LINES_DROPPED, DECISIONS, SHADOWED

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def audit_file(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    audit.configure(str(path))
    yield path
    audit.configure("stderr")


@pytest.fixture
def held_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer looks for lines only when it is stopped: what the test records stays queued until then."""
    monkeypatch.setattr(audit, "BATCH_SECONDS", 3600)


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rate limit of the test's own: an earlier test's warning must not silence this one's."""
    monkeypatch.setattr(audit, "LOG_ONCE_PER_INTERVAL", OncePerInterval())


def entry(**overrides) -> audit.AuditEntry:
    fields = dict(request_id="r1", route="tools-invoke", decision="refused", reason="tool_denied", status=404,
                  method="POST", target="/tools/invoke", client="203.0.113.7", peer="203.0.113.7")
    return audit.AuditEntry(**{**fields, **overrides})


def request_ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def written(path: Path, request_id: str) -> bool:
    """Whether the running writer has written that line (within a batch or two; gives up after 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and request_id in request_ids(path):
            return True
        time.sleep(0.01)
    return False


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
    assert line["event"] == "decision" and line["previous_secret"] is True and line["scopes"] == ["operator.write"]


def test_the_time_is_utc_to_the_millisecond_never_rounded_into_the_next_second() -> None:
    assert json.loads(entry().line(1_780_000_001.9995))["time"] == "2026-05-28T20:26:41.999Z"


@pytest.mark.parametrize("field, value, logged", [
    ("detail", "group: channels.irc.groups['9'].tools: deny 'agents_list'",
     "group: channels.irc.groups['9'].tools: deny 'agents_list'"),
    ("shadowed", ("route_refused", "tool_denied"), ["route_refused", "tool_denied"]),
    ("outcome", "client_gone", "client_gone"),
])
def test_a_line_carries_what_only_some_decisions_have_and_others_omit_it(field: str, value: object, logged: object) -> None:
    """Why a layer refused, what shadow mode let through, how a forwarded call ended."""
    assert json.loads(entry(**{field: value}).line(0))[field] == logged
    assert field not in json.loads(entry().line(0))


@pytest.mark.parametrize("field, kept", [("method", 64), ("tool", 128), ("detail", 256), ("identity", 256)])
def test_free_text_a_client_can_lengthen_is_cut(field: str, kept: int) -> None:
    """An RPC method and a tool name are the client's, and a detail quotes them; an identity is what a
    trusted proxy wrote, up to the head's size (an e-mail address has at most 254): a line stays bounded."""
    assert json.loads(entry(**{field: "x" * 1000}).line(0))[field] == "x" * kept


def test_every_decision_is_counted_and_shadowed_ones_by_reason() -> None:
    audit.close()  # also once the log has closed, at stop: the last connections still end in decisions
    counter = DECISIONS.labels(route="other", outcome="shadowed", reason="allowed")
    shadowed = SHADOWED.labels(reason="route_refused")
    before, shadowed_before = counter._value.get(), shadowed._value.get()
    audit.record(entry(route="other", decision="shadowed", reason="allowed", shadowed=("route_refused",)))
    assert counter._value.get() == before + 1
    assert shadowed._value.get() == shadowed_before + 1


def test_a_line_after_the_log_closed_is_counted_dropped_until_a_new_log_opens(audit_file: Path) -> None:
    """A decision made as the process stops, once its log is closed, has nowhere to go: an alert on
    the dropped-lines counter sees it instead of nothing."""
    audit.record(entry(request_id="r-before"))
    audit.close()
    before = AUDIT_LINES_DROPPED._value.get()
    audit.record(entry(request_id="r-after"))
    assert AUDIT_LINES_DROPPED._value.get() == before + 1
    audit.configure(str(audit_file))
    audit.record(entry(request_id="r-reopened"))
    audit.close()
    assert AUDIT_LINES_DROPPED._value.get() == before + 1
    assert [json.loads(line)["request_id"] for line in audit_file.read_text().splitlines()] == ["r-before", "r-reopened"]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a stop without a traceback
@pytest.mark.parametrize("destination", ["stdout", "stderr"])
def test_the_log_can_be_the_process_s_stdout_or_stderr(destination: str, capsys: pytest.CaptureFixture[str]) -> None:
    audit.configure(destination)
    audit.record(entry(request_id="r-stream"))
    audit.close()
    out, err = capsys.readouterr()
    chosen, other = (out, err) if destination == "stdout" else (err, out)
    assert json.loads(chosen)["request_id"] == "r-stream" and "r-stream" not in other


def test_past_the_queue_the_newest_lines_are_dropped_counted_and_said(
        tmp_path: Path, held_lines: None, fresh_warnings: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setattr(audit, "QUEUE_LINES", 5)
    audit.configure(str(path))
    before = AUDIT_LINES_DROPPED._value.get()
    for n in range(7):
        audit.record(entry(request_id=f"r{n}"))
    assert AUDIT_LINES_DROPPED._value.get() == before + 2
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("sidecar", "audit log writer is behind: lines dropped (openclaw_sidecar_audit_lines_dropped_total)")]
    audit.close()
    assert request_ids(path) == ["r0", "r1", "r2", "r3", "r4"]


def test_a_new_destination_takes_over_once_the_old_one_has_every_line(
        tmp_path: Path, held_lines: None, caplog: pytest.LogCaptureFixture) -> None:
    """A reload that moves the log: nothing queued for the old destination is lost or goes to the new one."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    audit.configure(str(old))
    audit.record(entry(request_id="r-old"))
    audit.configure(str(new))
    assert request_ids(old) == ["r-old"]
    audit.record(entry(request_id="r-new"))
    audit.close()
    assert request_ids(new) == ["r-new"]
    assert "dropped" not in caplog.text


@pytest.mark.parametrize("recreated", [False, True], ids=["moved", "moved-and-created"])
def test_a_file_logrotate_moved_away_is_reopened(tmp_path: Path, recreated: bool) -> None:
    """logrotate renames the file (and with `create` makes a new one): the next lines go to the
    path, not on into the renamed file."""
    path, rotated = tmp_path / "audit.log", tmp_path / "audit.log.1"
    audit.configure(str(path))
    audit.record(entry(request_id="r-before"))
    assert written(path, "r-before")
    path.rename(rotated)
    if recreated:
        path.touch()
    audit.record(entry(request_id="r-after"))
    assert written(path, "r-after")
    audit.close()
    assert request_ids(rotated) == ["r-before"] and request_ids(path) == ["r-after"]


def test_lines_still_queued_when_the_process_exits_are_written(tmp_path: Path) -> None:
    """Under mitmdump nothing stops the writer but the exit: it writes what is queued first."""
    path = tmp_path / "audit.jsonl"
    code = (
        "from sidecar import audit\n"
        "audit.BATCH_SECONDS = 3600\n"  # nothing written before the exit
        f"audit.configure({str(path)!r})\n"
        "audit.record(audit.AuditEntry('r-exit', 'tools-invoke', 'refused', 'tool_denied', 404, 'POST',"
        " '/tools/invoke', None, '203.0.113.7'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
    assert request_ids(path) == ["r-exit"]


def test_a_destination_that_stops_reading_never_blocks_a_decision(tmp_path: Path, monkeypatch) -> None:
    """A FIFO nobody reads (as a stuck log pipe): lines beyond the queue are dropped and counted."""
    import os
    import threading

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


def test_stopping_does_not_wait_for_ever_on_a_destination_that_takes_nothing(
        tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stop waited on a full pipe for ever: a rolling restart ended in SIGKILL (red team). It
    gives up after CLOSE_SECONDS and counts what it could not write, once."""
    import os
    import threading

    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read
    monkeypatch.setattr(audit, "CLOSE_SECONDS", 0.5)
    threads = set(threading.enumerate())
    audit.configure(str(fifo))
    (writer,) = set(threading.enumerate()) - threads
    for _ in range(2_000):  # ~400 KB: the pipe's 64 KiB fill, the writer blocks in write()
        audit.record(entry(target="/" + "x" * 200))
    before = AUDIT_LINES_DROPPED._value.get()
    audit.close()  # returns
    dropped = AUDIT_LINES_DROPPED._value.get()
    assert dropped > before and "lines dropped at stop" in caplog.text
    os.close(reader)  # the writer's write fails, and its thread ends
    writer.join(5)
    assert not writer.is_alive() and AUDIT_LINES_DROPPED._value.get() == dropped  # not counted again


def test_lines_that_cannot_be_written_are_counted_as_dropped(
        tmp_path: Path, fresh_warnings: None, caplog: pytest.LogCaptureFixture) -> None:
    """The warning is rate-limited, so only the counter tells an alert how many lines were lost."""
    before = AUDIT_LINES_DROPPED._value.get()
    audit.configure(str(tmp_path / "gone" / "audit.log"))  # a directory removed after start-up
    for _ in range(3):
        audit.record(entry())
    audit.close()
    assert AUDIT_LINES_DROPPED._value.get() == before + 3
    assert "cannot write the audit log" in caplog.text


def test_a_destination_failing_other_than_by_oserror_loses_only_its_own_lines(
        monkeypatch: pytest.MonkeyPatch, fresh_warnings: None, caplog: pytest.LogCaptureFixture) -> None:
    """A closed stdout raises ValueError: those lines are counted dropped and said, and the writer
    goes on to write the lines after it (its thread died there before, and every later line was lost)."""
    closed = io.TextIOWrapper(io.BytesIO())
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    before = AUDIT_LINES_DROPPED._value.get()
    audit.configure("stdout")
    for _ in range(2):
        audit.record(entry())
    gives_up = time.monotonic() + 5
    while AUDIT_LINES_DROPPED._value.get() < before + 2 and time.monotonic() < gives_up:  # its next batch
        time.sleep(0.01)
    reopened = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", reopened)
    audit.record(entry(request_id="after-the-failure"))
    audit.close()
    assert AUDIT_LINES_DROPPED._value.get() == before + 2
    assert "cannot write the audit log" in caplog.text
    assert [json.loads(line)["request_id"] for line in reopened.buffer.getvalue().splitlines()] == ["after-the-failure"]


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
    # spellings the gateway's WHATWG pathname reads as the same secret-bearing path (a backslash is
    # a slash, dot segments resolve); a spelling that carries no secret stays as sent
    ("/j\\setup-secret", "/j/[redacted]"),
    ("/x/..\\j\\setup-secret?token=gw-secret", "/j/[redacted]?token=[redacted]"),
    ("/ui/api/artifacts/download/conn-1\\art-secret", "/ui/api/artifacts/download/conn-1/[redacted]"),
    ("/__openclaw__/cap\\cap-secret/tools/invoke", "/__openclaw__/cap/[redacted]/tools/invoke"),
    ("/__openclaw__/cap/%2E%2E/cap/cap-secret/x", "/__openclaw__/cap/[redacted]/x"),
    ("/tools\\invoke", "/tools\\invoke"),
    ("http://[zz]/x\\y", "http://[zz]/x\\y"),  # no pathname at all: refused unread, logged as sent
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
