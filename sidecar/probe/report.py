"""The probe's reports: a table for people, JSON (schema in SCHEMA.md) and JUnit XML for machines.

Pure: each writer turns a finished `Report` into text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

from .engine import CaseResult, Observation, Report
from .verdict import FAIL, INCONCLUSIVE, LOOSER, NOT_APPLICABLE, PASS, SAME, STRICTER

REPORT_SCHEMA = "openclaw-sidecar-probe-report/1"
VERDICTS = (PASS, FAIL, NOT_APPLICABLE, INCONCLUSIVE)
DIFFERENTIALS = (SAME, STRICTER, LOOSER)
LABELS = {PASS: "pass", FAIL: "FAIL", NOT_APPLICABLE: "not applicable", INCONCLUSIVE: "inconclusive"}


def class_counts(report: Report) -> dict[str, dict[str, int]]:
    """Per class (corpus order): how many cases got each verdict and each differential."""
    counts: dict[str, Counter[str]] = {k: Counter() for k in report.corpus.classes}
    for result in report.results:
        counts[result.case.klass][result.verdict] += 1
        if result.differential:
            counts[result.case.klass][result.differential] += 1
    return {k: {key: c[key] for key in (*VERDICTS, *DIFFERENTIALS)} for k, c in counts.items() if sum(c.values())}


def totals(report: Report) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counts in class_counts(report).values():
        total.update(counts)
    return {key: total[key] for key in (*VERDICTS, *DIFFERENTIALS)}


# ---------------------------------------------------------------- JSON


def _observation(obs: Observation | None) -> dict[str, Any] | None:
    if obs is None:
        return None
    return {"sent": obs.sent, "received": obs.received, "status": obs.status, "admission": obs.admission,
            "verdict": obs.verdict, "why": obs.why}


def _case_json(result: CaseResult) -> dict[str, Any]:
    case = result.case
    return {
        "id": case.id, "class": case.klass, "source": case.source, "title": case.title,
        "expect": case.expect.outcome, "unsafe": case.unsafe, "needs": sorted(case.needs),
        "verdict": result.verdict, "why": result.why,
        "sent": result.target.sent if result.target else None,
        "received": result.target.received if result.target else None,
        "status": result.target.status if result.target else None,
        "admission": result.target.admission if result.target else None,
        "arrived": result.arrivals,
        "baseline": _observation(result.baseline),
        "differential": result.differential,
        "durationMs": result.duration_ms,
    }


def to_json(report: Report) -> dict[str, Any]:
    options = report.options
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "openclaw-sidecar probe", "version": report.version},
        "corpus": {"schema": report.corpus.schema, "gatewayVersion": report.corpus.gateway_version,
                   "cases": len(report.corpus.cases), "selected": report.selected},
        "target": options.target, "baseline": options.baseline, "backendRecord": options.backend_record,
        "options": {"cases": options.cases or "*", "safeTool": options.safe_tool, "unsafe": options.unsafe,
                    "credential": options.credential_kind, "identityHeaders": [n for n, _ in options.identity],
                    "wsPath": options.ws_path, "timeoutSeconds": options.timeout,
                    "maxSeconds": options.max_seconds},
        "marker": report.marker,
        "startedAt": report.started.isoformat(timespec="seconds"),
        "durationSeconds": round(report.duration_s, 3),
        "summary": {**totals(report), "total": len(report.results),
                    "byClass": {k: {"title": report.corpus.classes[k], **v} for k, v in class_counts(report).items()}},
        "exitCode": report.exit_code(),
        "cutShort": report.cut_short, "baselineCutShort": report.baseline_cut_short,
        "cases": [_case_json(r) for r in report.results],
    }


# ---------------------------------------------------------------- table


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _indented(label: str, text: str | None) -> list[str]:
    if not text:
        return []
    return [f"  {label}:"] + [f"    {line}" for line in text.splitlines()[:40]]


def _details(result: CaseResult) -> list[str]:
    case = result.case
    lines = [f"{case.id} ({case.klass}) {case.title}", f"  source: {case.source}", f"  why: {result.why}"]
    if result.target:
        lines += _indented("sent", result.target.sent) + _indented("came back", result.target.received)
    for record in result.arrivals or []:
        lines.append(f"  arrived at the backend: {record['method']} {record['path']}")
        lines += [f"    {name}: {value}" for name, value in record["headers"]]
    if result.baseline:
        lines.append(f"  baseline: {result.differential or '-'}: {result.baseline.why}")
    return lines


def render_table(report: Report) -> str:
    options = report.options
    lines = [f"openclaw-sidecar probe {report.version}: {options.target}"
             + (f" (baseline {options.baseline})" if options.baseline else "")
             + (f" (backend record {options.backend_record})" if options.backend_record else ""),
             f"corpus for gateway {report.corpus.gateway_version}: {report.selected} of {len(report.corpus.cases)} cases, "
             f"marker {report.marker}" + ("" if options.unsafe else "; unsafe cases skipped (--unsafe runs them)"), ""]
    width = min(44, max((len(r.case.id) for r in report.results), default=10))
    diff_col = bool(options.baseline)
    lines.append(f"{'ID':<{width}}  {'CLASS':<8}{'VERDICT':<16}" + ("DIFF      " if diff_col else "") + "WHY")
    for r in report.results:
        diff = f"{r.differential or '-':<10}" if diff_col else ""
        lines.append(f"{_cut(r.case.id, width):<{width}}  {r.case.klass:<8}{LABELS[r.verdict]:<16}{diff}{_cut(r.why, 110)}")
    flagged = [r for r in report.results if r.verdict == FAIL or r.differential == LOOSER]
    if flagged:
        lines += ["", "Failures" + (" and LOOSER cases" if diff_col else ""), "--------"]
        for r in flagged:
            lines += _details(r) + [""]
    lines += ["", "Summary by class", _summary_row("CLASS", ["PASS", "FAIL", "N/A", "INCONCL"], diff_col, "TITLE")]
    for klass, counts in class_counts(report).items():
        lines.append(_summary_row(klass, _row_values(counts), diff_col, report.corpus.classes[klass], counts))
    total = totals(report)
    cases = len(report.results)
    lines.append(_summary_row("total", _row_values(total), diff_col, f"{cases} case{'' if cases == 1 else 's'}", total))
    code = report.exit_code()
    outcome = "CUT SHORT" if code == 2 and (report.cut_short or report.baseline_cut_short) else (
        "PASS", "FAIL", "NOTHING JUDGED")[code]
    lines += [""] + [f"cut short: {why}" for why in (report.cut_short, report.baseline_cut_short) if why]
    lines += [f"result: {outcome}: {total[FAIL]} failed, {total[PASS]} passed, {total[INCONCLUSIVE]} inconclusive, "
              f"{total[NOT_APPLICABLE]} not applicable" + (f", {total[LOOSER]} LOOSER than the baseline" if diff_col else "")]
    return "\n".join(lines) + "\n"


def _row_values(counts: dict[str, int]) -> list[str]:
    return [str(counts[k]) for k in VERDICTS]


def _summary_row(label: str, values: list[str], diff_col: bool, title: str, counts: dict[str, int] | None = None) -> str:
    cells = "".join(f"{v:>8}" for v in values)
    if diff_col:
        diffs = [str(counts[k]) for k in DIFFERENTIALS] if counts else list(DIFFERENTIALS)
        cells += "".join(f"{v:>10}" for v in diffs)
    return f"{label:<8}{cells}  {title}"


# ---------------------------------------------------------------- JUnit

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text XML 1.0 can carry: an answer may hold control bytes no XML parser accepts."""
    return _NOT_XML.sub("\ufffd", text)



def render_junit(report: Report) -> str:
    """JUnit XML: one testsuite per class; a failure per failed or LOOSER case, a skip (with the
    reason) per case that was not applicable or inconclusive; an error per cut the run was cut short by."""
    total = totals(report)
    flagged = sum(1 for r in report.results if r.verdict == FAIL or r.differential == LOOSER)
    root = ET.Element("testsuites", name="openclaw-sidecar probe", tests=str(len(report.results)),
                      failures=str(flagged), skipped=str(total[NOT_APPLICABLE] + total[INCONCLUSIVE]),
                      time=f"{report.duration_s:.3f}")
    for klass, title in report.corpus.classes.items():
        results = [r for r in report.results if r.case.klass == klass]
        if not results:
            continue
        suite = ET.SubElement(root, "testsuite", name=f"{klass}: {title}", tests=str(len(results)),
                              failures=str(sum(1 for r in results if r.verdict == FAIL or r.differential == LOOSER)),
                              skipped=str(sum(1 for r in results if r.verdict in (NOT_APPLICABLE, INCONCLUSIVE))),
                              errors="0", time=f"{sum(r.duration_ms for r in results) / 1000:.3f}")
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=f"openclaw-sidecar.probe.{klass}", name=r.case.id,
                                 time=f"{r.duration_ms / 1000:.3f}")
            detail = _xml("\n".join(_details(r)))
            if r.verdict == FAIL:
                ET.SubElement(case, "failure", message=_xml(r.why), type="fail").text = detail
            elif r.differential == LOOSER:
                why = r.baseline.why if r.baseline else ""
                ET.SubElement(case, "failure", message=_xml(f"LOOSER than the baseline, which {why}"),
                              type="LOOSER").text = detail
            elif r.verdict in (NOT_APPLICABLE, INCONCLUSIVE):
                ET.SubElement(case, "skipped", message=_xml(f"{LABELS[r.verdict]}: {r.why}"))
            ET.SubElement(case, "system-out").text = detail
    cuts = [(name, why) for name, why in (("cut-short", report.cut_short), ("baseline-cut-short", report.baseline_cut_short))
            if why]
    if report.exit_code() == 2 and report.judged_nothing():
        cuts.append(("nothing-judged", "no case but the controls was judged: each was inconclusive or not applicable"))
    if cuts:  # the run did not finish, or judged nothing (exit status 2): an error CI shows, not only skips
        root.set("errors", str(len(cuts)))
        root.set("tests", str(len(report.results) + len(cuts)))  # every testcase, these too
        suite = ET.SubElement(root, "testsuite", name="run: the probe's own run", tests=str(len(cuts)), failures="0",
                              skipped="0", errors=str(len(cuts)), time="0.000")
        for name, why in cuts:
            case = ET.SubElement(suite, "testcase", classname="openclaw-sidecar.probe.run", name=name, time="0.000")
            ET.SubElement(case, "error", message=_xml(why), type=name)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
