"""Throughput, latency and CPU per request of the sidecar vs bare mitmdump, on this machine.

    .venv/bin/python bench/run.py [--seconds 8]

Needs Debian's wrk and nginx (a fixed-response backend, so the backend is never the limit).
The system under test runs on CPU0 and wrk plus nginx on CPU1, as in perf-baseline.md.
CPU per request = (utime+stime of the proxy process) / requests: the most stable number here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TOKEN = "bench-token"
BODY = json.dumps({"tool": "agents_list", "args": {"filter": "x" * 160}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError(f"port {port} never opened")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_nginx(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
    return 200 '{{"ok":true,"result":{{"agents":[{{"id":"main","default":true}}]}}}}'; }} }} }}
""")
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def wrk(port: int, connections: int, seconds: int, script: Path) -> dict:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/tools/invoke"], capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms("50%"), "p99_ms": ms("99%"), "non2xx": int(non2xx.group(1)) if non2xx else 0}


def measure(name: str, cmd: list[str], port: int, seconds: int, script: Path, env: dict | None = None) -> list[dict]:
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        startup = wait_port(port)
        wrk(port, 4, 2, script)  # warm-up
        rows = []
        for connections in (1, 32):
            before = cpu_seconds(proc.pid)
            result = wrk(port, connections, seconds, script)
            cpu = cpu_seconds(proc.pid) - before
            result.update(config=name, c=connections, startup_s=round(startup, 2),
                          cpu_us_per_req=round(cpu / max(result["requests"], 1) * 1e6),
                          rss_mb=round(int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 1024))
            rows.append(result)
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install wrk nginx-light util-linux")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        nginx, backend_port = start_nginx(tmp)
        rows: list[dict] = []
        try:
            for label, tool in (("allowed (200)", "agents_list"), ("denied tool (404)", "exec")):
                script = tmp / f"{tool}.lua"
                body = BODY.replace("agents_list", tool)
                script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                                  f'wrk.headers["Content-Type"] = "application/json"\n'
                                  f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n')
                port = free_port()
                config = tmp / "sidecar.json"
                config.write_text(json.dumps({
                    "sidecar": {"listen": f"127.0.0.1:{port}", "upstream": f"http://127.0.0.1:{backend_port}",
                                "runtimeDir": str(tmp / "run"), "logLevel": "WARNING"},
                    "gateway": {"auth": {"mode": "token", "token": TOKEN}}}))
                rows += measure(f"sidecar, {label}", [str(VENV_BIN / "openclaw-sidecar"), "run", "--config", str(config)],
                                port, args.seconds, script)
                if tool == "agents_list":
                    port = free_port()
                    rows += measure("bare mitmdump -q, no addon", [str(VENV_BIN / "mitmdump"), "-q", "--mode",
                                    f"reverse:http://127.0.0.1:{backend_port}", "-p", str(port),
                                    "--set", f"confdir={tmp / 'mitm'}"], port, args.seconds, script)
        finally:
            nginx.terminate()
            nginx.wait(5)
    print("| config | c | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MB | startup s | non-2xx |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['c']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['cpu_us_per_req']} | {r['rss_mb']} | {r['startup_s']} | {r['non2xx']} |")
    out = REPO / "bench" / "results.json"
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
