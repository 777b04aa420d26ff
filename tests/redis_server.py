"""A real, throw-away ``redis-server`` for tests.

``RedisServer`` starts the binary on a free loopback port in a private temporary
directory with persistence switched off, and can ``stop()`` and ``start()`` it
again on the *same* port (that is how tests simulate a Redis outage and its
recovery without changing the storage URI the code under test was given)::

    with RedisServer() as server:
        url = server.url          # redis://127.0.0.1:<port>/0
        server.stop()             # outage: connections are refused
        server.start()            # back, same port, empty data set
        server.flushall()

The binary is taken from ``$REDIS_SERVER_BIN``, else ``redis-server`` on ``PATH``,
else ``/usr/bin/redis-server``; ``find_redis_server()`` returns None when there is
none, so a fixture can skip (``make test`` runs ``scripts/ensure-redis`` first).
Only the standard library is used here, so the helper also works without redis-py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

try:
    from tests.ports import free_port
except ImportError:  # tests/ itself is on sys.path (see tests/conftest.py)
    from ports import free_port  # type: ignore[no-redef]

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "free_port"]


class RedisServerError(RuntimeError):
    """The redis-server could not be started or did not answer."""


def find_redis_server() -> str | None:
    """Path of a usable redis-server binary, or None."""
    candidates = [os.environ.get("REDIS_SERVER_BIN"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _resp(*parts: str) -> bytes:
    payload = f"*{len(parts)}\r\n".encode()
    for part in parts:
        raw = part.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return payload


def _ping(host: str, port: int, password: str | None, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on host:port (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if password is not None:
                sock.sendall(_resp("AUTH", password))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(_resp("PING"))
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process bound to ``host:port``; restartable on the same port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise RedisServerError("no redis-server binary found (set REDIS_SERVER_BIN or install redis-server)")
        self.binary = found
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.extra_args = tuple(extra_args)
        self.password = password  # requirepass: every client must AUTH first
        self._tmp = tempfile.TemporaryDirectory(prefix="sidecar-redis-")
        self.dir = Path(self._tmp.name)
        self.logfile = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://host:port/0`` - the value a sidecar config would carry."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart after ``stop()``) on the same port; returns once PING answers."""
        if self.running:
            return self
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.logfile),
            *(("--requirepass", password) if (password := self.password) is not None else ()),
            *self.extra_args,
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            self._proc = subprocess.Popen(
                args, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _ping(self.host, self.port, self.password):
                    return self
                time.sleep(0.02)
            exited = self._proc.poll() is not None
            self._kill()
            # An exit right after a restart is usually the old socket not released yet: retry.
            if not exited or time.monotonic() >= deadline:
                raise RedisServerError(f"redis-server did not come up on {self.host}:{self.port}: {self._log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port is closed when this returns."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        deadline = time.monotonic() + timeout
        while _ping(self.host, self.port, self.password, timeout=0.1) and time.monotonic() < deadline:
            time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing is answered (a hung primary, a partition)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        self.stop(timeout)
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        self._tmp.cleanup()

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # -- data ------------------------------------------------------------------------

    def command(self, *parts: str, timeout: float = 2.0) -> bytes:
        """Send one command (raw RESP) and return the first reply chunk (tests' small needs)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            if self.password is not None:
                sock.sendall(_resp("AUTH", self.password))
                sock.recv(64)
            sock.sendall(_resp(*parts))
            return sock.recv(65536)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RedisServerError(f"FLUSHALL failed: {reply!r}")

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state}>"
