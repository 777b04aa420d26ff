"""`mitmdump -s addons/tools_invoke.py` gives the same guarantees as `openclaw-sidecar run`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openclaw_demo.backend import DemoBackend
from tests.ports import free_port

from .conftest import UPSTREAM_TOKEN
from .harness import REPO, raw_exchange

TOKEN = "mitmdump-token"


def mitmdump_command(tmp_path: Path, backend: DemoBackend, port: int, *options: str) -> list[str]:
    """`mitmdump -s addons/tools_invoke.py` in reverse mode in front of the backend, with `options` set."""
    return [str(Path(sys.executable).parent / "mitmdump"), "-q", "-s", str(REPO / "addons" / "tools_invoke.py"),
            "--mode", f"reverse:{backend.url}", "--listen-host", "127.0.0.1", "-p", str(port),
            *(arg for option in (*options, f"confdir={tmp_path / 'mitm'}") for arg in ("--set", option))]


@pytest.fixture
def mitmdump(tmp_path: Path, backend: DemoBackend) -> Iterator[int]:
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps({
        "sidecar": {"upstreamAuth": {"token": UPSTREAM_TOKEN}},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
    }))
    port = free_port()
    proc = subprocess.Popen(
        mitmdump_command(tmp_path, backend, port, f"sidecar_config={config}"),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"mitmdump did not listen: {proc.communicate()[1]}")
    yield port
    proc.terminate()
    proc.wait(10)


def test_allowed_call_is_forwarded_with_rebuilt_headers(mitmdump: int, backend: DemoBackend) -> None:
    with httpx.Client(trust_env=False, timeout=10) as client:
        reply = client.post(f"http://127.0.0.1:{mitmdump}/tools/invoke", json={"tool": "agents_list"},
                            headers={"Authorization": f"Bearer {TOKEN}", "x-openclaw-scopes": "operator.read"})
    assert reply.status_code == 200 and reply.json()["ok"] is True
    (seen,) = backend.requests()
    headers = [(k.lower(), v) for k, v in seen["headers"]]
    assert ("authorization", f"Bearer {UPSTREAM_TOKEN}") in headers
    assert [v for k, v in headers if k == "x-openclaw-scopes"] == [
        "operator.admin,operator.read,operator.write,operator.approvals,operator.questions,"
        "operator.pairing,operator.talk.secrets"
    ]


def test_unauthenticated_large_body_gets_401_without_reaching_the_backend(mitmdump: int, backend: DemoBackend) -> None:
    head = (b"POST /tools/invoke HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Length: 5242880\r\n\r\n{\"tool\":")
    reply = raw_exchange(("127.0.0.1", mitmdump), head)
    assert reply.status == 401
    assert reply.json() == {"error": {"message": "Unauthorized", "type": "unauthorized"}}
    assert backend.requests() == []


def test_chunked_body_over_the_limit_gets_the_gateway_413(mitmdump: int, backend: DemoBackend) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"10000\r\n" + chunk + b"\r\n" for _ in range(33)) + b"0\r\n\r\n"
    head = (b"POST /tools/invoke HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    reply = raw_exchange(("127.0.0.1", mitmdump), head + body)
    assert reply.status == 413
    assert reply.json() == {"error": {"message": "Payload too large", "type": "invalid_request_error"}}
    assert reply.header("connection") == "close"
    assert backend.requests() == []


def test_a_tls_client_hello_gets_nodes_400_not_a_handshake(mitmdump: int, backend: DemoBackend) -> None:
    """mitmdump's reverse mode answers a ClientHello with a handshake; the guard reads it as HTTP."""
    hello = b"\x16\x03\x01\x00\x2f\x01\x00\x00\x2b\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    with socket.create_connection(("127.0.0.1", mitmdump), timeout=10) as sock:
        sock.sendall(hello)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer == b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert backend.requests() == []


def test_mitmproxys_onboarding_app_never_answers_for_the_gateway(mitmdump: int, backend: DemoBackend) -> None:
    """mitmdump's onboarding addon served its CA certificate for Host mitm.it on any route the
    guard admitted; the request now reaches the backend like any other."""
    reply = raw_exchange(("127.0.0.1", mitmdump), b"GET /healthz HTTP/1.1\r\nHost: mitm.it\r\n\r\n")
    assert b"mitmproxy" not in reply.body.lower()
    assert [seen["path"] for seen in backend.requests()] == ["/healthz"]


def test_without_a_config_the_addon_refuses_to_start(tmp_path: Path, backend: DemoBackend) -> None:
    """Silently starting would answer every request 500; mitmdump exits naming the option instead."""
    done = subprocess.run(
        mitmdump_command(tmp_path, backend, free_port()),
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "sidecar_config is required" in done.stderr + done.stdout


def test_a_redis_password_file_that_cannot_be_read_stops_mitmdump_naming_the_key(tmp_path: Path, backend: DemoBackend) -> None:
    """Read when the runtime is built, after the config has loaded: an option error naming the key."""
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps({
        "sidecar": {"rateLimit": {"storage": "redis://127.0.0.1:1/0", "storagePasswordFile": str(tmp_path / "absent")}},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
    }))
    done = subprocess.run(
        mitmdump_command(tmp_path, backend, free_port(), f"sidecar_config={config}"),
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    # mitmproxy reports an option error from a script as it reports any (with the stack it came up)
    assert "OptionsError: sidecar_config: sidecar.rateLimit.storagePasswordFile: cannot read secret file" in done.stderr + done.stdout
    assert "ConfigError" not in done.stderr + done.stdout  # not the unhandled error it was

