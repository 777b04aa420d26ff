"""sidecar.body: reference §1 (cases 49-53, 55-57) and (f) 8: what is refused, which name is
checked, and the exact bytes forwarded."""

from __future__ import annotations

import json

import pytest

from sidecar.body import (MAX_BODY_BYTES, BodyError, InvokeBody, _reject_constant, invoke_body_of, parse_json_body, read_invoke_body,
                         strict_json)


def strict_loads(raw: bytes):
    """JSON.parse semantics: no NaN/Infinity tokens."""
    def reject(token: str):
        raise ValueError(token)
    return json.loads(raw.decode("utf-8"), parse_constant=reject)


def test_limit_is_two_mebibytes() -> None:
    assert MAX_BODY_BYTES == 2_097_152


# ---- refusals ---------------------------------------------------------------------------------

MISSING_NAME = [
    pytest.param(b"", id="50-empty"),
    pytest.param(b"   \r\n\t ", id="whitespace"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"null", id="51-null"),
    pytest.param(b"[]", id="51-array"),
    pytest.param(b'[{"tool":"agents_list"}]', id="array-of-object"),
    pytest.param(b"5", id="number"),
    pytest.param(b'"x"', id="51-string"),
    pytest.param(b"true", id="bool"),
    pytest.param(b'{"tool":"   "}', id="51-blank-tool"),
    pytest.param(b'{"tool":5}', id="51-numeric-tool"),
    pytest.param(b'{"tool":null}', id="null-tool"),
    pytest.param(b'{"tool":["agents_list"]}', id="array-tool"),
    pytest.param(b'{"tool":{"name":"agents_list"}}', id="object-tool"),
    pytest.param(b'{"name":"","tool":"agents_list"}', id="52-blank-name-wins"),
    pytest.param(b'{"name":"  ","tool":"agents_list"}', id="whitespace-name-wins"),
    pytest.param(b'{"name":5,"tool":"agents_list"}', id="numeric-name-wins"),
    pytest.param(b'{"name":false,"tool":"agents_list"}', id="false-name-wins"),
    pytest.param(b'{"name":[],"tool":"agents_list"}', id="array-name-wins"),
    pytest.param(b'{"args":{"tool":"agents_list"}}', id="nested-tool-ignored"),
]


@pytest.mark.parametrize("raw", MISSING_NAME)
def test_missing_tool_name(raw: bytes) -> None:
    with pytest.raises(BodyError) as exc:
        read_invoke_body(raw)
    assert exc.value.kind == "missing_name"


INVALID_JSON = [
    pytest.param(b'{"tool":', id="49-truncated"),
    pytest.param(b'{"tool":"agents_list",}', id="trailing-comma"),
    pytest.param(b"{tool:'agents_list'}", id="json5-not-json"),
    pytest.param(b'{"tool":"agents_list"} x', id="trailing-garbage"),
    pytest.param(b'{"tool":"agents_list","n":NaN}', id="NaN"),
    pytest.param(b'{"tool":"agents_list","n":Infinity}', id="Infinity"),
    pytest.param(b'{"tool":"agents_list","n":-Infinity}', id="-Infinity"),
    pytest.param(b"NaN", id="bare-NaN"),
    pytest.param('\x1c{"tool":"agents_list"}'.encode(), id="info-separator-not-trimmed"),  # Python's strip() would
    pytest.param('\x85'.encode(), id="next-line-not-trimmed"),
    pytest.param(b"\xff\xfe{", id="invalid-utf8-garbage"),
    pytest.param(b"[" * 100_000, id="deeply-nested"),
    pytest.param(b'{"tool":"agents_list"', id="unterminated-object"),
    pytest.param(b"{'tool':'agents_list'}", id="single-quotes"),
]


@pytest.mark.parametrize("raw", INVALID_JSON)
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(BodyError) as exc:
        read_invoke_body(raw)
    assert exc.value.kind == "invalid_json"
    assert exc.value.message and "\n" not in exc.value.message


@pytest.mark.parametrize("raw, message", [
    pytest.param(b'{"tool":', "Expecting value", id="python-fault"),
    pytest.param(b'{"tool":"agents_list","n":NaN}', "Unexpected token NaN in JSON", id="constant"),
    pytest.param(b"[" * 100_000, "JSON nested too deeply", id="beyond-the-parser"),
])
def test_an_invalid_body_is_answered_with_the_fault_alone(raw: bytes, message: str) -> None:
    """The 400 carries the parser's words for the fault: no Python line and column, and a NaN or
    Infinity named as JSON.parse would name it."""
    with pytest.raises(BodyError) as exc:
        read_invoke_body(raw)
    assert exc.value.message == message


def test_a_payload_too_deep_to_rewrite_is_invalid_json_not_an_internal_error() -> None:
    """The rewrite walks the payload again; nesting it cannot walk is the body's fault (400), said so.
    (Python's parser stops first for any body read off the wire, so the payload is built here.)"""
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(BodyError) as exc:
        invoke_body_of({"tool": " agents_list ", "args": nested}, b"{}")
    assert (exc.value.kind, exc.value.message) == ("invalid_json", "JSON nested too deeply to rewrite")


@pytest.mark.parametrize("raw, expected", [(b"", {}), (b" \n ", {}), (b"null", None), (b"[1]", [1]), (b'{"a":1}', {"a": 1})])
def test_parse_json_body(raw: bytes, expected) -> None:
    assert parse_json_body(raw) == expected


@pytest.mark.parametrize("padding", ["\ufeff", "\u00a0", "\u2028", "\u3000", "\v", "\ufeff \u2029"])
def test_the_whole_body_is_trimmed_as_javascript_trims_it(padding: str) -> None:
    """readJsonBodyWithLimit parses `text.trim()`: a byte-order mark or Unicode space around the
    JSON is no error, and a body of nothing else is the empty object (verified on the real gateway
    in tests/e2e/test_real_gateway_routes.py)."""
    assert parse_json_body(f'{padding}{{"tool":"agents_list"}}{padding}'.encode()) == {"tool": "agents_list"}
    assert parse_json_body(padding.encode()) == {}


def test_integers_past_pythons_digit_bound_are_doubles_as_in_javascript() -> None:
    """JSON.parse reads any integer literal as a double; Python's int() refuses more than 4,300
    digits, which must not turn a body the gateway accepts into a 400."""
    digits = "1" * 5000
    raw = f'{{"tool":" agents_list ","args":{{"n":{digits},"m":-{digits},"k":12345678901234567890123}}}}'.encode()
    body = read_invoke_body(raw)
    assert strict_loads(body.forward_bytes)["args"] == {"n": None, "m": None, "k": 12345678901234567890123}


def test_invalid_utf8_is_decoded_with_replacement_not_refused() -> None:
    """Node decodes the body as UTF-8 with U+FFFD; invalid bytes inside a string are not an error."""
    raw = b'{"tool":"agents_list","args":{"note":"caf\xe9"}}'
    body = read_invoke_body(raw)
    assert body.tool.name == "agents_list"
    assert body.forward_bytes is raw  # forwarded untouched: the gateway decodes it the same way


def test_invalid_utf8_in_tool_name_is_unacceptable() -> None:
    body = read_invoke_body(b'{"tool":"exe\xffc"}')
    assert body.tool.name == "exe\ufffdc"
    assert not body.tool.acceptable


# ---- which name is checked ----------------------------------------------------------------------

NAMES = [
    pytest.param(b'{"tool":"agents_list"}', "agents_list", id="tool"),
    pytest.param(b'{"name":"agents_list"}', "agents_list", id="name"),
    pytest.param(b'{"name":"agents_list","tool":"nope"}', "agents_list", id="52-name-beats-tool"),
    pytest.param(b'{"name":null,"tool":"agents_list"}', "agents_list", id="null-name-falls-back"),
    pytest.param(b'{"tool":"  agents_list  "}', "agents_list", id="trimmed"),
    pytest.param(b'{"tool":"cron"}', "automations", id="63-cron-alias"),
    pytest.param(b'{"tool":"CRON"}', "automations", id="CRON-folded"),
    pytest.param(b'{"tool":"bash"}', "exec", id="bash-alias"),
    pytest.param(b'{"tool":"apply-patch"}', "apply_patch", id="apply-patch-alias"),
    pytest.param(b'{"tool":"EXEC"}', "exec", id="J1-case"),
    pytest.param(b'{"tool":"\\u0065xec"}', "exec", id="json-escape"),
    pytest.param(b'{"tool":"agents_list","tool":"exec"}', "exec", id="duplicate-key-last-wins"),
    pytest.param(b'{"name":"exec","name":"agents_list"}', "agents_list", id="duplicate-name-last-wins"),
    pytest.param(b'{"tool":"agents_list","args":[1,2]}', "agents_list", id="55-array-args"),
    pytest.param(b'{"tool":"agents_list","dryRun":true}', "agents_list", id="57-dryRun"),
    # JavaScript's trim keeps U+001C-U+001F and U+0085, which Python's strip() drops: the gateway
    # looks up (and cannot find) these names; it does not find the name missing, nor run `exec`.
    pytest.param(b'{"tool":"\\u001c"}', "\x1c", id="info-separator-alone-is-a-name"),
    pytest.param('{"tool":"\\u001fexec\x85"}'.encode(), "\x1fexec\x85", id="separator-and-next-line-kept"),
]


@pytest.mark.parametrize("raw, name", NAMES)
def test_checked_name(raw: bytes, name: str) -> None:
    assert read_invoke_body(raw).tool.name == name


# ---- the bytes forwarded ------------------------------------------------------------------------

UNCHANGED = [
    pytest.param(b'{"tool":"agents_list","args":{}}', id="plain"),
    pytest.param(b'{ "tool" : "agents_list" ,\n "args" : { "a" : [1, 2.50, 1e3] } }', id="whitespace-and-number-spelling-kept"),
    pytest.param(b'{"name":"agents_list"}', id="name-only"),
    pytest.param(b'{"name":"agents_list","tool":"agents_list"}', id="both-equal"),
    pytest.param(b'{"name":null,"tool":"agents_list"}', id="null-name"),
    pytest.param(b'{"name":"agents_list","tool":null}', id="null-tool"),
    pytest.param(b'{"tool":"agents_list","action":"json","sessionKey":"main"}', id="56-action"),
    pytest.param(b'{"tool":"agents_list","args":{"s":"\\u00e9\\ud83d\\ude00"}}', id="escapes-kept"),
    pytest.param(b'{"tool":"agents_list","big":12345678901234567890123}', id="bignum-kept"),
]


@pytest.mark.parametrize("raw", UNCHANGED)
def test_original_bytes_forwarded_when_nothing_changes(raw: bytes) -> None:
    """(f) 8: re-serialising needlessly could push a legal 2 MiB body over the gateway's limit."""
    assert read_invoke_body(raw).forward_bytes is raw


def test_exact_limit_body_forwarded_unchanged() -> None:
    """Case 47: a valid body of exactly 2,097,152 bytes is processed and not re-serialised."""
    prefix, suffix = b'{"tool":"agents_list","pad":"', b'"}'
    raw = prefix + b" " * (MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(raw) == MAX_BODY_BYTES
    assert read_invoke_body(raw).forward_bytes is raw


REWRITTEN = [
    pytest.param(b'{"tool":" agents_list "}', b'{"tool":"agents_list"}', id="trim"),
    pytest.param(b'{"tool":"cron"}', b'{"tool":"automations"}', id="cron"),
    pytest.param(b'{"tool":"Agents_List", "args": {"x": 1}}', b'{"tool":"agents_list","args":{"x":1}}', id="case-compact"),
    pytest.param(b'{"name":" agents_list"}', b'{"name":"agents_list"}', id="name-only"),
    pytest.param(b'{"name":"agents_list","tool":"exec"}', b'{"name":"agents_list","tool":"agents_list"}', id="name-tool-differential"),
    pytest.param(b'{"name":"agents_list","tool":5}', b'{"name":"agents_list","tool":"agents_list"}', id="non-string-tool"),
    pytest.param(b'{"name":"agents_list","tool":""}', b'{"name":"agents_list","tool":"agents_list"}', id="blank-tool"),
    pytest.param(b'{"name":"agents_list","tool":false}', b'{"name":"agents_list","tool":"agents_list"}', id="false-tool"),
    pytest.param(b'{"name":null,"tool":" agents_list"}', b'{"name":null,"tool":"agents_list"}', id="null-name"),
    pytest.param(b'{"tool":"agents_list","name":"  agents_list"}', b'{"tool":"agents_list","name":"agents_list"}', id="padded-name"),
    pytest.param('{"tool":"BASH","args":{"s":"é"}}'.encode(), '{"tool":"exec","args":{"s":"é"}}'.encode(), id="non-ascii-kept-raw"),
]


@pytest.mark.parametrize("raw, forwarded", REWRITTEN)
def test_rewritten_compactly_with_checked_name_in_the_fields_sent(raw: bytes, forwarded: bytes) -> None:
    body = read_invoke_body(raw)
    assert body.forward_bytes == forwarded
    payload = strict_loads(body.forward_bytes)
    # Both gateway generations read the name we checked or none: 2026.9 `name ?? tool`, 2026.4 `tool`.
    assert (payload.get("name") if payload.get("name") is not None else payload.get("tool")) == body.tool.name
    assert payload.get("tool") in (body.tool.name, None)


def test_a_rewrite_adds_no_field() -> None:
    """(f) 8: a legal body one byte under the limit whose padded name is rewritten still fits:
    the rewrite pins the fields sent and adds none."""
    prefix, suffix = b'{"tool":" agents_list","pad":"', b'"}'
    raw = prefix + b"x" * (MAX_BODY_BYTES - 1 - len(prefix) - len(suffix)) + suffix
    forwarded = read_invoke_body(raw).forward_bytes
    assert len(forwarded) == len(raw) - 1 and forwarded.startswith(b'{"tool":"agents_list","pad":"xxx')


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"name":"agents_list","tool":"exec"}', id="name-safe-tool-denied"),
        pytest.param(b'{"name":"agents_list","tool":"sessions_spawn"}', id="name-safe-tool-spawn"),
        pytest.param(b'{"name":"agents_list","tool":" exec"}', id="padded-tool"),
    ],
)
def test_name_tool_differential_never_forwards_the_other_name(raw: bytes) -> None:
    """A 2026.4 gateway reads only `tool`: the forwarded body must never carry the unchecked name."""
    body = read_invoke_body(raw)
    payload = strict_loads(body.forward_bytes)
    assert payload.get("tool") == body.tool.name == "agents_list"
    assert payload.get("name", body.tool.name) == body.tool.name


@pytest.mark.parametrize("raw", [
    pytest.param(b'{"tool":"sessions_list","sessionKey":"agent:ops:x","agentId":"ops"}', id="forwarded-as-sent"),
    pytest.param(b'{"tool":" Sessions_List","sessionKey":"agent:ops:x","agentId":"ops"}', id="rewritten"),
])
def test_the_session_fields_are_read_as_sent_whether_or_not_the_body_is_rewritten(raw: bytes) -> None:
    """The gateway resolves the agent, and so the tool policy, from these two fields."""
    body = read_invoke_body(raw)
    assert (body.session_key, body.agent_id) == ("agent:ops:x", "ops")


@pytest.mark.parametrize("raw", [b'{"tool":"x"}', b'{"name":"y","tool":"z"}'])
def test_result_type(raw: bytes) -> None:
    assert isinstance(read_invoke_body(raw), InvokeBody)


# ---- rewrites must stay faithful and never crash -----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"tool":" agents_list ","args":{"n":1e400}}', id="overflowing-number"),
        pytest.param(b'{"tool":" agents_list ","args":{"n":-1e400}}', id="overflowing-negative-number"),
    ],
)
def test_rewrite_produces_strict_json(raw: bytes) -> None:
    """JSON.parse reads 1e400 as Infinity; a rewrite must not emit the non-JSON token `Infinity`."""
    body = read_invoke_body(raw)
    strict_loads(body.forward_bytes)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"tool":" \\ud800"}', id="lone-surrogate-name"),
        pytest.param(b'{"name":"agents_list","tool":"exec","x":"\\ud800"}', id="lone-surrogate-elsewhere"),
        pytest.param(b'{"tool":"Agents_List","x":"\\udfff"}', id="lone-low-surrogate"),
    ],
)
def test_lone_surrogates_never_raise_anything_but_body_error(raw: bytes) -> None:
    """Client input must produce a decision (forward or BodyError), never an unexpected exception."""
    try:
        body = read_invoke_body(raw)
    except BodyError:
        return
    strict_loads(body.forward_bytes)


@pytest.mark.parametrize("text", ["\ufeff{}", " \ufeff{}", '{"tool":"x"}', "{", "[1,]", '{"a":NaN}', "-Infinity"])
def test_the_prebound_decoder_answers_as_json_loads(text: str) -> None:
    """strict_json keeps one decoder instead of json.loads building one per call: same results,
    same error messages, the byte-order-mark check json.loads makes (WebSocket frames are not
    trimmed) included."""
    try:
        expected: object = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        expected = (type(exc), str(exc))
    try:
        got: object = strict_json(text)
    except ValueError as exc:
        got = (type(exc), str(exc))
    assert got == expected


@pytest.mark.parametrize("payload", [{"name": "agents_list"}, {"name": " Exec "}, {"name": "exec", "tool": "agents_list"}])
def test_a_frames_params_are_judged_without_being_encoded(payload: dict[str, object]) -> None:
    """The WebSocket session re-encodes a frame itself: no bytes are made here, even where a body
    would be rewritten."""
    assert invoke_body_of(payload).forward_bytes == b""


@pytest.mark.parametrize("payload", [
    {"name": "agents_list"}, {"tool": " Exec "}, {"name": "exec", "tool": "agents_list"}, {"name": None, "tool": "x"},
    {"name": 3}, {"name": "   "}, {"name": "sessions_list", "sessionKey": "agent:main:x", "agentId": "main", "args": {"a": [1, 2.5]}},
    [], "text",
])
def test_parsed_params_are_judged_as_their_bytes_would_be(payload: object) -> None:
    """invoke_body_of judges a WebSocket frame's params without re-encoding them: the tool
    fields must be what read_invoke_body reads from the same JSON as a body."""
    raw = json.dumps(payload).encode()
    try:
        expected: object = read_invoke_body(raw)
    except BodyError as exc:
        expected = exc.kind
    try:
        got: object = invoke_body_of(payload)
    except BodyError as exc:
        got = exc.kind
    if isinstance(expected, InvokeBody):
        assert isinstance(got, InvokeBody)
        assert (got.tool, got.spelled, got.session_key, got.agent_id) == (
            expected.tool, expected.spelled, expected.session_key, expected.agent_id)
    else:
        assert got == expected
