"""The admin listener (`sidecar.adminListen`): /healthz, /readyz and /metrics, never on the
proxied port. Engine-agnostic: a stdlib threading HTTP server, so a probe is answered even while
the proxy's event loop is busy, and a slow upstream check never stalls the proxy."""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import REGISTRY

log = logging.getLogger("sidecar.admin")
UPSTREAM_CHECK_SECONDS = 2.0
# A probe or a scrape sends its request at once: a connection idle longer is dropped, and at most
# this many are served at a time (each holds a thread), so half-sent heads cannot pile up threads.
ADMIN_IDLE_SECONDS = 5.0
ADMIN_MAX_CONNECTIONS = 64


@dataclass
class Health:
    """What /readyz reports; flipped by the runner from the event loop, read by probe threads."""

    upstream: str
    listening: bool = False
    draining: bool = False

    def readiness(self) -> tuple[bool, str]:
        if not self.listening:
            return False, "not listening yet"
        if self.draining:
            return False, "draining"
        return upstream_ready(self.upstream)


def upstream_ready(upstream: str) -> tuple[bool, str]:
    """Ready when the gateway answers `/startupz` below 500: the pod is Ready only once the gateway
    has started. Not its `/readyz`, which turns 503 when one messaging channel fails and would take
    the tool API out of the Service with it; a backend without the route answers 404, still up."""
    try:
        response = httpx.get(f"{upstream}/startupz", timeout=UPSTREAM_CHECK_SECONDS)
    except httpx.HTTPError as exc:
        return False, f"upstream unreachable: {type(exc).__name__}"
    if response.status_code >= 500:
        return False, f"upstream not ready: {response.status_code}"
    return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: "AdminServer"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_seconds)  # a half-sent head ends the connection

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "application/json", b'{"ok":true,"status":"live"}')
        elif path == "/readyz":
            ready, why = self.server.health.readiness()
            body = json.dumps({"ready": ready, "reason": why}).encode()
            self._send(200 if ready else 503, "application/json", body)
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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not logged
        pass


class AdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, health: Health, *, idle_seconds: float = ADMIN_IDLE_SECONDS,
                 max_connections: int = ADMIN_MAX_CONNECTIONS) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.health = health
        self.idle_seconds = idle_seconds
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # every slot taken: closed at once, no thread started
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="sidecar-admin", daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

