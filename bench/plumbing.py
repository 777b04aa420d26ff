"""Process and measurement plumbing shared by every bench scenario: ports, child processes pinned
to a CPU, /proc readings (CPU, RSS, descriptors, foreign load), nginx, wrk with Lua scripts, the
sidecar as a child process and a small keep-alive HTTP client for Python-side load.

Everything binds and connects to loopback only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU, LOAD_CPU = "0", "1"  # the system under test alone on CPU0; load and backends on CPU1
NGINX_BODY = '{"ok":true,"result":{"agents":[{"id":"main","default":true}]}}'


def invoke_body(tool: str) -> bytes:
    """A ~200-byte /tools/invoke body, the same size whatever the tool."""
    return json.dumps({"tool": tool, "args": {"filter": "x" * (160 + len("agents_list") - len(tool))}}).encode()


# ---- ports ------------------------------------------------------------------------------------


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


# ---- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime+stime of every thread of `pid` (the audit writer and admin threads included)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _our_cpu_seconds() -> float:
    """CPU of this process and every descendant, reaped children included (cutime/cstime), so a
    window's foreign load is the machine's busy time minus ours."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError):
                continue
    ours, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in ours:
                ours.add(pid)
                frontier.append(pid)
    total = 0.0
    for pid in ours:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / CLK_TCK
    return total


@dataclass
class LoadWindow:
    """Machine CPU during a measurement window: busy cores that were not ours (another user's
    benchmark on this shared machine) and steal (the hypervisor's), both in cores."""

    started: float = field(default_factory=time.monotonic)
    _stat: list[int] = field(default_factory=lambda: LoadWindow._proc_stat())
    _ours: float = field(default_factory=_our_cpu_seconds)

    @staticmethod
    def _proc_stat() -> list[int]:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]

    def end(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        now, ours = self._proc_stat(), _our_cpu_seconds()
        delta = [b - a for a, b in zip(self._stat, now)]
        busy = (delta[0] + delta[1] + delta[2]) / CLK_TCK  # user, nice, system (irq time has no owner)
        return {"foreign_cores": round(max(0.0, busy - (ours - self._ours)) / elapsed, 2),
                "steal_cores": round(delta[7] / CLK_TCK / elapsed, 2) if len(delta) > 7 else 0.0}


# ---- child processes ---------------------------------------------------------------------------


class Service:
    """A child process listening on `port`, optionally pinned with taskset; output goes to a log
    file in `workdir`."""

    def __init__(self, name: str, cmd: list[str], workdir: Path, *, port: int, cpus: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        prefix = ["taskset", "-c", cpus] if cpus is not None else []
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*prefix, *cmd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})}, cwd=REPO)
        self.port = port
        try:
            wait_port(port, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{name}: {exc}\n{self.log.read_text(errors='replace')[-3000:]}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the command: same pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_nginx(workdir: Path) -> Service:
    """A fixed-response backend (one worker on the load CPU): never the limit."""
    return _nginx("nginx", workdir, f"default_type application/json; return 200 '{NGINX_BODY}';", cpus=LOAD_CPU)


def start_nginx_proxy(workdir: Path, upstream_port: int) -> Service:
    """A native reverse proxy, keep-alive both sides, nothing judged: what any proxy hop costs here."""
    return _nginx("nginx-proxy", workdir, "proxy_pass http://upstream; proxy_http_version 1.1; "
                  'proxy_set_header Connection ""; proxy_buffering off;',
                  f"upstream upstream {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}", cpus=None)


def start_python_hop(workdir: Path, upstream_port: int, judged_by: str | None = None) -> Service:
    """Reference (c), `bench/python_hop.py`: a Python relay without mitmproxy; with `judged_by`,
    each call judged by the pipeline of that sidecar's config file."""
    port = free_port()
    judge = ["--judge", str(workdir / f"{judged_by}.json")] if judged_by else []
    return Service(f"python-hop{'-judged' if judged_by else ''}",
                   [str(VENV_BIN / "python"), "-m", "bench.python_hop", *judge, str(port), str(upstream_port)],
                   workdir, cpus=None, port=port)


def _nginx(name: str, workdir: Path, location: str, http_extra: str = "", *, cpus: str | None) -> Service:
    port, tmp = free_port(), workdir / name
    tmp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp}; keepalive_requests 1000000; {http_extra}
  server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }} }}
""")
    return Service(name, ["nginx", "-c", str(conf), "-p", str(tmp)], workdir, cpus=cpus, port=port)


class SidecarService(Service):
    """A sidecar child process; `admin_port` serves its /metrics."""

    def __init__(self, name: str, cmd: list[str], workdir: Path, *, port: int, admin_port: int,
                 cpus: str | None = None) -> None:
        super().__init__(name, cmd, workdir, port=port, cpus=cpus)
        self.admin_port = admin_port


def start_sidecar(name: str, workdir: Path, upstream: str, settings: dict[str, Any] | None = None,
                  rules: dict[str, Any] | None = None, *, cpus: str | None = PROXY_CPU) -> SidecarService:
    """`openclaw-sidecar run --config FILE`; `settings` merge into the `sidecar:` section, `rules`
    (gateway, tools...) beside it. The audit log goes to a file, as a deployment would ship it."""
    port, admin = free_port(), free_port()
    sidecar = {"listen": f"127.0.0.1:{port}", "adminListen": f"127.0.0.1:{admin}", "upstream": upstream,
               "runtimeDir": str(workdir / f"{name}-run"), "logLevel": "WARNING",
               "auditLog": str(workdir / f"{name}-audit.jsonl"), **(settings or {})}
    config = {"sidecar": sidecar, **_merge({"gateway": {"auth": {"mode": "token", "token": TOKEN}}}, rules or {})}
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return SidecarService(name, [str(VENV_BIN / "openclaw-sidecar"), "run", "--config", str(path)], workdir,
                          cpus=cpus, port=port, admin_port=admin)


def start_bare_master(name: str, workdir: Path, sidecar_name: str, flags: tuple[str, ...] = (), *,
                      cpus: str | None = PROXY_CPU) -> Service:
    """Reference (a), `bench/bare_master.py`, read from sidecar `sidecar_name`'s config file but
    listening elsewhere: same options, same upstream, no enforcement."""
    port = free_port()
    config = json.loads((workdir / f"{sidecar_name}.json").read_text())
    config["sidecar"].update(listen=f"127.0.0.1:{port}", runtimeDir=str(workdir / f"{name}-run"))
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    return Service(name, [str(VENV_BIN / "python"), "-m", "bench.bare_master", *flags, str(path)], workdir,
                   cpus=cpus, port=port)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        base[key] = _merge(dict(base[key]), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def metrics(admin_port: int) -> dict[str, float]:
    """The admin listener's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


# ---- wrk --------------------------------------------------------------------------------------

_STATUS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do io.write(string.format("status %d %d\\n", code, n)) end
  end
end
"""


def wrk_script(workdir: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script: POST `body` with `headers`, counting answers by status."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in {"Content-Type": "application/json", **headers}.items()]
    path = workdir / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n" + _STATUS_LUA)
    return path


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: str | None


class Wrk:
    """wrk (one thread) started in the background; `result()` waits for its summary."""

    def __init__(self, url: str, script: Path, connections: int, seconds: float, *, cpus: str | None = LOAD_CPU,
                 timeout_s: int = 10) -> None:
        # wrk reads whole seconds only ("5.0s" is a usage error): --seconds 5 arrives as 5.0
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s", "--latency", "-s", str(script), url]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.seconds = seconds
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> WrkResult:
        out, _ = self.proc.communicate(timeout=self.seconds + 60)
        if self.proc.returncode:
            raise RuntimeError(f"wrk failed ({self.proc.returncode}): {out[-2000:]}")
        return parse_wrk(out)


def run_wrk(url: str, script: Path, connections: int, seconds: float, *, cpus: str | None = LOAD_CPU) -> WrkResult:
    return Wrk(url, script, connections, seconds, cpus=cpus).result()


def parse_wrk(out: str) -> WrkResult:
    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        return float(match.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[match.group(2)] if match else float("nan")

    errors = re.search(r"Socket errors: (.*)", out)
    return WrkResult(
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=ms("50%"), p99_ms=ms("99%"),
        statuses={int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)},
        socket_errors=errors.group(1).strip() if errors else None,
    )


# ---- a keep-alive HTTP/1.1 client for Python-side load -----------------------------------------


class RawClient:
    """One keep-alive connection sending the same request over and over, from `source` (so a
    client can be told apart from a flood on loopback). Cheap enough not to limit a few hundred
    requests a second; reconnects when the server closes."""

    def __init__(self, port: int, request: bytes, source: str = "127.0.0.1") -> None:
        self.port, self.request, self.source = port, request, source
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket()
        sock.settimeout(30)
        sock.bind((self.source, 0))
        sock.connect(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def once(self) -> int:
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.sendall(self.request)
            status, close = self._read_response()
        except OSError:
            self.close()
            return 0
        if close:
            self.close()
        return status

    def _read_response(self) -> tuple[int, bool]:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lower = head.lower()
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        length = int(match.group(1)) if match else 0
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        self.buf = self.buf[length:]
        return int(head[9:12]), b"\r\nconnection: close" in lower

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoopResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def client_loop(port: int, request: bytes, connections: int, seconds: float, source: str = "127.0.0.1",
                pause_s: float = 0.0, stop: threading.Event | None = None) -> LoopResult:
    """`connections` threads, each one keep-alive RawClient in a closed loop for `seconds`."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        client, mine, codes = RawClient(port, request, source), [], Counter[int]()
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            started = time.perf_counter()
            codes[client.once()] += 1
            mine.append((time.perf_counter() - started) * 1000)
            if pause_s:
                time.sleep(pause_s)
        client.close()
        with lock:
            latencies.extend(mine)
            statuses.update(codes)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoopResult(len(latencies), time.monotonic() - started, latencies, statuses)
