"""The probe's judging, case by case: what counts as refused or let through, what a backend record
adds, and the differential against a baseline. Pure functions, table-driven."""

from __future__ import annotations

import json

import pytest

from sidecar.probe.corpus import Absent, Expectation, Reached
from sidecar.probe.verdict import (
    FAIL, INCONCLUSIVE, LOOSER, PASS, SAME, STRICTER, Answer, admission, arrived_values, differential, judge,
    kept_headers, summary,
)

MARKER = "ocprobe12345678"
REFUSED = Expectation("refused")
STRIPPED = Expectation("stripped")
ACCEPTED = Expectation("accepted")


def http(status: int, payload=None, body: bytes = b"") -> Answer:
    return Answer("http", status=status, body=json.dumps(payload).encode() if payload is not None else body)


def res(frame: dict, stage="frame") -> Answer:
    return Answer("ws-res", stage=stage, frame=frame)


def arrival(*headers: tuple[str, str]) -> dict:
    return {"method": "POST", "path": "/tools/invoke", "headers": [list(h) for h in headers]}


@pytest.mark.parametrize("answer,expect,admitted", [
    (http(200, {"ok": True}), REFUSED, "let_through"),
    (http(101), REFUSED, "let_through"),
    (http(302), REFUSED, "let_through"),
    (http(404, body=b"Not Found"), REFUSED, "refused"),
    (http(403, {"error": {"type": "proxy_attribution_required"}}), REFUSED, "refused"),
    (http(400, {"ok": False, "error": {"type": "tool_error", "message": "action required"}}), REFUSED, "let_through"),
    (http(500, {"ok": False, "error": {"type": "tool_error", "message": "tool execution failed"}}), REFUSED, "let_through"),
    (http(400, {"error": {"type": "invalid_request_error"}}), Expectation("refused", reached=(Reached(400),)), "let_through"),
    (http(404, body=b"Not Found"), Expectation("refused", reached=(Reached(400),)), "refused"),
    (http(502, {"error": {"type": "bad_gateway"}}), REFUSED, None),
    # the edges of the status bands: under 400 let through, 4xx refused, 5xx neither
    (http(399, body=b"odd"), REFUSED, "let_through"),
    (http(400, body=b"Bad Request"), REFUSED, "refused"),
    (http(499, body=b"client closed"), REFUSED, "refused"),
    (http(500, body=b"Internal Server Error"), REFUSED, None),
    (Answer("closed"), REFUSED, "refused"),
    (Answer("timeout", error="no answer within 3 s"), REFUSED, None),
    (Answer("error", error="cannot connect"), REFUSED, None),
    (Answer("ws-closed", close_code=1008), REFUSED, "refused"),
    (Answer("ws-echo", frame={"type": "req"}), REFUSED, "let_through"),
    (res({"type": "res", "ok": True, "payload": {}}), REFUSED, "let_through"),
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": {"code": "not_found"}}}), REFUSED, "refused"),
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": {"code": "internal_error", "message": "task required"}}}),
     REFUSED, "let_through"),
    # the tool ran and failed: reached, however it failed
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": {"code": "tool_error", "message": "exit 1"}}}),
     REFUSED, "let_through"),
    # shapes a target may send that the gateway does not: judged, never a crash of the probe
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": "Tool not available: exec"}}), REFUSED, "refused"),
    (res({"type": "res", "ok": True, "payload": ["not", "an", "object"]}), REFUSED, "let_through"),
    (res({"type": "res", "ok": False, "error": "denied"}), REFUSED, "refused"),
    (res({"type": "res", "ok": False, "error": {"code": "FORBIDDEN", "details": {"code": "METHOD_DENIED"}}}), REFUSED, "refused"),
    (res({"type": "res", "ok": False, "error": {"code": "INVALID_REQUEST", "message": "unknown method: x"}}), REFUSED, "refused"),
    (res({"type": "res", "ok": False, "error": {"code": "INVALID_REQUEST",
                                                 "message": "invalid terminal.open params: must have required property 'cols'"}}),
     REFUSED, "let_through"),
])
def test_admission(answer, expect, admitted):
    assert admission(answer, expect)[0] == admitted


def test_a_reached_entry_with_a_body_tells_the_handler_from_a_proxy_with_the_same_status():
    """By the whole body: the hooks handler's `Unauthorized` is also in the gateway's and the
    sidecar's JSON 401, which a substring match took for the handler (review)."""
    handler = Expectation("refused", reached=(Reached(404, '{"error":"not_found"}'), Reached(401, "Unauthorized")))
    assert admission(http(404, body=b'{"error":"not_found"}'), handler)[0] == "let_through"
    assert admission(http(404, body=b"Not Found"), handler)[0] == "refused"
    assert admission(http(401, body=b"Unauthorized"), handler)[0] == "let_through"
    assert admission(http(401, {"error": {"message": "Unauthorized", "type": "unauthorized"}}), handler)[0] == "refused"


def test_the_reason_says_what_proves_the_handler_ran():
    _, why = admission(http(400, {"ok": False, "error": {"type": "tool_error"}}), REFUSED)
    assert "the tool itself answered" in why
    _, why = admission(http(400, body=b"bad"), Expectation("refused", reached=(Reached(400),)))
    assert why == "400 bad (the route's handler answered: it was reached)"
    _, why = admission(res({"type": "res", "ok": False, "error": {"message": "invalid agent params: x"}}), REFUSED)
    assert "validation answered" in why


@pytest.mark.parametrize("answer,said", [
    (http(400, {"error": "bad_request"}), "400 bad_request"),
    (http(403, {"message": "Forbidden"}), "403 Forbidden"),
    (http(401, {"error": {"code": "UNAUTHORIZED"}}), "401 UNAUTHORIZED"),
    (http(404, {"error": {"message": "no such tool"}}), "404 no such tool"),
    (http(404, body=b"Not   Found\r\n"), "404 Not Found"),
    (http(400, {"error": {}}), '400 {"error": {}}'),
    (http(400, {"detail": "x"}), '400 {"detail": "x"}'),
    (http(400, body=b"\xff\xfe bad"), "400 \ufffd\ufffd bad"),
    (http(400, body=b" " * 70 + b"abcdefghijklmnop"), "400 abcdefghij"),  # the first 80 bytes, spaces folded
    (http(400, body=b"y" * 70), f"400 {'y' * 60}"),
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": {"code": "not_found"}}}),
     "res ok, tool refused: not_found"),
    (res({"type": "res", "ok": True, "payload": {"ok": False, "error": {"code": "internal_error"}}}),
     "res ok, the tool ran and failed: internal_error"),
    (res({"type": "res", "ok": True, "payload": {}}), "res ok"),
    (res({"type": "res", "ok": True, "payload": {"ok": True}}), "res ok"),
    (res({"type": "res", "ok": False, "error": {"code": "FORBIDDEN", "message": "denied", "details": {"code": "METHOD_DENIED"}}}),
     "res error METHOD_DENIED: denied"),
    (res({"type": "res", "ok": False, "error": {"code": "INVALID_REQUEST", "message": "x\x1b[2J"}}),
     "res error INVALID_REQUEST: x\\x1b[2J"),
    (res({"type": "res", "ok": False, "error": {"code": "X", "message": "m" * 90}}), f"res error X: {'m' * 80}"),
    (res({"type": "res", "ok": False, "error": {"code": "X"}}), "res error X:"),
    (res({"type": "res", "ok": False, "error": {"message": "m"}}), "res error : m"),
    (Answer("ws-echo", rewritten=True), "an echoing backend sent the frame back rewritten (relayed after the proxy changed it)"),
    (Answer("ws-echo"), "an echoing backend sent the frame back unchanged (relayed as sent)"),
    (Answer("ws-closed", close_code=1008), "closed with 1008"),
    (Answer("closed"), "connection closed without an answer"),
    (Answer("closed", error="reset\n"), "connection closed without an answer (reset\\x0a)"),
    (Answer("timeout", error="no answer within 3 s"), "no answer within 3 s"),
    (Answer("timeout"), "timeout"),
])
def test_the_summary_says_what_came_back(answer, said):
    """Every reason and table row quotes it: the gateway's error label whichever shape it has, and
    what the target wrote with its control characters shown, never sent to the terminal."""
    assert summary(answer) == said


# ---- refused -------------------------------------------------------------------------------------


def test_refused_passes_on_a_refusal_and_fails_when_let_through():
    assert judge(REFUSED, http(400, {"error": "bad_request"}), None, MARKER)[0] == PASS
    verdict, why = judge(REFUSED, http(200, {"ok": True}), None, MARKER)
    assert verdict == FAIL and why.startswith("let through: 200")


def test_a_refusal_after_reaching_the_backend_fails_with_a_record_only():
    answer = http(401, {"error": {"type": "unauthorized"}})
    assert judge(REFUSED, answer, None, MARKER)[0] == PASS
    assert judge(REFUSED, answer, [], MARKER)[0] == PASS
    verdict, why = judge(REFUSED, answer, [arrival()], MARKER)
    assert verdict == FAIL and "reached the backend" in why and "POST /tools/invoke" in why
    assert judge(Expectation("refused", may_arrive=True), answer, [arrival()], MARKER)[0] == PASS


def test_a_pipeline_lead_in_may_arrive():
    answer = http(404, {"ok": False, "error": {"type": "not_found"}})
    assert judge(REFUSED, answer, [arrival()], MARKER, lead_ins=1)[0] == PASS
    assert judge(REFUSED, answer, [arrival(), arrival()], MARKER, lead_ins=1)[0] == FAIL


def test_a_websocket_refusal_after_an_accepted_upgrade_is_not_an_arrival():
    answer = res({"type": "res", "ok": False, "error": {"code": "FORBIDDEN"}})
    assert judge(REFUSED, answer, [arrival()], MARKER, frame_judged=True)[0] == PASS


def test_a_websocket_upgrade_refused_after_reaching_the_backend_fails():
    answer = Answer("http", stage="upgrade", status=401, body=b"Unauthorized")
    assert judge(REFUSED, answer, [], MARKER)[0] == PASS
    verdict, why = judge(REFUSED, answer, [arrival()], MARKER)
    assert verdict == FAIL and "only after it reached the backend" in why


def test_a_refusal_with_another_status_passes_and_says_so():
    verdict, why = judge(Expectation("refused", status=(400,)), http(404, body=b"Not Found"), None, MARKER)
    assert verdict == PASS and "the reference answer is 400" in why


@pytest.mark.parametrize("answer", [http(400, body=b"Bad Request"), Answer("closed")])
def test_a_refusal_as_the_reference_gives_or_without_a_status_adds_no_note(answer):
    assert judge(Expectation("refused", status=(400,)), answer, None, MARKER) == (PASS, f"refused: {summary(answer)}")
    assert judge(REFUSED, answer, None, MARKER) == (PASS, f"refused: {summary(answer)}")


def test_a_refused_case_that_may_reach_the_backend_still_fails_when_the_forged_value_arrives():
    """`mayArrive` excuses the arrival (the backend refuses it), not what arrived with it."""
    rule = Expectation("refused", may_arrive=True)
    answer = http(401, {"error": {"type": "unauthorized"}})
    assert judge(rule, answer, [arrival(("Host", "gw"))], MARKER)[0] == PASS
    verdict, why = judge(rule, answer, [arrival(("X-Forwarded-User", MARKER))], MARKER)
    assert verdict == FAIL and why.startswith("the forged value arrived"), why


def test_a_long_arrival_is_cut_in_the_reason():
    path = "/tools/invoke?" + "a" * 300
    record = {"method": "P" * 60, "path": path, "headers": []}
    _, why = judge(REFUSED, http(404, body=b"Not Found"), [record], MARKER)
    assert why.endswith(f"{'P' * 40}... (20 more characters) {path[:100]}... (214 more characters)"), why


@pytest.mark.parametrize("answer", [
    Answer("http", stage="upgrade", status=403, body=b"Forbidden"),
    res({"type": "res", "ok": False, "error": {"code": "INVALID_REQUEST"}}, stage="connect"),
])
def test_a_frame_case_whose_upgrade_or_connect_was_refused_decides_nothing(answer):
    verdict, why = judge(REFUSED, answer, None, MARKER, frame_judged=True)
    assert verdict == INCONCLUSIVE and why.startswith(f"the {answer.stage} was refused") and "never judged" in why
    assert judge(REFUSED, answer, None, MARKER, frame_judged=False)[0] == PASS


def test_a_frame_case_whose_lead_in_was_not_let_through_decides_nothing():
    """Without it a refused lead-in would pass the case, its denied frame never sent."""
    for answer in (res({"type": "res", "ok": False, "error": {"code": "FORBIDDEN"}}, stage="lead-in"),
                   Answer("ws-closed", stage="lead-in", close_code=1008), Answer("timeout", stage="lead-in")):
        verdict, why = judge(REFUSED, answer, None, MARKER, frame_judged=True)
        assert verdict == INCONCLUSIVE and why.startswith("the lead-in was refused"), why


def test_no_usable_answer_is_inconclusive():
    assert judge(REFUSED, Answer("timeout", error="no answer within 3 s"), None, MARKER) == (INCONCLUSIVE, "no answer within 3 s")
    assert judge(ACCEPTED, http(503, body=b"down"), None, MARKER) == (
        INCONCLUSIVE, "503 down (an upstream or internal error, neither a refusal nor a pass)")
    # Only a case that must be refused fails by reaching the backend: a stripped one may reach it.
    assert judge(STRIPPED, http(502, body=b"bad gateway"), [arrival(("Host", "gw"))], MARKER)[0] == INCONCLUSIVE


def test_with_a_record_an_answer_that_says_nothing_is_judged_by_what_arrived():
    """A proxy that turns the backend's 404 into a 502, or answers too late: the record still shows
    the denied call reached the backend, or the forged value did (an evaluator's false passes)."""
    for answer in (http(502, {"error": {"type": "bad_gateway"}}), Answer("timeout", error="no answer within 3 s")):
        verdict, why = judge(REFUSED, answer, [arrival(("Host", "gw"))], MARKER)
        assert verdict == FAIL and why.startswith("it reached the backend: POST /tools/invoke"), why
        verdict, why = judge(STRIPPED, answer, [arrival(("X-Forwarded-User", MARKER))], MARKER)
        assert verdict == FAIL and why.startswith("the forged value arrived"), why
        assert judge(REFUSED, answer, [], MARKER)[0] == INCONCLUSIVE  # nothing arrived: still nothing decided
        assert judge(REFUSED, answer, [arrival(("Host", "gw"))], MARKER, lead_ins=1)[0] == INCONCLUSIVE


LONG = "v" * 130  # a recorded value is quoted up to 120 characters
CUT = f"{'v' * 120}... (10 more characters)"
TWO = [{"method": "GET", "path": "/first", "headers": []}, arrival(("Host", "gw"))]


@pytest.mark.parametrize("expect,answer,arrivals,control,reason", [
    (REFUSED, http(404, body=b"Not Found"), TWO, None,
     (FAIL, "refused (404 Not Found), but only after it reached the backend: POST /tools/invoke")),
    (REFUSED, http(502, body=b"bad gateway"), TWO, None,
     (FAIL, "it reached the backend: POST /tools/invoke (502 bad gateway (an upstream or internal error, neither a "
            "refusal nor a pass))")),
    (STRIPPED, http(502, body=b"bad gateway"), [arrival(("X-Forwarded-User", MARKER + LONG))], None,
     (FAIL, f"the forged value arrived at the backend: X-Forwarded-User: {MARKER}{'v' * 105}... (25 more characters) "
            "(502 bad gateway (an upstream or internal error, neither a refusal nor a pass))")),
    (Expectation("stripped", absent=(Absent("x-real-ip"),)), http(200, body=b"ok"), [arrival(("X-Real-IP", LONG))], None,
     (FAIL, f"X-Real-IP: {CUT} arrived at the backend")),
    (ACCEPTED, http(200, body=b"ok"), None, None, (PASS, "accepted: 200 ok")),
    (STRIPPED, http(200, body=b"ok"), None, None,
     (INCONCLUSIVE, "let through (200 ok); only --backend-record can show whether the forged part arrived")),
    (Expectation("refused", status=(400, 401)), http(404, body=b"Not Found"), None, None,
     (PASS, "refused: 404 Not Found (the reference answer is 400/401)")),
    (Expectation("stripped", same_as_control=("x-openclaw-scopes",)), http(200, body=b"ok"),
     [arrival(("x-openclaw-scopes", "a"), ("x-openclaw-scopes", "b"))], {},
     (FAIL, "x-openclaw-scopes arrived as a, b, not as on control.credential ((none)): the client's forged value "
            "changed what the proxy presents upstream")),
    (Expectation("stripped", same_as_control=("x-openclaw-scopes",)), http(200, body=b"ok"), [arrival()],
     {"x-openclaw-scopes": (LONG,)},
     (FAIL, f"x-openclaw-scopes arrived as (none), not as on control.credential ({CUT}): the client's forged value "
            "changed what the proxy presents upstream")),
    (Expectation("stripped", same_as_control=("x-openclaw-scopes",)), http(200, body=b"ok"),
     [arrival(("x-openclaw-scopes", LONG))], {},
     (FAIL, f"x-openclaw-scopes arrived as {CUT}, not as on control.credential ((none)): the client's forged value "
            "changed what the proxy presents upstream")),
    (Expectation("stripped", same_as_control=("x-openclaw-scopes",)), http(200, body=b"ok"), [arrival()], {},
     (PASS, "let through, and the forged part never arrived: 200 ok")),  # absent on both: the same
])
def test_the_reason_quotes_what_decided_the_verdict(expect, answer, arrivals, control, reason):
    """The reason is the evidence a report shows: the last request that arrived, the recorded
    values (cut, escaped), the answer."""
    assert judge(expect, answer, arrivals, MARKER, control=control) == reason


# ---- stripped ------------------------------------------------------------------------------------


def test_a_header_the_proxy_sets_must_arrive_as_it_did_on_the_control_call():
    """A proxy that filters the client's scopes (drops the unknown one, keeps operator.admin)
    removes the marker: only a comparison with the control call shows the forged scope arrived."""
    rule = Expectation("stripped", same_as_control=("x-openclaw-scopes",))
    answer = http(200, {"ok": True})
    control = {"x-openclaw-scopes": ("operator.read,operator.write",), "host": ("gw",)}
    same = arrival(("X-OpenClaw-Scopes", "operator.read,operator.write"), ("Host", "gw"))
    assert judge(rule, answer, [same], MARKER, control=control)[0] == PASS
    verdict, why = judge(rule, answer, [arrival(("x-openclaw-scopes", "operator.admin"))], MARKER, control=control)
    assert verdict == FAIL and why.startswith("x-openclaw-scopes arrived as operator.admin, not as on control.credential"), why
    added = arrival(("x-openclaw-scopes", "operator.read"))  # a default a proxy adds only where the client sent one
    assert judge(rule, answer, [added], MARKER, control={})[0] == FAIL
    assert judge(rule, answer, [added], MARKER)[0] == PASS  # no control call recorded: nothing to compare with




def test_stripped_without_a_record_cannot_see_past_a_forward():
    verdict, why = judge(STRIPPED, http(200, {"ok": True}), None, MARKER)
    assert verdict == INCONCLUSIVE and "--backend-record" in why
    assert judge(STRIPPED, http(400, {"error": {"type": "invalid_request_error"}}), None, MARKER)[0] == PASS


def test_stripped_fails_when_the_marker_arrives_in_any_name_or_value():
    answer = http(200, {"ok": True})
    assert judge(STRIPPED, answer, [arrival(("Host", "gw"))], MARKER)[0] == PASS
    for header in (("x_openclaw_scopes", f"operator.admin,operator.{MARKER}"), (f"x-{MARKER.upper()}", "1")):
        verdict, why = judge(STRIPPED, answer, [arrival(header)], MARKER)
        assert verdict == FAIL and "forged value arrived" in why


def test_a_forged_value_that_arrives_fails_even_when_the_backend_refused():
    answer = http(401, {"error": {"type": "unauthorized"}})
    assert judge(STRIPPED, answer, [arrival(("X-Forwarded-User", MARKER))], MARKER)[0] == FAIL


def test_absent_rules_match_by_name_and_value():
    rule = Expectation("stripped", absent=(Absent("connection", "x-openclaw-scopes"), Absent("x-real-ip")))
    answer = http(200, {"ok": True})
    assert judge(rule, answer, [arrival(("Connection", "keep-alive"))], MARKER)[0] == PASS
    assert judge(rule, answer, [arrival(("Connection", "keep-alive, X-OpenClaw-Scopes"))], MARKER)[0] == FAIL
    assert judge(rule, answer, [arrival(("X-Real-IP", "192.0.2.66"))], MARKER)[0] == FAIL
    anywhere = Expectation("stripped", absent=(Absent("*", "192.0.2.66"),))
    assert judge(anywhere, answer, [arrival(("X_Forwarded_For", "192.0.2.66"))], MARKER)[0] == FAIL


def test_a_stripped_case_let_through_passes_saying_whether_it_reached_the_backend():
    verdict, why = judge(STRIPPED, http(200, {"ok": True}), [], MARKER)
    assert verdict == PASS and "without reaching the backend" in why
    verdict, why = judge(STRIPPED, http(200, {"ok": True}), [arrival(("Host", "gw"))], MARKER)
    assert verdict == PASS and why.startswith("let through, and the forged part never arrived")


# ---- keeps: Connection must not delete what the proxy presents upstream --------------------------

KEEPS = Expectation("stripped", absent=(Absent("connection", "x-openclaw-scopes"),), keeps=True)
CONTROL = [arrival(("Host", "gw"), ("Authorization", "Bearer up"), ("x-openclaw-scopes", "operator.read"),
                   ("X-Forwarded-For", "127.0.0.1"), ("Content-Length", "30"), ("Connection", "close"))]


SENT = frozenset({("host", "gw"), ("authorization", "Bearer client-secret"), ("content-length", "30")})


def test_kept_headers_are_what_the_proxy_presented_on_the_control_call():
    """Not the per-request ones, and not what the probe sent and a proxy passed through: a hop may
    drop the client's own headers when its Connection names them (RFC 9110 asks it to; review)."""
    assert kept_headers(CONTROL, SENT) == {"authorization", "x-openclaw-scopes", "x-forwarded-for"}
    passed_through = [arrival(("Host", "gw"), ("Authorization", "Bearer client-secret"))]
    assert kept_headers(passed_through, SENT) == frozenset()
    framing = ("Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
               "Content-Length", "Content-Type", "Expect")
    assert kept_headers([arrival(*((name, "x") for name in framing))], SENT) == frozenset()


def test_a_record_without_headers_reads_as_none_arrived():
    record = {"method": "GET", "path": "/"}
    assert arrived_values(record) == {} and kept_headers([record], SENT) == frozenset()
    assert judge(STRIPPED, http(200, {"ok": True}), [record], MARKER)[0] == PASS
    assert judge(REFUSED, http(404, body=b"Not Found"), [{}], MARKER) == (
        FAIL, "refused (404 Not Found), but only after it reached the backend: ? ?")


def test_a_proxy_that_deletes_its_own_headers_when_the_client_names_them_fails():
    """Traefik CVE-2021-32813, as the reviewer's mitmdump add-on does it: Connection itself never
    arrives, but neither does the scopes header the proxy set."""
    kept = kept_headers(CONTROL, SENT)
    answer = http(200, {"ok": True})
    lost = [arrival(("Host", "gw"), ("Authorization", "Bearer up"), ("X-Forwarded-For", "127.0.0.1"))]
    verdict, why = judge(KEEPS, answer, lost, MARKER, kept=kept)
    assert verdict == FAIL and why.startswith("x-openclaw-scopes reached the backend on control.credential but not here")
    assert judge(KEEPS, answer, CONTROL, MARKER, kept=kept)[0] == PASS
    verdict, why = judge(KEEPS, answer, [arrival(("Host", "gw"))], MARKER, kept=kept)
    assert why.startswith("authorization, x-forwarded-for, x-openclaw-scopes reached the backend on control.credential")
    assert judge(STRIPPED, answer, lost, MARKER, kept=kept)[0] == PASS  # only `keeps` cases compare


def test_a_lost_header_name_the_target_chose_is_shown_escaped():
    """The kept names are whatever reached the backend on the control call: a target can have a
    header named with terminal escapes arrive there, then not on a `keeps` case."""
    control = [arrival(("Host", "gw"), ("X-\x1b]0;PWNED\x07", "1"))]
    kept = kept_headers(control, SENT)
    verdict, why = judge(KEEPS, http(200, {"ok": True}), [arrival(("Host", "gw"))], MARKER, kept=kept)
    assert verdict == FAIL and why.startswith("x-\\x1b]0;pwned\\x07 reached the backend on control.credential")


def test_a_401_on_a_keeps_case_is_judged_by_what_reached_the_backend():
    """A hop deleting the proxy's own credential and an RFC 9110 proxy dropping the client's look
    alike without a record (a blanket FAIL failed Go's, Caddy's and Apache's proxies; review)."""
    answer = http(401, {"error": {"message": "Unauthorized", "type": "unauthorized"}})
    verdict, why = judge(KEEPS, answer, None, MARKER)
    assert verdict == INCONCLUSIVE and "--backend-record" in why
    kept = kept_headers(CONTROL, SENT)
    assert judge(KEEPS, answer, [], MARKER, kept=kept)[0] == PASS  # the proxy refused it itself
    lost = [arrival(("Host", "gw"), ("x-openclaw-scopes", "operator.read"), ("X-Forwarded-For", "127.0.0.1"))]
    verdict, why = judge(KEEPS, answer, lost, MARKER, kept=kept)
    assert verdict == FAIL and why.startswith("authorization reached the backend on control.credential but not here")
    assert judge(STRIPPED, answer, None, MARKER)[0] == PASS
    # Only a 401 looks like a lost credential: another refusal is the target's own.
    assert judge(KEEPS, http(400, body=b"Bad Request"), None, MARKER) == (PASS, "refused: 400 Bad Request")


def test_a_stripped_case_fails_when_the_upgrade_went_through():
    """h2c tunnelled: a 101 is no stripped request served (it passed once the case was `stripped`; review)."""
    verdict, why = judge(STRIPPED, http(101), None, MARKER)
    assert verdict == FAIL and "the upgrade went through" in why
    assert judge(ACCEPTED, http(101), None, MARKER)[0] == PASS  # an upgrade the contract accepts


# ---- smuggling -----------------------------------------------------------------------------------


def test_an_unasked_answer_fails_whatever_the_outcome():
    smuggled = Answer("http", status=400, unasked=b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
    for expect in (REFUSED, STRIPPED, ACCEPTED):
        verdict, why = judge(expect, smuggled, None, MARKER)
        assert verdict == FAIL and "smuggled" in why and "HTTP/1.1 200 OK" in why
    long = Answer("http", status=400, unasked=b"HTTP/1.1 200 OK\r\n" + b"X" * 100)
    assert judge(REFUSED, long, None, MARKER)[1].endswith("HTTP/1.1 200 OK\\x0d\\x0a" + "X" * 63)


# ---- accepted and answered -----------------------------------------------------------------------


def test_accepted_fails_on_a_refusal_and_checks_single_headers():
    assert judge(ACCEPTED, http(401, {"error": {"type": "unauthorized"}}), None, MARKER)[0] == FAIL
    single = Expectation("accepted", single=("x-openclaw-scopes",))
    answer = http(200, {"ok": True})
    assert judge(single, answer, [arrival(("x-openclaw-scopes", "operator.write"))], MARKER)[0] == PASS
    verdict, why = judge(single, answer, [arrival(("Host", "gw"))], MARKER)
    assert verdict == FAIL and "arrived 0 times" in why
    twice = [arrival(("x-openclaw-scopes", "a"), ("X-OpenClaw-Scopes", "b"))]
    assert judge(single, answer, twice, MARKER)[0] == FAIL


def test_answered_only_cares_about_leaks():
    rule = Expectation("answered", leak=("openclaw_sidecar_",))
    assert judge(rule, http(404, body=b"Not Found"), None, MARKER)[0] == PASS
    assert judge(rule, http(200, body=b"ok"), None, MARKER) == (PASS, "answered without exposing it: 200 ok")
    assert judge(rule, http(200, body=b"ok"), [arrival(("X-Forwarded-User", MARKER))], MARKER)[0] == FAIL
    assert judge(rule, http(200, body=b"openclaw_sidecar_decisions_total 3"), None, MARKER) == (
        FAIL, "the answer exposes 'openclaw_sidecar_': 200 openclaw_sidecar_decisions_total 3")


# ---- differential --------------------------------------------------------------------------------


@pytest.mark.parametrize("target,baseline,expected", [
    ("refused", "refused", SAME), ("let_through", "let_through", SAME),
    ("refused", "let_through", STRICTER), ("let_through", "refused", LOOSER),
    (None, "refused", None), ("refused", None, None),
])
def test_differential(target, baseline, expected):
    assert differential(target, baseline) == expected
