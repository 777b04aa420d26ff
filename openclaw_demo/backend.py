"""A small, real tool-execution backend that speaks the OpenClaw Gateway HTTP API.

It is the upstream behind the sidecar in ``openclaw-sidecar demo`` and in the
end-to-end tests.  Stdlib only.

Endpoints
---------
``POST /tools/invoke``
    Gateway tool invocation (bearer auth when a token is configured).  The
    pathname is derived the way the gateway derives it (WHATWG URL parsing:
    ``\\`` is ``/``, dot segments -- also ``%2e`` -- are resolved, a leading
    ``//host`` or an absolute-form target supplies the authority, the query is
    ignored).  So a path trick that would reach the real gateway's tool
    endpoint reaches this one too, and an end-to-end test can see it.
``GET /healthz``
    ``{"ok":true}``.
``GET /ws`` with ``Upgrade: websocket``
    RFC 6455 handshake, then echoes every data frame back.
``GET|DELETE /__demo/requests``
    Control path (never recorded): read / clear the record of requests.
anything else
    200 ``{"ok":true,"path":<raw target>,"method":<method>}``.

Every request except ``/__demo/`` control requests is recorded as
``{"method","path","http_version","headers","body","body_length"}`` where
``path`` is the raw request target exactly as received and ``headers`` is a list
of ``[name, value]`` pairs in arrival order, original casing, duplicates kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.canonical import InvalidTarget, canonicalize_target

__all__ = ["DemoBackend", "serve_forever", "TOOLS", "gateway_pathname", "main"]

TOOLS_PATH = "/tools/invoke"
CONTROL_PREFIX = "/__demo/"
REQUESTS_PATH = "/__demo/requests"
WS_PATH = "/ws"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_WS_FRAME_BYTES = 1024 * 1024
MAX_SLOW_SECONDS = 30
# What the ``fail`` tool leaks on purpose: the sidecar must never pass it through.
LEAKY_FAIL_MESSAGE = "boom: /srv/secret/path"

JSON_CT = "application/json; charset=utf-8"
TEXT_CT = "text/plain; charset=utf-8"
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


# ---------------------------------------------------------------- tools


class _ToolCrash(Exception):
    """Raised by a tool to simulate a crash whose message leaks internals."""


def _agents_list(args: dict, stop: threading.Event) -> Any:
    return {"agents": [{"id": "main", "default": True}], "action": args.get("action")}


def _session_status(args: dict, stop: threading.Event) -> Any:
    return {"sessionKey": "agent:main:main", "status": "idle"}


def _sessions_list(args: dict, stop: threading.Event) -> Any:
    return {"sessions": [{"key": "agent:main:main"}]}


def _echo(args: dict, stop: threading.Event) -> Any:
    return {"args": args}


def _fail(args: dict, stop: threading.Event) -> Any:
    raise _ToolCrash(LEAKY_FAIL_MESSAGE)


def _slow(args: dict, stop: threading.Event) -> Any:
    raw = args.get("seconds")
    seconds = raw if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0
    seconds = min(max(seconds, 0), MAX_SLOW_SECONDS)
    stop.wait(seconds)  # returns early when the backend is stopped
    return {"slept": seconds}


@dataclass(frozen=True)
class Tool:
    properties: frozenset[str]  # the tool's parameter schema (property names)
    run: Callable[[dict, threading.Event], Any]


TOOLS: dict[str, Tool] = {
    "agents_list": Tool(frozenset({"action"}), _agents_list),
    "session_status": Tool(frozenset({"sessionKey"}), _session_status),
    "sessions_list": Tool(frozenset({"limit"}), _sessions_list),
    "echo": Tool(frozenset(), _echo),
    "fail": Tool(frozenset(), _fail),
    "slow": Tool(frozenset({"seconds"}), _slow),
}


# ---------------------------------------------------------------- helpers


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Unexpected token {name} in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"Number out of range in JSON: {text}")
    return value


def _parse_json(body: bytes) -> Any:
    """JSON.parse-like: empty/blank body is {}, NaN/Infinity rejected."""
    if not body.strip():
        return {}
    return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)


def gateway_pathname(target: str) -> str:
    """The pathname the gateway's `new URL(req.url, "http://host")` sees, so tests can catch a
    sidecar that lets an odd spelling of the tools route through."""
    try:
        return canonicalize_target(target).path
    except InvalidTarget:
        return target.split("?", 1)[0]



class _BadBody(Exception):
    def __init__(self, status: int, message: str, partial: bytes = b""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.partial = partial


_HEX_RE = re.compile(rb"[0-9A-Fa-f]+")


# ---------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str | None, family: int):
        self.address_family = family
        self.token = token or None
        self.stopping = threading.Event()
        self.records: list[dict] = []
        self.records_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def record(self, entry: dict) -> None:
        with self.records_lock:
            self.records.append(entry)

    def snapshot(self) -> list[dict]:
        with self.records_lock:
            return json.loads(json.dumps(self.records))

    def clear(self) -> None:
        with self.records_lock:
            self.records.clear()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self.connections_lock:
            (self.connections.add if add else self.connections.discard)(conn)

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # client went away / backend stopped
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openclaw-demo-backend/0.1"
    timeout = 300  # idle keep-alive / websocket connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:  # no Nagle stall between a response and the next keep-alive request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        # Same as the base class, but every method goes to one dispatcher.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            words = self.requestline.split()
            # parse_request() rewrites a leading '//' in self.path; keep the raw target
            self.target = words[1] if len(words) >= 2 else self.path
            self._dispatch()
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    # ---------------------------------------------------------- responses

    def _send(self, status: int, body: bytes, content_type: str | None, extra=()) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        for name, value in (*SECURITY_HEADERS, *extra):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]  # stdlib's own buffer, written as it does
        if body and self.command != "HEAD":
            self._headers_buffer.append(body)  # type: ignore[attr-defined]  # head and body in one write
        self.flush_headers()

    def _json(self, status: int, value: Any, extra=()) -> None:
        self._send(status, _dumps(value), JSON_CT, extra)

    # ---------------------------------------------------------- body

    def _read_exact(self, n: int) -> bytes:
        return self.rfile.read(n) if n else b""

    def _read_body(self) -> bytes:
        te = self.headers.get_all("Transfer-Encoding") or []
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if not codings or codings[-1] != "chunked":
                raise _BadBody(400, "unsupported Transfer-Encoding")
            return self._read_chunked()
        lengths = {p.strip() for v in self.headers.get_all("Content-Length") or [] for p in v.split(",")}
        if not lengths:
            return b""
        value = lengths.pop()
        if lengths or not value.isdigit() or not value.isascii():
            raise _BadBody(400, "invalid Content-Length")
        n = int(value)
        if n > MAX_BODY_BYTES:
            raise _BadBody(413, "Payload too large")
        data = self._read_exact(n)
        if len(data) < n:
            raise _BadBody(400, "incomplete body", data)
        return data

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _HEX_RE.fullmatch(size_text):
                raise _BadBody(400, "malformed chunked body", b"".join(chunks))
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadBody(413, "Payload too large", b"".join(chunks))
            data = self._read_exact(size)
            chunks.append(data)
            if len(data) < size or self._read_exact(2) != b"\r\n":
                raise _BadBody(400, "malformed chunked body", b"".join(chunks))
        while True:  # trailer section
            line = self.rfile.readline(65537)
            if not line.endswith(b"\n"):
                raise _BadBody(400, "malformed chunked body", b"".join(chunks))
            if line in (b"\r\n", b"\n"):
                return b"".join(chunks)

    def _record(self, body: bytes) -> None:
        self.server.record({
            "method": self.command,
            "path": self.target,
            "http_version": self.request_version,
            "headers": [[name, value] for name, value in self.headers.raw_items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_length": len(body),
        })

    # ---------------------------------------------------------- routing

    def _dispatch(self) -> None:
        path = gateway_pathname(self.target)
        try:
            body = self._read_body()
        except _BadBody as exc:
            self.close_connection = True
            if not path.startswith(CONTROL_PREFIX):
                self._record(exc.partial)
            self._json(exc.status, {"error": {"message": exc.message, "type": "invalid_request_error"}})
            return
        if path.startswith(CONTROL_PREFIX):
            self._control(path)
            return
        self._record(body)
        if path == TOOLS_PATH:
            self._tools_invoke(body)
        elif path == WS_PATH and self.command == "GET" and self._is_ws_upgrade():
            self._websocket()
        elif path == "/healthz" and self.command in ("GET", "HEAD"):
            self._json(200, {"ok": True})
        else:
            self._json(200, {"ok": True, "path": self.target, "method": self.command})

    def _control(self, path: str) -> None:
        if path != REQUESTS_PATH:
            self._json(404, {"ok": False, "error": {"type": "not_found", "message": "unknown control path"}})
        elif self.command in ("GET", "HEAD"):
            self._json(200, {"requests": self.server.snapshot()})
        elif self.command == "DELETE":
            self.server.clear()
            self._send(204, b"", None)
        else:
            self._send(405, b"Method Not Allowed", TEXT_CT, [("Allow", "GET, DELETE")])

    def _authorized(self) -> bool:
        token = self.server.token
        if not token:
            return True
        raw = (self.headers.get("Authorization") or "").strip()
        if raw[:7].lower() != "bearer ":
            return False
        given = raw[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def _tools_invoke(self, body: bytes) -> None:
        if self.command != "POST":
            self._send(405, b"Method Not Allowed", TEXT_CT, [("Allow", "POST")])
            return
        if not self._authorized():
            self._json(401, {"error": {"message": "Unauthorized", "type": "unauthorized"}})
            return
        try:
            payload = _parse_json(body)
        except (ValueError, RecursionError) as exc:
            self._json(400, {"error": {"message": str(exc) or "invalid json", "type": "invalid_request_error"}})
            return
        if not isinstance(payload, dict):
            payload = {}
        raw_name = payload.get("name")
        if raw_name is None:
            raw_name = payload.get("tool")
        name = raw_name.strip() if isinstance(raw_name, str) else ""
        if not name:
            self._json(400, {"ok": False, "error": {"type": "invalid_request", "message": "tools.invoke requires name"}})
            return
        tool = TOOLS.get(name)
        if tool is None:
            self._json(404, {"ok": False, "error": {"type": "not_found", "message": f"Tool not available: {name}"}})
            return
        args = payload.get("args")
        args = dict(args) if isinstance(args, dict) else {}
        action = payload.get("action")
        action = action.strip() if isinstance(action, str) else ""
        if action and "action" in tool.properties and "action" not in args:
            args["action"] = action
        try:
            result = tool.run(args, self.server.stopping)
        except _ToolCrash as exc:
            self._json(500, {"ok": False, "error": {"type": "tool_error", "message": str(exc)}})
            return
        self._json(200, {"ok": True, "result": result})

    # ---------------------------------------------------------- websocket

    def _is_ws_upgrade(self) -> bool:
        tokens = (self.headers.get("Upgrade") or "").lower().split(",")
        return "websocket" in (t.strip() for t in tokens)

    def _websocket(self) -> None:
        key = (self.headers.get("Sec-WebSocket-Key") or "").strip()
        if not key or (self.headers.get("Sec-WebSocket-Version") or "").strip() != "13":
            self._json(400, {"error": {"message": "bad websocket handshake", "type": "invalid_request_error"}},
                       [("Sec-WebSocket-Version", "13")])
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.close_connection = True
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while (frame := self._ws_read()) is not None:
            first, payload = frame
            opcode = first & 0x0F
            if opcode == 0x8:  # close: answer with the same status code, then hang up
                self._ws_send(0x88, payload[:2])
                return
            if opcode == 0x9:  # ping
                self._ws_send(0x8A, payload[:125])
            elif opcode in (0x0, 0x1, 0x2):  # echo data frames, fragmentation preserved
                self._ws_send(first & 0x8F, payload)

    def _ws_read(self) -> tuple[int, bytes] | None:
        head = self._read_exact(2)
        if len(head) < 2:
            return None
        n = head[1] & 0x7F
        if n >= 126:
            ext = self._read_exact(2 if n == 126 else 8)
            if len(ext) < (2 if n == 126 else 8):
                return None
            n = struct.unpack("!H" if n == 126 else "!Q", ext)[0]
        if n > MAX_WS_FRAME_BYTES:
            return None
        mask = self._read_exact(4) if head[1] & 0x80 else b""
        data = self._read_exact(n)
        if len(data) < n or (head[1] & 0x80 and len(mask) < 4):
            return None
        if mask and n:
            data = (int.from_bytes(data) ^ int.from_bytes((mask * (n // 4 + 1))[:n])).to_bytes(n)
        return head[0], data

    def _ws_send(self, first: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes([first, n])
        elif n < 1 << 16:
            header = bytes([first, 126]) + struct.pack("!H", n)
        else:
            header = bytes([first, 127]) + struct.pack("!Q", n)
        self.wfile.write(header + payload)
        self.wfile.flush()


# ---------------------------------------------------------------- public API


def _split_host(host: str) -> tuple[str, int]:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, (socket.AF_INET6 if ":" in host else socket.AF_INET)


class DemoBackend:
    """The demo gateway backend, served from a daemon thread.

    >>> with DemoBackend(token="t") as backend:
    ...     backend.url  # doctest: +SKIP
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.host, self._family = _split_host(host)
        self._port = port
        self.token = token
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("DemoBackend already started")
        self._server = _Server((self.host, self._port), self.token, self._family)
        return self._server

    def start(self) -> DemoBackend:
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="demo-backend", daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DemoBackend not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def requests(self) -> list[dict]:
        """In-process view of the record (same data as ``GET /__demo/requests``)."""
        return self._server.snapshot() if self._server else []

    def clear_requests(self) -> None:
        if self._server:
            self._server.clear()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        if self._thread is not None:
            server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        server.server_close()
        server.drop_connections()  # keep-alive/websocket connections end with the backend

    def __enter__(self) -> DemoBackend:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever(host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
    """Serve in the foreground until KeyboardInterrupt or SIGTERM."""
    backend = DemoBackend(host, port, token)
    server = backend._bind()
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(f"demo backend listening on {backend.url}", flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        backend._server = None
        server.stopping.set()
        server.server_close()
        server.drop_connections()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openclaw_demo.backend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN on /tools/invoke")
    ns = parser.parse_args(argv)
    serve_forever(ns.host, ns.port, ns.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
