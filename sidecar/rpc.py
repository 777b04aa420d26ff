"""The gateway's WebSocket RPC, judged frame by frame before the gateway reads it.

The gateway runs its whole control protocol over a WebSocket on the same port: a `connect`
frame that carries the credential, the role and the scopes asked for, then `req` frames naming
one of ~480 methods. Relayed unread, a token holder's connection is gateway admin (a shell,
config patches, tools past the sidecar's policy). Here every client frame is decided:

* the first frame must be `connect`: its secret is checked like an HTTP credential (failure
  limiter included), the role is pinned to `operator`, the scopes are cut to the caller's
  ceiling, and the sidecar's own upstream credential replaces the caller's;
* every later `req` needs the method's scope from the gateway's own table (params-decided scopes
  included), must not be on the method deny list, and `tools.invoke` goes through the same tool
  policy and request limits as HTTP; unknown methods are refused.

Pure: the adapter hands in message bytes and applies the `FrameVerdict`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal, NamedTuple, TypeGuard

from .auth import AuthOutcome, parse_origin, safe_equal
from .body import BodyError, invoke_body_of, strict_json
from .config import Config, RefusedFrames
from .envelopes import compact_json, method_denied_error, missing_scope_error
from .pacing import RefusalBudget
from .ratelimit import BROWSER_ORIGIN_SUBJECT
from .routes import GATEWAY_VERSION, PLUGIN_ROUTE_PREFIX
from .reasons import Reason, ReasonCode
from .scopes import ADMIN, ResolvedScopes
from .shadow import SHADOWABLE_REASONS
from .toolchain import ToolChain, ToolDecision, ToolRequest
from .toolpolicy import JS_WHITESPACE, js_trim

PREAUTH_MAX_BYTES = 64 * 1024  # the gateway's own pre-auth frame limit
# The gateway's WebSocket maxPayload: its RPC (server-constants MAX_PAYLOAD_BYTES), and the
# largest of its other sockets.
RPC_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
GATEWAY_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Methods refused whatever the scopes unless `sidecar.websocket.allowMethods` names them: those
# the catalogue marks as running programs or agent turns (X), writing files (F), changing config,
# secrets or policy (C), pairing devices or minting tokens (P), or restarting (R), and those our
# own review found opening listeners or sending to caller-chosen addresses (L: `portal.open`
# proxies a new gateway port to any local one with write scope alone).
DENY_MARKERS = frozenset("XFCPRL")
TOOLS_INVOKE = "tools.invoke"
_OPERATOR = "operator."
# AGENT_SESSION_RESET_COMMAND_RE as JavaScript reads it: its \s (the blanks js_trim strips), `$` at
# the very end, and /i folding ASCII letters only (no long s for an s).
_RESET_COMMAND = re.compile(rf"/(new|reset)(?:[{re.escape(JS_WHITESPACE)}]+[\s\S]*)?\Z", re.IGNORECASE | re.ASCII)

Verdict = Literal["forward", "reply", "drop", "close"]


class SessionClose(NamedTuple):
    """A close the sidecar decides outside any frame's verdict (in the gateway's words where it
    has them): the adapter sends it, this module chooses it."""

    code: int
    text: str


RULES_CHANGED = SessionClose(4001, "gateway auth changed")  # the gateway's, when its secret changes
CONNECT_TIMEOUT = SessionClose(1008, "connect timeout")  # the gateway's, no connect in time
NOT_THIS_PROTOCOL = SessionClose(1008, "not this route's protocol")  # RPC spoken on a plugin's socket


@dataclass(frozen=True)
class FrameVerdict:
    """What to do with one client frame: forward it (rewritten when `payload` is set), answer it
    ourselves and keep the connection, drop it unanswered (what the gateway does with a frame it
    cannot parse once connected), or answer (optionally) and close with a code."""

    verdict: Verdict
    reason: ReasonCode
    payload: bytes | None = None  # forward: the rewritten frame; reply/close: our answer
    close_code: int = 1000
    method: str | None = None
    tool: str | None = None
    shadowed: bool = False  # shadow mode forwarded what `reason` would have refused
    detail: str | None = None  # for the audit line: which tool-policy layer refused, by which rule
    close_reason: str | None = None  # the close frame's text where the gateway's own is known (else `reason`)
    audited: bool = True  # False: a shadowed frame past the connection's budget, forwarded without its audit line

    @property
    def close_text(self) -> str:
        """The close frame's text: the gateway's words where known, else the reason code."""
        return self.close_reason or self.reason


@dataclass(frozen=True)
class MethodSpec:
    scope: str  # an operator scope, "dynamic" (decided from params) or "node"
    markers: str = ""


@cache
def method_catalogue(version: str = GATEWAY_VERSION) -> Mapping[str, MethodSpec]:
    text = resources.files("sidecar").joinpath(f"data/gateway-ws-methods-{version}.json").read_text(encoding="utf-8")
    rows = json.loads(text)["methods"]
    return {name: MethodSpec(row["scope"], row.get("markers", "")) for name, row in rows.items()}


def default_denied(version: str = GATEWAY_VERSION) -> frozenset[str]:
    """The methods the deny list holds by default (tools.invoke is judged by the tool policy)."""
    return frozenset(name for name, spec in method_catalogue(version).items()
                     if set(spec.markers) & DENY_MARKERS and name != TOOLS_INVOKE)


def scope_satisfied(required: str, granted: frozenset[str]) -> bool:
    """operatorScopeSatisfied (2026.9.6): admin satisfies all; write implies read, talk and the
    session scopes; read implies session read."""
    if not required.startswith(_OPERATOR):
        return False
    if required in granted or ADMIN in granted:
        return True
    if required in ("operator.read", "operator.talk", "operator.sessions.read", "operator.sessions.write") \
            and "operator.write" in granted:
        return True
    return required == "operator.sessions.read" and bool(granted & {"operator.read", "operator.sessions.write"})


def _record(params: Any) -> dict[str, Any]:
    return params if isinstance(params, dict) else {}


def dynamic_scopes(method: str, params: Any) -> tuple[str, ...]:
    """resolveDynamicLeastPrivilegeOperatorScopesForMethod, for the dynamic methods. Where the
    gateway consults its plugin registry (plugins.sessionAction) the strictest answer is used."""
    p = _record(params)
    if method == "agent":
        message = p.get("message")
        return (ADMIN,) if isinstance(message, str) and _RESET_COMMAND.match(message) else ("operator.write",)
    if method == "talk.config":
        return ("operator.read", "operator.talk.secrets") if p.get("includeSecrets") is True else ("operator.read",)
    if method == "environments.list":
        runtime = p.get("runtimeId")
        return ("operator.write",) if isinstance(runtime, str) and runtime else ("operator.read",)
    if method == "channels.pairing.approve":
        return ("operator.pairing", ADMIN) if p.get("bootstrapCommandOwner") is True else ("operator.pairing",)
    if method == "fs.listDir":
        return (ADMIN,) if "nodeId" in p else ("operator.write",)
    if method == "sessions.delete":
        return ("operator.write",) if p.get("archivedOnly") is True and set(p) <= _DELETE_WRITE_FIELDS else (ADMIN,)
    if method in ("sessions.patch", "sessions.patchMany", "sessions.create", "sessions.dispatch", "sessions.move"):
        # Their write-level shapes depend on validators and policy sets of the gateway; every
        # one of them is on the default deny list, and an operator who opens one gets admin.
        return (ADMIN,)
    return (ADMIN,)  # node.invoke, plugins.sessionAction: the strictest the gateway may ask


_DELETE_WRITE_FIELDS = frozenset({"key", "agentId", "deleteTranscript", "expectedSessionId", "archivedOnly"})


def error_frame(request_id: Any, code: str, message: str, details: Mapping[str, Any] | None = None, **extra: Any) -> bytes:
    """A `res` frame shaped like the gateway's own refusals (errorShape: code, message, the
    options such as `retryable`, then details)."""
    error: dict[str, Any] = {"code": code, "message": message, **extra}
    if details:
        error["details"] = dict(details)
    return compact_json({"type": "res", "id": request_id, "ok": False, "error": error})


# A refused connect credential as the gateway words it (formatGatewayAuthFailureMessage), its
# details code (resolveAuthConnectErrorDetailCode) and next step (resolveUnauthorizedHandshakeContext),
# by the gateway's reason; `{token}` / `{password}` take the hint for the kind of client.
_CONNECT_AUTH_FAILURES: dict[str, tuple[str, str, str]] = {
    "token_missing": ("gateway token missing ({token_missing})", "AUTH_TOKEN_MISSING", "update_auth_configuration"),
    "token_mismatch": ("gateway token mismatch ({token})", "AUTH_TOKEN_MISMATCH", "update_auth_credentials"),
    "token_missing_config": ("gateway token not configured on gateway (set gateway.auth.token)", "AUTH_TOKEN_NOT_CONFIGURED",
                             "update_auth_configuration"),
    "password_missing": ("gateway password missing ({password})", "AUTH_PASSWORD_MISSING", "update_auth_configuration"),
    "password_mismatch": ("gateway password mismatch ({password})", "AUTH_PASSWORD_MISMATCH", "update_auth_credentials"),
    "password_missing_config": ("gateway password not configured on gateway (set gateway.auth.password)",
                                "AUTH_PASSWORD_NOT_CONFIGURED", "update_auth_configuration"),
    "rate_limited": ("too many failed authentication attempts (retry later)", "AUTH_RATE_LIMITED", "wait_then_retry"),
}
# The gateway's hints by client kind, for a remote client (one reaching it through a proxy).
_HINTS = {
    "cli": {"token": "set gateway.remote.token to match gateway.auth.token",
            "password": "set gateway.remote.password to match gateway.auth.password"},
    "ui": {"token": "open the dashboard URL and paste the token in Control UI settings",
           "token_missing": "paste in Control UI settings or openclaw doctor --generate-gateway-token; restart",
           "password": "enter the password in Control UI settings"},
    "other": {"token": "provide gateway auth token", "password": "provide gateway auth password"},
}
_UI_CLIENT_IDS = frozenset({"openclaw-control-ui", "openclaw-browser-copilot", "openclaw-tui", "webchat-ui"})
# The sidecar's reason codes where the gateway's differ.
_GATEWAY_AUTH_REASONS = {"token_not_configured": "token_missing_config", "password_not_configured": "password_missing_config"}


def _client_kind(client: Mapping[str, Any]) -> str:
    """isGatewayCliClient / isOperatorUiClient or isWebchatClient, from the connect's client."""
    mode, client_id = (js_trim(value).lower() if isinstance(value := client.get(k), str) else "" for k in ("mode", "id"))
    if mode == "cli":
        return "cli"
    return "ui" if client_id in _UI_CLIENT_IDS or mode == "webchat" else "other"


def connect_auth_refusal(request_id: Any, outcome: AuthOutcome, client: Mapping[str, Any], *, device: bool) -> tuple[bytes, str]:
    """The gateway's answer to a connect whose credential failed (or whose client is locked out),
    and its message, which the gateway also closes with; a limiter outage, which the gateway cannot
    have, gets its generic `unauthorized`. With neither a secret nor a device identity the gateway
    asks for a device (evaluateMissingDeviceIdentity). `canRetryWithDeviceToken` is always false:
    device tokens never pass this proxy."""
    if outcome.reason == Reason.CREDENTIAL_MISSING and not device:
        message = "device identity required"
        return error_frame(request_id, "NOT_PAIRED", message, {"code": "DEVICE_IDENTITY_REQUIRED"}), message
    reason = f"{outcome.method}_missing" if outcome.reason == Reason.CREDENTIAL_MISSING else \
        _GATEWAY_AUTH_REASONS.get(str(outcome.reason), str(outcome.reason))
    text, code, next_step = _CONNECT_AUTH_FAILURES.get(reason, ("authentication unavailable (retry later)", "AUTH_UNAUTHORIZED",
                                                                "review_auth_configuration"))
    hints = _HINTS[_client_kind(client)]
    text = text.format(token=hints["token"], token_missing=hints.get("token_missing", hints["token"]), password=hints["password"])
    retry: dict[str, Any] = {}
    if outcome.reason == Reason.RATE_LIMITED:
        retry = {"retryable": True, **({"retryAfterMs": outcome.retry_after_s * 1000} if outcome.retry_after_s else {})}
    details = {"code": code, "authReason": reason, "canRetryWithDeviceToken": False, "recommendedNextStep": next_step}
    message = f"unauthorized: {text}"
    return error_frame(request_id, "INVALID_REQUEST", message, details, **retry), message


def missing_scope_frame(request_id: Any, scope: str) -> bytes:
    return error_frame(request_id, "FORBIDDEN", *missing_scope_error(scope))


@dataclass(frozen=True)
class RpcPolicy:
    """Everything a connection's frames are judged by, built once from config."""

    tools: ToolChain
    allow_methods: frozenset[str]
    allow_nodes: bool
    upstream_auth: Mapping[str, str] | None  # what the gateway gets in connect.params.auth
    # "token" or "password" when that secret of the sidecar's callers is the upstream credential
    callers_hold_upstream: str | None = None
    shadow: bool = False  # sidecar.enforce false: policy refusals are forwarded (sidecar/shadow.py)
    catalogue: Mapping[str, MethodSpec] = field(default_factory=method_catalogue)
    refused_frames: RefusedFrames = RefusedFrames()  # sidecar.websocket.refusedFrames

    @classmethod
    def from_config(cls, config: Config, tools: ToolChain) -> "RpcPolicy":
        websocket = config.sidecar.websocket
        secrets = config.secrets
        credential, kind = secrets.upstream_credential, secrets.upstream_kind
        held = next((method for method, secret in (("token", secrets.token), ("password", secrets.password))
                     if method == secrets.mode and _same_secret(secret, credential)), None)
        return cls(tools=tools, allow_methods=frozenset(websocket.allow_methods), allow_nodes=websocket.allow_nodes,
                   upstream_auth={kind: credential} if credential is not None and kind is not None else None,
                   callers_hold_upstream=held, shadow=not config.sidecar.enforce, refused_frames=websocket.refused_frames)

    @cached_property
    def denied(self) -> frozenset[str]:
        """Computed once, not per frame."""
        return default_denied() - self.allow_methods


def connect_secret(mode: str, auth: Mapping[str, Any]) -> str | None:
    """The gateway's shared secret of a connect frame (resolveSharedConnectAuth, then
    resolveConnectSecret): `token` and `password` trimmed, a blank one absent, then the field its
    auth mode names, else the other (a password-mode sidecar read `token` first: red team)."""
    token, password = (js_trim(value) or None if isinstance(value := auth.get(key), str) else None
                       for key in ("token", "password"))
    return (token or password) if mode == "token" else (password or token)


def connect_param_errors(params: Mapping[str, Any]) -> list[str]:
    """The gateway's connect schema on the params the sidecar reads or rewrites, in its words and
    order: `role` a non-empty string, `scopes` an array of them, `auth` a closed object of strings.
    Rewritten, a frame the gateway would refuse for them reached it repaired (red team)."""
    errors: list[str] = []
    if "role" in params:
        role = params["role"]
        if not isinstance(role, str):
            errors.append("at /role: must be string")
        elif not role:
            errors.append("at /role: must not have fewer than 1 characters")
    scopes = params.get("scopes", [])
    if not isinstance(scopes, list):
        errors.append("at /scopes: must be array")
    else:
        errors += [f"at /scopes/{index}: {'must be string' if not isinstance(scope, str) else 'must not have fewer than 1 characters'}"
                   for index, scope in enumerate(scopes) if not isinstance(scope, str) or not scope]
    auth = params.get("auth", {})
    if not isinstance(auth, dict):
        errors.append("at /auth: must be object")
    else:
        errors += [_under_auth(error) for error in schema_errors(auth, CONNECT_AUTH_SCHEMA)]
    return errors[:_MAX_SCHEMA_ERRORS]


def _under_auth(error: str) -> str:
    """A schema error of `auth`'s own, at its path in the connect params."""
    if error.startswith("at root:"):
        return error.replace("at root:", "at /auth:", 1)
    return error.replace("at /", "at /auth/", 1) if error.startswith("at /") else f"at /auth: {error}"


def first_missing_scope(method: str, spec: MethodSpec, params: Any, granted: frozenset[str]) -> str | None:
    """The first scope `method` needs that `granted` lacks (after authorizeGatewayMethod: `health`
    needs none, a dynamic method what its params ask for), or None. Stricter than the gateway in
    two places: `device.scopes.requestUpgrade`/`waitUpgrade` (on the deny list anyway) keep their
    scope, and an `operator.sessions.*` scope never stands in for read or write."""
    if method == "health":
        return None
    required = dynamic_scopes(method, params) if spec.scope == "dynamic" else (spec.scope,)
    return next((scope for scope in required if not scope_satisfied(scope, granted)), None)


def judge_method(policy: RpcPolicy, method: str, request_id: Any, params: Any, scopes: frozenset[str]) -> FrameVerdict | None:
    """A request frame's method against the table: its refusal, or None when it may proceed."""
    spec = policy.catalogue.get(method)
    if spec is None:
        # The gateway's words (authorizeGatewayMethod): a method it has no scope for needs admin,
        # and only an admin learns that no handler has that name.
        answer = error_frame(request_id, "INVALID_REQUEST", f"unknown method: {method}") if ADMIN in scopes \
            else missing_scope_frame(request_id, ADMIN)
        return FrameVerdict("reply", Reason.UNKNOWN_METHOD, answer, method=method)
    if spec.scope == "node":  # an operator connection's role does not run it
        return FrameVerdict("reply", Reason.NODE_METHOD, error_frame(request_id, "INVALID_REQUEST", "unauthorized role: operator"), method=method)
    # The scope first, as the gateway checks it: a caller without it hears what the gateway would
    # say, not which names the deny list holds (red team).
    missing = first_missing_scope(method, spec, params, scopes)
    if missing is not None:
        return FrameVerdict("reply", Reason.MISSING_SCOPE, missing_scope_frame(request_id, missing), method=method)
    if method in policy.denied:
        return FrameVerdict("reply", Reason.METHOD_DENIED, error_frame(
            request_id, "FORBIDDEN", *method_denied_error(method, spec.markers)), method=method)
    return None


def judge_node_method(policy: RpcPolicy, method: str, request_id: Any) -> FrameVerdict | None:
    """A node connection's request as the gateway authorises it (isRoleAuthorizedForMethod): `health`
    and the node methods run with no scope check, anything else, known or not, is refused by role.
    The deny list does not hold them: allowNodes is the deployment's choice to have nodes."""
    spec = policy.catalogue.get(method)
    if method == "health" or (spec is not None and spec.scope == "node"):
        return None
    return FrameVerdict("reply", Reason.OPERATOR_METHOD, error_frame(request_id, "INVALID_REQUEST", "unauthorized role: node"),
                        method=method)


def judge_tool_frame(tools: ToolChain, request_id: Any, params: Any, owner: bool,
                     caps: frozenset[str]) -> tuple[FrameVerdict | str, ToolDecision | None]:
    """A `tools.invoke` frame's params as the gateway's handler takes them (its closed schema, then
    a name left after trimming), then its tool policy: a refusal, or the normalised name it runs as;
    and the tool chain's decision, when it was asked. The gateway passes no message channel or
    account on the RPC, but the connection's caps."""
    errors = schema_errors(params, TOOLS_INVOKE_SCHEMA)
    if errors:
        return FrameVerdict("reply", Reason.MALFORMED_FRAME, error_frame(
            request_id, "INVALID_REQUEST", f"{INVALID_TOOLS_INVOKE_PARAMS}: {'; '.join(errors)}"), method=TOOLS_INVOKE), None
    try:
        invoke = invoke_body_of(params)
    except BodyError:
        return FrameVerdict("reply", Reason.MISSING_TOOL_NAME, error_frame(
            request_id, "INVALID_REQUEST", f"{INVALID_TOOLS_INVOKE_PARAMS}: name required"), method=TOOLS_INVOKE), None
    decision = tools.decide(ToolRequest(invoke, owner, client_caps=caps))
    return (tool_refusal_frame(request_id, decision, invoke.tool.name) if decision.refused else invoke.tool.name), decision


INVALID_TOOLS_INVOKE_PARAMS = "invalid tools.invoke params"
# The gateway's RPC codes for a refused tool call (resolveRpcErrorCode), by the HTTP status.
_TOOL_ERROR_CODES = {400: "validation_error", 404: "not_found"}


def tool_refusal_frame(request_id: Any, decision: ToolDecision, tool: str) -> FrameVerdict:
    """The tool chain's refusal as the gateway's handler answers one: a successful `res` whose
    payload is the failed call (`ok: false`, the tool's name, the RPC error code and message)."""
    payload = {"ok": False, "toolName": tool,
               "error": {"code": _TOOL_ERROR_CODES.get(decision.status or 0, "forbidden"), "message": decision.message or ""}}
    return FrameVerdict("reply", decision.reason, compact_json({"type": "res", "id": request_id, "ok": True, "payload": payload}),
                        method=TOOLS_INVOKE, tool=tool, detail=decision.detail)


ORIGIN_NOT_ALLOWED = ("origin not allowed (open the Control UI from the gateway host or allow it in "
                      "gateway.controlUi.allowedOrigins)")
BROWSER_COPILOT_CLIENT = "openclaw-browser-copilot"
BROWSER_ORIGIN_UNPARSED = "198.18.0.1"  # the gateway's stand-in for an Origin URL cannot parse
_CHROME_EXTENSION_ORIGIN = re.compile(r"(?i:chrome-extension)://[a-p]{32}/?", re.ASCII)


@dataclass(frozen=True)
class BrowserOrigin:
    """A browser's RPC upgrade (a non-blank Origin), as the gateway's connect will check it."""

    refusal: str | None  # checkBrowserOrigin's reason; None when the origin passes
    extension: bool  # a Chrome extension's own origin, which the gateway leaves to its browser copilot
    # What a loopback browser's failed secrets count against (resolveBrowserOriginRateLimitKey):
    # its origin, never exempt from lockout as a loopback address is, since any page can open one.
    limit_key: str = BROWSER_ORIGIN_UNPARSED

    @classmethod
    def of(cls, raw: str, refusal: str | None) -> "BrowserOrigin":
        origin = parse_origin(raw)
        if origin is None:
            limit_key = BROWSER_ORIGIN_UNPARSED
        else:
            limit_key = BROWSER_ORIGIN_SUBJECT + (origin.origin if origin.network else "null")
        return cls(refusal, _CHROME_EXTENSION_ORIGIN.fullmatch(js_trim(raw)) is not None, limit_key)

    def refuses(self, client: Mapping[str, Any]) -> str | None:
        """The reason the gateway refuses this client's connect on its origin, if it does."""
        client_id = client.get("id")
        copilot = isinstance(client_id, str) and js_trim(client_id).lower() == BROWSER_COPILOT_CLIENT
        return None if copilot and self.extension else self.refusal


# The gateway's words for a first frame that is no request, or a request other than connect.
INVALID_REQUEST_FRAME = "invalid request frame"
NOT_CONNECT_FIRST = "invalid handshake: first request must be connect"
CONNECT_PARAMS_NOT_OBJECT = "invalid connect params: must be object"
INVALID_ROLE = "invalid role"
PROTOCOL_MISMATCH = "protocol mismatch"
GATEWAY_PROTOCOL, PROBE_PROTOCOL = 4, 3  # the gateway's own, and the oldest a probe may speak
NODES_NOT_RELAYED = "role not allowed through this proxy: only operator connections are relayed"
NODE_NEEDS_OWNER = f"node connections need {ADMIN} in the caller's ceiling"


def _js_integer(value: Any) -> TypeGuard[int | float]:
    """A JSON number JavaScript holds as an integer (`4.0` is one; `true` is no number, and one past
    2^53 may have lost its digits: left to the gateway's schema)."""
    return (type(value) is int or (type(value) is float and value.is_integer())) and abs(value) <= 2 ** 53


def protocol_mismatch(params: Mapping[str, Any], probe: bool) -> dict[str, Any] | None:
    """The details of the gateway's protocol refusal (admitGatewayConnect) when the client's range
    holds no protocol it speaks with such a client, else None. Ranges its schema refuses (no
    integers) are left to it. Asked only where the sidecar refuses the connect itself (an unknown
    role, so never a node's, which may also speak the previous protocol): elsewhere the gateway
    answers a range it does not speak, after its whole schema."""
    low, high = params.get("minProtocol"), params.get("maxProtocol")
    if not (_js_integer(low) and _js_integer(high) and low >= 1 and high >= 1):
        return None
    if low <= GATEWAY_PROTOCOL <= high or (probe and high >= PROBE_PROTOCOL and low <= GATEWAY_PROTOCOL):
        return None
    return {"code": "PROTOCOL_MISMATCH", "clientMinProtocol": int(low), "clientMaxProtocol": int(high),
            "expectedProtocol": GATEWAY_PROTOCOL, "minimumProbeProtocol": PROBE_PROTOCOL}


class FrameError(ValueError):
    """A frame the protocol does not allow: the connection is closed with `code` (and, before
    connect, with the gateway's `close_reason` where it has one)."""

    def __init__(self, code: int, reason: str, close_reason: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.close_reason = code, close_reason


# A property of the gateway's closed-object schemas, as (name, kind, shortest, longest): kind is
# "string" (a length range), "literal" (the one value, in `shortest`), "boolean", "record" (an
# object) or "unknown" (anything).
_Property = tuple[str, str, Any, int | None]


@dataclass(frozen=True)
class ClosedObject:
    required: tuple[str, ...]  # in the schema's order
    properties: tuple[_Property, ...]

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, *_ in self.properties)


REQUEST_FRAME_SCHEMA = ClosedObject(("type", "id", "method"), (
    ("type", "literal", "req", None), ("id", "string", 1, None), ("method", "string", 1, None), ("params", "unknown", None, None),
    ("traceparent", "string", 0, 128), ("expectedProfileId", "string", 1, 128)))
TOOLS_INVOKE_SCHEMA = ClosedObject(("name",), (
    ("name", "string", 1, None), ("args", "record", None, None), ("sessionKey", "string", 1, None),
    ("agentId", "string", 1, None), ("confirm", "boolean", None, None), ("idempotencyKey", "string", 1, None),
    ("conversationReadOrigin", "literal", "direct-operator", None)))
CONNECT_AUTH_SCHEMA = ClosedObject((), tuple(
    (name, "string", 0, None) for name in ("token", "bootstrapToken", "deviceToken", "password", "approvalRuntimeToken",
                                           "agentRuntimeIdentityToken")))
_MAX_SCHEMA_ERRORS = 8  # TypeBox's maxErrors setting, which the gateway keeps


def request_frame_errors(frame: Any) -> list[str]:
    """The gateway's RequestFrameSchema check: `req`, a non-empty id and method, optionally params,
    a traceparent of at most 128 characters and a profile id of 1 to 128. Empty for a request frame."""
    return schema_errors(frame, REQUEST_FRAME_SCHEMA)


def schema_errors(value: Any, schema: ClosedObject) -> list[str]:
    """A closed-object schema's check in the words and order of the gateway's formatValidationErrors
    over TypeBox's errors: the first missing key; one error per unexpected key, then one naming the
    first that is not blank, which stands for them; then each property in the schema's order; at
    most eight. Empty when `value` passes."""
    if not isinstance(value, dict):
        return ["must be object"]
    known = schema.names
    errors: list[tuple[str, str]] = []  # (TypeBox keyword, the gateway's words)
    missing = next((key for key in schema.required if key not in value), None)
    if missing is not None:
        errors.append(("required", f"must have required property '{missing}'"))
    if not value.keys() <= known:
        unexpected = [key for key in value if key not in known]
        errors += [("boolean", f"at /{key}: schema is false") for key in unexpected]
        named = next((key for key in unexpected if js_trim(key)), None)
        errors.append(("additionalProperties", "must not have additional properties" if named is None
                       else f"at root: unexpected property '{named}'"))
    for name, kind, shortest, longest in schema.properties:
        if name in value:
            errors += [(keyword, f"at /{name}: {words}") for keyword, words in _property_errors(value[name], kind, shortest, longest)]
    if not errors:
        return []
    errors = errors[:_MAX_SCHEMA_ERRORS]
    if any(keyword == "additionalProperties" for keyword, _ in errors):
        errors = [error for error in errors if error[0] != "boolean"]
    return [words for _, words in errors]


def _property_errors(value: Any, kind: str, shortest: Any, longest: int | None) -> list[tuple[str, str]]:
    if kind == "unknown":
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [("type", "must be boolean")]
    if kind == "record":
        return [] if isinstance(value, dict) else [("type", "must be object")]
    if kind == "literal":
        if value == shortest:
            return []
        return ([] if isinstance(value, str) else [("type", "must be string")]) + [("const", "must be equal to constant")]
    if not isinstance(value, str):
        return [("type", "must be string")]
    if len(value) < shortest:
        return [("minLength", f"must not have fewer than {shortest} characters")]
    if longest is not None and len(value) > longest and typebox_length(value) > longest:
        return [("maxLength", f"must not have more than {longest} characters")]
    return []


def typebox_length(value: str) -> int:
    """A string's length as the gateway's schemas (TypeBox's GraphemeCount) measure it: over UTF-16
    units, a character takes the combining marks, variation selectors and zero-width-joined
    characters after it, and a flag's two regional indicators count once."""
    units = memoryview(value.encode("utf-16-le", "surrogatepass")).cast("H")

    def code_point(at: int) -> int:
        high = units[at]
        if 0xD800 <= high <= 0xDBFF and at + 1 < len(units) and 0xDC00 <= units[at + 1] <= 0xDFFF:
            return 0x10000 + ((high - 0xD800) << 10) + (units[at + 1] - 0xDC00)
        return high

    def after_modifiers(at: int) -> int:
        while at < len(units) and _is_modifier(point := code_point(at)):
            at += 2 if point > 0xFFFF else 1
        return at

    count = at = 0
    while at < len(units):
        start = code_point(at)
        at = after_modifiers(at + (2 if start > 0xFFFF else 1))
        while at < len(units) - 1 and units[at] == 0x200D:  # zero-width joiner: the next one joins
            joined = code_point(at + 1)
            at = after_modifiers(at + 1 + (2 if joined > 0xFFFF else 1))
        if _is_regional_indicator(start) and at < len(units) and _is_regional_indicator(flag := code_point(at)):
            at += 2 if flag > 0xFFFF else 1
        count += 1
    return count


def _is_modifier(point: int) -> bool:
    """Combining marks and variation selectors, as TypeBox's ranges have them."""
    return (0x0300 <= point <= 0x036F or 0x1AB0 <= point <= 0x1AFF or 0x1DC0 <= point <= 0x1DFF
            or 0xFE20 <= point <= 0xFE2F or 0xFE00 <= point <= 0xFE0F)


def _is_regional_indicator(point: int) -> bool:
    return 0x1F1E6 <= point <= 0x1F1FF


class UnreadableFrame(FrameError):
    """JSON nested deeper than Python's parser follows: the gateway would read it, the sidecar
    cannot judge it, so the connection is closed (never dropped in silence, never relayed)."""


class FrameTooComplex(UnreadableFrame):
    """A frame whose arrays and objects hold more values than the sidecar builds to judge one."""


# A frame past SCANNED_FRAME_BYTES is counted before it is parsed: one of 25 MiB that was all
# `[{},{},...]` built 680 MB of objects and held the event loop 3 s (red team). The gateway's large
# frames carry strings (uploads, attachments), which hold no values of their own.
SCANNED_FRAME_BYTES = 1024 * 1024
MOST_FRAME_VALUES = 200_000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def frame_values(content: bytes) -> int:
    """At most how many values the JSON text's arrays and objects hold: their brackets and commas,
    counted outside strings only where counting them everywhere finds too many."""
    def count(text: bytes) -> int:
        return text.count(b",") + text.count(b"[") + text.count(b"{")
    anywhere = count(content)
    return anywhere if anywhere <= MOST_FRAME_VALUES else count(_JSON_STRING.sub(b"", content))


def parse_frame(content: bytes) -> Any:
    """The frame's text as the gateway reads it: decoded as Buffer.toString does (a byte that is
    not UTF-8 replaced: the relay has refused such a text frame, a binary one is read so), then
    JSON.parse (no NaN, Infinity or byte-order mark). A large frame holding more values than
    MOST_FRAME_VALUES is closed with 1009 unparsed: the gateway would read it, the sidecar will not
    build it."""
    if len(content) > SCANNED_FRAME_BYTES and frame_values(content) > MOST_FRAME_VALUES:
        raise FrameTooComplex(1009, "frame too complex")
    try:
        return strict_json(content.decode("utf-8", errors="replace"))
    except RecursionError:
        raise UnreadableFrame(1008, "frame nested too deeply") from None
    except ValueError:
        raise FrameError(1008, "malformed frame") from None


def rpc_on_plugin_socket(route: str, content: bytes) -> bool:
    """Whether a client frame on an opened plugin's WebSocket (relayed unread otherwise) reads as a
    request of the gateway's RPC. A plugin that is not loaded leaves its upgrade path to the RPC
    WebSocket, whose frames would then go unjudged (red team: a node paired itself through an
    opened browser relay). The relays' own protocols (CDP, a view-only screencast) send no such frame."""
    if not route.startswith(PLUGIN_ROUTE_PREFIX):
        return False
    try:
        frame = parse_frame(content)
    except UnreadableFrame:
        return True  # the gateway could read it; the sidecar cannot tell
    except FrameError:
        return False
    return isinstance(frame, dict) and frame.get("type") == "req"


class RpcSession:
    """One WebSocket connection: waits for `connect`, then judges every request frame.

    `caller` is the upgrade's own authentication, or None when the credential must come in the
    connect frame (token and password mode: browsers cannot set headers on an upgrade).
    `check_secret(presented)` checks such a credential, failure limiter included; `allowed` is
    the most this caller may hold; `limit(tool)` applies the request limits to tools.invoke.
    Refused frames spend the connection's budget (`policy.refused_frames`); past it the connection
    is closed (admin/CLI red team: one read-only connection had 20,000 refusals audited in 1.2 s).
    In shadow mode the frames it would refuse have a budget of their own, past which they go
    unaudited line by line (counted only); they never close the connection.
    """

    def __init__(self, policy: RpcPolicy, caller: AuthOutcome | None, allowed: ResolvedScopes,
                 check_secret: Callable[[Mapping[str, Any]], Awaitable[AuthOutcome]],
                 limit: Callable[[str | None, str], Awaitable[Reason | None]],
                 judge_signed: Callable[[str, bool], Awaitable[AuthOutcome]],
                 browser: BrowserOrigin | None = None) -> None:
        self.policy = policy
        self.caller = caller
        self.allowed = frozenset(allowed.scopes)
        self.check_secret = check_secret
        self.judge_signed = judge_signed
        self.limit = limit
        self.refusals = RefusalBudget(policy.refused_frames.burst, policy.refused_frames.per_second)
        # Shadow mode: the audit lines of frames enforcement would refuse. Its own budget, which
        # only stops the lines: spending the one above would close the connection (red team).
        self.shadow_lines = RefusalBudget(policy.refused_frames.burst, policy.refused_frames.per_second)
        self.browser = browser
        self.scopes: frozenset[str] | None = None  # granted at connect
        self.granted: tuple[str, ...] | None = None  # the same, in the order asked (for the audit lines)
        self.caps: frozenset[str] = frozenset()  # the connect frame's client capabilities (tools need some)
        self.node = False  # connected with role node (sidecar.websocket.allowNodes)
        self.answer_pending = False  # the connect went up; its answer has not come back yet
        self._connect_id: Any = None
        self._holds_upstream = False  # the caller proved a secret that is the upstream one

    @property
    def connected(self) -> bool:
        return self.scopes is not None

    async def client_frame(self, content: bytes) -> FrameVerdict:
        if not self.connected:
            return await self._first_frame(content)
        verdict = await self._judged_frame(content)
        if verdict.verdict in ("reply", "drop") and not self.refusals.spend():
            return replace(verdict, verdict="close", reason=Reason.REFUSED_FRAME_FLOOD, close_code=1008,
                           close_reason="too many refused requests")
        if verdict.shadowed and not self.shadow_lines.spend():
            # Shadow mode forwards what enforcement would refuse, so it does not close; past the
            # budget the frames are counted but not written one by one (red team: 200 lines in 0.6 s).
            return replace(verdict, audited=False)
        return verdict

    async def _judged_frame(self, content: bytes) -> FrameVerdict:
        try:
            frame = parse_frame(content)
        except FrameTooComplex as exc:
            return FrameVerdict("close", Reason.FRAME_TOO_COMPLEX, close_code=exc.code, close_reason="message too big")
        except UnreadableFrame as exc:
            return FrameVerdict("close", Reason.MALFORMED_FRAME, close_code=exc.code)
        except FrameError:  # not JSON: the gateway logs it and reads on
            return FrameVerdict("drop", Reason.MALFORMED_FRAME)
        errors = request_frame_errors(frame)
        if errors:  # answered by the gateway, the connection kept
            request_id = frame.get("id") if isinstance(frame, dict) else None
            return FrameVerdict("reply", Reason.MALFORMED_FRAME, error_frame(
                "invalid" if request_id is None else request_id, "INVALID_REQUEST", f"{INVALID_REQUEST_FRAME}: {'; '.join(errors)}"))
        verdict = await self._request(frame)
        if self.policy.shadow and verdict.verdict == "reply" and verdict.reason in SHADOWABLE_REASONS:
            return replace(verdict, verdict="forward", payload=None, shadowed=True)
        return verdict

    async def _first_frame(self, content: bytes) -> FrameVerdict:
        if len(content) > PREAUTH_MAX_BYTES:
            return FrameVerdict("close", Reason.PREAUTH_FRAME_TOO_LARGE, close_code=1009)
        try:
            return await self._connect(parse_frame(content))
        except FrameError as exc:
            return FrameVerdict("close", Reason.MALFORMED_FRAME, close_code=exc.code, close_reason=exc.close_reason)

    async def _connect(self, frame: Any) -> FrameVerdict:
        if request_frame_errors(frame):  # the gateway closes on it without an answer
            raise FrameError(1008, "expected a req frame", close_reason=INVALID_REQUEST_FRAME)
        request_id, params = frame.get("id"), frame.get("params")
        if frame["method"] != "connect":  # answered and closed as the gateway does
            return self._refuse_connect(request_id, Reason.MALFORMED_FRAME, "INVALID_REQUEST", NOT_CONNECT_FIRST,
                                        method=frame["method"], close_reason=NOT_CONNECT_FIRST)
        if not isinstance(params, dict):
            return self._refuse_connect(request_id, Reason.MALFORMED_FRAME, "INVALID_REQUEST", CONNECT_PARAMS_NOT_OBJECT,
                                        close_reason=CONNECT_PARAMS_NOT_OBJECT)
        param_errors = connect_param_errors(params)
        if param_errors:  # the gateway checks its schema before anything else
            message = f"invalid connect params: {'; '.join(param_errors)}"
            return self._refuse_connect(request_id, Reason.MALFORMED_FRAME, "INVALID_REQUEST", message, close_reason=message)
        raw_client = params.get("client")
        client = raw_client if isinstance(raw_client, dict) else {}
        role = params.get("role", "operator")
        if role not in ("operator", "node"):  # parseGatewayRole; the gateway reads the protocol first
            mismatch = protocol_mismatch(params, client.get("mode") == "probe")
            if mismatch is not None:
                return FrameVerdict("close", Reason.MALFORMED_FRAME, error_frame(request_id, "INVALID_REQUEST", PROTOCOL_MISMATCH,
                                                                                 mismatch),
                                    close_code=1002, method="connect", close_reason=PROTOCOL_MISMATCH)
            return self._refuse_connect(request_id, Reason.NODE_ROLE, "INVALID_REQUEST", INVALID_ROLE, close_reason=INVALID_ROLE)
        if (role == "node" or client.get("mode") == "node") and not self.policy.allow_nodes:
            return self._refuse_connect(request_id, Reason.NODE_ROLE, "INVALID_REQUEST", NODES_NOT_RELAYED, close_reason=NODES_NOT_RELAYED)
        auth = params.get("auth", {})  # an object when present (connect_param_errors)
        origin_refusal = self.browser.refuses(client) if self.browser is not None else None
        if origin_refusal is not None:
            # The gateway refuses a browser's origin before it reads any credential; answering the
            # credential first told any web page whether its guess was right (red team).
            return self._refuse_connect(request_id, Reason.ORIGIN_NOT_ALLOWED, "INVALID_REQUEST", ORIGIN_NOT_ALLOWED,
                                        {"code": "CONTROL_UI_ORIGIN_NOT_ALLOWED", "reason": origin_refusal},
                                        close_reason=ORIGIN_NOT_ALLOWED)
        asked = list(dict.fromkeys(params.get("scopes", [])))  # a list of strings (connect_param_errors)
        kept = [s for s in asked if scope_satisfied(s, self.allowed)]
        upstream = dict(self.policy.upstream_auth or {})
        device = params.get("device") is not None
        # A device signs its scopes and credential: a rewritten connect would not verify, and an
        # unrewritten one would pair a device above the ceiling (gateway-surface N2).
        signed = device_connect_auth(auth, upstream) if device and kept == asked else None
        if device and kept == asked and upstream and isinstance(credential := signature_token(auth), str):
            # What it signed is judged before the secret beside it (whose match would clear a
            # count): the upstream credential passes on, one of the sidecar's own secrets is
            # refused as a device, anything else is a wrong secret, answered and counted as one
            # (red team: a caller that never held the upstream secret could test guesses at it).
            # Where the callers' secret is the upstream one there is nothing else to guess at: a
            # wrong one is judged as any wrong secret, with the loopback rules (review: a stale
            # local node locked every local device connect out).
            judged = await (self.check_secret({"token": credential}) if self.policy.callers_hold_upstream
                            else self.judge_signed(credential, signed is not None))
            if not judged.ok:
                refusal, message = connect_auth_refusal(request_id, judged, client, device=True)
                return FrameVerdict("close", judged.reason, refusal, close_code=1008, method="connect", close_reason=message)
        if self.caller is None:
            outcome = await self.check_secret(auth)
            if not outcome.ok:
                refusal, message = connect_auth_refusal(request_id, outcome, client, device=device)
                return FrameVerdict("close", outcome.reason, refusal, close_code=1008, method="connect", close_reason=message)
            self.caller = outcome
        if role == "node" and ADMIN not in self.allowed:
            # A node's methods pass no scope check at the gateway: node.event runs agent turns in
            # any session, node.skills.update feeds skills to agents. Only an owner may be one.
            return self._refuse_connect(request_id, Reason.NODE_ROLE, "INVALID_REQUEST", NODE_NEEDS_OWNER, close_reason=NODE_NEEDS_OWNER)
        if device:
            if signed is None:
                return self._refuse_device(request_id)
            upstream = signed
        # A caller holding the upstream secret (the sidecar's own is the same, and it proved the
        # current one) learns nothing from what the gateway derives from it (the answer's
        # recoveryScope); anyone else must not get it. Decided by the deployment and the
        # caller's proof, never by what the frame carries, which would make it an oracle.
        self._holds_upstream = self.caller.method == self.policy.callers_hold_upstream \
            and self.caller.shared_secret and not self.caller.previous_secret
        # Identity in, token never out: the gateway gets the sidecar's credential, never the
        # caller's (device and bootstrap tokens, which the sidecar cannot check, are dropped).
        # A node's device signs its role, so it passes as it came (a node without one the
        # gateway refuses: only operators may skip the device).
        rewritten = {**params, "role": role, "scopes": kept}
        rewritten.pop("auth", None)
        if upstream:
            rewritten["auth"] = upstream
        self.scopes, self.granted, self.node = frozenset(kept), tuple(kept), role == "node"
        self._connect_id, self.answer_pending = request_id, True
        caps = params.get("caps")
        self.caps = frozenset(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else frozenset()
        return FrameVerdict("forward", Reason.CONNECT, compact_json({**frame, "params": rewritten}), method="connect",
                            detail="role node" if self.node else None)

    def server_message(self, content: bytes) -> bytes | None:
        """A gateway message while the connect's answer is awaited: that answer without the device
        token the gateway minted, or None to relay the message as it came. The sidecar honours no
        device token (it authenticates every connect and request itself), so the token would be a
        gateway credential outside its reach, and the Control UI would present it first on every
        HTTP read, each a 401 counted as a failed authentication. A caller that did not present the
        upstream secret also loses `recoveryScope`, a hash of it anyone could test guesses against."""
        try:
            message = json.loads(content)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("type") != "res" or message.get("id") != self._connect_id:
            return None
        self.answer_pending = False
        payload = message.get("payload")
        withheld = _MINTED_DEVICE_AUTH if self._holds_upstream else _MINTED_DEVICE_AUTH | _DERIVED_FROM_SECRET
        if not isinstance(payload, dict) or not isinstance(auth := payload.get("auth"), dict) or withheld.isdisjoint(auth):
            return None
        kept = {key: value for key, value in auth.items() if key not in withheld}
        return compact_json({**message, "payload": {**payload, "auth": kept}})

    def _refuse_device(self, request_id: Any) -> FrameVerdict:
        """A device connect the sidecar cannot pass: scopes above the ceiling, or a credential
        signed that is not the sidecar's upstream one."""
        return self._refuse_connect(
            request_id, Reason.DEVICE_ABOVE_CEILING, "INVALID_REQUEST",
            "device identities pass this proxy only with its own credential and within the caller's scopes",
            {"code": "DEVICE_SCOPES_ABOVE_CEILING", "allowedScopes": sorted(self.allowed)})

    def _refuse_connect(self, request_id: Any, reason: ReasonCode, code: str, message: str,
                        details: Mapping[str, Any] | None = None, *, method: str = "connect",
                        close_reason: str | None = None) -> FrameVerdict:
        """The first frame answered with an error `res`, then close 1008."""
        return FrameVerdict("close", reason, error_frame(request_id, code, message, details), close_code=1008, method=method,
                            close_reason=close_reason)

    async def _request(self, frame: dict[str, Any]) -> FrameVerdict:
        method, request_id, params = frame["method"], frame.get("id"), frame.get("params")
        assert self.scopes is not None
        refused = judge_node_method(self.policy, method, request_id) if self.node \
            else judge_method(self.policy, method, request_id, params, self.scopes)
        if method == "connect":  # never relayed; the gateway's answer after its scope check
            answer = refused.payload if refused is not None else error_frame(
                request_id, "INVALID_REQUEST", "connect is only valid as the first request")
            return FrameVerdict("reply", Reason.CONNECT_REPEATED, answer, method=method)
        if refused is not None:
            return refused
        if method == TOOLS_INVOKE:
            return await self._tools_invoke(frame, request_id, params)
        return FrameVerdict("forward", Reason.ALLOWED, method=method)

    async def _tools_invoke(self, frame: dict[str, Any], request_id: Any, params: Any) -> FrameVerdict:
        """The same tool policy and request limits as POST /tools/invoke."""
        assert self.scopes is not None
        judged, _ = judge_tool_frame(self.policy.tools, request_id, params, ADMIN in self.scopes, self.caps)
        if isinstance(judged, FrameVerdict):
            return judged
        name = judged
        limited = await self.limit(self.caller.user if self.caller else None, name)
        if limited is not None:
            return FrameVerdict("reply", limited, error_frame(request_id, "UNAVAILABLE", "Too many requests. Please try again later."),
                                method=TOOLS_INVOKE, tool=name)
        # One name for policy and execution: what was judged is what runs (the schema let no `tool` in).
        return FrameVerdict("forward", Reason.ALLOWED, compact_json({**frame, "params": {**params, "name": name}}),
                            method=TOOLS_INVOKE, tool=name)


_SIGNED_CREDENTIALS = ("token", "deviceToken", "bootstrapToken")
# What hello-ok's `auth` carries of a device token the gateway minted or rotated at connect
# (the recovery migration it offers goes with the token).
_MINTED_DEVICE_AUTH = frozenset({"deviceToken", "deviceTokens", "issuedAtMs", "recoveryMigrationAllowed"})
# hello-ok's hash of the shared secret (a storage scope for the Control UI's drafts).
_DERIVED_FROM_SECRET = frozenset({"recoveryScope"})


def signature_token(auth: Mapping[str, Any]) -> Any:
    """The credential a device signs, as the gateway reads it (resolveSignatureToken: the first of
    these that is neither null nor absent)."""
    return next((auth[key] for key in _SIGNED_CREDENTIALS if auth.get(key) is not None), None)


def device_connect_auth(auth: Mapping[str, Any], upstream: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a connect with a device carries upstream: the sidecar's own credential, and in password
    mode the caller's copy of that password as the signed `token` (the Control UI sends its secret
    as both `token` and `password`, and signs the token). Fields no signature covers (a `password`
    beside the token) are dropped like any caller's. None when the device signed anything else: its
    signature would not verify over the sidecar's credential, and the sidecar cannot sign for it."""
    signed = signature_token(auth)
    forwarded = dict(upstream)
    if "token" not in forwarded and _same_secret(signed, forwarded.get("password")):
        forwarded["token"] = signed
    carried = signature_token(forwarded)
    matches = carried is None if signed is None else _same_secret(carried, signed)
    return forwarded if matches else None


def _same_secret(presented: Any, expected: Any) -> bool:
    """Two credentials compared in constant time; nothing equals an absent one."""
    return isinstance(presented, str) and isinstance(expected, str) and safe_equal(presented, expected)


def client_message_limit(session: RpcSession | None, rpc_upgrade: bool) -> int:
    """The most a client message may grow to, as the gateway's own limits: 64 KiB until the RPC
    connect frame is accepted (or while its session is being built: nothing is trusted yet),
    25 MiB after; other upgrades (opened routes) the gateway's largest."""
    if session is not None:
        return RPC_MAX_MESSAGE_BYTES if session.connected else PREAUTH_MAX_BYTES
    return PREAUTH_MAX_BYTES if rpc_upgrade else GATEWAY_MAX_MESSAGE_BYTES
