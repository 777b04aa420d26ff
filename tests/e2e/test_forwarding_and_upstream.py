"""What the gateway receives from the sidecar, and how upstream faults reach the client.

Forwarding contract (briefing): the upstream gets `Authorization: Bearer <upstream credential>`,
exactly one `x-openclaw-scopes`, one `X-Forwarded-For: <attributed client>` except for a loopback
client, and never a client copy of an owned header (corpus B, C). The forwarded body is the
client's bytes unless the tool name had to be normalised (reference (f) 8). Upstream failures
become gateway-shaped JSON, and a tool's leaky 500 never reaches the client (§8, case 71).

Runs real `openclaw-sidecar run` processes in front of the demo backend.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import socket
import struct
import threading
import time
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend
from sidecar import envelopes
from tests.ports import free_port

from .conftest import UPSTREAM_TOKEN
from .assertions import BACKEND_SERVER, JSON_CT, assert_refused, header_names, header_values, only_forwarded
from .harness import SidecarProcess, http_request, raw_exchange, read_response
from .harness import TestNet as _TestNet

TOKEN = "T"
UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized"}}
INVALID_URL = {"error": "bad_request", "message": "Invalid request URL"}
ATTRIBUTION = {"error": {"message": "Proxy client attribution is required. Configure gateway.trustedProxies "
                                    "narrowly and make the proxy overwrite or safely rebuild forwarded client "
                                    "headers.", "type": "proxy_attribution_required"}}
DEFAULT_SCOPES = ("operator.admin,operator.read,operator.write,operator.approvals,operator.questions,"
                  "operator.pairing,operator.talk.secrets")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Client copies of these must never reach the upstream.
SPOOFED_OWNED = [
    ("x-openclaw-scopes", "operator.read"),
    ("x-openclaw-sender-is-owner", "true"),
    ("x-session-key", "agent:main:evil"),
    ("x-clawdbot-foo", "bar"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
]
# Forwarding evidence: believed (and then stripped) only from a trusted proxy.
SPOOFED_EVIDENCE = [
    ("Forwarded", "for=198.51.100.66;proto=https"),
    ("X-Real-IP", "198.51.100.67"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-User", "root"),
    ("Tailscale-User-Login", "alice@example.com"),
    ("Tailscale-User-Name", "Alice"),
]


# ------------------------------------------------------------------ helpers


def assert_no_client_secret(record: dict[str, Any], secret: str = TOKEN) -> None:
    for name, value in record["headers"]:
        assert value != f"Bearer {secret}", (name, value)
    assert header_values(record, "authorization") == [f"Bearer {UPSTREAM_TOKEN}"]


def raw_head(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"",
             host: str = "sidecar.test") -> bytes:
    """Like harness.http_request, but without an added `Connection: close` (tests set their own)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def config(upstream: str, *, sidecar: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None,
           auth: dict[str, Any] | None = None) -> dict[str, Any]:
    side = {"upstream": upstream, "upstreamAuth": {"token": UPSTREAM_TOKEN}, "rateLimit": {"loopbackDelayBaseMs": 0}}
    side.update(sidecar or {})
    gw: dict[str, Any] = {"auth": auth or {"mode": "token", "token": TOKEN}}
    gw.update(gateway or {})
    return {"sidecar": side, "gateway": gw}


def invoke(http: httpx.Client, sc: SidecarProcess, body: Any = None, *, content: bytes | None = None,
           token: str | None = TOKEN, headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if content is None:
        content = json.dumps(body).encode()
    return http.post(sc.url + "/tools/invoke", content=content, headers=hdrs)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def be(module_backend: DemoBackend) -> DemoBackend:
    return module_backend


@pytest.fixture(scope="module")
def sc(be, module_sidecar) -> SidecarProcess:
    """Token mode, no trusted proxies: every client here is a direct loopback client."""
    return module_sidecar(config(be.url))


@pytest.fixture(scope="module")
def proxied_sc(be, module_sidecar) -> SidecarProcess:
    """127.0.0.1 is a trusted proxy: the client is whoever X-Forwarded-For names."""
    return module_sidecar(config(be.url, gateway={"trustedProxies": ["127.0.0.1"]}))


# ================================================================== owned headers (corpus B, C)


def test_loopback_client_owned_headers_are_replaced_and_connection_nominations_dropped(be, sc):
    body = b'{"tool":"agents_list","args":{}}'
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json"),
               *SPOOFED_OWNED, ("Connection", "x-openclaw-scopes, x-custom"), ("X-Custom", "1"),
               ("X-Harmless", "kept")]
    resp = raw_exchange((sc.host, sc.port), raw_head("POST", "/tools/invoke", headers, body))
    assert resp.status == 200, resp.body
    assert resp.json()["ok"] is True
    record = only_forwarded(be)
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    assert_no_client_secret(record)
    assert header_values(record, "x-forwarded-for") == []  # loopback client: no XFF (reference (f) 8)
    names = header_names(record)
    for name, _ in SPOOFED_OWNED:
        if name != "x-openclaw-scopes":
            assert name.lower() not in names, name
    assert "x-custom" not in names
    assert header_values(record, "x-harmless") == ["kept"]
    for value in header_values(record, "connection"):
        assert "x-custom" not in value.lower() and "x-openclaw-scopes" not in value.lower()
    assert record["body"].encode() == body


def test_trusted_proxy_client_is_forwarded_once_and_evidence_headers_stripped(be, proxied_sc):
    body = b'{"tool":"agents_list","args":{}}'
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json"),
               ("X-Forwarded-For", "192.0.2.1, 203.0.113.50"), *SPOOFED_EVIDENCE, *SPOOFED_OWNED,
               ("Connection", "x-openclaw-scopes, x-custom"), ("X-Custom", "1")]
    resp = raw_exchange((proxied_sc.host, proxied_sc.port), raw_head("POST", "/tools/invoke", headers, body))
    assert resp.status == 200, resp.body
    record = only_forwarded(be)
    assert header_values(record, "x-forwarded-for") == ["203.0.113.50"]  # right-most untrusted hop
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    assert_no_client_secret(record)
    names = header_names(record)
    for name, _ in [*SPOOFED_EVIDENCE, *SPOOFED_OWNED]:
        if name.lower() != "x-openclaw-scopes":
            assert name.lower() not in names, name
    assert "x-custom" not in names


def test_trusted_proxy_loopback_xff_hop_yields_no_forwarded_client(http, be, proxied_sc):
    """XFF naming only loopback leaves no client: 403 (reference case 29)."""
    resp = invoke(http, proxied_sc, {"tool": "agents_list"}, headers={"X-Forwarded-For": "127.0.0.1"})
    assert_refused(resp, 403, ATTRIBUTION, be)


@pytest.mark.parametrize("name,value", [*SPOOFED_EVIDENCE, ("X-Forwarded-For", "198.51.100.9")],
                         ids=lambda v: v if ":" not in str(v) and "=" not in str(v) else None)
def test_forwarding_evidence_from_an_untrusted_client_is_403(http, be, sc, name, value):
    resp = invoke(http, sc, {"tool": "agents_list"}, headers={name: value})
    assert_refused(resp, 403, ATTRIBUTION, be)


def test_direct_remote_client_is_named_in_exactly_one_xff(be, module_sidecar, testnet):
    sc_net = module_sidecar(config(be.url, sidecar={"listen": "203.0.113.1:0"}))
    listener = socket.create_server((_TestNet.HOST_IP, 0))  # wait until the test network carries traffic
    deadline = time.monotonic() + 60
    try:
        while True:
            probe = testnet.socket_from("203.0.113.7")
            probe.settimeout(0.5)
            try:
                probe.connect((_TestNet.HOST_IP, listener.getsockname()[1]))
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("test network unreachable: is another test session holding 203.0.113.0/24?")
            finally:
                probe.close()
    finally:
        listener.close()
    raw = http_request("POST", "/tools/invoke", [("Authorization", f"Bearer {TOKEN}"),
                                                 ("x-openclaw-scopes", "operator.read")],
                       b'{"tool":"agents_list"}')
    resp = testnet.exchange("203.0.113.7", (sc_net.host, sc_net.port), raw)
    assert resp.status == 200, resp.body
    record = only_forwarded(be)
    assert header_values(record, "x-forwarded-for") == ["203.0.113.7"]
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]
    assert_no_client_secret(record)


def test_allow_listed_context_headers_pass_unchanged(http, be, sc):
    resp = invoke(http, sc, {"tool": "agents_list"}, headers={"x-openclaw-message-to": "channel:24514",
                                                              "x-openclaw-thread-id": "thread-24514"})
    assert resp.status_code == 200
    record = only_forwarded(be)
    assert header_values(record, "x-openclaw-message-to") == ["channel:24514"]
    assert header_values(record, "x-openclaw-thread-id") == ["thread-24514"]


# ================================================================== forwarded body


def test_unchanged_body_is_forwarded_byte_for_byte(http, be, sc):
    body = b'{ "tool" : "agents_list",\n  "args" : { "x" : 1.50, "u" : "\\u00e9\\/" }, "z":[ ] }'
    resp = invoke(http, sc, content=body)
    assert resp.status_code == 200
    record = only_forwarded(be)
    assert record["body"].encode() == body
    assert header_values(record, "content-length") == [str(len(body))]


@pytest.mark.parametrize("body,expected_args", [
    ({"name": "agents_list\u3000"}, None),  # JavaScript's trim takes U+3000 too
    ({"name": " agents_list ", "args": {"k": "v"}}, {"k": "v"}),
    ({"name": None, "tool": "\tagents_list"}, None),
])
def test_normalised_name_is_what_the_backend_sees(http, be, sc, body, expected_args):
    resp = invoke(http, sc, body)
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    record = only_forwarded(be)
    sent = json.loads(record["body"])
    # The checked name where the client put it (2026.9 reads `name ?? tool`), no field added.
    assert (sent["name"] if sent.get("name") is not None else sent["tool"]) == "agents_list"
    assert sent.keys() == body.keys() and sent.get("args") == expected_args
    assert header_values(record, "content-length") == [str(len(record["body"].encode()))]


def test_normalised_name_in_a_chunked_body_is_forwarded_consistently(be, sc):
    body = b'{"name":" agents_list ","args":{"k":"v"}}'
    raw = (b"POST /tools/invoke HTTP/1.1\r\nHost: sidecar.test\r\nAuthorization: Bearer T\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + b"%x\r\n" % 10 + body[:10] + b"\r\n" + b"%x\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n")
    resp = raw_exchange((sc.host, sc.port), raw)
    assert resp.status == 200, resp.body
    record = only_forwarded(be)
    sent = json.loads(record["body"])
    assert sent == {"name": "agents_list", "args": {"k": "v"}}  # pinned where sent, nothing added


@pytest.mark.parametrize("name", ["Agents_List", "AGENTS_LIST", "bash"])
def test_other_spellings_get_the_gateways_exact_lookup_404(http, be, sc, name):
    """The gateway looks names up exactly (only `cron` is renamed): nothing goes upstream."""
    resp = invoke(http, sc, {"name": name})
    assert resp.status_code == 404
    assert resp.json() == {"ok": False, "error": {"type": "not_found", "message": f"Tool not available: {name}"}}
    assert be.requests() == []


def test_conflicting_name_and_tool_forward_the_checked_name_in_both(http, be, sc):
    """`{"name":"agents_list","tool":"exec"}`: a 2026.4 gateway reads `tool`; it must say agents_list."""
    resp = invoke(http, sc, {"name": "agents_list", "tool": "exec"})
    assert resp.status_code == 200
    record = only_forwarded(be)
    sent = json.loads(record["body"])
    assert sent["tool"] == "agents_list"
    assert sent["name"] == "agents_list"


def read_pipelined(conn: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` Content-Length answers in a row from one connection: (status, body) each."""
    stream = conn.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(stream.readline().split(b" ", 2)[1])
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answers.append((status, stream.read(length)))
    return answers


def test_pipelined_calls_on_one_connection_are_each_judged_and_answered_in_order(sc, be) -> None:
    """25 calls in one write on one connection. A run of 20 refusals answered at the head asks
    for more hooks than one server event completes inline (compat.INLINE_HOOKS_PER_EVENT), and
    forwarded calls wait for the backend between them. Each call is judged alone and answered in
    order; only the allowed ones reach the backend."""
    allowed = json.dumps({"tool": "agents_list", "args": {}}).encode()
    denied = json.dumps({"tool": "exec", "args": {"command": "id"}}).encode()
    kinds = ["allowed", *["denied", "unauthenticated"] * 10, "allowed", "denied", "allowed", "unauthenticated"]
    wire = b"".join(raw_head("POST", "/tools/invoke", [
        ("Authorization", f"Bearer {'wrong' if kind == 'unauthenticated' else TOKEN}"),
        ("Content-Type", "application/json")], denied if kind == "denied" else allowed) for kind in kinds)
    be.clear_requests()
    with socket.create_connection((sc.host, sc.port), timeout=10) as conn:
        conn.sendall(wire)
        answers = read_pipelined(conn, len(kinds))
    assert [status for status, _ in answers] == [{"allowed": 200, "denied": 404, "unauthenticated": 401}[k] for k in kinds]
    assert all(json.loads(body) == UNAUTHORIZED for (_, body), k in zip(answers, kinds, strict=True) if k == "unauthenticated")
    assert all(json.loads(body)["ok"] is True for (_, body), k in zip(answers, kinds, strict=True) if k == "allowed")
    forwarded = be.requests()
    assert len(forwarded) == kinds.count("allowed")
    assert {json.loads(record["body"])["tool"] for record in forwarded} == {"agents_list"}


# ================================================================== upstream faults


def test_unreachable_upstream_is_502_json(http, start_sidecar):
    sc_dead = start_sidecar(config(f"http://127.0.0.1:{free_port()}"))
    resp = invoke(http, sc_dead, {"tool": "agents_list"})
    assert_answered(resp, envelopes.upstream_unreachable())
    assert audited_forward(sc_dead, "agents_list") == ("forwarded", "upstream_unreachable", 502, None, "upstream_unreachable")


def test_slow_upstream_is_504_json(http, be, module_sidecar):
    sc_slow = module_sidecar(config(be.url, sidecar={"timeouts": {"upstreamReadSeconds": 1}}))
    resp = invoke(http, sc_slow, {"tool": "slow", "args": {"seconds": 5}})
    assert_answered(resp, envelopes.upstream_timeout())
    assert json.loads(only_forwarded(be)["body"])["tool"] == "slow"  # it was forwarded
    # ... and audited as such: the gateway may have acted on it (no line at all, before)
    assert audited_forward(sc_slow, "slow") == ("forwarded", "upstream_timeout", 504, None, "upstream_timeout")


def assert_answered(resp: httpx.Response, envelope: envelopes.Envelope) -> None:
    """The sidecar's own answer, whole: status, body, and every header the envelope sets."""
    assert (resp.status_code, resp.content) == (envelope.status, envelope.body)
    assert [(name, resp.headers.get(name)) for name, _ in envelope.headers] == list(envelope.headers)


def audited_forward(sidecar: SidecarProcess, tool: str) -> tuple:
    """The audit line of the forwarded call of `tool`, once written."""
    deadline = time.monotonic() + 8
    while not (lines := [line for line in sidecar.audit_lines() if line.get("tool") == tool]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = lines
    return line["decision"], line["reason"], line["status"], line["upstream_status"], line.get("outcome")


def test_a_forwarded_call_its_client_leaves_is_audited(be, module_sidecar):
    """The client closed while the gateway worked: the call was forwarded and may have run; the
    line says so, with no status (nothing reached the client)."""
    sc_wait = module_sidecar(config(be.url))
    body = json.dumps({"tool": "slow", "args": {"seconds": 1}}).encode()
    with socket.create_connection((sc_wait.host, sc_wait.port)) as sock:
        sock.sendall(http_request("POST", "/tools/invoke", [("Authorization", f"Bearer {TOKEN}"),
                                                             ("Content-Type", "application/json")], body))
        time.sleep(0.3)
    assert audited_forward(sc_wait, "slow") == ("forwarded", "allowed", None, None, "client_gone")


def test_an_upstream_that_dies_during_its_answer_gets_the_json_502_and_is_audited(start_sidecar):
    """The upstream sent a head and part of the body, then went away: the client got mitmproxy's
    bare 502 and the line said 200. Now the sidecar's own 502, and the line says what happened."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ok\":")

    threading.Thread(target=answer_half, daemon=True).start()
    with listener:
        sc_half = start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        with httpx.Client(timeout=10) as client:
            resp = invoke(client, sc_half, {"tool": "agents_list"})
        assert (resp.status_code, resp.headers["content-type"], resp.json()["error"]["type"]) == (502, JSON_CT, "bad_gateway")
        assert audited_forward(sc_half, "agents_list") == ("forwarded", "upstream_unreachable", 502, 200, "upstream_failed")


def test_tool_crash_is_sanitised_500(http, be, sc):
    resp = invoke(http, sc, {"tool": "fail"})
    assert resp.status_code == 500
    assert resp.json() == {"ok": False, "error": {"type": "tool_error", "message": "tool execution failed"}}
    assert resp.headers["content-type"] == JSON_CT
    assert b"boom" not in resp.content and b"/srv/secret" not in resp.content
    assert json.loads(only_forwarded(be)["body"])["tool"] == "fail"


def test_backend_404_passes_through_unchanged(http, be, sc):
    resp = invoke(http, sc, {"tool": "no_such_tool", "args": {}})
    assert resp.status_code == 404
    assert resp.content == b'{"ok":false,"error":{"type":"not_found","message":"Tool not available: no_such_tool"}}'
    assert resp.headers["content-type"] == JSON_CT
    assert BACKEND_SERVER in resp.headers.get("server", "")
    only_forwarded(be)


def test_response_larger_than_the_request_limit_reaches_the_client(http, be, sc):
    """The 2 MiB cap is a request rule: a bigger tool result passes intact.

    `1E9` (3 bytes) comes back from the echo tool as `1000000000.0` (12 bytes), so a request under
    2 MiB produces a response of about 6 MB, with no product change.
    """
    count = 500_000
    body = b'{"tool":"echo","args":{"n":[' + b",".join([b"1E9"] * count) + b"]}}"
    assert len(body) < 2 * 1024 * 1024
    resp = invoke(http, sc, content=body)
    assert resp.status_code == 200
    assert len(resp.content) > 5 * 1024 * 1024
    data = resp.json()
    assert data["ok"] is True
    assert len(data["result"]["args"]["n"]) == count
    assert set(data["result"]["args"]["n"]) == {1e9}
    assert only_forwarded(be)["body_length"] == len(body)


# ================================================================== other paths


def test_read_route_with_token_is_proxied_with_its_query(http, be, sc):
    resp = http.get(sc.url + "/sessions/main/history?limit=5", headers={"Authorization": f"Bearer {TOKEN}",
                                                                        "x-openclaw-scopes": "operator.read"})
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "path": "/sessions/main/history?limit=5", "method": "GET"}
    record = only_forwarded(be)
    assert record["method"] == "GET"
    assert record["path"] == "/sessions/main/history?limit=5"
    assert_no_client_secret(record)
    assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]


def test_read_route_without_auth_is_401(http, be, sc):
    assert_refused(http.get(sc.url + "/sessions/main/history?limit=5"), 401, UNAUTHORIZED, be)
    assert_refused(http.get(sc.url + "/sessions/main/history", headers={"Authorization": "Bearer wrong"}), 401,
                   UNAUTHORIZED, be)


def test_a_path_no_gateway_handler_takes_is_404_even_with_a_token(http, be, sc):
    resp = http.post(sc.url + "/some/other?x=1", headers={"Authorization": f"Bearer {TOKEN}"}, content=b"{}")
    assert (resp.status_code, resp.content, resp.headers["content-type"]) == (404, b"Not Found", "text/plain; charset=utf-8")
    assert be.requests() == []


@pytest.mark.parametrize("authorization", [None, "Bearer wrong"])
def test_healthz_is_proxied_without_auth_and_client_credentials_replaced(http, be, sc, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    resp = http.get(sc.url + "/healthz", headers=headers)
    assert resp.status_code == 200
    assert resp.json() == {"ok": True}
    record = only_forwarded(be)
    assert record["path"] == "/healthz"
    for name, value in record["headers"]:
        assert value != "Bearer wrong", name


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


@pytest.fixture(scope="module")
def passthrough_sc(be, module_sidecar) -> SidecarProcess:
    """websocket.mode passthrough: frames relayed unread, so the upgrade itself must authenticate."""
    return module_sidecar(config(be.url, sidecar={"websocket": {"mode": "passthrough"}}))


def ws_upgrade_head(key: str, *, token: str | None = TOKEN) -> bytes:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    if token is not None:
        headers.insert(0, ("Authorization", f"Bearer {token}"))
    return raw_head("GET", "/ws", headers)


def open_websocket(sc: SidecarProcess, key: str) -> tuple[socket.socket, bytes]:
    """Upgrade, check the 101 and its accept key; returns the socket and bytes after the head."""
    sock = socket.create_connection((sc.host, sc.port), timeout=10)
    sock.sendall(ws_upgrade_head(key))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    response_head, rest = buf.split(b"\r\n\r\n", 1)
    lines = response_head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == "101", response_head
    fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    assert fields["sec-websocket-accept"] == expected
    return sock, rest


def read_frame(sock: socket.socket, rest: bytes) -> tuple[int, bytes]:
    while len(rest) < 2:
        rest += sock.recv(4096)
    first, length = rest[0], rest[1] & 0x7F
    frame = rest + _recv_exactly(sock, max(0, 2 + length - len(rest)))
    return first, frame[2:2 + length]


def test_websocket_passthrough_relays_frames_unread(be, passthrough_sc):
    key = base64.b64encode(os.urandom(16)).decode()
    sock, rest = open_websocket(passthrough_sc, key)
    with sock:
        sock.sendall(_ws_frame(0x1, b"hello sidecar"))
        assert read_frame(sock, rest) == (0x81, b"hello sidecar")
        sock.sendall(_ws_frame(0x8, struct.pack("!H", 1000)))
    record = only_forwarded(be)
    assert record["path"] == "/ws"
    assert_no_client_secret(record)
    assert [v.lower() for v in header_values(record, "upgrade")] == ["websocket"]


def test_websocket_passthrough_upgrade_without_token_is_401(be, passthrough_sc):
    key = base64.b64encode(os.urandom(16)).decode()
    resp = raw_exchange((passthrough_sc.host, passthrough_sc.port), ws_upgrade_head(key, token=None))
    assert_refused(resp, 401, UNAUTHORIZED, be)


def test_websocket_enforce_never_relays_a_first_frame_that_is_not_connect(be, sc):
    """The demo backend echoes whatever reaches it: here nothing does; the sidecar closes 1008."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock, rest = open_websocket(sc, key)
    with sock:
        sock.sendall(_ws_frame(0x1, b"hello sidecar"))
        first, payload = read_frame(sock, rest)
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 1008


@pytest.mark.parametrize("target", ["/tools/./invoke", "/tools/%2e/invoke", "/x/../tools/invoke",
                                    "/tools/%2E/invoke", "/tools\\invoke", "/./tools/invoke"])
def test_non_canonical_tools_route_is_400_invalid_url(be, sc, target):
    raw = http_request("POST", target, [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")],
                       b'{"tool":"agents_list"}')
    resp = raw_exchange((sc.host, sc.port), raw)
    assert_refused(resp, 400, INVALID_URL, be)


# ================================================================== upstream credential


def test_upstream_credential_defaults_to_the_shared_secret(http, start_sidecar):
    with DemoBackend(token=TOKEN) as own:
        sc_default = start_sidecar({"sidecar": {"upstream": own.url},
                                    "gateway": {"auth": {"mode": "token", "token": TOKEN}}})
        resp = invoke(http, sc_default, {"tool": "agents_list"})
        assert resp.status_code == 200
        record = only_forwarded(own)
        assert header_values(record, "authorization") == [f"Bearer {TOKEN}"]


def test_upstream_credential_from_token_file(http, be, start_sidecar, tmp_path):
    token_file = tmp_path / "upstream.token"
    token_file.write_text(UPSTREAM_TOKEN + "\n")
    sc_file = start_sidecar({"sidecar": {"upstream": be.url, "upstreamAuth": {"tokenFile": str(token_file)}},
                             "gateway": {"auth": {"mode": "token", "token": TOKEN}}})
    resp = invoke(http, sc_file, {"tool": "agents_list"})
    assert resp.status_code == 200
    assert_no_client_secret(only_forwarded(be))


def test_none_mode_without_upstream_credential_forwards_no_authorization(http, start_sidecar):
    with DemoBackend() as open_backend:
        sc_none = start_sidecar({"sidecar": {"upstream": open_backend.url}, "gateway": {"auth": {"mode": "none"}}})
        resp = invoke(http, sc_none, {"tool": "agents_list"}, token="client-supplied")
        assert resp.status_code == 200
        record = only_forwarded(open_backend)
        assert header_values(record, "authorization") == []
        assert header_values(record, "x-openclaw-scopes") == [DEFAULT_SCOPES]


def test_password_mode_default_upstream_credential_is_the_password(http, start_sidecar):
    with DemoBackend(token="P") as own:
        sc_pw = start_sidecar({"sidecar": {"upstream": own.url},
                               "gateway": {"auth": {"mode": "password", "password": "P"}}})
        resp = invoke(http, sc_pw, {"tool": "agents_list"}, token="P")
        assert resp.status_code == 200
        assert header_values(only_forwarded(own), "authorization") == ["Bearer P"]


def _unmasked_payloads(data: bytes) -> bytes:
    """The payloads of the client-to-server WebSocket frames in `data`, unmasked (what a gateway
    reading them as frames would read)."""
    payloads, at = [], 0
    while at + 2 <= len(data):
        masked, length, at = data[at + 1] & 0x80, data[at + 1] & 0x7F, at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length, at = int.from_bytes(data[at:at + size], "big"), at + size
        mask, at = (data[at:at + 4], at + 4) if masked else (b"\0\0\0\0", at)
        payloads.append(bytes(b ^ mask[i % 4] for i, b in enumerate(data[at:at + length])))
        at += length
    return b"".join(payloads)


DENIED_FRAME = json.dumps({"type": "req", "id": "1", "method": "config.patch", "params": {"raw": "{}"}}).encode()


@pytest.mark.parametrize("ask, answer", [
    ([], b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    # no Upgrade, so no upgrade the sidecar admitted: mitmproxy took the 101 for a WebSocket anyway
    ([("Sec-WebSocket-Version", "13")], b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
], ids=["no-protocol", "websocket"])
def test_a_101_the_sidecar_did_not_ask_for_opens_no_tunnel(start_sidecar, ask: list[tuple[str, str]], answer: bytes):
    """A hostile upstream answering 101 to a request that was no upgrade made mitmproxy relay the
    client's next bytes (raw, or as WebSocket frames no one judged): a denied call reached it.
    Now the connection closes after the 101."""
    listener = socket.create_server(("127.0.0.1", 0))
    after_101: list[bytes] = []

    def switch() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
            conn.settimeout(3)
            try:
                while data := conn.recv(65536):
                    after_101.append(data)
            except OSError:
                pass

    server = threading.Thread(target=switch, daemon=True)
    server.start()
    with listener:
        sc_101 = start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        allowed, denied = (json.dumps({"tool": tool, "args": {}}).encode() for tool in ("agents_list", "exec"))
        headers = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json"), *ask]
        mask = b"\x01\x02\x03\x04"
        frame = bytes([0x81, 0x80 | len(DENIED_FRAME)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(DENIED_FRAME))
        with socket.create_connection((sc_101.host, sc_101.port), timeout=5) as sock:
            sock.sendall(http_request("POST", "/tools/invoke", headers, allowed))
            time.sleep(0.5)
            try:
                sock.sendall(frame if ask else http_request("POST", "/tools/invoke", headers, denied))
            except OSError:
                pass
            time.sleep(0.5)
        server.join(5)
    relayed = b"".join(after_101)
    assert b"exec" not in relayed and b"config.patch" not in _unmasked_payloads(relayed)


def _serve_forever(listener: socket.socket, head: bytes, body: bytes) -> None:
    """Answer every request on every connection with `head` (a status line and headers) and `body`."""
    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the sidecar drops the connection its client left
            while conn.recv(65536):
                conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def keep_alive_invoke() -> bytes:
    """An allowed call that keeps its connection open (harness.http_request closes it)."""
    body = json.dumps({"tool": "agents_list", "args": {}}).encode()
    return (b"POST /tools/invoke HTTP/1.1\r\nHost: sidecar.test\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_a_large_answer_is_relayed_as_it_arrives_not_held_for_a_slow_reader(start_sidecar):
    """mitmproxy held every answer with a Content-Length whole: clients that asked for a large one
    and did not read made the sidecar hold it for each of them (4.4 MB a connection, red team).
    A large answer now streams, so a slow reader slows the upstream instead."""
    body = os.urandom(4 * 1024 * 1024)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve_forever, args=(listener, b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n", body),
                     daemon=True).start()
    with listener:
        sc_big = start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        request = http_request("POST", "/tools/invoke", [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")],
                               json.dumps({"tool": "agents_list", "args": {}}).encode())
        before = sc_big.rss_mb()
        idle = []
        for _ in range(10):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((sc_big.host, sc_big.port))
            sock.sendall(request)
            idle.append(sock)
        time.sleep(2)
        grown = sc_big.rss_mb() - before
        for sock in idle:
            sock.close()
        with httpx.Client(timeout=15) as client:
            whole = invoke(client, sc_big, {"tool": "agents_list"})
    assert (whole.status_code, hashlib.sha256(whole.content).digest()) == (200, hashlib.sha256(body).digest())
    assert grown < 20, f"{grown:.1f} MB held for 10 clients that do not read (40 MB when each answer is held whole)"


def test_a_large_tools_route_500_is_still_read_whole_and_replaced(start_sidecar):
    listener = socket.create_server(("127.0.0.1", 0))
    trace = b'{"error":"Traceback: /srv/secret/' + b"x" * 200_000 + b'"}'
    threading.Thread(target=_serve_forever, args=(listener, b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n", trace),
                     daemon=True).start()
    with listener, httpx.Client(timeout=15) as client:
        resp = invoke(client, start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}")), {"tool": "agents_list"})
    assert resp.status_code == 500 and b"/srv/secret" not in resp.content and len(resp.content) < 1000


def test_an_idle_upstream_connection_is_closed_before_the_gateway_closes_it(start_sidecar):
    """The gateway (Node) closes a keep-alive connection idle for 5 s; a request the sidecar sent
    on it just then was lost, and its client got a 502 (red team: 2 of 48 tries around 6 s).
    The sidecar closes an idle upstream connection first, and the next request opens another."""
    listener = socket.create_server(("127.0.0.1", 0))
    events: list[tuple[str, int]] = []  # ("request" | "closed", upstream connection number)

    def keep_alive(conn: socket.socket, number: int) -> None:
        with conn, contextlib.suppress(OSError):
            while conn.recv(65536):
                events.append(("request", number))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
            events.append(("closed", number))

    def accept() -> None:
        for number in itertools.count(1):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=keep_alive, args=(conn, number), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    with listener:
        sc_idle = start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        request = keep_alive_invoke()
        with socket.create_connection((sc_idle.host, sc_idle.port), timeout=10) as sock:
            for pause in (0, 0.5, 4.6):  # the client's own connection stays open throughout (10 s idle limit)
                time.sleep(pause)
                sock.sendall(request)
                assert read_response(sock, timeout=5).status == 200
    assert events[:4] == [("request", 1), ("request", 1), ("closed", 1), ("request", 2)]


def test_an_upstreams_interim_answer_is_not_taken_for_its_answer(start_sidecar):
    """A 1xx other than 101 is interim: mitmproxy relayed a 103 as the answer, and the real one
    then answered the client's next request. Each request now gets its own answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    threading.Thread(target=_serve_forever, args=(listener, interim + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
                                                  b'{"ok":true}'), daemon=True).start()
    with listener:
        sc_hints = start_sidecar(config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        request = keep_alive_invoke()
        with socket.create_connection((sc_hints.host, sc_hints.port), timeout=10) as sock:
            answers = []
            for _ in range(2):
                sock.sendall(request)
                reply = read_response(sock, timeout=5)
                answers.append((reply.status, reply.body))
    assert answers == [(200, b'{"ok":true}')] * 2

