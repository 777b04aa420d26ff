"""sidecar.envelopes: the exact gateway answers of reference §8 (and §0.1, §0.2, §3), byte for byte."""

from __future__ import annotations

import json

import pytest

from sidecar import envelopes
from sidecar.envelopes import Envelope

JSON_CT = ("Content-Type", "application/json; charset=utf-8")
TEXT_CT = ("Content-Type", "text/plain; charset=utf-8")
SECURITY = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "camera=(), microphone=(self), geolocation=()"),
)
ATTRIBUTION_MESSAGE = (
    "Proxy client attribution is required. Configure gateway.trustedProxies narrowly and make the proxy "
    "overwrite or safely rebuild forwarded client headers."
)

CASES = [
    # (id, envelope, status, exact body, exact headers)
    ("405", envelopes.method_not_allowed("POST"), 405, b"Method Not Allowed",
     (("Content-Type", "text/plain; charset=utf-8"), *SECURITY, ("Allow", "POST"))),
    ("417", envelopes.expectation_failed(), 417, b"", SECURITY),
    ("400-url", envelopes.invalid_request_url(), 400, b'{"error":"bad_request","message":"Invalid request URL"}',
     (JSON_CT, *SECURITY)),
    ("400-head", envelopes.bad_request("header 'host' is repeated"), 400,
     b'{"error":{"message":"header \'host\' is repeated","type":"invalid_request_error"}}',
     (JSON_CT, *SECURITY, ("Connection", "close"))),
    ("401", envelopes.unauthorized(), 401, b'{"error":{"message":"Unauthorized","type":"unauthorized"}}',
     (JSON_CT, *SECURITY)),
    ("403-attribution", envelopes.proxy_attribution_required(), 403,
     json.dumps({"error": {"message": ATTRIBUTION_MESSAGE, "type": "proxy_attribution_required"}}, separators=(",", ":")).encode(),
     (JSON_CT, *SECURITY)),
    ("403-scope", envelopes.missing_scope(), 403,
     b'{"ok":false,"error":{"type":"forbidden","message":"missing scope: operator.write","details":'
     b'{"code":"MISSING_SCOPE","missingScope":"operator.write","requiredScopes":["operator.write"]}}}',
     (JSON_CT, *SECURITY)),
    ("429", envelopes.rate_limited(300), 429,
     b'{"error":{"message":"Too many failed authentication attempts. Please try again later.","type":"rate_limited"}}',
     (JSON_CT, *SECURITY, ("Retry-After", "300"))),
    ("429-no-retry-after", envelopes.rate_limited(0), 429,
     b'{"error":{"message":"Too many failed authentication attempts. Please try again later.","type":"rate_limited"}}',
     (JSON_CT, *SECURITY)),
    ("429-one-second", envelopes.rate_limited(1), 429,  # the shortest wait is still said
     b'{"error":{"message":"Too many failed authentication attempts. Please try again later.","type":"rate_limited"}}',
     (JSON_CT, *SECURITY, ("Retry-After", "1"))),
    ("429-requests", envelopes.request_rate_limited(7), 429,
     b'{"error":{"message":"Too many requests. Please try again later.","type":"rate_limited"}}',
     (JSON_CT, *SECURITY, ("Retry-After", "7"))),
    ("429-requests-no-retry-after", envelopes.request_rate_limited(0), 429,
     b'{"error":{"message":"Too many requests. Please try again later.","type":"rate_limited"}}',
     (JSON_CT, *SECURITY)),
    ("503-limiter", envelopes.limiter_unavailable(), 503,
     b'{"error":{"message":"Authentication rate limiter is unavailable; retry shortly.","type":"unavailable"}}',
     (JSON_CT, *SECURITY)),
    ("413", envelopes.payload_too_large(), 413,
     b'{"error":{"message":"Payload too large","type":"invalid_request_error"}}',
     (JSON_CT, *SECURITY, ("Connection", "close"))),
    ("408", envelopes.body_timeout(), 408,
     b'{"error":{"message":"Request body timeout","type":"invalid_request_error"}}',
     (JSON_CT, *SECURITY, ("Connection", "close"))),
    ("400-json", envelopes.invalid_json("Unexpected end of JSON input"), 400,
     b'{"error":{"message":"Unexpected end of JSON input","type":"invalid_request_error"}}',
     (JSON_CT, *SECURITY)),
    ("400-name", envelopes.missing_tool_name(), 400,
     b'{"ok":false,"error":{"type":"invalid_request","message":"tools.invoke requires name"}}',
     (JSON_CT, *SECURITY)),
    ("404-tool", envelopes.tool_not_available("automations"), 404,
     b'{"ok":false,"error":{"type":"not_found","message":"Tool not available: automations"}}',
     (JSON_CT, *SECURITY)),
    ("404-route", envelopes.route_not_found(), 404, b"Not Found", (TEXT_CT, *SECURITY)),
    ("400-upgrade", envelopes.websocket_upgrade_not_supported(), 400, b"Bad Request", (TEXT_CT, *SECURITY, ("Connection", "close"))),
    ("500-tool", envelopes.tool_execution_failed(), 500,
     b'{"ok":false,"error":{"type":"tool_error","message":"tool execution failed"}}', (JSON_CT, *SECURITY)),
    ("500-internal", envelopes.internal_error(), 500,
     b'{"error":{"message":"Internal Server Error","type":"internal_error"}}', (JSON_CT, *SECURITY)),
    ("502", envelopes.upstream_unreachable(), 502,
     b'{"error":{"message":"Upstream gateway is unreachable","type":"bad_gateway"}}', (JSON_CT, *SECURITY)),
    ("408-head", envelopes.head_timeout(), 408,
     b'{"error":{"message":"Request header timeout","type":"invalid_request_error"}}',
     (JSON_CT, *SECURITY, ("Connection", "close"))),
    ("504", envelopes.upstream_timeout(), 504,
     b'{"error":{"message":"Upstream gateway timed out","type":"gateway_timeout"}}', (JSON_CT, *SECURITY)),
]


@pytest.mark.parametrize("envelope, status, body, headers", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exact_envelope(envelope: Envelope, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
    assert envelope == Envelope(status, body, headers)


@pytest.mark.parametrize("envelope", [c[1] for c in CASES if c[1].body.startswith(b"{")], ids=[c[0] for c in CASES if c[1].body.startswith(b"{")])
def test_json_bodies_are_compact_and_valid(envelope: Envelope) -> None:
    payload = json.loads(envelope.body)
    assert json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() == envelope.body


@pytest.mark.parametrize(
    "name",
    ["exec", "ｅｘｅｃ", "a\"b", "line\nbreak", "</script>"],
)
def test_tool_name_is_json_escaped_in_404(name: str) -> None:
    envelope = envelopes.tool_not_available(name)
    assert json.loads(envelope.body) == {"ok": False, "error": {"type": "not_found", "message": f"Tool not available: {name}"}}


@pytest.mark.parametrize("message", ['a"b', "x\ny", "\x00"])
def test_bad_request_message_is_json_escaped(message: str) -> None:
    assert json.loads(envelopes.bad_request(message).body)["error"]["message"] == message


def test_a_non_ascii_tool_name_is_written_as_utf8_as_json_stringify_writes_it() -> None:
    assert envelopes.tool_not_available("ｅｘｅｃ").body == '{"ok":false,"error":{"type":"not_found","message":"Tool not available: ｅｘｅｃ"}}'.encode()


def test_non_finite_numbers_are_written_as_null_however_deeply_nested() -> None:
    """JSON.stringify writes Infinity and NaN as null, in arrays and objects alike."""
    assert envelopes.compact_json({"a": [1.5, float("inf")], "b": {"c": float("nan")}}) == b'{"a":[1.5,null],"b":{"c":null}}'


def test_a_lone_surrogate_is_escaped_rather_than_written_as_invalid_utf8() -> None:
    body = envelopes.compact_json({"name": "x\ud800"})
    assert body == b'{"name":"x\\ud800"}'
    # still compact where the surrogate sits among other values (the fallback escapes all non-ASCII)
    body = envelopes.compact_json({"a": ["\ud800", 1, "é"], "b": {"c": float("nan")}})
    assert body == b'{"a":["\\ud800",1,"\\u00e9"],"b":{"c":null}}'


def test_missing_scope_names_the_scope() -> None:
    payload = json.loads(envelopes.missing_scope().body)
    assert payload["error"]["message"] == "missing scope: operator.write"
    assert payload["error"]["details"] == {
        "code": "MISSING_SCOPE", "missingScope": "operator.write", "requiredScopes": ["operator.write"],
    }
    assert envelopes.missing_scope_error("operator.admin") == ("missing scope: operator.admin", {
        "code": "MISSING_SCOPE", "missingScope": "operator.admin", "requiredScopes": ["operator.admin"]})


@pytest.mark.parametrize("envelope", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_every_refusal_carries_the_security_headers(envelope: Envelope) -> None:
    """§0.1: the gateway stamps these on every response; the sidecar's answers are indistinguishable."""
    for header in SECURITY:
        assert header in envelope.headers
    assert len({n.lower() for n, _ in envelope.headers}) == len(envelope.headers)
