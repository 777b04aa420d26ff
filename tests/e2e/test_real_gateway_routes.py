"""The sidecar in front of a real OpenClaw gateway (the pinned release), judged door by door.

One gateway in token mode for the module, with the OpenAI endpoints and hooks switched on so
the routes that act really exist behind the port. The sidecar reads the gateway's own config
file (`sidecar.openclawConfig`), as one ConfigMap feeds both containers in Kubernetes. Every
test sends the same request straight to the gateway too, so each assertion shows both what the
door does and that the sidecar closes it. Loopback only; the gateway runs with the offline guard.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.builders import nested_beyond_python
from tests.gateway.real_gateway import RealGateway, unavailable_reason

from .conftest import REAL_GATEWAY_HOOKS_TOKEN as HOOKS_TOKEN
from .conftest import REAL_GATEWAY_TOKEN as TOKEN
from .harness import REPO, RawResponse, SidecarProcess, TestNet, http_request, raw_exchange

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n"
AGENTS = {"name": "agents_list", "args": {}}
AGENTS_BODY = json.dumps(AGENTS).encode()
NOT_FOUND = b"Not Found"
INVALID_URL = {"error": "bad_request", "message": "Invalid request URL"}


@pytest.fixture(scope="module")
def gateway(token_gateway: RealGateway) -> RealGateway:
    return token_gateway


def _sidecar_config(gateway: RealGateway, **routes: object) -> dict:
    return {"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path), "routes": routes,
                        "rateLimit": {"loopbackDelayBaseMs": 0}}}


@pytest.fixture(scope="module")
def sidecar(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """The default policy."""
    return module_sidecar(_sidecar_config(gateway))


@pytest.fixture(scope="module")
def opened(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """A platform team that opened three routes by name."""
    return module_sidecar(_sidecar_config(gateway, allow=["openai-chat-completions", "hooks", "node-watch"]))


@pytest.fixture(scope="module")
def realtime_denied(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """A plugin route and the hooks opened by name, with a deny on the plugin's prefix and one hook."""
    return module_sidecar(_sidecar_config(gateway, allow=["plugin:openai-realtime", "hooks"],
                                          deny=["/plugins/openai/", "/hooks/agent"]))


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(30.0)) as client:
        yield client


def both(http: httpx.Client, gateway: RealGateway, sidecar: SidecarProcess, method: str, target: str,
         **kwargs: object) -> tuple[httpx.Response, httpx.Response]:
    """The same request straight to the gateway and through the sidecar."""
    return (http.request(method, gateway.url + target, **kwargs),  # type: ignore[arg-type]
            http.request(method, sidecar.url + target, **kwargs))  # type: ignore[arg-type]


def assert_gateway_404(resp: httpx.Response) -> None:
    """The gateway's own 404 (respondNotFound), which the sidecar answers for refused routes."""
    assert (resp.status_code, resp.content) == (404, NOT_FOUND), resp.text
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.headers["x-content-type-options"] == "nosniff"


# ---- the capability prefix: the gateway rewrites it before routing ---------------------------------


@pytest.mark.parametrize("target", [
    "/__openclaw__/cap/x/tools/invoke", "/__openclaw__/cap/%78/tools/invoke", "/__openclaw__/cap/x/tools/./invoke",
    "/x/../__openclaw__/cap/x/tools/invoke", "/__openclaw__/cap/x/y/../tools/invoke", "/tools/invoke?oc_cap=x",
])
def test_capability_spellings_run_tools_on_the_gateway_and_are_refused_by_the_sidecar(http, gateway, sidecar, target):
    direct, proxied = both(http, gateway, sidecar, "POST", target, headers=AUTH, json=AGENTS)
    assert direct.status_code == 200 and direct.json()["ok"] is True  # a real door to the tools handler
    assert proxied.status_code == 400 and proxied.json() == INVALID_URL


def test_absolute_form_capability_spelling_is_refused(gateway, sidecar):
    body = json.dumps(AGENTS).encode()
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")]
    request = http_request("POST", "http://localhost/__openclaw__/cap/x/tools/invoke", headers, body, host="localhost")
    assert raw_exchange(("127.0.0.1", gateway.port), request).status == 200
    proxied = raw_exchange((sidecar.host, sidecar.port), request)
    assert proxied.status == 400 and json.loads(proxied.body) == INVALID_URL


def test_capability_prefix_on_a_read_route_is_refused(http, gateway, sidecar):
    direct, proxied = both(http, gateway, sidecar, "GET", "/__openclaw__/cap/x/control-ui-config.json", headers=AUTH)
    assert direct.status_code == 200 and "basePath" in direct.json()
    assert_gateway_404(proxied)


@pytest.mark.parametrize("target", ["/__openclaw__/cap/%20/tools/invoke", "/__openclaw__/cap//tools/invoke", "/__openclaw__/cap/x"])
def test_malformed_capability_paths_get_the_gateways_own_401(http, gateway, sidecar, target):
    direct, proxied = both(http, gateway, sidecar, "POST", target, headers=AUTH, json=AGENTS)
    assert direct.status_code == proxied.status_code == 401
    assert proxied.json() == direct.json()


# ---- public routes: served as the gateway serves them, without credentials ---------------------------


_INVOKE_JSON = json.dumps(AGENTS).encode()
CHUNKED_BODIES = [
    pytest.param(b"%x;a=" % len(_INVOKE_JSON) + b"b" * 17000 + b"\r\n" + _INVOKE_JSON + b"\r\n0\r\n\r\n", 413, id="extension-over-16KiB"),
    pytest.param(b"%x;a=\"\x01\"\r\n" % len(_INVOKE_JSON) + _INVOKE_JSON + b"\r\n0\r\n\r\n", 400, id="control-byte-in-quoted-extension"),
    pytest.param(b"%x\r\n" % len(_INVOKE_JSON) + _INVOKE_JSON + b"\r\n0\r\n\n", 400, id="bare-lf-after-last-chunk"),
    pytest.param(b"0000000000000000%x;=\r\n" % len(_INVOKE_JSON) + _INVOKE_JSON + b"\r\n0\r\n\r\n", 200, id="leading-zeros-empty-extension"),
]


@pytest.mark.parametrize("chunks, status", CHUNKED_BODIES)
def test_a_chunked_body_is_framed_as_the_gateway_frames_it(gateway, sidecar, chunks, status):
    """Node's chunk-size rules (tests/unit/test_chunked_body.py has every byte): an extension
    over 16 KiB is 413, a malformed line 400, and what Node reads the sidecar reads too."""
    head = (f"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\n{AUTH_LINE}Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    for port in (gateway.port, sidecar.port):
        assert until_closed(port, head + chunks).startswith(b"HTTP/1.1 %d " % status), port


@pytest.mark.parametrize("target", ["/healthz", "/health", "/readyz"])
def test_health_routes_are_public(http, gateway, sidecar, target):
    direct, proxied = both(http, gateway, sidecar, "GET", target)
    assert direct.status_code == proxied.status_code == 200


def test_the_control_ui_loads_without_credentials(http, gateway, sidecar):
    page = http.get(sidecar.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>OpenClaw Control</title>" in page.text
    # Everything the page loads from its own origin (scripts, styles, icons, the manifest).
    resources = re.findall(r'(?:src|href)="(/[^"/][^"]*)"', page.text)
    assert len(resources) >= 8 and any(r.startswith("/assets/") for r in resources), resources
    for resource in resources:
        direct, proxied = both(http, gateway, sidecar, "GET", resource)
        assert proxied.status_code == direct.status_code == 200, resource
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]


@pytest.mark.parametrize("target", ["/chat", "/sessions", "/sessions/main", "/plugins", "/settings/plugins", "/J/ABC"])
def test_control_ui_deep_links_get_the_app(http, gateway, sidecar, target):
    direct, proxied = both(http, gateway, sidecar, "GET", target, headers={"Accept": "text/html"})
    assert direct.status_code == proxied.status_code == 200
    assert "<title>OpenClaw Control</title>" in proxied.text


# ---- authenticated routes: the sidecar's credential check, then the gateway's handler ---------------


def test_tools_invoke_is_authenticated_and_runs(http, gateway, sidecar):
    resp = http.post(sidecar.url + "/tools/invoke", headers=AUTH, json=AGENTS)
    assert resp.status_code == 200 and resp.json()["ok"] is True
    assert http.post(sidecar.url + "/tools/invoke", json=AGENTS).status_code == 401


def test_a_strangers_download_never_read_can_make_room(http, gateway, start_sidecar):
    """A public Control UI asset over 64 KiB is relayed as it arrives; a client that never read it
    held its slot with no deadline at all, and a cap's worth of them refused every newcomer: RPC
    upgrades and authenticated calls alike (red team)."""
    page = http.get(gateway.url + "/", headers={"Accept": "text/html"})
    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text)
    asset = max(assets, key=lambda target: len(http.get(gateway.url + target).content))
    assert len(http.get(gateway.url + asset).content) > 256 * 1024
    sc = start_sidecar({"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                                    "rateLimit": {"loopbackDelayBaseMs": 0}, "maxConnections": 8}})
    held = []
    try:
        for _ in range(8):
            sock = socket.socket()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", sc.port))
            sock.sendall(f"GET {asset} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            held.append(sock)
        for sock in held:  # each answer has begun: it is relayed as it arrives
            sock.settimeout(10)
            assert sock.recv(1, socket.MSG_PEEK) == b"H"
        assert http.post(sc.url + "/tools/invoke", headers=AUTH, json=AGENTS).status_code == 200
    finally:
        for sock in held:
            sock.close()


BODY_TEXTS = [
    pytest.param('\ufeff{"tool":"agents_list"}'.encode(), id="byte-order-mark"),
    pytest.param('\u00a0{"tool":"agents_list"}\u2028\u3000'.encode(), id="unicode-spaces"),
    pytest.param("\ufeff".encode(), id="byte-order-mark-only"),
    pytest.param("\x1c".encode(), id="information-separator-only"),
    pytest.param("\x85".encode(), id="next-line-only"),
    pytest.param(b'{"tool":"agents_list","args":{"n":' + b"1" * 5000 + b"}}", id="5000-digit-integer"),
    pytest.param(b'{"tool":" agents_list","pad":"' + b"x" * (2 * 1024 * 1024 - 33) + b'"}', id="rewritten-at-the-2MiB-limit"),
]


@pytest.mark.parametrize("raw", BODY_TEXTS)
def test_a_body_is_read_as_the_gateway_reads_it(http, gateway, sidecar, raw):
    """readJsonBodyWithLimit trims the text as JavaScript does and JSON.parse takes any integer;
    a body the sidecar must rewrite still fits the gateway's limit when the original did."""
    assert len(raw) <= 2 * 1024 * 1024
    direct, proxied = both(http, gateway, sidecar, "POST", "/tools/invoke", headers=AUTH, content=raw)
    assert proxied.status_code == direct.status_code
    if direct.status_code == 200:
        assert proxied.json() == direct.json()
    else:  # the same refusal; JSON.parse's own wording of a syntax error is not copied
        assert proxied.json().get("error", {}).get("type") == direct.json().get("error", {}).get("type")


@pytest.mark.parametrize("target", ["/control-ui-config.json", "/sessions/main/history", "/v1/models"])
def test_read_routes_need_the_sidecars_credential_and_then_answer_as_the_gateway(http, gateway, sidecar, target):
    direct, proxied = both(http, gateway, sidecar, "GET", target, headers=AUTH)
    assert proxied.status_code == direct.status_code != 401
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    anonymous = http.get(sidecar.url + target)
    assert anonymous.status_code == 401 and anonymous.json() == {"error": {"message": "Unauthorized", "type": "unauthorized"}}


def test_a_credential_in_the_query_string_is_refused(http, gateway, sidecar):
    target = f"/__openclaw__/assistant-media?source=favicon.svg&token={TOKEN}"
    direct, proxied = both(http, gateway, sidecar, "GET", target)
    assert direct.status_code != 401  # the gateway takes ?token= as a credential here
    assert_gateway_404(proxied)


# ---- routes that act, pair, or take node and worker ingress: refused by default ------------------------


@pytest.mark.parametrize("method, target, headers, body, acts", [
    ("POST", "/v1/chat/completions", AUTH, {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}, True),
    ("POST", "/v1/responses", AUTH, {"model": "openclaw", "input": "hi"}, True),
    ("POST", "/hooks/wake", {"Authorization": f"Bearer {HOOKS_TOKEN}"}, {"text": "x"}, True),
    ("POST", "/API/V1/Admin/RPC", AUTH, {"method": "health"}, False),
    ("POST", "/sessions/main/kill", AUTH, None, False),
    ("GET", "/j/ABCDEF", {}, None, False),
    ("GET", "/x/y/j/ABCDEF", {}, None, False),
    ("GET", "/api/nodes/watch/challenge", {}, None, True),  # issues a challenge to anyone: node ingress
    ("POST", "/__openclaw__/assistant-media?meta=1&allow=1&source=favicon.svg", AUTH, None, False),
    ("GET", "/__openclaw__/board/s/n/index.html", AUTH, None, False),
    ("GET", "/__OPENCLAW__/A2UI/", {}, None, False),  # the canvas plugin's node-capability prefix, any case
    ("GET", "/__OPENCLAW__/A2UI/", AUTH, "x", False),
    # a core path whose percent-decoding climbs into a plugin route, which the gateway runs (red team)
    ("GET", "/v1/models/%252e%252e/%252e%252e/plugins/geolocation/lookup?ip=8.8.8.8", AUTH, None, True),
    ("GET", "/focus/%252e%252e/plugins/geolocation/lookup?ip=8.8.8.8", AUTH, None, True),
])
def test_routes_that_act_are_refused_with_the_gateways_404(http, gateway, sidecar, method, target, headers, body, acts):
    direct, proxied = both(http, gateway, sidecar, method, target, headers=headers, json=body)
    if acts:  # the gateway's handler really ran: no 404 there
        assert direct.status_code != 404, direct.text
    assert_gateway_404(proxied)


def upgrade_request(target: str) -> bytes:
    return http_request("GET", target, [
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Authorization", f"Bearer {TOKEN}"),
    ], host="localhost")


def upgrade_status(port: int, request: bytes) -> int:
    """The status line of the answer to an upgrade (the harness's reader skips 1xx answers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("target, status", [("/__openclaw__/worker", 404), ("/a/..//x/__openclaw__/worker", 400)])
def test_worker_ingress_upgrade_is_refused(gateway, sidecar, target, status):
    """The gateway answers 101 there without credentials; `//x/...` it re-reads as host `x`."""
    assert upgrade_status(gateway.port, upgrade_request(target)) == 101
    assert upgrade_status(sidecar.port, upgrade_request(target)) == status


def until_closed(port: int, raw: bytes) -> bytes:
    """Every byte answered to `raw` until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return b"".join(iter(lambda: sock.recv(65536), b""))


_TAIL = f"Authorization: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
UNPARSEABLE_HEADS = [
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nAuthorization : Bearer x\r\nContent-Length: 2\r\n\r\n{}", id="space-before-colon"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX-Foo\x0b: 1\r\n" + _TAIL, id="control-byte-in-name"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\n: x\r\n" + _TAIL, id="empty-name"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nJustAName\r\n" + _TAIL, id="no-colon"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX@Foo: 1\r\n" + _TAIL, id="at-in-name"),
    pytest.param(b"POST /tools/invoke HTTP/1.1 x\r\nHost: localhost\r\n" + _TAIL, id="extra-request-line-token"),
    pytest.param(b"POST /tools/in voke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="space-in-target"),
    pytest.param(b"POST /tools/invoke http/1.1\r\nHost: localhost\r\n" + _TAIL, id="lower-case-version"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n" + _TAIL, id="unknown-transfer-encoding"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", id="negative-length"),
    # Request lines mitmproxy splits on any whitespace and the sidecar used to relay rewritten
    # (sidecar/request_line.py); Node refuses each of them.
    pytest.param(b"POST\t/tools/invoke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="tab-after-method"),
    pytest.param(b"POST /tools/invoke\x0cHTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="form-feed-before-version"),
    pytest.param(b"POST\r/tools/invoke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="bare-cr-after-method"),
    pytest.param(b"POST /tools/invoke HTTP/1.1 \r\nHost: localhost\r\n" + _TAIL, id="space-after-version"),
    pytest.param(b" POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="space-before-method"),
    pytest.param(b"POST /tools/invoke?x=\x01 HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="control-byte-in-target"),
    pytest.param(b"GET /sessions/m\xc3\xa4in/history HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="utf8-in-target"),
    pytest.param(b"FOO /tools/invoke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="unknown-method"),
    pytest.param(b"PRI /tools/invoke HTTP/1.1\r\nHost: localhost\r\n" + _TAIL, id="pri-method"),
    pytest.param(b"POST /tools/invoke HTTP/1.2\r\nHost: localhost\r\n" + _TAIL, id="unknown-version"),
    # Control bytes at the ends of a value, which mitmproxy stripped and relayed.
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX-Foo: \x0bbar\r\n" + _TAIL, id="vertical-tab-before-value"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX-Foo:\rbar\r\n" + _TAIL, id="bare-cr-before-value"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX-Foo: bar\x0c\r\n" + _TAIL, id="form-feed-after-value"),
    pytest.param(b"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\nX-Foo: bar\r\r\n" + _TAIL, id="cr-cr-lf"),
]


@pytest.mark.parametrize("raw", UNPARSEABLE_HEADS)
def test_a_head_nobody_can_parse_gets_a_400_that_does_not_name_the_proxy(gateway, sidecar, raw):
    """mitmproxy answers these itself with an HTML page naming `mitmproxy <version>` and the option
    that would loosen its checks; the gateway (Node) with a bare 400. Nothing reaches the gateway."""
    direct, proxied = (until_closed(port, raw) for port in (gateway.port, sidecar.port))
    assert direct.startswith(b"HTTP/1.1 400 ")
    assert proxied.startswith(b"HTTP/1.1 400 ")
    assert b"mitmproxy" not in proxied.lower() and b"text/html" not in proxied.lower(), proxied


def client_hello(server_name: str) -> bytes:
    """The first flight of a TLS client (Python's ssl, no socket)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        context.wrap_bio(incoming, outgoing, server_hostname=server_name).do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("raw", [client_hello("gateway.example"), b"\x80\x2e\x01\x00\x02"], ids=["tls", "sslv2"])
def test_a_tls_client_hello_gets_nodes_400_not_a_handshake(gateway, sidecar, raw):
    """The gateway's port speaks plain HTTP and answers a ClientHello with 400. mitmproxy's
    reverse mode terminated TLS there, with a certificate its own CA minted for the name sent."""
    direct, proxied = (until_closed(port, raw) for port in (gateway.port, sidecar.port))
    assert direct.startswith(b"HTTP/1.1 400 ")
    assert proxied.startswith(b"HTTP/1.1 400 ") and b"mitmproxy" not in proxied, proxied[:200]


def test_blank_lines_before_a_request_line_are_skipped_as_the_gateway_skips_them(gateway, sidecar):
    """Node skips CR and LF before a request line (a client may send a CRLF after a body);
    mitmproxy stalled on them until the head deadline."""
    first = f"POST /tools/invoke HTTP/1.1\r\nHost: localhost\r\n{AUTH_LINE}Content-Type: application/json\r\n" \
            f"Content-Length: {len(AGENTS_BODY)}\r\n\r\n"
    raw = first.encode() + AGENTS_BODY + b"\r\n\r\n\nGET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for port in (gateway.port, sidecar.port):
        answers = re.findall(rb"HTTP/1\.1 (\d{3}) ", until_closed(port, raw))
        assert answers == [b"200", b"200"], (port, answers)


@pytest.mark.parametrize("target", ["/tools/invoke", "/v1/models", "/__openclaw__/board/x"])
def test_a_refused_head_request_gets_the_length_and_no_body(gateway, sidecar, target):
    """HEAD answers carry no body: one would be read as the start of the next response on the
    connection (a front proxy reusing it would hand it to the next client)."""
    for port in (gateway.port, sidecar.port):
        received = until_closed(port, f"HEAD {target} HTTP/1.1\r\nHost: localhost\r\n\r\n"
                                      "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        head, rest = received.split(b"\r\n\r\n", 1)
        assert rest.startswith(b"HTTP/1.1 200 "), rest[:80]
        assert rest.endswith(b'{"ok":true,"status":"live"}')
        assert re.search(rb"(?im)^content-length: *[1-9]", head), head  # the length of the body not sent


@pytest.mark.parametrize("method, target", [("POST", "/nope"), ("GET", "/api/nope"), ("DELETE", "/"), ("GET", "/healthz/x")])
def test_paths_outside_the_table_get_the_gateways_404(http, gateway, sidecar, method, target):
    direct, proxied = both(http, gateway, sidecar, method, target, headers=AUTH)
    assert_gateway_404(direct)
    assert_gateway_404(proxied)


def _method_rows() -> list[dict]:
    """Route rows with a method list, a path to try, and no `enabledBy` (their answer follows config)."""
    rows = json.loads((REPO / "sidecar" / "data" / "gateway-routes-2026.9.6.json").read_text())["http"]
    return [r for r in rows if r.get("methods") and "enabledBy" not in r
            and (r["match"] in ("exact", "prefix", "regex", "namespace") and r["paths"])]


def _sample_path(row: dict) -> str:
    path = re.sub(r"\(\?:([^|)]+)[^)]*\)", r"\1", row["paths"][0].replace("[^/]+", "main"))  # (?:a|b): a
    return path + "x" if row["match"] == "prefix" else path


@pytest.mark.parametrize("row", _method_rows(), ids=lambda row: row["name"])
def test_the_route_tables_methods_are_the_gateways(http, gateway, row):
    """Each method a row lists is served there (never 405), and another method gets 405 exactly
    where the row says its handler answers so (`methodNotAllowed`)."""
    target = gateway.url + _sample_path(row)
    for method in row["methods"]:
        assert http.request(method, target, headers=AUTH).status_code != 405, method
    other = next(m for m in ("DELETE", "PUT", "POST", "GET") if m not in row["methods"])
    assert (http.request(other, target, headers=AUTH).status_code == 405) == row.get("methodNotAllowed", False)


@pytest.mark.parametrize("method, target", [("DELETE", "/healthz"), ("POST", "/readyz"), ("OPTIONS", "/health"),
                                            ("POST", "/sessions/main/history"), ("HEAD", "/sessions/main/history"),
                                            ("PUT", "/api/users/u/avatar"),
                                            ("PATCH", "/__openclaw__/plugins/control-ui/x.js")])
@pytest.mark.parametrize("headers", [{}, AUTH], ids=["anonymous", "token"])
def test_a_method_a_route_does_not_serve_gets_the_gateways_405(http, gateway, sidecar, method, target, headers):
    """The gateway's handlers answer it before any credential, naming what they serve in Allow."""
    direct, proxied = both(http, gateway, sidecar, method, target, headers=headers)
    assert direct.status_code == proxied.status_code == 405
    assert direct.content == proxied.content == (b"" if method == "HEAD" else b"Method Not Allowed")
    assert direct.headers["allow"] == proxied.headers["allow"]


# ---- opening a route by name -------------------------------------------------------------------------


def test_an_opened_route_reaches_the_gateway_behind_the_sidecars_auth(http, gateway, opened):
    body = {"model": "not-a-model", "messages": [{"role": "user", "content": "hi"}]}
    direct, proxied = both(http, gateway, opened, "POST", "/v1/chat/completions", headers=AUTH, json=body)
    assert (proxied.status_code, proxied.json()) == (direct.status_code, direct.json()) == (400, direct.json())
    assert http.post(opened.url + "/v1/chat/completions", json=body).status_code == 401


def test_opened_http_nodes_get_their_challenge_and_their_handlers_answers(http, gateway, opened):
    """The challenge is a GET: the row served POST alone, so an opened node-watch refused every
    node's first step with 404 (review)."""
    challenge = http.get(opened.url + "/api/nodes/watch/challenge")
    assert challenge.status_code == 200 and challenge.json()["ok"] is True and challenge.json()["nonce"]
    for method, target in (("GET", "/api/nodes/watch/poll"), ("POST", "/api/nodes/watch/challenge")):
        direct, proxied = both(http, gateway, opened, method, target)
        assert proxied.status_code == direct.status_code == 405 and proxied.headers["allow"] == direct.headers["allow"]


def test_an_opened_route_with_its_own_credential_gets_it_relayed_unread(http, gateway, opened):
    """Hooks take their own token: the sidecar neither checks it nor swaps in its own."""
    ok = http.post(opened.url + "/hooks/wake", headers={"Authorization": f"Bearer {HOOKS_TOKEN}"}, json={"text": "x"})
    assert ok.status_code == 200 and ok.json()["ok"] is True
    wrong = http.post(opened.url + "/hooks/wake", headers=AUTH, json={"text": "x"})
    assert wrong.status_code == 401  # the gateway's hooks check: our shared token is not the hooks token


@pytest.mark.parametrize("target", ["/plugins/openai/realtime/calls", "/PLUGINS/openai/realtime/calls",
                                    "/plugins/%6fpenai/realtime/calls"])
def test_a_denied_prefix_holds_for_every_spelling_the_plugin_router_takes(http, gateway, realtime_denied, target):
    """The gateway's plugin router reads `/PLUGINS/%6fpenai/...` as `/plugins/openai/...` and
    runs the handler (its own 415 here); `routes.deny` on that prefix must refuse them all."""
    direct, proxied = both(http, gateway, realtime_denied, "POST", target, content=b"{}")
    assert direct.status_code == 415  # the plugin's handler ran
    assert_gateway_404(proxied)


@pytest.mark.parametrize("target", ["/hooks/agent", "/hooks//agent", "/hooks///agent"])
def test_a_denied_hook_holds_for_every_spelling_the_hooks_handler_takes(http, gateway, realtime_denied, target):
    """The hooks handler strips the slashes after its base path: `/hooks//agent` starts an agent
    turn upstream (its own 200 with a runId), and must meet the deny on `/hooks/agent`."""
    hooks = {"Authorization": f"Bearer {HOOKS_TOKEN}"}
    direct, proxied = both(http, gateway, realtime_denied, "POST", target, headers=hooks, json={"message": "hi"})
    assert direct.status_code == 200 and "runId" in direct.json()
    assert_gateway_404(proxied)
    woken = http.post(realtime_denied.url + "/hooks/wake", headers=hooks, json={"text": "x"})
    assert woken.status_code == 200  # the other hooks stay open


@pytest.fixture(scope="module")
def admin_rpc_sc(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return module_sidecar(_sidecar_config(gateway, allow=["plugin:admin-http-rpc"]))


@pytest.mark.parametrize("method", ["config.patch", " cron.run ", "device.pair.approve", "gateway.restart.request"])
def test_the_opened_admin_rpc_route_keeps_the_method_deny_list(http, gateway, admin_rpc_sc, method):
    """The admin HTTP RPC plugin dispatches gateway methods by name: what the WebSocket refuses
    whatever the scopes, it refuses too (read as the plugin reads it: `method` trimmed)."""
    refused = http.post(admin_rpc_sc.url + "/api/v1/admin/rpc", headers=AUTH,
                        json={"id": "r1", "method": method, "params": {"raw": "{}"}})
    assert refused.status_code == 403
    body = refused.json()
    assert (body["id"], body["ok"], body["error"]["code"]) == ("r1", False, "FORBIDDEN")
    assert body["error"]["message"] == f"method not allowed through this proxy: {method.strip()}"


def test_an_admin_rpc_body_the_sidecar_cannot_read_is_refused_not_relayed(http, admin_rpc_sc):
    """V8 parses nesting far deeper than Python: padding a denied call with nested arrays
    must not carry it past the method check (the params are invalid, so nothing changes if it did)."""
    body = b'{"id":"r3","method":"config.patch","params":{"raw":12345},"pad":' + nested_beyond_python() + b"}"
    refused = http.post(admin_rpc_sc.url + "/api/v1/admin/rpc", headers={**AUTH, "Content-Type": "application/json"},
                        content=body)
    assert refused.status_code == 400
    assert refused.json() == {"ok": False, "error": {"type": "invalid_request", "message": "request body must be valid JSON"}}


# decodings reach both the beam plugin's exact route and the admin RPC's; beam is not loaded here
BEAM_TO_ADMIN_RPC = "/x%2f..%2fapi%2fv1%2fbeam%2fsessions%2fy%252f..%252f..%252f..%252fadmin%252frpc%252fz%2f.."


def test_a_path_two_opened_plugin_routes_take_is_no_route(http, gateway, module_sidecar):
    """The gateway tries every matched plugin route until a loaded plugin takes the call: beam, not
    loaded, let the admin RPC take it, past the method deny list (red team: a config.patch rewrote
    the gateway's file through a sidecar that had opened plugin:beam beside the admin RPC)."""
    opened = module_sidecar(_sidecar_config(gateway, allow=["plugin:beam", "plugin:admin-http-rpc"]))
    call = {"id": "g1", "method": "config.get", "params": {}}
    direct, proxied = both(http, gateway, opened, "POST", BEAM_TO_ADMIN_RPC, headers=AUTH, json=call)
    assert direct.status_code == 200 and direct.json()["ok"] is True  # the admin RPC ran
    assert_gateway_404(proxied)
    assert_gateway_404(http.post(opened.url + BEAM_TO_ADMIN_RPC, headers=AUTH,
                                 json={"id": "p1", "method": "config.patch", "params": {"raw": "{}"}}))


def test_the_opened_admin_rpc_route_still_answers_what_it_may(http, gateway, admin_rpc_sc):
    direct, proxied = both(http, gateway, admin_rpc_sc, "POST", "/api/v1/admin/rpc", headers=AUTH,
                           json={"id": "r2", "method": "cron.list", "params": {}})
    assert direct.status_code == proxied.status_code == 200
    assert proxied.json()["ok"] is True and proxied.json()["id"] == "r2"


# ---- scope ceilings on the routes the gateway opens to the sidecar's shared secret -----------------


def _capped(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess], *ceiling: str) -> SidecarProcess:
    config = _sidecar_config(gateway, allow=["plugin:admin-http-rpc"])
    config["sidecar"]["scopeCeilings"] = {"default": list(ceiling)}
    return module_sidecar(config)


HISTORY = "/sessions/agent%3Amain%3Amain/history"


def test_a_ceiling_holds_on_routes_where_the_gateway_grants_the_shared_secret_every_scope(http, gateway, module_sidecar):
    """With the token the gateway ignores x-openclaw-scopes and grants every scope: a token caller
    capped at no scope read a session's transcript, and ran config.get and device.pair.list on the
    admin RPC, through the sidecar (red team). Each route's scope is checked against the ceiling."""
    nobody = _capped(gateway, module_sidecar)
    direct, proxied = both(http, gateway, nobody, "GET", HISTORY, headers=AUTH)
    assert direct.status_code != 403
    assert (proxied.status_code, proxied.json()) == (403, {"ok": False, "error": {
        "type": "forbidden", "message": "missing scope: operator.read",
        "details": {"code": "MISSING_SCOPE", "missingScope": "operator.read", "requiredScopes": ["operator.read"]}}})
    refused = http.post(nobody.url + "/api/v1/admin/rpc", headers=AUTH, json={"id": "g1", "method": "config.get", "params": {}})
    assert (refused.status_code, refused.json()["id"], refused.json()["error"]["message"]) == \
        (500, "g1", "missing scope: operator.read")


def test_a_reader_gets_what_the_gateway_gives_a_reader_and_no_more(http, gateway, module_sidecar):
    reader = _capped(gateway, module_sidecar, "operator.read")
    direct, proxied = both(http, gateway, reader, "GET", HISTORY, headers=AUTH)
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
    # chat media is for owners: the gateway's own words, where the token holder gets the file's answer
    direct, proxied = both(http, gateway, reader, "GET", "/api/chat/media/outgoing/main/a1/full", headers=AUTH)
    assert direct.status_code != 403
    assert (proxied.status_code, proxied.content) == (403, b'{"ok":false,"error":{"type":"forbidden","message":"owner access required"}}')
    # a path of another shape its handler does not take: no route on both sides, not a refusal here (red team)
    direct, proxied = both(http, gateway, reader, "GET", "/api/chat/media/outgoing/x.png", headers=AUTH)
    assert (direct.status_code, proxied.status_code) == (404, 404)
    direct, proxied = both(http, gateway, reader, "POST", "/api/v1/admin/rpc", headers=AUTH,
                           json={"id": "r1", "method": "cron.list", "params": {}})
    assert (direct.status_code, proxied.status_code, proxied.json()["ok"]) == (200, 200, True)
    refused = http.post(reader.url + "/api/v1/admin/rpc", headers=AUTH, json={"id": "p1", "method": "device.pair.list", "params": {}})
    assert (refused.status_code, refused.json()["error"]["details"]["missingScope"]) == (500, "operator.pairing")
    # the scope before the deny list, as on the WebSocket: a reader learns nothing of the list
    refused = http.post(reader.url + "/api/v1/admin/rpc", headers=AUTH, json={"id": "c1", "method": "config.patch", "params": {}})
    assert (refused.status_code, refused.json()["error"]["message"]) == (500, "missing scope: operator.admin")
    refused = http.post(reader.url + "/tools/invoke", headers=AUTH, json=AGENTS)
    assert (refused.status_code, refused.json()["error"]["message"]) == (403, "missing scope: operator.write")


# ---- trusted-proxy mode: a capped identity through the capability prefix -------------------------


INGRESS, TAILNET_CLIENT = "198.51.100.5", "203.0.113.7"  # test hosts in the harness's network namespace


@pytest.fixture(scope="module")
def tp_gateway() -> Iterator[RealGateway]:
    # allowLoopback: the sidecar is the gateway's proxy and reaches it over loopback, as in a pod.
    # requiredHeaders as the gateway's own docs show it: demanded of the ingress by the sidecar,
    # and of the sidecar by the gateway.
    gw = RealGateway({"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-forwarded-user", "allowLoopback": True,
                                                               "requiredHeaders": ["x-forwarded-proto"]}})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def tp_sidecar(tp_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess], testnet: TestNet) -> SidecarProcess:
    """Behind a tailnet ingress at INGRESS; the gateway trusts the sidecar (127.0.0.1) and reads
    the identity the sidecar forwards. One file feeds both, the sidecar overriding what differs."""
    config = _sidecar_config(tp_gateway)
    config["sidecar"].update(listen=f"{testnet.HOST_IP}:0", scopeCeilings={"identities": {"reader": ["operator.read"]}})
    config["gateway"] = {"trustedProxies": [INGRESS], "auth": {"trustedProxy": {"allowLoopback": False}}}
    return module_sidecar(config)


def tailnet_post(testnet: TestNet, sidecar: SidecarProcess, target: str, user: str, scopes: str,
                 extra: list[tuple[str, str]] | None = None, host: str = "sidecar.test") -> RawResponse:
    headers = [("X-Forwarded-For", TAILNET_CLIENT), ("X-Forwarded-Proto", "https"), ("x-forwarded-user", user),
               ("x-openclaw-scopes", scopes), ("Content-Type", "application/json"), *(extra or [])]
    request = http_request("POST", target, headers, json.dumps(AGENTS).encode(), host=host)
    return testnet.exchange(INGRESS, (sidecar.host, sidecar.port), request)


def test_a_required_forwarding_header_is_demanded_of_the_ingress_and_handed_on(testnet, tp_gateway, tp_sidecar):
    """requiredHeaders: [x-forwarded-proto]: the sidecar refuses an ingress request without it
    (the gateway's own 401), and relays the ingress's value, which the gateway demands of it."""
    request = http_request("POST", "/tools/invoke", [("X-Forwarded-For", TAILNET_CLIENT), ("x-forwarded-user", "writer"),
                                                     ("x-openclaw-scopes", "operator.write")], json.dumps(AGENTS).encode())
    refused = testnet.exchange(INGRESS, (tp_sidecar.host, tp_sidecar.port), request)
    assert refused.status == 401 and refused.json() == {"error": {"message": "Unauthorized", "type": "unauthorized"}}
    allowed = tailnet_post(testnet, tp_sidecar, "/tools/invoke", "writer", "operator.write")
    assert allowed.status == 200 and allowed.json()["ok"] is True  # the gateway found X-Forwarded-Proto


@pytest.mark.parametrize("host, origin, status", [
    ("gw.tail1234.ts.net", "https://gw.tail1234.ts.net", 200),  # the Control UI served by `tailscale serve`
    ("gw.local:18789", "http://gw.local:18789", 200),
    ("gw.tail1234.ts.net", "https://evil.example", 401),
    ("localhost:18790", "http://localhost:18790", 401),  # a loopback name is same-origin for local clients only
])
def test_a_browser_on_the_tailnet_host_is_let_in_as_the_gateway_lets_it(testnet, tp_gateway, tp_sidecar, host, origin, status):
    """checkBrowserOrigin trusts a same-origin `.ts.net` or `.local` Host; a trusted-proxy
    request is never a local client. The gateway reads the same Origin and Host after us."""
    resp = tailnet_post(testnet, tp_sidecar, "/tools/invoke", "writer", "operator.write", [("Origin", origin)], host=host)
    assert resp.status == status, resp.body
    if status == 200:
        assert resp.json()["ok"] is True  # the gateway ran it: it accepted the same origin
    else:
        assert resp.json() == {"error": {"message": "Unauthorized", "type": "unauthorized"}}


@pytest.mark.parametrize("target", ["/tools/invoke", "/__openclaw__/cap/x/tools/invoke", "/__openclaw__/cap/x/tools/./invoke"])
def test_a_capped_identity_cannot_reach_tools_through_any_spelling(testnet, tp_gateway, tp_sidecar, target):
    """The measured bypass: capped at operator.read, `/tools/invoke` said 403 while the capability
    spelling ran the tool. Every spelling now gets the whole tools pipeline or a refusal."""
    resp = tailnet_post(testnet, tp_sidecar, target, "reader", "operator.write,operator.admin")
    if target == "/tools/invoke":
        assert resp.status == 403 and resp.json()["error"]["details"]["missingScope"] == "operator.write"
    else:
        assert resp.status == 400 and resp.json() == INVALID_URL
    allowed = tailnet_post(testnet, tp_sidecar, "/tools/invoke", "writer", "operator.write")
    assert allowed.status == 200 and allowed.json()["ok"] is True  # the identity reached the real gateway
