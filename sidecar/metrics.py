"""Prometheus metrics, in a registry of our own so tests and several sidecars in one
process never collide with the global default registry."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # CPU, RSS, open descriptors: what a flood shows first
PlatformCollector(registry=REGISTRY)

DECISIONS = Counter(
    "openclaw_sidecar_decisions_total",
    "Requests decided by the sidecar, by route name, outcome and reason code.",
    ["route", "outcome", "reason"],
    registry=REGISTRY,
)
RATELIMIT_STORAGE_FALLBACKS = Counter(
    "openclaw_sidecar_ratelimit_storage_fallbacks_total",
    "Times the shared rate-limit storage failed and a replica fell back to local memory.",
    registry=REGISTRY,
)
RATELIMIT_STORAGE_ERRORS = Counter(
    "openclaw_sidecar_ratelimit_storage_errors_total",
    "Rate-limit storage operations that failed (each one, not each outage).",
    registry=REGISTRY,
)
INTERNAL_ERRORS = Counter(
    "openclaw_sidecar_internal_errors_total",
    "Requests refused with a sanitised 500 because the sidecar itself failed.",
    registry=REGISTRY,
)
HEAD_REFUSALS = Counter(
    "openclaw_sidecar_head_refusals_total",
    "Request heads refused before any request existed: over the size limit, or unparseable (bare LF, bad framing).",
    registry=REGISTRY,
)
VANISHED_REQUESTS = Counter(
    "openclaw_sidecar_vanished_requests_total",
    "Requests dropped unjudged because their client had reset the connection before its address "
    "could be read (uvloop reads it when first asked); nothing was forwarded or answered.",
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "openclaw_sidecar_connections_refused_total",
    "Client connections closed at accept: the open-connection cap, or one client's share of it, was reached.",
    registry=REGISTRY,
)
CONNECTIONS_EVICTED = Counter(
    "openclaw_sidecar_connections_evicted_total",
    "Connections answered before their head or connect deadline to make room for a new one while "
    "the open-connection cap was full (each also counts as the timeout it was brought forward from).",
    registry=REGISTRY,
)
CLIENT_CONNECTIONS = Gauge(
    "openclaw_sidecar_client_connections",
    "Client connections open now, against the cap of maxConnections (or the one derived from the descriptor limit).",
    registry=REGISTRY,
)
HEAD_TIMEOUTS = Counter(
    "openclaw_sidecar_head_timeouts_total",
    "Connections closed because no complete request head arrived in time (slow or idle clients).",
    registry=REGISTRY,
)
SHADOWED = Counter(
    "openclaw_sidecar_shadowed_total",
    "Requests and frames shadow mode forwarded although enforcement would have refused them, by reason.",
    ["reason"],
    registry=REGISTRY,
)
AUDIT_LINES_DROPPED = Counter(
    "openclaw_sidecar_audit_lines_dropped_total",
    "Audit lines dropped because the audit destination did not keep up (the proxy never waits for it) or could not be written.",
    registry=REGISTRY,
)
REFUSALS_PACED = Counter(
    "openclaw_sidecar_refusals_paced_total",
    "Refusals answered after a pacing delay: the client had been refused many times in a row.",
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "openclaw_sidecar_config_reloads_total",
    "Configuration reloads, by result (applied, rejected: the old configuration kept serving).",
    ["result"],
    registry=REGISTRY,
)
# At zero from the start: a series born at 1 never shows an increase, so the first rejected reload
# would pass an `increase(...) > 0` alert by (review).
for _result in ("applied", "rejected"):
    CONFIG_RELOADS.labels(result=_result)
UPSTREAM_RELEASE = Info(
    "openclaw_sidecar_upstream_release",
    "The gateway release the upstream reported at its last check (`/startupz`), beside the one this "
    "sidecar's routes, RPC methods and refusals describe.",
    registry=REGISTRY,
)
UPSTREAM_RELEASE_MISMATCH = Gauge(
    "openclaw_sidecar_upstream_release_mismatch",
    "1 while the upstream reports a gateway release other than the one this sidecar describes: routes and "
    "methods it added are refused, and ones it changed are judged as the described release judged them.",
    registry=REGISTRY,
)
DECISION_SECONDS = Histogram(
    "openclaw_sidecar_decision_seconds",
    "Time spent deciding a request inside the sidecar (excluding upstream).",
    registry=REGISTRY,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
)


@lru_cache(maxsize=4096)
def decision_counter(route: str, outcome: str, reason: str) -> Counter:
    """DECISIONS' child for one label set, bound once: `labels()` validates and locks on every
    call, and every decision counts one (routes, outcomes and reasons are closed sets)."""
    return DECISIONS.labels(route=route, outcome=outcome, reason=reason)
