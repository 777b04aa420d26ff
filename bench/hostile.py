"""Hostile-client soak: what a stranger costs the sidecar before authentication.

Runs the real sidecar in front of the demo backend (loopback only) and reports, as a table and
JSON: the sidecar's CPU for a 1 MB request target without credentials and an authorised request
answered meanwhile; how long a dripping head lives with headReadSeconds 3; and, for N idle partial
heads (or slow bodies, or slow readers of pipelined refusals) from one client, whether the process stays up, its RSS, how many log lines
it wrote, and how fast an authorised request succeeds once they are gone.

    .venv/bin/python bench/hostile.py [--connections 20000] [--json bench/hostile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclaw_demo.backend import DemoBackend  # noqa: E402
from tests.e2e.harness import SidecarProcess, read_response  # noqa: E402

TOKEN = "bench-token"
AUTHORISED = (b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"tool\":\"agents_list\"}")


SLOW_READER_REQUEST = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def authorised_seconds(sc: SidecarProcess) -> tuple[int, float]:
    started = time.monotonic()
    with socket.create_connection((sc.host, sc.port), timeout=30) as sock:
        sock.sendall(AUTHORISED)
        status = read_response(sock, timeout=30).status
    return status, time.monotonic() - started


def big_target(sc: SidecarProcess, repeat: int = 50) -> dict:
    """CPU per 1 MB target without credentials (total over `repeat` sent one after another, as the
    clock ticks in 10 ms), then how long authorised requests take while such targets keep coming."""
    before = cpu_seconds(sc.proc.pid)
    statuses = set()
    for _ in range(repeat):
        statuses.add(send_big_target(sc))
    cpu_ms = (cpu_seconds(sc.proc.pid) - before) * 1000 / repeat
    authorised, stop = [], threading.Event()
    flood = threading.Thread(target=lambda: [send_big_target(sc) for _ in iter(stop.is_set, True)])
    flood.start()  # 1 MB targets back to back while the authorised requests are answered
    try:
        for _ in range(20):
            auth_status, auth_s = authorised_seconds(sc)
            authorised.append(auth_s)
    finally:
        stop.set()
        flood.join()
    return {"status": sorted(statuses), "sidecar_cpu_ms_per_target": round(cpu_ms, 2), "authorised_status": auth_status,
            "authorised_ms_median": round(sorted(authorised)[len(authorised) // 2] * 1000, 1)}


def send_big_target(sc: SidecarProcess) -> int:
    with socket.create_connection((sc.host, sc.port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(sock, timeout=30).status


def dripping_head(sc: SidecarProcess) -> dict:
    with socket.create_connection((sc.host, sc.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        status = None
        sock.settimeout(0.5)
        for i in range(40):
            try:
                sock.sendall(b"X-%d: 1\r\n" % i)
                if sock.recv(1, socket.MSG_PEEK):
                    sock.settimeout(10)
                    status = read_response(sock).status
                    break
            except (TimeoutError, BlockingIOError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
    return {"status": status, "closed_after_s": round(time.monotonic() - started, 2)}


def flood(sc: SidecarProcess, count: int, payload: bytes, receive_window: int | None = None) -> dict:
    log_lines = len(sc.logs().splitlines())
    rss_before = rss_mb(sc.proc.pid)
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(count):
        try:
            sock = socket.socket()
            sock.settimeout(5)
            if receive_window is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_window)
            sock.connect((sc.host, sc.port))
            sock.sendall(payload)
            socks.append(sock)
        except OSError:
            refused += 1
    time.sleep(1.0)
    peak = rss_mb(sc.proc.pid)
    for sock in socks:
        sock.close()
    time.sleep(1.0)
    status, seconds = authorised_seconds(sc)
    return {
        "connections": count, "client_side_errors": refused, "process_alive": sc.proc.poll() is None,
        "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(peak, 1), "rss_after_mb": round(rss_mb(sc.proc.pid), 1),
        "log_lines_added": len(sc.logs().splitlines()) - log_lines,
        "authorised_after_status": status, "authorised_after_ms": round(seconds * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(args.connections, hard - 200)
    report: dict = {"connections_requested": args.connections, "fd_limit": hard}
    with DemoBackend() as backend, tempfile.TemporaryDirectory() as work:
        config = {"sidecar": {"upstream": backend.url, "timeouts": {"headReadSeconds": 3}, "logLevel": "WARNING",
                              "auditLog": str(Path(work) / "audit.jsonl")},
                  "gateway": {"auth": {"mode": "token", "token": TOKEN}}}
        sc = SidecarProcess(config, Path(work))
        try:
            report["big_target"] = big_target(sc)
            print("big_target", report["big_target"], flush=True)
            report["dripping_head"] = dripping_head(sc)
            print("dripping_head", report["dripping_head"], flush=True)
            report["idle_partial_heads"] = flood(sc, count, b"GET / HTTP/1.1\r\nHo")
            print("idle_partial_heads", report["idle_partial_heads"], flush=True)
            time.sleep(4)  # let the head deadlines of the first flood pass
            report["slow_bodies"] = flood(sc, count, b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            print("slow_bodies", report["slow_bodies"], flush=True)
            time.sleep(4)
            # Slow readers: a complete request each (refused with 401), a 1 KiB receive window and
            # never a byte read. (A pipelined flood is a throughput question: bench/run.py.)
            report["slow_readers"] = flood(sc, count, SLOW_READER_REQUEST, receive_window=1024)
        finally:
            sc.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
