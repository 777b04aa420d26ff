"""The gateway's WebSocket RPC through the sidecar, against a real OpenClaw gateway (2026.9.6).

The gateway's own clients must work (its CLI, a browser-style client with the token in the
connect frame), and no frame may reach the gateway with more power than the same caller gets
over HTTP: ceilings hold, the deny list holds, tools.invoke meets the tool policy and limits,
node roles and devices above the ceiling are refused, and only RFC 6455 upgrades are relayed.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from wsproto.events import TextMessage

from tests.gateway.devices import NODE_CLIENT, control_ui_connect, device_id, node_connect, signed_connect
from tests.gateway.real_gateway import RealGateway, unavailable_reason
from tests.wsclient import Closed, Rejected, WsClient

from .conftest import REAL_GATEWAY_TOKEN as TOKEN
from .harness import SidecarProcess, TestNet, http_request, raw_exchange
from .ratelimit_helpers import avoid_minute_boundary, wait_until

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

ALL = ["operator.admin", "operator.read", "operator.write", "operator.approvals", "operator.pairing"]
INGRESS, TAILNET_CLIENT = "198.51.100.5", "203.0.113.7"


def sidecar_config(gateway: RealGateway, **sidecar: Any) -> dict:
    return {"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                        "rateLimit": {"loopbackDelayBaseMs": 0}, **sidecar}}


@pytest.fixture(scope="module")
def open_sc(token_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """No ceiling: a token holder may ask for every scope; the deny list still holds."""
    return module_sidecar(sidecar_config(token_gateway, rateLimit={"loopbackDelayBaseMs": 0,
                                                                   "requests": {"limit": "3/minute"}}))


@pytest.fixture(scope="module")
def capped_sc(token_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    config = sidecar_config(token_gateway, scopeCeilings={"default": ["operator.read", "operator.write"]})
    config["gateway"] = {"tools": {"deny": ["agents_list"]}}  # a tool the gateway allows, the sidecar does not
    return module_sidecar(config)


@pytest.fixture(scope="module")
def relays_sc(token_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """The browser relays opened: their exact paths carry their own credential, relayed unread."""
    return module_sidecar(sidecar_config(token_gateway, routes={"allow": ["plugin:browser-extension", "plugin:browser-screencast"]}))


def connect_params(scopes: list[str], token: str | None = TOKEN, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"minProtocol": 4, "maxProtocol": 4, "role": "operator", "scopes": scopes,
                              "client": {"id": "gateway-client", "version": "1.0.0", "platform": "linux", "mode": "backend"}}
    if token is not None:
        params["auth"] = {"token": token}
    params.update(extra)
    return params


def session(port: int, scopes: list[str], *, token: str | None = TOKEN, headers: list[tuple[str, str]] | None = None,
            sock: socket.socket | None = None, path: str = "/", **extra: Any) -> tuple[WsClient, dict[str, Any]]:
    """Upgrade (no credentials on it, as a browser), take the challenge, send connect."""
    ws = WsClient("127.0.0.1", port, path=path, headers=headers, sock=sock)
    challenge = ws.recv_json()
    assert challenge["event"] == "connect.challenge"
    ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": connect_params(scopes, token, **extra)})
    return ws, ws.response("c1")


def granted(hello: dict[str, Any]) -> list[str]:
    assert hello["ok"] is True, hello
    return sorted(hello["payload"]["auth"]["scopes"])


def assert_closed_after(ws: WsClient, code: int) -> dict[str, Any]:
    """The refusal frame, then a close with `code`."""
    with pytest.raises(Closed) as closed:
        ws.recv()
    assert closed.value.code == code
    return {}


# ---- unauthenticated upgrades --------------------------------------------------------------------------


def _from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(15)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_one_client_holding_unauthenticated_upgrades_leaves_the_rpc_to_everyone_else(open_sc):
    """The gateway gives each address 32 sockets that have not sent connect, and behind the
    sidecar's credential every client is the sidecar's address: 34 upgrades from one stranger
    took the RPC from everyone (red team). Each client holds 8 at most; the 9th gets the gateway's
    own 503, and another client still connects. A connected socket no longer counts."""
    held = [WsClient("127.0.0.1", open_sc.port, sock=_from("127.0.0.2", open_sc.port)) for _ in range(8)]
    try:
        with pytest.raises(Rejected) as refused:
            WsClient("127.0.0.1", open_sc.port, sock=_from("127.0.0.2", open_sc.port))
        assert (refused.value.status, refused.value.body) == (503, b"Too many unauthenticated sockets")
        ws, hello = session(open_sc.port, ["operator.read"])  # from 127.0.0.1
        assert hello["ok"] is True
        ws.close()
        first = held.pop(0)
        assert first.recv_json()["event"] == "connect.challenge"
        first.send_json({"type": "req", "id": "c1", "method": "connect", "params": connect_params(["operator.read"])})
        assert first.response("c1")["ok"] is True
        held.append(WsClient("127.0.0.1", open_sc.port, sock=_from("127.0.0.2", open_sc.port)))  # its count was given back
        first.close()
    finally:
        for ws in held:
            ws.close()


# ---- the gateway's own clients ------------------------------------------------------------------------


def test_the_gateways_own_cli_works_through_the_sidecar(token_gateway, open_sc):
    url = f"ws://127.0.0.1:{open_sc.port}"
    health = token_gateway.cli("gateway", "call", "health", "--url", url, "--token", TOKEN, "--json")
    assert health.returncode == 0, health.stderr[-2000:]
    assert json.loads(health.stdout)["ok"] is True
    terminal = token_gateway.cli("gateway", "call", "terminal.open", "--url", url, "--token", TOKEN, "--json")
    assert terminal.returncode != 0
    assert json.loads(terminal.stdout)["error"]["details"]["code"] == "METHOD_DENIED"


def test_a_browser_style_client_sends_the_token_in_the_connect_frame(open_sc):
    """No credential on the upgrade (a browser cannot set one): the frame carries the token."""
    ws, hello = session(open_sc.port, ["operator.read"])
    assert granted(hello) == ["operator.read"]
    assert ws.call("health")["ok"] is True
    assert ws.call("sessions.list")["ok"] is True
    ws.close()


def test_a_page_origin_gets_the_gateways_own_answer(token_gateway, open_sc):
    """With an Origin the gateway itself wants a paired device before it grants scopes; the
    sidecar relays that decision unchanged (the same grant directly and through it)."""
    answers = []
    for port in (token_gateway.port, open_sc.port):
        ws, hello = session(port, ["operator.read"], headers=[("Origin", f"http://localhost:{port}")])
        answers.append(granted(hello))
        assert ws.call("health")["ok"] is True
        ws.close()
    assert answers[0] == answers[1]


@pytest.mark.parametrize("token", ["not-the-token", None])
def test_a_wrong_or_missing_token_in_the_frame_gets_the_gateways_own_refusal(token_gateway, open_sc, token):
    """Same error object as the gateway's (message, details code, next step): its clients decide
    from it whether to ask for the token again."""
    refusals = []
    for port in (token_gateway.port, open_sc.port):
        ws, refused = session(port, ["operator.read"], token=token)
        assert refused["ok"] is False
        assert_closed_after(ws, 1008)
        refusals.append(refused["error"])
    assert refusals[1] == refusals[0]


def test_a_page_from_a_foreign_origin_learns_nothing_of_its_guess(token_gateway, open_sc):
    """The gateway refuses a browser's origin before it reads the connect frame's credential; the
    sidecar answered the credential first, so any web page could tell a right guess from a wrong
    one (red team: 300 guesses in 96 s). Both now give the same answer to either."""
    answers = []
    for port in (token_gateway.port, open_sc.port):
        for token in ("a-wrong-guess", TOKEN):
            ws, refused = session(port, ["operator.read"], token=token, headers=[("Origin", "https://evil.example")])
            assert_closed_after(ws, 1008)
            answers.append(refused["error"])
    assert answers[0]["details"]["code"] == "CONTROL_UI_ORIGIN_NOT_ALLOWED"
    assert all(error == answers[0] for error in answers), answers


def test_a_browser_on_the_gateways_host_is_locked_out_by_its_origin(start_sidecar):
    """A loopback client is never locked out, only slowed; a browser on the same host is (the
    gateway's browser limiter, keyed by origin): any page can open a loopback connection (red
    team: 106 wrong guesses answered through the sidecar, then the right token accepted)."""
    gateway = RealGateway({"mode": "token", "token": TOKEN}, {"gateway": {"auth": {"rateLimit": {"maxAttempts": 3}}}})
    try:
        sc = start_sidecar(sidecar_config(gateway))
        for port in (gateway.port, sc.port):
            origin = [("Origin", f"http://localhost:{port}")]  # a same-host page the gateway lets in
            for _ in range(3):
                ws, refused = session(port, ["operator.read"], token="a-wrong-guess", headers=origin)
                assert refused["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH"
                ws.close()
            ws, locked = session(port, ["operator.read"], headers=origin)  # the right token, too late
            assert locked["error"]["details"]["code"] == "AUTH_RATE_LIMITED", (port, locked)
            ws.close()
            ws, hello = session(port, ["operator.read"])  # the same host without a browser: its own budget
            assert granted(hello) == ["operator.read"]
            ws.close()
    finally:
        gateway.stop()


def test_failed_frame_secrets_lock_the_client_out(token_gateway, start_sidecar):
    sc = start_sidecar({**sidecar_config(token_gateway),
                        "gateway": {"auth": {"rateLimit": {"maxAttempts": 2, "exemptLoopback": False}}}})
    for _ in range(2):
        ws, refused = session(sc.port, ["operator.read"], token="wrong")
        assert refused["ok"] is False
        ws.close()
    ws, locked = session(sc.port, ["operator.read"])  # the right token, too late
    error = locked["error"]
    assert locked["ok"] is False and error["message"] == "unauthorized: too many failed authentication attempts (retry later)"
    assert error["details"]["code"] == "AUTH_RATE_LIMITED" and error["details"]["authReason"] == "rate_limited"
    assert error["retryable"] is True and 0 < error["retryAfterMs"] <= 300_000


# ---- power: no more than the same caller gets over HTTP ----------------------------------------------


def test_a_ceiling_holds_on_the_connection(token_gateway, capped_sc):
    direct, hello = session(token_gateway.port, ALL)
    assert "operator.admin" in granted(hello)  # the gateway alone grants what is asked
    direct.close()
    ws, hello = session(capped_sc.port, ALL)
    assert granted(hello) == ["operator.read", "operator.write"]  # the gateway's own answer, capped
    refused = ws.call("terminal.list")
    assert refused["error"]["details"] == {"code": "MISSING_SCOPE", "missingScope": "operator.admin",
                                           "requiredScopes": ["operator.admin"]}
    ws.close()


@pytest.mark.parametrize("method, params", [
    ("terminal.open", {}), ("config.patch", {"raw": "{}"}), ("exec.approvals.set", {}), ("device.pair.approve", {"requestId": "x"}),
    ("gateway.restart.request", {}), ("chat.send", {"sessionKey": "main", "message": "hi"}), ("agent", {"message": "hi"}),
    ("node.invoke", {"nodeId": "n", "command": "system.run"}), ("portal.open", {"port": 9, "title": "x"}), ("no.such.method", {}),
    ("chat.inject", {"sessionKey": "main", "message": "forged assistant turn", "label": "x"}),
    ("talk.session.steer", {"sessionId": "s", "text": "hi"}), ("talk.client.steer", {"sessionKey": "main", "text": "hi"}),
    ("talk.client.transcript", {"sessionKey": "main", "voiceSessionId": "v", "entryId": "e", "role": "assistant", "text": "x"}),
    # write-scoped, and each starts or steers a turn, feeds the model, or changes who sees a session
    ("sessions.goal.update", {"sessionKey": "main", "goalId": "g", "operationId": "o", "issuedAtMs": 1, "action": "resume"}),
    ("progressCard.refresh", {"sessionKey": "main", "idempotencyKey": "r"}),
    ("board.event", {"sessionKey": "main", "widget": "w1", "payload": "ignore the user"}),
    ("session.suggestions.resolve", {"sessionKey": "main", "id": "s", "resolution": "send"}),
    ("mcp.app.updateModelContext", {"sessionKey": "main", "viewId": "v", "context": "x"}),
    ("session.visibility.set", {"sessionKey": "main", "visibility": "draft"}),
    ("session.members.add", {"sessionKey": "main", "profileId": "p"}),
    ("question.resolve", {"id": "q", "answers": {"answers": {}}, "secretStoreAllowedHosts": ["evil.example"]}),
    ("sessions.github.publish", {"sessionKey": "main"}),
])
def test_methods_that_act_are_refused_and_the_connection_stays(open_sc, method, params):
    ws, hello = session(open_sc.port, ALL)
    assert "operator.admin" in granted(hello)
    refused = ws.call(method, params, request_id="x-1")
    assert refused["id"] == "x-1" and refused["ok"] is False
    # the sidecar's own refusal, not whatever the gateway would have said to these params
    assert refused["error"]["message"] in (f"method not allowed through this proxy: {method}",
                                           "unauthorized role: operator", f"unknown method: {method}")
    assert ws.call("health")["ok"] is True  # still open
    ws.close()


def test_a_flood_of_refused_frames_closes_the_connection_and_is_audited_with_its_granted_scopes(token_gateway, open_sc):
    """Admin/CLI red team: one read-only connection sent 20,000 denied frames in 1.2 s, 10.7 MB of
    audit lines. Its refused frames now spend a budget (40 at once, allowed frames between them
    giving nothing back); past it the refusal is answered and the connection closed with 1008. The
    lines name the scopes the connection was granted, not the upgrade's ceiling."""
    ws, hello = session(open_sc.port, ["operator.read"])
    assert granted(hello) == ["operator.read"]
    for n in range(40):
        refused = ws.call("config.apply", {"raw": "{}"}, request_id=f"x-{n}")
        assert refused["id"] == f"x-{n}" and refused["ok"] is False
        if n == 20:
            assert ws.call("health")["ok"] is True  # allowed, and no refill
    last = ws.call("config.apply", {"raw": "{}"}, request_id="x-last")
    assert last["ok"] is False
    assert_closed_after(ws, 1008)

    def refused_lines() -> list[dict[str, Any]]:
        return [line for line in open_sc.audit_lines() if line.get("method") == "config.apply"]

    assert wait_until(lambda: any(line["reason"] == "refused_frame_flood" for line in refused_lines()), 10)  # written in batches
    lines = refused_lines()[-41:]
    # config.apply needs admin: refused for its scope before the deny list is read, as the gateway checks
    assert [line["reason"] for line in lines] == ["missing_scope"] * 40 + ["refused_frame_flood"]
    assert all(line["scopes"] == ["operator.read"] for line in lines)  # not the upgrade's ceiling, every scope


def test_in_shadow_mode_a_flood_is_forwarded_and_past_the_budget_counted_not_written(token_gateway, start_sidecar):
    """Shadow mode forwards what enforcement would refuse, so a flood of such frames does not close
    the connection; past the budget they are counted on /metrics but not written one by one (red
    team: a read-only connection wrote 200 shadowed lines in 0.6 s)."""
    # No refill: the 40 lines do not depend on how fast the gateway answers the 60 calls.
    sc = start_sidecar(sidecar_config(token_gateway, enforce=False, websocket={"refusedFrames": {"burst": 40, "perSecond": 0}}))
    ws, hello = session(sc.port, ["operator.read"])
    assert granted(hello) == ["operator.read"]
    for n in range(60):
        answered = ws.call("config.apply", {"raw": "{}"}, request_id=f"s-{n}")
        assert answered["id"] == f"s-{n}" and answered["ok"] is False  # the gateway's own refusal: forwarded
        assert answered["error"]["message"] == "missing scope: operator.admin"
    assert ws.call("connect", {}, request_id="again")["ok"] is False  # answered by the sidecar: never a close
    assert ws.call("health")["ok"] is True  # still open
    ws.close()
    assert sc.admin_url is not None
    shadowed = 'openclaw_sidecar_shadowed_total{reason="missing_scope"}'
    assert wait_until(lambda: f"{shadowed} 60.0" in httpx.get(sc.admin_url + "/metrics", timeout=5, trust_env=False).text, 10)

    # The repeated connect's line comes after every config.apply line (one writer, in order).
    assert wait_until(lambda: any(line.get("method") == "connect" and line["decision"] == "refused"
                                  for line in sc.audit_lines()), 10)
    lines = [line for line in sc.audit_lines() if line.get("method") == "config.apply"]
    assert [line["decision"] for line in lines] == ["shadowed"] * 40


def test_a_write_scope_cannot_change_who_sees_a_session(token_gateway, capped_sc):
    """session.visibility.set: the gateway takes it from a token holder with write scope (its
    owner check passes for a caller with no identity); through the sidecar the session keeps its
    visibility."""
    key = "visibility-probe"

    def visibility(ws: WsClient) -> Any:
        deadline = time.monotonic() + 15  # chat.send records the session as its run starts
        while True:
            sessions = ws.call("sessions.list", {"limit": 1000})["payload"]["sessions"]
            found = [s.get("visibility") for s in sessions if s["key"].endswith(f":{key}")]
            if found or time.monotonic() > deadline:
                return found[0]
            time.sleep(0.2)

    direct, hello = session(token_gateway.port, ALL)
    assert hello["ok"] is True, hello
    assert direct.call("chat.send", {"sessionKey": key, "message": "hi", "idempotencyKey": key})["ok"] is True  # the session
    before = visibility(direct)
    through, hello = session(capped_sc.port, ["operator.read", "operator.write"])
    refused = through.call("session.visibility.set", {"sessionKey": key, "visibility": "draft"})
    assert refused["error"]["details"] == {"code": "METHOD_DENIED", "markers": "C"}
    assert visibility(direct) == before != "draft"
    writer, hello = session(token_gateway.port, ["operator.read", "operator.write"])
    done = writer.call("session.visibility.set", {"sessionKey": key, "visibility": "draft"})
    assert done["ok"] is True and visibility(direct) == "draft", done  # what the refusal kept out
    for ws in (direct, through, writer):
        ws.close()


def test_a_sessions_live_history_streams_through_as_it_arrives(token_gateway, open_sc):
    """The history route answers `Accept: text/event-stream` with a stream that never ends;
    mitmproxy held answers whole, so nothing of it ever reached the client."""
    direct, hello = session(token_gateway.port, ALL)
    assert direct.call("chat.send", {"sessionKey": "streamed", "message": "hi", "idempotencyKey": "streamed"})["ok"] is True
    deadline = time.monotonic() + 15  # chat.send records the session as its run starts
    while not (keys := [s["key"] for s in direct.call("sessions.list", {"limit": 1000})["payload"]["sessions"]
                        if s["key"].endswith(":streamed")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    direct.close()
    request = (f"GET /sessions/{quote(keys[0], safe='')}/history HTTP/1.1\r\nHost: localhost\r\n"
               f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n").encode()
    for port in (token_gateway.port, open_sc.port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            received = b""
            while b"\nevent: " not in received and b"\ndata: " not in received:
                received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in received, (port, received[:300])
    # The stream never ends: leaving it is how every read of it ends, and it is audited then.
    deadline = time.monotonic() + 8
    while not (lines := [line for line in open_sc.audit_lines() if line["target"].endswith("/history")]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(line["decision"], line["status"], line.get("outcome")) for line in lines] == [("forwarded", 200, "client_gone")]


def test_tools_invoke_meets_the_sidecars_tool_policy(token_gateway, capped_sc):
    """A refused call is answered as the gateway's handler answers one it cannot run (a successful
    request whose call failed), and params its schema does not take are refused in its words: the
    sidecar read `tool` as the name and relayed a call the gateway runs (red team)."""
    direct, _ = session(token_gateway.port, ["operator.write"])
    assert direct.call("tools.invoke", {"name": "agents_list", "args": {}})["ok"] is True
    unknown = direct.call("tools.invoke", {"name": "no_such_tool", "args": {}})
    spelled = direct.call("tools.invoke", {"name": "sessions_list", "tool": "agents_list", "args": {}})
    direct.close()
    ws, _ = session(capped_sc.port, ["operator.write"])
    refused = ws.call("tools.invoke", {"name": "agents_list", "args": {}})
    assert (refused["ok"], refused["payload"]) == (True, {"ok": False, "toolName": "agents_list", "error": {
        "code": "not_found", "message": "Tool not available: agents_list"}})
    assert unknown["payload"] == {"ok": False, "toolName": "no_such_tool", "error": {
        "code": "not_found", "message": "Tool not available: no_such_tool"}}  # the gateway's own shape
    through = ws.call("tools.invoke", {"name": "sessions_list", "tool": "agents_list", "args": {}})
    assert through == spelled and spelled["error"]["code"] == "INVALID_REQUEST", (through, spelled)
    ws.close()


def test_tools_invoke_meets_the_request_limits(open_sc):
    avoid_minute_boundary()  # "3/minute" across a minute's turn may rightly let a fourth through
    ws, _ = session(open_sc.port, ["operator.write"])
    answers = [ws.call("tools.invoke", {"name": "sessions_list", "args": {}}, request_id=f"t{i}") for i in range(4)]
    assert [a["ok"] for a in answers] == [True, True, True, False]
    assert answers[-1]["error"]["code"] == "UNAVAILABLE"
    ws.close()


def test_a_node_role_connect_is_refused(open_sc):
    ws, refused = session(open_sc.port, [], role="node", client=NODE_CLIENT)
    assert refused["ok"] is False
    assert_closed_after(ws, 1008)


@pytest.fixture(scope="module")
def nodes_sc(token_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    """Nodes allowed; operators may pair and invoke them."""
    return module_sidecar(sidecar_config(token_gateway, websocket={"allowNodes": True, "allowMethods": ["node.invoke", "node.pair.approve"]}))


def test_with_nodes_allowed_a_node_connects_and_answers_an_operators_invoke(token_gateway, nodes_sc):
    """A node's device signs its role and credential: with allowNodes the sidecar relayed it
    rewritten to an operator, which the gateway refused ('device signature invalid')."""
    key = Ed25519PrivateKey.generate()
    node = WsClient("127.0.0.1", nodes_sc.port)
    hello = node_connect(node, TOKEN, key, commands=["system.which"])
    assert hello["ok"] is True, hello
    assert (hello["payload"]["auth"]["role"], hello["payload"]["auth"]["scopes"]) == ("node", [])
    assert node.call("health")["ok"] is True
    refused = node.call("chat.history", {"sessionKey": "main"}, "o1")  # the gateway's own answer to a node
    assert refused["error"] == {"code": "INVALID_REQUEST", "message": "unauthorized role: node"}

    operator, hello = session(nodes_sc.port, ALL)
    assert hello["ok"] is True
    pending = [p for p in operator.call("node.pair.list")["payload"]["pending"] if p["nodeId"] == device_id(key)]
    assert operator.call("node.pair.approve", {"requestId": pending[0]["requestId"]})["ok"] is True
    operator.send_json({"type": "req", "id": "inv", "method": "node.invoke", "params": {
        "nodeId": device_id(key), "command": "system.which", "params": {"bins": ["ls"]}, "idempotencyKey": "k1"}})
    request = node.recv_json()
    while request.get("event") != "node.invoke.request":
        request = node.recv_json()
    answered = node.call("node.invoke.result", {"id": request["payload"]["id"], "nodeId": device_id(key), "ok": True,
                                                "payload": {"bins": {"ls": "/bin/ls"}}})
    assert answered["ok"] is True
    assert operator.response("inv")["payload"]["payload"] == {"bins": {"ls": "/bin/ls"}}
    node.close()
    operator.close()
    expected = {("connect", "connect", "role node"), ("chat.history", "operator_method", None)}
    audited = lambda: {(line["method"], line["reason"], line.get("detail")) for line in nodes_sc.audit_lines()}  # noqa: E731
    assert wait_until(lambda: expected <= audited(), 10), audited()  # written in batches (it failed once in CI reading at once)


def test_with_nodes_allowed_a_caller_below_owner_cannot_be_one(token_gateway, start_sidecar):
    config = sidecar_config(token_gateway, websocket={"allowNodes": True}, scopeCeilings={"default": ["operator.read", "operator.write"]})
    sc = start_sidecar(config)
    node = WsClient("127.0.0.1", sc.port)
    refused = node_connect(node, TOKEN, Ed25519PrivateKey.generate())
    assert refused["error"]["message"] == "node connections need operator.admin in the caller's ceiling"
    assert_closed_after(node, 1008)


@pytest.mark.parametrize("path", ["/Browser/Extension", "/browser/%65xtension", "/browser/extension/", "/Browser/Screencast",
                                  "/browser/%73creencast"])
def test_an_opened_browser_relay_spelled_otherwise_is_the_rpc_websocket_and_judged(token_gateway, relays_sc, path):
    """The browser relays' upgrade handlers take their exact pathname only; any other spelling
    reaches the gateway's RPC WebSocket, so it must get the RPC rules (here: no node role), not
    the opened relay's unread pass-through (which let a token holder pair a node)."""
    for port in (token_gateway.port, relays_sc.port):  # the gateway's RPC, then the sidecar's judged session
        ws, hello = session(port, ["operator.read"], path=path)
        assert granted(hello) == ["operator.read"]  # relayed unread, the connection got no scopes at all
        ws.close()
    ws, refused = session(relays_sc.port, [], path=path, role="node", client=NODE_CLIENT)
    assert "role not allowed through this proxy" in refused["error"]["message"]
    assert_closed_after(ws, 1008)


def test_an_opened_relay_whose_plugin_is_not_loaded_never_carries_the_rpc(start_sidecar):
    """A plugin not loaded leaves its upgrade path to the gateway's RPC WebSocket, and an opened
    relay is relayed unread (red team: a token holder paired a node through /browser/extension with
    the browser plugin off). A frame there that speaks the RPC closes the connection."""
    gateway = RealGateway({"mode": "token", "token": TOKEN}, {"plugins": {"entries": {"browser": {"enabled": False}}}})
    try:
        direct, hello = session(gateway.port, ["operator.read"], path="/browser/extension")
        assert hello["ok"] is True  # the gateway's RPC, on the relay's path
        direct.close()
        sc = start_sidecar(sidecar_config(gateway, routes={"allow": ["plugin:browser-extension"]}))
        ws = WsClient("127.0.0.1", sc.port, path="/browser/extension")
        assert ws.recv_json()["event"] == "connect.challenge"  # the gateway's frames are relayed as they come
        ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": connect_params(["operator.read"])})
        assert_closed_after(ws, 1008)
        assert wait_until(lambda: any(line["reason"] == "rpc_on_plugin_socket" for line in sc.audit_lines()), 10)
    finally:
        gateway.stop()


def test_a_device_cannot_pair_above_the_ceiling(capped_sc):
    device = {"id": "0" * 64, "publicKey": "A" * 43, "signature": "B" * 86, "signedAt": 1, "nonce": "n"}
    ws, refused = session(capped_sc.port, ["operator.admin"], device=device)
    assert refused["error"]["details"]["code"] == "DEVICE_SCOPES_ABOVE_CEILING"
    assert_closed_after(ws, 1008)


# What the Control UI asks for (2026.9.6): the owner's set but for talk secrets.
CONTROL_UI_SCOPES = ["operator.admin", "operator.read", "operator.write", "operator.approvals", "operator.questions",
                     "operator.pairing"]


def control_ui_session(port: int, secret: str) -> tuple[WsClient, dict[str, Any]]:
    """A browser's socket (an Origin naming its page's loopback host), then the UI's signed connect."""
    ws = WsClient("127.0.0.1", port, headers=[("Origin", "http://localhost")])
    return ws, control_ui_connect(ws, secret, Ed25519PrivateKey.generate(), CONTROL_UI_SCOPES)


def test_the_control_ui_connects_through_the_sidecar_as_it_connects_direct(token_gateway, open_sc):
    """Its device signs the token it sends beside an unsigned copy as `password`: every browser
    was refused 'device identities pass this proxy only with its own credential' (a real-browser
    review), and the UI showed 'Gateway unreachable'."""
    minted = {}
    for port in (token_gateway.port, open_sc.port):
        ws, hello = control_ui_session(port, TOKEN)
        assert granted(hello) == sorted(CONTROL_UI_SCOPES)
        minted[port] = hello["payload"]["auth"].get("deviceToken")
        assert hello["payload"]["auth"]["recoveryScope"]  # its drafts' storage key: this caller holds the secret
        ws.close()
    # The gateway mints the browser a device token; the sidecar, which honours none, keeps it: the
    # UI then reads over HTTP with the secret it was given, not with a token answered 401 each time.
    assert minted[token_gateway.port] and minted[open_sc.port] is None


def test_the_control_ui_connects_through_the_sidecar_to_a_password_gateway(start_sidecar):
    gateway = RealGateway({"mode": "password", "password": "browser-password-0123456789"})
    try:
        sc = start_sidecar(sidecar_config(gateway))
        for port in (gateway.port, sc.port):
            ws, hello = control_ui_session(port, "browser-password-0123456789")
            assert granted(hello) == sorted(CONTROL_UI_SCOPES)
            ws.close()
    finally:
        gateway.stop()


def test_a_caller_without_the_gateways_secret_can_neither_guess_it_nor_hash_it(token_gateway, start_sidecar):
    """Callers hold the sidecar's own secret; the gateway's is the sidecar's upstream credential.
    A device signing a guess at it was refused uncounted, an unlimited oracle; and the connect's
    answer carried recoveryScope, a hash of it to test guesses against offline (red team)."""
    own = "sidecar-own-secret-0123456789"
    config = sidecar_config(token_gateway, upstreamAuth={"token": TOKEN})
    config["gateway"] = {"auth": {"mode": "token", "token": own, "rateLimit": {"maxAttempts": 3, "exemptLoopback": False}}}
    sc = start_sidecar(config)
    ws, hello = session(sc.port, ["operator.read"], token=own)
    assert granted(hello) == ["operator.read"] and "recoveryScope" not in hello["payload"]["auth"]
    ws.close()
    direct, hello = session(token_gateway.port, ["operator.read"])
    assert hello["payload"]["auth"]["recoveryScope"]  # what the gateway hands a caller holding its secret
    direct.close()
    answers = []
    for guess in ("guess-1", "guess-2", None, "guess-3", TOKEN):
        if guess is None:  # a connect with the caller's own secret clears its own count, not its guesses'
            ws, hello = session(sc.port, ["operator.read"], token=own)
            assert hello["ok"] is True
            ws.close()
            continue
        # a fresh Origin each time: a local process sets any it likes (review: each was a fresh count)
        ws = WsClient("127.0.0.1", sc.port, headers=[("Origin", f"http://localhost:{3000 + len(answers)}")])
        answers.append(signed_connect(ws, Ed25519PrivateKey.generate(), NODE_CLIENT | {"mode": "cli"}, "operator",
                                      ["operator.read"], {"password": own, "deviceToken": guess}))
        ws.close()
    # the right guess, once locked out, reads like the wrong ones before it
    assert [a["error"]["details"]["code"] for a in answers] == ["AUTH_TOKEN_MISMATCH"] * 3 + ["AUTH_RATE_LIMITED"]
    assert wait_until(lambda: [x["reason"] for x in sc.audit_lines() if x.get("method") == "connect"
                               and x["decision"] == "refused"][-4:] == ["token_mismatch"] * 3 + ["rate_limited"], 10)


def test_a_stale_local_device_client_locks_no_one_out_where_callers_hold_the_gateways_secret(token_gateway, start_sidecar):
    """The sidecar's secret is the gateway's (the usual deployment): a device signing a wrong one
    is a wrong secret like any other, under the loopback rules (delayed, never locked), not an
    upstream guess that locked every local device connect out (review)."""
    sc = start_sidecar({**sidecar_config(token_gateway), "gateway": {"auth": {"rateLimit": {"maxAttempts": 2}}}})
    cli = NODE_CLIENT | {"mode": "cli"}
    for _ in range(3):
        ws = WsClient("127.0.0.1", sc.port)
        stale = signed_connect(ws, Ed25519PrivateKey.generate(), cli, "operator", ["operator.read"], {"token": "an old token"})
        assert stale["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH"
        ws.close()
    ws = WsClient("127.0.0.1", sc.port)
    hello = signed_connect(ws, Ed25519PrivateKey.generate(), cli, "operator", ["operator.read"], {"token": TOKEN})
    assert granted(hello) == ["operator.read"]
    ws.close()


# ---- upgrades: RFC 6455 or nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("headers, body", [
    ([("Sec-WebSocket-Version", "8")], b""),
    ([("Sec-WebSocket-Version", "13")], b'{"type":"req"}'),
    ([("Sec-WebSocket-Version", "13"), ("Connection", "keep-alive")], b""),
])
def test_only_rfc6455_upgrades_are_relayed(open_sc, headers, body):
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    base.update(dict(headers))
    request = http_request("GET", "/", list(base.items()), body, host="localhost")
    response = raw_exchange(("127.0.0.1", open_sc.port), request)
    assert response.status == 400, response
    assert json.loads(response.body)["error"]["message"] == "not an RFC 6455 WebSocket upgrade"


def test_websocket_off_refuses_every_upgrade(token_gateway, start_sidecar):
    sc = start_sidecar(sidecar_config(token_gateway, websocket={"mode": "off"}))
    with pytest.raises(Rejected) as rejected:
        WsClient("127.0.0.1", sc.port)
    assert rejected.value.status == 404


# ---- a tailnet identity on a token-mode gateway ---------------------------------------------------------


def test_a_trusted_proxy_identity_gets_a_capped_session_without_the_token(token_gateway, module_sidecar, testnet: TestNet):
    """Identity in, token never out: the tailnet user never holds the gateway's shared token."""
    config = sidecar_config(token_gateway, listen=f"{testnet.HOST_IP}:0", upstreamAuth={"token": TOKEN},
                            scopeCeilings={"identities": {"reader": ["operator.read"]}})
    config["gateway"] = {"trustedProxies": [INGRESS],
                         "auth": {"mode": "trusted-proxy", "token": None, "trustedProxy": {"userHeader": "x-forwarded-user"}}}
    sc = module_sidecar(config)
    sock = testnet.socket_from(INGRESS)
    sock.settimeout(15)
    sock.connect((sc.host, sc.port))
    ws, hello = session(sc.port, ALL, token=None, sock=sock,
                        headers=[("X-Forwarded-For", TAILNET_CLIENT), ("x-forwarded-user", "reader")])
    assert granted(hello) == ["operator.read"]
    assert ws.call("sessions.list")["ok"] is True
    assert ws.call("tools.invoke", {"name": "sessions_list"})["error"]["details"]["missingScope"] == "operator.write"
    ws.close()


# ---- frames as the gateway accepts them ------------------------------------------------------------------


def test_a_refused_binary_request_is_answered_in_text_as_the_gateway_answers(token_gateway, open_sc):
    """The gateway answers a binary JSON request with a text frame; so must the sidecar's refusal
    (a browser would otherwise get a Blob)."""
    answers = []
    for port, method in ((token_gateway.port, "no.such.method"), (open_sc.port, "terminal.open")):
        ws, hello = session(port, ALL)
        assert hello["ok"] is True
        ws.send_json({"type": "req", "id": "b1", "method": method, "params": {}}, binary=True)
        reply = ws.recv()
        while json.loads(reply).get("type") != "res":  # events the gateway pushes meanwhile
            reply = ws.recv()
        answers.append(reply)
        ws.close()
    assert all(isinstance(reply, str) for reply in answers), answers
    assert json.loads(answers[1])["error"]["message"] == "method not allowed through this proxy: terminal.open"


def test_binary_and_fragmented_connect_frames_are_judged_too(open_sc):
    """The gateway accepts a binary JSON connect and reassembles fragments: so does the judge."""
    frame = {"type": "req", "id": "c1", "method": "connect", "params": connect_params(["operator.read"], token="wrong")}
    ws = WsClient("127.0.0.1", open_sc.port)
    ws.recv()
    ws.send_json(frame, binary=True)
    assert ws.response("c1")["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH"
    assert_closed_after(ws, 1008)
    ws = WsClient("127.0.0.1", open_sc.port)
    ws.recv()
    text = json.dumps({**frame, "params": connect_params(["operator.read"])})
    ws.send_fragments([text[:10], text[10:40], text[40:]])
    assert granted(ws.response("c1")) == ["operator.read"]
    ws.close()


def test_a_silent_client_is_closed_at_the_connect_deadline(token_gateway, start_sidecar):
    sc = start_sidecar(sidecar_config(token_gateway, websocket={"connectSeconds": 1}))
    ws = WsClient("127.0.0.1", sc.port)
    assert ws.recv_json()["event"] == "connect.challenge"
    with pytest.raises(Closed) as closed:
        ws.recv()
    assert (closed.value.code, closed.value.reason) == (1008, "connect timeout")


def test_under_a_full_cap_the_socket_nearest_its_connect_deadline_makes_room(token_gateway, start_sidecar):
    """Sockets still waiting for their connect hold nothing admitted: the oldest is closed as its
    deadline would close it, the newcomer is served, and a younger one still connects."""
    sc = start_sidecar(sidecar_config(token_gateway, maxConnections=3))
    waiting = [WsClient("127.0.0.1", sc.port) for _ in range(3)]
    for ws in waiting:
        assert ws.recv_json()["event"] == "connect.challenge"
    assert httpx.get(f"{sc.url}/healthz", timeout=10).status_code == 200
    with pytest.raises(Closed) as closed:
        waiting[0].recv()
    assert (closed.value.code, closed.value.reason) == (1008, "connect timeout")
    waiting[1].send_json({"type": "req", "id": "c1", "method": "connect", "params": connect_params(["operator.read"])})
    assert granted(waiting[1].response("c1")) == ["operator.read"]
    for ws in waiting[1:]:
        ws.close()


@pytest.mark.parametrize("first", [
    {"type": "req", "id": "h", "method": "health", "params": {}},  # answered, then closed
    {"type": "req", "method": "health", "params": {}},  # no id: not a request frame to the gateway
    {"type": "event", "event": "tick"},
    {"type": "req", "id": "c", "method": "connect", "params": {}, "extra": 1},  # the gateway's schema is closed
    {"type": "req", "id": "c", "method": ""},
    {"type": "req", "id": "c", "method": "connect", "params": []},  # answered: params must be an object
], ids=["request", "no-id", "event", "extra-key", "empty-method", "params-list"])
def test_a_first_frame_that_is_not_connect_is_answered_and_closed_as_the_gateway_does(token_gateway, open_sc, first):
    seen = []
    for port in (token_gateway.port, open_sc.port):
        ws = WsClient("127.0.0.1", port)
        ws.recv()
        ws.send_json(first)
        frames = []
        with pytest.raises(Closed) as closed:
            while True:
                frames.append(ws.recv())
        ws.close()  # not left to the collector: the sidecar counts the socket until it is gone
        seen.append((frames, closed.value.code, closed.value.reason))
    assert seen[1] == seen[0] and seen[0][1] == 1008, seen


@pytest.mark.parametrize("overrides", [
    {"role": 1}, {"role": None}, {"role": ""}, {"role": "admin"}, {"role": " node"},
    {"role": "Node", "minProtocol": 9, "maxProtocol": 9},  # the protocol before the role
    {"minProtocol": 1, "maxProtocol": 2}, {"minProtocol": 9.0, "maxProtocol": 9.0},
    {"minProtocol": 3, "maxProtocol": 3},  # a probe's or a starting node's, not a backend's
], ids=["role-number", "role-null", "role-empty", "role-unknown", "role-padded", "protocol-then-role", "protocol-old",
        "protocol-float", "protocol-3"])
def test_a_connect_with_a_bad_role_or_protocol_is_refused_as_the_gateway_refuses_it(token_gateway, open_sc, overrides):
    seen = []
    for port in (token_gateway.port, open_sc.port):
        ws = WsClient("127.0.0.1", port)
        ws.recv()
        ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": {**connect_params(["operator.read"]), **overrides}})
        frames = []
        with pytest.raises(Closed) as closed:
            while True:
                frames.append(ws.recv())
        ws.close()  # not left to the collector: the sidecar counts the socket until it is gone
        seen.append((frames, closed.value.code, closed.value.reason))
    assert seen[1] == seen[0] and len(seen[0][0]) == 1, seen


LATER_FRAMES = [json.dumps(frame) for frame in (
    {"type": "event", "event": "tick"},
    {"type": "res", "id": "x", "ok": True},
    [1, 2],
    "hello",
    {"type": "req", "method": "health", "params": {}},  # no id
    {"type": "req", "id": "x", "method": "health", "params": {}, "extra": 1},
    {"type": "req", "id": "x", "method": ""},
    {"type": "req", "id": 7, "method": "health", **dict.fromkeys("abcdefghi", 1)},  # past the eighth error
    {"type": "req", "id": "x", "method": "health", "traceparent": "e\u0301" * 100},  # 200 code points, 100 characters
    {"type": "req", "id": "c2", "method": "connect", "params": connect_params(["operator.read"])},
)] + ["{not json", "\ufeff{}"]


def test_later_frames_that_are_no_requests_get_the_gateways_answers_and_the_connection_stays(token_gateway, open_sc):
    """Once connected, the gateway answers a frame its request schema refuses (INVALID_REQUEST, in
    its own words), ignores one it cannot parse, answers a second connect after its scope check,
    and keeps the connection: so does the sidecar, frame for frame."""
    seen = []
    for port in (token_gateway.port, open_sc.port):
        ws, hello = session(port, ["operator.read"])
        assert hello["ok"] is True
        answers = []
        for index, text in enumerate(LATER_FRAMES):
            ws.send_text(text)
            ws.send_json({"type": "req", "id": f"after-{index}", "method": "health", "params": {}})
            while True:
                frame = ws.recv_json()
                if frame.get("type") != "res":
                    continue  # events
                if frame["id"] == f"after-{index}":
                    break
                answers.append((index, frame["id"], frame["ok"], frame.get("error")))
        ws.close()
        seen.append(answers)
    assert seen[1] == seen[0]
    assert sum(error is not None and error["code"] == "INVALID_REQUEST" for *_, error in seen[0]) == 8, seen[0]


# ---- drain ----------------------------------------------------------------------------------------


def test_sigterm_closes_open_rpc_sessions_with_going_away_and_exits_zero(token_gateway, start_sidecar):
    sc = start_sidecar(sidecar_config(token_gateway, drainSeconds=10))
    ws, hello = session(sc.port, ["operator.read"])
    assert granted(hello) == ["operator.read"]
    sc.proc.send_signal(signal.SIGTERM)
    while True:  # gateway events (ticks, presence) may come first
        try:
            ws.recv()
        except Closed as closed:
            assert closed.code == 1001
            break
    assert sc.proc.wait(10) == 0
    assert "Traceback" not in sc.logs()


def test_a_reload_closes_open_rpc_sessions_as_the_gateway_closes_its_own_when_its_secret_changes(token_gateway, start_sidecar):
    """A session admitted with a secret since revoked (or under a ceiling since lowered) kept
    running tools under the old rules (red team); the gateway answers its own secret change with
    4001, and the new rules hold from the reconnect on."""
    config = sidecar_config(token_gateway, auth={"previousTokens": ["retired-token"]})
    sc = start_sidecar(config)
    ws, hello = session(sc.port, ["operator.read"], token="retired-token")
    assert granted(hello) == ["operator.read"]
    del config["sidecar"]["auth"]
    sc.config_path.write_text(json.dumps(config))
    while True:  # gateway events (ticks, presence) may come first
        try:
            ws.recv()
        except Closed as closed:
            assert (closed.code, closed.reason) == (4001, "gateway auth changed")
            break
    ws, hello = session(sc.port, ["operator.read"], token="retired-token")
    assert hello["ok"] is False and hello["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH", hello
    assert granted(session(sc.port, ["operator.read"])[1]) == ["operator.read"]


def test_an_unauthenticated_message_is_cut_off_while_it_grows(open_sc):
    """Before connect the gateway takes 64 KiB a message: a stranger's endless fragmented (or
    compressed) message is closed with 1009 as it passes that, never buffered whole."""
    ws = WsClient("127.0.0.1", open_sc.port)
    ws.recv()
    for _ in range(10):  # 80 KiB of one unfinished message
        ws.sock.sendall(ws.ws.send(TextMessage("x" * 8192, message_finished=False)))
    with pytest.raises(Closed) as closed:
        ws.recv()
    assert closed.value.code == 1009


def test_after_connect_a_large_message_still_passes(open_sc):
    ws, hello = session(open_sc.port, ["operator.read"])
    assert granted(hello) == ["operator.read"]
    padded = {"type": "req", "id": "h1", "method": "health", "params": {"padding": "x" * 200_000}}
    ws.send_json(padded)
    answer = ws.response("h1")
    assert "ok" in answer  # the gateway's own answer (it validates params itself), not a close
    ws.close()
