"""Connection-level abuse found by adversarial review: every case gets an answer or a clean
close, the backend sees nothing, and the sidecar logs no crash."""

from __future__ import annotations

import itertools
import socket
import struct
import time

import pytest

from tests.node import node_http_parse

from .assertions import header_values
from .conftest import UPSTREAM_TOKEN
from .harness import read_response
from .ratelimit_helpers import scrape_metric, wait_until

TOKEN = "T"
CRASH_MARKERS = ("Traceback", "has crashed")
_AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
_INVOKE = b'{"tool":"agents_list","args":{}}'


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
        reply = read_response(sock, timeout=10)  # the body never comes: the answer is not waiting for it
    assert reply.status in (400, 401)
    assert backend.requests() == []
    _authorised_request_works(sidecar, backend)  # its line comes after any (wrong) second decision's: one writer, in order
    assert wait_until(lambda: len(sidecar.audit_lines()) >= 2, 10)
    assert [line["decision"] for line in sidecar.audit_lines()] == ["refused", "forwarded"], sidecar.audit_lines()


def test_a_refused_request_whose_body_came_with_it_keeps_the_connection(sidecar, backend) -> None:
    """Closing would make every refused keep-alive client reconnect, and a new connection costs
    the sidecar far more CPU than the refusal itself; a body still to come is the case above."""
    body = b'{"tool":"agents_list","args":{}}'
    request = (b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with _connect(sidecar) as sock:
        for _ in range(2):
            sock.sendall(request)
            reply = read_response(sock)
            assert reply.status == 401
            assert (reply.header("connection") or "keep-alive").lower() != "close"
    assert backend.requests() == []


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


@pytest.mark.parametrize("start, fill", [(b"20;a=", b"b"), (b"2", b"0"), (b"0\r\nX-T: ", b"a")],
                         ids=["chunk-extension", "chunk-size-digits", "trailer-line"])
def test_an_endless_chunk_line_from_a_stranger_is_cut_off(sidecar, backend, start: bytes, fill: bytes) -> None:
    """h11 waits for a whole chunk-size or trailer line without limit: these bytes were buffered
    (500 MB in a second) after the 401 had been sent. The sidecar stops reading within Node's
    16 KiB, so the sender's writes fail long before 16 MiB."""
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    megabyte = fill * (1 << 20)
    with _connect(sidecar) as sock:
        sock.sendall(head + start)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(16):
                sock.sendall(megabyte)
    assert backend.requests() == []
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()


def test_bytes_pipelined_behind_a_pending_request_are_bounded(sidecar, backend) -> None:
    """mitmproxy appended them unread while the request waited (600 MB from one client); past one
    whole request's worth the connection is closed."""
    body = b'{"tool":"slow","args":{"seconds":3}}'
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + \
        b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    megabyte = b"A" * (1 << 20)
    with _connect(sidecar) as sock:
        sock.sendall(head + body)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(16):
                sock.sendall(megabyte)
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()


def test_a_body_behind_a_refusal_the_pacer_holds_is_bounded(sidecar, backend) -> None:
    """While the pacer held a stranger's refusal, mitmproxy kept decoding the chunked body behind
    it and queued every chunk on the paused request (150 MB in 0.17 s, red team). Past the body
    limit and a margin the connection is closed, and the process does not grow."""
    denied = b'{"tool":"exec","args":{}}'
    for _ in range(16):  # a refusal streak: from the eleventh on, refusals are held back
        with _connect(sidecar) as sock:
            sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"Content-Length: %d\r\n\r\n" % len(denied) + denied)
            assert read_response(sock, timeout=10).status == 404
    before = sidecar.rss_mb()
    chunk = b"100000\r\n" + b"A" * 0x100000 + b"\r\n"
    with _connect(sidecar) as sock:
        sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(64):
                sock.sendall(chunk)
    assert sidecar.rss_mb() - before < 40
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()


def test_the_bodies_of_requests_refused_at_their_heads_are_not_held(sidecar, backend) -> None:
    """They were read whole and held (2 MB a connection while it lingered), and the process kept
    the freed buffers: a stranger grew it by 600 MB with 1.6 GB of refused bodies (red team). Each
    is answered, and what follows is dropped as it arrives."""
    body = b"A" * (2 * 1024 * 1024 - 1)
    before = sidecar.rss_mb()
    sockets = []
    try:
        for _ in range(30):
            sock = _connect(sidecar)
            sockets.append(sock)
            sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            assert read_response(sock, timeout=10).status == 401
            sock.sendall(body)
        time.sleep(0.3)  # all of it read while the connections linger
        assert sidecar.rss_mb() - before < 20  # 30 bodies held were 60 MB
    finally:
        for sock in sockets:
            sock.close()
    assert backend.requests() == []


def test_lower_case_method_is_refused_not_forwarded(sidecar, backend) -> None:
    with _connect(sidecar) as sock:
        sock.sendall(b"Post /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T\r\n"
                     b"Content-Length: 22\r\n\r\n{\"tool\":\"agents_list\"}")
        reply = read_response(sock)
    assert reply.status == 400
    assert backend.requests() == []


@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["body-with-head", "body-later"])
def test_an_internal_error_sends_nothing_upstream(start_sidecar, backend, pause: float) -> None:
    """mitmproxy relays a request whose hook raised unless it is answered or killed: the 500 the
    sidecar wrote to the socket itself went to the client and the raw request to the gateway,
    client headers and unjudged body included (red team: the real gateway ran the call)."""
    sidecar = start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN}},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}}, module="tests.e2e.faulty_sidecar")
    head = (b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"x-openclaw-scopes: operator.admin\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(_INVOKE)).encode() + b"\r\n\r\n")
    with _connect(sidecar) as sock:
        sock.sendall(head if pause else head + _INVOKE)
        if pause:
            time.sleep(pause)
            sock.sendall(_INVOKE)
        reply = read_response(sock)
    assert reply.status == 500 and reply.json() == {"error": {"message": "Internal Server Error", "type": "internal_error"}}
    time.sleep(0.5)  # what mitmproxy would relay leaves right after the hook
    assert backend.requests() == []
    assert "internal error in " in sidecar.logs()


# ---- bounded work before authentication (issue: hostile clients) ---------------------------------


def test_requests_whose_clients_reset_at_once_are_no_internal_error(sidecar, backend) -> None:
    """A request then an immediate reset (SO_LINGER 0), 200 times: uvloop reads a connection's
    address when first asked, and after a reset there is none. Each was an internal error with a
    traceback; such a request is dropped unjudged and counted, and nothing reaches the backend."""
    for _ in range(200):
        with _connect(sidecar) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _authorised_request_works(sidecar, backend)

    def accounted() -> int:  # each one either judged (its address read in time: an audited refusal) or counted
        vanished = scrape_metric(f"{sidecar.admin_url}/metrics", "openclaw_sidecar_vanished_requests_total")
        return int(vanished) + len([line for line in sidecar.audit_lines() if line.get("route") != "tools-invoke"])
    assert wait_until(lambda: accounted() == 200, timeout=5.0), accounted()
    assert scrape_metric(f"{sidecar.admin_url}/metrics", "openclaw_sidecar_internal_errors_total") == 0
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()[-2000:]
    assert [r["path"] for r in backend.requests()] == ["/tools/invoke"]


@pytest.fixture
def strict_sidecar(start_sidecar, backend):
    return start_sidecar({
        "sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                    "timeouts": {"headReadSeconds": 1}, "maxConnections": 4},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
    })


@pytest.fixture
def capped_sidecar(start_sidecar, backend):
    """A cap of 64: each address may hold 8 of it."""
    return start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                                      "maxConnections": 64},
                          "gateway": {"auth": {"mode": "token", "token": TOKEN}}})


def _from_address(sidecar, address: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((address, 0))
    sock.connect((sidecar.host, sidecar.port))
    return sock


def _metric(sidecar, name: str) -> float:
    return scrape_metric(f"{sidecar.admin_url}/metrics", f"openclaw_sidecar_{name}")


def _authorised_request_is_served_on(sock: socket.socket) -> None:
    sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH +
                 b"Content-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"tool\":\"agents_list\"}")
    assert read_response(sock, timeout=10).status == 200


def test_one_client_holds_only_its_share_of_the_connection_cap(capped_sidecar) -> None:
    """One address held every slot with idle sockets, reopened as the head deadline closed them,
    and authenticated clients were refused at accept (red team). A sixteenth of the cap each, at
    least 8: the ninth from one address is closed at once, and another address is served."""
    held = [_from_address(capped_sidecar, "127.0.0.3") for _ in range(8)]
    try:
        with _from_address(capped_sidecar, "127.0.0.3") as ninth:
            ninth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                if ninth.recv(100) == b"":
                    raise ConnectionResetError("closed at accept")
        with _from_address(capped_sidecar, "127.0.0.2") as other:
            _authorised_request_is_served_on(other)
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: _metric(capped_sidecar, "connections_refused_total") == 1, 5)


def test_a_full_cap_makes_room_by_answering_the_stranger_nearest_its_deadline(capped_sidecar) -> None:
    """Eight addresses, each within its share, filled the cap with sockets that sent nothing, and
    every other client was closed at accept until their head deadlines passed. Now the oldest of
    them gets its 408 at once and the newcomer is served; the others keep their slots, and so does
    an older connection idle since an authenticated call."""
    caller = _from_address(capped_sidecar, "127.0.0.10")
    _authorised_request_is_served_on(caller)
    held = [caller] + [_from_address(capped_sidecar, f"127.0.0.{10 + i // 8}") for i in range(1, 64)]
    try:
        assert wait_until(lambda: _metric(capped_sidecar, "client_connections") == 64, 5)
        with _from_address(capped_sidecar, "127.0.0.30") as newcomer:
            _authorised_request_is_served_on(newcomer)
        reply = read_response(held[1], timeout=5)
        assert reply.status == 408 and reply.header("connection") == "close"
        for sock in held[2:]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # nothing said to the rest
        _authorised_request_is_served_on(caller)
    finally:
        for sock in held:
            sock.close()
    assert _metric(capped_sidecar, "connections_evicted_total") == 1
    assert _metric(capped_sidecar, "connections_refused_total") == 0


@pytest.mark.parametrize("sent", [b"", b"G"], ids=["nothing", "a head begun"])
def test_a_flood_that_keeps_its_ends_open_cannot_outrun_the_room_made(start_sidecar, backend, sent: bytes) -> None:
    """Each eviction answered with a linger (1 s) held the slot meanwhile, so a flood whose clients
    kept their ends open outran it, and newcomers were closed at accept again (red team). A socket
    that sent nothing needs no linger; past 64 lingering, the oldest is dropped. 100 newcomers,
    each making room and then holding its own socket open, while the cap is 16."""
    sidecar = start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                                         "maxConnections": 16},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}})
    held = [_from_address(sidecar, f"127.0.0.{40 + i // 8}") for i in range(16)]
    try:
        assert wait_until(lambda: _metric(sidecar, "client_connections") == 16, 5)
        for i in range(1, 101):
            held.append(_from_address(sidecar, f"127.0.2.{i}"))
            held[-1].sendall(sent)
        assert wait_until(lambda: _metric(sidecar, "connections_evicted_total") == 100, 5)
        assert _metric(sidecar, "connections_refused_total") == 0
        assert read_response(held[0], timeout=5).status == 408
    finally:
        for sock in held:
            sock.close()


def _never_reading(sidecar, address: str) -> socket.socket:
    """A client with a tiny window that asks for ~80 KB of answers and never reads them."""
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.bind((address, 0))
    sock.connect((sidecar.host, sidecar.port))
    sock.sendall((b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") * 10)
    return sock


def test_a_client_that_never_reads_is_let_go_at_its_deadline(start_sidecar, backend) -> None:
    """asyncio's close waits until the client has read what is queued for it: sockets that never
    read kept their slots past every deadline (mitmproxy's watchdog, 600 s), filled the cap, and
    every newcomer was closed at accept (red team). Past the linger, what is queued is dropped."""
    sidecar = start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                                         "maxConnections": 16, "timeouts": {"headReadSeconds": 1}},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}})
    held = [_never_reading(sidecar, f"127.0.0.{50 + i // 8}") for i in range(16)]
    try:
        assert wait_until(lambda: _metric(sidecar, "client_connections") == 0, 15)
        with _connect(sidecar) as newcomer:
            _authorised_request_is_served_on(newcomer)
    finally:
        for sock in held:
            sock.close()


def test_a_refusal_being_paced_makes_room(start_sidecar, backend) -> None:
    """The pacer answers a flood of refusals late, by design; while it waited, the connection was in
    no deadline's table, and such floods held every slot (red team). A paced refusal is answered at
    once when its connection makes room, and that connection is closed."""
    sidecar = start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                                         "maxConnections": 16,
                                         "rateLimit": {"refusalPacing": {"afterRefusals": 0, "baseDelayMs": 5000,
                                                                         "maxDelayMs": 5000}}},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}})
    held = [_from_address(sidecar, f"127.0.0.{60 + i // 8}") for i in range(16)]
    try:
        for sock in held:
            sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 32\r\n\r\n" + _INVOKE)
        assert wait_until(lambda: _metric(sidecar, "refusals_paced_total") == 16, 5)
        with _connect(sidecar) as newcomer:
            _authorised_request_is_served_on(newcomer)
        reply = read_response(held[0], timeout=2)  # well before its pace ends
        assert reply.status == 401 and reply.header("connection") == "close"
    finally:
        for sock in held:
            sock.close()
    assert backend.requests()[0]["path"] == "/tools/invoke" and len(backend.requests()) == 1


def test_a_body_nobody_authenticated_makes_room_too(start_sidecar, backend) -> None:
    """A route that checks its own credential (hooks, opened here) admits a stranger's head: its
    body, never sent, held a slot no eviction could reach for the whole body deadline."""
    sidecar = start_sidecar({"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                                         "maxConnections": 4, "routes": {"allow": ["hooks"]}},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}, "hooks": {"enabled": True}})
    held = [_connect(sidecar) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"POST /hooks/wake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
        assert wait_until(lambda: _metric(sidecar, "client_connections") == 4, 5)
        time.sleep(0.2)  # their heads judged
        with _connect(sidecar) as newcomer:
            _authorised_request_is_served_on(newcomer)
        reply = read_response(held[0], timeout=5)
        assert reply.status == 408 and reply.json()["error"]["message"] == "Request body timeout"
    finally:
        for sock in held:
            sock.close()
    assert [request["path"] for request in backend.requests()] == ["/tools/invoke"]


def _authorised_request_works(sidecar, backend) -> None:
    with _connect(sidecar) as sock:
        sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"tool\":\"agents_list\"}")
        assert read_response(sock, timeout=10).status == 200


@pytest.mark.parametrize("head", [
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a long request line
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"b" * 17_000 + b"\r\n\r\n",  # long headers
    b"GET /" + b"c" * 3_000_000,  # never completes: refused as it arrives
])
def test_a_head_over_nodes_limit_gets_431_as_it_arrives(strict_sidecar, backend, head: bytes) -> None:
    with _connect(strict_sidecar) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished sending
        reply = read_response(sock, timeout=10)
    assert reply.status == 431 and reply.header("connection") == "close"
    assert backend.requests() == []
    _authorised_request_works(strict_sidecar, backend)


def test_a_dripping_head_is_answered_408_at_the_deadline(strict_sidecar, backend) -> None:
    """Activity never extends the deadline: a client that keeps dripping header lines (20 lines,
    0.3 s apart, far past the 1 s deadline) is answered 408 while it is still dripping."""
    with _connect(strict_sidecar) as sock:
        sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n")
        answered_at = None
        for line in range(20):
            time.sleep(0.3)
            try:
                sock.sendall(b"X-Drip-%d: 1\r\n" % line)
            except (BrokenPipeError, ConnectionResetError):
                answered_at = line
                break
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    answered_at = line
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        assert answered_at is not None, "still waiting after 20 dripped lines"
        reply = read_response(sock, timeout=10)
    assert reply.status == 408 and reply.header("connection") == "close"
    assert backend.requests() == []


def test_an_idle_keep_alive_connection_is_closed_without_a_word(strict_sidecar, backend) -> None:
    """As Node closes an idle keep-alive connection: a 408 here answered a request nobody sent,
    after a download the client was still reading (red team)."""
    with _connect(strict_sidecar) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, timeout=10).status == 200
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # nothing more sent: closed at the deadline, nothing said


def test_a_new_connection_that_sends_nothing_gets_408_as_from_node(strict_sidecar, backend) -> None:
    """Node's headersTimeout answers a connection that never sent a byte with 408 (unlike an idle
    keep-alive one, which it closes in silence)."""
    with _connect(strict_sidecar) as sock:
        assert read_response(sock, timeout=10).status == 408


def test_connections_beyond_the_cap_are_closed_at_accept_when_each_holds_an_admitted_call(strict_sidecar, backend) -> None:
    """Nothing to make room with: every slot holds a request whose body is still coming."""
    held = [_connect(strict_sidecar) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        with _connect(strict_sidecar) as extra:
            extra.settimeout(5)
            assert extra.recv(1) == b""  # closed without an answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    _authorised_request_works(strict_sidecar, backend)
    assert "connection cap (4) reached" in strict_sidecar.logs()


@pytest.mark.parametrize("raw", [
    # Bare LF line endings: mitmproxy reads them, Node answers 400 (found by `probe`, H1.*).
    b"POST /tools/invoke HTTP/1.1\nHost: x\n" + _AUTH.replace(b"\r\n", b"\n") + b"Content-Length: 32\n\n" + _INVOKE,
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"X-A: 1\nContent-Length: 32\r\n\r\n" + _INVOKE,
    # Chunk-size lines as Node reads them: no whitespace before CRLF, no 64-bit overflow.
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"Transfer-Encoding: chunked\r\n\r\n20 \r\n" + _INVOKE + b"\r\n0\r\n\r\n",
    b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff20\r\n" + _INVOKE,
    # No Host: the gateway answers 400; forwarding would leave it to guess the authority.
    b"POST /tools/invoke HTTP/1.1\r\n" + _AUTH + b"Content-Length: 32\r\n\r\n" + _INVOKE,
])
def test_what_node_would_refuse_is_refused_with_400_and_never_forwarded(sidecar, backend, raw: bytes) -> None:
    with _connect(sidecar) as sock:
        sock.sendall(raw)
        assert read_response(sock, timeout=5).status == 400
    assert backend.requests() == []
    assert not any(marker in sidecar.logs() for marker in CRASH_MARKERS), sidecar.logs()


def _transfer_encodings() -> list[bytes]:
    """Every spelling of up to three of these parts, and the two-header forms."""
    parts = [b"chunked", b"Chunked", b"gzip", b"identity", b" ", b"\t", b",", b"x"]
    values = sorted({b"".join(c) for n in (1, 2, 3) for c in itertools.product(parts, repeat=n)})
    return [b"Transfer-Encoding: " + v + b"\r\n" for v in values] + [
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"]


def test_a_transfer_encoding_node_refuses_never_reaches_the_gateway(sidecar, backend) -> None:
    """Each spelling through Node's own parser and through the sidecar: whatever Node refuses is
    refused with 400 and never relayed (mitmproxy read `chunked<TAB>` as chunked and relayed
    the request with a clean header)."""
    body = b"%x\r\n" % len(_INVOKE) + _INVOKE + b"\r\n0\r\n\r\n"
    heads = [b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"X-Case: %d\r\n" % i + framing + b"\r\n"
             for i, framing in enumerate(_transfer_encodings())]
    node, _ = node_http_parse([head + body for head in heads])
    answers = {}
    for i, head in enumerate(heads):
        with _connect(sidecar) as sock:
            sock.sendall(head + body)
            answers[i] = read_response(sock, timeout=5).status
    relayed = {int(header_values(record, "x-case")[0]) for record in backend.requests()}
    refused_by_node = {i for i, seen in enumerate(node) if seen["error"]}
    assert sorted(relayed & refused_by_node) == []
    assert {answers[i] for i in refused_by_node} == {400}
    assert len(relayed) >= 20 and {answers[i] for i in relayed} == {200}  # the accepted spellings still work


def test_an_http_2_0_request_line_is_not_kept_alive_as_node_does_not_keep_it(sidecar, backend) -> None:
    """Node reads `HTTP/2.0` as it reads 1.0 for keep-alive: it answers, then closes, and never
    reads what was pipelined behind; mitmproxy kept the connection and answered that too."""
    first = b"GET /first HTTP/2.0\r\nHost: x\r\n\r\n"
    second = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\n" + _AUTH + b"Content-Length: %d\r\n\r\n" % len(_INVOKE) + _INVOKE
    with _connect(sidecar) as sock:
        sock.sendall(first + second)
        reply = read_response(sock, timeout=5)
        sock.settimeout(5)
        rest = sock.recv(65536)
    assert reply.status == 200 and rest == b""
    assert [record["path"] for record in backend.requests()] == ["/first"]

