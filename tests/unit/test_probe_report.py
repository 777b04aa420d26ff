"""The probe's reports and command line: JSON that matches its documented schema version, JUnit XML
a CI parser reads, a table with a summary by class, the exit status, redaction and progress."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.cli import build_parser
from sidecar.probe.arguments import FORMATS
from sidecar.probe.command import WRITERS, Progress, options_from
from sidecar.probe.corpus import CORPUS_SCHEMA, Case, HttpRequest, load_corpus, parse_corpus
from sidecar.probe.engine import CaseResult, Observation, Options, Probe, Redactor, Report, applicability
from sidecar.probe.report import REPORT_SCHEMA, render_junit, render_table, to_json
from sidecar.probe.text import printable, visible
from sidecar.probe.verdict import FAIL, INCONCLUSIVE, LOOSER, NOT_APPLICABLE, PASS, SAME, STRICTER, Answer
from sidecar.probe.wire import Context, ProbeSetupError, render_request

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "probe-report"


def corpus_of(*cases: tuple[str, str]):
    return parse_corpus({
        "schema": CORPUS_SCHEMA, "gatewayVersion": "2026.9.6", "classes": {"A": "Forwarded headers", "J": "Tool names"},
        "cases": [{"id": case_id, "class": klass, "source": f"source of {case_id}", "title": f"title of {case_id}",
                   "http": {"method": "POST", "target": "/tools/invoke", "call": "exec"},
                   "expect": {"outcome": "refused"}} for case_id, klass in cases],
    })


CORPUS = corpus_of(("A1.one", "A"), ("A1.two", "A"), ("J1.three", "J"), ("J1.four", "J"))
CASES: dict[str, Case] = {c.id: c for c in CORPUS.cases}


def observed(verdict: str, why: str, admission: str | None = "refused", status: int | None = 404) -> Observation:
    return Observation("POST /tools/invoke HTTP/1.1\nHost: gw", f"HTTP {status}", status, admission, verdict, why)


def report_of(*results: CaseResult, baseline: str | None = None) -> Report:
    report = Report(Options("http://127.0.0.1:1", baseline=baseline), CORPUS, len(results), "ocprobe0", "9.9.9",
                    datetime(2026, 11, 30, tzinfo=UTC))
    report.results.extend(results)
    report.duration_s = 1.5
    return report


MIXED = report_of(
    CaseResult(CASES["A1.one"], PASS, "refused: 404", observed(PASS, "refused: 404"), arrivals=[]),
    CaseResult(CASES["A1.two"], FAIL, "let through: 200\x00", observed(FAIL, "let through", "let_through", 200),
               arrivals=[{"method": "POST", "path": "/tools/invoke", "headers": [["X-Evil", "ocprobe0"]]}]),
    CaseResult(CASES["J1.three"], NOT_APPLICABLE, "needs --identity-header"),
    CaseResult(CASES["J1.four"], INCONCLUSIVE, "no answer within 3 s", observed(INCONCLUSIVE, "no answer", None, None)),
)


def rich_report() -> Report:
    """Every part a report can have: a baseline and a backend record, each differential, a case cut
    in the table, a failure with what arrived, an inconclusive case, and both cuts of the run."""
    corpus = corpus_of(("A1.one", "A"), ("A1.two-with-a-rather-long-identifier-that-is-cut-in-the-table", "A"),
                       ("J1.three", "J"), ("J1.four", "J"), ("J1.five", "J"), ("J1.six", "J"))
    one, two, three, four, five, six = corpus.cases
    options = Options("https://gw.example:8443", baseline="http://127.0.0.1:18789", backend_record="http://127.0.0.1:9/record",
                      secret="s3cret-token-value", identity=(("x-forwarded-user", "alice"),), cases="A*,J1.*",
                      safe_tool="sessions_list", unsafe=True, ws_path="/ws", timeout=3.5, max_seconds=120.0)
    report = Report(options, corpus, 6, "ocprobe1234", "1.2.3", datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC))
    refused_by_baseline = observed(PASS, "refused: 403 forbidden")
    report.results.extend([
        CaseResult(one, PASS, "refused: 404 Not Found", observed(PASS, "refused: 404 Not Found"), arrivals=[],
                   baseline=observed(PASS, "refused: 404"), differential=SAME, duration_ms=12),
        CaseResult(two, PASS, "refused:   400\n  Bad   Request " + "x" * 130, observed(PASS, "refused: 400"),
                   baseline=observed(FAIL, "let through: 200", "let_through", 200), differential=STRICTER, duration_ms=1234),
        CaseResult(three, FAIL, "let through: 200 \\x1b[2J", observed(FAIL, "let through", "let_through", 200),
                   arrivals=[{"method": "POST", "path": "/tools/invoke", "headers": [["X-Evil", "ocprobe1234"], ["Host", "gw"]]}],
                   baseline=refused_by_baseline, differential=LOOSER, duration_ms=7),
        CaseResult(four, PASS, "refused: connection closed", Observation("POST /tools/invoke HTTP/1.1", "", None, "refused",
                                                                           PASS, "closed"),
                   baseline=refused_by_baseline, duration_ms=0),
        CaseResult(five, INCONCLUSIVE, "no answer within 3.5 s", observed(INCONCLUSIVE, "no answer", None, None),
                   duration_ms=3500),
        # passed on its own terms, but let through what the baseline refused
        CaseResult(six, PASS, "let through, stripped: 200", observed(PASS, "let through", "let_through", 200),
                   baseline=refused_by_baseline, differential=LOOSER, duration_ms=3),
    ])
    report.duration_s = 4.75061
    report.cut_short = "the target locked the probe out (429 twice running)"
    report.baseline_cut_short = "the baseline stopped answering"
    return report


def quiet_report() -> Report:
    """A run that passed: no baseline, safe cases only, an answer longer than the 40 lines kept."""
    long_answer = Observation("GET /x HTTP/1.1", "\n".join(f"line {n}" for n in range(45)), 404, "refused", PASS, "refused")
    return report_of(CaseResult(CASES["A1.one"], PASS, "refused: 404", long_answer, duration_ms=5),
                     CaseResult(CASES["J1.three"], NOT_APPLICABLE, "needs --identity-header"))


def nothing_judged_report() -> Report:
    return report_of(CaseResult(CASES["A1.one"], INCONCLUSIVE, "no answer within 3 s"),
                     CaseResult(CASES["J1.three"], NOT_APPLICABLE, "needs --identity-header"))


def cut_short_report() -> Report:
    report = report_of(CaseResult(CASES["A1.one"], PASS, "refused: 404", observed(PASS, "refused: 404")))
    report.cut_short = "the target locked the probe out"
    return report


def baseline_cut_short_report() -> Report:
    report = report_of(CaseResult(CASES["A1.one"], PASS, "refused: 404", observed(PASS, "refused: 404"),
                                  baseline=observed(PASS, "refused: 404"), differential=SAME), baseline="http://127.0.0.1:2")
    report.baseline_cut_short = "the baseline stopped answering"
    return report


def failing_report() -> Report:
    """MIXED without its NUL (the engine escapes what a target sends; the files stay text)."""
    return report_of(*(replace(result, why=result.why.rstrip("\x00")) for result in MIXED.results))


REPORTS = {"rich": rich_report, "failing": failing_report, "quiet": quiet_report, "nothing-judged": nothing_judged_report,
           "cut-short": cut_short_report, "baseline-cut-short": baseline_cut_short_report, "empty": report_of}


@pytest.mark.parametrize("form", ["txt", "xml", "json"])
@pytest.mark.parametrize("name", list(REPORTS))
def test_each_report_matches_its_golden_file(name: str, form: str) -> None:
    """Every line, column and field as a reader or a CI parser gets them, for each way a run ends
    (the writers' formats and words were unpinned: a mutation sweep left 276 of 557 mutants
    alive). Regenerate a file only after reading its diff."""
    text = {"txt": render_table, "xml": render_junit, "json": WRITERS["json"]}[form](REPORTS[name]())
    assert text == (GOLDEN / f"{name}.{form}").read_text(encoding="utf-8")


def test_junit_counts_agree_with_the_testcases_they_sum() -> None:
    """CI tools check the totals against the cases: the run's own errors are testcases too."""
    root = ET.fromstring(render_junit(rich_report()))
    cases = list(root.iter("testcase"))
    assert root.get("tests") == str(len(cases)) == "8"
    for kind in ("failure", "skipped", "error"):
        counted = sum(1 for case in cases if case.find(kind) is not None)
        assert root.get({"failure": "failures", "skipped": "skipped", "error": "errors"}[kind]) == str(counted)
    for suite in root.findall("testsuite"):
        suite_cases = suite.findall("testcase")
        assert suite.get("tests") == str(len(suite_cases))
        assert suite.get("failures") == str(sum(1 for case in suite_cases if case.find("failure") is not None))
        assert suite.get("skipped") == str(sum(1 for case in suite_cases if case.find("skipped") is not None))
        assert suite.get("errors") == str(sum(1 for case in suite_cases if case.find("error") is not None))


# ---- JSON ----------------------------------------------------------------------------------------


def test_json_carries_its_schema_version_and_every_documented_field():
    data = json.loads(WRITERS["json"](MIXED))
    assert data["schema"] == REPORT_SCHEMA == "openclaw-sidecar-probe-report/1"
    assert data["corpus"] == {"schema": CORPUS_SCHEMA, "gatewayVersion": "2026.9.6", "cases": 4, "selected": 4}
    assert set(data) == {"schema", "tool", "corpus", "target", "baseline", "backendRecord", "options", "marker",
                         "startedAt", "durationSeconds", "summary", "exitCode", "cutShort",
                         "baselineCutShort", "cases"}
    assert set(data["cases"][0]) == {"id", "class", "source", "title", "expect", "unsafe", "needs", "verdict", "why",
                                     "sent", "received", "status", "admission", "arrived", "baseline", "differential",
                                     "durationMs"}
    assert data["exitCode"] == 1
    assert data["summary"]["total"] == 4
    assert (data["summary"]["pass"], data["summary"]["fail"], data["summary"]["not_applicable"],
            data["summary"]["inconclusive"]) == (1, 1, 1, 1)
    assert data["summary"]["byClass"]["A"] == {"title": "Forwarded headers", "pass": 1, "fail": 1, "not_applicable": 0,
                                               "inconclusive": 0, "SAME": 0, "STRICTER": 0, "LOOSER": 0}
    not_sent = data["cases"][2]
    assert (not_sent["verdict"], not_sent["sent"], not_sent["arrived"]) == ("not_applicable", None, None)


def test_the_schema_document_describes_this_version():
    schema_doc = (ROOT / "sidecar" / "probe" / "SCHEMA.md").read_text()
    assert REPORT_SCHEMA in schema_doc and CORPUS_SCHEMA in schema_doc
    for field in to_json(MIXED)["cases"][0]:
        assert f'"{field}"' in schema_doc, field


# ---- exit status ----------------------------------------------------------------------------------


def test_exit_status_is_1_for_a_failure_or_a_looser_case_only():
    ok = CaseResult(CASES["A1.one"], PASS, "refused")
    assert report_of(ok, CaseResult(CASES["J1.three"], NOT_APPLICABLE, "x"),
                     CaseResult(CASES["J1.four"], INCONCLUSIVE, "y")).exit_code() == 0
    assert report_of(ok, CaseResult(CASES["A1.two"], FAIL, "let through")).exit_code() == 1
    looser = CaseResult(CASES["A1.two"], PASS, "stripped", observed(PASS, "x", "let_through", 200),
                        baseline=observed(PASS, "refused: 400"), differential="LOOSER")
    assert report_of(ok, looser, baseline="http://gw").exit_code() == 1


def test_exit_status_is_2_when_no_case_was_judged_and_0_for_no_case_at_all():
    """Every case inconclusive or not applicable tested nothing (a target that answers only the
    controls); no case besides the controls is what `--cases` asked for."""
    assert report_of(CaseResult(CASES["J1.three"], NOT_APPLICABLE, "x"),
                     CaseResult(CASES["J1.four"], INCONCLUSIVE, "y")).exit_code() == 2
    assert report_of().exit_code() == 0


# ---- JUnit ---------------------------------------------------------------------------------------


def test_junit_is_parseable_with_one_suite_per_class_and_the_right_counts():
    root = ET.fromstring(render_junit(MIXED))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "1", "2")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"A: Forwarded headers", "J: Tool names"}
    failure = suites["A: Forwarded headers"].find("testcase[@name='A1.two']/failure")
    assert failure is not None and failure.get("message") == "let through: 200\ufffd"  # no XML 1.0 parser takes a NUL
    assert "X-Evil: ocprobe0" in failure.text  # what reached the backend is in the evidence
    skipped = [s.get("message") for s in suites["J: Tool names"].iter("skipped")]
    assert skipped == ["not applicable: needs --identity-header", "inconclusive: no answer within 3 s"]


def test_junit_marks_a_looser_case_as_a_failure():
    looser = CaseResult(CASES["A1.one"], PASS, "let through", observed(PASS, "let through", "let_through", 200),
                        baseline=observed(PASS, "refused: 400 bad request"), differential="LOOSER")
    failure = ET.fromstring(render_junit(report_of(looser, baseline="http://gw"))).find(".//failure")
    assert failure.get("type") == "LOOSER" and "refused: 400" in failure.get("message")


# ---- table ---------------------------------------------------------------------------------------


def test_the_table_lists_every_case_details_the_failures_and_sums_up_by_class():
    table = render_table(MIXED)
    for case_id in CASES:
        assert case_id in table
    details = table[table.index("Failures"):table.index("Summary by class")]
    assert "A1.two (A) title of A1.two" in details and "source: source of A1.two" in details
    assert "arrived at the backend: POST /tools/invoke" in details and "A1.one" not in details
    summary = table[table.index("Summary by class"):]
    assert [line.split()[:5] for line in summary.splitlines()[2:5]] == [
        ["A", "1", "1", "0", "0"], ["J", "0", "0", "1", "1"], ["total", "1", "1", "1", "1"]]
    assert "result: FAIL: 1 failed, 1 passed, 1 inconclusive, 1 not applicable" in table


def test_the_table_grows_a_differential_column_with_a_baseline():
    same = CaseResult(CASES["A1.one"], PASS, "refused", observed(PASS, "refused"), baseline=observed(PASS, "refused"),
                      differential="SAME")
    table = render_table(report_of(same, baseline="http://gw"))
    assert "DIFF" in table and "SAME" in table and "0 LOOSER than the baseline" in table


# ---- redaction and readable bytes ---------------------------------------------------------------


def test_secrets_never_reach_a_report():
    redact = Redactor("s3cret-token")
    assert redact.text("Authorization: Bearer s3cret-token") == "Authorization: Bearer <secret>"
    echoed = '{"params":{"auth":{"token":"upstream-token","password":"pw"}}}'
    assert redact.text(echoed) == '{"params":{"auth":{"token":"<redacted>","password":"<redacted>"}}}'
    [arrived] = redact.arrivals([{"method": "POST", "path": "/x", "headers": [["Authorization", "Bearer up"],
                                                                            ["X-Note", "a\x00s3cret-token"]]}])
    assert arrived["headers"] == [["Authorization", "<redacted>"], ["X-Note", "a\\x00<secret>"]]


def test_a_short_secret_is_never_hunted_in_free_text_but_is_never_sent_in_a_report_either():
    assert Redactor("T").text("TOKEN_MISMATCH") == "TOKEN_MISMATCH"
    assert Redactor("T").text('{"auth":{"token":"T"}}') == '{"auth":{"token":"<redacted>"}}'
    shown = Context("gw", "agents_list", "ocprobe0", secret="T").shown()
    request = HttpRequest("POST", "/tools/invoke", (("X-OpenClaw-Token", "${secret}"),), credential=True)
    assert render_request(request, shown) == (b"POST /tools/invoke HTTP/1.1\r\nHost: gw\r\n"
                                              b"Authorization: Bearer <secret>\r\nX-OpenClaw-Token: <secret>\r\n\r\n")


def test_odd_bytes_stay_visible():
    assert printable(b"GET / HTTP/1.1\r\nX: a\nb\x00\xff\r\n") == "GET / HTTP/1.1\nX: a\\n\nb\\x00\\xff\n"
    assert visible("a\r\nb\tc") == "a\\x0d\\x0ab\tc"
    assert printable(b"abcdef", limit=3) == "abc... (3 more bytes)"


# ---- options and applicability ------------------------------------------------------------------


def parse(*argv: str):
    return build_parser().parse_args(["probe", *argv])


def test_the_probe_subcommand_takes_every_documented_option():
    args = parse("https://gw.example", "--password", "pw", "--identity-header", "X-Forwarded-User=alice",
                 "--identity-header", "X-Forwarded-For=203.0.113.9", "--cases", "A*,E3.*", "--safe-tool", "sessions_list",
                 "--baseline", "http://127.0.0.1:18789", "--backend-record", "http://127.0.0.1:18788", "--unsafe",
                 "--format", "junit", "--out", "r.xml", "--ws-path", "/ws", "--timeout", "3", "--max-seconds", "600")
    options = options_from(args)
    assert options == Options(target="https://gw.example", baseline="http://127.0.0.1:18789",
                              backend_record="http://127.0.0.1:18788", secret="pw", secret_field="password",
                              identity=(("X-Forwarded-User", "alice"), ("X-Forwarded-For", "203.0.113.9")),
                              cases="A*,E3.*", safe_tool="sessions_list", unsafe=True, ws_path="/ws", timeout=3.0,
                              max_seconds=600.0)
    assert args.format == "junit" and args.out == Path("r.xml")
    assert set(FORMATS) == set(WRITERS)


def test_token_and_password_are_exclusive():
    with pytest.raises(SystemExit):
        parse("http://gw", "--token", "t", "--password", "p")


@pytest.mark.parametrize("argv,complaint", [
    (["--identity-header", "no-equals-sign"], "NAME=VALUE"), (["--ws-path", "ws"], "start with /"),
    (["--timeout", "0"], "more than 0"), (["--timeout", "nan"], "more than 0"), (["--timeout", "inf"], "at most 3600"),
    (["--timeout", "1e300"], "at most 3600"),  # a deadline past the clock's range crashed the run (exit 1)
    (["--max-seconds", "0"], "more than 0"), (["--max-seconds", "nan"], "more than 0"),
    (["--max-seconds", "1e300"], "at most 604800"),
])
def test_bad_option_values_are_setup_errors(argv, complaint):
    with pytest.raises(ProbeSetupError, match=complaint):
        options_from(parse("http://gw", *argv))


@pytest.mark.parametrize("needs,options,reason", [
    ({"unsafe"}, Options("http://gw", secret="t"), "--unsafe"),
    ({"secret"}, Options("http://gw", identity=(("u", "a"),)), "--token or --password"),
    ({"credential"}, Options("http://gw"), "--identity-header"),
    ({"identity"}, Options("http://gw", secret="t"), "trusted-proxy"),
    ({"record"}, Options("http://gw", secret="t"), "--backend-record"),
    ({"untrusted"}, Options("http://gw", identity=(("u", "a"),)), "untrusted caller"),
    ({"untrusted"}, Options("http://gw", secret="t"), None),
    ({"credential", "secret"}, Options("http://gw", secret="t"), None),
    ({"credential", "identity", "record", "unsafe"},
     Options("http://gw", identity=(("u", "a"),), backend_record="http://r", unsafe=True), None),
])
def test_applicability(needs, options, reason):
    case = CASES["A1.one"]
    found = applicability(Case(case.id, case.klass, case.source, case.title, frozenset(needs), case.request, case.expect),
                          options)
    assert (found is None) if reason is None else (reason in found)


# ---- progress ------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    result = CaseResult(CASES["A1.one"], PASS, "refused")
    plain = io.StringIO()
    Progress(plain)(1, 4, result)
    assert plain.getvalue() == "[  1/4] pass           A1.one\n"
    terminal = Terminal()
    Progress(terminal)(2, 4, result)
    assert terminal.getvalue().startswith("\r[" + "#" * 15 + "." * 15 + "] 2/4 A1.one")
    assert "\n" not in terminal.getvalue()


# ---- the package stays engine-agnostic -----------------------------------------------------------


def test_no_probe_module_imports_mitmproxy():
    modules = ["sidecar.probe", *(f"sidecar.probe.{p.stem}" for p in (ROOT / "sidecar" / "probe").glob("*.py")
                                  if p.stem != "__init__")]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mitmproxy'))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_packaged_corpus_loads_from_the_installed_package_data():
    assert len(load_corpus().cases) >= 80


# ---- the controls --------------------------------------------------------------------------------


def test_a_control_that_decides_nothing_fails_the_run_and_a_missing_websocket_is_not_applicable():
    packaged = load_corpus()
    controls = {c.id: c for c in packaged.cases if c.klass == "control"}
    probe = Probe(packaged, Options("http://127.0.0.1:1", secret="s3cret-token"), "9.9.9")
    verdict, why = probe.learn_from_control(controls["control.credential"], Answer("http", status=502), None,
                                            INCONCLUSIVE, "502 (an upstream or internal error)")
    assert verdict == FAIL and "decided nothing" in why
    assert probe.credential_refusal is not None
    with pytest.raises(ProbeSetupError, match="did not answer control.credential: no answer within 3 s"):
        # a target that takes connections and answers nothing is one the probe cannot run against
        probe.learn_from_control(controls["control.credential"], Answer("timeout", error="no answer within 3 s"), None,
                                 INCONCLUSIVE, "no answer within 3 s")
    no_upgrade = Answer("http", stage="upgrade", status=404, body=b"Not Found")
    verdict, why = probe.learn_from_control(controls["control.websocket"], no_upgrade, None, FAIL, "refused: 404")
    assert verdict == NOT_APPLICABLE and "no RPC WebSocket on /" in why
    assert probe.websocket_refusal == why


def test_a_refused_credential_makes_the_cases_that_need_the_secret_inconclusive_too():
    """A wrong --token: D1's two Authorization headers are refused whatever the target does."""
    packaged = load_corpus()
    controls = {c.id: c for c in packaged.cases if c.klass == "control"}
    probe = Probe(packaged, Options("http://127.0.0.1:1", secret="not-the-token"), "9.9.9")
    probe.learn_from_control(controls["control.credential"], Answer("http", status=401), None, FAIL, "refused: 401")
    needs_secret = next(c for c in packaged.cases if c.needs == {"secret"})
    result = probe.run_case(needs_secret)  # nothing listens on port 1: the case must not be sent at all
    assert result.verdict == INCONCLUSIVE and result.target is None
    assert result.why == "not sent: a refusal would prove nothing, since control.credential did not pass (refused: 401)"
