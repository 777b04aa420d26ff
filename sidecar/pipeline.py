"""The order of refusal stages, in one place.

`on_head` decides everything a request head can decide (before a body byte is read):
head size → method syntax → malformed head → Expect → Host → target and route → denied routes →
attribution → Funnel → method → rate-limit lock → auth → scopes → declared size.
`on_body` applies the body rules and tool policy. Forwarding is the one outcome every stage
must grant; every other path ends in a `Refuse` carrying the gateway's own answer.
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Protocol

from . import envelopes
from .attribution import Attribution, attribute
from .auth import AuthOutcome, SharedSecretAuth, build_authenticator
from .body import MAX_BODY_BYTES, BodyError, read_invoke_body
from .canonical import CanonicalTarget, InvalidTarget, canonicalize_target
from .config import Config
from .envelopes import Envelope
from .headers import HeaderPlan, connection_tokens, head_problem, rebuild_headers
from .ipaddrs import is_loopback, parse_network
from .routes import NODE_CAPABILITY_ROUTE, RouteMatch, RouteTable
from .rpc import RpcPolicy, RpcSession
from .shadow import SHADOWABLE_REASONS
from .scopes import ResolvedScopes, ceilings_from_config, parse_scope_header, resolve_scopes, shared_secret_scopes
from .toolchain import ToolChain, ToolRequest
from .view import RequestView

TOOLS_ROUTE = "tools-invoke"
CHANNEL_HEADER = "x-openclaw-message-channel"
ACCOUNT_HEADER = "x-openclaw-account-id"
_TOOL_CONTEXT = frozenset({CHANNEL_HEADER, ACCOUNT_HEADER})  # the context headers tool policy reads
MAX_HEAD_BYTES = 16 * 1024  # Node's default --max-http-header-size, which the gateway runs with
# Auth outcomes of requests the sidecar did not authenticate: they get no scopes and never
# carry the sidecar's upstream credential.
CONNECT_FRAME_AUTH = "websocket-connect"  # checked later, in the RPC connect frame
UNAUTHENTICATED_METHODS = frozenset({"unauthenticated-route", "route-credential", CONNECT_FRAME_AUTH})
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_PLAIN_HOST = re.compile(r"(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


class FailureLimiter(Protocol):
    """What the pipeline needs of the auth-failure limiter (sidecar.ratelimit)."""

    async def check(self, ip: str | None) -> "LimitVerdictLike": ...
    async def record_failure(self, ip: str | None) -> float: ...
    async def reset(self, ip: str | None) -> None: ...


class LimitVerdictLike(Protocol):
    """Read-only, so the limiters' frozen verdicts satisfy it."""

    @property
    def allowed(self) -> bool: ...
    @property
    def retry_after_s(self) -> int: ...
    @property
    def unavailable(self) -> bool: ...


class RequestLimiter(Protocol):
    async def hit(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> "LimitVerdictLike": ...


@dataclass(frozen=True)
class Refuse:
    envelope: Envelope
    reason: str
    delay_s: float = 0.0  # upstream delays loopback auth failures before answering
    route: str | None = None  # the route-table name, once the request's route is known
    # For the audit line, as far as the request got: who the client is, who it proved to be,
    # and which tool it asked for.
    client_ip: str | None = None
    auth: AuthOutcome | None = None
    tool: str | None = None
    detail: str | None = None  # free text for the audit line: which layer refused, by which rule


@dataclass(frozen=True)
class RouteAccess:
    """The route's verdict before authentication: refused (why), or how the caller gets in."""

    refusal: str | None = None
    public: bool = False  # plain reads need no credential
    own_credential: bool = False  # an opened route that checks its own credential
    passthrough: frozenset[str] = frozenset()  # client headers carrying that credential


@dataclass(frozen=True)
class Admitted:
    """A head that passed every head stage; carries what the body stage and audit need."""

    route: str  # the route-table name of the handler the gateway will run
    target: str
    headers: tuple[tuple[str, str], ...]
    client_ip: str | None
    auth: AuthOutcome
    scopes: ResolvedScopes | None
    websocket: bool = False
    rpc: bool = False  # a gateway RPC WebSocket whose frames the sidecar judges
    shadowed: tuple[str, ...] = ()  # refusals shadow mode let through (sidecar/shadow.py)


@dataclass(frozen=True)
class Forward:
    admitted: Admitted
    body: bytes | None  # None: forward the received body unchanged
    tool: str | None = None
    reason: str = "allowed"
    shadowed: tuple[str, ...] = ()  # what enforcement would have refused it for
    detail: str | None = None  # shadowed: the refusal's own explanation


@dataclass
class Pipeline:
    config: Config
    failure_limiter: FailureLimiter
    request_limiter: RequestLimiter | None = None

    def __post_init__(self) -> None:
        gateway = self.config.rules.gateway
        sidecar = self.config.sidecar
        tp = gateway.auth.trusted_proxy
        # Header names from config are lower-cased by its validators.
        user_header = sidecar.upstream_auth.user_header or tp.user_header or "x-forwarded-user"
        self.trusted = tuple(parse_network(e) for e in gateway.trusted_proxies)
        self.authenticator = build_authenticator(self.config, self.trusted)
        self.context = sidecar.context_headers
        self.context_allow = frozenset(self.context.allow)
        self.tools = ToolChain(self.config.rules)
        self.rpc_policy = RpcPolicy.from_config(self.config, self.tools)
        self.routes = RouteTable.for_deployment(
            hooks_path=self.config.rules.hooks.path, base_path=gateway.control_ui.base_path,
            control_ui_enabled=gateway.control_ui.enabled,
        )
        self.ceilings = ceilings_from_config(sidecar.scope_ceilings.default, sidecar.scope_ceilings.identities)
        self.upstream_user_header = user_header
        # Identity headers, client-side and upstream-side: protected like the built-in ones, and
        # never forwarded from the client.
        self.identity_headers = frozenset(filter(None, (tp.user_header, user_header)))

    # ---- head ---------------------------------------------------------------------------

    async def on_head(self, view: RequestView) -> Refuse | Admitted:
        if view.head_size() > MAX_HEAD_BYTES:
            # Node refuses such heads before the gateway sees them; checked first, before any
            # work that grows with the input.
            return Refuse(envelopes.head_too_large(), "request_head_too_large")
        if not _METHOD.fullmatch(view.method):
            # Node's parser refuses lower-case and unknown-shaped methods outright.
            return Refuse(envelopes.bad_request("invalid request method"), "invalid_method")
        problem = head_problem(view, self.identity_headers)
        if problem is not None:
            return Refuse(envelopes.bad_request(problem), "malformed_head")
        expect = view.first("expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            return Refuse(envelopes.expectation_failed(), "expectation_failed")
        if not view.has("host"):
            # RFC 9112 §3.2, and the gateway answers 400 without one: forwarding it would leave
            # the gateway to guess the authority it resolves the target against.
            return Refuse(envelopes.bad_request("Host header is required"), "invalid_host")
        host_header = (view.first("host") or "").strip().lower()
        if host_header and not _PLAIN_HOST.fullmatch(host_header):
            # The gateway builds `new URL(target, "http://" + Host)`: a Host with a path would
            # move the route it computes, so only host[:port] is accepted.
            return Refuse(envelopes.bad_request("Host must be host[:port]"), "invalid_host")
        if not view.target.startswith("/") and not view.target.lower().startswith(("http://", "https://")):
            return Refuse(envelopes.invalid_request_url(), "invalid_target")
        try:
            target = canonicalize_target(view.target, host_header or "localhost")
        except InvalidTarget:
            return Refuse(envelopes.invalid_request_url(), "invalid_target")
        if target.host is not None and target.host != _hostname(host_header):
            return Refuse(envelopes.bad_request("request target names a foreign host"), "foreign_host")
        if target.path.startswith("//"):
            # `/a/..//x/y` resolves to `//x/y`, which the gateway would re-read as host `x` and
            # path `/y`: the path we judged would not be the path it routes.
            return Refuse(envelopes.invalid_request_url(), "invalid_target")
        upgrade = (view.first("upgrade") or "").strip().lower()
        if upgrade and upgrade != "websocket":
            return Refuse(envelopes.websocket_upgrade_not_supported(), "unsupported_upgrade")
        websocket = upgrade == "websocket"
        match = self.routes.match(view.method, target.path, target.query, websocket=websocket)
        attribution = attribute(view, self.trusted, self.config.rules.gateway.allow_real_ip_fallback)
        decision = await self._on_route(view, target, match, websocket, attribution)
        if isinstance(decision, Refuse):
            # Audited and counted by the effective route, with the client as attributed.
            return replace(decision, route=match.name, client_ip=attribution.client_ip)
        return decision

    def _enforced(self, refusal: Refuse, shadowed: list[str]) -> Refuse | None:
        """The refusal, or (shadow mode, policy layers only) None with the reason noted."""
        if self.config.sidecar.enforce or refusal.reason not in SHADOWABLE_REASONS:
            return refusal
        shadowed.append(refusal.reason)
        return None

    async def _on_route(self, view: RequestView, target: CanonicalTarget, match: RouteMatch, websocket: bool,
                        attribution: Attribution) -> Refuse | Admitted:
        """The stages after the route is known: route policy, attribution, auth, scopes, size."""
        route = match.name
        shadowed: list[str] = []
        if route == TOOLS_ROUTE and (match.capability or not target.raw_is_canonical):
            # Non-canonical spellings of the tools route, the capability prefix included, are
            # refused, never rewritten (E3, E7).
            return Refuse(envelopes.invalid_request_url(), "non_canonical_target")
        if match.malformed_capability:
            return Refuse(envelopes.unauthorized(), "malformed_capability_path")
        if any(p.startswith(prefix) for prefix in self.config.sidecar.routes.deny for p in {target.path, match.path}):
            if refusal := self._enforced(Refuse(envelopes.route_not_found(), "route_denied"), shadowed):
                return refusal
        access = self.route_access(match)
        if access.refusal is not None:
            if refusal := self._enforced(Refuse(envelopes.route_not_found(), access.refusal), shadowed):
                return refusal
            access = RouteAccess()  # shadowed: in for callers the sidecar authenticates
        rpc = match.entry is not None and match.entry.power == "rpc"
        if rpc:
            refusal = self._websocket_upgrade_problem(view)
            if refusal is not None:
                return refusal
        enforce_rpc = rpc and self.config.sidecar.websocket.mode == "enforce"

        if not attribution.attributable:
            return Refuse(envelopes.proxy_attribution_required(), "proxy_attribution_required")
        if view.has("tailscale-funnel-request"):
            return Refuse(envelopes.unauthorized(), "funnel_request")
        if route == TOOLS_ROUTE and view.method != "POST":
            return Refuse(envelopes.method_not_allowed(), "method_not_allowed")

        if access.own_credential:
            outcome = AuthOutcome(True, "route-credential")
        elif enforce_rpc and isinstance(self.authenticator, SharedSecretAuth) and not view.has("authorization"):
            # Browsers cannot set headers on an upgrade: the secret comes in the connect frame,
            # which the sidecar checks before the gateway sees it (RpcSession).
            outcome = AuthOutcome(True, CONNECT_FRAME_AUTH, shared_secret=True)
        elif access.public and _plain_read(view):
            outcome = AuthOutcome(True, "unauthenticated-route")
        else:
            refusal_or_outcome = await self._authenticate(view, attribution)
            if isinstance(refusal_or_outcome, Refuse):
                return refusal_or_outcome
            outcome = refusal_or_outcome

        scopes = self._scopes(view, outcome)
        if route == TOOLS_ROUTE:
            if scopes is None or not scopes.allows_invoke:
                if refusal := self._enforced(Refuse(envelopes.missing_scope(), "missing_scope", auth=outcome), shadowed):
                    return refusal
            declared = view.declared_length()
            if declared is not None and declared > MAX_BODY_BYTES:
                return Refuse(envelopes.payload_too_large(), "payload_too_large")

        # On an RPC upgrade the gateway authenticates by the sidecar's credential in the connect
        # frame, and the sidecar is the client it should see: with a forwarded client (or a
        # forwarded identity, which demands one) it clears every token-only connection's scopes
        # (gateway-surface N3), while the sidecar has already authenticated the caller and caps
        # every frame itself. Without an upstream credential the gateway needs both to know who.
        as_direct = enforce_rpc and self.config.secrets.upstream_credential is not None
        plan = self._header_plan(attribution, outcome, scopes, websocket, access.passthrough, forward_client=not as_direct)
        headers = rebuild_headers(view, plan) + ((("X-Request-Id", view.request_id),) if view.request_id else ())
        return Admitted(route, target.origin_form, headers, attribution.client_ip, outcome, scopes, websocket, enforce_rpc,
                        tuple(shadowed))

    def _websocket_upgrade_problem(self, view: RequestView) -> Refuse | None:
        """Only RFC 6455 upgrades (GET, version 13, a real key, no body) reach the RPC: anything
        else could become a raw tunnel past frame inspection."""
        mode = self.config.sidecar.websocket.mode
        if mode == "off":
            return Refuse(envelopes.route_not_found(), "websocket_off")
        key = (view.first("sec-websocket-key") or "").strip()
        if (view.method != "GET" or (view.first("sec-websocket-version") or "").strip() != "13" or not _websocket_key(key)
                or view.declared_length() != 0 or "upgrade" not in connection_tokens(view)):
            return Refuse(envelopes.bad_request("not an RFC 6455 WebSocket upgrade"), "invalid_websocket_upgrade")
        return None

    def rpc_session(self, admitted: Admitted) -> RpcSession:
        """The frame judge for one admitted RPC connection."""
        caller = None if admitted.auth.method == CONNECT_FRAME_AUTH else admitted.auth

        async def check_secret(presented: str | None) -> AuthOutcome:
            authenticator = self.authenticator
            assert isinstance(authenticator, SharedSecretAuth)
            result = await self._limited_check(admitted.client_ip, True, lambda: authenticator.check(presented))
            if not isinstance(result, Refuse):
                return result
            if result.delay_s > 0:
                await asyncio.sleep(result.delay_s)  # the same loopback delay as a refused HTTP request
            return AuthOutcome(False, authenticator.method, result.reason)

        async def limit(user: str | None, tool: str) -> str | None:
            if self.request_limiter is None:
                return None
            verdict = await self.request_limiter.hit(user, tool, client_ip=admitted.client_ip)
            if verdict.unavailable:
                return "limiter_unavailable"
            return None if verdict.allowed else "request_rate_limited"

        return RpcSession(self.rpc_policy, caller, admitted.scopes or ResolvedScopes(()), check_secret, limit)

    def route_access(self, match: RouteMatch) -> "RouteAccess":
        """What the route table and `sidecar.routes` grant the route the gateway will run."""
        entry = match.entry
        if entry is None:
            return RouteAccess(refusal="unknown_route")
        allowed = self.config.sidecar.routes.allow
        opened = entry.name in allowed
        if match.capability and NODE_CAPABILITY_ROUTE not in allowed:
            return RouteAccess(refusal="node_capability")
        if not match.method_served:
            return RouteAccess(refusal="method_not_served")
        own = opened and entry.credential == "own"
        if match.query_credential is not None and not own:
            return RouteAccess(refusal="query_credential")
        policy: str = entry.default_policy
        if entry.name == "control-ui":
            policy = {"public": "public", "authenticated": "authenticated", "off": "refused"}[self.config.sidecar.routes.control_ui]
        if policy == "refused" and not opened:
            return RouteAccess(refusal="route_refused")
        if own:
            return RouteAccess(own_credential=True, passthrough=frozenset(entry.pass_headers))
        if policy == "refused":  # opened by name: in as the gateway lets callers in there
            policy = "public" if entry.credential == "none" else "authenticated"
        return RouteAccess(public=policy == "public")

    async def _authenticate(self, view: RequestView, attribution: Attribution) -> Refuse | AuthOutcome:
        return await self._limited_check(
            attribution.client_ip, self.authenticator.rate_limited(attribution),
            lambda: self.authenticator.authenticate(view, attribution),
        )

    async def _limited_check(self, key: str | None, limited: bool, check: Callable[[], AuthOutcome]) -> Refuse | AuthOutcome:
        """A credential check behind the auth-failure limiter: a locked client is refused before
        the comparison, a mismatch is counted, a match clears the client's failures."""
        if limited:
            verdict = await self.failure_limiter.check(key)
            if verdict.unavailable:
                return Refuse(envelopes.limiter_unavailable(), "limiter_unavailable")
            if not verdict.allowed:
                return Refuse(envelopes.rate_limited(verdict.retry_after_s), "rate_limited")
        outcome = check()
        if outcome.ok:
            if outcome.shared_secret:
                await self.failure_limiter.reset(key)
            return outcome
        delay = await self.failure_limiter.record_failure(key) if outcome.counts_as_failure else 0.0
        return Refuse(envelopes.unauthorized(), outcome.reason, delay, auth=outcome)

    def _scopes(self, view: RequestView, outcome: AuthOutcome) -> ResolvedScopes | None:
        if outcome.method in UNAUTHENTICATED_METHODS - {CONNECT_FRAME_AUTH}:
            return None
        ceiling = self.ceilings.ceiling_for(outcome.user)
        if outcome.shared_secret:
            return shared_secret_scopes(ceiling)
        return resolve_scopes(parse_scope_header(view.first("x-openclaw-scopes")), ceiling)

    def _header_plan(
        self, attribution: Attribution, outcome: AuthOutcome, scopes: ResolvedScopes | None, websocket: bool,
        passthrough: frozenset[str] = frozenset(), *, forward_client: bool = True,
    ) -> HeaderPlan:
        owned: list[tuple[str, str]] = []
        credential = self.config.secrets.upstream_credential
        # Never lend our credential to a request nobody authenticated, nor to a route whose own
        # credential the client brings (one meaning per header).
        if credential is not None and outcome.method not in UNAUTHENTICATED_METHODS:
            owned.append(("Authorization", f"Bearer {credential}"))
        # Always one explicit value: an absent header means the full default set upstream (F1).
        owned.append(("x-openclaw-scopes", scopes.header_value if scopes is not None else ""))
        if outcome.user_header_value is not None and forward_client:
            # As the proxy spelled it (e.g. Tailscale's RFC 2047 form): the gateway behind us
            # then sees exactly what it would see behind the proxy itself.
            owned.append((self.upstream_user_header, outcome.user_header_value))
        # A loopback client gets no X-Forwarded-For: a gateway trusting 127.0.0.1 skips loopback
        # hops and would find no client at all (reference (f) 8).
        if forward_client and attribution.client_ip is not None and not is_loopback(attribution.client_ip):
            owned.append(("X-Forwarded-For", attribution.client_ip))
        return HeaderPlan(
            owned=tuple(owned), context_allow=self.context_allow, pinned=self.context.pinned_for(outcome.user),
            drop=self.identity_headers, websocket=websocket, passthrough=passthrough,
        )

    # ---- body ---------------------------------------------------------------------------

    async def on_body(self, admitted: Admitted, body: bytes, has_trailers: bool = False) -> Refuse | Forward:
        # The adapter already closes HTTP/1 connections that send trailers; this is the rule
        # for any engine that delivers them.
        if has_trailers:
            return Refuse(envelopes.bad_request("request trailers are not accepted"), "trailers")
        if admitted.route != TOOLS_ROUTE:
            passthrough = admitted.websocket and admitted.route == "rpc-websocket" and not admitted.rpc
            return Forward(admitted, None, reason="websocket_passthrough" if passthrough else "allowed",
                           shadowed=admitted.shadowed)
        if len(body) > MAX_BODY_BYTES:
            return Refuse(envelopes.payload_too_large(), "payload_too_large")
        try:
            invoke = read_invoke_body(body)
        except BodyError as exc:
            if exc.kind == "invalid_json":
                return Refuse(envelopes.invalid_json(exc.message), "invalid_json")
            return Refuse(envelopes.missing_tool_name(), "missing_tool_name")
        name = invoke.tool.name
        shadowed = list(admitted.shadowed)
        owner = admitted.scopes is not None and admitted.scopes.owner
        # The context headers as the gateway will receive them (allow-listed or pinned).
        context = {k.lower(): v for k, v in admitted.headers if k.lower() in _TOOL_CONTEXT}
        decision = self.tools.decide(ToolRequest(invoke, owner, context.get(CHANNEL_HEADER), context.get(ACCOUNT_HEADER)))
        detail = None
        if decision.refused:
            refused = Refuse(decision.envelope(), decision.reason, tool=name, detail=decision.detail)
            if refusal := self._enforced(refused, shadowed):
                return refusal
            detail = decision.detail
        if self.request_limiter is not None:
            verdict = await self.request_limiter.hit(admitted.auth.user, name, client_ip=admitted.client_ip)
            if verdict.unavailable:
                return Refuse(envelopes.limiter_unavailable(), "limiter_unavailable", tool=name)
            if not verdict.allowed:
                limited = Refuse(envelopes.request_rate_limited(verdict.retry_after_s), "request_rate_limited", tool=name)
                if refusal := self._enforced(limited, shadowed):
                    return refusal
        changed = None if invoke.forward_bytes is body else invoke.forward_bytes
        return Forward(admitted, changed, name, shadowed=tuple(shadowed), detail=detail)

    # ---- response -----------------------------------------------------------------------

    def review_response(self, admitted: Admitted, status: int) -> Envelope | None:
        """An upstream 500 on the tools route never leaks its body: upstream's sanitised one."""
        if admitted.route == TOOLS_ROUTE and status == 500:
            return envelopes.tool_execution_failed()
        return None


def _websocket_key(key: str) -> bool:
    """RFC 6455: the key is 16 random bytes, base64-encoded."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _plain_read(view: RequestView) -> bool:
    """GET/HEAD with no body and no upgrade: what a public route serves without credentials."""
    return view.method in ("GET", "HEAD") and not view.has("upgrade") and view.declared_length() == 0


def _hostname(host_header: str) -> str:
    """Host header as CanonicalTarget.host spells it: WHATWG drops a scheme's default port, and
    the scheme a client named is not known here, so both defaults are dropped."""
    for default in (":80", ":443"):
        if host_header.endswith(default):
            return host_header.removesuffix(default)
    return host_header

