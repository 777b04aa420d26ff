"""Everything built once from a Config: limiters and the pipeline. Engine-agnostic."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic.alias_generators import to_camel

from .config import Config, read_storage_password
from .errors import ConfigError
from .pacing import RefusalPacer
from .pipeline import Pipeline
from .ratelimit import AuthFailureLimiter, RequestRateLimiter
from .routes import RouteTable

log = logging.getLogger("sidecar")


@dataclass(frozen=True)
class Runtime:
    config: Config
    pipeline: Pipeline
    failure_limiter: AuthFailureLimiter
    request_limiter: RequestRateLimiter | None
    refusal_pacer: RefusalPacer

    async def aclose(self) -> None:
        await self.failure_limiter.aclose()
        if self.request_limiter is not None:
            await self.request_limiter.aclose()


def config_warnings(config: Config) -> Iterator[str]:
    """What will make some requests fail or widens what the port lets through: logged at start-up
    whichever way the sidecar is loaded, and printed by check-config (the auth problems, which make
    every request fail, are `config.secrets.problems`)."""
    trusted_proxy = config.rules.gateway.auth.trusted_proxy
    if config.secrets.mode == "trusted-proxy" and not (trusted_proxy.allow_users or trusted_proxy.required_headers):
        yield (
            "TRUSTED-PROXY MODE WITH NEITHER allowUsers NOR requiredHeaders: anyone who can reach a "
            "trusted proxy address is accepted as whatever user it names (attack corpus A11)"
        )
    if config.secrets.mode == "trusted-proxy":
        networks = config.rules.gateway.trusted_networks
        if networks and all(n.is_loopback for n in networks) and not trusted_proxy.allow_loopback:
            yield ("TRUSTED-PROXY MODE TRUSTING LOOPBACK ONLY, WITHOUT trustedProxy.allowLoopback: every request "
                   "from the proxy on this host (tailscale serve) is refused 401 (trusted_proxy_loopback_source)")
        ranges = [str(n) for n in networks
                  if n.num_addresses > 1 and not n.is_loopback]
        if ranges:
            yield (f"TRUSTED-PROXY MODE TRUSTING RANGES {', '.join(ranges)}: any host in them can name any "
                   "allowed user (on Kubernetes a pod range includes the node's own address: k8s/README.md)")
    if not config.sidecar.enforce:
        yield ("SHADOW MODE (sidecar.enforce: false): route, scope, tool and RPC-method refusals are "
               "logged and counted (openclaw_sidecar_shadowed_total), then FORWARDED; authentication "
               "and request hygiene are still enforced")
    if config.sidecar.websocket.mode == "passthrough":
        yield ("WEBSOCKET PASSTHROUGH: frames of the gateway's RPC are relayed unread; an authenticated "
               "caller is gateway admin there (terminals, config patches, tools past the sidecar's policy)")
    secrets = config.secrets
    shared = {"token": secrets.token, "password": secrets.password}.get(secrets.mode)
    if config.sidecar.websocket.allow_nodes and secrets.mode in ("token", "password") \
            and (secrets.upstream_kind, secrets.upstream_credential) != (secrets.mode, shared):
        yield ("sidecar.websocket.allowNodes is on but no node can connect: a node's device signs the "
               "credential it presents, which must then be the one the gateway gets, and sidecar.upstreamAuth "
               "differs from gateway.auth")
    if config.rules.gateway.tls.enabled and not config.sidecar.upstream_tls.configured:
        yield ("gateway.tls.enabled and no sidecar.upstreamTls: the gateway's certificate must chain to a "
               "CA in certifi's bundle and name the upstream's host, which the one it generates does not; pin "
               "that one by its SHA-256 with sidecar.upstreamTls.fingerprint")
    table = RouteTable.for_deployment()
    entries = {entry.name: entry for entry in table.http + table.websocket}
    served = RouteTable.for_deployment(switched_off=config.rules.switched_off)
    served_names = {entry.name for entry in served.http + served.websocket}
    for name in config.sidecar.routes.allow:
        entry = entries.get(name)
        what = f"{entry.power}, credential {entry.credential}" + (f": {entry.note}" if entry.note else "") if entry else "node capabilities"
        yield f"route {name} opened beyond the default policy ({what})"
        if entry is not None and entry.name not in served_names:
            yield (f"route {name} is opened but switched off in the gateway's config: it is answered 404 "
                   "as the gateway answers it")


def warn_about_config(config: Config) -> None:
    for problem in config.secrets.problems:
        log.error("auth misconfigured, every authenticated request will get 401: %s", problem)
    for message in config_warnings(config):
        log.warning("%s", message)


# Settings a running process cannot take over: where it listens and what it forwards to, the
# limiters and the refusal pacer, whose state must survive a reload (a changed limit would need new
# ones), and the event loop everything runs on.
RESTART_SETTINGS = ("listen", "admin_listen", "upstream", "upstream_tls", "runtime_dir", "max_connections", "rate_limit", "audit_log",
                    "event_loop")


def restart_needed(old: Config, new: Config) -> str | None:
    """The first setting whose change a reload cannot apply, as spelled in the file."""
    for name in RESTART_SETTINGS:
        if getattr(old.sidecar, name) != getattr(new.sidecar, name):
            return f"sidecar.{to_camel(name)}"
    return None


def build_runtime(config: Config, clock: Callable[[], float] = time.time, reuse: Runtime | None = None,
                  *, warn: bool = True) -> Runtime:
    """Build limiters from their storage URI (a bad pairing fails here, at start-up), or keep
    those of `reuse` (a reload: counts and lockouts carry over, under the gateway's limits as
    its file now gives them). `warn`: log `config_warnings` (check-config prints them itself)."""
    if warn:
        warn_about_config(config)
    limit_rules = config.rules.gateway.auth.rate_limit
    if reuse is not None:
        pipeline = Pipeline(config, reuse.failure_limiter, reuse.request_limiter, reuse.pipeline.identity_headers,
                            reuse.pipeline.preauth)
        reuse.failure_limiter.apply_limits(**limit_rules.model_dump())
        return Runtime(config, pipeline, reuse.failure_limiter, reuse.request_limiter, reuse.refusal_pacer)
    settings = config.sidecar.rate_limit
    password = read_storage_password(settings)
    storage_options = {"password": password} if password is not None else None
    try:  # each limiter builds its storage from the URI here
        failure_limiter = AuthFailureLimiter(
            **limit_rules.model_dump(), max_entries=settings.max_entries,
            loopback_delay_base_ms=settings.loopback_delay_base_ms,
            loopback_delay_max_ms=settings.loopback_delay_max_ms, storage_uri=settings.storage,
            storage_options=storage_options, fail_closed=settings.fail_closed, clock=clock,
        )
        request_limiter = None
        if settings.requests is not None:
            request_limiter = RequestRateLimiter(
                settings.requests.limit, per=settings.requests.per, per_tool=settings.requests.per_tool,
                storage_uri=settings.storage, storage_options=storage_options,
                fail_closed=settings.fail_closed, clock=clock,
            )
    except ValueError as exc:  # the storage could not be built from the URI (its text redacted)
        raise ConfigError([("sidecar.rateLimit.storage", str(exc))]) from None
    pacing = settings.refusal_pacing
    pacer = RefusalPacer(after_refusals=pacing.after_refusals, base_delay_ms=pacing.base_delay_ms,
                         max_delay_ms=pacing.max_delay_ms, max_clients=settings.max_entries)
    pipeline = Pipeline(config, failure_limiter, request_limiter)
    return Runtime(config, pipeline, failure_limiter, request_limiter, pacer)
