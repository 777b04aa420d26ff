"""Rows 1a-1e: CPU per request of POST /tools/invoke through each proxy, against nginx.

Every proxy runs at once, pinned to CPU0 and idle while the others are measured; wrk and the
backends share CPU1. Rounds take turns over the proxies, every other round in reverse order, so
that foreign load and the slow drift of a shared machine (±20% between windows here) hit all of
them alike. Each figure is the median over rounds; each ratio is the median of per-round ratios,
a case against its reference measured in the same round.

The sidecars treat loopback clients like remote ones for the auth-failure limiter
(`exemptLoopback: false`), so its storage is consulted on every request as in a deployment whose
clients arrive through an ingress; `maxAttempts` is set out of reach so the 401 row measures 401s,
not lockouts (a separate sidecar with `maxAttempts: 1` measures the 429s of a locked-out client).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plumbing import (
    PROXY_CPU, LOAD_CPU, TOKEN, VENV_BIN, LoadWindow, Service, free_port, invoke_body, run_wrk, start_bare_master,
    start_nginx, start_sidecar, wrk_script,
)
from .report import Report, Row, paired_ratio

NEVER_LOCKS = {"gateway": {"auth": {"rateLimit": {"exemptLoopback": False, "maxAttempts": 10**9, "windowMs": 1000}}}}
# Rows 1 measure what one refusal costs, so refusal pacing (a client refused again and again waits
# ever longer) is off here; the gateway rows run with it, as deployed.
UNPACED = {"rateLimit": {"refusalPacing": {"baseDelayMs": 0}}}
LOCKS_AT_ONCE = {"gateway": {"auth": {"rateLimit": {"exemptLoopback": False, "maxAttempts": 1}}}}
ALLOWED = invoke_body("agents_list")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Case:
    key: str
    name: str
    proxy: str  # which Service
    body: bytes
    headers: dict[str, str]
    status: int  # the answer this case is about


CASES = [
    Case("a", "bare embedded Master, same addon chain, no enforcement", "bare", ALLOWED, AUTH, 200),
    Case("a2", "bare embedded Master with the sidecar's speed-ups (mitmproxy patches, uvloop)", "bare-speedups",
         ALLOWED, AUTH, 200),
    Case("b", "stock mitmdump -q, no addon", "mitmdump", ALLOWED, AUTH, 200),
    Case("c", "sidecar, allowed call, in-memory limiter", "memory", ALLOWED, AUTH, 200),
    Case("c-asyncio", "sidecar, allowed call, in-memory limiter, on the standard library's event loop", "asyncio",
         ALLOWED, AUTH, 200),
    Case("d", "sidecar, allowed call, Redis limiter", "redis", ALLOWED, AUTH, 200),
    Case("401", "sidecar, bad token: 401", "memory", ALLOWED, {"Authorization": "Bearer wrong-token"}, 401),
    Case("403s", "sidecar, scope ceiling without operator.write: 403 forbidden", "ceiling", ALLOWED, AUTH, 403),
    Case("403f", "sidecar, forged X-Forwarded-For: 403 proxy_attribution_required", "memory", ALLOWED,
         {**AUTH, "X-Forwarded-For": "203.0.113.9"}, 403),
    Case("404", "sidecar, denied tool exec: 404", "memory", invoke_body("exec"), AUTH, 404),
    Case("429", "sidecar, locked-out client: 429", "locked", ALLOWED, {"Authorization": "Bearer wrong-token"}, 429),
]


def start_proxies(workdir: Path, upstream: str) -> dict[str, Service]:
    proxies: dict[str, Service] = {}
    redis_port = free_port()
    proxies["redis-server"] = Service("redis-server", [
        "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--protected-mode", "no", "--dir", str(workdir)], workdir, cpus=LOAD_CPU, port=redis_port)
    proxies["memory"] = start_sidecar("memory", workdir, upstream, UNPACED, rules=NEVER_LOCKS)
    proxies["asyncio"] = start_sidecar("asyncio", workdir, upstream, {**UNPACED, "eventLoop": "asyncio"}, rules=NEVER_LOCKS)
    proxies["redis"] = start_sidecar("redis", workdir, upstream, {"rateLimit": {
        **UNPACED["rateLimit"], "storage": f"redis://127.0.0.1:{redis_port}/0"}}, rules=NEVER_LOCKS)
    proxies["ceiling"] = start_sidecar("ceiling", workdir, upstream, {**UNPACED, "scopeCeilings": {"default": ["operator.read"]}},
                                       rules=NEVER_LOCKS)
    proxies["locked"] = start_sidecar("locked", workdir, upstream, UNPACED, rules=LOCKS_AT_ONCE)
    for name, flags in (("bare", ()), ("bare-speedups", ("--speedups",))):
        proxies[name] = start_bare_master(name, workdir, "memory", flags)
    dump_port = free_port()
    proxies["mitmdump"] = Service("mitmdump", [
        str(VENV_BIN / "mitmdump"), "-q", "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1",
        "-p", str(dump_port), "--set", f"confdir={workdir / 'mitmdump-conf'}"], workdir, cpus=PROXY_CPU, port=dump_port)
    return proxies


def measure(proxy: Service, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    load = LoadWindow()
    before = proxy.cpu()
    result = run_wrk(f"http://127.0.0.1:{proxy.port}/tools/invoke", script, connections, seconds)
    cpu = proxy.cpu() - before
    return {"cpu_us_per_req": cpu / max(result.requests, 1) * 1e6, "rps": result.rps, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms, "requests": result.requests, "statuses": result.statuses,
            "socket_errors": result.socket_errors, "proxy_cpu_cores": cpu / seconds, **load.end()}


def run(report: Report, workdir: Path, seconds: float, rounds: int, connections: int) -> None:
    nginx = start_nginx(workdir)
    proxies: dict[str, Service] = {}
    try:
        proxies = start_proxies(workdir, f"http://127.0.0.1:{nginx.port}")
        scripts = {c.key: wrk_script(workdir, f"case-{c.key}", c.body, c.headers) for c in CASES}
        for case in CASES:  # warm-up (and the 429 case's lockout)
            measure(proxies[case.proxy], scripts[case.key], 4, 1)
        samples: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CASES}
        for number in range(rounds):
            print(f"  round {number + 1}/{rounds}", flush=True)
            for case in CASES if number % 2 == 0 else reversed(CASES):
                samples[case.key].append(measure(proxies[case.proxy], scripts[case.key], connections, seconds))
        add_rows(report, {c.key: summarise(c, samples[c.key]) for c in CASES})
    finally:
        for service in [*proxies.values(), nginx]:
            service.stop()


def summarise(case: Case, samples: list[dict[str, Any]]) -> dict[str, Any]:
    figures = {k: statistics.median(s[k] for s in samples)
               for k in ("cpu_us_per_req", "rps", "p50_ms", "p99_ms", "foreign_cores", "steal_cores")}
    statuses: dict[int, int] = {}
    for sample in samples:
        for code, n in sample["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    total = sum(statuses.values())
    error = None
    if not total or statuses.get(case.status, 0) < 0.99 * total:
        error = f"expected {case.status}, got {statuses}"
    return {**figures, "statuses": statuses, "samples": samples, "error": error}


def _measured(s: dict[str, Any]) -> str:
    return (f"{s['cpu_us_per_req']:.0f} µs/req · {s['rps']:,.0f} req/s · p50 {s['p50_ms']:.1f} ms · "
            f"p99 {s['p99_ms']:.1f} ms · foreign {s['foreign_cores']:.2f} cores")


def add_rows(report: Report, s: dict[str, dict[str, Any]]) -> None:
    def row(row_id: str, key: str, name: str, target: str = "", ref: str | None = None, threshold: float | None = None) -> None:
        ratio = paired_ratio(s[ref]["samples"], s[key]["samples"], "cpu_us_per_req") if ref else None
        report.add(Row(row_id, name, _measured(s[key]), target, ratio, threshold, s[key], s[key]["error"]))

    names = {c.key: c.name for c in CASES}
    row("1a", "a", names["a"])
    row("1a'", "a2", names["a2"] + ": what they alone buy", "cpu(a)/cpu(a')", "a")
    row("1b", "b", names["b"])
    row("1c", "c", names["c"] + " vs (a)", "cpu(a)/cpu(c) ≥ 0.90", "a", 0.90)
    row("1c'", "c", names["c"] + " vs (b)", "cpu(b)/cpu(c) ≥ 1.8", "b", 1.8)
    row("1c''", "c", names["c"] + " vs (a'): enforcement alone, like for like", "cpu(a')/cpu(c)", "a2")
    row("1c-loop", "c", names["c"] + " (uvloop) vs the same on the standard library's loop: what uvloop buys",
        "cpu(c-asyncio)/cpu(c)", "c-asyncio")
    row("1d", "d", names["d"], "cpu(c)/cpu(d) ≥ 0.80", "c", 0.80)
    for key in ("401", "403s", "403f", "404"):
        row(f"1e-{key}", key, names[key], f"cpu(c)/cpu({key}) ≥ 1.5", "c", 1.5)
    row("1e-429", "429", names["429"] + " (reference)", "cpu(c)/cpu(429)", "c")
