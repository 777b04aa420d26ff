"""The probe's wire layer: requests are the exact bytes the case describes, and answers are read
correctly off a real socket (lengths, chunks, close-delimited, 101, pipelined, hang-ups, timeouts)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.probe.corpus import PLACEHOLDERS, Body, Chunk, HttpRequest
from sidecar.probe.wire import MAX_BODY_BYTES, Context, Deadline, Endpoint, ProbeSetupError, exchange, render_request

from tests.builders import issue_certificate
from tests.ports import free_port

CTX = Context(host="gw.test:8080", safe_tool="agents_list", marker="ocprobe00000000", secret="s3cret",
              identity=(("x-forwarded-user", "alice"),))


def render(**fields) -> bytes:
    return render_request(HttpRequest(**{"method": "POST", "target": "/tools/invoke", **fields}), CTX)


def test_host_and_length_are_added_and_the_body_is_compact_json():
    assert render(body=Body("json", {"name": "${safe_tool}", "args": {}})) == (
        b"POST /tools/invoke HTTP/1.1\r\nHost: gw.test:8080\r\nContent-Length: 32\r\n\r\n"
        b'{"name":"agents_list","args":{}}')


def test_credential_headers_come_first_and_case_headers_keep_their_order_and_repeats():
    raw = render(credential=True, headers=(("x-openclaw-scopes", "a"), ("X-OpenClaw-Scopes", "b")))
    assert raw == (b"POST /tools/invoke HTTP/1.1\r\nHost: gw.test:8080\r\nAuthorization: Bearer s3cret\r\n"
                   b"x-forwarded-user: alice\r\nx-openclaw-scopes: a\r\nX-OpenClaw-Scopes: b\r\n\r\n")


def test_a_case_that_writes_its_own_host_or_framing_gets_none_added():
    raw = render(headers=(("Host", "${marker}.example"), ("Content-Length", "4"), ("Transfer-Encoding", "chunked")),
                 body=Body("text", "0\r\n\r\n"))
    assert raw == (b"POST /tools/invoke HTTP/1.1\r\nHost: ocprobe00000000.example\r\nContent-Length: 4\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert b"Host" not in render(host=False)


def test_raw_values_reach_the_wire_unchanged():
    raw = render(headers=(("X-Fold", "a\r\n b"), ("X-LF", "a\nb"), ("X-Byte", "\u00ff\u00fe"), ("x-openclaw-scopes ", "v")))
    assert b"X-Fold: a\r\n b\r\n" in raw
    assert b"X-LF: a\nb\r\n" in raw
    assert b"X-Byte: \xff\xfe\r\n" in raw
    assert b"x-openclaw-scopes : v\r\n" in raw


def test_bare_lf_line_endings_apply_to_the_whole_head():
    raw = render(line_ending="\n", body=Body("text", "{}"))
    assert raw == b"POST /tools/invoke HTTP/1.1\nHost: gw.test:8080\nContent-Length: 2\n\n{}"


def test_chunks_trailers_and_size_suffixes():
    raw = render(body=Body("chunked", chunks=(Chunk("${safe_tool}"), Chunk("xy", " ")),
                           trailers=(("x-openclaw-scopes", "${marker}"),)))
    assert raw.endswith(b"Transfer-Encoding: chunked\r\n\r\nb\r\nagents_list\r\n2 \r\nxy\r\n0\r\n"
                        b"x-openclaw-scopes: ocprobe00000000\r\n\r\n")


def test_a_declared_length_sends_no_body():
    assert render(body=Body("declared", 5242880)).endswith(b"Content-Length: 5242880\r\n\r\n")


def test_every_placeholder_the_corpus_allows_is_filled():
    filled = CTX.expand(" ".join(f"${{{name}}}" for name in sorted(PLACEHOLDERS)))
    assert filled == "gw.test:8080 ocprobe00000000 agents_list s3cret"


def test_placeholders_are_filled_in_targets_and_json_keys_and_values():
    raw = render(target="http://${host}/x?${marker}", body=Body("json", {"${marker}": ["${safe_tool}", 1, None]}))
    assert raw.startswith(b"POST http://gw.test:8080/x?ocprobe00000000 HTTP/1.1\r\n")
    assert raw.endswith(b'{"ocprobe00000000":["agents_list",1,null]}')


@pytest.mark.parametrize("url,complaint", [
    ("ftp://gw", "not an http"), ("http://gw/openclaw", "root"), ("http://gw/?a=1", "root"), ("gw:80", "not an http"),
    # credentials in the URL went out in the Host header and into the report, which prints the URL
    ("http://admin:hunter2@gw", "no user or password"), ("http://token@gw:80", "no user or password"),
    ("http://gw:99999", "Port"), ("http://gw:x", "Port"),  # a traceback and exit status 1, as if a case failed
])
def test_only_root_http_urls_are_targets(url, complaint):
    with pytest.raises(ProbeSetupError, match=complaint):
        Endpoint.parse(url)


def test_an_endpoint_keeps_the_authority_as_written():
    endpoint = Endpoint.parse("https://gw.example:8443/")
    assert (endpoint.host, endpoint.port, endpoint.tls, endpoint.authority) == ("gw.example", 8443, True, "gw.example:8443")
    assert Endpoint.parse("http://[::1]").port == 80


# ---- reading answers off a real socket -----------------------------------------------------------


class CannedServer:
    """Accepts one connection, reads what arrives, writes `reply`, and `later` once `pause` seconds
    have passed (then closes unless told to hang); over TLS with `tls`."""

    def __init__(self, reply: bytes, hang: bool = False, later: bytes = b"", pause: float = 0.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.reply, self.hang, self.later, self.pause, self.tls = reply, hang, later, pause, tls
        self.received = b""
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    @property
    def endpoint(self) -> Endpoint:
        scheme = "https" if self.tls else "http"
        return Endpoint.parse(f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}")

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(2)
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.received = conn.recv(65536)
            conn.sendall(self.reply)
            if self.later:
                self.done.wait(self.pause)
                conn.sendall(self.later)
            if self.hang:
                self.done.wait(5)
        except OSError:
            pass  # the client refused the handshake
        finally:
            conn.close()
            self.listener.close()


@pytest.fixture
def served() -> Iterator[list[CannedServer]]:
    servers: list[CannedServer] = []
    yield servers
    for server in servers:
        server.done.set()


def answer_from(served: list[CannedServer], reply: bytes, methods=("POST",), hang=False, timeout=2.0, linger=0.0,
                **server_options):
    server = CannedServer(reply, hang, **server_options)
    served.append(server)
    return exchange(server.endpoint, b"POST / HTTP/1.1\r\n\r\n", list(methods), timeout, linger)


def test_a_content_length_answer(served):
    [answer] = answer_from(served, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nX-A: b\r\n\r\n{\"a\":1}trailing")
    assert (answer.kind, answer.status, answer.body, answer.headers) == ("http", 403, b'{"a":1}', (("Content-Length", "7"), ("X-A", "b")))


def test_a_chunked_answer(served):
    """Chunks of any size (one byte too), extensions, and trailers read to their blank line, so the
    next pipelined answer starts where it should."""
    answers = answer_from(served, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n2;x=y\r\nef\r\n"
                                  b"0\r\nT: 1\r\nU: 2\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", methods=("POST", "POST"))
    assert [(a.kind, a.status, a.body) for a in answers] == [("http", 200, b"abcdef"), ("http", 404, b"")]


def test_chunks_that_together_pass_the_cap_are_cut_at_it(served):
    [answer] = answer_from(served, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY_BYTES - 10)
                           + b"a" * (MAX_BODY_BYTES - 10) + b"\r\n64\r\n" + b"b" * 100 + b"\r\n0\r\n\r\n")
    assert (answer.status, answer.body) == (200, b"a" * (MAX_BODY_BYTES - 10) + b"b" * 10)


@pytest.mark.parametrize("size", [b"-1", b"0x5", b"+5", b"5_0"])
def test_a_chunk_size_that_is_no_hex_number_ends_the_body_and_keeps_the_status(served, size):
    """The probe red team: `-1` passed Python's int(), and a negative size let a hostile target
    send past the body cap."""
    [answer] = answer_from(served, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" + size +
                           b"\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n")
    assert (answer.kind, answer.status, answer.body) == ("http", 200, b"abc")


def test_a_close_delimited_answer(served):
    [answer] = answer_from(served, b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    assert answer.body == b"until close"


def test_interim_answers_are_skipped_but_101_is_final(served):
    [answer] = answer_from(served, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert answer.status == 201
    [upgraded] = answer_from(served, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
                             methods=("GET", "GET"))
    # what follows a 101 is the other protocol: no body of the answer, and no second answer
    assert (upgraded.status, upgraded.headers, upgraded.body) == (101, (("Upgrade", "websocket"),), b"")


@pytest.mark.parametrize("reply", [
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % MAX_BODY_BYTES + b"c" * MAX_BODY_BYTES,
                 id="one-chunk-exactly-the-cap"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + b"l" * (MAX_BODY_BYTES + 10), id="length-past-the-cap"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\n" + b"u" * MAX_BODY_BYTES, id="close-delimited-to-the-cap"),
])
def test_a_body_that_reaches_the_cap_ends_there_without_waiting_for_more(served, reply):
    """The target sends the cap's worth (or more) and keeps the connection open: the answer is the
    capped body, read without waiting for a chunk's end, the rest of a length, or the close."""
    [answer] = answer_from(served, reply, hang=True)
    assert (answer.kind, answer.status, answer.body) == ("http", 200, reply[-1:] * MAX_BODY_BYTES)


@pytest.mark.parametrize("length", [b"-1", b"5x", b"+3", b""])
def test_a_length_that_is_no_number_reads_the_body_to_the_close(served, length):
    [answer] = answer_from(served, b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nuntil close")
    assert (answer.kind, answer.status, answer.body) == ("http", 200, b"until close")


def test_pipelined_answers_are_read_in_order(served):
    answers = answer_from(served, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                          methods=("POST", "POST"))
    assert [(a.status, a.body) for a in answers] == [(200, b"ok"), (404, b"")]


@pytest.mark.parametrize("method,head", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
])
def test_an_answer_that_carries_no_body_ends_at_its_head_whatever_its_framing_says(served, method, head):
    """A HEAD's answer, a 204 and a 304 have no body: reading one (by length, or to the close) would
    take the next pipelined answer's bytes for it."""
    answers = answer_from(served, head + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", methods=(method, "GET"))
    assert [(a.status, a.body) for a in answers] == [(int(head[9:12]), b""), (404, b"")]


@pytest.mark.parametrize("reply,error", [
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP answer: 'SSH-2.0-OpenSSH_9.6'"),
    (b"HTTP/1.1 OK\r\n\r\n", "not an HTTP answer: 'HTTP/1.1 OK'"),
    (b"HTTP/1.1 200 OK", "the answer ended inside its head: b'HTTP/1.1 200 OK'"),
])
def test_an_answer_without_a_whole_status_line_is_closed_with_what_came(served, reply, error):
    """No status can be read off another protocol's greeting or a status line cut short: the
    answer is `closed`, and its error shows the bytes, not a traceback."""
    [answer] = answer_from(served, reply)
    assert (answer.kind, answer.status, answer.error) == ("closed", None, error)


def test_an_answer_longer_than_one_read_is_read_whole(served):
    """One read takes at most 64 KiB: a head, a chunk-size line (a long chunk extension) and a body
    past that are read on, and the head is cut only past its own 256 KiB cap."""
    pad = [(f"X-Pad-{i}", "p" * 100) for i in range(1000)]
    head = b"HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pad).encode() + b"Transfer-Encoding: chunked\r\n\r\n"
    body = b"b" * 100_000
    [answer] = answer_from(served, head + b"%x;ext=" % len(body) + b"e" * 100_000 + b"\r\n" + body + b"\r\n0\r\n\r\n")
    assert (answer.status, answer.headers, answer.body) == (200, (*pad, ("Transfer-Encoding", "chunked")), body)


def test_a_hang_up_without_an_answer_is_closed(served):
    assert [a.kind for a in answer_from(served, b"")] == ["closed"]
    assert [a.kind for a in answer_from(served, b"", methods=("POST", "POST"))] == ["closed"]  # said once
    answers = answer_from(served, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", methods=("POST", "POST"))
    assert [a.kind for a in answers] == ["http", "closed"]


@pytest.mark.parametrize("methods", [("POST",), ("POST", "POST")], ids=["one-owed", "two-owed"])
def test_silence_is_a_timeout_with_no_answer(served, methods):
    """A target that sends nothing is told apart from an answer too slow to finish, however many
    answers it owed: with one, its read ends exactly at the case's deadline."""
    [answer] = answer_from(served, b"", methods=methods, hang=True, timeout=0.3)
    assert (answer.kind, answer.error) == ("timeout", "no answer within 0.3 s")


def test_silence_after_an_answer_is_no_answer_to_the_next(served):
    [first, second] = answer_from(served, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", methods=("POST", "POST"),
                                  hang=True, timeout=0.3)
    assert (first.status, second.kind, second.error) == (200, "timeout", "no answer within 0.3 s")


def test_a_spent_deadline_times_out_the_next_read_before_it_starts():
    """A socket's timeout cannot be set to no time left (0 makes it non-blocking, less is an
    error): a case past its deadline times out as a silent one does."""
    deadline = Deadline(0.0, 1)
    with socket.socket() as sock, pytest.raises(TimeoutError):
        deadline.arm(sock)
    assert deadline.missed() == "no answer within 0 s"


@pytest.fixture
def tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1, and the CA that issued it."""
    ca, cert, key = issue_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, ca


def test_an_https_target_is_spoken_to_over_tls_with_its_certificate_checked(served, tls_server, monkeypatch):
    """https:// means TLS, verified against the trust store (here, one holding only the test CA)."""
    context, ca = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    [answer] = answer_from(served, b"HTTP/1.1 204 No Content\r\n\r\n", tls=context)
    assert (answer.kind, answer.status) == ("http", 204)
    assert served[-1].received == b"POST / HTTP/1.1\r\n\r\n"


def test_an_https_target_whose_certificate_is_not_trusted_cannot_be_connected_to(served, tls_server):
    context, _ = tls_server
    [answer] = answer_from(served, b"HTTP/1.1 204 No Content\r\n\r\n", tls=context)
    assert answer.kind == "error" and answer.error.startswith("cannot connect: [SSL: CERTIFICATE_VERIFY_FAILED]")


def test_a_refused_connection_is_an_error():
    [answer] = exchange(Endpoint.parse(f"http://127.0.0.1:{free_port()}"), b"x", ["GET"], 1.0)
    assert answer.kind == "error" and "cannot connect" in answer.error


def test_what_was_written_is_exactly_the_rendered_request(served):
    payload = render(headers=(("X-LF", "a\nb"),), body=Body("text", "{}"))
    server = CannedServer(b"HTTP/1.1 204 No Content\r\n\r\n")
    served.append(server)
    exchange(server.endpoint, payload, ["POST"], 2.0)
    assert server.received == payload


SMUGGLED = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")


def test_lingering_catches_an_answer_to_a_request_the_probe_never_counted(served):
    """A CL.TE desync: the hop answers the request hidden in the body too (the reviewer's desync.py)."""
    [answer] = answer_from(served, SMUGGLED, hang=True, linger=0.3)
    assert answer.status == 400 and answer.unasked.startswith(b"HTTP/1.1 200 OK")
    [quiet] = answer_from(served, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", hang=True, linger=0.3)
    assert (quiet.status, quiet.unasked) == (400, b"")
    [unread] = answer_from(served, SMUGGLED, hang=True)  # without linger the extra answer is never read
    assert unread.unasked == b""


def test_lingering_waits_its_own_time_for_an_answer_that_comes_after_the_case_timeout(served):
    """The linger, not the case's timeout, bounds the wait for an unasked answer: a hop that answers
    the smuggled request a second later is still caught with a 0.2 s timeout."""
    refused, smuggled = SMUGGLED.split(b"0\r\n\r\n", 1)
    [answer] = answer_from(served, refused + b"0\r\n\r\n", later=smuggled, pause=1.0, timeout=0.2, linger=5.0)
    assert (answer.status, answer.unasked) == (400, smuggled)


def test_lingering_takes_only_an_answer_for_an_unasked_one(served):
    """A stray CRLF after a body, or the rest of a body cut at the cap, is no second answer (both
    failed a correct target as smuggling; review)."""
    [stray] = answer_from(served, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\r\n", hang=True, linger=0.3)
    assert (stray.status, stray.unasked) == (400, b"")
    big = b"x" * (MAX_BODY_BYTES + 1000)
    [cut] = answer_from(served, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big, hang=True, linger=0.3)
    assert (len(cut.body), cut.unasked) == (MAX_BODY_BYTES, b"")
