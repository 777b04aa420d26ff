"""sidecar.reasons: every reason code is a `Reason` (the same strings dashboards and audit lines
read), every member is produced somewhere and answerable, and each HTTP refusal is answered with
the gateway's own envelope (byte for byte, the shapes of tests/unit/test_envelopes.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from sidecar.envelopes import Envelope
from sidecar.reasons import (
    AUTH_FAILURES, BUILT_ANSWERS, FIXED_ANSWERS, FRAME_ONLY, HOST_NOT_PLAIN, HOST_REQUIRED, NOT_REFUSALS,
    MissingHeader, Reason, answer, family,
)
from sidecar.shadow import SHADOWABLE_REASONS
from tests.unit.test_envelopes import ATTRIBUTION_MESSAGE, CASES, JSON_CT, SECURITY, TEXT_CT

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = sorted([*(ROOT / "sidecar").rglob("*.py"), *(ROOT / "addons").rglob("*.py")])
CLOSE = ("Connection", "close")

# The metric labels and audit `reason` values as dashboards know them: renaming one is a breaking
# change for every dashboard and alert, so it must be made here on purpose.
LABELS = sorted([
    "ok", "allowed", "websocket_passthrough", "connect",
    "request_head_too_large", "invalid_method", "malformed_head", "expectation_failed", "invalid_host", "invalid_target",
    "foreign_host", "unsupported_upgrade", "non_canonical_target", "malformed_capability_path", "route_denied",
    "unknown_route", "node_capability", "method_not_served", "query_credential", "route_refused", "websocket_off",
    "invalid_websocket_upgrade", "proxy_attribution_required", "funnel_request", "method_not_allowed",
    "limiter_unavailable", "rate_limited", "missing_scope", "owner_required", "rpc_missing_scope", "preauth_sockets", "payload_too_large",
    "credential_missing", "token_not_configured", "password_not_configured", "token_mismatch", "password_mismatch",
    "origin_not_allowed", "trusted_proxy_not_configured", "trusted_proxy_untrusted_source",
    "trusted_proxy_loopback_source", "trusted_proxy_local_interface_check_failed",
    "trusted_proxy_local_interface_source", "trusted_proxy_missing_header", "trusted_proxy_user_missing",
    "trusted_proxy_user_not_allowed", "trusted_proxy_attribution_required", "trusted_proxy_origin_not_allowed",
    "trailers", "invalid_json", "missing_tool_name", "session_invalid", "tool_denied", "request_rate_limited",
    "body_timeout", "upstream_timeout", "upstream_unreachable",
    "websocket_connect_timeout", "preauth_frame_too_large", "frame_too_complex", "malformed_frame", "refused_frame_flood", "rpc_on_plugin_socket", "node_role",
    "device_above_ceiling",
    "connect_repeated", "unknown_method", "node_method", "operator_method", "method_denied", "unreadable_rpc_body",
])


def _openai(status: int, message: str, error_type: str, *extra: tuple[str, str]) -> Envelope:
    body = json.dumps({"error": {"message": message, "type": error_type}}, separators=(",", ":")).encode()
    return Envelope(status, body, (JSON_CT, *SECURITY, *extra))


UNAUTHORIZED = Envelope(401, b'{"error":{"message":"Unauthorized","type":"unauthorized"}}', (JSON_CT, *SECURITY))
NOT_FOUND = Envelope(404, b"Not Found", (TEXT_CT, *SECURITY))
INVALID_URL = Envelope(400, b'{"error":"bad_request","message":"Invalid request URL"}', (JSON_CT, *SECURITY))

# (reason, the request's data, the gateway's exact answer)
EXPECTED: list[tuple[Reason, tuple[str | int, ...], Envelope]] = [
    (Reason.REQUEST_HEAD_TOO_LARGE, (), Envelope(431, b"", (CLOSE,))),
    (Reason.INVALID_METHOD, (), _openai(400, "invalid request method", "invalid_request_error", CLOSE)),
    (Reason.MALFORMED_HEAD, ("header 'host' is repeated",),
     _openai(400, "header 'host' is repeated", "invalid_request_error", CLOSE)),
    (Reason.EXPECTATION_FAILED, (), Envelope(417, b"", SECURITY)),
    (Reason.INVALID_HOST, (HOST_REQUIRED,), _openai(400, "Host header is required", "invalid_request_error", CLOSE)),
    (Reason.INVALID_HOST, (HOST_NOT_PLAIN,), _openai(400, "Host must be host[:port]", "invalid_request_error", CLOSE)),
    (Reason.INVALID_TARGET, (), INVALID_URL),
    (Reason.FOREIGN_HOST, (), _openai(400, "request target names a foreign host", "invalid_request_error", CLOSE)),
    (Reason.UNSUPPORTED_UPGRADE, (), Envelope(400, b"Bad Request", (TEXT_CT, *SECURITY, CLOSE))),
    (Reason.NON_CANONICAL_TARGET, (), INVALID_URL),
    (Reason.MALFORMED_CAPABILITY_PATH, (), UNAUTHORIZED),
    (Reason.ROUTE_DENIED, (), NOT_FOUND),
    (Reason.UNKNOWN_ROUTE, (), NOT_FOUND),
    (Reason.NODE_CAPABILITY, (), NOT_FOUND),
    (Reason.METHOD_NOT_SERVED, (), NOT_FOUND),
    (Reason.QUERY_CREDENTIAL, (), NOT_FOUND),
    (Reason.ROUTE_REFUSED, (), NOT_FOUND),
    (Reason.WEBSOCKET_OFF, (), NOT_FOUND),
    (Reason.INVALID_WEBSOCKET_UPGRADE, (), _openai(400, "not an RFC 6455 WebSocket upgrade", "invalid_request_error", CLOSE)),
    (Reason.PROXY_ATTRIBUTION_REQUIRED, (), _openai(403, ATTRIBUTION_MESSAGE, "proxy_attribution_required")),
    (Reason.PREAUTH_SOCKETS, (), Envelope(503, b"Too many unauthenticated sockets",  # written raw: no security headers
                                          (("Connection", "close"), TEXT_CT))),
    (Reason.FUNNEL_REQUEST, (), UNAUTHORIZED),
    (Reason.METHOD_NOT_ALLOWED, ("POST",), Envelope(405, b"Method Not Allowed", (TEXT_CT, *SECURITY, ("Allow", "POST")))),
    (Reason.LIMITER_UNAVAILABLE, (), _openai(503, "Authentication rate limiter is unavailable; retry shortly.", "unavailable")),
    (Reason.RATE_LIMITED, (300,), _openai(429, "Too many failed authentication attempts. Please try again later.",
                                          "rate_limited", ("Retry-After", "300"))),
    (Reason.RATE_LIMITED, (0,), _openai(429, "Too many failed authentication attempts. Please try again later.",
                                        "rate_limited")),
    (Reason.MISSING_SCOPE, (), Envelope(403, b'{"ok":false,"error":{"type":"forbidden","message":"missing scope: '
                                             b'operator.write","details":{"code":"MISSING_SCOPE","missingScope":'
                                             b'"operator.write","requiredScopes":["operator.write"]}}}', (JSON_CT, *SECURITY))),
    (Reason.MISSING_SCOPE, ("operator.read",), Envelope(403, b'{"ok":false,"error":{"type":"forbidden","message":"missing scope: '
                                                         b'operator.read","details":{"code":"MISSING_SCOPE","missingScope":'
                                                         b'"operator.read","requiredScopes":["operator.read"]}}}', (JSON_CT, *SECURITY))),
    (Reason.MISSING_SCOPE, ("operator.write", "write-required"), Envelope(  # the beam plugin's own words
        403, b'{"ok":false,"error":"operator.write is required"}', (JSON_CT, *SECURITY))),
    (Reason.OWNER_REQUIRED, ("owner-access",), Envelope(
        403, b'{"ok":false,"error":{"message":"owner access required","type":"forbidden"}}', (JSON_CT, *SECURITY))),
    (Reason.OWNER_REQUIRED, ("owner-access-typed",), Envelope(  # chat media writes its keys the other way round
        403, b'{"ok":false,"error":{"type":"forbidden","message":"owner access required"}}', (JSON_CT, *SECURITY))),
    (Reason.OWNER_REQUIRED, ("outside-image",), Envelope(
        403, b'{"error":"Allowing an outside image requires operator.admin"}', (JSON_CT, *SECURITY))),
    (Reason.RPC_MISSING_SCOPE, ("operator.admin", "r1"), Envelope(
        500, b'{"id":"r1","ok":false,"error":{"code":"FORBIDDEN","message":"missing scope: operator.admin","details":'
             b'{"code":"MISSING_SCOPE","missingScope":"operator.admin","requiredScopes":["operator.admin"]}}}',
        (JSON_CT, *SECURITY, ("Cache-Control", "no-store")))),
    (Reason.PAYLOAD_TOO_LARGE, (), _openai(413, "Payload too large", "invalid_request_error", CLOSE)),
    *[(reason, (), UNAUTHORIZED) for reason in sorted(AUTH_FAILURES)],
    (Reason.TRAILERS, (), _openai(400, "request trailers are not accepted", "invalid_request_error", CLOSE)),
    (Reason.INVALID_JSON, ("Unexpected end of JSON input",),
     _openai(400, "Unexpected end of JSON input", "invalid_request_error")),
    (Reason.MISSING_TOOL_NAME, (), Envelope(400, b'{"ok":false,"error":{"type":"invalid_request","message":'
                                                 b'"tools.invoke requires name"}}', (JSON_CT, *SECURITY))),
    (Reason.SESSION_INVALID, ("unknown agent id",), Envelope(
        400, b'{"ok":false,"error":{"type":"invalid_request","message":"unknown agent id"}}', (JSON_CT, *SECURITY))),
    (Reason.TOOL_DENIED, ("automations",), Envelope(
        404, b'{"ok":false,"error":{"type":"not_found","message":"Tool not available: automations"}}', (JSON_CT, *SECURITY))),
    (Reason.REQUEST_RATE_LIMITED, (7,), _openai(429, "Too many requests. Please try again later.", "rate_limited",
                                                ("Retry-After", "7"))),
    (Reason.BODY_TIMEOUT, (), _openai(408, "Request body timeout", "invalid_request_error", CLOSE)),
    (Reason.UPSTREAM_TIMEOUT, (), _openai(504, "Upstream gateway timed out", "gateway_timeout")),
    (Reason.UPSTREAM_UNREACHABLE, (), _openai(502, "Upstream gateway is unreachable", "bad_gateway")),
    (Reason.UNREADABLE_RPC_BODY, (), Envelope(
        400, b'{"ok":false,"error":{"type":"invalid_request","message":"request body must be valid JSON"}}', (JSON_CT, *SECURITY))),
    (Reason.METHOD_DENIED, ("config.patch", "r1", "C"), Envelope(
        403, b'{"id":"r1","ok":false,"error":{"code":"FORBIDDEN","message":"method not allowed through this proxy: '
             b'config.patch","details":{"code":"METHOD_DENIED","markers":"C"}}}',
        (JSON_CT, *SECURITY, ("Cache-Control", "no-store")))),
]

# The reasons whose answer tests/unit/test_envelopes.py pins as a case of its own (by case id).
SAME_AS_CASE = {
    (Reason.EXPECTATION_FAILED, ()): "417", (Reason.INVALID_TARGET, ()): "400-url",
    (Reason.MALFORMED_HEAD, ("header 'host' is repeated",)): "400-head", (Reason.TOKEN_MISMATCH, ()): "401",
    (Reason.PROXY_ATTRIBUTION_REQUIRED, ()): "403-attribution", (Reason.MISSING_SCOPE, ()): "403-scope",
    (Reason.RATE_LIMITED, (300,)): "429", (Reason.RATE_LIMITED, (0,)): "429-no-retry-after",
    (Reason.REQUEST_RATE_LIMITED, (7,)): "429-requests", (Reason.LIMITER_UNAVAILABLE, ()): "503-limiter",
    (Reason.PAYLOAD_TOO_LARGE, ()): "413", (Reason.BODY_TIMEOUT, ()): "408",
    (Reason.INVALID_JSON, ("Unexpected end of JSON input",)): "400-json", (Reason.MISSING_TOOL_NAME, ()): "400-name",
    (Reason.TOOL_DENIED, ("automations",)): "404-tool", (Reason.ROUTE_DENIED, ()): "404-route",
    (Reason.UNSUPPORTED_UPGRADE, ()): "400-upgrade", (Reason.UPSTREAM_UNREACHABLE, ()): "502",
    (Reason.UPSTREAM_TIMEOUT, ()): "504", (Reason.METHOD_NOT_ALLOWED, ("POST",)): "405",
}


# ---- the enum: the strings dashboards read -----------------------------------------------------


def test_the_labels_are_exactly_the_dashboards_strings() -> None:
    assert sorted(Reason) == LABELS
    assert all(member.value == member.name.lower() for member in Reason)


def test_a_reason_is_its_string_wherever_it_is_written() -> None:
    reason = Reason.ROUTE_DENIED
    assert reason == "route_denied" and hash(reason) == hash("route_denied") and "route_denied" in {reason}
    assert str(reason) == f"{reason}" == "route_denied"
    assert json.dumps({"reason": reason}) == '{"reason": "route_denied"}'
    registry = CollectorRegistry()
    Counter("decisions", "", ["reason"], registry=registry).labels(reason=reason).inc()
    assert 'decisions_total{reason="route_denied"} 1.0' in generate_latest(registry).decode()


def test_the_missing_header_code_keeps_upstreams_spelling() -> None:
    code = MissingHeader("x-forwarded-proto")
    assert code == "trusted_proxy_missing_header_x-forwarded-proto"
    assert type(str(code)) is str and json.dumps(code) == '"trusted_proxy_missing_header_x-forwarded-proto"'
    assert family(code) is Reason.TRUSTED_PROXY_MISSING_HEADER
    assert family(Reason.TOKEN_MISMATCH) is Reason.TOKEN_MISMATCH
    assert answer(code) == UNAUTHORIZED


# ---- every member answerable, each the gateway's answer ------------------------------------------


def test_every_member_is_in_exactly_one_answer_group() -> None:
    groups = [set(FIXED_ANSWERS), set(BUILT_ANSWERS), set(FRAME_ONLY), set(NOT_REFUSALS)]
    for member in Reason:
        assert sum(member in group for group in groups) == 1, member
    assert AUTH_FAILURES <= set(FIXED_ANSWERS)


def test_every_http_answer_is_pinned_here() -> None:
    assert {reason for reason, _, _ in EXPECTED} == set(FIXED_ANSWERS) | set(BUILT_ANSWERS)


@pytest.mark.parametrize("reason, data, expected", EXPECTED, ids=[f"{r}-{len(d)}" for r, d, _ in EXPECTED])
def test_each_reason_is_answered_as_the_gateway_answers(reason: Reason, data: tuple[str | int, ...], expected: Envelope) -> None:
    assert answer(reason, *data) == expected


def test_the_expectations_are_test_envelopes_own_cases() -> None:
    cases = {case[0]: case for case in CASES}
    for (reason, data), case_id in SAME_AS_CASE.items():
        _, envelope, status, body, headers = cases[case_id]
        assert answer(reason, *data) == envelope == Envelope(status, body, headers), (reason, case_id)


def test_fixed_answers_take_no_data_and_frames_have_no_http_answer() -> None:
    """A programming error, named: the log line of the 500 it becomes says which reason and why."""
    with pytest.raises(TypeError, match=r"^invalid_target is always answered the same way; got \('x',\)$"):
        answer(Reason.INVALID_TARGET, "x")
    for reason in FRAME_ONLY | NOT_REFUSALS:
        with pytest.raises(ValueError, match=f"^{reason} has no HTTP answer$"):
            answer(reason)
    with pytest.raises(KeyError):
        answer(Reason.INVALID_HOST, "some other message")  # its two answers only


def test_fixed_answers_are_built_once() -> None:
    assert answer(Reason.ROUTE_DENIED) is answer(Reason.ROUTE_DENIED)
    assert answer(Reason.INVALID_HOST, HOST_REQUIRED) is answer(Reason.INVALID_HOST, HOST_REQUIRED)


def test_shadow_mode_only_lets_refusals_through() -> None:
    assert SHADOWABLE_REASONS <= set(Reason) - NOT_REFUSALS
    assert not SHADOWABLE_REASONS & AUTH_FAILURES


# ---- the code: every reason it decides with is a member, every member is decided somewhere ---------

# Calls whose argument at this position, or keyword, is a reason code.
REASON_ARGUMENTS = {
    "because": 0, "Refuse": 1, "FrameVerdict": 1, "AuthOutcome": 2, "fail": 0, "_refuse_connect": 1, "_audit": 2,
    "answer": 0,
}
REASON_KEYWORDS = {
    "Refuse": "reason", "FrameVerdict": "reason", "AuthOutcome": "reason", "Forward": "reason", "AuditEntry": "reason",
    "RouteAccess": "refusal", "_schedule": "audit_as",
}
# What the envelopes module may be asked for directly: answers that are not a refusal's, and helpers.
NOT_REFUSAL_ANSWERS = {"head_timeout", "internal_error", "tool_execution_failed"}
# Building blocks, not refusals: the RPC's frames share the gateway's words with the HTTP envelopes.
ENVELOPE_HELPERS = {"Envelope", "compact_json", "JSON_CONTENT_TYPE", "SECURITY_HEADERS", "method_denied_error",
                    "missing_scope_error"}


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in PRODUCT]


def test_no_reason_is_written_as_a_free_string() -> None:
    """Where the code passes a reason (a refusal, a frame verdict, an auth outcome, an audit line),
    it passes a member: a string literal there would be a label the enum does not know."""
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = _called(node) or ""
            position = REASON_ARGUMENTS.get(called)
            arguments = [node.args[position]] if position is not None and len(node.args) > position else []
            arguments += [k.value for k in node.keywords if k.arg is not None and k.arg == REASON_KEYWORDS.get(called)]
            for argument in arguments:
                for leaf in ast.walk(argument):
                    if (isinstance(leaf, ast.Constant) and isinstance(leaf.value, str)) or isinstance(leaf, ast.JoinedStr):
                        found.append(f"{path.relative_to(ROOT)}:{leaf.lineno} {called}")
    assert not found, found


def test_every_member_is_decided_somewhere() -> None:
    """Each member is named by the code that decides with it (not only by the tables here and in
    sidecar/shadow.py); the header-named auth code is made by MissingHeader."""
    named: set[str] = set()
    missing_header_made = False
    for path, tree in _trees():
        if path.name in ("reasons.py", "shadow.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason":
                named.add(node.attr)
            if isinstance(node, ast.Call) and _called(node) == "MissingHeader":
                missing_header_made = True
    assert missing_header_made
    assert {m.name for m in Reason} - named == {"TRUSTED_PROXY_MISSING_HEADER"}
    assert named <= {m.name for m in Reason}


def test_refusals_are_only_made_from_their_reason() -> None:
    """`Refuse.because` is the one constructor, and no refusal envelope is built beside a reason:
    the envelopes module is called directly only for answers that are not a refusal's."""
    direct = []
    for path, tree in _trees():
        if path.name in ("reasons.py", "envelopes.py"):
            continue
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("envelopes"):
                direct += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                           if a.name not in ENVELOPE_HELPERS | NOT_REFUSAL_ANSWERS]
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "Refuse":
                direct.append(f"{where}:{node.lineno} Refuse(...)")
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "envelopes"
                    and func.attr not in NOT_REFUSAL_ANSWERS):
                direct.append(f"{where}:{node.lineno} envelopes.{func.attr}(...)")
    assert not direct, direct
