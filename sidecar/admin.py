"""The admin listener (`sidecar.adminListen`): /healthz, /readyz and /metrics, never on the
proxied port. Engine-agnostic: a stdlib threading HTTP server, so a probe is answered even while
the proxy's event loop is busy, and a slow upstream check never stalls the proxy."""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import UpstreamTlsSettings, http_url
from .ipaddrs import share_key
from .metrics import REGISTRY, UPSTREAM_RELEASE, UPSTREAM_RELEASE_MISMATCH
from .routes import GATEWAY_VERSION
from .upstream_tls import certificate_matches, peer_certificate, probe_context

log = logging.getLogger("sidecar.admin")
UPSTREAM_CHECK_SECONDS = 2.0
# httpx's timeouts bound each connect and read, not the exchange: the whole check, connect, TLS
# handshake, head and body, ends this long after it starts however slowly the upstream sends.
UPSTREAM_CHECK_DEADLINE_SECONDS = 2 * UPSTREAM_CHECK_SECONDS
# The gateway's /startupz answer is ~70 bytes; a backend's longer page is not read past this.
STARTUP_ANSWER_MAX_BYTES = 4096
# What a release may look like to be logged and exported as a label (2026.9.6, 2026.10.0-beta.1).
RELEASE_SHAPE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
# A probe or a scrape sends its request at once and is answered in milliseconds: a connection idle
# longer than ADMIN_IDLE_SECONDS is dropped, and one whose request head has not arrived within
# ADMIN_HEAD_SECONDS is cut (a head dribbled a byte at a time never idles; a kept-alive scrape
# connection is never cut while its answer is made), as is one whose answer, once made, has not
# been taken within ADMIN_HEAD_SECONDS. At most ADMIN_MAX_CONNECTIONS are served at a
# time (each holds a thread), ADMIN_MAX_PER_CLIENT of them from one address (one /64 for IPv6), so
# one client that dribbles cannot take every slot and have the kubelet's probes refused and the
# pod restarted. Nor can many: while every slot is held, a new connection takes the slot of the
# one waiting longest for a head (as on the proxied port), and is refused only while every slot
# is being answered.
ADMIN_IDLE_SECONDS = 5.0
ADMIN_HEAD_SECONDS = 10.0
ADMIN_MAX_CONNECTIONS = 64
ADMIN_MAX_PER_CLIENT = 8
# A probe's or a scrape's head is a few hundred bytes; the stdlib bounds one only at 100 lines of
# 64 KiB each, and 40 connections holding such heads unfinished took the sidecar past its memory
# limit (red team). Past this a head is refused with 431, as on the proxied port (Node's limit).
ADMIN_MAX_HEAD_BYTES = 16 * 1024
_REAP_TICK_SECONDS = 0.25


class UpstreamCheck(NamedTuple):
    ready: bool
    reason: str
    release: str | None = None  # the gateway release the upstream reported, when it reports one


@dataclass
class Health:
    """What /readyz reports; flipped by the runner from the event loop, read by probe threads."""

    upstream: str
    tls: UpstreamTlsSettings = field(default_factory=UpstreamTlsSettings)
    listening: bool = False
    draining: bool = False

    def __post_init__(self) -> None:
        # Built once: loading a CA bundle for every probe cost each one milliseconds of CPU.
        self.verify = probe_context(self.tls.ca_file, self.tls.fingerprint)
        self._lock = threading.Lock()
        self._check_in_flight: Future[UpstreamCheck] | None = None
        self.upstream_release: str | None = None  # the last one the upstream reported

    def readiness(self) -> UpstreamCheck:
        if not self.listening:
            return UpstreamCheck(False, "not listening yet")
        if self.draining:
            return UpstreamCheck(False, "draining")
        return self._upstream_readiness()

    def _upstream_readiness(self) -> UpstreamCheck:
        """One upstream check at a time: a probe arriving while one is in flight takes its answer,
        so a flood of /readyz (64 slots) costs the gateway one request at a time, not 64."""
        with self._lock:
            check, leading = self._check_in_flight, self._check_in_flight is None
            if check is None:
                check = self._check_in_flight = Future()
        if leading:
            try:
                answer = upstream_ready(self.upstream, self.tls.fingerprint, self.verify)
                self._note_release(answer.release)
                check.set_result(answer)
            except BaseException as exc:  # every probe waiting on it is answered, each logs it
                check.set_exception(exc)
            finally:
                with self._lock:
                    self._check_in_flight = None
        return check.result()

    def _note_release(self, release: str | None) -> None:
        """The sidecar's routes, RPC methods and refusals are the described release's: a gateway
        upgraded under it is said once, when its release first shows, and exported for alerts."""
        if release is None or release == self.upstream_release:
            return
        self.upstream_release = release
        UPSTREAM_RELEASE.info({"release": release, "described": GATEWAY_VERSION})
        UPSTREAM_RELEASE_MISMATCH.set(release != GATEWAY_VERSION)
        if release != GATEWAY_VERSION:
            log.warning("the upstream gateway reports release %s, and this sidecar describes %s: routes and RPC "
                        "methods added since are refused, and ones changed since are judged as %s judged them",
                        release, GATEWAY_VERSION, GATEWAY_VERSION)


def upstream_ready(upstream: str, pin: str | None, verify: ssl.SSLContext) -> UpstreamCheck:
    """Ready when the gateway answers `/startupz` below 500: the pod is Ready only once the gateway
    has started. Not its `/readyz`, which turns 503 when one messaging channel fails and would take
    the tool API out of the Service with it; a backend without the route answers 404, still up.
    Its certificate is trusted as the proxy trusts it, so a wrong pin shows here, not as 502s."""
    with _Deadline(UPSTREAM_CHECK_DEADLINE_SECONDS) as deadline:
        try:
            with httpx.Client(verify=verify, trust_env=False, timeout=UPSTREAM_CHECK_SECONDS) as client:
                with client.stream("GET", f"{upstream}/startupz", headers={"Accept-Encoding": "identity"},
                                   extensions={"trace": deadline.trace}) as response:
                    if pin is not None and not certificate_matches(peer_certificate(response) or b"", pin):
                        return UpstreamCheck(False, "upstream certificate does not match sidecar.upstreamTls.fingerprint")
                    status = response.status_code
                    release = _reported_release(response)
        except httpx.HTTPError as exc:
            if deadline.passed:
                return UpstreamCheck(False, f"upstream unreachable: no answer within {UPSTREAM_CHECK_DEADLINE_SECONDS:g} s")
            return UpstreamCheck(False, f"upstream unreachable: {type(exc).__name__}")
    if status >= 500:
        return UpstreamCheck(False, f"upstream not ready: {status}")
    return UpstreamCheck(True, "ok", release)


def _reported_release(response: httpx.Response) -> str | None:
    """The `version` of the gateway's `/startupz` answer, which it gives a direct local caller
    (the sidecar is one); None from a backend that says nothing of the kind, or not by the check's
    deadline. Read as sent, never decompressed: 2 KB of brotli decoded to 1 GiB in the admin
    thread, past the sidecar's memory limit (a compressed answer names no release)."""
    answer = b""
    try:
        for chunk in response.iter_raw():
            answer += chunk
            if len(answer) > STARTUP_ANSWER_MAX_BYTES:
                return None
        release = json.loads(answer).get("version")
    except (httpx.HTTPError, ValueError, AttributeError, RecursionError):
        return None
    return release if isinstance(release, str) and RELEASE_SHAPE.fullmatch(release) else None


class _Deadline:
    """Cuts an upstream check's connection at its deadline: a head sent a byte a second never let
    a read time out, and held the check, and every probe waiting on it with its admin slot, for as
    long as it went on (the kubelet's probes filled their address's share of the admin port, its
    /healthz was closed at accept, and the sidecar would be restarted). The connection is cut
    through a duplicate of its socket, which the check cannot close under it (a TLS socket
    replaces the one it wraps)."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.passed = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's `trace` extension: the connection, as soon as it is made."""
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket").dup()
            if self.passed:
                self._cut()

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            if self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class _HeadReader(io.BufferedIOBase):
    """A connection's input, whose lines stop at `left` bytes while one is set: the header lines
    `http.client.parse_headers` reads end in a 431 at the budget, not at 100 lines of 64 KiB."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__()
        self._file = file
        self.left: int | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        return self._file.read(size)

    def readline(self, size: int | None = -1, /) -> bytes:
        if self.left is None:
            return self._file.readline(size)
        if self.left >= 0:
            limit = self.left + 1  # one byte past the budget tells it was passed
            line = self._file.readline(limit if size is None or size < 0 else min(size, limit))
            self.left -= len(line)
            if self.left >= 0:
                return line
        raise http.client.HTTPException(f"request head over {ADMIN_MAX_HEAD_BYTES} bytes")

    def close(self) -> None:
        self._file.close()
        super().close()


class _Handler(BaseHTTPRequestHandler):
    server: "AdminServer"
    raw_requestline: bytes  # the stdlib's, not in its stubs
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        """The Server header: the stdlib's names the exact Python release (the admin red team)."""
        return "openclaw-sidecar"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_seconds)  # a half-sent head ends the connection
        self.rfile = self._head = _HeadReader(self.rfile)

    def handle_one_request(self) -> None:
        self.server.await_head(self.connection)  # each head, the next one on a kept-alive connection too
        self._head.left = None  # the request line: the stdlib's 64 KiB bound, then a 414
        super().handle_one_request()

    def parse_request(self) -> bool:
        self._head.left = ADMIN_MAX_HEAD_BYTES - len(self.raw_requestline)
        try:
            parsed = super().parse_request()
        finally:
            self._head.left = None
        self.server.head_arrived(self.connection)
        return parsed

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "application/json", b'{"ok":true,"status":"live"}')
        elif path == "/readyz":
            try:
                check = self.server.health.readiness()
            except Exception:  # answered, not a dropped connection the kubelet would retry blind
                log.exception("readiness check failed")
                check = UpstreamCheck(False, "readiness check failed")
            answer: dict[str, object] = {"ready": check.ready, "reason": check.reason}
            if check.release is not None:
                answer.update(upstreamRelease=check.release, describedRelease=GATEWAY_VERSION)
            self._send(200 if check.ready else 503, "application/json", json.dumps(answer).encode())
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        else:
            self._send(404, "text/plain; charset=utf-8", b"Not Found")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.server.answer_ready(self.connection)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's error answers (501 for a method not served, 400, 414, 431) are answers too:
        made, they must be taken in time like any other. A 501 echoes the method, ~16 KiB of it,
        twice; written with no deadline, a client that did not read it held its slot unreclaimable."""
        self.server.answer_ready(self.connection)
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not logged
        pass


def _client_key(client_address: object) -> str:
    return share_key(str(client_address[0]) if isinstance(client_address, tuple) else str(client_address))


class AdminServer(ThreadingHTTPServer):
    daemon_threads = True
    # Connections not yet accepted wait in the kernel: the stdlib's 5 overflowed while the accept
    # thread waited for the GIL under a reconnecting flood, and the kubelet's SYN was dropped
    # (its connect took 1, 3, 7 s against a 2 s probe timeout; red team).
    request_queue_size = 2 * ADMIN_MAX_CONNECTIONS

    def __init__(self, host: str, port: int, health: Health, *, idle_seconds: float = ADMIN_IDLE_SECONDS,
                 head_seconds: float = ADMIN_HEAD_SECONDS, max_connections: int = ADMIN_MAX_CONNECTIONS,
                 max_per_client: int = ADMIN_MAX_PER_CLIENT) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.health = health
        self.idle_seconds = idle_seconds
        self.head_seconds = head_seconds
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._lock = threading.Lock()
        # connection -> (client, deadline for the head it waits for; infinity while one is answered)
        self._open: dict[socket.socket, tuple[str, float]] = {}
        self._per_client: Counter[str] = Counter()
        # Connections cut to make room, in the books until their thread has seen the end of input.
        self._leaving: set[socket.socket] = set()
        self._stopping = threading.Event()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        client = _client_key(client_address)
        with self._lock:
            admitted = self._per_client[client] < self.max_per_client and (
                len(self._open) - len(self._leaving) < self.max_connections or self._make_room())
            if admitted:
                self._open[request] = (client, time.monotonic() + self.head_seconds)
                self._per_client[client] += 1
        if not admitted:
            super().shutdown_request(request)  # no slot for it: closed at once, no thread started
            return
        super().process_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        """socketserver prints a traceback for any error in a handler; a client that hung up or was
        cut (the reaper, a probe's timeout) is no error, anything else is logged once, quietly."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            log.warning("admin request from %s failed: %r", client_address, error)

    def _make_room(self) -> bool:
        """Every slot is held (under the lock): the connection waiting longest for a head is cut
        now, as its deadline would cut it later, and the new one takes its slot. Many addresses,
        each within its share, held every slot with heads never finished, and the kubelet's
        probes were closed at accept (red team). False when every slot is being answered, or
        when as many cut connections are still finishing (a flood outran their threads)."""
        if len(self._leaving) >= self.max_connections:
            return False
        waiting = [(deadline, connection) for connection, (_, deadline) in self._open.items()
                   if deadline != math.inf and connection not in self._leaving]
        if not waiting:
            return False
        _, oldest = min(waiting, key=lambda item: item[0])
        self._leaving.add(oldest)
        try:
            oldest.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """The connection leaves the books before it is closed, so the reaper never touches it after."""
        with self._lock:
            self._leaving.discard(request)
            client, _ = self._open.pop(request)
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
        super().shutdown_request(request)

    def await_head(self, connection: socket.socket) -> None:
        """A deadline already running (from the accept, or from the last answer being made)
        stands: a thread the scheduler started late gives its connection no extra time, and the
        connection waiting longest for a head is the one accepted first."""
        with self._lock:
            client, deadline = self._open[connection]
            if deadline == math.inf:
                self._open[connection] = (client, time.monotonic() + self.head_seconds)

    def head_arrived(self, connection: socket.socket) -> None:
        self._set_deadline(connection, math.inf)

    def answer_ready(self, connection: socket.socket) -> None:
        """The answer is made: it must be taken as a head must come, in time, and while the client
        has not taken it the slot may be made room from. Clients that pipelined requests and read
        their answers a little at a time held every slot mid-write, never waiting for a head, and
        the kubelet's probes were closed at accept (red team)."""
        self._set_deadline(connection, time.monotonic() + self.head_seconds)

    def _set_deadline(self, connection: socket.socket, deadline: float) -> None:
        with self._lock:
            client, _ = self._open[connection]
            self._open[connection] = (client, deadline)

    def _reap(self) -> None:
        """Cut the connections whose head is late; their threads see the end of input and finish."""
        while not self._stopping.wait(_REAP_TICK_SECONDS):
            now = time.monotonic()
            with self._lock:  # under the lock: a connection in the books is not closed yet
                for connection, (_, deadline) in self._open.items():
                    if deadline <= now:
                        try:
                            connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

    @property
    def url(self) -> str:
        return http_url(str(self.server_address[0]), self.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="sidecar-admin", daemon=True).start()
        threading.Thread(target=self._reap, name="sidecar-admin-reaper", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.shutdown()
        self.server_close()

