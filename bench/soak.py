"""Rows 4: a soak of mixed traffic through one sidecar (demo backend behind it): allowed calls,
401s and 404s, WebSocket RPC sessions (forwarded and refused frames), and slow clients that
dribble a head until the sidecar answers 408. Then: did RSS stay within 10% of its value after
warm-up, do the descriptors return to their baseline once every client has left, and did
/metrics count zero internal errors?

headReadSeconds is 5 here (not 10) so slow clients come and go within a quick run.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .http_rows import AUTH, NEVER_LOCKS
from .plumbing import (
    TOKEN, client_loop, http_request, invoke_body, metric_sum, metrics, open_fds, rss_mb, start_sidecar,
)
from .report import Report, Row
from .ws_load import RpcConnection, client_frame, request_frame
from .ws_rows import backend_url, start_echo_backend

HEAD_READ_SECONDS = 5
SLOW_CLIENTS = 10
RSS_TOLERANCE = 0.10


def _repeat(stop: threading.Event, counts: Counter, key: str, action: Callable[[], None], pause: float) -> None:
    while not stop.is_set():
        try:
            action()
            counts[key] += 1
        except OSError:
            counts[key + "_errors"] += 1
        stop.wait(pause)


def ws_session(port: int) -> Callable[[], None]:
    batch = b"".join(client_frame(request_frame(m, f"s{i}")) for i, m in enumerate(["health", "terminal.open"] * 10))

    def session() -> None:
        conn = RpcConnection(port)
        try:
            conn.exchange(batch, 20)
        finally:
            conn.close()

    return session


def slow_client(port: int) -> Callable[[], None]:
    """One byte of a head a second until the sidecar gives up on it (408, then close)."""
    def dribble() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=HEAD_READ_SECONDS + 10) as sock:
            sock.settimeout(1)
            for byte in b"POST /tools/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"y" * 1000:
                try:
                    sock.recv(4096)
                    return  # answered (408) or closed
                except TimeoutError:
                    sock.sendall(bytes([byte]))
    return dribble


def run(report: Report, workdir: Path, seconds: float) -> None:
    backend = start_echo_backend(workdir)
    sidecar = start_sidecar("soak", workdir, backend_url(backend), {"timeouts": {"headReadSeconds": HEAD_READ_SECONDS}},
                            rules=NEVER_LOCKS)
    try:
        pid, port = sidecar.pid, sidecar.port
        # Baseline once idle after one of each exchange: the audit file opens at its first line.
        for request in (http_request("/tools/invoke", invoke_body("agents_list"), AUTH),
                        http_request("/tools/invoke", invoke_body("agents_list"), {"Authorization": "Bearer no"})):
            client_loop(port, request, 1, 0.2)
        ws_session(port)()
        time.sleep(3)
        baseline_fds, baseline_targets, start_rss = open_fds(pid), fd_targets(pid), rss_mb(pid)
        stop, counts = threading.Event(), Counter[str]()
        deadline = time.monotonic() + seconds

        def loop(key: str, request: bytes, pause: float) -> Callable[[], None]:
            def go() -> None:
                result = client_loop(port, request, 1, max(0.0, deadline - time.monotonic()), pause_s=pause, stop=stop)
                counts.update({f"{key}_{code}": n for code, n in result.statuses.items()})
            return go

        workers = [
            loop("allowed", http_request("/tools/invoke", invoke_body("agents_list"), AUTH), 0.002),
            loop("allowed", http_request("/tools/invoke", invoke_body("agents_list"), AUTH), 0.002),
            loop("badtoken", http_request("/tools/invoke", invoke_body("agents_list"), {"Authorization": "Bearer no"}), 0.01),
            loop("denied", http_request("/tools/invoke", invoke_body("exec"), {"Authorization": f"Bearer {TOKEN}"}), 0.01),
        ]
        threads = [threading.Thread(target=w) for w in workers]
        threads += [threading.Thread(target=_repeat, args=(stop, counts, "ws_sessions", ws_session(port), 0.05)) for _ in range(2)]
        threads += [threading.Thread(target=_repeat, args=(stop, counts, "slow_clients", slow_client(port), 0.1))
                    for _ in range(SLOW_CLIENTS)]
        for t in threads:
            t.start()
        warmup = max(10.0, seconds / 10)
        samples: list[dict[str, float]] = []
        started, warm_rss = time.monotonic(), None
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            elapsed = time.monotonic() - started
            samples.append({"t": round(elapsed), "rss_mb": round(rss_mb(pid), 1), "fds": open_fds(pid)})
            if warm_rss is None and elapsed >= warmup:
                warm_rss = rss_mb(pid)
        end_rss, peak_fds = rss_mb(pid), max(s["fds"] for s in samples)
        stop.set()
        for t in threads:
            t.join()
        fds_after = _settled_fds(pid, baseline_fds, HEAD_READ_SECONDS + 15)
        values = metrics(sidecar.admin_port)
        internal = metric_sum(values, "openclaw_sidecar_internal_errors_total")
        data: dict[str, Any] = {
            "seconds": seconds, "warmup_s": warmup, "start_rss_mb": start_rss, "warm_rss_mb": warm_rss, "end_rss_mb": end_rss,
            "baseline_fds": baseline_fds, "peak_fds": peak_fds, "fds_after": fds_after, "internal_errors": internal,
            "fds_left_over": sorted(set(fd_targets(pid)) - set(baseline_targets)),
            "decisions": metric_sum(values, "openclaw_sidecar_decisions_total"),
            "head_timeouts": metric_sum(values, "openclaw_sidecar_head_timeouts_total"),
            "audit_lines_dropped": metric_sum(values, "openclaw_sidecar_audit_lines_dropped_total"),
            "traffic": dict(counts), "samples": samples,
        }
        warm = warm_rss or end_rss
        growth = (end_rss - warm) / warm
        traffic = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        report.add(Row("4a", f"soak {seconds:.0f} s: RSS at the end vs after {warmup:.0f} s warm-up",
                       f"{warm:.0f} → {end_rss:.0f} MB ({growth:+.1%}) · traffic: {traffic}", "within ±10%",
                       data=data, passed=abs(growth) <= RSS_TOLERANCE))
        report.add(Row("4b", "soak: open descriptors once every client has left",
                       f"baseline {baseline_fds} · peak {peak_fds} · after {fds_after}", "back to baseline",
                       data={"left_over": data["fds_left_over"]}, passed=fds_after <= baseline_fds))
        report.add(Row("4c", "soak: internal errors (/metrics)",
                       f"{internal:.0f} internal errors · {data['decisions']:,.0f} decisions · "
                       f"{data['head_timeouts']:.0f} head timeouts · {data['audit_lines_dropped']:.0f} audit lines dropped",
                       "zero", data={}, passed=internal == 0))
    finally:
        sidecar.stop()
        backend.stop()


def fd_targets(pid: int) -> list[str]:
    """What each descriptor points at (socket:[inode], a path): names what a leak holds."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def _settled_fds(pid: int, baseline: int, timeout: float) -> int:
    """Descriptors once lingering closes have run out (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while (count := open_fds(pid)) > baseline and time.monotonic() < deadline:
        time.sleep(0.5)
    return count
