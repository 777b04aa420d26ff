"""Rows 3: in front of the real OpenClaw gateway (2026.9.6, offline on loopback).

An allowed `agents_list` call in a closed loop at 2 connections (a Python client from
127.0.0.2), first alone: direct (3a), through the sidecar (3b), through reference (a'), the
sidecar's own tuned Master without enforcement (3b-bare: the sidecar minus what it judges) and through
nginx (3b-native, what a proxy hop written in C costs here) and through a Python relay without
mitmproxy (3b-python, reference (c): what a hop in Python costs, mitmproxy's layers aside) and through
that relay judging each call with the sidecar's own pipeline (3b-python-judged), taking turns,
every other round in reverse order; figures are medians, ratios medians of per-round ratios.
Then while wrk floods 32 connections from 127.0.0.1 with denied `exec` calls, bad tokens, or
forged X-Forwarded-For; each directly against the gateway and through the sidecar. Nothing is
pinned: the gateway, the proxies and the load share both cores, as they would in one pod.

The sidecar runs as in a deployment whose clients come through an ingress: loopback is not
exempt from the auth-failure limiter, so a bad-token flood from one address is locked out
(429) after `maxAttempts`, while the allowed client, from another address, is not; and the
sidecar trusts no forwarding proxy (`gateway.trustedProxies: []` in its own file; the gateway
behind it trusts 127.0.0.1, the sidecar), so a forged X-Forwarded-For is refused (403).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .plumbing import (
    TOKEN, LoadWindow, Service, Wrk, client_loop, http_request, invoke_body, start_bare_master, start_nginx_proxy,
    start_python_hop, start_sidecar, wrk_script,
)
from .report import Report, Row, paired_ratio

ALLOWED_SOURCE = "127.0.0.2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALLOWED_BODY = json.dumps({"tool": "agents_list", "args": {}}).encode()
FLOODS = [
    ("exec", "denied exec calls", invoke_body("exec"), AUTH),
    ("badtoken", "bad tokens", ALLOWED_BODY, {"Authorization": "Bearer wrong-token"}),
    ("forged", "forged X-Forwarded-For", ALLOWED_BODY, {**AUTH, "X-Forwarded-For": "203.0.113.9"}),
]
FLOOD_CONNECTIONS = 32
TARGET_ALONE, TARGET_FLOOD = 0.9, 0.6


def phase(port: int, seconds: float, flood: Path | None, proxy: Service | None = None) -> dict[str, Any]:
    """One window; with `proxy`, also its CPU per allowed call (the clearest figure where the
    throughput of a window moves with the machine)."""
    load = LoadWindow()
    cpu_before = proxy.cpu() if proxy is not None else 0.0
    wrk = Wrk(f"http://127.0.0.1:{port}/tools/invoke", flood, FLOOD_CONNECTIONS, seconds, cpus=None) if flood else None
    allowed = client_loop(port, http_request("/tools/invoke", ALLOWED_BODY, AUTH), 2, seconds, source=ALLOWED_SOURCE)
    result: dict[str, Any] = {"allowed_per_s": allowed.rps, "allowed_p50_ms": allowed.p50_ms,
                              "allowed_statuses": dict(allowed.statuses)}
    if proxy is not None and wrk is None:
        result["proxy_cpu_us_per_call"] = (proxy.cpu() - cpu_before) / max(allowed.requests, 1) * 1e6
    if wrk is not None:
        flooded = wrk.result()
        result.update(flood_per_s=flooded.rps, flood_statuses=flooded.statuses, flood_p50_ms=flooded.p50_ms,
                      flood_socket_errors=flooded.socket_errors)
    time.sleep(1)  # let refused connections linger out before the next phase
    return {**result, **load.end()}


def run(report: Report, workdir: Path, seconds: float, alone_rounds: int) -> None:
    """The gateway alone moved ±15% between windows a minute apart here: the unloaded arms take
    `alone_rounds` turns, every other one in reverse order."""
    try:
        from tests.gateway.real_gateway import RealGateway, unavailable_reason
    except ImportError as exc:
        report.add(Row("3", "real gateway", "", skipped=f"cannot import tests.gateway.real_gateway: {exc}"))
        return
    reason = unavailable_reason()
    if reason is not None:
        report.add(Row("3", "real gateway", "", skipped=f"{reason} (scripts/ensure-gateway .venv/bin/python installs it)"))
        return
    gateway = RealGateway({"mode": "token", "token": TOKEN})
    proxies: list[Service] = []
    try:
        sidecar = start_sidecar("gw-sidecar", workdir, gateway.url, {"openclawConfig": str(gateway.config_path)},
                                {"gateway": {"trustedProxies": [], "auth": {"rateLimit": {"exemptLoopback": False}}}},
                                cpus=None)
        proxies.append(sidecar)
        bare = start_bare_master("gw-bare", workdir, "gw-sidecar", ("--speedups",), cpus=None)
        proxies.append(bare)
        native = start_nginx_proxy(workdir, gateway.port)
        proxies.append(native)
        python_hop = start_python_hop(workdir, gateway.port)
        proxies.append(python_hop)
        python_judged = start_python_hop(workdir, gateway.port, judged_by="gw-sidecar")
        proxies.append(python_judged)
        ports = {"direct": gateway.port, "sidecar": sidecar.port, "bare": bare.port, "native": native.port,
                 "python": python_hop.port, "python-judged": python_judged.port}
        # Whose CPU each arm's calls cost: nginx's is spent in a worker, a child this reading misses.
        cpu_of: dict[str, Service] = {"sidecar": sidecar, "bare": bare, "python": python_hop, "python-judged": python_judged}
        floods = {key: wrk_script(workdir, f"flood-{key}", body, headers) for key, _, body, headers in FLOODS}
        for port in ports.values():
            phase(port, 2, None)  # warm-up: the gateway's first calls are slow
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
        for number in range(alone_rounds):
            for name in ports if number % 2 == 0 else reversed(ports):
                rounds[name].append(phase(ports[name], seconds, None, cpu_of.get(name)))
        alone = {name: _median(samples) for name, samples in rounds.items()}
        report.add(Row("3a", "gateway direct, allowed agents_list at 2 connections", _allowed(alone["direct"]),
                       data=alone["direct"], error=_check(alone["direct"])))
        for row_id, name, title, target, threshold in (
            ("3b", "sidecar", "through the sidecar, allowed at 2 connections", "allowed/s ≥ 0.9× gateway direct", TARGET_ALONE),
            ("3b-bare", "bare", "through reference (a'), the sidecar's Master with its speed-ups but no enforcement, "
             "at 2 connections", "vs gateway direct", None),
            ("3b-native", "native", "through nginx (keep-alive both sides), nothing judged, at 2 connections",
             "vs gateway direct", None),
            ("3b-python", "python", "through reference (c), a Python relay without mitmproxy, nothing judged, "
             "at 2 connections", "vs gateway direct", None),
            ("3b-python-judged", "python-judged", "through reference (c) judging each call with the sidecar's pipeline "
             "(nothing audited), at 2 connections", "vs gateway direct", None),
        ):
            ratio = paired_ratio(rounds[name], rounds["direct"], "allowed_per_s")
            report.add(Row(row_id, title, _allowed(alone[name]), target, ratio, threshold, alone[name], _check(alone[name])))
        for key, label, _, _ in FLOODS:
            for name in ("direct", "sidecar"):
                result = phase(ports[name], seconds, floods[key])
                row_id = f"3{'c' if name == 'direct' else 'd'}-{key}"
                title = f"{'gateway direct' if name == 'direct' else 'through the sidecar'}, allowed under a flood of {label}"
                measured = f"{_allowed(result)} · flood answered {result['flood_per_s']:,.0f}/s {result['flood_statuses']}"
                target, threshold = ("allowed/s ≥ 0.6× unloaded", TARGET_FLOOD) if name == "sidecar" else ("vs unloaded", None)
                report.add(Row(row_id, title, measured, target, _ratio(result, alone[name]), threshold, result, _check(result)))
    finally:
        for proxy in proxies:
            proxy.stop()
        gateway.stop()


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures of several phases, statuses summed, each phase kept."""
    statuses: Counter = Counter()
    for sample in samples:
        statuses.update(sample["allowed_statuses"])
    figures: dict[str, Any] = {key: statistics.median(sample[key] for sample in samples)
                               for key in ("allowed_per_s", "allowed_p50_ms", "proxy_cpu_us_per_call", "foreign_cores", "steal_cores")
                               if key in samples[0]}
    return {**figures, "allowed_statuses": dict(statuses), "rounds": samples}


def _allowed(result: dict[str, Any]) -> str:
    proxy_cpu = f" · proxy CPU {result['proxy_cpu_us_per_call']:,.0f} µs/call" if "proxy_cpu_us_per_call" in result else ""
    return (f"{result['allowed_per_s']:,.0f} allowed/s · p50 {result['allowed_p50_ms']:.1f} ms{proxy_cpu} · "
            f"foreign {result['foreign_cores']:.2f} cores")


def _ratio(result: dict[str, Any], reference: dict[str, Any]) -> float | None:
    return result["allowed_per_s"] / reference["allowed_per_s"] if reference["allowed_per_s"] else None


def _check(result: dict[str, Any]) -> str | None:
    statuses = result["allowed_statuses"]
    bad = {code: n for code, n in statuses.items() if code != 200}
    return f"allowed calls not answered 200: {bad}" if sum(bad.values()) > 0.01 * max(sum(statuses.values()), 1) else None
