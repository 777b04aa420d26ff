"""Every reason code the sidecar decides with, and the answer each refusal gets.

A reason is what the audit line's `reason` says and the `reason` label of
`openclaw_sidecar_decisions_total` and `openclaw_sidecar_shadowed_total`: `Reason` is a `StrEnum`,
so each member *is* that string and dashboards read the same labels as before.

A refusal's HTTP answer is looked up from its reason (`answer`), never chosen beside it, so a
reason cannot go out with another reason's envelope: `FIXED_ANSWERS` holds the answers that never
vary (each built once), `BUILT_ANSWERS` the envelope function of those that carry the request's
own data (a header rule's message, a tool name, seconds to wait). Reasons answered only on the
RPC WebSocket (an error frame or a close, sidecar/rpc.py) are in `FRAME_ONLY`, and the outcomes
that are not refusals in `NOT_REFUSALS`; tests/unit/test_reasons.py checks that every member is in
exactly one of the four and that each envelope is the gateway's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from . import envelopes
from .envelopes import Envelope


class Reason(StrEnum):
    # ---- outcomes that are not refusals
    OK = "ok"  # an authentication that succeeded (AuthOutcome.reason)
    ALLOWED = "allowed"
    WEBSOCKET_PASSTHROUGH = "websocket_passthrough"  # an RPC upgrade relayed unread (websocket.mode passthrough)
    CONNECT = "connect"  # an RPC connect frame, rewritten and forwarded

    # ---- the request head (sidecar/pipeline.py HEAD_STAGES, in order), then the admin RPC body
    REQUEST_HEAD_TOO_LARGE = "request_head_too_large"
    INVALID_METHOD = "invalid_method"
    MALFORMED_HEAD = "malformed_head"
    EXPECTATION_FAILED = "expectation_failed"
    INVALID_HOST = "invalid_host"
    INVALID_TARGET = "invalid_target"
    FOREIGN_HOST = "foreign_host"
    UNSUPPORTED_UPGRADE = "unsupported_upgrade"
    NON_CANONICAL_TARGET = "non_canonical_target"
    MALFORMED_CAPABILITY_PATH = "malformed_capability_path"
    ROUTE_DENIED = "route_denied"
    UNKNOWN_ROUTE = "unknown_route"
    NODE_CAPABILITY = "node_capability"
    METHOD_NOT_SERVED = "method_not_served"
    QUERY_CREDENTIAL = "query_credential"
    ROUTE_REFUSED = "route_refused"
    WEBSOCKET_OFF = "websocket_off"
    INVALID_WEBSOCKET_UPGRADE = "invalid_websocket_upgrade"
    PROXY_ATTRIBUTION_REQUIRED = "proxy_attribution_required"
    FUNNEL_REQUEST = "funnel_request"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    LIMITER_UNAVAILABLE = "limiter_unavailable"  # the auth-failure or the request limiter (fail-closed)
    RATE_LIMITED = "rate_limited"  # locked out after failed authentications
    MISSING_SCOPE = "missing_scope"
    OWNER_REQUIRED = "owner_required"  # a route whose handler also requires operator.admin
    PAYLOAD_TOO_LARGE = "payload_too_large"  # declared at the head; a chunked body past the limit at the body
    PREAUTH_SOCKETS = "preauth_sockets"  # a client's unauthenticated RPC upgrades past its share (sidecar/shares.py)
    RPC_MISSING_SCOPE = "rpc_missing_scope"  # the body: an admin HTTP RPC method the caller lacks the scope for

    # ---- authentication failures: upstream's own codes (sidecar/auth.py), all answered 401
    CREDENTIAL_MISSING = "credential_missing"
    TOKEN_NOT_CONFIGURED = "token_not_configured"
    PASSWORD_NOT_CONFIGURED = "password_not_configured"
    TOKEN_MISMATCH = "token_mismatch"
    PASSWORD_MISMATCH = "password_mismatch"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    TRUSTED_PROXY_NOT_CONFIGURED = "trusted_proxy_not_configured"
    TRUSTED_PROXY_UNTRUSTED_SOURCE = "trusted_proxy_untrusted_source"
    TRUSTED_PROXY_LOOPBACK_SOURCE = "trusted_proxy_loopback_source"
    TRUSTED_PROXY_LOCAL_INTERFACE_CHECK_FAILED = "trusted_proxy_local_interface_check_failed"
    TRUSTED_PROXY_LOCAL_INTERFACE_SOURCE = "trusted_proxy_local_interface_source"
    TRUSTED_PROXY_MISSING_HEADER = "trusted_proxy_missing_header"  # spelled with the header: MissingHeader
    TRUSTED_PROXY_USER_MISSING = "trusted_proxy_user_missing"
    TRUSTED_PROXY_USER_NOT_ALLOWED = "trusted_proxy_user_not_allowed"
    TRUSTED_PROXY_ATTRIBUTION_REQUIRED = "trusted_proxy_attribution_required"
    TRUSTED_PROXY_ORIGIN_NOT_ALLOWED = "trusted_proxy_origin_not_allowed"

    # ---- the request body and tool policy (HTTP and the RPC's tools.invoke)
    TRAILERS = "trailers"
    INVALID_JSON = "invalid_json"
    UNREADABLE_RPC_BODY = "unreadable_rpc_body"  # an admin HTTP RPC body the sidecar cannot read, so cannot judge
    MISSING_TOOL_NAME = "missing_tool_name"
    SESSION_INVALID = "session_invalid"
    TOOL_DENIED = "tool_denied"
    REQUEST_RATE_LIMITED = "request_rate_limited"

    # ---- answered by the adapter: time limits and the upstream
    BODY_TIMEOUT = "body_timeout"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"

    # ---- the RPC WebSocket's frames (sidecar/rpc.py)
    WEBSOCKET_CONNECT_TIMEOUT = "websocket_connect_timeout"
    PREAUTH_FRAME_TOO_LARGE = "preauth_frame_too_large"
    FRAME_TOO_COMPLEX = "frame_too_complex"  # a large frame holding more values than the sidecar builds: closed 1009
    MALFORMED_FRAME = "malformed_frame"
    REFUSED_FRAME_FLOOD = "refused_frame_flood"  # past the connection's budget of refused frames: closed 1008
    RPC_ON_PLUGIN_SOCKET = "rpc_on_plugin_socket"  # the gateway's RPC spoken on an opened plugin's socket: closed 1008
    NODE_ROLE = "node_role"
    DEVICE_ABOVE_CEILING = "device_above_ceiling"
    CONNECT_REPEATED = "connect_repeated"
    UNKNOWN_METHOD = "unknown_method"
    NODE_METHOD = "node_method"  # an operator connection called a node's method
    OPERATOR_METHOD = "operator_method"  # a node connection called anything but a node's method or health
    METHOD_DENIED = "method_denied"


class MissingHeader(str):
    """`trusted_proxy_missing_header_<name>`: upstream names the missing required header in the
    code itself, so this one reason is not a fixed string. Its family (`family()`) is
    `Reason.TRUSTED_PROXY_MISSING_HEADER`; the names come from `trustedProxy.requiredHeaders`, so
    the metric labels it makes are as few as the configured headers."""

    __slots__ = ()
    FAMILY: Final = Reason.TRUSTED_PROXY_MISSING_HEADER

    def __new__(cls, header: str) -> MissingHeader:
        return super().__new__(cls, f"{Reason.TRUSTED_PROXY_MISSING_HEADER}_{header}")


# Any reason a decision carries: a member, or the one code spelled with a header name.
ReasonCode: TypeAlias = Reason | MissingHeader


def family(reason: ReasonCode) -> Reason:
    """The member a reason code belongs to (itself, for every code but MissingHeader)."""
    return MissingHeader.FAMILY if isinstance(reason, MissingHeader) else reason


NOT_REFUSALS: Final = frozenset({Reason.OK, Reason.ALLOWED, Reason.WEBSOCKET_PASSTHROUGH, Reason.CONNECT})

AUTH_FAILURES: Final = frozenset({
    Reason.CREDENTIAL_MISSING, Reason.TOKEN_NOT_CONFIGURED, Reason.PASSWORD_NOT_CONFIGURED, Reason.TOKEN_MISMATCH,
    Reason.PASSWORD_MISMATCH, Reason.ORIGIN_NOT_ALLOWED, Reason.TRUSTED_PROXY_NOT_CONFIGURED,
    Reason.TRUSTED_PROXY_UNTRUSTED_SOURCE, Reason.TRUSTED_PROXY_LOOPBACK_SOURCE,
    Reason.TRUSTED_PROXY_LOCAL_INTERFACE_CHECK_FAILED, Reason.TRUSTED_PROXY_LOCAL_INTERFACE_SOURCE,
    Reason.TRUSTED_PROXY_MISSING_HEADER, Reason.TRUSTED_PROXY_USER_MISSING, Reason.TRUSTED_PROXY_USER_NOT_ALLOWED,
    Reason.TRUSTED_PROXY_ATTRIBUTION_REQUIRED, Reason.TRUSTED_PROXY_ORIGIN_NOT_ALLOWED,
})

# INVALID_HOST's two answers: no Host at all, or one that is not host[:port].
HOST_REQUIRED: Final = "Host header is required"
HOST_NOT_PLAIN: Final = "Host must be host[:port]"
_INVALID_HOST = {message: envelopes.bad_request(message) for message in (HOST_REQUIRED, HOST_NOT_PLAIN)}

_ROUTE_NOT_FOUND = envelopes.route_not_found()
_UNAUTHORIZED = envelopes.unauthorized()
_INVALID_REQUEST_URL = envelopes.invalid_request_url()

# Refusals answered the same way every time: the gateway's envelope, built once.
FIXED_ANSWERS: Final[Mapping[Reason, Envelope]] = MappingProxyType({
    Reason.REQUEST_HEAD_TOO_LARGE: envelopes.head_too_large(),
    Reason.INVALID_METHOD: envelopes.bad_request("invalid request method"),
    Reason.EXPECTATION_FAILED: envelopes.expectation_failed(),
    Reason.INVALID_TARGET: _INVALID_REQUEST_URL,
    Reason.FOREIGN_HOST: envelopes.bad_request("request target names a foreign host"),
    Reason.UNSUPPORTED_UPGRADE: envelopes.websocket_upgrade_not_supported(),
    Reason.NON_CANONICAL_TARGET: _INVALID_REQUEST_URL,
    Reason.MALFORMED_CAPABILITY_PATH: _UNAUTHORIZED,
    Reason.ROUTE_DENIED: _ROUTE_NOT_FOUND,
    Reason.UNKNOWN_ROUTE: _ROUTE_NOT_FOUND,
    Reason.NODE_CAPABILITY: _ROUTE_NOT_FOUND,
    Reason.METHOD_NOT_SERVED: _ROUTE_NOT_FOUND,
    Reason.QUERY_CREDENTIAL: _ROUTE_NOT_FOUND,
    Reason.ROUTE_REFUSED: _ROUTE_NOT_FOUND,
    Reason.WEBSOCKET_OFF: _ROUTE_NOT_FOUND,
    Reason.INVALID_WEBSOCKET_UPGRADE: envelopes.bad_request("not an RFC 6455 WebSocket upgrade"),
    Reason.PREAUTH_SOCKETS: envelopes.too_many_unauthenticated_sockets(),
    Reason.PROXY_ATTRIBUTION_REQUIRED: envelopes.proxy_attribution_required(),
    Reason.FUNNEL_REQUEST: _UNAUTHORIZED,
    Reason.LIMITER_UNAVAILABLE: envelopes.limiter_unavailable(),
    Reason.PAYLOAD_TOO_LARGE: envelopes.payload_too_large(),
    **{reason: _UNAUTHORIZED for reason in AUTH_FAILURES},
    Reason.TRAILERS: envelopes.bad_request("request trailers are not accepted"),
    Reason.MISSING_TOOL_NAME: envelopes.missing_tool_name(),
    Reason.BODY_TIMEOUT: envelopes.body_timeout(),
    Reason.UPSTREAM_TIMEOUT: envelopes.upstream_timeout(),
    Reason.UPSTREAM_UNREACHABLE: envelopes.upstream_unreachable(),
    Reason.UNREADABLE_RPC_BODY: envelopes.invalid_request("request body must be valid JSON"),  # the plugin's own words
})

# Refusals whose answer carries the request's data: the envelope function, given that data.
BUILT_ANSWERS: Final[Mapping[Reason, Callable[..., Envelope]]] = MappingProxyType({
    Reason.MALFORMED_HEAD: envelopes.bad_request,  # the message names the rule that fired
    Reason.INVALID_HOST: _INVALID_HOST.__getitem__,  # HOST_REQUIRED or HOST_NOT_PLAIN (each built once)
    Reason.RATE_LIMITED: envelopes.rate_limited,  # seconds until the lockout ends
    Reason.INVALID_JSON: envelopes.invalid_json,  # the parser's message
    Reason.SESSION_INVALID: envelopes.invalid_request,  # the gateway's message for the session or agent
    Reason.TOOL_DENIED: envelopes.tool_not_available,  # the tool's name
    Reason.REQUEST_RATE_LIMITED: envelopes.request_rate_limited,  # seconds until the budget refills
    Reason.METHOD_DENIED: envelopes.rpc_method_denied,  # on the admin HTTP RPC route: method, request id, markers
    Reason.METHOD_NOT_ALLOWED: envelopes.method_not_allowed,  # the methods the route serves (its Allow)
    Reason.MISSING_SCOPE: envelopes.missing_scope,  # the route's scope, and its own answer if it has one
    Reason.OWNER_REQUIRED: envelopes.ROUTE_ANSWERS.__getitem__,  # the route's own answer
    Reason.RPC_MISSING_SCOPE: envelopes.rpc_missing_scope,  # on the admin HTTP RPC route: scope, request id
})

# Refusals made only on the RPC WebSocket: an error frame or a close code, never an HTTP answer.
FRAME_ONLY: Final = frozenset({
    Reason.WEBSOCKET_CONNECT_TIMEOUT, Reason.PREAUTH_FRAME_TOO_LARGE, Reason.FRAME_TOO_COMPLEX, Reason.MALFORMED_FRAME,
    Reason.NODE_ROLE,
    Reason.DEVICE_ABOVE_CEILING, Reason.CONNECT_REPEATED, Reason.UNKNOWN_METHOD, Reason.NODE_METHOD, Reason.OPERATOR_METHOD,
    Reason.REFUSED_FRAME_FLOOD, Reason.RPC_ON_PLUGIN_SOCKET,
})


def answer(reason: ReasonCode, *data: str | int) -> Envelope:
    """The HTTP answer to a refusal for `reason`. `data` is what a BUILT_ANSWERS reason's envelope
    carries (a message, a tool name, seconds to wait) and nothing for a FIXED_ANSWERS one."""
    code = family(reason)
    fixed = FIXED_ANSWERS.get(code)
    if fixed is not None:
        if data:
            raise TypeError(f"{code} is always answered the same way; got {data!r}")
        return fixed
    build = BUILT_ANSWERS.get(code)
    if build is None:
        raise ValueError(f"{code} has no HTTP answer")
    return build(*data)
