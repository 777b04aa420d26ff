"""Runs the corpus against a target (and a baseline), one case at a time.

Two control cases run first and every other case is judged against them: `control.credential`
(the probe's own credential works, so a refusal means the attack was refused and not the caller)
and `control.websocket` (the target serves the RPC WebSocket at all). A case that would count as
a failed login is followed by one good call, so the probe never walks its own address into a
lockout on a production gateway; so is every fifth refusal in a row, so a sidecar's refusal
pacing never delays its answers, every 429, and every case that got no answer (a connection closed
or refused, or a timeout: the case may have brought the target down, which is no refusal). A good call the target refuses means it has
locked the probe out anyway: every later refusal would be the lockout's, so the run stops there.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .corpus import Case, Corpus, WsRequest
from .record import BackendRecord
from .text import printable, visible
from .verdict import (
    FAIL, INCONCLUSIVE, LOOSER, NOT_APPLICABLE, PASS, Admission, Answer, Verdict, admission, arrived_values,
    differential, judge, kept_headers, summary,
)
from .wire import Context, Endpoint, ProbeSetupError, exchange, render_request, sent_headers
from .ws import exchange_ws

CONTROL_CREDENTIAL = "control.credential"
CONTROL_WEBSOCKET = "control.websocket"
# A sidecar paces a client refused many times in a row (sidecar.rateLimit.refusalPacing, from the
# 11th refusal by default): a good call every few refusals keeps the probe's own run short of it.
REFUSALS_BETWEEN_GOOD_CALLS = 5
# How long a case that could smuggle a request keeps reading after its last answer (capped by --timeout):
# a hop behind the target answers the smuggled request right after the one it was hidden in.
LINGER_SECONDS = 0.5
# A good call that got no answer is tried once more after this long (capped by --timeout): one
# dropped connection or a 502 while the gateway restarts is no reason to stop the run.
GOOD_CALL_RETRY_SECONDS = 1.0
# Cases that present the probe's own secret or credential: when control.credential shows the target
# refuses it, their refusals prove nothing (a wrong --token makes every such case look refused).
CREDENTIALED = frozenset({"credential", "secret"})


@dataclass(frozen=True)
class Options:
    target: str
    baseline: str | None = None
    backend_record: str | None = None
    secret: str | None = None
    secret_field: str = "token"  # "password" with --password: the connect frame names it so
    identity: tuple[tuple[str, str], ...] = ()
    cases: str | None = None
    safe_tool: str = "agents_list"
    unsafe: bool = False
    ws_path: str = "/"
    timeout: float = 10.0
    max_seconds: float | None = None  # the whole run's: past it no further case is sent

    @property
    def credential_kind(self) -> str:
        """What the probe authenticates with, for the report: token, password, identity or none."""
        if self.secret:
            return self.secret_field
        return "identity" if self.identity else "none"


@dataclass(frozen=True)
class Observation:
    """One side's exchange for a case: what went out, what came back, and how it was read."""

    sent: str
    received: str
    status: int | None
    admission: Admission | None
    verdict: Verdict
    why: str


@dataclass(frozen=True)
class CaseResult:
    case: Case
    verdict: Verdict
    why: str
    target: Observation | None = None  # None: the case was not sent
    arrivals: list[dict[str, Any]] | None = None
    baseline: Observation | None = None
    differential: str | None = None
    duration_ms: int = 0


@dataclass
class Report:
    options: Options
    corpus: Corpus
    selected: int
    marker: str
    version: str
    started: datetime
    results: list[CaseResult] = field(default_factory=list)
    duration_s: float = 0.0
    cut_short: str | None = None  # why the run stopped sending cases (the target locked the probe out)
    baseline_cut_short: str | None = None  # why it stopped comparing with the baseline

    def exit_code(self) -> int:
        """1 when any case fails or, against a baseline, lets through what the baseline refused;
        else 2 when the run was cut short, since its later cases tested (or compared) nothing, or
        when no case but the controls was judged (a target that answers nothing else, say)."""
        if any(r.verdict == FAIL or r.differential == LOOSER for r in self.results):
            return 1
        return 2 if self.cut_short or self.baseline_cut_short or self.judged_nothing() else 0

    def judged_nothing(self) -> bool:
        """Cases besides the controls ran and none passed or failed: each was inconclusive or not
        applicable (a run of the controls alone, as `--cases` may ask, judged what it was asked)."""
        others = [r.verdict for r in self.results if r.case.klass != "control"]
        return bool(others) and not any(verdict in (PASS, FAIL) for verdict in others)


def refusal_decides(case: Case, admitted: Admission | None, verdict: Verdict) -> bool:
    """The verdict rests on the target's refusal alone: a pass for a case it must refuse, a fail for
    one the contract accepts. Not a fail the backend record or a leak proved."""
    return admitted == "refused" and (verdict == PASS or (verdict == FAIL and case.expect.outcome == "accepted"))


def discount_refusals(results: list[CaseResult], since: Sequence[int], why: str) -> None:
    """The target stopped passing good calls: the refusals since its last passing one may not be the
    cases' own, so they prove nothing either way."""
    for index in since:
        result = results[index]
        if result.target is not None and refusal_decides(result.case, result.target.admission, result.verdict):
            results[index] = replace(result, verdict=INCONCLUSIVE, differential=None, why=f"{result.why}; but {why}")


def uncompare(results: list[CaseResult], since: Sequence[int]) -> None:
    """The baseline stopped passing good calls: its answers since its last passing one may be a
    lockout's, so those cases are not compared."""
    for index in since:
        results[index] = replace(results[index], differential=None)


def applicability(case: Case, options: Options) -> str | None:
    """Why a case cannot run with these options (not applicable), or None."""
    needs = case.needs
    if "unsafe" in needs and not options.unsafe:
        return "could change state on a vulnerable target; runs only with --unsafe"
    if "secret" in needs and not options.secret:
        return "needs the shared secret (--token or --password)"
    if "credential" in needs and not (options.secret or options.identity):
        return "needs a credential (--token, --password or --identity-header)"
    if "identity" in needs and not options.identity:
        return "applies to trusted-proxy deployments: needs --identity-header"
    if "untrusted" in needs and options.identity:
        return ("sending the trusted proxy's own headers (--identity-header), the probe stands where the proxy "
                "stands: run it without them to play an untrusted caller")
    if "record" in needs and not options.backend_record:
        return "only the backend sees it: needs --backend-record"
    return None


# ---------------------------------------------------------------- report text

_SECRET_FIELDS = re.compile(r'("(?:token|password|deviceToken|bootstrapToken)"\s*:\s*")[^"]*(")')


def answer_text(answer: Answer) -> str:
    if answer.kind == "http":
        head = f"HTTP {answer.status}" + "".join(f"\n{visible(k)}: {visible(v)}" for k, v in answer.headers)
        unasked = f"\n\n(then, unasked)\n{printable(answer.unasked)}" if answer.unasked else ""
        return head + ("\n\n" + printable(answer.body) if answer.body else "") + unasked
    if answer.kind in ("ws-res", "ws-echo"):
        return f"{answer.stage} answer: {visible(answer.body.decode('utf-8', 'replace'))}"
    if answer.kind == "ws-closed":  # the close reason is the target's own text
        return f"{answer.stage}: WebSocket closed with {answer.close_code} {visible(answer.error)}".rstrip()
    return f"{answer.stage}: {answer.kind} {visible(answer.error)}".rstrip()


def _shown_forms(secret: str) -> set[str]:
    """The secret as a report may show it, wherever a target echoed it."""
    forms: set[str] = set()
    for written in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms |= {written, visible(written), written.encode("utf-8").decode("latin-1")}  # its UTF-8 read as Latin-1
        for encoding in ("utf-8", "latin-1"):
            try:
                forms.add(printable(written.encode(encoding)))
            except UnicodeEncodeError:
                pass
    return forms


class Redactor:
    """Keeps secrets out of what came back (an echo, a reflected header). What was sent is rendered
    with `<secret>` in the first place (Context.shown); here a secret too short to find safely in
    free text (under MIN_SECRET characters) is caught only in credential fields. A secret is looked
    for in every form a report shows it in: as written, JSON-escaped (an echo in a JSON string), and
    escaped by `visible` or `printable` (its Latin-1 or UTF-8 bytes past ASCII as \\xNN)."""

    MIN_SECRET = 6

    def __init__(self, secret: str | None) -> None:
        self.secret = secret if secret and len(secret) >= self.MIN_SECRET else None
        self.forms = sorted(_shown_forms(self.secret), key=len, reverse=True) if self.secret else []

    def text(self, text: str) -> str:
        return _SECRET_FIELDS.sub(r"\1<redacted>\2", self.secret_out(text))

    def secret_out(self, text: str) -> str:
        """The secret alone replaced: what is still to be judged keeps its other values as they came."""
        for form in self.forms:
            text = text.replace(form, "<secret>")
        return text

    def answer(self, answer: Answer) -> Answer:
        """The answer with the secret replaced wherever the target echoed it, before any of it is
        read into a reason: a reason cuts what it quotes (a body's first 60 characters), and a
        secret cut in two is no longer found (the first 60 characters of a 64-character token)."""
        if not self.secret:
            return answer
        return replace(answer, body=self.raw(answer.body), unasked=self.raw(answer.unasked), error=self.secret_out(answer.error),
                       headers=tuple((self.secret_out(k), self.secret_out(v)) for k, v in answer.headers),
                       frame=self.value(answer.frame))

    def raw(self, data: bytes) -> bytes:
        for form in self.forms:
            for encoding in ("utf-8", "latin-1"):
                with contextlib.suppress(UnicodeEncodeError):
                    data = data.replace(form.encode(encoding), b"<secret>")
        return data

    # Deeper than this a frame or a record is never quoted (the report shows a frame's redacted body):
    # a target's frame nested near the parser's own limit would exhaust the stack here.
    MAX_DEPTH = 16

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.secret_out(value)
        if depth >= self.MAX_DEPTH:
            return value
        if isinstance(value, Mapping):
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, depth + 1) for v in value]
        return value

    def arrivals(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{"method": visible(str(r.get("method"))), "path": visible(str(r.get("path"))),
                 "headers": [self.header(str(k), str(v)) for k, v in r.get("headers", [])]} for r in records]

    def header(self, name: str, value: str) -> list[str]:
        """A recorded header as [name, value]; the credential the proxy presents upstream is never shown."""
        return [visible(name), "<redacted>" if name.lower() == "authorization" else self.text(visible(value))]


# ---------------------------------------------------------------- running


class Side:
    """One endpoint the corpus is sent to: the target, or the baseline."""

    def __init__(self, url: str, options: Options, marker: str, version: str, redact: Redactor) -> None:
        self.endpoint = Endpoint.parse(url)
        self.options = options
        self.redact = redact  # the probe's: the secret's forms are worked out once
        self.version = version
        self.ctx = Context(self.endpoint.authority, options.safe_tool, marker, options.secret, options.identity,
                           options.secret_field)

    def reachable(self) -> None:
        try:
            self.endpoint.connect(self.options.timeout).close()
        except OSError as exc:
            raise ProbeSetupError(f"cannot reach {self.endpoint.url}: {exc}") from None

    def send(self, case: Case, ctx: Context | None = None) -> tuple[Answer, str]:
        """The answer that decides the case (a pipeline's last) and a transcript of what was sent;
        `ctx` in place of the side's own, for a call sent without its credentials."""
        ctx = ctx or self.ctx
        request = case.request
        if isinstance(request, WsRequest):
            answer, sent = exchange_ws(self.endpoint, request, ctx, self.options.ws_path, self.options.timeout,
                                       self.version)
            return self.redact.answer(answer), sent
        members = case.http_requests
        payload = b"".join(render_request(m, ctx) for m in members)
        linger = min(LINGER_SECONDS, self.options.timeout) if case.may_smuggle else 0.0
        answers = exchange(self.endpoint, payload, [m.method for m in members], self.options.timeout, linger)
        if len(answers) < len(members) and answers[-1].kind not in ("timeout", "error"):
            answers.append(Answer("closed", error="no answer to this request: the connection ended first"))
        shown = ctx.shown()
        return self.redact.answer(answers[-1]), printable(b"".join(render_request(m, shown) for m in members))


class Probe:
    def __init__(self, corpus: Corpus, options: Options, version: str) -> None:
        self.corpus = corpus
        self.options = options
        self.version = version
        self.marker = f"ocprobe{secrets.token_hex(4)}"
        self.redact = Redactor(options.secret)
        self.target = Side(options.target, options, self.marker, version, self.redact)
        self.baseline = Side(options.baseline, options, self.marker, version, self.redact) if options.baseline else None
        self.record = BackendRecord(options.backend_record, options.timeout) if options.backend_record else None
        self.credential_refusal: str | None = None  # why the target refused the probe's credential
        self.baseline_credential_refusal: str | None = None  # why the baseline did
        self.websocket_refusal: str | None = None  # why the target serves no RPC WebSocket
        self.kept: frozenset[str] = frozenset()  # header names that reached the backend on control.credential
        self.control_arrival: dict[str, tuple[str, ...]] | None = None  # and each header's values
        self.control_upgrade_arrival: dict[str, tuple[str, ...]] | None = None  # those of control.websocket's upgrade
        self.refused_in_a_row = 0  # refusals (on either side) since the probe's last good call
        self.cut_short: str | None = None  # the target failed a good call: the rest is not sent
        self.discounted_because = ""  # what that makes of the refusals before it
        self.baseline_cut_short: str | None = None  # the baseline did: nothing later is compared
        self.confirmed: set[str] = set()  # the sides whose good call after the last case passed
        self.websocket_checked = False  # control.websocket ran and passed

    def run(self, progress: Callable[[int, int, CaseResult], None] = lambda i, n, r: None) -> Report:
        cases = self.corpus.select(self.options.cases)
        if all(c.klass == "control" for c in cases):
            raise ProbeSetupError(f"--cases {self.options.cases!r} selects no case")
        report = Report(self.options, self.corpus, len(cases), self.marker, self.version, datetime.now(UTC))
        for side in filter(None, (self.target, self.baseline)):
            side.reachable()
        start = time.monotonic()
        ordered = sorted(cases, key=lambda c: c.klass != "control")  # controls first, order kept otherwise
        unconfirmed: dict[str, list[int]] = {"target": [], "baseline": []}  # sent since each side's last good call
        try:
            for index, case in enumerate(ordered, 1):
                self.check_run_time(start)
                cut_before = (self.cut_short, self.baseline_cut_short)
                result = self.run_case(case)
                report.results.append(result)
                for name, observation in (("target", result.target), ("baseline", result.baseline)):
                    if observation is not None:
                        unconfirmed[name].append(len(report.results) - 1)
                    if name in self.confirmed:
                        unconfirmed[name].clear()
                if self.cut_short and not cut_before[0]:
                    discount_refusals(report.results, unconfirmed["target"], self.discounted_because)
                if self.baseline_cut_short and not cut_before[1]:
                    uncompare(report.results, unconfirmed["baseline"])
                progress(index, len(ordered), report.results[-1])
        finally:
            if self.record:
                self.record.close()
        report.duration_s = time.monotonic() - start
        report.cut_short, report.baseline_cut_short = self.cut_short, self.baseline_cut_short
        return report

    def check_run_time(self, start: float) -> None:
        """Past --max-seconds the run ends as a lockout ends it, but the refusals before stand: the
        target failed nothing."""
        limit = self.options.max_seconds
        if limit is not None and not self.cut_short and time.monotonic() - start >= limit:
            self.cut_short = f"the run reached --max-seconds {limit:g}"

    def run_case(self, case: Case) -> CaseResult:
        reason = applicability(case, self.options)
        if reason is not None:
            return CaseResult(case, NOT_APPLICABLE, reason)
        if self.cut_short:
            return CaseResult(case, INCONCLUSIVE, f"not sent: {self.cut_short}")
        if case.websocket and self.websocket_refusal:
            return CaseResult(case, NOT_APPLICABLE, self.websocket_refusal)
        if case.needs & CREDENTIALED and self.credential_refusal:
            return CaseResult(case, INCONCLUSIVE, f"not sent: a refusal would prove nothing, since "
                                                  f"{self.credential_refusal}")
        started = time.monotonic()
        self.confirmed = set()
        if self.record:
            self.record.clear()
        answer, sent = self.send_on(self.target, case)
        # The secret replaced before any reason quotes a recorded value (cut at 120 characters).
        arrivals = self.redact.value(self.record.fetch()) if self.record else None
        verdict, why = self.learn_from_control(case, answer, arrivals, *self.verdict_for(case, answer, arrivals))
        admitted = admission(answer, case.expect)[0]
        refusal_decided = refusal_decides(case, admitted, verdict)
        if answer.status == 429 and not self.can_call_good and refusal_decided:
            verdict, why = INCONCLUSIVE, (f"{summary(answer)}: a rate limit answered, and without a credential the "
                                          "probe cannot tell a lockout from a refusal")
        if (case.websocket and case.klass != "control" and not self.websocket_checked and answer.stage == "upgrade"
                and answer.kind == "http" and refusal_decided):
            verdict, why = INCONCLUSIVE, (f"the upgrade was refused ({summary(answer)}), and control.websocket (it "
                                          "needs a credential) did not run: this case refused and a target without "
                                          "the RPC WebSocket look alike")
        baseline = self.run_on_baseline(case) if self.baseline and not self.baseline_cut_short \
            and self.baseline_measures(case) else None
        # Asked again: control.credential itself is what shows the baseline refuses the credential.
        comparable = baseline is not None and self.baseline_measures(case)
        statuses = {answer.status, baseline.status if baseline else None}
        refused = admitted == "refused" or (baseline is not None and baseline.admission == "refused")
        self.refused_in_a_row = self.refused_in_a_row + 1 if refused else 0
        # No answer at all (a connection closed or refused, or none in time) may be the case bringing
        # the target down, which must not pass as a refusal: a good call shows whether it still answers.
        unanswered = answer.kind in ("closed", "error", "timeout")
        if case.fails_auth or 429 in statuses or self.refused_in_a_row >= REFUSALS_BETWEEN_GOOD_CALLS or unanswered:
            self.good_call(case, unanswered)
        target = self.observe(case, answer, sent, verdict, why)
        return CaseResult(case, target.verdict, target.why, target,
                          self.redact.arrivals(arrivals) if arrivals is not None else None, baseline,
                          differential(target.admission, baseline.admission) if baseline is not None and comparable else None,
                          int((time.monotonic() - started) * 1000))

    def baseline_measures(self, case: Case) -> bool:
        """Whether the baseline's answer to the case says anything: not where it refused the
        probe's credential and the case presents it."""
        return not (case.needs & CREDENTIALED and self.baseline_credential_refusal)

    def run_on_baseline(self, case: Case) -> Observation:
        """The same case against the gateway alone, judged without a record. If the gateway refuses
        the probe's credential (its own secret differs), credentialed cases cannot be compared."""
        assert self.baseline is not None
        answer, sent = self.send_on(self.baseline, case)
        observation = self.observe(case, answer, sent, *self.verdict_for(case, answer, None))
        if case.id == CONTROL_CREDENTIAL and observation.verdict != PASS:
            self.baseline_credential_refusal = observation.why
        return observation

    def send_on(self, side: Side, case: Case) -> tuple[Answer, str]:
        """Send a case; for control.websocket, a second time with the Bearer on the upgrade if the
        target refused the upgrade itself: a proxy that authenticates upgrades (as the gateway never
        does) is no target without a WebSocket, and its frames are still to be judged."""
        answer, sent = side.send(case)
        if (case.id == CONTROL_WEBSOCKET and answer.stage == "upgrade" and answer.status in (401, 403)
                and side.ctx.secret and not side.ctx.bearer_upgrade):
            side.ctx = replace(side.ctx, bearer_upgrade=True)
            retried, sent_again = side.send(case)
            if retried.status not in (401, 403):  # past authentication: whatever it met, it decides
                return retried, sent_again
            side.ctx = replace(side.ctx, bearer_upgrade=False)
        return answer, sent

    def verdict_for(self, case: Case, answer: Answer, arrivals: list[dict[str, Any]] | None) -> tuple[Verdict, str]:
        control = self.control_upgrade_arrival if case.websocket else self.control_arrival
        return judge(case.expect, answer, arrivals, self.marker, lead_ins=case.lead_ins, frame_judged=case.judges_frame,
                     kept=self.kept, control=control)

    def observe(self, case: Case, answer: Answer, sent: str, verdict: Verdict, why: str) -> Observation:
        admitted, _ = admission(answer, case.expect)
        return Observation(self.redact.text(sent), self.redact.text(answer_text(answer)), answer.status, admitted,
                           verdict, self.redact.text(why))

    def learn_from_control(self, case: Case, answer: Answer, arrivals: list[dict[str, Any]] | None,
                           verdict: Verdict, why: str) -> tuple[Verdict, str]:
        """Remember what the controls showed. A control that decides nothing fails the run (every
        case depends on it); a target without the RPC WebSocket makes its control (and every
        WebSocket case) not applicable rather than failed."""
        if case.id == CONTROL_WEBSOCKET and answer.stage == "upgrade" and answer.kind == "http":
            if answer.status in (401, 403) and self.options.secret:
                self.websocket_refusal = (f"the target refused the WebSocket upgrade on {self.options.ws_path} ({why}) "
                                          "with the probe's secret in the connect frame and as a Bearer on the "
                                          "upgrade: if it serves the RPC WebSocket to callers it authenticates some "
                                          "other way, these cases cannot run here")
            else:
                self.websocket_refusal = (f"the target serves no RPC WebSocket on {self.options.ws_path} ({why}; "
                                          "see --ws-path)")
            return NOT_APPLICABLE, self.websocket_refusal
        if case.id == CONTROL_CREDENTIAL and answer.kind in ("timeout", "error", "closed"):
            raise ProbeSetupError(f"the target took the connection but did not answer {CONTROL_CREDENTIAL}: "
                                  f"{summary(answer)}")
        if case.klass == "control" and verdict == INCONCLUSIVE:
            verdict, why = FAIL, f"the control decided nothing, so neither can the cases judged against it: {why}"
        if case.id == CONTROL_CREDENTIAL and verdict != PASS:
            self.credential_refusal = f"{CONTROL_CREDENTIAL} did not pass ({why})"
        if case.id == CONTROL_CREDENTIAL and verdict == PASS and arrivals == []:
            raise ProbeSetupError(f"the backend record at {self.options.backend_record} saw nothing of the control "
                                  "call the target accepted: it is not the backend behind this target")
        if case.id == CONTROL_CREDENTIAL and verdict == PASS and arrivals:
            ctx = self.target.ctx.shown() if self.redact.secret else self.target.ctx  # as the record now shows it
            self.kept = kept_headers(arrivals, sent_headers(render_request(case.http_requests[-1], ctx)))
            if not self.options.identity:  # behind a trusted proxy a caller's declared scopes are the contract's input
                self.control_arrival = arrived_values(arrivals[-1])
        if case.id == CONTROL_WEBSOCKET and verdict == PASS:
            self.websocket_checked = True
            if arrivals and not self.options.identity:
                self.control_upgrade_arrival = arrived_values(arrivals[0])
        return verdict, why

    @property
    def can_call_good(self) -> bool:
        return bool(self.options.secret or self.options.identity)

    def good_call(self, after: Case, unanswered: bool) -> None:
        """One good call on each side: a success resets the gateway's failure count and the
        sidecar's refusal pacing (which would otherwise delay the probe's answers past its timeout).
        A side that refuses it, where control.credential had passed, has locked the probe out; one
        that does not answer it twice running has stopped answering. The target's cuts the run
        short; the baseline's ends the comparison. A target whose good call cannot pass (no
        credential, or one it refused) still gets a call after a case it left `unanswered`, without
        credentials: answered at all, it is still up (a run without a credential passed as refused
        every case after one that had killed the target)."""
        self.refused_in_a_row = 0
        credentialed = self.can_call_good and self.credential_refusal is None
        if credentialed or unanswered:
            failed = self.failed_good_call(self.target, "target", credentialed)
            if failed is None:
                self.confirmed.add("target")
            else:
                self.cut_short = f"after {after.id} {failed[0]}"
                self.discounted_because = failed[1]
        if self.baseline and self.can_call_good and not self.baseline_credential_refusal and not self.baseline_cut_short:
            failed = self.failed_good_call(self.baseline, "baseline")
            if failed is None:
                self.confirmed.add("baseline")
            else:
                self.baseline_cut_short = f"after {after.id} {failed[0]}; no case since its last good call is compared"

    def failed_good_call(self, side: Side, name: str, credentialed: bool = True) -> tuple[str, str] | None:
        """None when the good call passes on `side` (not `credentialed`: sent without credentials,
        when it is answered below 500); else why not, and what that makes of the refusals since its
        last good call. Only a 4xx is a refusal: a closed connection, a timeout or a 5xx is tried
        once more, a moment later."""
        control = next(c for c in self.corpus.cases if c.id == CONTROL_CREDENTIAL)
        ctx = None if credentialed else replace(side.ctx, secret=None, identity=(), bearer_upgrade=False)
        for attempt in range(2):
            if attempt:
                time.sleep(min(GOOD_CALL_RETRY_SECONDS, self.options.timeout))
            answer = side.send(control, ctx)[0]
            if not credentialed:
                if answer.kind == "http" and (answer.status or 500) < 500:
                    return None
                why = summary(answer)
                continue
            verdict, why = self.verdict_for(control, answer, None)
            if verdict == PASS:
                return None
            if answer.kind == "http" and 400 <= (answer.status or 0) < 500:
                return (f"the {name} refused the probe's own good call ({why}): it has locked the probe out, so any "
                        "later case would be refused by the lockout alone",
                        f"the {name} locked the probe out before its next good call passed, so the lockout may have "
                        "answered")
        call, calls = ("the probe's own good call", "good calls") if credentialed else ("a call without credentials", "calls")
        return (f"the {name} stopped answering {call} ({why})",
                f"the {name} stopped answering the probe's {calls} before its next one passed, so the refusal "
                "may not be the case's")
