"""Connection-level abuse found by adversarial review: every case gets an answer or a clean
close, the backend sees nothing, and the sidecar logs no crash."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import UPSTREAM_TOKEN
from .harness import read_response

TOKEN = "T"
CRASH_MARKERS = ("Traceback", "has crashed")


@pytest.fixture
def sidecar(start_sidecar, backend):
    return start_sidecar({
        "sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                    "timeouts": {"bodyReadSeconds": 1}},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
    })


def _connect(sidecar) -> socket.socket:
    return socket.create_connection((sidecar.host, sidecar.port), timeout=10)


@pytest.mark.parametrize("head", [
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    b"POST /foo HTTP/1.1\r\nHost: x\r\nx_forwarded_for: 1\r\nContent-Length: 10\r\n\r\n",
])
def test_refused_head_whose_small_body_never_arrives_is_still_answered(sidecar, backend, head: bytes) -> None:
    """Without this an unauthenticated client could hold connections open indefinitely."""
    with _connect(sidecar) as sock:
        sock.sendall(head)
        started = time.monotonic()
        reply = read_response(sock, timeout=10)
    assert reply.status in (400, 401)
    assert time.monotonic() - started < 9
    assert backend.requests() == []
    time.sleep(0.2)  # let the log line of a (wrong) second decision arrive, if there were one
    assert sidecar.logs().count('"outcome":"refused"') == 1, sidecar.logs()


@pytest.mark.parametrize("target", [b"/healthz", b"/tools/invoke"])
def test_request_trailers_close_the_connection_without_a_crash(sidecar, backend, target: bytes) -> None:
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    with _connect(sidecar) as sock:
        sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Smuggled: 1\r\n\r\n")
        sock.settimeout(5)
        received = b""
        while chunk := sock.recv(65536):  # the sidecar closes; a hang would time out here
            received += chunk
    assert b"X-Smuggled" not in received
    assert backend.requests() == []
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked\r\n", b"Content-Length: 70000\r\n"])
def test_expect_continue_on_an_answered_head_logs_no_crash(sidecar, backend, framing: bytes) -> None:
    with _connect(sidecar) as sock:
        sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n" + framing + b"\r\n")
        reply = read_response(sock, timeout=10)
    assert reply.status == 401
    time.sleep(0.2)  # let the sidecar finish handling the closed connection before reading its log
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()
    assert backend.requests() == []


def test_lower_case_method_is_refused_not_forwarded(sidecar, backend) -> None:
    with _connect(sidecar) as sock:
        sock.sendall(b"Post /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T\r\n"
                     b"Content-Length: 22\r\n\r\n{\"tool\":\"agents_list\"}")
        reply = read_response(sock)
    assert reply.status == 400
    assert backend.requests() == []
