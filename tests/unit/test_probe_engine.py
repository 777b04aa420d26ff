"""The probe's run loop against scripted targets (no sockets): good calls after failed logins,
a lockout that cuts the run short, a baseline that locks out, and a rate limit the probe cannot
tell apart from a refusal."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

import pytest

from sidecar.probe.corpus import CORPUS_SCHEMA, Case, load_corpus, parse_corpus
from sidecar.probe import engine
from sidecar.probe.engine import Options, Probe
from sidecar.probe.report import render_junit, to_json
from sidecar.probe.verdict import FAIL, INCONCLUSIVE, NOT_APPLICABLE, PASS, Answer
from sidecar.probe.wire import Context

OK = Answer("http", status=200, body=json.dumps({"ok": True, "result": {}}).encode())
UNAUTHORIZED = Answer("http", status=401, body=b'{"error":{"type":"unauthorized"}}')
RATE_LIMITED = Answer("http", status=429, body=b'{"error":{"type":"rate_limited"}}')
NOT_FOUND = Answer("http", status=404, body=b'{"error":{"type":"not_found"}}')
TIMEOUT = Answer("timeout", error="no answer within 3 s")
CLOSED = Answer("closed", error="connection reset")


@pytest.fixture(autouse=True)
def _no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GOOD_CALL_RETRY_SECONDS", 0.0)


def credentialed(case_id: str, klass: str, call: str, outcome: str) -> dict[str, Any]:
    return {"id": case_id, "class": klass, "source": "s", "title": "t", "needs": ["credential"],
            "http": {"method": "POST", "target": "/tools/invoke", "credential": True, "call": call},
            "expect": {"outcome": outcome}}


CORPUS = parse_corpus({
    "schema": CORPUS_SCHEMA, "gatewayVersion": "2026.9.6",
    "classes": {"control": "Controls", "auth": "Authentication", "J": "Tool names"},
    "cases": [
        credentialed("control.credential", "control", "${safe_tool}", "accepted"),
        credentialed("J1.denied", "J", "exec", "refused"),
        {"id": "auth.wrong", "class": "auth", "source": "s", "title": "t",
         "http": {"method": "POST", "target": "/tools/invoke", "headers": [["Authorization", "Bearer wrong"]],
                  "call": "${safe_tool}"},
         "expect": {"outcome": "refused"}, "failsAuth": True},
        credentialed("J1.after", "J", "exec", "refused"),
        credentialed("auth.accepted", "auth", "${safe_tool}", "accepted"),
    ],
})


class ScriptedSide:
    """Answers each case id from a script, in turn, then repeats the last answer."""

    def __init__(self, script: dict[str, Iterable[Answer]]) -> None:
        self.script = {case_id: list(answers) for case_id, answers in script.items()}
        self.sent: list[str] = []
        self.ctx = Context("gw", "agents_list", "ocprobe0", "s3cret-token")

    def send(self, case: Case, ctx: Context | None = None) -> tuple[Answer, str]:
        self.sent.append(case.id if ctx is None or ctx.secret else f"{case.id} without credentials")
        answers = self.script[case.id]
        return (answers.pop(0) if len(answers) > 1 else answers[0]), f"POST /tools/invoke ({case.id})"

    def reachable(self) -> None:
        pass


class ScriptedRecord:
    """A backend record that saw each case id's arrivals as scripted (none otherwise)."""

    def __init__(self, target: ScriptedSide, arrived: dict[str, list[dict[str, Any]]]) -> None:
        self.target, self.arrived = target, arrived

    def clear(self) -> None:
        pass

    def fetch(self) -> list[dict[str, Any]]:
        return self.arrived.get(self.target.sent[-1], [])

    def close(self) -> None:
        pass


def run(target: ScriptedSide, baseline: ScriptedSide | None = None, record: dict[str, list[dict[str, Any]]] | None = None,
        **options: object):
    probe = Probe(CORPUS, Options("http://127.0.0.1:1", baseline="http://127.0.0.1:2" if baseline else None,
                                  **options), "9.9.9")  # type: ignore[arg-type]
    probe.target = target  # type: ignore[assignment]
    if baseline:
        probe.baseline = baseline  # type: ignore[assignment]
    if record is not None:
        probe.record = ScriptedRecord(target, record)  # type: ignore[assignment]
    report = probe.run()
    return report, {r.case.id: r for r in report.results}


def test_a_refused_good_call_cuts_the_run_short_and_every_refusal_since_the_last_good_one_proves_nothing():
    """A limiter that a success never resets: the 404 and the 401 before the refused good call may
    be its answers too (an evaluator saw 112 cases turn from fail to pass on such 429s)."""
    target = ScriptedSide({"control.credential": [OK, RATE_LIMITED], "J1.denied": [NOT_FOUND],
                           "auth.wrong": [UNAUTHORIZED], "J1.after": [NOT_FOUND]})
    report, results = run(target, secret="s3cret-token", cases="J1.*,auth.wrong")
    assert report.cut_short == ("after auth.wrong the target refused the probe's own good call (refused: 429 rate_limited "
                                "(the contract accepts this request)): it has locked the probe out, so any later case "
                                "would be refused by the lockout alone")
    assert results["control.credential"].verdict == PASS
    for case_id in ("J1.denied", "auth.wrong"):
        assert results[case_id].verdict == INCONCLUSIVE, results[case_id]
        assert results[case_id].why.endswith("so the lockout may have answered")
    assert results["J1.after"].verdict == INCONCLUSIVE and results["J1.after"].target is None
    assert "J1.after" not in target.sent and report.exit_code() == 2


def test_refusals_a_passing_good_call_followed_stand():
    target = ScriptedSide({"control.credential": [OK], "J1.denied": [NOT_FOUND], "auth.wrong": [UNAUTHORIZED],
                           "J1.after": [NOT_FOUND]})
    report, results = run(target, secret="s3cret-token", cases="J1.*,auth.wrong")
    assert report.cut_short is None and report.exit_code() == 0
    assert [results[i].verdict for i in ("J1.denied", "auth.wrong", "J1.after")] == [PASS, PASS, PASS]
    assert target.sent == ["control.credential", "J1.denied", "auth.wrong", "control.credential", "J1.after"]


def test_a_good_call_that_goes_unanswered_twice_is_no_lockout_and_says_so():
    target = ScriptedSide({"control.credential": [OK, TIMEOUT], "J1.denied": [NOT_FOUND], "auth.wrong": [UNAUTHORIZED],
                           "J1.after": [NOT_FOUND]})
    report, results = run(target, secret="s3cret-token", cases="J1.*,auth.wrong")
    assert report.cut_short == "after auth.wrong the target stopped answering the probe's own good call (no answer within 3 s)"
    assert target.sent.count("control.credential") == 3  # the control, then the good call and its one retry
    assert results["J1.denied"].why.endswith("the target stopped answering the probe's good calls before its next one "
                                             "passed, so the refusal may not be the case's")


def test_one_dropped_connection_on_a_good_call_is_tried_again_not_taken_for_a_lockout():
    target = ScriptedSide({"control.credential": [OK, CLOSED, OK], "J1.denied": [NOT_FOUND],
                           "auth.wrong": [UNAUTHORIZED], "J1.after": [NOT_FOUND]})
    report, results = run(target, secret="s3cret-token", cases="J1.*,auth.wrong")
    assert report.cut_short is None and results["J1.after"].verdict == PASS


def test_a_fail_the_record_proved_stands_through_a_lockout():
    """A lockout explains a refusal, never a denied call that reached the backend (review)."""
    target = ScriptedSide({"control.credential": [OK, RATE_LIMITED], "J1.denied": [NOT_FOUND],
                           "auth.wrong": [UNAUTHORIZED], "J1.after": [NOT_FOUND]})
    arrived = {"control.credential": [{"method": "POST", "path": "/tools/invoke", "headers": [["Host", "gw"]]}],
               "J1.denied": [{"method": "POST", "path": "/tools/invoke", "headers": [["Host", "gw"]]}]}
    report, results = run(target, record=arrived, secret="s3cret-token", backend_record="http://127.0.0.1:3",
                          cases="J1.*,auth.wrong")
    assert results["J1.denied"].verdict == FAIL and "reached the backend" in results["J1.denied"].why
    assert results["auth.wrong"].verdict == INCONCLUSIVE and report.exit_code() == 1


class Clock:
    """The engine's time, passing only as a scripted target takes its time to answer."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowSide(ScriptedSide):
    def __init__(self, script: dict[str, Iterable[Answer]], clock: Clock, seconds_per_answer: float) -> None:
        super().__init__(script)
        self.clock, self.seconds_per_answer = clock, seconds_per_answer

    def send(self, case: Case, ctx: Context | None = None) -> tuple[Answer, str]:
        self.clock.now += self.seconds_per_answer
        return super().send(case, ctx)


@pytest.mark.parametrize("max_seconds", [None, 8.0])
def test_once_max_seconds_has_passed_no_further_case_is_sent_and_the_refusals_before_stand(monkeypatch, max_seconds):
    """A run in CI must end in its slot: once --max-seconds has passed (8 s in, at the second
    answer) the rest is inconclusive, not sent, and the run exits 2; the target failed nothing,
    so what it refused before stands (a lockout's cut discounts it)."""
    clock = Clock()
    monkeypatch.setattr(engine, "time", clock)
    target = SlowSide({"control.credential": [OK], "J1.denied": [NOT_FOUND], "auth.wrong": [UNAUTHORIZED],
                       "J1.after": [NOT_FOUND]}, clock, 4.0)
    report, results = run(target, secret="s3cret-token", cases="J1.*,auth.wrong", max_seconds=max_seconds)
    assert [results[i].verdict for i in ("control.credential", "J1.denied")] == [PASS, PASS]
    if max_seconds is None:
        assert report.cut_short is None and report.exit_code() == 0
        assert [results[i].verdict for i in ("auth.wrong", "J1.after")] == [PASS, PASS]
        return
    assert report.cut_short == "the run reached --max-seconds 8"
    for case_id in ("auth.wrong", "J1.after"):
        assert results[case_id].verdict == INCONCLUSIVE
        assert results[case_id].why == "not sent: the run reached --max-seconds 8"
    assert target.sent == ["control.credential", "J1.denied"]
    assert report.duration_s == 8.0 and report.exit_code() == 2
    reported = to_json(report)
    assert reported["options"]["maxSeconds"] == 8.0 and reported["cutShort"] == report.cut_short


def test_a_baseline_that_locks_out_ends_the_comparison_not_the_run():
    """Its refusals since its last good call are the lockout's too: compared, the call the target
    rightly accepts was LOOSER (review)."""
    target = ScriptedSide({"control.credential": [OK], "J1.denied": [NOT_FOUND], "auth.accepted": [OK],
                           "auth.wrong": [UNAUTHORIZED], "J1.after": [NOT_FOUND]})
    baseline = ScriptedSide({"control.credential": [OK, RATE_LIMITED], "J1.denied": [NOT_FOUND],
                             "auth.accepted": [UNAUTHORIZED], "auth.wrong": [UNAUTHORIZED], "J1.after": [OK]})
    report, results = run(target, baseline, secret="s3cret-token", cases="J1.denied,auth.*,J1.after")
    assert report.baseline_cut_short is not None and report.baseline_cut_short.startswith(
        "after auth.wrong the baseline refused the probe's own good call")
    assert results["auth.accepted"].verdict == PASS and results["auth.accepted"].differential is None
    assert report.cut_short is None and results["J1.after"].verdict == PASS
    assert results["J1.after"].baseline is None and results["J1.after"].differential is None
    assert "J1.after" not in baseline.sent and report.exit_code() == 2
    errors = ET.fromstring(render_junit(report)).findall(".//testcase[@name='baseline-cut-short']/error")
    assert [e.get("message") for e in errors] == [report.baseline_cut_short]  # CI sees the run did not finish


def test_a_baseline_that_refuses_the_credential_gets_no_credentialed_case():
    """Each would be one more failed login there, walking the probe into its lockout (review)."""
    target = ScriptedSide({"control.credential": [OK], "J1.denied": [NOT_FOUND], "auth.wrong": [UNAUTHORIZED]})
    baseline = ScriptedSide({"control.credential": [UNAUTHORIZED], "auth.wrong": [UNAUTHORIZED]})
    _, results = run(target, baseline, secret="s3cret-token", cases="J1.denied,auth.wrong")
    assert baseline.sent == ["control.credential", "auth.wrong"]
    assert results["J1.denied"].baseline is None and results["auth.wrong"].differential == "SAME"


def test_without_the_websocket_control_a_refused_upgrade_proves_nothing():
    """control.websocket needs a credential: without one a target with no RPC WebSocket (404 on
    the upgrade) passed the WebSocket cases (review)."""
    packaged = load_corpus()
    side = ScriptedSide({"ws.connect-without-secret": [Answer("http", stage="upgrade", status=404, body=b"Not Found")]})
    probe = Probe(packaged, Options("http://127.0.0.1:1"), "9.9.9")
    probe.target = side  # type: ignore[assignment]
    result = probe.run_case(next(c for c in packaged.cases if c.id == "ws.connect-without-secret"))
    assert result.verdict == INCONCLUSIVE and "control.websocket (it needs a credential) did not run" in result.why


def test_without_a_credential_a_429_proves_nothing():
    target = ScriptedSide({"auth.wrong": [RATE_LIMITED]})
    report, results = run(target, cases="auth.*")
    assert results["auth.wrong"].verdict == INCONCLUSIVE
    assert results["auth.wrong"].why.endswith("without a credential the probe cannot tell a lockout from a refusal")


def test_websocket_cases_compare_what_arrives_with_the_control_upgrade_not_the_http_control():
    """The sidecar gives an upgrade the default scopes and a tools call the caller's: comparing the
    two made ws.upgrade-forged-scopes fail on a sound target (review)."""
    packaged = load_corpus()
    cases = {c.id: c for c in packaged.cases}
    probe = Probe(packaged, Options("http://127.0.0.1:1", secret="s3cret-token", backend_record="http://127.0.0.1:3"),
                  "9.9.9")
    probe.control_arrival = {"x-openclaw-scopes": ("operator.read",)}
    upgrade = {"method": "GET", "path": "/ws", "headers": [["x-openclaw-scopes", "operator.read,operator.write"]]}
    echoed = Answer("ws-echo", stage="connect", frame={"type": "req"})
    probe.learn_from_control(cases["control.websocket"], echoed, [upgrade], PASS, "accepted")
    verdict, why = probe.verdict_for(cases["ws.upgrade-forged-scopes"], Answer("ws-closed", stage="connect", close_code=1008), [upgrade])
    assert verdict == PASS, why
    forged = {**upgrade, "headers": [["x-openclaw-scopes", "operator.admin"]]}
    assert probe.verdict_for(cases["ws.upgrade-forged-scopes"], Answer("ws-closed", stage="connect", close_code=1008), [forged])[0] == "fail"


def test_an_upgrade_that_passes_authentication_with_the_bearer_is_judged_by_what_it_met():
    """A 404 to the retried upgrade is a missing route, not the Bearer refused (second evaluation)."""
    packaged = load_corpus()
    side = ScriptedSide({"control.websocket": [Answer("http", stage="upgrade", status=401),
                                               Answer("http", stage="upgrade", status=404, body=b"Not Found")]})
    probe = Probe(packaged, Options("http://127.0.0.1:1", secret="s3cret-token"), "9.9.9")
    probe.target = side  # type: ignore[assignment]
    result = probe.run_case(next(c for c in packaged.cases if c.id == "control.websocket"))
    assert result.verdict == NOT_APPLICABLE and result.why.startswith("the target serves no RPC WebSocket on / (refused: 404")
    assert side.ctx.bearer_upgrade and side.sent == ["control.websocket", "control.websocket"]


BAD_GATEWAY = Answer("http", status=502, body=b"Bad Gateway")


@pytest.mark.parametrize("after, cut_short", [
    (BAD_GATEWAY, "after auth.wrong the target stopped answering a call without credentials (502 Bad Gateway)"),
    (UNAUTHORIZED, None),
])
def test_without_a_credential_a_case_left_unanswered_is_followed_by_a_call_answered_at_all(after, cut_short):
    """No good call can pass, so any answer below 500 shows the target still up; a 5xx or none,
    twice running, is a target a case may have brought down (and the run ends there)."""
    target = ScriptedSide({"control.credential": [after], "auth.wrong": [CLOSED]})
    report, _ = run(target, cases="auth.*")
    liveness = "control.credential without credentials"
    assert target.sent == ["auth.wrong", liveness, *([liveness] if cut_short else [])]  # a 5xx is tried again
    assert report.cut_short == cut_short
