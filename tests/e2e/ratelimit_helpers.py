"""Helpers for the rate-limit end-to-end tests (tests/e2e/test_rate_limit_e2e.py).

* `Reply`: one response, whichever transport carried it (httpx or raw socket in the test net),
  with the time it took.
* `LoopbackCaller` / `TestnetCaller`: send requests as one client. `LoopbackCaller` connects
  from 127.0.0.1 and optionally names a client in `X-Forwarded-For` (127.0.0.1 must then be a
  trusted proxy); `TestnetCaller` connects from a real non-loopback address.
* `wait_until`, `count_matches`, `scrape_metric`, `avoid_minute_boundary`.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .conftest import OPENAI_ENDPOINTS
from .harness import (
    SidecarProcess,
    TestNet,
    http_request,
    read_response,
)

TOKEN = "T-gateway-shared-secret"
WRONG = "wrong-token"
INVOKE_BODY = {"tool": "agents_list", "args": {}}

RATE_LIMITED_BODY = {
    "error": {"message": "Too many failed authentication attempts. Please try again later.", "type": "rate_limited"}
}
REQUEST_LIMITED_BODY = {"error": {"message": "Too many requests. Please try again later.", "type": "rate_limited"}}
UNAUTHORIZED_BODY = {"error": {"message": "Unauthorized", "type": "unauthorized"}}
LIMITER_UNAVAILABLE_BODY = {
    "error": {"message": "Authentication rate limiter is unavailable; retry shortly.", "type": "unavailable"}
}
JSON_CT = "application/json; charset=utf-8"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def _auth_headers(token: str | None, extra: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    headers = list(extra or [])
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers


class LoopbackCaller:
    """A client on 127.0.0.1; with `xff`, a loopback proxy (trusted) speaking for client `xff`."""

    def __init__(self, client: httpx.Client, sidecar: SidecarProcess, xff: str | None = None,
                 extra_headers: list[tuple[str, str]] | None = None) -> None:
        self.client, self.sidecar, self.xff = client, sidecar, xff
        self.extra_headers = list(extra_headers or [])

    def request(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
                headers: list[tuple[str, str]] | None = None) -> Reply:
        all_headers = _auth_headers(token, [*self.extra_headers, *(headers or [])])
        if self.xff is not None:
            all_headers.append(("X-Forwarded-For", self.xff))
        content = None if json_body is None else json.dumps(json_body).encode()
        if content is not None:
            all_headers.append(("Content-Type", "application/json"))
        started = time.monotonic()
        response = self.client.request(method, self.sidecar.url + path, headers=all_headers, content=content)
        elapsed = time.monotonic() - started
        return Reply(response.status_code, list(response.headers.multi_items()), response.content, elapsed)

    def invoke(self, token: str | None, tool: str = "agents_list",
               headers: list[tuple[str, str]] | None = None) -> Reply:
        return self.request("POST", "/tools/invoke", token=token, json_body={"tool": tool, "args": {}}, headers=headers)


class TestnetCaller:
    """A client connecting from a real non-loopback address of the test network."""

    __test__ = False  # not a pytest test class

    def __init__(self, net: TestNet, source_ip: str, sidecar: SidecarProcess) -> None:
        self.net, self.source_ip, self.sidecar = net, source_ip, sidecar

    def request(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
                headers: list[tuple[str, str]] | None = None) -> Reply:
        all_headers = _auth_headers(token, headers)
        body = b"" if json_body is None else json.dumps(json_body).encode()
        if json_body is not None:
            all_headers.append(("Content-Type", "application/json"))
        started = time.monotonic()
        conn = self._connect()
        try:
            conn.settimeout(10.0)
            conn.sendall(http_request(method, path, all_headers, body))
            raw = read_response(conn, 10.0)
        finally:
            conn.close()
        elapsed = time.monotonic() - started
        return Reply(raw.status, raw.headers, raw.body, elapsed)

    def _connect(self, attempts: int = 4, timeout: float = 1.5) -> socket.socket:
        """A TCP connection from `source_ip` to the sidecar.

        Only the TCP handshake is retried: on a shared machine another test session's
        namespace may hold the same TEST-NET addresses for a moment, and the SYN-ACK then
        goes astray. Nothing has been sent yet, so a retry cannot hide a sidecar fault.
        """
        last: OSError | None = None
        for _ in range(attempts):
            sock = self.net.socket_from(self.source_ip)
            sock.settimeout(timeout)
            try:
                sock.connect((self.sidecar.host, self.sidecar.port))
                return sock
            except OSError as exc:
                last = exc
                sock.close()
        raise ConnectionError(f"cannot connect from {self.source_ip} to {self.sidecar.url}: {last!r}")

    def invoke(self, token: str | None, tool: str = "agents_list",
               headers: list[tuple[str, str]] | None = None) -> Reply:
        return self.request("POST", "/tools/invoke", token=token, json_body={"tool": tool, "args": {}}, headers=headers)


def scrape_metric(url: str, name: str) -> float:
    """The value of an unlabelled metric sample `name` in a Prometheus text exposition."""
    text = httpx.get(url, timeout=5.0, trust_env=False).text
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.MULTILINE)
    if match is None:
        raise AssertionError(f"metric {name} not exposed; got:\n{text}")
    return float(match.group(1))


def count_matches(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, re.MULTILINE))


def wait_until(predicate: Callable[[], bool], timeout: float, nudge: Callable[[], Any] | None = None,
               interval: float = 0.1) -> bool:
    """Poll `predicate` (calling `nudge` before each check) until true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if nudge is not None:
            nudge()
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def avoid_minute_boundary(margin: float = 1.5) -> None:
    """Sleep past the next whole minute when it is less than `margin` s away.

    The request limiter's sliding-window counter weights the previous fixed window; a test
    making N+1 calls right across a minute boundary could legitimately see the (N+1)th allowed.
    """
    remainder = time.time() % 60
    if remainder > 60 - margin:
        time.sleep(60 - remainder + 0.05)


@dataclass
class ConfigBuilder:
    """An OpenClaw + sidecar config dict for the tests (camelCase, as the config file has it)."""

    upstream: str
    upstream_token: str
    storage: str = "memory://"
    mode: str = "token"
    rate_limit: dict[str, Any] = field(default_factory=dict)
    trusted_proxies: list[str] = field(default_factory=list)
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_rate_limit: dict[str, Any] = field(default_factory=dict)
    auth_extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"mode": self.mode, **self.auth_extra}
        if self.mode == "token":
            auth["token"] = TOKEN
        if self.rate_limit:
            auth["rateLimit"] = dict(self.rate_limit)
        gateway: dict[str, Any] = {"auth": auth, "http": OPENAI_ENDPOINTS}  # /v1/models: a read route besides /tools/invoke
        if self.trusted_proxies:
            gateway["trustedProxies"] = list(self.trusted_proxies)
        sidecar = {
            "upstream": self.upstream,
            "upstreamAuth": {"token": self.upstream_token},
            "rateLimit": {"storage": self.storage, **self.sidecar_rate_limit},
            **self.sidecar,
        }
        return {"gateway": gateway, "sidecar": sidecar}
