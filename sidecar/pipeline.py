"""The order of refusal stages, in one place.

`on_head` decides everything a request head can decide (before a body byte is read) by running
`HEAD_STAGES` in order, each a named method of `Pipeline` that refuses or lets the head on:
head size → method syntax → malformed head → Expect → Host → target → upgrade → route →
denied routes → route access → RPC upgrade → attribution → Funnel → method → settled route →
auth → scopes → declared size → preauth sockets (auth: a locked-out client is refused whatever
it presents).
`on_body` applies the body rules and tool policy. Forwarding is the one outcome every stage must
grant; every other path ends in a `Refuse` carrying the gateway's own answer for its reason
(sidecar/reasons.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple, Protocol

from . import envelopes
from .attribution import Attribution, attribute
from .auth import AuthOutcome, SharedSecretAuth, build_authenticator, origin_policy
from .body import MAX_BODY_BYTES, BodyError, InvokeBody, parse_json_body, read_invoke_body
from .canonical import CanonicalTarget, InvalidTarget, canonicalize_target
from .config import Config
from .envelopes import Envelope
from .headers import ACCOUNT_HEADER, CHANNEL_HEADER, HeaderPlan, connection_tokens, head_problem, rebuild_headers
from .identities import for_identity
from .ipaddrs import in_networks, is_loopback, share_key
from .ratelimit import UPSTREAM_GUESS_SUBJECT, ClientTurns, client_share
from .reasons import HOST_NOT_PLAIN, HOST_REQUIRED, Reason, ReasonCode, answer
from .request_line import NODE_METHODS
from .routes import NODE_CAPABILITY_ROUTE, PLUGIN_MATCHES, RouteEntry, RouteMatch, RouteTable, collapse_slashes, plugin_path_candidates
from .rpc import BrowserOrigin, RpcPolicy, RpcSession, connect_secret, first_missing_scope, scope_satisfied
from .shadow import SHADOWABLE_REASONS
from .shares import ClientShare, ClientShares
from .scopes import ADMIN, ResolvedScopes, ceilings_from_config, parse_scope_header, resolve_scopes, shared_secret_scopes
from .toolchain import ToolChain, ToolRequest
from .toolpolicy import js_trim
from .view import RequestView

TOOLS_ROUTE = "tools-invoke"
ADMIN_RPC_ROUTE = "plugin:admin-http-rpc"
_TOOL_CONTEXT = frozenset({CHANNEL_HEADER, ACCOUNT_HEADER})  # the context headers tool policy reads
MAX_HEAD_BYTES = 16 * 1024  # Node's default --max-http-header-size, which the gateway runs with
# Auth outcomes of requests the sidecar did not authenticate: they get no scopes and never
# carry the sidecar's upstream credential.
CONNECT_FRAME_AUTH = "websocket-connect"  # checked later, in the RPC connect frame
PUBLIC_READ_METHOD = "unauthenticated-route"  # a read anyone may make (a public route, the Control UI)
UNAUTHENTICATED_METHODS = frozenset({PUBLIC_READ_METHOD, "route-credential", CONNECT_FRAME_AUTH})
_UNSCOPED_METHODS = UNAUTHENTICATED_METHODS - {CONNECT_FRAME_AUTH}  # a connect frame's caller gets scopes
# The outcomes of routes that need no credential check here (immutable, so shared by all requests).
_ROUTE_CREDENTIAL = AuthOutcome(True, "route-credential")
_CONNECT_FRAME = AuthOutcome(True, CONNECT_FRAME_AUTH, shared_secret=True)
_PUBLIC_READ = AuthOutcome(True, PUBLIC_READ_METHOD)
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
    @property
    def no_failures(self) -> bool: ...


class RequestLimiter(Protocol):
    async def hit(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> "LimitVerdictLike": ...


class ShadowNotes(Protocol):
    """Where `Pipeline._enforced` notes a refusal shadow mode let through (a list, a HeadState)."""

    def append(self, reason: ReasonCode, /) -> None: ...


@dataclass(frozen=True)
class Refuse:
    envelope: Envelope
    reason: ReasonCode
    delay_s: float = 0.0  # upstream delays loopback auth failures before answering
    route: str | None = None  # the route-table name, once the request's route is known
    # For the audit line, as far as the request got: who the client is, who it proved to be,
    # and which tool it asked for.
    client_ip: str | None = None
    auth: AuthOutcome | None = None
    tool: str | None = None
    detail: str | None = None  # free text for the audit line: which layer refused, by which rule

    @classmethod
    def because(cls, reason: ReasonCode, *data: str | int, delay_s: float = 0.0, auth: AuthOutcome | None = None,
                tool: str | None = None, detail: str | None = None) -> Refuse:
        """The refusal for `reason`, answered as the gateway answers it (`reasons.answer`, given
        the request's `data` where the answer carries some): the one way the pipeline refuses."""
        return cls(answer(reason, *data), reason, delay_s, None, None, auth, tool, detail)


@dataclass(frozen=True)
class RouteAccess:
    """The route's verdict before authentication: refused (why), or how the caller gets in."""

    refusal: Reason | None = None
    refusal_data: tuple[str, ...] = ()  # what the refusal's answer carries (reasons.BUILT_ANSWERS)
    public: bool = False  # plain reads need no credential
    own_credential: bool = False  # an opened route that checks its own credential
    passthrough: frozenset[str] = frozenset()  # client headers carrying that credential


_AUTHENTICATED_ACCESS = RouteAccess()  # a route for callers the sidecar authenticates
_PUBLIC_ACCESS = RouteAccess(public=True)


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
    shadowed: tuple[ReasonCode, ...] = ()  # refusals shadow mode let through (sidecar/shadow.py)
    browser: BrowserOrigin | None = None  # an RPC upgrade with a non-blank Origin: checked at connect
    preauth: ClientShare | None = None  # an RPC upgrade counted until its connect is accepted (sidecar/shares.py)

    @property
    def authenticated(self) -> bool:
        """The sidecar checked a credential for it (not a public route, nor one whose credential
        the gateway checks, nor an upgrade whose caller shows its credential in the connect frame)."""
        return self.auth.method not in UNAUTHENTICATED_METHODS


@dataclass(frozen=True)
class Forward:
    admitted: Admitted
    body: bytes | None  # None: forward the received body unchanged
    tool: str | None = None
    reason: Reason = Reason.ALLOWED
    shadowed: tuple[ReasonCode, ...] = ()  # what enforcement would have refused it for
    detail: str | None = None  # shadowed: the refusal's own explanation


class HeadState:
    """One request head on its way through `HEAD_STAGES`: what each stage found that a later
    stage, the refusal's audit line or the admitted request needs. A stage reads only what an
    earlier stage wrote (the comments name the writer)."""

    __slots__ = ("view", "host", "target", "websocket", "match", "route", "attribution", "access", "rpc",
                 "outcome", "limited", "scopes", "shadowed", "preauth")

    view: RequestView
    host: str  # host: the Host header, trimmed and lower-cased ("" when empty)
    target: CanonicalTarget  # target
    websocket: bool  # upgrade: `Upgrade: websocket`
    match: RouteMatch  # route: the handler the gateway will run
    route: str | None  # route: its name; refusals from then on are audited with it
    attribution: Attribution  # route: who the client is (audited with every later refusal)
    access: RouteAccess  # route_access
    rpc: bool  # rpc_upgrade: an RPC WebSocket whose frames the sidecar judges (websocket.mode enforce)
    outcome: AuthOutcome | None  # settled_route (a route needing no check here) or auth
    limited: bool  # settled_route: the credential check runs behind the auth-failure limiter
    scopes: ResolvedScopes | None  # scopes
    shadowed: tuple[ReasonCode, ...]  # refusals shadow mode let through (`Pipeline._enforced`)
    preauth: ClientShare | None  # preauth_sockets, the last stage

    def __init__(self, view: RequestView) -> None:
        self.view = view
        self.route = None
        self.outcome = None
        self.limited = False
        self.shadowed = ()
        self.preauth = None

    def append(self, reason: ReasonCode, /) -> None:
        self.shadowed += (reason,)


SyncStage = Callable[["Pipeline", HeadState], "Refuse | None"]
AsyncStage = Callable[["Pipeline", HeadState], Awaitable["Refuse | None"]]


class Stage(NamedTuple):
    """One head stage: its name and the `Pipeline` method that runs it (sync, or awaited)."""

    name: str
    run: SyncStage | None
    run_async: AsyncStage | None

    @classmethod
    def of(cls, method: Callable[..., Any]) -> Stage:
        name = method.__name__.removeprefix("stage_")
        if inspect.iscoroutinefunction(method):
            return cls(name, None, method)
        return cls(name, method, None)


@dataclass
class Pipeline:
    config: Config
    failure_limiter: FailureLimiter
    request_limiter: RequestLimiter | None = None
    # Identity headers an earlier configuration named (a reload keeps stripping them).
    earlier_identity_headers: frozenset[str] = frozenset()
    # An earlier configuration's unauthenticated RPC upgrades (a reload keeps counting them).
    earlier_preauth: ClientShares | None = None

    def __post_init__(self) -> None:
        gateway = self.config.rules.gateway
        sidecar = self.config.sidecar
        self.preauth = self.earlier_preauth or ClientShares(sidecar.websocket.unauthenticated_per_client)
        self.preauth.per_client = sidecar.websocket.unauthenticated_per_client
        tp = gateway.auth.trusted_proxy
        # Header names from config are lower-cased by its validators.
        user_header = sidecar.upstream_auth.user_header or tp.user_header or "x-forwarded-user"
        self.trusted = gateway.trusted_networks
        self.authenticator = build_authenticator(self.config)
        self.origins = origin_policy(self.config)
        self.context = sidecar.context_headers
        self.context_allow = frozenset(self.context.allow)
        self.tools = ToolChain(self.config.rules)
        self.check_turns = ClientTurns()
        self.rpc_policy = RpcPolicy.from_config(self.config, self.tools)
        rules = self.config.rules
        self.routes = RouteTable.for_deployment(
            hooks_path=rules.hooks.path, base_path=gateway.control_ui.base_path, control_ui_enabled=gateway.control_ui.enabled,
            switched_off=rules.switched_off,
        )
        self.admin_rpc_methods = next(entry.dispatches for entry in self.routes.http if entry.name == ADMIN_RPC_ROUTE)
        self.ceilings = ceilings_from_config(sidecar.scope_ceilings.default, sidecar.scope_ceilings.identities)
        self.upstream_user_header = user_header
        # Identity headers, client-side and upstream-side: protected like the built-in ones, and
        # never forwarded from the client. Earlier ones too: the gateway applies its own file's
        # changes on its own schedule, or not at all (an edit it refuses, `reload.mode: off`).
        self.identity_headers = frozenset(filter(None, (tp.user_header, user_header))) | self.earlier_identity_headers
        # Required X-Forwarded-* headers the ingress sent are handed on: the gateway demands them
        # of the sidecar (the identity header and X-Forwarded-For the sidecar writes itself).
        self.relayed_required = tuple(name for name in tp.required_headers
                                      if name.startswith("x-forwarded-") and name != "x-forwarded-for"
                                      and name not in self.identity_headers)
        # Read by every head: looked up once (a reload builds a new Pipeline).
        self.allow_real_ip_fallback = gateway.allow_real_ip_fallback
        # `//` collapsed like the paths they are compared with, a trailing `/` kept (`/api/` denies
        # `/api/x`, not `/apikeys`); lower-cased too for the plugin router's spellings.
        self.denied_prefixes = tuple(map(collapse_slashes, sidecar.routes.deny))
        self.denied_plugin_prefixes = tuple(prefix.lower() for prefix in self.denied_prefixes)
        self.opened_routes = sidecar.routes.allow
        self.control_ui_policy = {"public": "public", "authenticated": "authenticated", "off": "refused"}[sidecar.routes.control_ui]
        self.rpc_enforced = sidecar.websocket.mode == "enforce"
        self.connect_frame_secret = isinstance(self.authenticator, SharedSecretAuth)
        credential = self.config.secrets.upstream_credential
        self.upstream_authorization = None if credential is None else ("Authorization", f"Bearer {credential}")
        # Per identity, what depends on nothing else: the pinned context headers (read-only
        # dicts, shared by requests) and a shared-secret caller's scopes.
        self.pins = {identity: self.context.pinned_for(identity) for identity in self.context.pinned}
        self.pins_default = self.context.pinned_for("*")
        ceilings = self.ceilings.by_identity or {}
        self.secret_scopes = {identity: shared_secret_scopes(ceiling) for identity, ceiling in ceilings.items()}
        self.secret_scopes_default = shared_secret_scopes(self.ceilings.default)

    def connection_client(self, peer: str) -> str | None:
        """Whose share of the connection cap a new connection spends (sidecar/shares.py): its
        address, an IPv6 one's /64; None for a trusted proxy, whose connections carry many clients
        (behind an ingress every connection is the ingress's)."""
        return None if in_networks(peer, self.trusted) else share_key(peer)

    def strip_identity_headers(self, names: frozenset[str]) -> None:
        """Never forward a client's copy of these either: some version of the config names them
        as an identity (one the sidecar refused, perhaps, but the gateway applied)."""
        self.identity_headers |= names

    # ---- head ---------------------------------------------------------------------------

    async def on_head(self, view: RequestView) -> Refuse | Admitted:
        head = HeadState(view)
        for _name, run, run_async in HEAD_STAGES:
            if run is not None:
                refusal = run(self, head)
            else:
                assert run_async is not None
                refusal = await run_async(self, head)
            if refusal is not None:
                if head.route is None:
                    return refusal
                # Audited and counted by the effective route, with the client as attributed.
                return replace(refusal, route=head.route, client_ip=head.attribution.client_ip)
        try:
            return self._admit(head)
        except Exception:
            if head.preauth is not None:
                head.preauth.release()  # never admitted: its count must not outlive it
            raise

    def stage_head_size(self, head: HeadState) -> Refuse | None:
        if head.view.head_size() > MAX_HEAD_BYTES:
            # Node refuses such heads before the gateway sees them; checked first, before any
            # work that grows with the input.
            return Refuse.because(Reason.REQUEST_HEAD_TOO_LARGE)
        return None

    def stage_method_syntax(self, head: HeadState) -> Refuse | None:
        if head.view.method not in NODE_METHODS:
            # Node's parser refuses a method it does not know (`get`, `FOO`, `PRI`) outright.
            return Refuse.because(Reason.INVALID_METHOD)
        return None

    def stage_malformed_head(self, head: HeadState) -> Refuse | None:
        problem = head_problem(head.view, self.identity_headers)
        if problem is not None:
            return Refuse.because(Reason.MALFORMED_HEAD, problem)
        return None

    def stage_expect(self, head: HeadState) -> Refuse | None:
        expect = head.view.first("expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            return Refuse.because(Reason.EXPECTATION_FAILED)
        return None

    def stage_host(self, head: HeadState) -> Refuse | None:
        view = head.view
        if not view.has("host"):
            # RFC 9112 §3.2, and the gateway answers 400 without one: forwarding it would leave
            # the gateway to guess the authority it resolves the target against.
            return Refuse.because(Reason.INVALID_HOST, HOST_REQUIRED)
        host = view.host
        if host and not _PLAIN_HOST.fullmatch(host):
            # The gateway builds `new URL(target, "http://" + Host)`: a Host with a path would
            # move the route it computes, so only host[:port] is accepted.
            return Refuse.because(Reason.INVALID_HOST, HOST_NOT_PLAIN)
        head.host = host
        return None

    def stage_target(self, head: HeadState) -> Refuse | None:
        raw = head.view.target
        if not raw.startswith("/") and not raw.lower().startswith(("http://", "https://")):
            return Refuse.because(Reason.INVALID_TARGET)
        try:
            target = canonicalize_target(raw, head.host or "localhost")
        except InvalidTarget:
            return Refuse.because(Reason.INVALID_TARGET)
        if target.host is not None and target.host != _hostname(head.host):
            return Refuse.because(Reason.FOREIGN_HOST)
        if target.path.startswith("//"):
            # `/a/..//x/y` resolves to `//x/y`, which the gateway would re-read as host `x` and
            # path `/y`: the path we judged would not be the path it routes.
            return Refuse.because(Reason.INVALID_TARGET)
        head.target = target
        return None

    def stage_upgrade(self, head: HeadState) -> Refuse | None:
        upgrade = (head.view.first("upgrade") or "").strip().lower()
        if upgrade and upgrade != "websocket":
            return Refuse.because(Reason.UNSUPPORTED_UPGRADE)
        head.websocket = upgrade == "websocket"
        return None

    def stage_route(self, head: HeadState) -> Refuse | None:
        """The handler the gateway will run, and who the client is: every later refusal is
        audited with both."""
        target = head.target
        match = self.routes.match(head.view.method, target.path, target.query, websocket=head.websocket)
        head.match = match
        head.route = route = match.name
        head.attribution = attribute(head.view, self.trusted, self.allow_real_ip_fallback)
        if route == TOOLS_ROUTE and (match.capability or not target.raw_is_canonical):
            # Non-canonical spellings of the tools route, the capability prefix included, are
            # refused, never rewritten (E3, E7).
            return Refuse.because(Reason.NON_CANONICAL_TARGET)
        if match.malformed_capability:
            return Refuse.because(Reason.MALFORMED_CAPABILITY_PATH)
        return None

    def stage_denied_routes(self, head: HeadState) -> Refuse | None:
        """`sidecar.routes.deny`: a prefix of the path as sent (canonical) or as the gateway routes
        it, each with `//` collapsed (the hooks handler strips the slashes after its base path:
        `/hooks//agent` is the agent hook), or, for a plugin route, as its plugin router reads it
        (lower-cased and percent-decoded too: `/PLUGINS/%6fpenai/x` is under `/plugins/openai/`)."""
        if not self.denied_prefixes:
            return None
        match = head.match
        if any(collapse_slashes(path).startswith(self.denied_prefixes) for path in (head.target.path, match.path)) or (
                match.entry is not None and match.entry.match in PLUGIN_MATCHES
                and any((path + "/").startswith(self.denied_plugin_prefixes) for path in plugin_path_candidates(match.path)[0])):
            return self._enforced(Refuse.because(Reason.ROUTE_DENIED), head)
        return None

    def stage_route_access(self, head: HeadState) -> Refuse | None:
        access = self.route_access(head.match)
        if access.refusal is None:
            head.access = access
            return None
        head.access = _AUTHENTICATED_ACCESS  # if shadowed: in for callers the sidecar authenticates
        return self._enforced(Refuse.because(access.refusal, *access.refusal_data), head)

    def stage_rpc_upgrade(self, head: HeadState) -> Refuse | None:
        entry = head.match.entry
        if entry is None or entry.power != "rpc":
            head.rpc = False
            return None
        refusal = self._websocket_upgrade_problem(head.view)
        if refusal is not None:
            return refusal
        head.rpc = self.rpc_enforced
        return None

    def stage_attribution(self, head: HeadState) -> Refuse | None:
        if not head.attribution.attributable:
            return Refuse.because(Reason.PROXY_ATTRIBUTION_REQUIRED)
        return None

    def stage_funnel(self, head: HeadState) -> Refuse | None:
        if head.view.has("tailscale-funnel-request"):
            return Refuse.because(Reason.FUNNEL_REQUEST)
        return None

    def stage_method(self, head: HeadState) -> Refuse | None:
        if head.route == TOOLS_ROUTE and head.view.method != "POST":
            return Refuse.because(Reason.METHOD_NOT_ALLOWED, "POST")
        return None

    def stage_settled_route(self, head: HeadState) -> None:
        """Routes that need no credential check here are settled; for the others, whether the
        check runs behind the auth-failure limiter."""
        view = head.view
        if head.access.own_credential:
            head.outcome = _ROUTE_CREDENTIAL
        elif head.rpc and self.connect_frame_secret and not view.has("authorization"):
            # Browsers cannot set headers on an upgrade: the secret comes in the connect frame,
            # which the sidecar checks before the gateway sees it (RpcSession).
            head.outcome = _CONNECT_FRAME
        elif head.access.public and _plain_read(view):
            head.outcome = _PUBLIC_READ
        else:
            head.limited = self.authenticator.rate_limited(head.attribution)

    async def stage_auth(self, head: HeadState) -> Refuse | None:
        """A client the auth-failure limiter has locked out is refused whatever it presented;
        otherwise the credential's outcome is the answer, and the limiter is told it."""
        if head.outcome is not None:
            return None
        view, attribution = head.view, head.attribution
        result = await self._limited_check(attribution.client_ip, head.limited,
                                           lambda: self.authenticator.authenticate(view, attribution))
        if isinstance(result, Refuse):
            return result
        head.outcome = result
        return None

    def stage_scopes(self, head: HeadState) -> Refuse | None:
        outcome = head.outcome
        assert outcome is not None  # set by settled_route or auth
        head.scopes = scopes = self._scopes(head.view, outcome)
        entry = head.match.entry
        if entry is None or entry.scope is None:
            return None
        if scopes is None:
            # No caller whose scopes the sidecar knows (a route credential, a device token): the
            # gateway reads them itself, except on a route only the sidecar's credential opens.
            missing = self._route_scope_refusal(entry, outcome) if entry.credential == "gateway" else None
        elif not scope_satisfied(entry.scope, scopes.granted):
            # Behind the sidecar's shared secret the gateway grants every scope and reads no
            # x-openclaw-scopes: a ceiling holds on this route only if checked here (red team: a
            # caller capped at no scope read a session's transcript).
            missing = self._route_scope_refusal(entry, outcome)
        elif entry.owner is not None and not scopes.owner:
            missing = Refuse.because(Reason.OWNER_REQUIRED, entry.owner, auth=outcome)
        elif entry.owner_behind_secret and self.upstream_authorization is not None and not scopes.owner:
            # The gateway makes any shared-secret caller owner, and this handler starts an agent
            # turn with the owner's tools: a ceiling below admin cannot be kept there, so it is refused.
            missing = Refuse.because(Reason.MISSING_SCOPE, ADMIN, auth=outcome)
        else:
            missing = None
        return self._enforced(missing, head) if missing is not None else None

    @staticmethod
    def _route_scope_refusal(entry: RouteEntry, outcome: AuthOutcome) -> Refuse:
        """The handler's answer to a caller without the row's scope (its own words, if it has them)."""
        assert entry.scope is not None
        answer_data = (entry.scope, entry.scope_answer) if entry.scope_answer else (entry.scope,)
        return Refuse.because(Reason.MISSING_SCOPE, *answer_data, auth=outcome)

    def stage_preauth_sockets(self, head: HeadState) -> Refuse | None:
        """Last, so that no later refusal leaves a count held: an RPC upgrade counts against its
        client until its connect is accepted, as the gateway counts it, whatever the upgrade
        carried (red team: a token holder's 32 upgrades with the token on them were not counted)."""
        if not head.rpc:
            return None
        head.preauth = self.preauth.acquire(share_key(head.attribution.client_ip or head.attribution.peer_ip))
        return Refuse.because(Reason.PREAUTH_SOCKETS) if head.preauth is None else None

    def stage_declared_size(self, head: HeadState) -> Refuse | None:
        if head.route == TOOLS_ROUTE:
            declared = head.view.declared_length()
            if declared is not None and declared > MAX_BODY_BYTES:
                return Refuse.because(Reason.PAYLOAD_TOO_LARGE)
        return None

    def _admit(self, head: HeadState) -> Admitted:
        """The head every stage let through, with the headers the gateway will receive."""
        view, attribution, outcome, scopes = head.view, head.attribution, head.outcome, head.scopes
        assert outcome is not None and head.route is not None
        # On an RPC upgrade the gateway authenticates by the sidecar's credential in the connect
        # frame, and the sidecar is the client it should see: with a forwarded client (or a
        # forwarded identity, which demands one) it clears every token-only connection's scopes
        # (gateway-surface N3), while the sidecar has already authenticated the caller and caps
        # every frame itself. Without an upstream credential the gateway needs both to know who.
        as_direct = head.rpc and self.upstream_authorization is not None
        plan = self._header_plan(view, attribution, outcome, scopes, head.websocket, head.access.passthrough,
                                 forward_client=not as_direct)
        headers = rebuild_headers(view, plan) + ((("X-Request-Id", view.request_id),) if view.request_id else ())
        origin = view.first("origin") or ""
        browser = BrowserOrigin.of(origin, self.origins.refusal(view, local_client=attribution.kind == "direct-local")) \
            if head.rpc and js_trim(origin) else None
        return Admitted(head.route, head.target.origin_form, headers, attribution.client_ip, outcome, scopes,
                        head.websocket, head.rpc, head.shadowed, browser, head.preauth)

    def _enforced(self, refusal: Refuse, shadowed: ShadowNotes) -> Refuse | None:
        """The refusal, or (shadow mode, policy layers only) None with the reason noted."""
        if self.config.sidecar.enforce or refusal.reason not in SHADOWABLE_REASONS:
            return refusal
        shadowed.append(refusal.reason)
        return None

    def _websocket_upgrade_problem(self, view: RequestView) -> Refuse | None:
        """Only RFC 6455 upgrades (GET, version 13, a real key, no body) reach the RPC: anything
        else could become a raw tunnel past frame inspection."""
        mode = self.config.sidecar.websocket.mode
        if mode == "off":
            return Refuse.because(Reason.WEBSOCKET_OFF)
        key = (view.first("sec-websocket-key") or "").strip()
        if (view.method != "GET" or (view.first("sec-websocket-version") or "").strip() != "13" or not _websocket_key(key)
                or view.declared_length() != 0 or "upgrade" not in connection_tokens(view)):
            return Refuse.because(Reason.INVALID_WEBSOCKET_UPGRADE)
        return None

    def rpc_session(self, admitted: Admitted) -> RpcSession:
        """The frame judge for one admitted RPC connection."""
        caller = None if admitted.auth.method == CONNECT_FRAME_AUTH else admitted.auth

        # A browser on this host counts its failures against its origin, never exempt (the gateway's
        # browser limiter): any page can open a loopback connection (red team: 106 guesses unlocked).
        browser = admitted.browser
        limited_as = browser.limit_key if browser is not None and is_loopback(admitted.client_ip) else admitted.client_ip

        async def check_secret(auth: Mapping[str, Any]) -> AuthOutcome:
            """A secret in a connect frame (token and password mode), behind the failure limiter."""
            authenticator = self.authenticator
            assert isinstance(authenticator, SharedSecretAuth)
            method = authenticator.method
            check = partial(authenticator.check, connect_secret(method, auth))
            return await outcome_of(await self._limited_check(limited_as, True, check), method)

        # By address (an IPv6 /64 as one), never by a browser's origin: a local process chooses its
        # Origin freely, and each one would be a fresh count (review).
        guesses_as = UPSTREAM_GUESS_SUBJECT + client_share(admitted.client_ip)

        async def judge_signed(signed: str, is_upstream: bool) -> AuthOutcome:
            """A device's signed credential where the sidecar presents one upstream: that one
            passes, one of the sidecar's own secrets is no guess (refused as a device, uncounted),
            anything else is a guess at the upstream secret. Guesses have a count of their own,
            which no success with the sidecar's own secret clears, and a client locked out of it
            is refused whatever it signed, the right one too (red team)."""
            authenticator = self.authenticator
            own = not is_upstream and isinstance(authenticator, SharedSecretAuth) and authenticator.check(signed).ok
            # One of the sidecar's own passes the check but clears nothing, and waits behind the
            # lock like the rest: else a locked-out client could still tell its guesses at the
            # sidecar's secret apart, uncounted (third review).
            judged = partial(AuthOutcome, is_upstream or own, "token", Reason.OK if is_upstream or own else Reason.TOKEN_MISMATCH,
                             presented=True, shared_secret=not own)
            checked = await self._limited_check(guesses_as, True, judged)
            if isinstance(checked, Refuse) and checked.reason == Reason.TOKEN_MISMATCH:
                # A wrong one may be a guess at the sidecar's own secret as well: it spends that
                # count too, so the two counts are no double budget (third review).
                checked = await self._limited_check(limited_as, True, judged)
            return await outcome_of(checked, "token")

        async def outcome_of(result: Refuse | AuthOutcome, method: str) -> AuthOutcome:
            """A limited check's refusal as the frame's outcome, after the loopback delay an HTTP
            request gets."""
            if not isinstance(result, Refuse):
                return result
            if result.delay_s > 0:
                await asyncio.sleep(result.delay_s)
            retry = next((int(v) for k, v in result.envelope.headers if k.lower() == "retry-after"), None)
            return AuthOutcome(False, method, result.reason, retry_after_s=retry)

        async def limit(user: str | None, tool: str) -> Reason | None:
            if self.request_limiter is None:
                return None
            verdict = await self.request_limiter.hit(user, tool, client_ip=admitted.client_ip)
            if verdict.unavailable:
                return Reason.LIMITER_UNAVAILABLE
            return None if verdict.allowed else Reason.REQUEST_RATE_LIMITED

        return RpcSession(self.rpc_policy, caller, admitted.scopes or ResolvedScopes(()), check_secret, limit,
                          judge_signed, browser=admitted.browser)

    def route_access(self, match: RouteMatch) -> "RouteAccess":
        """What the route table and `sidecar.routes` grant the route the gateway will run."""
        entry = match.entry
        if entry is None:
            return RouteAccess(refusal=Reason.UNKNOWN_ROUTE)
        allowed = self.opened_routes
        opened = entry.name in allowed
        if match.capability and NODE_CAPABILITY_ROUTE not in allowed:
            return RouteAccess(refusal=Reason.NODE_CAPABILITY)
        policy: str = entry.default_policy
        if entry.name == "control-ui":
            policy = self.control_ui_policy
        if not match.method_served:
            # Where the gateway's handler answers 405 before any credential, so does the sidecar;
            # a route it refuses stays a 404 whatever the method.
            if entry.method_not_allowed and (opened or policy != "refused"):
                return RouteAccess(refusal=Reason.METHOD_NOT_ALLOWED, refusal_data=(", ".join(entry.methods or ()),))
            return RouteAccess(refusal=Reason.METHOD_NOT_SERVED)
        own = opened and entry.credential == "own"
        if match.ui_fallback and (self.control_ui_policy == "refused" or own and self.control_ui_policy != "public"):
            # A plugin not loaded leaves the path to the Control UI, which `routes.controlUi` keeps
            # off or behind the sidecar's authentication (review: an opened plugin carried it past).
            return RouteAccess(refusal=Reason.ROUTE_REFUSED)
        if match.query_credential is not None and not own:
            return RouteAccess(refusal=Reason.QUERY_CREDENTIAL)
        if policy == "refused" and not opened:
            return RouteAccess(refusal=Reason.ROUTE_REFUSED)
        if own:
            return RouteAccess(own_credential=True, passthrough=frozenset(entry.pass_headers))
        if policy == "refused":  # opened by name: in as the gateway lets callers in there
            policy = "public" if entry.credential == "none" else "authenticated"
        return _PUBLIC_ACCESS if policy == "public" else _AUTHENTICATED_ACCESS

    async def _limited_check(self, key: str | None, limited: bool, check: Callable[[], AuthOutcome]) -> Refuse | AuthOutcome:
        """A credential check, behind the auth-failure limiter when `limited` (HTTP heads and
        connect frames alike). A locked-out client is answered 429 whatever it presented, so
        the comparison (pure, constant-time) may come first: then a failure, which changes the
        count, takes a client turn (ClientTurns) for its lock check and count, as upstream takes
        them in one event-loop turn, and so does a success while that client has one in flight
        (else the right guess inside a burst could read the lock before the wrong ones ahead of
        it are counted); a client that only succeeds stays concurrent."""
        outcome = check()
        if not limited:
            return await self._settled(key, outcome)
        queued = outcome.counts_as_failure or self.check_turns.busy(key)
        async with self.check_turns.turn(key) if queued else contextlib.nullcontext():
            checked = await self._locked(key)
            if isinstance(checked, Refuse):
                return checked
            return await self._settled(key, outcome, checked.no_failures)

    async def _locked(self, key: str | None) -> Refuse | LimitVerdictLike:
        """A client the auth-failure limiter has locked out is refused (its credential's outcome
        is never told); otherwise the limiter's verdict."""
        verdict = await self.failure_limiter.check(key)
        if verdict.unavailable:
            return Refuse.because(Reason.LIMITER_UNAVAILABLE)
        if not verdict.allowed:
            return Refuse.because(Reason.RATE_LIMITED, verdict.retry_after_s)
        return verdict

    async def _settled(self, key: str | None, outcome: AuthOutcome, no_failures: bool = False) -> Refuse | AuthOutcome:
        """A credential check's outcome, told to the limiter: a mismatch is counted, a match
        clears the client's failures (none to clear when its check just found none)."""
        if outcome.ok:
            if outcome.shared_secret and not no_failures:
                await self.failure_limiter.reset(key)
            return outcome
        delay = await self.failure_limiter.record_failure(key) if outcome.counts_as_failure else 0.0
        return Refuse.because(outcome.reason, delay_s=delay, auth=outcome)

    def _scopes(self, view: RequestView, outcome: AuthOutcome) -> ResolvedScopes | None:
        if outcome.method in _UNSCOPED_METHODS:
            return None
        user = outcome.user
        if outcome.shared_secret:  # the scopes of ceilings.ceiling_for(user), computed once
            return for_identity(self.secret_scopes, user, self.secret_scopes_default)
        return resolve_scopes(parse_scope_header(view.first("x-openclaw-scopes")), self.ceilings.ceiling_for(user))

    def _header_plan(
        self, view: RequestView, attribution: Attribution, outcome: AuthOutcome, scopes: ResolvedScopes | None,
        websocket: bool, passthrough: frozenset[str] = frozenset(), *, forward_client: bool = True,
    ) -> HeaderPlan:
        owned: list[tuple[str, str]] = []
        # Never lend our credential to a request nobody authenticated, nor to a route whose own
        # credential the client brings (one meaning per header).
        if self.upstream_authorization is not None and outcome.method not in UNAUTHENTICATED_METHODS:
            owned.append(self.upstream_authorization)
        # Always one explicit value: an absent header means the full default set upstream (F1).
        owned.append(("x-openclaw-scopes", scopes.header_value if scopes is not None else ""))
        if outcome.user_header_value is not None and forward_client:
            # As the proxy spelled it (e.g. Tailscale's RFC 2047 form): the gateway behind us
            # then sees exactly what it would see behind the proxy itself.
            owned.append((self.upstream_user_header, outcome.user_header_value))
            owned += ((name, view.first(name) or "") for name in self.relayed_required)
        # A loopback client gets no X-Forwarded-For: a gateway trusting 127.0.0.1 skips loopback
        # hops and would find no client at all (reference (f) 8).
        if forward_client and attribution.client_ip is not None and not is_loopback(attribution.client_ip):
            owned.append(("X-Forwarded-For", attribution.client_ip))
        return HeaderPlan(
            owned=tuple(owned), context_allow=self.context_allow, pinned=for_identity(self.pins, outcome.user, self.pins_default),
            drop=self.identity_headers, websocket=websocket, passthrough=passthrough,
        )

    # ---- body ---------------------------------------------------------------------------

    def _admin_rpc_refusal(self, body: bytes, scopes: ResolvedScopes | None) -> Refuse | None:
        """The admin HTTP RPC plugin, once opened, dispatches gateway methods by name
        (`config.patch`, `cron.run`, `device.pair.approve`...): the method deny list holds there
        as on the WebSocket, the method read as the plugin reads it (the trimmed body's JSON, its
        `method` trimmed). A body the sidecar cannot read is refused with the plugin's own 400 for
        unreadable JSON: V8 reads nesting Python cannot, so such a body may carry any method."""
        try:
            payload = parse_json_body(body)
        except BodyError as exc:
            return Refuse.because(Reason.UNREADABLE_RPC_BODY, detail=exc.message or exc.kind)
        method = payload.get("method") if isinstance(payload, dict) else None
        method = js_trim(method) if isinstance(method, str) else None
        if method not in self.admin_rpc_methods:
            return None  # the plugin answers a method it does not dispatch itself (400)
        spec = self.rpc_policy.catalogue[method]
        request_id = payload.get("id")
        request_id = (js_trim(request_id) if isinstance(request_id, str) else "") or str(uuid.uuid4())
        # The plugin runs each method with every scope behind the sidecar's shared secret: the
        # caller's ceiling is checked here, before the deny list, as the WebSocket checks it (red
        # team: config.get, cron.list and device.pair.list for a caller capped at none). A device
        # token's scopes are the gateway's to read; `commands.list` the plugin answers itself.
        if scopes is not None and method != "commands.list":
            missing = first_missing_scope(method, spec, payload.get("params"), scopes.granted)
            if missing is not None:
                return Refuse.because(Reason.RPC_MISSING_SCOPE, missing, request_id, detail=f"admin HTTP RPC method {method}")
        if method in self.rpc_policy.denied:
            return Refuse.because(Reason.METHOD_DENIED, method, request_id, spec.markers, detail=f"admin HTTP RPC method {method}")
        return None

    async def on_body(self, admitted: Admitted, body: bytes, has_trailers: bool = False) -> Refuse | Forward:
        verdict = await self._judge_body(admitted, body, has_trailers)
        if isinstance(verdict, Refuse):
            # Paced and counted by the client as attributed at the head, as head refusals are.
            return replace(verdict, route=admitted.route, client_ip=admitted.client_ip)
        return verdict

    async def _judge_body(self, admitted: Admitted, body: bytes, has_trailers: bool) -> Refuse | Forward:
        # The adapter already closes HTTP/1 connections that send trailers; this is the rule
        # for any engine that delivers them.
        if has_trailers:
            return Refuse.because(Reason.TRAILERS)
        if admitted.route != TOOLS_ROUTE:
            noted: list[ReasonCode] = list(admitted.shadowed)
            if admitted.route == ADMIN_RPC_ROUTE and (refused := self._admin_rpc_refusal(body, admitted.scopes)) is not None \
                    and (refusal := self._enforced(refused, noted)):
                return refusal
            passthrough = admitted.websocket and admitted.route == "rpc-websocket" and not admitted.rpc
            return Forward(admitted, None, reason=Reason.WEBSOCKET_PASSTHROUGH if passthrough else Reason.ALLOWED,
                           shadowed=tuple(noted))
        if len(body) > MAX_BODY_BYTES:
            return Refuse.because(Reason.PAYLOAD_TOO_LARGE)
        try:
            invoke = read_invoke_body(body)
        except BodyError as exc:
            if exc.kind == "invalid_json":
                return Refuse.because(Reason.INVALID_JSON, exc.message)
            return Refuse.because(Reason.MISSING_TOOL_NAME)
        name = invoke.tool.name
        shadowed: list[ReasonCode] = list(admitted.shadowed)
        owner = admitted.scopes is not None and admitted.scopes.owner
        decision = self.tools.decide(tool_request(invoke, owner, admitted.headers))
        detail = None
        if decision.refused:
            refused = Refuse.because(decision.reason, decision.answer_data, tool=name, detail=decision.detail)
            if refusal := self._enforced(refused, shadowed):
                return refusal
            detail = decision.detail
        if self.request_limiter is not None:
            verdict = await self.request_limiter.hit(admitted.auth.user, name, client_ip=admitted.client_ip)
            if verdict.unavailable:
                return Refuse.because(Reason.LIMITER_UNAVAILABLE, tool=name)
            if not verdict.allowed:
                limited = Refuse.because(Reason.REQUEST_RATE_LIMITED, verdict.retry_after_s, tool=name)
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


def tool_request(invoke: InvokeBody, owner: bool, headers: Iterable[tuple[str, str]]) -> ToolRequest:
    """The call as tool policy reads it, with the context headers the gateway will receive
    (`headers`: rebuilt, so allow-listed or pinned)."""
    context = {k.lower(): v for k, v in headers if k.lower() in _TOOL_CONTEXT}
    return ToolRequest(invoke, owner, context.get(CHANNEL_HEADER), context.get(ACCOUNT_HEADER))


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


# The head stages, in the order they run: the one place that order is declared.
HEAD_STAGES: tuple[Stage, ...] = tuple(Stage.of(method) for method in (
    Pipeline.stage_head_size,
    Pipeline.stage_method_syntax,
    Pipeline.stage_malformed_head,
    Pipeline.stage_expect,
    Pipeline.stage_host,
    Pipeline.stage_target,
    Pipeline.stage_upgrade,
    Pipeline.stage_route,
    Pipeline.stage_denied_routes,
    Pipeline.stage_route_access,
    Pipeline.stage_rpc_upgrade,
    Pipeline.stage_attribution,
    Pipeline.stage_funnel,
    Pipeline.stage_method,
    Pipeline.stage_settled_route,
    Pipeline.stage_auth,
    Pipeline.stage_scopes,
    Pipeline.stage_declared_size,
    Pipeline.stage_preauth_sockets,
))
