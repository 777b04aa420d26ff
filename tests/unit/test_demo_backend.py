"""The demo backend: a real (stdlib) OpenClaw-Gateway-shaped upstream for demos and e2e tests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from openclaw_demo.backend import LEAKY_FAIL_MESSAGE, DemoBackend, _slow, gateway_pathname

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
TIMEOUT = httpx.Timeout(5.0)
JSON_CT = "application/json; charset=utf-8"


@pytest.fixture
def backend():
    with DemoBackend() as b:
        yield b


@pytest.fixture
def client(backend):
    with httpx.Client(base_url=backend.url, trust_env=False, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def authed():
    with DemoBackend(token=TOKEN) as b:
        with httpx.Client(base_url=b.url, trust_env=False, timeout=TIMEOUT) as c:
            yield b, c


def invoke(client: httpx.Client, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/tools/invoke", content=content, headers={"Content-Type": "application/json"}, **kw)


def recorded(client: httpx.Client) -> list[dict]:
    r = client.get("/__demo/requests")
    assert r.status_code == 200
    return r.json()["requests"]


def raw_connect(backend: DemoBackend) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", backend.port), timeout=5)
    return sock


def read_response(rfile) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length-framed HTTP/1.1 response from a socket file."""
    status_line = rfile.readline().decode("latin-1")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = rfile.read(int(headers.get("content-length", "0")))
    return status, headers, body


def raw_exchange(backend: DemoBackend, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with raw_connect(backend) as sock, sock.makefile("rb") as rfile:
        sock.sendall(data)
        return read_response(rfile)


# ------------------------------------------------------------------ tools


def test_agents_list(client):
    r = invoke(client, {"name": "agents_list", "args": {}})
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.json() == {"ok": True, "result": {"agents": [{"id": "main", "default": True}], "action": None}}


def test_session_status_and_sessions_list(client):
    assert invoke(client, {"tool": "session_status"}).json() == {
        "ok": True, "result": {"sessionKey": "agent:main:main", "status": "idle"}}
    assert invoke(client, {"name": "sessions_list", "args": {"limit": 3}}).json() == {
        "ok": True, "result": {"sessions": [{"key": "agent:main:main"}]}}


def test_echo_returns_args(client):
    args = {"a": 1, "nested": {"b": [1, "x", None]}, "unicode": "héllo"}
    r = invoke(client, {"name": "echo", "args": args})
    assert r.status_code == 200
    assert r.json() == {"ok": True, "result": {"args": args}}
    # args that are not an object are replaced by {}
    for bad in ([1, 2], "str", 5, None):
        assert invoke(client, {"name": "echo", "args": bad}).json() == {"ok": True, "result": {"args": {}}}


def test_fail_leaks_internal_detail_with_500(client):
    r = invoke(client, {"name": "fail"})
    assert r.status_code == 500
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {"ok": False, "error": {"type": "tool_error", "message": "boom: /srv/secret/path"}}
    assert LEAKY_FAIL_MESSAGE == "boom: /srv/secret/path"


def test_slow_sleeps_and_clamps(client):
    r = invoke(client, {"name": "slow", "args": {"seconds": 0.2}})
    assert r.json() == {"ok": True, "result": {"slept": 0.2}}
    for value in (-3, "1", True, None):
        assert invoke(client, {"name": "slow", "args": {"seconds": value}}).json() == {
            "ok": True, "result": {"slept": 0}}
    stopped = threading.Event()
    stopped.set()  # makes the wait return at once
    assert _slow({"seconds": 1000}, stopped) == {"slept": 30}
    assert _slow({"seconds": 1e400}, stopped) == {"slept": 30}


def test_slow_triggers_client_timeout_and_backend_keeps_serving(client):
    with pytest.raises(httpx.ReadTimeout):
        invoke(client, {"name": "slow", "args": {"seconds": 0.8}}, timeout=0.2)
    assert invoke(client, {"name": "session_status"}).status_code == 200


def test_name_resolution(client):
    ok = {"ok": True, "result": {"args": {}}}
    assert invoke(client, {"tool": "echo"}).json() == ok
    assert invoke(client, {"name": "  echo\t", "tool": "nope"}).json() == ok  # trimmed, name wins
    assert invoke(client, {"name": None, "tool": "echo"}).json() == ok  # null name falls back to tool
    r = invoke(client, {"name": "Echo"})  # case-sensitive
    assert r.status_code == 404
    assert r.json() == {"ok": False, "error": {"type": "not_found", "message": "Tool not available: Echo"}}


# ------------------------------------------------------------------ action rule


def test_action_copied_when_schema_has_action(client):
    r = invoke(client, {"name": "agents_list", "action": "  list  "})
    assert r.json()["result"]["action"] == "list"


def test_action_in_args_is_kept(client):
    r = invoke(client, {"name": "agents_list", "action": "other", "args": {"action": "mine"}})
    assert r.json()["result"]["action"] == "mine"


def test_action_dropped_for_tool_without_action_schema(client):
    r = invoke(client, {"name": "echo", "action": "list", "args": {"x": 1}})
    assert r.json() == {"ok": True, "result": {"args": {"x": 1}}}


def test_blank_or_non_string_action_ignored(client):
    for action in ("   ", 5, None, {"a": 1}):
        r = invoke(client, {"name": "agents_list", "action": action})
        assert r.json()["result"]["action"] is None


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("body", [b"", b"   ", b"{}", b"[1,2]", b'"echo"', b"null", b'{"name":""}',
                                  b'{"name":"   "}', b'{"name":5,"tool":"echo"}', b'{"tool":null}'])
def test_missing_name_is_400(client, body):
    r = invoke(client, body)
    assert r.status_code == 400
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {"ok": False, "error": {"type": "invalid_request", "message": "tools.invoke requires name"}}


@pytest.mark.parametrize("body", [b"{", b'{"name":"echo",}', b"\xff\xfe{", b'{"name":"echo","args":{"x":NaN}}',
                                  b'{"name":"echo","args":{"x":1e400}}'])
def test_invalid_json_is_400(client, body):
    r = invoke(client, body)
    assert r.status_code == 400
    data = r.json()
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type"}
    assert data["error"]["type"] == "invalid_request_error"
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]


def test_invalid_json_message_is_the_parser_message(client):
    r = invoke(client, b"{")
    try:
        json.loads(b"{")
    except ValueError as exc:
        expected = str(exc)
    assert r.json() == {"error": {"message": expected, "type": "invalid_request_error"}}


def test_unknown_tool_404(client):
    r = invoke(client, {"name": "exec", "args": {"command": "id"}})
    assert r.status_code == 404
    assert r.json() == {"ok": False, "error": {"type": "not_found", "message": "Tool not available: exec"}}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_non_post_is_405(client, method):
    r = client.request(method, "/tools/invoke?x=1")
    assert r.status_code == 405
    assert r.text == "Method Not Allowed"
    assert r.headers["allow"] == "POST"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-content-type-options"] == "nosniff"
    rec = recorded(client)
    assert [(x["method"], x["path"]) for x in rec] == [(method, "/tools/invoke?x=1")]


def test_query_is_ignored(client):
    r = client.post("/tools/invoke?name=fail", json={"name": "echo"})
    assert r.json() == {"ok": True, "result": {"args": {}}}


# ------------------------------------------------------------------ auth


UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized"}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic " + TOKEN}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Bearer"}, {"Authorization": "Bearer" + TOKEN},
                                     {"Authorization": TOKEN}, {"Authorization": "Bearer " + TOKEN + "x"}])
def test_missing_or_wrong_token_is_401(authed, headers):
    _, c = authed
    r = c.post("/tools/invoke", json={"name": "agents_list"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == UNAUTHORIZED


@pytest.mark.parametrize("value", ["Bearer " + TOKEN, "bearer " + TOKEN, "BEARER    " + TOKEN])
def test_right_token_accepted_case_insensitive_scheme(authed, value):
    _, c = authed
    r = c.post("/tools/invoke", json={"name": "agents_list"}, headers={"Authorization": value})
    assert r.status_code == 200


def test_token_trimmed_raw(authed):
    b, _ = authed
    body = b'{"name":"echo"}'
    status, _, resp = raw_exchange(b, (
        b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: \t bEaReR  " + TOKEN.encode()
        + b" \t\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body))
    assert status == 200 and json.loads(resp) == {"ok": True, "result": {"args": {}}}


def test_auth_applies_only_to_tools_invoke(authed):
    _, c = authed
    assert c.get("/healthz").json() == {"ok": True}
    assert c.get("/other").status_code == 200
    assert c.get("/tools/invoke").status_code == 405  # method check first, as the gateway does


# ------------------------------------------------------------------ other paths


def test_healthz_and_generic_paths(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert r.headers["content-type"] == JSON_CT
    r = client.post("/v1/chat/completions?stream=1", json={"x": 1})
    assert r.status_code == 200
    assert r.json() == {"ok": True, "path": "/v1/chat/completions?stream=1", "method": "POST"}
    r = client.request("PROPFIND", "/healthz")
    assert r.json() == {"ok": True, "path": "/healthz", "method": "PROPFIND"}
    r = client.head("/anything")
    assert r.status_code == 200 and r.content == b""


def test_raw_target_is_reported_unchanged(backend, client):
    target = b"//evil.example/a/../b?q=%2e%2e&x=1"
    status, _, body = raw_exchange(backend, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body) == {"ok": True, "path": target.decode(), "method": "GET"}
    assert recorded(client)[-1]["path"] == target.decode()


@pytest.mark.parametrize("target, pathname", [
    ("/tools/invoke", "/tools/invoke"),
    ("/tools/invoke?x#y", "/tools/invoke"),
    ("/tools/invoke/", "/tools/invoke/"),
    ("/TOOLS/invoke", "/TOOLS/invoke"),
    ("/tools//invoke", "/tools//invoke"),
    ("/x/../tools/invoke", "/tools/invoke"),
    ("/tools/./invoke", "/tools/invoke"),
    ("/a/%2E%2e/tools/invoke", "/tools/invoke"),
    ("/tools/%69nvoke", "/tools/%69nvoke"),
    ("/tools\\invoke", "/tools/invoke"),
    ("//evil/tools/invoke", "/tools/invoke"),
    ("/\\evil/tools/invoke", "/tools/invoke"),
    ("http://h/tools/invoke", "/tools/invoke"),
    ("http:/tools/invoke", "/tools/invoke"),
    ("https:tools/invoke", "/invoke"),  # "tools" becomes the host
    ("tools/invoke", "/tools/invoke"),
    ("/../tools/invoke", "/tools/invoke"),
    ("/tools/invoke/..", "/tools/"),
    ("/tools/invoke/.", "/tools/invoke/"),
    ("*", "/*"),
])
def test_gateway_pathname_matches_whatwg(target, pathname):
    # expected values are what Node's new URL(target, "http://localhost").pathname gives
    assert gateway_pathname(target) == pathname


def test_dot_segment_target_reaches_tool_endpoint_like_the_gateway(backend):
    body = b'{"name":"echo"}'
    status, _, resp = raw_exchange(backend, (
        b"POST /x/%2e%2e/tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\nConnection: close\r\n\r\n" + body))
    assert status == 200 and json.loads(resp) == {"ok": True, "result": {"args": {}}}


# ------------------------------------------------------------------ record


def test_record_keeps_order_casing_and_duplicates(backend, client):
    body = '{"name":"echo","args":{"s":"é"}}'.encode()
    request = (b"POST /tools/invoke?trace=1 HTTP/1.1\r\n"
               b"Host: example.test\r\n"
               b"X-Dup: one\r\n"
               b"x-dup: two\r\n"
               b"X-MiXeD-CaSe: v\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n"
               b"X-Dup: three\r\n"
               b"Connection: close\r\n\r\n" + body)
    status, _, _ = raw_exchange(backend, request)
    assert status == 200
    (rec,) = recorded(client)
    assert rec == {
        "method": "POST",
        "path": "/tools/invoke?trace=1",
        "http_version": "HTTP/1.1",
        "headers": [["Host", "example.test"], ["X-Dup", "one"], ["x-dup", "two"], ["X-MiXeD-CaSe", "v"],
                    ["Content-Length", str(len(body))], ["X-Dup", "three"], ["Connection", "close"]],
        "body": body.decode(),
        "body_length": len(body),
    }


def test_record_covers_every_path_but_control_paths(backend, client):
    client.get("/healthz")
    client.put("/tools/invoke", content=b"abc")
    client.post("/tools/invoke", content=b"{")
    client.delete("/somewhere/else?x=1")
    client.get("/__demo/unknown")
    client.post("/__demo/requests", content=b"x")
    rec = recorded(client)
    assert [(r["method"], r["path"], r["body"], r["body_length"]) for r in rec] == [
        ("GET", "/healthz", "", 0),
        ("PUT", "/tools/invoke", "abc", 3),
        ("POST", "/tools/invoke", "{", 1),
        ("DELETE", "/somewhere/else?x=1", "", 0),
    ]
    assert backend.requests() == rec


def test_record_body_is_utf8_with_replacement(client):
    client.post("/tools/invoke", content=b"\xff\xfeabc")
    (rec,) = recorded(client)
    assert rec["body"] == "\ufffd\ufffdabc" and rec["body_length"] == 5


def test_clearing_the_record(backend, client):
    client.get("/healthz")
    assert len(recorded(client)) == 1
    r = client.delete("/__demo/requests")
    assert r.status_code == 204 and r.content == b""
    assert recorded(client) == []
    r = client.patch("/__demo/requests")
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"
    assert client.get("/__demo/nope").status_code == 404
    assert recorded(client) == []
    client.get("/healthz")
    backend.clear_requests()
    assert backend.requests() == []


def test_record_is_thread_safe(backend):
    def hit(i):
        with httpx.Client(base_url=backend.url, trust_env=False, timeout=TIMEOUT) as c:
            for j in range(10):
                c.get(f"/t{i}/{j}")
    threads = [threading.Thread(target=hit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = {r["path"] for r in backend.requests()}
    assert paths == {f"/t{i}/{j}" for i in range(8) for j in range(10)}


# ------------------------------------------------------------------ framing / connections


def test_chunked_upload_with_httpx(client):
    parts = [b'{"name":"echo",', b'"args":{"k":', b'"v"}}']
    r = client.post("/tools/invoke", content=iter(parts))
    assert r.json() == {"ok": True, "result": {"args": {"k": "v"}}}
    (rec,) = recorded(client)
    assert ["Transfer-Encoding", "chunked"] in rec["headers"]
    assert rec["body"] == b"".join(parts).decode() and rec["body_length"] == len(b"".join(parts))


def test_chunked_with_extensions_and_trailers_then_keepalive(backend, client):
    with raw_connect(backend) as sock, sock.makefile("rb") as rfile:
        sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"8;ext=1\r\n{\"name\":\r\n"
                     b"7\r\n\"echo\"}\r\n"
                     b"0\r\nX-Trailer: t\r\n\r\n")
        status, headers, body = read_response(rfile)
        assert status == 200 and json.loads(body) == {"ok": True, "result": {"args": {}}}
        assert headers.get("connection") != "close"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(rfile)
        assert status == 200 and json.loads(body) == {"ok": True}
    assert recorded(client)[0]["body"] == '{"name":"echo"}'


def test_malformed_chunked_is_400_and_closes(backend):
    status, headers, body = raw_exchange(
        backend, b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_keepalive_reuses_one_connection_for_two_requests(backend, client):
    body = b'{"name":"session_status"}'
    with raw_connect(backend) as sock, sock.makefile("rb") as rfile:
        for _ in range(2):
            sock.sendall(b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            status, headers, resp = read_response(rfile)
            assert status == 200 and "connection" not in headers
            assert json.loads(resp)["result"]["status"] == "idle"
    assert len(recorded(client)) == 2
    # and through httpx: both requests on one pooled connection
    ports = []
    with httpx.Client(base_url=backend.url, trust_env=False, timeout=TIMEOUT) as c:
        for _ in range(2):
            with c.stream("POST", "/tools/invoke", json={"name": "echo"}) as r:
                ports.append(r.extensions["network_stream"].get_extra_info("client_addr")[1])
                r.read()
    assert ports[0] == ports[1]


def test_stop_closes_listener_and_keepalive_connections():
    b = DemoBackend().start()
    sock = raw_connect(b)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with sock.makefile("rb") as rfile:
        assert read_response(rfile)[0] == 200
        port = b.port
        b.stop()
        assert rfile.read() == b""  # the idle keep-alive connection is closed
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    b.stop()  # idempotent


# ------------------------------------------------------------------ websocket


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(rfile) -> tuple[int, bytes]:
    b0, b1 = rfile.read(2)
    assert b1 & 0x80 == 0  # server frames are not masked
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", rfile.read(8))[0]
    return b0, rfile.read(n)


def test_websocket_handshake_and_echo(backend, client):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with raw_connect(backend) as sock, sock.makefile("rb") as rfile:
        sock.sendall(("GET /ws?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        assert rfile.readline().startswith(b"HTTP/1.1 101")
        headers = {}
        while (line := rfile.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["upgrade"].lower() == "websocket"
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 example
        expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert headers["sec-websocket-accept"] == expected.decode()

        sock.sendall(ws_frame(0x1, "hello é".encode()))
        assert ws_read(rfile) == (0x81, "hello é".encode())
        big = b"x" * 300  # 16-bit length form
        sock.sendall(ws_frame(0x1, big))
        assert ws_read(rfile) == (0x81, big)
        sock.sendall(ws_frame(0x9, b"ping"))
        assert ws_read(rfile) == (0x8A, b"ping")
        sock.sendall(ws_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        assert ws_read(rfile) == (0x88, struct.pack("!H", 1000))
        assert rfile.read() == b""  # server closes the TCP connection
    (rec,) = recorded(client)
    assert rec["method"] == "GET" and rec["path"] == "/ws?room=1"
    assert ["Upgrade", "websocket"] in rec["headers"]


def test_websocket_bad_handshake_is_400(backend):
    status, _, _ = raw_exchange(backend, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                         b"Connection: Upgrade\r\nConnection: close\r\n\r\n")
    assert status == 400


def test_ws_path_without_upgrade_is_plain_http(client):
    assert client.get("/ws").json() == {"ok": True, "path": "/ws", "method": "GET"}


# ------------------------------------------------------------------ serve_forever


def test_serve_forever_prints_one_line_and_exits_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"from openclaw_demo.backend import serve_forever; serve_forever('127.0.0.1', 0, {TOKEN!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline().decode()
        m = re.fullmatch(r"demo backend listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert m, line
        with httpx.Client(base_url=m.group(1), trust_env=False, timeout=TIMEOUT) as c:
            r = c.post("/tools/invoke", json={"name": "agents_list"}, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b""  # nothing after the one line
    assert b"Traceback" not in err


def test_context_manager_and_url():
    b = DemoBackend(host="127.0.0.1", port=0)
    with pytest.raises(RuntimeError):
        _ = b.url
    with b:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", b.url)
        with pytest.raises(RuntimeError):
            b.start()
