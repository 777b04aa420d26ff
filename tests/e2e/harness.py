"""End-to-end plumbing: the sidecar as a real process, raw HTTP over real sockets, and test
hosts with real non-loopback addresses in a network namespace of our own.

Everything here talks only to loopback or to the TEST-NET addresses inside the namespace the
tests create (203.0.113.0/24 for clients, 198.51.100.0/24 for proxies).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import netns

REPO = Path(__file__).resolve().parents[2]
LISTENING_PREFIX = "openclaw-sidecar listening on "
ADMIN_PREFIX = "openclaw-sidecar admin on "


class SidecarProcess:
    """`openclaw-sidecar run --config FILE` as a child process; stderr (logs) is collected."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), module: str = "sidecar") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        sidecar = config.setdefault("sidecar", {})
        sidecar.setdefault("listen", "127.0.0.1:0")
        sidecar.setdefault("adminListen", "127.0.0.1:0")
        sidecar.setdefault("runtimeDir", str(workdir / "run"))
        # Suites send long runs of refusals from one client on purpose; pacing them would only
        # slow the suite down. The pacing test and the probe's own runs set it (`{}`: the defaults).
        sidecar.setdefault("rateLimit", {}).setdefault("refusalPacing", {"baseDelayMs": 0})
        self.config_path = workdir / f"sidecar-{id(self)}.yaml"
        self.config_path.write_text(json.dumps(config))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCLAW_", "CLAWDBOT_"))}
        base_env.update(env or {})
        base_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(self.config_path), *extra_args],
            cwd=REPO, env=base_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self.admin_url: str | None = None
        self._listening = threading.Event()
        self._found: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        self.url = self._await_listening()
        host_port = self.url.removeprefix("http://")
        host, port = host_port.rsplit(":", 1)
        self.host, self.port = host.strip("[]"), int(port)

    def _drain_stderr(self) -> None:
        """The diagnostic log, with the admin and listening announcements (stdout is the audit log's alone)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith(ADMIN_PREFIX):
                self.admin_url = line[len(ADMIN_PREFIX):].split()[0]
            elif line.startswith(LISTENING_PREFIX):
                self._found.append(line[len(LISTENING_PREFIX):].strip())
                self._listening.set()
            self._stderr.append(line)
        self._listening.set()

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._stdout.append(line)

    def _await_listening(self, timeout: float = 20.0) -> str:
        self._listening.wait(timeout)
        if not self._found:
            self.stop()
            raise RuntimeError(f"sidecar did not start; stderr:\n{self.logs()}")
        return self._found[0]

    def logs(self) -> str:
        return "".join(self._stderr)

    def rss_mb(self) -> float:
        """The process's resident memory, for tests that bound what strangers can make it hold."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:", 1)[1].split()[0]) / 1024

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit log (stdout by default), one JSON object per line."""
        return [json.loads(line) for line in list(self._stdout) if line.startswith("{")]

    def stop(self) -> int:
        return stop_process(self.proc, signal.SIGTERM)


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length, chunked or close-delimited), skipping 1xx."""
    sock.settimeout(timeout)
    buf = b""

    def fill() -> bool:
        nonlocal buf
        data = sock.recv(65536)
        buf += data
        return bool(data)

    while True:
        while b"\r\n\r\n" not in buf:
            if not fill():
                raise ConnectionError(f"connection closed before a response head; got {buf!r}")
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _, status, *reason = lines[0].split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        if not 100 <= int(status) < 200:
            break
    response = RawResponse(int(status), reason[0] if reason else "", headers, b"")
    length = response.header("content-length")
    if length is not None:
        while len(buf) < int(length):
            if not fill():
                break
        response.body = buf[: int(length)]
    elif (response.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                fill()
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                fill()
            body, buf = body + buf[:size], buf[size + 2:]
            if size == 0:
                break
        response.body = body
    elif int(status) not in (204, 304):
        try:
            while fill():
                pass
        except (TimeoutError, ConnectionResetError):
            pass
        response.body = buf
    return response


def raw_exchange(address: tuple[str, int], data: bytes, sock: socket.socket | None = None,
                 timeout: float = 10.0) -> RawResponse:
    """Send raw bytes (any malformation httpx would refuse to write) and read one response."""
    conn = sock or socket.create_connection(address, timeout=timeout)
    try:
        if sock is not None:
            conn.settimeout(timeout)
            conn.connect(address)
        conn.sendall(data)
        return read_response(conn, timeout)
    finally:
        conn.close()


def http_request(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes = b"", host: str = "sidecar.test") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or [])]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class TestNet:
    """Client hosts with real addresses in a network namespace of their own, joined to this
    session's network by a veth pair, so the sidecar sees genuine non-loopback peers.

    Sockets for a source address are made inside the namespace (netns.in_thread). The session
    first moves into a network of its own (`prepare_session`), so that sessions at once (another
    person's, or the workers of `pytest -n`) each build the same subnets without meeting.
    """

    __test__ = False  # a fixture helper, not a test class

    HOST_ADDRESSES = ("203.0.113.1/24", "198.51.100.1/24")
    CLIENT_ADDRESSES = ("203.0.113.7", "203.0.113.8", "198.51.100.5", "198.51.100.6", "198.51.100.7")
    HOST_IP = "203.0.113.1"

    def __init__(self) -> None:
        suffix = f"{os.getpid() % 100000}"
        self.host_if, self.ns_if = f"ocs{suffix}a", f"ocs{suffix}b"

    @staticmethod
    def prepare_session() -> str | None:
        """Move this session into a network of its own (netns.enter_own_network), or say why it
        cannot have the test network. A session not run as root needs a user namespace for that,
        which the kernel allows only while the process has one thread: so this is called once,
        before the first test. Everything the session starts later (sidecars, redis-server, the
        real gateway) runs in that network too."""
        if shutil.which("ip") is None:
            return "iproute2's `ip` is missing (apt-get install iproute2)"
        if os.geteuid() == 0:  # a new network namespace either fails with nothing changed or works
            try:
                netns.enter_own_network()
                return None
            except (OSError, netns.NamespaceError) as exc:
                return f"no network namespace of our own here ({exc})"
        failure = netns.fails_in_child(netns.enter_own_network)
        if failure is None:
            try:
                netns.enter_own_network()
                return None
            except OSError as exc:  # it worked in the child: only a running thread (EINVAL, nothing changed)
                failure = str(exc)
        return f"not root, and no user + network namespace of our own here ({failure}); {netns.userns_advice()}"

    def __enter__(self) -> "TestNet":
        self.namespace_fd = netns.new_netns()
        try:
            netns.ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                     "netns", f"/proc/self/fd/{self.namespace_fd}", pass_fds=[self.namespace_fd])
            for address in self.HOST_ADDRESSES:
                netns.ip("addr", "add", address, "dev", self.host_if)
            netns.ip("link", "set", self.host_if, "up")
            netns.ip("link", "set", "lo", "up", netns=self.namespace_fd)
            for address in self.CLIENT_ADDRESSES:
                netns.ip("addr", "add", f"{address}/24", "dev", self.ns_if, netns=self.namespace_fd)
            netns.ip("link", "set", self.ns_if, "up", netns=self.namespace_fd)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(netns.NamespaceError):  # (not made when __enter__ failed early)
            netns.ip("link", "del", self.host_if)  # takes its peer along
        os.close(self.namespace_fd)

    def socket_from(self, source_ip: str) -> socket.socket:
        def bound() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source_ip, 0))
            return sock

        return netns.in_thread(bound, self.namespace_fd)

    def exchange(self, source_ip: str, address: tuple[str, int], data: bytes, timeout: float = 10.0) -> RawResponse:
        return raw_exchange(address, data, sock=self.socket_from(source_ip), timeout=timeout)


def stop_process(proc: subprocess.Popen, sig: signal.Signals) -> int:
    """Stops `proc` as its user would (`sig`), killed only if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
