"""The probe against a hostile target: one that trickles its answers, sends endless or absurdly
large ones, nests JSON past the parser's depth, or writes terminal escapes. Every case still ends
within its deadline, reads a bounded amount, and reports what came back without letting the
target write to the terminal. Each target is a tiny server in a thread on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, TextMessage

from openclaw_demo.backend import DemoBackend
from sidecar.cli import build_parser
from sidecar.probe.command import run_probe
from sidecar.probe.corpus import CONNECT_ID, WsRequest
from sidecar.probe.record import MAX_RECORD_BYTES, BackendRecord
from sidecar.probe.wire import MAX_BODY_BYTES, Context, Endpoint, ProbeSetupError, exchange
from sidecar.probe.ws import exchange_ws

# What a target sends, given the connection, the request's first bytes and the test's end.
Behaviour = Callable[[socket.socket, bytes, threading.Event], None]

CTX = Context(host="127.0.0.1", safe_tool="agents_list", marker="ocprobe00000000", secret="s3cret-token")
OK = b'{"ok":true,"result":{}}'
FORGED = "\x1b]0;PWNED\x07\x1b[2J\x1b[31m\nFAKE: result PASS"


class Hostile:
    """Serves every connection with `behave`, each in a thread of its own, until the test ends."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(f"http://127.0.0.1:{self.listener.getsockname()[1]}")

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                request = conn.recv(65536)
                if request:  # not the probe's reachability check
                    self.behave(conn, request, self.stop)
            except OSError:
                pass  # the probe hung up first, as it should


@pytest.fixture
def hostile() -> Iterator[Callable[[Behaviour], Hostile]]:
    servers: list[Hostile] = []

    def start(behave: Behaviour) -> Hostile:
        servers.append(Hostile(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.stop.set()
        server.listener.close()


def upgraded(conn: socket.socket, request: bytes) -> WSConnection:
    """The upgrade accepted: the server's side of the WebSocket, to write frames with."""
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(request)
    list(ws.events())
    conn.sendall(ws.send(AcceptConnection()))
    return ws


def http_or_ws(on_upgrade: Callable[[socket.socket, WSConnection, threading.Event], None]) -> Behaviour:
    """HTTP calls answered 200 (the credential control passes); an upgrade accepted and, once the
    connect frame is in, handed to `on_upgrade`."""
    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"sec-websocket-key" not in request.lower():
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(OK), OK))
            return
        ws = upgraded(conn, request)
        conn.recv(65536)
        on_upgrade(conn, ws, stop)
        stop.wait(5)
    return behave


def probe_cli(target: Hostile, capsys: pytest.CaptureFixture[str], cases: str = "A1.x-forwarded-uri") -> tuple[int, str]:
    """The probe command run as a user runs it (one ordinary case and the controls): its exit
    status and the table it printed."""
    args = build_parser().parse_args(["probe", target.endpoint.url, "--token", "s3cret-token", "--timeout", "2",
                                      "--cases", cases])
    code = run_probe(args, "9.9.9")
    return code, capsys.readouterr().out


# ---- one deadline per case -----------------------------------------------------------------------


@pytest.mark.parametrize("first,every", [
    (b"H", b"x"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", b"x"),
    (b"", b"HTTP/1.1 100 Continue\r\n\r\n"),
], ids=["head", "body", "interim-answers"])
def test_an_answer_trickled_in_times_out_at_the_case_deadline(hostile, first, every):
    """Something every 0.1 s keeps each read under its timeout: only the case's deadline ends it."""
    def trickle(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(first)
        for _ in range(100):  # 10 s, then the connection closes: a probe without a deadline waits that long
            if stop.wait(0.1):
                return
            conn.sendall(every)

    [answer] = exchange(hostile(trickle).endpoint, b"GET / HTTP/1.1\r\n\r\n", ["GET"], 0.5)
    assert (answer.kind, answer.error) == ("timeout", "no complete answer within 0.5 s")


def test_websocket_chatter_that_answers_nothing_times_out_at_the_case_deadline(hostile):
    def chatter(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
        for _ in range(100):
            conn.sendall(ws.send(TextMessage('{"type":"event","event":"tick"}')))
            if stop.wait(0.1):
                return

    answer, _ = exchange_ws(hostile(http_or_ws(chatter)).endpoint, WsRequest(), CTX, "/", 0.5, "9.9.9")
    assert (answer.kind, answer.stage, answer.error) == ("timeout", "connect", "no complete answer within 1 s")


# ---- a cap on what is read -----------------------------------------------------------------------

PAST_THE_CAP = MAX_BODY_BYTES + 1024 * 1024


def test_a_chunk_claiming_a_huge_size_is_cut_at_the_body_cap(hostile):
    def chunk_bomb(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n" + b"A" * PAST_THE_CAP)
        stop.wait(10)

    [answer] = exchange(hostile(chunk_bomb).endpoint, b"GET / HTTP/1.1\r\n\r\n", ["GET"], 2.0)
    assert (answer.kind, answer.status, len(answer.body)) == ("http", 200, MAX_BODY_BYTES)


def test_a_refused_upgrade_with_a_huge_body_is_cut_at_the_body_cap(hostile):
    def refusal(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 1000000000000\r\n\r\n" + b"A" * PAST_THE_CAP)
        stop.wait(10)

    answer, _ = exchange_ws(hostile(refusal).endpoint, WsRequest(), CTX, "/", 2.0, "9.9.9")
    assert (answer.kind, answer.stage, answer.status, len(answer.body)) == ("http", "upgrade", 403, MAX_BODY_BYTES)


@pytest.mark.parametrize(("framing", "sent", "body"), [
    (b"Content-Length: 12", b"Unauthorized", b"Unauthorized"),
    (b"Content-Length: 0", b"", b""),
    (b"Transfer-Encoding: chunked", b"5\r\nnope!\r\n0\r\n\r\n", b"nope!"),
])
def test_a_refused_upgrade_keeps_its_headers_with_or_without_a_body(hostile, framing, sent, body):
    """wsproto flags nearly every refusal as having a body: the headers must outlive the wait for it."""
    def refusal(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=gw\r\n" + framing + b"\r\n\r\n" + sent)
        stop.wait(10)

    answer, _ = exchange_ws(hostile(refusal).endpoint, WsRequest(), CTX, "/", 2.0, "9.9.9")
    assert (answer.kind, answer.stage, answer.status) == ("http", "upgrade", 401)
    assert ("www-authenticate", "Bearer realm=gw") in answer.headers  # wsproto (h11) lowercases names
    assert answer.body == body


def test_an_endless_websocket_message_is_cut_at_the_cap_and_judges_nothing(hostile):
    def endless(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
        part = "y" * 65536
        for _ in range(PAST_THE_CAP // len(part)):
            conn.sendall(ws.send(TextMessage(part, message_finished=False)))

    answer, _ = exchange_ws(hostile(http_or_ws(endless)).endpoint, WsRequest(), CTX, "/", 2.0, "9.9.9")
    assert (answer.kind, answer.stage) == ("error", "connect")
    assert answer.error == "a message over 4 MiB came back: the probe reads no further"


def answers_ok_but_garbles(method: str) -> Behaviour:
    """Every frame answered `res ok`, but `method`'s with a frame of a reserved opcode: wsproto
    cannot parse it and reports a close the target never sent."""
    def on_upgrade(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
        ws.receive_data(b"")  # the connect frame was read by http_or_ws: answer it first
        conn.sendall(ws.send(TextMessage(json.dumps({"type": "res", "id": CONNECT_ID, "ok": True, "payload": {}}))))
        while not stop.is_set():
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    frame = json.loads(event.data)
                    if frame.get("method") == method:
                        conn.sendall(b"\x83\x00")
                    else:
                        conn.sendall(ws.send(TextMessage(json.dumps({"type": "res", "id": frame["id"], "ok": True}))))
    return http_or_ws(on_upgrade)


def test_a_frame_the_probe_cannot_parse_is_no_close_from_the_target(hostile, capsys):
    """wsproto answers an unparsable frame with a CloseConnection of its own: read as the target
    closing, a denied method whose answer was garbled passed as refused."""
    target = hostile(answers_ok_but_garbles("agent"))
    args = build_parser().parse_args(["probe", target.endpoint.url, "--token", "s3cret-token", "--timeout", "2",
                                      "--cases", "ws.denied.agent"])
    assert run_probe(args, "9.9.9") == 2  # the one case selected was not judged
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("ws.denied.agent"))
    assert "inconclusive" in row and "cannot read" in row, row


# ---- JSON nested too deep to parse ---------------------------------------------------------------


def test_an_answer_nested_too_deep_is_an_unparsable_body_not_a_crash(hostile, capsys):
    def deep(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        body = b"[" * 200_000
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))

    code, table = probe_cli(hostile(deep), capsys)
    assert code == 1
    assert "control.credential  control FAIL            refused: 401 [[[[" in table


def test_a_websocket_answer_nested_just_short_of_the_parser_limit_is_no_crash(hostile, capsys):
    """Parsed, then walked again to take the secret out of it: that walk ran out of stack."""
    def deep_refusal(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
        nested = "[" * 990 + "]" * 990
        conn.sendall(ws.send(TextMessage('{"type":"res","id":"%s","ok":false,"error":{"code":"X","message":"m"},'
                                         '"payload":%s}' % (CONNECT_ID, nested))))

    code, table = probe_cli(hostile(http_or_ws(deep_refusal)), capsys)
    assert code == 1
    assert "control.websocket   control FAIL            refused: res error X: m" in table


def test_a_websocket_frame_nested_too_deep_is_skipped_like_any_unparsable_frame(hostile):
    def deep_then_answer(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
        conn.sendall(ws.send(TextMessage("[" * 200_000)))
        conn.sendall(ws.send(TextMessage(json.dumps({"type": "res", "id": CONNECT_ID, "ok": True, "payload": {}}))))

    answer, _ = exchange_ws(hostile(http_or_ws(deep_then_answer)).endpoint, WsRequest(), CTX, "/", 2.0, "9.9.9")
    assert (answer.kind, answer.stage, (answer.frame or {}).get("ok")) == ("ws-res", "connect", True)


# ---- nothing the target writes reaches the terminal raw ------------------------------------------


def close_with_escapes(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
    conn.sendall(ws.send(CloseConnection(1008, FORGED)))


def refuse_with_escapes(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
    """The escapes JSON-encoded: parsing the frame decodes them."""
    frame = {"type": "res", "id": CONNECT_ID, "ok": False, "error": {"code": "X", "message": FORGED}}
    conn.sendall(ws.send(TextMessage(json.dumps(frame))))


def http_refusal_with_escapes(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    body = json.dumps({"error": {"type": FORGED, "message": "x"}}).encode()
    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("behave", [
    http_or_ws(close_with_escapes), http_or_ws(refuse_with_escapes), http_refusal_with_escapes,
], ids=["ws-close-reason", "ws-error-message", "http-error-type"])
def test_escapes_and_line_breaks_from_the_target_are_shown_escaped_in_the_table(hostile, capsys, behave):
    code, table = probe_cli(hostile(behave), capsys)
    assert code == 1
    assert "\\x1b[2J" in table
    assert "\x1b" not in table and "\x07" not in table
    assert not [line for line in table.splitlines() if line.startswith("FAKE")]


WORKFLOW_BODY = b'{"error":"no"}\r\n::error title=x::PWNED\r\n  ::add-mask::hide\r\nx ##[warning]legacy\r\n'


def http_refusal_with_workflow_commands(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """Lines a GitHub Actions runner would run: `::name::` at a line's start (it skips leading blanks)
    and the legacy `##[name]` anywhere in a line."""
    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nX-A: ##[error]header\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(WORKFLOW_BODY), WORKFLOW_BODY))


def ws_refusal_with_workflow_commands(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
    """A line separator (str.splitlines breaks there) and a right-to-left override, JSON-decoded."""
    message = "a\u2028::error::PWNED \u202e ##[error]ws"
    frame = {"type": "res", "id": CONNECT_ID, "ok": False, "error": {"code": "X", "message": message}}
    conn.sendall(ws.send(TextMessage(json.dumps(frame))))


@pytest.mark.parametrize("fmt", ["table", "json", "junit"])
@pytest.mark.parametrize("behave", [
    http_refusal_with_workflow_commands, http_or_ws(ws_refusal_with_workflow_commands),
], ids=["http-answer", "ws-error-message"])
def test_no_line_of_the_report_is_a_ci_workflow_command(hostile, capsys, behave, fmt):
    args = build_parser().parse_args(["probe", hostile(behave).endpoint.url, "--token", "s3cret-token", "--timeout", "2",
                                      "--cases", "A1.x-forwarded-uri", "--format", fmt])
    assert run_probe(args, "9.9.9") == 1
    report = capsys.readouterr().out
    assert "PWNED" in report
    assert "\u2028" not in report and "\u202e" not in report
    for line in report.splitlines():
        assert not line.lstrip().startswith("::"), line
        assert "##[" not in line, line


def test_a_method_the_target_had_the_backend_record_is_shown_escaped(hostile, capsys):
    """The demo backend records any request line's first word as its method: a target sends one of
    its own with escapes for a method, then refuses the case (which reached the backend: the why
    names the method, and so do the details)."""
    with DemoBackend() as backend:
        def forward_forged(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
            with socket.create_connection((backend.host, backend.port), timeout=5) as upstream:
                upstream.sendall(b"\x1b]0;PWNED\x07\x1b[2J /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                upstream.recv(65536)
            refused = b"Bearer s3cret-token" not in request
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" if refused else
                         b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))

        args = build_parser().parse_args(["probe", hostile(forward_forged).endpoint.url, "--token", "s3cret-token",
                                          "--timeout", "2", "--backend-record", backend.url,
                                          "--cases", "A1.x-forwarded-uri-without-credential"])
        assert run_probe(args, "9.9.9") == 1
    table = capsys.readouterr().out
    assert "only after it reached the backend: \\x1b]0;PWNED\\x07\\x1b[2J /tools/invoke" in table
    assert "arrived at the backend: \\x1b]0;PWNED" in table
    assert "\x1b" not in table and "\x07" not in table


def desync(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """A hop that frames by Content-Length where the next one frames by chunks (CL.TE, the
    reviewer's desync.py): the request hidden in the body is answered too, right after the first."""
    if b"0\r\n\r\nPOST" not in request:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))
        return
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))
    stop.wait(5)


def test_an_answer_to_a_smuggled_request_fails_the_case(hostile, capsys):
    code, table = probe_cli(hostile(desync), capsys, cases="H1.content-length-and-chunked")
    assert code == 1
    row = next(line for line in table.splitlines() if line.startswith("H1.content-length-and-chunked"))
    assert "FAIL" in row and "smuggled" in table


# ---- an answer that started is no refusal --------------------------------------------------------

BROKEN_200 = {
    "chunks-cut-short": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n17\r\n" + OK,
    "chunk-size-not-hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + OK,
    "length-not-ascii": b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n" + OK,
    "head-past-the-cap": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 2**20 + b"\r\n\r\n" + OK,
    "head-cut-short": b"HTTP/1.1 200 OK\r\nContent-Type: appl",
}


def broken_200(answer: bytes) -> Behaviour:
    """The credential control answered properly; every other request with a 200 whose head or body
    then breaks off, as a vulnerable proxy relaying a backend that died mid-answer does."""
    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"Bearer s3cret-token" in request and b"ocprobe" not in request and b"sec-websocket-key" not in request.lower():
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))
            return
        conn.sendall(answer)
    return behave


@pytest.mark.parametrize("answer", BROKEN_200.values(), ids=BROKEN_200.keys())
def test_a_200_whose_rest_is_broken_keeps_its_status(hostile, answer):
    [read] = exchange(hostile(broken_200(answer)).endpoint, b"GET / HTTP/1.1\r\n\r\n", ["GET"], 2.0)
    assert (read.kind, read.status) == ("http", 200)


@pytest.mark.parametrize("answer", BROKEN_200.values(), ids=BROKEN_200.keys())
def test_a_200_whose_rest_is_broken_lets_through_a_case_that_must_be_refused(hostile, capsys, answer):
    """Read as a connection closed without an answer, it passed as refused: exit 0."""
    code, table = probe_cli(hostile(broken_200(answer)), capsys, cases="A1.x-forwarded-uri-without-credential")
    row = next(line for line in table.splitlines() if line.startswith("A1.x-forwarded-uri-without-credential"))
    assert code == 1
    assert "FAIL" in row and "let through: 200" in row


# ---- a run that judged nothing is no pass --------------------------------------------------------


def unavailable_but_for_the_control(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """A broken target: the probe's good call works, everything else is a 503 (or a gateway that
    answers nothing else): no case can be judged."""
    if b"Bearer s3cret-token" in request and b"ocprobe" not in request and b"sec-websocket-key" not in request.lower():
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))
        return
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("fmt", ["table", "junit"])
def test_a_run_in_which_no_case_was_judged_does_not_exit_0(hostile, capsys, fmt):
    """Every case inconclusive (or not applicable) but the controls: it said 'result: PASS', exit 0."""
    args = build_parser().parse_args(["probe", hostile(unavailable_but_for_the_control).endpoint.url, "--token",
                                      "s3cret-token", "--timeout", "2", "--cases", "A1.*", "--format", fmt])
    assert run_probe(args, "9.9.9") == 2
    report = capsys.readouterr().out
    if fmt == "table":
        assert "result: NOTHING JUDGED: 0 failed, 1 passed, 6 inconclusive, 1 not applicable" in report
    else:
        assert '<error message="no case but the controls was judged' in report


# ---- the secret stays out of the report, however the target echoes it ----------------------------


def echo_everything(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """The request echoed: raw, JSON-escaped (ASCII and not) and in a header, all with a 200."""
    text = request.decode("latin-1")
    body = request + json.dumps({"echo": text}).encode() + json.dumps({"echo": text}, ensure_ascii=False).encode()
    authorization = next((line for line in request.split(b"\r\n") if line.startswith(b"Authorization")), b"X: -")
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Echo: %s\r\nContent-Length: %d\r\n\r\n%s" % (authorization, len(body), body))


@pytest.mark.parametrize("fmt", ["table", "json"])
@pytest.mark.parametrize("secret", ['tok"en\\ABCDEF', "Gr\u00fc\u00dfe-2026!"], ids=["json-escaped", "latin-1"])
def test_a_secret_the_target_echoes_escaped_is_redacted_too(hostile, capsys, secret, fmt):
    """Redaction looked for the secret as written; the report shows what came back escaped (\\xNN for
    a byte past ASCII) and a JSON echo escapes quotes and backslashes: those forms went through."""
    args = build_parser().parse_args(["probe", hostile(echo_everything).endpoint.url, "--password", secret,
                                      "--timeout", "2", "--cases", "D1.authorization-repeated-wrong-first", "--format", fmt])
    run_probe(args, "9.9.9")
    report = capsys.readouterr().out
    assert "<secret>" in report
    for core in ("ABCDEF", "e-2026"):  # the part of each secret no escaping changes
        if core in secret:
            assert core not in report


LONG_TOKEN = "a1b2c3d4e5f6a7b8c9d0" * 3 + "ffee"  # 64 characters, as `openssl rand -hex 32` makes them


def refuse_quoting_the_token(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """A 401 whose body (and close reason, and frame) is the token the request carried."""
    token = request.split(b"Bearer ", 1)[1].split(b"\r\n", 1)[0] if b"Bearer " in request else b"-"
    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(token), token))


@pytest.mark.parametrize("fmt", ["table", "json", "junit"])
def test_a_long_secret_quoted_in_a_reason_is_not_shown_cut_in_two(hostile, capsys, fmt):
    """A reason quotes a body's first 60 characters: the first 60 of a 64-character token were not
    the token, so redaction missed them (and then the run's every later reason quoted them too)."""
    args = build_parser().parse_args(["probe", hostile(refuse_quoting_the_token).endpoint.url, "--token", LONG_TOKEN,
                                      "--timeout", "2", "--cases", "A1.x-forwarded-uri", "--format", fmt])
    assert run_probe(args, "9.9.9") == 1
    report = capsys.readouterr().out
    assert "401 <secret>" in report or "401 &lt;secret&gt;" in report
    assert LONG_TOKEN[:12] not in report


def refuse_with_lone_surrogates(conn: socket.socket, ws: WSConnection, stop: threading.Event) -> None:
    """JSON escapes that decode to lone surrogates, which no UTF-8 writer accepts."""
    conn.sendall(ws.send(TextMessage('{"type":"res","id":"%s","ok":false,"error":{"code":"\\ud800",'
                                     '"message":"\\udfff x"}}' % CONNECT_ID)))


@pytest.mark.parametrize("fmt", ["table", "json", "junit"])
def test_a_lone_surrogate_from_the_target_is_written_escaped_not_a_crash(hostile, capsys, tmp_path, fmt):
    """It reached the report as is: writing it raised UnicodeEncodeError, no report, exit status 1."""
    out = tmp_path / "report"
    args = build_parser().parse_args(["probe", hostile(http_or_ws(refuse_with_lone_surrogates)).endpoint.url,
                                      "--token", "s3cret-token", "--timeout", "2", "--cases", "A1.x-forwarded-uri",
                                      "--format", fmt, "--out", str(out)])
    assert run_probe(args, "9.9.9") == 1
    assert "\\ud800" in out.read_text(encoding="utf-8")


def test_a_long_secret_in_what_reached_the_backend_is_not_shown_cut_in_two(hostile, capsys):
    """A reason quotes a recorded value's first 120 characters: a target forwards the case's marker,
    then the token placed to straddle that cut."""
    with DemoBackend() as backend:
        def forward_token(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
            marker = re.search(rb"ocprobe[0-9a-f]{8}", request)
            value = (marker.group() + b"-" * 50 + LONG_TOKEN.encode()) if marker else b"-"
            with socket.create_connection((backend.host, backend.port), timeout=5) as upstream:
                upstream.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nX-Evil: %s\r\nContent-Length: 0\r\n\r\n"
                                 % value)
                upstream.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))

        args = build_parser().parse_args(["probe", hostile(forward_token).endpoint.url, "--token", LONG_TOKEN,
                                          "--timeout", "2", "--backend-record", backend.url, "--format", "json",
                                          "--cases", "A1.x-forwarded-uri"])
        assert run_probe(args, "9.9.9") == 1
    report = json.loads(capsys.readouterr().out)
    case = next(c for c in report["cases"] if c["id"] == "A1.x-forwarded-uri")
    assert case["verdict"] == "fail" and "the forged value arrived at the backend: X-Evil: ocprobe" in case["why"]
    assert LONG_TOKEN[:12] not in json.dumps(report)


# ---- a target an attack brought down -------------------------------------------------------------


def dies_on(trigger: bytes) -> Behaviour:
    """Refuses every case with a 403 and answers the probe's good call, until a request holding
    `trigger` brings it down: from then on every connection closes unanswered."""
    down = threading.Event()

    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if trigger in request:
            down.set()
        if down.is_set():
            return
        control = b"Bearer s3cret-token" in request and b"ocprobe" not in request and b"agents_list" in request
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK) if control else
                     b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    return behave


@pytest.mark.parametrize("cases", ["A1.x-forwarded-uri,A5.forwarded-for-claims-loopback",
                                   "A1.x-forwarded-uri,A5.forwarded-for-claims-loopback,A7.x-real-ip"],
                         ids=["last-case", "then-unreachable"])
def test_a_case_that_brings_the_target_down_does_not_pass_as_refused(hostile, capsys, cases):
    """Its connection closed unanswered, which reads as refused: with no good call after it, the
    run said 'result: PASS' and exited 0 about a target an attack had just killed."""
    args = build_parser().parse_args(["probe", hostile(dies_on(b"127.0.0.66")).endpoint.url, "--token", "s3cret-token", "--timeout", "1",
                                      "--cases", cases])
    assert run_probe(args, "9.9.9") == 2
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("A5.forwarded-for-claims-loopback"))
    assert "inconclusive" in row, row
    assert "cut short: after A5.forwarded-for-claims-loopback the target stopped answering" in table


def test_a_case_after_which_the_target_hangs_does_not_end_in_a_pass(hostile, capsys):
    """The target takes every connection from then on and never answers: each case is inconclusive,
    and the run said 'result: PASS' (exit 0) about a target an attack had hung."""
    down = threading.Event()

    def hangs_after_the_trigger(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"127.0.0.66" in request:
            down.set()
        if down.is_set():
            stop.wait(10)
            return
        dies_on(b"never")(conn, request, stop)

    args = build_parser().parse_args(["probe", hostile(hangs_after_the_trigger).endpoint.url, "--token",
                                      "s3cret-token", "--timeout", "0.5", "--cases",
                                      "A1.x-forwarded-uri,A5.forwarded-for-claims-loopback,A7.x-real-ip"])
    assert run_probe(args, "9.9.9") == 2
    table = capsys.readouterr().out
    assert "cut short: after A5.forwarded-for-claims-loopback the target stopped answering" in table


STRANGER_CASES = ("A1.x-forwarded-uri-without-credential,A5.forwarded-for-loopback-without-credential,"
                  "A7.x-real-ip-loopback-without-credential")


@pytest.mark.parametrize("credential", [[], ["--token", "wrong-token"]], ids=["none", "refused"])
def test_a_run_whose_good_call_cannot_pass_still_sees_the_target_go_down(hostile, capsys, credential):
    """With no credential, or one the target refuses, there is no good call to make: a case that
    killed the target read as refused, and so did every case after it ('result: PASS', exit 0).
    A call without credentials now follows each case left unanswered; never one with the refused
    credential in it, which would count as a failed login."""
    seen: list[bytes] = []
    dies = dies_on(b"X-Forwarded-For: 127.0.0.1")

    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        seen.append(request)
        dies(conn, request, stop)

    args = build_parser().parse_args(["probe", hostile(behave).endpoint.url, *credential, "--timeout", "1", "--cases",
                                      STRANGER_CASES])
    assert run_probe(args, "9.9.9") == 2
    table = capsys.readouterr().out
    assert ("cut short: after A5.forwarded-for-loopback-without-credential the target stopped answering a call "
            "without credentials (connection closed") in table
    row = next(line for line in table.splitlines() if line.startswith("A5.forwarded-for-loopback-without-credential"))
    assert "inconclusive" in row, row
    after_the_kill = seen[next(i for i, r in enumerate(seen) if b"X-Forwarded-For: 127.0.0.1" in r) + 1:]
    assert after_the_kill and not any(b"Authorization" in r for r in after_the_kill)


def test_a_run_without_a_credential_goes_on_when_the_target_only_closed_one_connection(hostile, capsys):
    """A refusal by hanging up is still a refusal when the target answers the call after it."""
    def closes_on_trigger(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"X-Forwarded-For: 127.0.0.1" not in request:
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")

    args = build_parser().parse_args(["probe", hostile(closes_on_trigger).endpoint.url, "--timeout", "1", "--cases",
                                      STRANGER_CASES])
    run_probe(args, "9.9.9")
    table = capsys.readouterr().out
    assert "cut short" not in table
    row = next(line for line in table.splitlines() if line.startswith("A7.x-real-ip-loopback-without-credential"))
    assert "not sent" not in row and "pass" in row, row


def endless_record(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"10\r\n{\"requests\": [  \r\n")
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    while not stop.is_set():
        conn.sendall(chunk)


def dribbled_record(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    while not stop.wait(0.1):
        conn.sendall(b"1\r\n \r\n")


@pytest.mark.parametrize("behave, complaint", [
    (endless_record, f"answered more than {MAX_RECORD_BYTES:,} bytes: is it the demo backend?"),
    (dribbled_record, "no whole answer within 1 s"),
])
def test_a_backend_record_url_that_never_ends_its_answer_ends_the_run(hostile, behave, complaint):
    """--backend-record names a URL the probe trusts to be the demo backend: one that streams or
    dribbles forever is not read without bound, in memory or in time."""
    record = BackendRecord(hostile(behave).endpoint.url, timeout=1.0)
    try:
        with pytest.raises(ProbeSetupError, match=re.escape(complaint)):
            record.fetch()
    finally:
        record.close()


def test_a_compressed_backend_record_is_not_inflated(hostile):
    """The record is read as sent: a small gzip answer may inflate past any bound, and the demo
    backend never compresses."""
    packed = gzip.compress(json.dumps({"requests": []}).encode())

    def compressed(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed))

    record = BackendRecord(hostile(compressed).endpoint.url, timeout=2.0)
    try:
        with pytest.raises(ProbeSetupError, match="did not answer with a request record"):
            record.fetch()
    finally:
        record.close()
