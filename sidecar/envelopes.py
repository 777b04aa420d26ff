"""The exact response bodies and headers the OpenClaw Gateway (2026.9.6) uses for each refusal.

Every refusal the sidecar makes must be indistinguishable from the gateway's own, so clients and
tests see one contract whichever layer said no. Shapes are from the reference §8.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

# §0.1: the gateway stamps these on every response; our own refusals carry them too.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "camera=(), microphone=(self), geolocation=()"),
)

KNOWN_ATTRIBUTION_MESSAGE = (
    "Proxy client attribution is required. Configure gateway.trustedProxies narrowly and make "
    "the proxy overwrite or safely rebuild forwarded client headers."
)


@dataclass(frozen=True)
class Envelope:
    """A complete answer: status, body bytes and the headers that belong to it."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


def _finite(value: Any) -> Any:
    """JSON.stringify writes a non-finite number (e.g. a parsed 1e400) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def compact_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as JSON.stringify writes it.

    Lone surrogates (legal in JSON text, not encodable as UTF-8) fall back to `\\uXXXX` escapes.
    """
    try:
        text = _compact(value)
    except ValueError:
        value = _finite(value)
        text = _compact(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _compact_ascii(value).encode()


# Bound once: json.dumps builds a new encoder for every call given options.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def _json(status: int, payload: Any, *extra: tuple[str, str]) -> Envelope:
    body = compact_json(payload)
    headers = (("Content-Type", JSON_CONTENT_TYPE), *SECURITY_HEADERS, *extra)
    return Envelope(status, body, headers)


def _openai_style(status: int, message: str, error_type: str, *extra: tuple[str, str]) -> Envelope:
    return _json(status, {"error": {"message": message, "type": error_type}}, *extra)


def _ok_false(status: int, error_type: str, message: str, **more: Any) -> Envelope:
    return _json(status, {"ok": False, "error": {"type": error_type, "message": message, **more}})


def _plain(status: int, text: str, *extra: tuple[str, str]) -> Envelope:
    return Envelope(status, text.encode(), (("Content-Type", "text/plain; charset=utf-8"), *SECURITY_HEADERS, *extra))


def method_not_allowed(allow: str) -> Envelope:
    """A route's handler answering a method it does not serve; `allow` lists the ones it does."""
    return _plain(405, "Method Not Allowed", ("Allow", allow))


def expectation_failed() -> Envelope:
    """§0.2: an Expect other than 100-continue gets 417 with an empty body."""
    return Envelope(417, b"", SECURITY_HEADERS)


def invalid_request_url() -> Envelope:
    return _json(400, {"error": "bad_request", "message": "Invalid request URL"})


def bad_request(message: str) -> Envelope:
    """Malformed request head (duplicate or aliased protected headers, control bytes, trailers).

    Node answers these with a bare 400 before any route runs; we add a JSON reason so a
    security engineer sees which rule fired.
    """
    return _openai_style(400, message, "invalid_request_error", ("Connection", "close"))


def unauthorized() -> Envelope:
    return _openai_style(401, "Unauthorized", "unauthorized")


def proxy_attribution_required() -> Envelope:
    return _openai_style(403, KNOWN_ATTRIBUTION_MESSAGE, "proxy_attribution_required")


def missing_scope_error(scope: str) -> tuple[str, dict[str, Any]]:
    """The gateway's words for a missing scope, over HTTP and on the RPC alike: message, details."""
    return f"missing scope: {scope}", {"code": "MISSING_SCOPE", "missingScope": scope, "requiredScopes": [scope]}


def method_denied_error(method: str, markers: str) -> tuple[str, dict[str, Any]]:
    """A gateway method refused through the sidecar, on the RPC and the admin HTTP RPC alike: message, details."""
    return f"method not allowed through this proxy: {method}", {"code": "METHOD_DENIED", "markers": markers}


def missing_scope(scope: str = "operator.write", route_answer: str | None = None) -> Envelope:
    """A route's handler refusing a caller without `scope` (buildMissingScopeForbiddenBody; POST
    /tools/invoke needs operator.write), or with the answer of its own that ROUTE_ANSWERS names."""
    if route_answer is not None:
        return ROUTE_ANSWERS[route_answer]
    message, details = missing_scope_error(scope)
    return _ok_false(403, "forbidden", message, details=details)


# Routes that answer a missing scope or owner right in words of their own (the route table's
# `scopeAnswer` and `owner`): key order as each handler writes its JSON.
ROUTE_ANSWERS: dict[str, Envelope] = {
    "owner-access": _json(403, {"ok": False, "error": {"message": "owner access required", "type": "forbidden"}}),
    "owner-access-typed": _json(403, {"ok": False, "error": {"type": "forbidden", "message": "owner access required"}}),
    "outside-image": _json(403, {"error": "Allowing an outside image requires operator.admin"}),
    "write-required": _json(403, {"ok": False, "error": "operator.write is required"}),
}


def rpc_missing_scope(scope: str, request_id: str) -> Envelope:
    """The admin HTTP RPC plugin's answer to a method its caller lacks the scope for: the
    dispatcher's FORBIDDEN error, which its status mapping leaves at 500."""
    message, details = missing_scope_error(scope)
    error = {"code": "FORBIDDEN", "message": message, "details": details}
    return _json(500, {"id": request_id, "ok": False, "error": error}, ("Cache-Control", "no-store"))


def _retry_after(seconds: int) -> tuple[tuple[str, str], ...]:
    """Retry-After only when there is something to wait for (§3)."""
    return (("Retry-After", str(seconds)),) if seconds > 0 else ()


def rate_limited(retry_after_s: int) -> Envelope:
    message = "Too many failed authentication attempts. Please try again later."
    return _openai_style(429, message, "rate_limited", *_retry_after(retry_after_s))


def request_rate_limited(retry_after_s: int) -> Envelope:
    """The sidecar's own per-identity request budget (not an upstream answer)."""
    return _openai_style(429, "Too many requests. Please try again later.", "rate_limited", *_retry_after(retry_after_s))


def limiter_unavailable() -> Envelope:
    return _openai_style(503, "Authentication rate limiter is unavailable; retry shortly.", "unavailable")


def payload_too_large() -> Envelope:
    return _openai_style(413, "Payload too large", "invalid_request_error", ("Connection", "close"))


def body_timeout() -> Envelope:
    return _openai_style(408, "Request body timeout", "invalid_request_error", ("Connection", "close"))


def invalid_json(message: str) -> Envelope:
    return _openai_style(400, message, "invalid_request_error")


def invalid_request(message: str) -> Envelope:
    """The gateway's 400 for a request it cannot place: no tool name, a malformed session key, an
    unknown or mismatched agent (§8)."""
    return _ok_false(400, "invalid_request", message)


def missing_tool_name() -> Envelope:
    return invalid_request("tools.invoke requires name")


def tool_not_available(name: str) -> Envelope:
    return _ok_false(404, "not_found", f"Tool not available: {name}")


def rpc_method_denied(method: str, request_id: str, markers: str) -> Envelope:
    """A gateway method refused on the admin HTTP RPC route: the plugin's own response shape
    (`id`, `ok`, `error`), carrying the error the WebSocket refusal of that method carries."""
    message, details = method_denied_error(method, markers)
    error = {"code": "FORBIDDEN", "message": message, "details": details}
    return _json(403, {"id": request_id, "ok": False, "error": error}, ("Cache-Control", "no-store"))


def route_not_found() -> Envelope:
    """The gateway's respondNotFound: what it answers where no handler takes the request."""
    return _plain(404, "Not Found")


def head_too_large() -> Envelope:
    """Node's answer to a request head over its 16 KiB limit (HPE_HEADER_OVERFLOW)."""
    return Envelope(431, b"", (("Connection", "close"),))


def head_timeout() -> Envelope:
    """A request head not complete in time (Node's headersTimeout answers 408 too)."""
    return _openai_style(408, "Request header timeout", "invalid_request_error", ("Connection", "close"))


def websocket_upgrade_not_supported() -> Envelope:
    """An `Upgrade:` other than websocket (h2c...): the gateway answers 400 and closes."""
    return _plain(400, "Bad Request", ("Connection", "close"))


def too_many_unauthenticated_sockets() -> Envelope:
    """The gateway's refusal of an RPC upgrade past its preauth budget (rejectWebSocketUpgrade:
    written straight to the socket, so none of its usual headers)."""
    return Envelope(503, b"Too many unauthenticated sockets", (("Connection", "close"), ("Content-Type", "text/plain; charset=utf-8")))


def tool_execution_failed() -> Envelope:
    """The gateway's sanitised 500: the real error text never reaches the client."""
    return _ok_false(500, "tool_error", "tool execution failed")


def internal_error() -> Envelope:
    return _openai_style(500, "Internal Server Error", "internal_error")


def upstream_unreachable() -> Envelope:
    return _openai_style(502, "Upstream gateway is unreachable", "bad_gateway")


def upstream_timeout() -> Envelope:
    return _openai_style(504, "Upstream gateway timed out", "gateway_timeout")
