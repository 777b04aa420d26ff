"""Verdicts, from what came back and what reached the backend. Pure: no I/O here.

Two questions per case. *Admission*: did the target let the request through or refuse it? That is
read off the answer alone, and it is what the differential against a baseline compares. *Verdict*:
does that, together with the backend record when there is one, meet the case's expectation?
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .corpus import Expectation
from .text import visible

Verdict = Literal["pass", "fail", "not_applicable", "inconclusive"]
Stage = Literal["http", "upgrade", "connect", "lead-in", "frame"]
PASS: Final = "pass"
FAIL: Final = "fail"
NOT_APPLICABLE: Final = "not_applicable"
INCONCLUSIVE: Final = "inconclusive"
Admission = Literal["refused", "let_through"]
SAME, STRICTER, LOOSER = "SAME", "STRICTER", "LOOSER"

# An RPC error that proves the method ran: its own parameter validation answered.
_VALIDATION = re.compile(r"^invalid \S+ params\b")


@dataclass(frozen=True)
class Answer:
    """What came back for one request, HTTP or WebSocket.

    kind: `http` (a status line; for a WebSocket, the upgrade was refused), `closed` (no answer,
    the peer hung up), `timeout`, `error` (could not connect), `ws-res` (the RPC answer frame),
    `ws-echo` (the backend sent our own frame back: it was relayed unread), `ws-closed`. An `error`
    may also be a WebSocket message too long to read, or frames wsproto cannot parse (it reports a close
    the target never sent).
    stage: where a WebSocket exchange ended (`upgrade`, `connect`, `frame`).
    """

    kind: Literal["http", "closed", "timeout", "error", "ws-res", "ws-echo", "ws-closed"]
    stage: Stage = "http"
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    frame: Mapping[str, Any] | None = None
    close_code: int | None = None
    error: str = ""
    rewritten: bool = False  # ws-echo: the frame came back different from what was sent
    unasked: bytes = b""  # what followed the last answer the probe waited for (a smuggled request's answer)

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON or is nested too deep to read."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


def _error_label(payload: Any) -> str:
    """The gateway's error type or message, whichever shape the JSON has."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("type") or error.get("code") or error.get("message") or "")
    return str(error or payload.get("message") or "")


def _ws_error(frame: Mapping[str, Any]) -> Mapping[str, Any]:
    error = frame.get("error")
    return error if isinstance(error, dict) else {}


# A `tools.invoke` payload error the tool itself raised (2026.9.6: its missing arguments): it ran.
_TOOL_RAN = frozenset({"internal_error", "tool_error"})


def _tool_refused(frame: Mapping[str, Any]) -> bool:
    """`tools.invoke` answers ok with a payload of its own saying the tool is not available (and
    not that the tool ran and failed)."""
    payload = frame.get("payload")
    if not (frame.get("ok") and isinstance(payload, dict) and payload.get("ok") is False):
        return False
    error = payload.get("error")
    return not (isinstance(error, dict) and error.get("code") in _TOOL_RAN)


def summary(answer: Answer) -> str:
    """A few words on the answer, for reasons and tables. What the target wrote is shown with
    `visible`: a JSON string may decode to terminal escapes or line breaks."""
    if answer.kind == "http":
        label = visible(_error_label(answer.json()))
        text = label or visible(" ".join(answer.body[:80].decode("utf-8", "replace").split())[:60])
        return f"{answer.status} {text}".strip()
    if answer.kind == "ws-res":
        frame = answer.frame or {}
        if _tool_refused(frame):
            return f"res ok, tool refused: {visible(_error_label(frame['payload']))}"
        if isinstance(frame.get("payload"), dict) and frame["payload"].get("ok") is False:
            return f"res ok, the tool ran and failed: {visible(_error_label(frame['payload']))}"
        if frame.get("ok"):
            return "res ok"
        error = _ws_error(frame)
        raw_details = error.get("details")
        details = raw_details if isinstance(raw_details, dict) else {}
        code = visible(str(details.get("code") or error.get("code") or ""))
        return f"res error {code}: {visible(str(error.get('message', ''))[:80])}".strip()
    if answer.kind == "ws-echo":
        if answer.rewritten:
            return "an echoing backend sent the frame back rewritten (relayed after the proxy changed it)"
        return "an echoing backend sent the frame back unchanged (relayed as sent)"
    if answer.kind == "ws-closed":
        return f"closed with {answer.close_code}"
    if answer.kind == "closed":
        return "connection closed without an answer" + (f" ({visible(answer.error)})" if answer.error else "")
    return answer.error or answer.kind


def admission(answer: Answer, expect: Expectation) -> tuple[Admission | None, str]:
    """Was the request let through or refused, and why we think so; None when the answer says neither."""
    said = summary(answer)
    if answer.kind in ("closed", "ws-closed"):
        return "refused", said
    if answer.kind in ("timeout", "error"):
        return None, said
    if answer.kind == "ws-echo":
        return "let_through", said
    if answer.kind == "ws-res":
        frame = answer.frame or {}
        if frame.get("ok"):
            return ("refused" if _tool_refused(frame) else "let_through"), said
        if _VALIDATION.match(str(_ws_error(frame).get("message", ""))):
            return "let_through", f"{said} (the method's own validation answered: it was reached)"
        return "refused", said
    status = answer.status or 0
    payload = answer.json()
    tool_error = isinstance(payload, dict) and isinstance(payload.get("error"), dict) \
        and payload["error"].get("type") == "tool_error"
    if tool_error:
        return "let_through", f"{said} (the tool itself answered: it was reached)"
    if any(r.matches(status, answer.body) for r in expect.reached):
        return "let_through", f"{said} (the route's handler answered: it was reached)"
    if status < 400:
        return "let_through", said
    if status < 500:
        return "refused", said
    return None, f"{said} (an upstream or internal error, neither a refusal nor a pass)"


# Headers whose presence depends on the request (its framing, its hops), not on the proxy's policy.
_PER_REQUEST = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                          "upgrade", "content-length", "content-type", "expect"})


def kept_headers(arrivals: Sequence[Mapping[str, Any]], sent: frozenset[tuple[str, str]]) -> frozenset[str]:
    """The header names the proxy presented upstream on a good call (control.credential): those that
    arrived other than the probe sent them (its credential, its X-Forwarded-*, its identity headers).
    A header the probe sent and a proxy passed through is the client's, which a hop may drop when the
    client's Connection header names it (RFC 9110 asks it to)."""
    return frozenset(str(k).lower() for r in arrivals for k, v in r.get("headers", [])
                     if (str(k).lower(), str(v)) not in sent) - _PER_REQUEST


def arrived_values(record: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each header name (lower case) that arrived in one recorded request, with its values in order."""
    values: dict[str, list[str]] = {}
    for name, value in record.get("headers", []):
        values.setdefault(str(name).lower(), []).append(str(value))
    return {name: tuple(found) for name, found in values.items()}


def arrival_problem(expect: Expectation, arrivals: Sequence[Mapping[str, Any]], marker: str,
                    kept: frozenset[str] = frozenset(),
                    control: Mapping[str, tuple[str, ...]] | None = None) -> str | None:
    """What reached the backend that must not have (or, for `keeps`, failed to reach it), or None.
    `control`: the headers that reached it on control.credential, for `sameAsControl`."""
    for record in arrivals:
        headers = [(str(k), str(v)) for k, v in record.get("headers", [])]
        if control is not None:
            found = arrived_values(record)
            for name in expect.same_as_control:
                if found.get(name, ()) != control.get(name, ()):
                    return (f"{name} arrived as {visible(', '.join(found.get(name, ())) or '(none)', 120)}, not as on "
                            f"control.credential ({visible(', '.join(control.get(name, ())) or '(none)', 120)}): "
                            "the client's forged value changed what the proxy presents upstream")
        lost = sorted(kept - {k.lower() for k, _ in headers}) if expect.keeps else []
        if lost:
            return (f"{visible(', '.join(lost))} reached the backend on control.credential but not here: a hop deleted what "
                    "the proxy presents upstream because the client's Connection header named it")
        for name, value in headers:
            if marker.lower() in name.lower() or marker.lower() in value.lower():
                return f"the forged value arrived at the backend: {visible(name)}: {visible(value, 120)}"
        for name, value in headers:
            if any(rule.matches(name, value) for rule in expect.absent):
                return f"{visible(name)}: {visible(value, 120)} arrived at the backend"
        for name in expect.single:
            count = sum(1 for k, _ in headers if k.lower() == name)
            if count != 1:
                return f"{name} arrived {count} times (exactly one, set by the proxy, is required)"
    return None


def describe_arrival(record: Mapping[str, Any]) -> str:
    return f"{visible(str(record.get('method', '?')), 40)} {visible(str(record.get('path', '?')), 100)}"


def judge(expect: Expectation, answer: Answer, arrivals: Sequence[Mapping[str, Any]] | None, marker: str, *,
          lead_ins: int = 0, frame_judged: bool = False, kept: frozenset[str] = frozenset(),
          control: Mapping[str, tuple[str, ...]] | None = None) -> tuple[Verdict, str]:
    """The verdict and the reason for it.

    `arrivals` is what the backend recorded for this case (None: no --backend-record). `lead_ins`
    is how many arrivals are expected anyway (the legitimate first requests of a pipeline).
    `frame_judged`: the case is about a WebSocket frame, so a refused connect decides nothing.
    `kept` and `control`: what reached the backend on control.credential (the header names the
    proxy presented, for `keeps`; every header with its values, for `sameAsControl`).
    """
    if frame_judged and answer.stage in ("upgrade", "connect", "lead-in"):
        return INCONCLUSIVE, f"the {answer.stage} was refused ({summary(answer)}), so the frame was never judged"
    if answer.unasked:
        return FAIL, (f"{summary(answer)}, then more than one answer per request: the target (or a hop behind it) "
                      f"read a second request out of the bytes (smuggled) and answered it: "
                      f"{visible(answer.unasked[:80].decode('latin-1'))}")
    leaked = next((s for s in expect.leak if s.encode() in answer.body), None)
    if leaked is not None:
        return FAIL, f"the answer exposes {leaked!r}: {summary(answer)}"
    admitted, said = admission(answer, expect)
    problem = arrival_problem(expect, arrivals, marker, kept, control) if arrivals is not None else None
    # An HTTP request (or upgrade) the backend saw beyond a pipeline's legitimate first ones.
    arrived = (arrivals is not None and answer.stage in ("http", "upgrade") and not expect.may_arrive
               and len(arrivals) > lead_ins)
    if admitted is None:
        # A 5xx or a timeout says nothing of its own; what the backend recorded still does.
        if problem:
            return FAIL, f"{problem} ({said})"
        if expect.outcome == "refused" and arrived:
            assert arrivals is not None
            return FAIL, f"it reached the backend: {describe_arrival(arrivals[-1])} ({said})"
        return INCONCLUSIVE, said
    if expect.keeps and answer.kind == "http" and answer.status == 401 and arrivals is None:
        # A hop may have deleted the credential the proxy presents upstream because the client's
        # Connection header named it, or a pass-through proxy removed the client's own, as RFC 9110 asks.
        return INCONCLUSIVE, (f"{said}: a hop deleting the proxy's own credential and a proxy dropping the client's "
                              "(as RFC 9110 asks) look alike here; --backend-record tells them apart")
    if expect.outcome == "stripped" and answer.kind == "http" and answer.status == 101:
        return FAIL, f"{said}: the upgrade went through"
    if expect.outcome == "answered":
        return (FAIL, problem) if problem else (PASS, f"answered without exposing it: {said}")
    if expect.outcome == "refused":
        if admitted == "let_through":
            return FAIL, f"let through: {said}"
        if arrived:
            assert arrivals is not None
            return FAIL, f"refused ({said}), but only after it reached the backend: {describe_arrival(arrivals[-1])}"
        if problem:
            return FAIL, problem
        note = ""
        if expect.status and answer.status is not None and answer.status not in expect.status:
            note = f" (the reference answer is {'/'.join(map(str, expect.status))})"
        return PASS, f"refused: {said}{note}"
    if admitted == "refused":
        if expect.outcome == "accepted":
            return FAIL, f"refused: {said} (the contract accepts this request)"
        return (FAIL, problem) if problem else (PASS, f"refused: {said}")
    if problem:
        return FAIL, problem
    if expect.outcome == "accepted":
        return PASS, f"accepted: {said}"
    if arrivals is None:
        return INCONCLUSIVE, f"let through ({said}); only --backend-record can show whether the forged part arrived"
    if not arrivals:
        return PASS, f"answered without reaching the backend: {said}"
    return PASS, f"let through, and the forged part never arrived: {said}"


def differential(target: Admission | None, baseline: Admission | None) -> str | None:
    """SAME, STRICTER (the target refused what the baseline let through) or LOOSER (the reverse);
    None when either side gave no usable answer."""
    if target is None or baseline is None:
        return None
    if target == baseline:
        return SAME
    return STRICTER if target == "refused" else LOOSER
