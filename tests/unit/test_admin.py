"""The admin listener over a real socket: liveness, readiness (ours and the upstream's), metrics."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import math
import socket
import struct
import termios
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.admin import UPSTREAM_CHECK_DEADLINE_SECONDS, AdminServer, Health, UpstreamCheck
from sidecar.routes import GATEWAY_VERSION
from openclaw_demo.backend import DemoBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def backend() -> Iterator[DemoBackend]:
    with DemoBackend() as backend:
        yield backend


@pytest.fixture
def admin(backend: DemoBackend) -> Iterator[AdminServer]:
    server = AdminServer("127.0.0.1", 0, Health(backend.url))
    server.start()
    yield server
    server.stop()


def test_ready_only_when_listening_not_draining_and_upstream_up(admin: AdminServer, backend: DemoBackend) -> None:
    def readyz() -> tuple[int, str]:
        response = httpx.get(f"{admin.url}/readyz", timeout=5)
        return response.status_code, response.json()["reason"]

    assert readyz() == (503, "not listening yet")
    admin.health.listening = True
    assert readyz() == (200, "ok")
    admin.health.draining = True
    assert readyz() == (503, "draining")
    admin.health.draining = False
    backend.__exit__(None, None, None)
    assert readyz() == (503, "upstream unreachable: ConnectError")  # refused at once: what failed, not the deadline
    assert httpx.get(f"{admin.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("path, status, content_type", [
    ("/healthz", 200, "application/json"), ("/metrics", 200, CONTENT_TYPE_LATEST),
    ("/healthz?probe=1", 200, "application/json"),  # a query names no other path
    ("/", 404, "text/plain; charset=utf-8"), ("/metrics/x", 404, "text/plain; charset=utf-8"),
    ("/tools/invoke", 404, "text/plain; charset=utf-8")])
def test_only_three_paths(admin: AdminServer, path: str, status: int, content_type: str) -> None:
    response = httpx.get(f"{admin.url}{path}", timeout=5)
    assert (response.status_code, response.headers["content-type"]) == (status, content_type)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["server"] == "openclaw-sidecar"  # no Python release named
    if path.startswith("/healthz"):
        assert response.json() == {"ok": True, "status": "live"}
    if path == "/metrics":
        assert "process_open_fds" in response.text and "openclaw_sidecar_decisions_total" in response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/tools/invoke"])
def test_head_is_answered_as_get_is_without_the_body(admin: AdminServer, path: str) -> None:
    """The three paths are GET and HEAD, as the gateway's own probes are: a probe sending HEAD gets
    the status and the length of what GET would send, and nothing after the head."""

    get = httpx.get(f"{admin.url}{path}", timeout=5)
    with socket.create_connection((str(admin.server_address[0]), int(admin.server_address[1])), timeout=5) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while more := sock.recv(4096):
            answer += more
    head, _, after = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {get.status_code} ".encode())
    assert f"Content-Length: {get.headers['content-length']}".encode() in head.split(b"\r\n") and after == b""


def test_an_ipv6_listen_address_is_served(backend: DemoBackend) -> None:
    """`sidecar.adminListen: "[::1]:18791"`: the listener is made for the address's family."""
    server = AdminServer("::1", 0, Health(backend.url))
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()


def test_a_method_it_does_not_serve_names_no_python_release(admin: AdminServer) -> None:
    response = httpx.post(f"{admin.url}/healthz", timeout=5)
    assert response.status_code == 501 and response.headers["server"] == "openclaw-sidecar"
    assert "Python" not in response.text


def test_half_sent_heads_neither_pile_up_nor_outlast_the_idle_limit(backend: DemoBackend) -> None:
    """A client that opens connections and never finishes a head holds at most `max_connections`
    threads (beyond that a new one takes the oldest one's slot, which is closed at once, not
    after a wait), each for at most `idle_seconds` (the client's 5 s socket timeout would fire
    first otherwise)."""

    def half_sent(server: AdminServer) -> socket.socket:
        sock = socket.create_connection((str(server.server_address[0]), int(server.server_address[1])), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        return sock

    capped = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, max_connections=4)
    idle = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=0.5)
    for server in (capped, idle):
        server.start()
    try:
        held = [half_sent(capped) for _ in range(4)]
        held.append(half_sent(capped))  # every slot taken: the oldest one is closed at once
        assert held[0].recv(1) == b""
        assert half_sent(idle).recv(1) == b""  # dropped after the idle limit
        for sock in held:
            sock.close()
        assert httpx.get(f"{idle.url}/healthz", timeout=5).status_code == 200
    finally:
        capped.stop()
        idle.stop()


def test_a_client_dribbling_heads_can_neither_hold_a_connection_nor_take_every_slot(backend: DemoBackend) -> None:
    """The admin/CLI red team: 80 clients sending a head a byte every 2 s held every slot (a read
    timeout fires only on a silent socket), so every kubelet probe was refused and the pod would
    be restarted. A head now has a deadline however it dribbles, and one address gets at most
    `max_per_client` of the slots: the probes, from another address, are answered; a kept-alive
    connection whose heads come in time is never cut, however long it lives (a scraper's)."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=1.0,
                         max_connections=16, max_per_client=3)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))

    def dribbler() -> socket.socket:
        sock = socket.create_connection(address, timeout=10, source_address=("127.0.0.3", 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        return sock

    def cut_while_dribbling(sock: socket.socket) -> bool:
        """A byte every 0.2 s, never idle long enough for the read timeout, until the server
        ends the connection (False if it still stands after 20 s)."""
        for _ in range(100):
            try:
                sock.sendall(b"X")
                if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    return True
            except BlockingIOError:
                pass
            except OSError:
                return True
            threading.Event().wait(0.2)
        return False

    try:
        held = [dribbler() for _ in range(3)]
        assert dribbler().recv(1) == b""  # past its share: closed at once, no thread
        def status(sock: socket.socket) -> bytes:
            """The status line of one answer, read whole (head, then Content-Length bytes)."""
            data = b""
            while b"\r\n\r\n" not in data:
                more = sock.recv(4096)
                assert more, "the connection was closed"
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += sock.recv(4096)
            return head.split(b"\r\n")[0]

        scraper = socket.create_connection(address, timeout=10, source_address=("127.0.0.2", 0))
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(3):  # one connection, older than the head deadline, each head in time
            scraper.sendall(probe)
            assert status(scraper) == b"HTTP/1.1 200 OK"
            threading.Event().wait(0.6)
        assert all(cut_while_dribbling(sock) for sock in held)
        for _ in range(50):  # the dribblers' threads give their slots back as they finish
            try:
                again = dribbler()
                again.sendall(b"Host: x\r\n\r\n")
                if again.recv(64).startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass  # refused while the slots are still held
            threading.Event().wait(0.1)
        else:
            raise AssertionError("the address never got its share back")
    finally:
        server.stop()


def test_many_addresses_holding_every_slot_with_unfinished_heads_never_keep_a_probe_out(backend: DemoBackend) -> None:
    """The admin red team: 8 addresses, each within its share of 8, held all 64 slots with heads
    never finished, reconnecting as the head deadline cut them, and the kubelet's probes were
    closed at accept: the pod would be restarted. A new connection now takes the slot of the one
    waiting longest for a head (an unfinished one, or a kept-alive one's next)."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60,
                         max_connections=4, max_per_client=2)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))

    def connect(source: str) -> socket.socket:
        return socket.create_connection(address, timeout=5, source_address=(source, 0))

    def answered(sock: socket.socket) -> bytes:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b'{"ok":true,"status":"live"}'):
            more = sock.recv(4096)
            if not more:
                break
            data += more
        return data.split(b"\r\n")[0]

    try:
        held = []
        for source in ("127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"):
            sock = connect(source)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            held.append(sock)
            threading.Event().wait(0.05)  # its thread has read it: their deadlines come in this order
        for _ in range(3):  # the cap full: a probe takes the slot of the oldest unfinished head
            probe = connect("127.0.0.2")
            assert answered(probe) == b"HTTP/1.1 200 OK"
            cut = held.pop(0)
            assert cut.recv(1) == b""
            probe.close()
            for _ in range(50):  # the holder takes its slot back, with a head it never finishes
                threading.Event().wait(0.05)
                sock = connect(cut.getsockname()[0])
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                sock.settimeout(0.05)
                try:
                    sock.recv(1)  # closed at once: its address's share still held
                except TimeoutError:
                    sock.settimeout(5)
                    held.append(sock)
                    break
            else:
                raise AssertionError("the holder never got its slot back")
            threading.Event().wait(0.05)  # its thread has read it
        for sock in held:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # the others still open
    finally:
        server.stop()


def test_clients_that_never_take_their_answers_never_keep_a_probe_out(backend: DemoBackend) -> None:
    """The admin red team, after the slots of unfinished heads were made room from: 8 addresses,
    each within its share, pipelined requests on a small receive window and read a little every
    few seconds, so each slot's thread was always in the middle of writing an answer, never
    waiting for a head, and most kubelet probes were still closed at accept. An answer the client
    does not take is no work of ours: its connection gives its slot as one waiting for a head does."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60,
                         max_connections=2, max_per_client=1)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))

    def slow_reader(source: str) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.bind((source, 0))
        sock.connect(address)
        sock.setblocking(False)
        try:
            for _ in range(20_000):
                sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        except BlockingIOError:
            pass  # its requests fill every buffer, its answers too: the server is mid-write
        sock.settimeout(5)
        return sock

    try:
        readers = [slow_reader("127.0.0.3"), slow_reader("127.0.0.4")]
        steady = 0
        for _ in range(400):  # until both threads are blocked writing answers nobody reads
            threading.Event().wait(0.025)
            with server._lock:
                answered_only = all(deadline != math.inf for _, deadline in server._open.values())
            steady = steady + 1 if answered_only else 0
            if steady == 8:
                break
        else:
            raise AssertionError("the two readers' threads never settled mid-write")
        probe = socket.create_connection(address, timeout=5, source_address=("127.0.0.2", 0))
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert probe.recv(64).startswith(b"HTTP/1.1 200 OK")
        probe.close()
        def cut(sock: socket.socket) -> bool:
            """Whether the connection ends within a second (the other one is still answered)."""
            sock.settimeout(1)
            end = time.monotonic() + 1
            try:
                while time.monotonic() < end:
                    if not sock.recv(65536):
                        return True
            except ConnectionResetError:  # closed with its requests unread
                return True
            except TimeoutError:
                pass
            return False

        assert sorted(cut(sock) for sock in readers) == [False, True]  # one of them gave its slot
    finally:
        server.stop()


class SmallSendBuffers(AdminServer):
    """The admin server on a kernel that buffers little: each accepted connection's send buffer is
    fixed small, so an answer of a few KiB nobody reads leaves its thread mid-write."""

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return connection, address


def test_an_error_answer_nobody_takes_gives_its_slot_as_any_answer_does(backend: DemoBackend) -> None:
    """The stdlib's 501 for a method not served echoes the method (here 16,000 bytes of it) in its
    status line and its body; it was written with no deadline, so a client that sent such a request
    and never read held its slot where no new connection could take it: the probe after it was
    closed at accept (helper mut40d's finding)."""
    server = SmallSendBuffers("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60,
                              max_connections=1)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    try:
        with socket.socket() as silent:
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            silent.connect(address)
            silent.sendall(b"A" * 16_000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(400):  # until the answer's first bytes arrive: its thread is mid-write
                if struct.unpack("i", fcntl.ioctl(silent, termios.FIONREAD, b"\0" * 4))[0]:
                    break
                threading.Event().wait(0.025)
            else:
                raise AssertionError("the 501 was never written")
            with socket.create_connection(address, timeout=5) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert probe.recv(64).startswith(b"HTTP/1.1 200 OK")
            silent.settimeout(5)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := silent.recv(65536):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 501 Unsupported method ('AAAA") and len(received) < 32_000  # cut
    finally:
        server.stop()


class HeldUpstream:
    """An upstream that holds its first `/startupz` answer (a 200) until `release` is set; `asked`
    is set once it has the request."""

    def __init__(self) -> None:
        import socket

        self.asked, self.release = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        connection, _ = self.listener.accept()
        connection.recv(4096)
        self.asked.set()
        self.release.wait(10)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        connection.close()


@pytest.fixture
def held_upstream() -> Iterator[HeldUpstream]:
    upstream = HeldUpstream()
    yield upstream
    upstream.release.set()
    upstream.listener.close()


def test_an_address_share_counts_exactly_its_open_connections(backend: DemoBackend) -> None:
    """A connection refused past the share holds none of it (or one refusal would lock its
    address out of the port for good), and one ending gives back its own part only (or the
    address could hold more than its share)."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60, max_per_client=2)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))

    def connect() -> socket.socket:
        return socket.create_connection(address, timeout=5)

    opened = [connect(), connect()]
    try:
        for sock in opened:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        with connect() as refused:
            assert refused.recv(1) == b""
        opened[0].sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        while opened[0].recv(4096):
            pass  # its part of the share is given back once its connection ends
        opened.append(connect())
        opened[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert opened[-1].recv(64).startswith(b"HTTP/1.1 200 OK")
        with connect() as refused:
            assert refused.recv(1) == b""  # the share held again: the first one's end gave back one, not all
    finally:
        for sock in opened:
            sock.close()
        server.stop()


def test_an_address_is_forgotten_once_its_last_connection_ends(backend: DemoBackend) -> None:
    """The share books keep the addresses with a connection open, no more: an entry left for every
    address ever seen would grow without end under a client cycling through its IPv6 /64s."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url))
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            with socket.create_connection(address, timeout=5, source_address=(source, 0)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while sock.recv(4096):
                    pass  # the end of input comes once the connection has left the books
        assert not server._per_client
    finally:
        server.stop()


def test_a_connection_refused_at_accept_is_closed_and_nothing_more(
        backend: DemoBackend, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Closed at once, no thread started for it: a thread per refused connection would fail on its
    closed socket and log an error for each one a flood sends."""

    before = set(threading.enumerate())
    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60, max_per_client=1)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    try:
        with socket.create_connection(address, timeout=5) as held:
            held.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished: the address's share is held
            with socket.create_connection(address, timeout=5) as refused:
                assert refused.recv(1) == b""
            held.sendall(b"Host: x\r\nConnection: close\r\n\r\n")  # answered after the refusal was made
            while held.recv(4096):
                pass
    finally:
        server.stop()
    for thread in set(threading.enumerate()) - before:
        thread.join(5)
    assert capsys.readouterr().err == "" and "admin request from" not in caplog.text


def test_a_connection_being_answered_is_never_the_one_cut_to_make_room(held_upstream: HeldUpstream) -> None:
    """Room is made from connections waiting for a head, whichever was accepted first: a probe whose
    /readyz waits on the upstream check is being answered, and is answered (README: a kept-alive
    scrape connection is never cut while its answer is made)."""

    server = AdminServer("127.0.0.1", 0, Health(held_upstream.url, listening=True), idle_seconds=60, head_seconds=60,
                         max_connections=2)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    try:
        with socket.create_connection(address, timeout=5) as answered, \
                socket.create_connection(address, timeout=5) as waiting:
            answered.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held_upstream.asked.wait(5)
            waiting.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            with socket.create_connection(address, timeout=5) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert probe.recv(64).startswith(b"HTTP/1.1 200 OK")
            assert waiting.recv(1) == b""
            held_upstream.release.set()
            assert answered.recv(64).startswith(b"HTTP/1.1 200 OK")
    finally:
        server.stop()


def test_while_every_slot_is_being_answered_a_new_connection_is_closed_and_the_port_serves_on(
        held_upstream: HeldUpstream) -> None:
    """No slot to make room from: the newcomer is closed at once, no thread started, and once the
    answer is made the port serves the next one."""

    server = AdminServer("127.0.0.1", 0, Health(held_upstream.url, listening=True), max_connections=1)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    try:
        with socket.create_connection(address, timeout=5) as answered:
            answered.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert held_upstream.asked.wait(5)
            with socket.create_connection(address, timeout=5) as newcomer:
                assert newcomer.recv(1) == b""
            held_upstream.release.set()
            assert answered.recv(64).startswith(b"HTTP/1.1 200 OK")
            while answered.recv(4096):
                pass  # its slot is free once its connection ends
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("unfinished", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 17,
    b"GET /healthz?" + b"a" * 16 * 1024 + b" HTTP/1.1\r\nX-Pad: a",  # the request line past it, then a line never ended
], ids=["header-lines", "request-line"])
def test_a_head_is_refused_past_16_kib_not_held_in_memory(admin: AdminServer, unfinished: bytes) -> None:
    """The admin red team: the stdlib bounds a head only at 100 lines of 64 KiB each, and 40
    connections, each holding 99 such lines of a head never finished, took the sidecar from 51 to
    305 MB (its limit is 256 Mi: the proxy would be OOM-killed with it). A head is now refused
    past 16 KiB, Node's limit the proxied port has too, without waiting for its end."""

    with socket.create_connection((str(admin.server_address[0]), int(admin.server_address[1])), timeout=5) as sock:
        sock.sendall(unfinished)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431 ")
        while more := sock.recv(4096):
            answer += more
        assert b"Connection: close" in answer


@pytest.mark.parametrize("size, status", [(16 * 1024, b"200 OK"), (16 * 1024 + 1, b"431 ")])
def test_a_head_of_16_kib_is_answered_and_one_byte_more_refused(admin: AdminServer, size: int, status: bytes) -> None:

    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    with socket.create_connection((str(admin.server_address[0]), int(admin.server_address[1])), timeout=5) as sock:
        sock.sendall(start + b"a" * (size - len(start) - 4) + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 " + status)


def test_the_documented_caps_hold_by_default(backend: DemoBackend) -> None:
    """64 connections at once, 8 from one address (README, Operating it): an address's ninth is
    closed at once, and while all 64 wait for heads, a 65th takes the slot of the one waiting longest."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))

    def half_sent(source: str) -> socket.socket:
        sock = socket.create_connection(address, timeout=5, source_address=(source, 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        return sock

    held = [half_sent(f"127.0.0.{10 + n // 8}") for n in range(64)]
    try:
        assert half_sent("127.0.0.10").recv(1) == b""  # past its address's share
        for sock in held:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # all 64 still open
        newcomer = half_sent("127.0.0.20")
        held.append(newcomer)
        held[0].settimeout(5)
        assert held[0].recv(1) == b""
        newcomer.sendall(b"Host: x\r\n\r\n")
        assert newcomer.recv(64).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_a_burst_of_unfinished_heads_never_holds_more_than_the_cap(backend: DemoBackend) -> None:
    """Each newcomer of a burst takes the slot of one waiting for a head, and the one cut gives its
    slot up at once, though its thread has not yet seen the end of its input: counted until then,
    it let the next newcomers in past the cap, each one a thread and a connection held."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60,
                         max_connections=4, max_per_client=200)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    burst = []
    try:
        for _ in range(100):
            burst.append(socket.create_connection(address, timeout=5))
            burst[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        for _ in range(50):  # accepted after the burst; closed at accept while as many cut are finishing
            probe = socket.create_connection(address, timeout=5)
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if probe.recv(64).startswith(b"HTTP/1.1 200 OK"):
                break
            probe.close()
            threading.Event().wait(0.1)
        else:
            raise AssertionError("the probe was never answered")
        still_open = 0
        for sock in burst:
            sock.setblocking(False)
            try:
                sock.recv(1)
            except BlockingIOError:
                still_open += 1
        probe.close()
        assert still_open == 3  # the cap of 4, the probe's slot one of them
    finally:
        for sock in burst:
            sock.close()
        server.stop()


def test_stopping_closes_the_port_without_waiting_for_an_open_connection(backend: DemoBackend) -> None:
    """The sidecar's exit (a drain's end, a second signal) stops the admin port at once: a
    connection's thread, a scraper's or a dribbler's, does not hold it until its deadline."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url), idle_seconds=60, head_seconds=60)
    server.start()
    address = (str(server.server_address[0]), int(server.server_address[1]))
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200 OK")  # its thread runs
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and waits for the rest of a head
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        stopping.join(5)
        assert not stopping.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)


def test_stopping_leaves_no_thread_behind(backend: DemoBackend) -> None:
    """Nothing of the port runs on after `stop()`: the accept loop, the reaper (which ticks until
    told to stop) and each connection's thread end with it."""

    before = set(threading.enumerate())
    server = AdminServer("127.0.0.1", 0, Health(backend.url))
    server.start()
    with socket.create_connection((str(server.server_address[0]), int(server.server_address[1])), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(4096):
            pass
    server.stop()
    started = set(threading.enumerate()) - before
    for thread in started:
        thread.join(5)
    assert [thread for thread in started if thread.is_alive()] == []


def test_the_admin_port_never_keeps_a_failing_process_alive() -> None:
    """The sidecar opens the admin port before the proxy: when it fails after that, the process
    exits and the pod is restarted, not kept alive by the port's threads (the accept loop, the
    reaper, a connection's) answering /healthz 200 for a proxy that is gone."""
    code = (
        "import socket\n"
        "from sidecar.admin import AdminServer, Health\n"
        "server = AdminServer('127.0.0.1', 0, Health('http://127.0.0.1:9'), idle_seconds=600, head_seconds=600)\n"
        "server.start()\n"
        "waiting = socket.create_connection(server.server_address[:2])\n"
        "waiting.sendall(b'GET /healthz HTTP/1.1\\r\\n')\n"  # its thread waits for the rest of the head
        "answered = socket.create_connection(server.server_address[:2])\n"  # accepted after it
        "answered.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "assert answered.recv(64).startswith(b'HTTP/1.1 200')\n"
        "raise SystemExit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30).returncode == 3


def test_a_burst_of_connections_waits_for_accept_instead_of_being_dropped(backend: DemoBackend) -> None:
    """The admin red team: attackers reconnecting as fast as their connections were closed or
    made room from filled the stdlib's listen backlog of 5 while the accept thread waited for the
    GIL, and the kernel dropped the kubelet's SYN: its connect took 1, 3, 7 s (the probe's
    timeout is 2 s). The backlog now holds twice the connection cap."""

    server = AdminServer("127.0.0.1", 0, Health(backend.url))  # not started: nothing is accepted
    address = (str(server.server_address[0]), int(server.server_address[1]))
    waiting = []
    try:
        for _ in range(100):
            waiting.append(socket.create_connection(address, timeout=0.5))  # a dropped SYN times out
    finally:
        for sock in waiting:
            sock.close()
        server.server_close()


def test_a_client_that_hangs_up_is_no_error(admin: AdminServer, capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    """socketserver printed a traceback on stderr for every probe or dribbler that reset its
    connection; anything else a handler raises is logged once, without one."""
    for error in (ConnectionResetError(104, "reset"), ValueError("bug")):
        try:
            raise error
        except Exception:
            admin.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
    assert caplog.text.count("admin request from") == 1 and "ValueError" in caplog.text


def test_a_readiness_check_that_raises_answers_each_probe_503(caplog: pytest.LogCaptureFixture) -> None:
    """A check failing unexpectedly (here on an upstream URL httpx cannot parse) is answered, for
    this probe and the next, not left hanging or dropped for the kubelet to retry blind."""
    server = AdminServer("127.0.0.1", 0, Health("http://[::1", listening=True))
    server.start()
    try:
        for _ in range(2):
            response = httpx.get(f"{server.url}/readyz", timeout=5)
            assert (response.status_code, response.json()) == (503, {"ready": False, "reason": "readiness check failed"})
        assert caplog.text.count("readiness check failed") == 2
    finally:
        server.stop()


def test_probes_arriving_during_an_upstream_check_share_it() -> None:
    """Each /readyz made its own request upstream: a flood of probes was a flood on the gateway.
    Those arriving while a check is in flight now take its answer; the next one checks anew."""

    release = threading.Event()
    connections: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def slow_upstream() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            connection.recv(4096)
            release.wait(10)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            connection.close()

    threading.Thread(target=slow_upstream, daemon=True).start()
    health = Health(f"http://127.0.0.1:{listener.getsockname()[1]}", listening=True)
    answers: list[UpstreamCheck] = []
    probes = [threading.Thread(target=lambda: answers.append(health.readiness())) for _ in range(8)]
    try:
        for probe in probes:
            probe.start()
        deadline = time.monotonic() + 5
        while not connections and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the other seven, all started, have long joined the check in flight
        release.set()
        for probe in probes:
            probe.join(10)
        assert answers == [UpstreamCheck(True, "ok")] * 8
        assert len(connections) == 1
        assert health.readiness() == UpstreamCheck(True, "ok") and len(connections) == 2  # none in flight: a new check
    finally:
        release.set()
        listener.close()


class StartupAnswers:
    """An upstream whose `/startupz` says what the test sets: (status, body)."""

    def __init__(self) -> None:
        self.answer = (200, b'{"ok":true,"status":"started","version":"2026.9.6","uptimeMs":1}')
        self.content_encoding: str | None = None
        self.accept_encoding: str | None = None  # what the last check asked for, and where
        self.asked_path: str | None = None
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status, body = answers.answer
                answers.accept_encoding, answers.asked_path = self.headers["Accept-Encoding"], self.path
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if answers.content_encoding is not None:
                    self.send_header("Content-Encoding", answers.content_encoding)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway_startup() -> Iterator[StartupAnswers]:
    answers = StartupAnswers()
    yield answers
    answers.server.shutdown()
    answers.server.server_close()


@pytest.fixture
def admin_of_gateway(gateway_startup: StartupAnswers) -> Iterator[AdminServer]:
    server = AdminServer("127.0.0.1", 0, Health(gateway_startup.url, listening=True))
    server.start()
    yield server
    server.stop()


def _metric(admin: AdminServer, line_start: str) -> list[str]:
    metrics = httpx.get(f"{admin.url}/metrics", timeout=5).text
    return [line for line in metrics.splitlines() if line.startswith(line_start)]


def test_readyz_says_which_gateway_release_is_upstream_and_warns_once_when_it_is_not_the_described_one(
        admin_of_gateway: AdminServer, gateway_startup: StartupAnswers, caplog: pytest.LogCaptureFixture) -> None:
    """The sidecar's routes, RPC methods and refusals are 2026.9.6's. A gateway upgraded under it
    went unnoticed: now /readyz names both releases, a mismatch is exported and logged once, and
    the pod stays Ready (what the newer gateway added is refused, not let through)."""
    def readyz() -> dict:
        response = httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5)
        assert response.status_code == 200
        return response.json()

    assert readyz() == {"ready": True, "reason": "ok", "upstreamRelease": "2026.9.6", "describedRelease": GATEWAY_VERSION}
    assert gateway_startup.asked_path == "/startupz"  # not its /readyz, 503 when one messaging channel fails
    assert _metric(admin_of_gateway, "openclaw_sidecar_upstream_release_mismatch ") == ["openclaw_sidecar_upstream_release_mismatch 0.0"]
    assert "upstream gateway reports release" not in caplog.text

    gateway_startup.answer = (200, b'{"ok":true,"status":"started","version":"2026.10.1"}')
    for _ in range(3):
        assert readyz() == {"ready": True, "reason": "ok", "upstreamRelease": "2026.10.1", "describedRelease": "2026.9.6"}
    assert _metric(admin_of_gateway, "openclaw_sidecar_upstream_release_mismatch ") == ["openclaw_sidecar_upstream_release_mismatch 1.0"]
    assert _metric(admin_of_gateway, "openclaw_sidecar_upstream_release_info") == [
        'openclaw_sidecar_upstream_release_info{described="2026.9.6",release="2026.10.1"} 1.0']
    warnings = [(r.name, r.getMessage()) for r in caplog.records if "upstream gateway reports release" in r.getMessage()]
    assert warnings == [("sidecar.admin", "the upstream gateway reports release 2026.10.1, and this sidecar describes "
                         "2026.9.6: routes and RPC methods added since are refused, and ones changed since are judged as "
                         "2026.9.6 judged them")]

    gateway_startup.answer = (200, b'{"ok":true,"status":"started","version":"2026.9.6"}')  # rolled back
    assert readyz()["upstreamRelease"] == "2026.9.6"
    assert _metric(admin_of_gateway, "openclaw_sidecar_upstream_release_mismatch ") == ["openclaw_sidecar_upstream_release_mismatch 0.0"]
    assert len([r for r in caplog.records if "upstream gateway reports release" in r.getMessage()]) == 1


def _startup_answer(size: int) -> bytes:
    """The gateway's answer naming 2026.9.6, padded to `size` bytes."""
    start, end = b'{"version": "2026.9.6", "pad": "', b'"}'
    return start + b"x" * (size - len(start) - len(end)) + end


def test_a_startup_answer_of_4_kib_is_read_whole(admin_of_gateway: AdminServer, gateway_startup: StartupAnswers) -> None:
    gateway_startup.answer = (200, _startup_answer(4 * 1024))
    assert httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5).json()["upstreamRelease"] == "2026.9.6"


@pytest.mark.parametrize("status, readyz", [(499, (200, "ok")), (500, (503, "upstream not ready: 500"))])
def test_an_upstream_is_ready_while_its_startupz_answers_below_500(
        admin_of_gateway: AdminServer, gateway_startup: StartupAnswers, status: int, readyz: tuple[int, str]) -> None:
    """The gateway answers /startupz 503 until it has started; any answer below 500 is up (a backend
    without the route answers 404)."""
    gateway_startup.answer = (status, b"{}")
    response = httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5)
    assert (response.status_code, response.json()["reason"]) == readyz


@pytest.mark.parametrize("status, body", [
    (404, b"Not Found"),  # a backend without the route: ready, no release
    (200, b'{"ok":true,"status":"started"}'),  # what the gateway tells a caller that is not direct-local
    (200, b"not json"),
    (200, b'["2026.9.6"]'),
    (200, b'{"version": 2026}'),
    (200, b'{"version": ""}'),
    (200, b'{"version": "2026.9.6\\n[FAKE] log line"}'),  # never a forged log line or label
    (200, b'{"version": "' + b"9" * 65 + b'"}'),
    (200, _startup_answer(4 * 1024 + 1)),  # past what a /startupz answer is
    (200, b"[" * 2040 + b"]" * 2040),  # within the read, and nested past 3.12's parser (3.13 reads it: a list)
    (200, b'{"version": "2026.9.6"' + b"\xff" + b"}"),  # not UTF-8
], ids=["404", "no-version", "not-json", "list", "number", "empty", "newline", "too-long", "too-large", "deep", "not-utf8"])
def test_an_upstream_that_reports_no_usable_release_is_ready_and_names_none(
        admin_of_gateway: AdminServer, gateway_startup: StartupAnswers, status: int, body: bytes) -> None:
    gateway_startup.answer = (status, body)
    response = httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5)
    assert (response.status_code, response.json()) == (200, {"ready": True, "reason": "ok"})
    assert admin_of_gateway.health.upstream_release is None


def test_the_upstream_check_takes_no_proxy_from_the_environment(
        admin_of_gateway: AdminServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway is the pod's own loopback: an HTTP_PROXY set for the pod's outbound calls must
    not carry the check (through a proxy that is not there, /readyz would say unreachable)."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    response = httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5, trust_env=False)  # this probe's own call too
    assert (response.status_code, response.json()["reason"]) == (200, "ok")


def test_a_flood_of_checks_leaves_no_thread_behind(gateway_startup: StartupAnswers) -> None:
    """Each check arms a timer for its deadline: one left running past its check, 4 s each, would
    let a flood of /readyz pile up a thread (and a socket) per check."""
    health = Health(gateway_startup.url, listening=True)
    before = threading.active_count()
    for _ in range(50):
        assert health.readiness().ready
    assert threading.active_count() < before + 10


def test_an_answer_the_upstream_compressed_is_not_decompressed(
        admin_of_gateway: AdminServer, gateway_startup: StartupAnswers) -> None:
    """A /startupz answer of 2 KB in brotli decoded to 1 GiB in the admin thread, past the sidecar's
    memory limit: its proxy would be OOM-killed with it. The check asks for the answer as it is and
    reads it so; one compressed all the same names no release."""
    gateway_startup.answer = (200, gzip.compress(b'{"ok":true,"status":"started","version":"2026.9.6"}'))
    gateway_startup.content_encoding = "gzip"
    response = httpx.get(f"{admin_of_gateway.url}/readyz", timeout=5)
    assert (response.status_code, response.json()) == (200, {"ready": True, "reason": "ok"})
    assert gateway_startup.accept_encoding == "identity"


@pytest.mark.parametrize("sent_at_once, outcome", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n", UpstreamCheck(True, "ok")),  # up, as its status says
    (b"HTTP/1.1 200 OK\r\nX-Pad: ",
     UpstreamCheck(False, f"upstream unreachable: no answer within {UPSTREAM_CHECK_DEADLINE_SECONDS:g} s")),
], ids=["body", "head"])
def test_an_answer_dribbled_a_byte_at_a_time_holds_the_check_no_longer_than_its_deadline(
        sent_at_once: bytes, outcome: UpstreamCheck) -> None:
    """Each read has the check's timeout; an answer sent a byte at a time never let one run out, and
    held every probe of the pod (they share the check in flight) for as long as it dribbled. A head
    never finished kept them all from an answer: the kubelet's probes filled their address's share
    of the admin port, its /healthz was closed at accept and the sidecar would be restarted."""

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def dribbling_upstream() -> None:
        connection, _ = listener.accept()
        connection.recv(4096)
        try:
            connection.sendall(sent_at_once)
            while not stop.wait(0.2):
                connection.sendall(b" ")
        except OSError:
            pass  # the check cut it
        connection.close()

    threading.Thread(target=dribbling_upstream, daemon=True).start()
    health = Health(f"http://127.0.0.1:{listener.getsockname()[1]}", listening=True)
    answered: list[UpstreamCheck] = []
    checking = threading.Thread(target=lambda: answered.append(health.readiness()), daemon=True)
    try:
        checking.start()
        checking.join(2 * UPSTREAM_CHECK_DEADLINE_SECONDS)
        assert answered == [outcome]
    finally:
        stop.set()
        listener.close()


# The families alerts and dashboards are written against (README, Operating it).
SIDECAR_FAMILIES = {
    "openclaw_sidecar_decisions_total", "openclaw_sidecar_ratelimit_storage_fallbacks_total",
    "openclaw_sidecar_ratelimit_storage_errors_total", "openclaw_sidecar_internal_errors_total",
    "openclaw_sidecar_head_refusals_total", "openclaw_sidecar_vanished_requests_total",
    "openclaw_sidecar_connections_refused_total", "openclaw_sidecar_connections_evicted_total",
    "openclaw_sidecar_client_connections", "openclaw_sidecar_head_timeouts_total", "openclaw_sidecar_shadowed_total",
    "openclaw_sidecar_audit_lines_dropped_total", "openclaw_sidecar_refusals_paced_total",
    "openclaw_sidecar_config_reloads_total", "openclaw_sidecar_upstream_release_info",
    "openclaw_sidecar_upstream_release_mismatch", "openclaw_sidecar_decision_seconds",
}


def test_metrics_has_every_sidecar_family_and_both_reload_results(admin: AdminServer) -> None:
    """A family registered anywhere but the sidecar's registry would be missing without an error;
    the reload results exist before any reload (a series born at 1 never shows an increase, so the
    first rejected reload would pass an `increase(...) > 0` alert by)."""
    lines = httpx.get(f"{admin.url}/metrics", timeout=5).text.splitlines()
    assert SIDECAR_FAMILIES <= {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    series = {line.rsplit(" ", 1)[0] for line in lines}
    assert {'openclaw_sidecar_config_reloads_total{result="applied"}',
            'openclaw_sidecar_config_reloads_total{result="rejected"}'} <= series
