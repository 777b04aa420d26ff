"""The probe's corpus: the packaged data is complete and safe by default, and the loader refuses
every malformed case by name instead of sending something else."""

from __future__ import annotations

import copy
import json
import unicodedata

import pytest

from sidecar.probe.corpus import (
    CORPUS_SCHEMA, Body, CorpusError, HttpRequest, Reached, WsRequest, load_corpus, parse_corpus,
)
from sidecar.probe.verdict import FAIL, PASS, Answer, judge
from sidecar.tool_lists import HTTP_DENY_2026_4_26, HTTP_DENY_2026_9_6, OWNER_ONLY_2026_9_6, TOOL_ALIASES_2026_9_6

CORPUS = load_corpus()
BY_ID = {case.id: case for case in CORPUS.cases}

# RPC methods whose parameter schema the real 2026.9.6 gateway checks before the method acts, so
# `{"openclawProbe": true}` is refused with "invalid <method> params" even where it is reached
# (verified one by one; gateway.restart.request, for one, acts on any params and is not used).
VALIDATED_BEFORE_ACTING = {
    "terminal.open", "agent", "node.invoke", "cron.add", "plugins.install", "agents.files.set", "config.patch",
    "exec.approvals.set", "secrets.store.list", "device.pair.approve", "device.token.rotate", "update.run",
    "portal.open", "node.invoke.result",
}
DENIED_TOOLS = {TOOL_ALIASES_2026_9_6.get(n, n) for n in HTTP_DENY_2026_9_6 | HTTP_DENY_2026_4_26 | OWNER_ONLY_2026_9_6}


def requests_of(case):
    return case.request if isinstance(case.request, tuple) else (case.request,)


def tool_names(case):
    """Every name/tool value a case's bodies carry, duplicate keys and JSON escapes included."""
    for request in requests_of(case):
        body = request.body if isinstance(request, HttpRequest) else None
        if body is None or body.kind not in ("json", "text"):
            continue
        text = json.dumps(body.value) if body.kind == "json" else body.value
        try:
            pairs = json.loads(text, object_pairs_hook=lambda p: p)
        except ValueError:
            continue  # a deliberately broken body names no tool
        if isinstance(pairs, list):
            yield from (v for k, v in pairs if k in ("name", "tool") and isinstance(v, str))


# ---- the packaged corpus ------------------------------------------------------------------------


def test_the_packaged_corpus_is_versioned_and_large_enough():
    assert CORPUS.schema == CORPUS_SCHEMA
    assert CORPUS.gateway_version == "2026.9.6"
    assert len(CORPUS.cases) >= 80
    assert len(BY_ID) == len(CORPUS.cases)


def test_every_class_has_cases():
    classes = {case.klass for case in CORPUS.cases}
    assert set("ABCDEFGHIJ") <= classes
    assert classes == set(CORPUS.classes)


@pytest.mark.parametrize("case_id", [
    # tools-invoke §(c): auth 1-2, 3, 5-9, 12-13; scope 10, 39-44; deny 63-64, 65, 76
    "auth.get-without-credential", "auth.put-with-credential", "auth.query-string-is-fine", "auth.no-credential",
    "auth.wrong-secret", "auth.lower-case-scheme", "auth.basic-scheme", "auth.padded-header",
    "auth.wrong-secret-oversized-body", "auth.wrong-secret-invalid-json",
    "scope.shared-secret-ignores-the-header", "scope.empty-header", "scope.read-only", "scope.space-separated",
    "scope.upper-case", "scope.padded-list", "scope.foreign-origin",
    "J1.alias-cron", "deny.exec", "deny.owner-only-for-a-non-owner", "deny.sender-is-owner-is-no-owner",
    # the gateway's side doors
    "door.capability-prefix", "door.capability-query", "ws.connect-without-secret", "control.websocket",
    "ws.denied.terminal.open", "ws.denied.config.patch", "ws.node-role", "ws.node-client-mode",
    # raw-socket attacks an HTTP client would normalise away
    "D2.scopes-repeated", "D7.obs-fold-hides-header", "B3.underscore-scopes", "E3.absolute-form",
    "H1.content-length-and-chunked", "H1.bare-lf-line-endings", "H1.pipelined-denied-tool",
])
def test_the_required_cases_are_there(case_id):
    assert case_id in BY_ID


def test_the_whole_hard_deny_list_is_probed():
    probed = {case.id.removeprefix("deny.") for case in CORPUS.cases if case.klass == "deny"}
    assert HTTP_DENY_2026_9_6 <= probed


def test_cases_a_client_library_would_normalise_are_written_raw():
    assert BY_ID["H1.bare-lf-line-endings"].request.line_ending == "\n"
    folded = dict(BY_ID["D7.obs-fold-hides-header"].request.headers)["X-Probe-Note"]
    assert "\r\n " in folded
    names = [n for n, _ in BY_ID["D2.scopes-repeated"].request.headers]
    assert names.count("x-openclaw-scopes") == 2


# ---- judged against what a correct proxy sends upstream ------------------------------------------

MARKER = "ocprobe12345678"
SERVED = Answer("http", status=200, body=b'{"ok":true}')


def arrived(*headers):
    return [{"method": "POST", "path": "/tools/invoke", "headers": [list(h) for h in headers]}]


@pytest.mark.parametrize("case_id,own,forged", [
    # a proxy that drops the client's forwarding headers and sets its own (the reviewer's goodproxy.py)
    ("A5.forwarded-for-claims-loopback", ("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "127.0.0.66")),
    ("A7.x-real-ip", ("X-Real-IP", "127.0.0.1"), ("X-Real-IP", "192.0.2.66")),
    ("A7.forwarded-proto-and-host", ("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", f"https, {MARKER}")),
    # a proxy that drops the upgrade (or the expectation) and serves the call as plain HTTP/1.1
    ("H1.h2c-upgrade", ("Connection", "close"), ("Upgrade", "h2c")),
    ("H1.expect-unknown", ("Connection", "close"), ("Expect", "200-ok")),
])
def test_only_the_forged_values_fail_a_stripped_case(case_id, own, forged):
    case = BY_ID[case_id]
    assert case.expect.outcome == "stripped"
    assert judge(case.expect, SERVED, arrived(("Host", "gw"), own), MARKER)[0] == PASS
    assert judge(case.expect, SERVED, arrived(("Host", "gw"), own, forged), MARKER)[0] == FAIL


def test_the_connection_cases_keep_what_the_proxy_presents_upstream():
    assert {c.id for c in CORPUS.cases if c.expect.keeps} == {
        "C1.connection-nominates-scopes", "C1.connection-nominates-identity", "C2.connection-nominates-forwarded",
        "C3.connection-nominates-authorization", "C4.two-connection-lines"}


def test_the_smuggling_cases_read_on_after_their_answer():
    smuggling = {c.id for c in CORPUS.cases if c.may_smuggle}
    assert {"H1.content-length-and-chunked", "H1.chunked-and-content-length", "H1.pipelined-denied-tool",
            "H1.transfer-encoding-unknown", "H1.chunk-size-whitespace"} <= smuggling
    assert "A1.x-forwarded-uri" not in smuggling and "ws.node-role" not in smuggling


def test_tool_spellings_are_built_on_tools_the_gateway_has():
    """2026.9.6 answers exec, bash and apply-patch 404 even when allowed: a spelling of them that got
    through would look refused. cron and sessions_spawn answer a tool_error when reached."""
    for case in CORPUS.cases:
        if case.klass == "J" and case.id not in ("J1.alias-bash", "J1.alias-apply-patch", "J2.namespaced-look-alike"):
            assert {_skeleton(n) for n in tool_names(case)} - {"${safe_tool}"} <= {"automations", "sessions_spawn"}, case.id
    assert BY_ID["ws.tools-invoke-denied-tool"].request.frame.params["name"] == "sessions_spawn"


def test_side_doors_are_probed_with_a_method_their_handler_serves():
    assert BY_ID["door.node-watch"].request.method == "GET"  # POST gets the handler's 405


def test_the_limiter_case_says_what_it_does_not_test():
    assert "not tested" in BY_ID["G1.forged-forwarded-for-on-a-failed-login"].title


# ---- safe by default ----------------------------------------------------------------------------


def _skeleton(name: str) -> str:
    """A look-alike's plain spelling: NFKC, case, blanks, zero-width space, the Cyrillic e."""
    folded = unicodedata.normalize("NFKC", name).strip().lower().replace("\u200b", "").replace("\u0435", "e")
    folded = folded.replace("\ufeff", "")  # JavaScript's trim takes a byte-order mark; Python's strip does not
    return TOOL_ALIASES_2026_9_6.get(folded, folded)


@pytest.mark.parametrize("case", [c for c in CORPUS.cases if not c.unsafe], ids=lambda c: c.id)
def test_safe_cases_call_only_the_safe_tool_or_denied_ones(case):
    for name in tool_names(case):
        if not name.startswith("${safe_tool}"):
            skeleton = _skeleton(name)
            assert skeleton in DENIED_TOOLS or skeleton.endswith("__exec"), name


@pytest.mark.parametrize("case", [c for c in CORPUS.cases if c.websocket and not c.unsafe], ids=lambda c: c.id)
def test_safe_rpc_frames_cannot_act(case):
    frame = case.request.frame
    if frame is None:
        return
    # a lead-in must be allowed and act on nothing: only the judged frame after it is the attack
    assert case.request.lead_in is None or (case.request.lead_in.method, case.request.lead_in.params) == ("health", {})
    text = frame.raw if frame.raw is not None else json.dumps({"method": frame.method, "params": frame.params})
    sent = json.loads(text)
    method, params = sent["method"], sent["params"]  # json.loads keeps the last of duplicate keys
    if method == "tools.invoke":
        assert _skeleton(params["name"]) in DENIED_TOOLS
    elif method.startswith("openclaw.probe."):
        assert params == {}  # a method no gateway has
    else:
        assert method in VALIDATED_BEFORE_ACTING
        assert params == {"openclawProbe": True}


def test_unsafe_cases_are_the_ones_that_would_act_and_say_so():
    unsafe = {case.id for case in CORPUS.cases if case.unsafe}
    assert unsafe == {"ws.unsafe.terminal-open", "ws.unsafe.config-patch"}
    for case_id in unsafe:
        assert "vulnerable target" in BY_ID[case_id].title


def test_side_door_bodies_are_empty_so_a_reached_handler_only_complains():
    for case_id in ("door.openai-chat-completions", "door.openai-responses", "door.hooks-agent"):
        request = BY_ID[case_id].request
        assert request.body == Body("json", {})
        assert Reached(400) in BY_ID[case_id].expect.reached


# ---- selection ----------------------------------------------------------------------------------


def test_select_matches_ids_by_comma_separated_globs_and_always_keeps_the_controls():
    chosen = {c.id for c in CORPUS.select("E3.*, J1.upper-case")}
    assert chosen == {c.id for c in CORPUS.cases if c.id.startswith("E3.")} | {"J1.upper-case", "control.credential",
                                                                              "control.websocket"}


def test_select_is_case_sensitive():
    chosen = {c.id for c in CORPUS.select("A*")}
    assert any(i.startswith("A1.") for i in chosen)
    assert not any(i.startswith("auth.") for i in chosen)


def test_select_without_a_pattern_is_everything():
    assert CORPUS.select(None) == CORPUS.cases
    assert CORPUS.select(" , ") == CORPUS.cases


# ---- the loader refuses malformed cases, naming them --------------------------------------------

GOOD_CASE = {"id": "X1.good", "class": "A", "source": "s", "title": "t", "needs": ["credential"],
             "http": {"method": "POST", "target": "/tools/invoke", "credential": True, "call": "${safe_tool}"},
             "expect": {"outcome": "refused", "status": [400]}}


def document(*cases):
    return {"schema": CORPUS_SCHEMA, "gatewayVersion": "2026.9.6", "classes": {"A": "a", "ws": "w"}, "cases": list(cases)}


def with_change(path, value):
    case = copy.deepcopy(GOOD_CASE)
    target = case
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return case


def test_a_good_case_parses():
    case = parse_corpus(document(GOOD_CASE)).cases[0]
    assert case.needs == frozenset({"credential"})
    assert case.request.body == Body("json", {"name": "${safe_tool}", "args": {}})
    assert case.expect.status == (400,)


@pytest.mark.parametrize("case,complaint", [
    (with_change(["class"], "Z"), "class 'Z'"),
    (with_change(["needs"], ["root"]), "unknown needs"),
    (with_change(["expect", "outcome"], "maybe"), "expect.outcome"),
    (with_change(["expect", "status"], [99]), "status"),
    (with_change(["http", "lineEnding"], "\r"), "lineEnding"),
    (with_change(["http", "body"], {"json": {}}), "body and call are exclusive"),
    (with_change(["http", "headers"], [["X-A", "\u20ac"]]), "latin-1"),
    (with_change(["http", "headers"], [["Bad Name", "v"]]), "cannot be written"),
    (with_change(["http", "target"], "/${password}"), "unknown placeholders"),
    (with_change(["http", "methd"], "GET"), "unknown keys"),
    (with_change(["title"], ""), "title"),
    (with_change(["failsAuth"], "yes"), "failsAuth"),
    (dict(with_change(["http"], KeyError), websocket={"connect": None}), "a connect, a frame, or both"),
    (dict(with_change(["http"], KeyError), websocket={"frame": {"raw": '{"id":"x","method":"m"}'}}), "probe-frame"),
    (dict(with_change(["http"], KeyError), websocket={"connect": {"auth": "maybe"}}), "connect.auth"),
    (dict(with_change(["http"], KeyError), websocket={"leadIn": {"method": "health"}}), "sent between a connect and a frame"),
    (dict(with_change(["http"], KeyError), websocket={"leadIn": {"method": "health", "params": []},
                                                      "frame": {"method": "m"}}), "params an object"),
    (dict(with_change(["http"], KeyError), websocket={"leadIn": {"raw": "{}"}, "frame": {"method": "m"}}), "unknown keys"),
    (dict(GOOD_CASE, websocket={"connect": {}}), "exactly one of http, pipeline or websocket"),
    (dict(with_change(["http"], KeyError), pipeline=[GOOD_CASE["http"]]), "at least two"),
])
def test_a_malformed_case_is_refused_by_id(case, complaint):
    with pytest.raises(CorpusError) as refused:
        parse_corpus(document(case))
    assert "X1.good" in str(refused.value)
    assert complaint in str(refused.value)


def test_duplicate_ids_and_foreign_schemas_are_refused():
    with pytest.raises(CorpusError, match="duplicate id"):
        parse_corpus(document(GOOD_CASE, GOOD_CASE))
    with pytest.raises(CorpusError, match="schema"):
        parse_corpus(dict(document(GOOD_CASE), schema="openclaw-sidecar-probe-corpus/2"))
    with pytest.raises(CorpusError, match="not JSON"):
        load_corpus("{")


def test_a_websocket_case_needs_the_websocket_and_judges_its_frame():
    case = parse_corpus(document(dict(with_change(["http"], KeyError),
                                      websocket={"frame": {"method": "health", "params": {}}}))).cases[0]
    assert isinstance(case.request, WsRequest)
    assert "websocket" in case.needs
    assert case.judges_frame
