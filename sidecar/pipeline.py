"""The order of refusal stages, in one place.

`on_head` decides everything a request head can decide (before a body byte is read):
method syntax → malformed head → Expect → Host → target and route → denied routes →
attribution → Funnel → method → rate-limit lock → auth → scopes → declared size.
`on_body` applies the body rules and tool policy. Forwarding is the one outcome every stage
must grant; every other path ends in a `Refuse` carrying the gateway's own answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from . import envelopes
from .attribution import Attribution, attribute
from .auth import AuthOutcome, build_authenticator
from .body import MAX_BODY_BYTES, BodyError, read_invoke_body
from .canonical import InvalidTarget, canonicalize_target
from .config import Config
from .envelopes import Envelope
from .headers import HeaderPlan, head_problem, rebuild_headers
from .ipaddrs import is_loopback, parse_network
from .scopes import ResolvedScopes, ceilings_from_config, parse_scope_header, resolve_scopes, shared_secret_scopes
from .toolpolicy import ToolGate
from .view import RequestView

TOOLS_INVOKE = "/tools/invoke"
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_PLAIN_HOST = re.compile(r"(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
Route = Literal["tools-invoke", "other"]


class FailureLimiter(Protocol):
    """What the pipeline needs of the auth-failure limiter (sidecar.ratelimit)."""

    async def check(self, ip: str | None) -> "LimitVerdictLike": ...
    async def record_failure(self, ip: str | None) -> float: ...
    async def reset(self, ip: str | None) -> None: ...


class LimitVerdictLike(Protocol):
    allowed: bool
    retry_after_s: int
    unavailable: bool


class RequestLimiter(Protocol):
    async def hit(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> "LimitVerdictLike": ...


@dataclass(frozen=True)
class Refuse:
    envelope: Envelope
    reason: str
    delay_s: float = 0.0  # upstream delays loopback auth failures before answering


@dataclass(frozen=True)
class Admitted:
    """A head that passed every head stage; carries what the body stage and audit need."""

    route: Route
    target: str
    headers: tuple[tuple[str, str], ...]
    client_ip: str | None
    auth: AuthOutcome
    scopes: ResolvedScopes | None
    websocket: bool = False


@dataclass(frozen=True)
class Forward:
    admitted: Admitted
    body: bytes | None  # None: forward the received body unchanged
    tool: str | None = None
    reason: str = "allowed"


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
        context = sidecar.context_headers
        self.context_allow = frozenset(context.allow)
        self.pins = context.pinned
        self.gate = ToolGate.from_config(gateway.tools.allow, gateway.tools.deny)
        self.ceilings = ceilings_from_config(sidecar.scope_ceilings.default, sidecar.scope_ceilings.identities)
        self.upstream_user_header = user_header
        # Identity headers, client-side and upstream-side: protected like the built-in ones, and
        # never forwarded from the client.
        self.identity_headers = frozenset(filter(None, (tp.user_header, user_header)))

    # ---- head ---------------------------------------------------------------------------

    async def on_head(self, view: RequestView) -> Refuse | Admitted:
        if not _METHOD.fullmatch(view.method):
            # Node's parser refuses lower-case and unknown-shaped methods outright.
            return Refuse(envelopes.bad_request("invalid request method"), "invalid_method")
        problem = head_problem(view, self.identity_headers)
        if problem is not None:
            return Refuse(envelopes.bad_request(problem), "malformed_head")
        expect = view.first("expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            return Refuse(envelopes.expectation_failed(), "expectation_failed")
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
        route: Route = "tools-invoke" if target.path == TOOLS_INVOKE else "other"
        if route == "tools-invoke" and not target.raw_is_canonical:
            # Non-canonical spellings of the tools route are refused, never rewritten (E3, E7).
            return Refuse(envelopes.invalid_request_url(), "non_canonical_target")
        if any(target.path.startswith(prefix) for prefix in self.config.sidecar.routes.deny):
            return Refuse(envelopes.route_not_found(), "route_denied")

        attribution = attribute(view, self.trusted, self.config.rules.gateway.allow_real_ip_fallback)
        if not attribution.attributable:
            return Refuse(envelopes.proxy_attribution_required(), "proxy_attribution_required")
        if view.has("tailscale-funnel-request"):
            return Refuse(envelopes.unauthorized(), "funnel_request")
        if route == "tools-invoke" and view.method != "POST":
            return Refuse(envelopes.method_not_allowed(), "method_not_allowed")

        if self._unauthenticated(view, route, target.path):
            outcome = AuthOutcome(True, "unauthenticated-route")
        else:
            refusal_or_outcome = await self._authenticate(view, attribution)
            if isinstance(refusal_or_outcome, Refuse):
                return refusal_or_outcome
            outcome = refusal_or_outcome

        scopes = self._scopes(view, outcome)
        if route == "tools-invoke":
            if scopes is None or not scopes.allows_invoke:
                return Refuse(envelopes.missing_scope(), "missing_scope")
            declared = view.declared_length()
            if declared is not None and declared > MAX_BODY_BYTES:
                return Refuse(envelopes.payload_too_large(), "payload_too_large")

        websocket = (view.first("upgrade") or "").strip().lower() == "websocket"
        headers = rebuild_headers(view, self._header_plan(attribution, outcome, scopes, websocket))
        return Admitted(route, target.origin_form, headers, attribution.client_ip, outcome, scopes, websocket)

    def _unauthenticated(self, view: RequestView, route: Route, path: str) -> bool:
        """Health-style routes only: exact path, GET/HEAD, no body, no upgrade."""
        return (
            route == "other" and path in self.config.sidecar.routes.unauthenticated
            and view.method in ("GET", "HEAD") and not view.has("upgrade") and view.declared_length() == 0
        )

    async def _authenticate(self, view: RequestView, attribution: Attribution) -> Refuse | AuthOutcome:
        key = attribution.client_ip
        if self.authenticator.rate_limited(attribution):
            verdict = await self.failure_limiter.check(key)
            if verdict.unavailable:
                return Refuse(envelopes.limiter_unavailable(), "limiter_unavailable")
            if not verdict.allowed:
                return Refuse(envelopes.rate_limited(verdict.retry_after_s), "rate_limited")
        outcome = self.authenticator.authenticate(view, attribution)
        if outcome.ok:
            if outcome.shared_secret:
                await self.failure_limiter.reset(key)
            return outcome
        delay = await self.failure_limiter.record_failure(key) if outcome.counts_as_failure else 0.0
        return Refuse(envelopes.unauthorized(), outcome.reason, delay)

    def _scopes(self, view: RequestView, outcome: AuthOutcome) -> ResolvedScopes | None:
        if outcome.method == "unauthenticated-route":
            return None
        ceiling = self.ceilings.ceiling_for(outcome.user)
        if outcome.shared_secret:
            return shared_secret_scopes(ceiling)
        return resolve_scopes(parse_scope_header(view.first("x-openclaw-scopes")), ceiling)

    def _header_plan(
        self, attribution: Attribution, outcome: AuthOutcome, scopes: ResolvedScopes | None, websocket: bool,
    ) -> HeaderPlan:
        owned: list[tuple[str, str]] = []
        credential = self.config.secrets.upstream_credential
        # Never lend our credential to a request nobody authenticated.
        if credential is not None and outcome.method != "unauthenticated-route":
            owned.append(("Authorization", f"Bearer {credential}"))
        # Always one explicit value: an absent header means the full default set upstream (F1).
        owned.append(("x-openclaw-scopes", scopes.header_value if scopes is not None else ""))
        if outcome.user_header_value is not None:
            # As the proxy spelled it (e.g. Tailscale's RFC 2047 form): the gateway behind us
            # then sees exactly what it would see behind the proxy itself.
            owned.append((self.upstream_user_header, outcome.user_header_value))
        # A loopback client gets no X-Forwarded-For: a gateway trusting 127.0.0.1 skips loopback
        # hops and would find no client at all (reference (f) 8).
        if attribution.client_ip is not None and not is_loopback(attribution.client_ip):
            owned.append(("X-Forwarded-For", attribution.client_ip))
        # "*" pins apply to everyone; an identity's own pins add to them and win per header.
        pinned = {**self.pins.get("*", {}), **self.pins.get(outcome.user or "", {})}
        return HeaderPlan(
            owned=tuple(owned), context_allow=self.context_allow, pinned=pinned,
            drop=self.identity_headers, websocket=websocket,
        )

    # ---- body ---------------------------------------------------------------------------

    async def on_body(self, admitted: Admitted, body: bytes, has_trailers: bool = False) -> Refuse | Forward:
        # The adapter already closes HTTP/1 connections that send trailers; this is the rule
        # for any engine that delivers them.
        if has_trailers:
            return Refuse(envelopes.bad_request("request trailers are not accepted"), "trailers")
        if admitted.route != "tools-invoke":
            return Forward(admitted, None)
        if len(body) > MAX_BODY_BYTES:
            return Refuse(envelopes.payload_too_large(), "payload_too_large")
        try:
            invoke = read_invoke_body(body)
        except BodyError as exc:
            if exc.kind == "invalid_json":
                return Refuse(envelopes.invalid_json(exc.message), "invalid_json")
            return Refuse(envelopes.missing_tool_name(), "missing_tool_name")
        owner = admitted.scopes is not None and admitted.scopes.owner
        if self.gate.blocks(invoke.tool, owner=owner):
            return Refuse(envelopes.tool_not_available(invoke.tool.name), "tool_denied")
        if self.request_limiter is not None:
            verdict = await self.request_limiter.hit(admitted.auth.user, invoke.tool.name, client_ip=admitted.client_ip)
            if verdict.unavailable:
                return Refuse(envelopes.limiter_unavailable(), "limiter_unavailable")
            if not verdict.allowed:
                return Refuse(envelopes.request_rate_limited(verdict.retry_after_s), "request_rate_limited")
        changed = None if invoke.forward_bytes is body else invoke.forward_bytes
        return Forward(admitted, changed, invoke.tool.name)

    # ---- response -----------------------------------------------------------------------

    def review_response(self, admitted: Admitted, status: int) -> Envelope | None:
        """An upstream 500 on the tools route never leaks its body: upstream's sanitised one."""
        if admitted.route == "tools-invoke" and status == 500:
            return envelopes.tool_execution_failed()
        return None


def _hostname(host_header: str) -> str:
    """Host header as CanonicalTarget.host spells it: WHATWG drops a scheme's default port, and
    the scheme a client named is not known here, so both defaults are dropped."""
    for default in (":80", ":443"):
        if host_header.endswith(default):
            return host_header.removesuffix(default)
    return host_header

