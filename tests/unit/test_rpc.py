"""The WebSocket RPC judge (sidecar/rpc.py): connect checks and per-frame method decisions."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sidecar.auth import AuthOutcome, SharedSecretAuth
from sidecar.pacing import RefusalBudget
from sidecar.rpc import (
    SCANNED_FRAME_BYTES,
    BrowserOrigin,
    client_message_limit,
    connect_secret,
    GATEWAY_MAX_MESSAGE_BYTES, GATEWAY_VERSION, PREAUTH_MAX_BYTES, RPC_MAX_MESSAGE_BYTES, RpcPolicy, RpcSession,
    connect_auth_refusal, connect_param_errors, default_denied, dynamic_scopes, first_missing_scope, method_catalogue,
    protocol_mismatch, rpc_on_plugin_socket,
    scope_satisfied,
)
from sidecar.scopes import DEFAULT_SCOPES, KNOWN_SCOPES, ResolvedScopes
from sidecar.config import OpenClawRules, load_config
from sidecar.toolchain import ToolChain
from tests.builders import nested_beyond_python, write_config
from tests.gateway.oracle import call_gateway, needs_gateway

SECRET = "frame-secret"
UPSTREAM = {"token": "upstream-credential"}


def policy(**overrides: Any) -> RpcPolicy:
    values: dict[str, Any] = dict(tools=ToolChain(OpenClawRules()), allow_methods=frozenset(), allow_nodes=False,
                                  upstream_auth=UPSTREAM)
    values.update(overrides)
    return RpcPolicy(**values)


class Recorder:
    def __init__(self, limited: str | None = None) -> None:
        self.secrets: list[str | None] = []
        self.signed: list[str] = []  # credentials devices signed, as judged
        self.limits: list[tuple[str | None, str]] = []
        self.limited = limited

    async def check_secret(self, auth: Mapping[str, Any]) -> AuthOutcome:
        presented = connect_secret("token", auth)
        self.secrets.append(presented)
        return SharedSecretAuth("token", SECRET).check(presented)

    async def limit(self, user: str | None, tool: str) -> str | None:
        self.limits.append((user, tool))
        return self.limited

    async def judge_signed(self, signed: str, is_upstream: bool) -> AuthOutcome:
        """The pipeline's rule: the upstream credential passes, the sidecar's own secret is no
        guess, anything else is a wrong secret (counted by the pipeline's limiter)."""
        self.signed.append(signed)
        if is_upstream or signed == SECRET:
            return AuthOutcome(True, "token", shared_secret=True)
        return AuthOutcome(False, "token", "token_mismatch", presented=True, shared_secret=True)


def session(caller: AuthOutcome | None = None, scopes: tuple[str, ...] = DEFAULT_SCOPES, recorder: Recorder | None = None,
            browser: BrowserOrigin | None = None, **policy_overrides: Any) -> tuple[RpcSession, Recorder]:
    recorder = recorder or Recorder()
    return RpcSession(policy(**policy_overrides), caller, ResolvedScopes(scopes), recorder.check_secret, recorder.limit,
                      recorder.judge_signed, browser=browser), recorder


def connect_frame(*, auth: dict | None = None, scopes: list[str] | None = None, role: str = "operator",
                  mode: str = "cli", **params: Any) -> bytes:
    body = {"minProtocol": 4, "maxProtocol": 4, "client": {"id": "cli", "version": "1", "platform": "linux", "mode": mode},
            "role": role, "scopes": ["operator.read"] if scopes is None else scopes,
            "auth": {"token": SECRET} if auth is None else auth, **params}
    return json.dumps({"type": "req", "id": "c1", "method": "connect", "params": body}).encode()


def req(method: str, params: Any = None, request_id: str = "r1") -> bytes:
    return json.dumps({"type": "req", "id": request_id, "method": method, "params": params or {}}).encode()


async def connected(scopes: list[str] | None = None, caps: list[str] | None = None, **kwargs: Any) -> RpcSession:
    rpc, _ = session(**kwargs)
    verdict = await rpc.client_frame(connect_frame(scopes=scopes or list(DEFAULT_SCOPES), **({"caps": caps} if caps else {})))
    assert verdict.verdict == "forward", verdict
    return rpc


def answer(verdict: Any) -> dict[str, Any]:
    assert verdict.payload is not None
    return json.loads(verdict.payload)


# ---- the catalogue --------------------------------------------------------------------------------


def test_catalogue_is_the_pinned_gateways() -> None:
    catalogue = method_catalogue()
    assert GATEWAY_VERSION == "2026.9.6" and len(catalogue) >= 482
    assert catalogue["health"].scope == "operator.read"
    assert catalogue["terminal.open"].scope == "operator.admin" and "X" in catalogue["terminal.open"].markers
    assert catalogue["tools.invoke"].scope == "operator.write"
    assert catalogue["agent"].scope == "dynamic" and catalogue["node.event"].scope == "node"


def test_default_deny_list_holds_what_runs_writes_configures_pairs_or_restarts() -> None:
    denied = default_denied()
    for method in ("terminal.open", "terminal.input", "config.patch", "config.apply", "exec.approvals.set", "chat.send",
                   "agent", "device.pair.approve", "device.token.rotate", "gateway.restart.request", "update.run",
                   "agents.files.set", "secrets.store.set", "cron.add", "node.invoke", "browser.request",
                   # write-scoped, found by review: start or steer a turn, feed the model, change who
                   # sees a session, write secrets with caller-chosen hosts, publish a workspace
                   "sessions.goal.update", "progressCard.refresh", "board.event", "session.suggestions.resolve",
                   "mcp.app.updateModelContext", "sessions.move", "session.visibility.set", "session.members.add",
                   "session.members.remove", "question.resolve", "tts.enable", "tts.setPersona", "sessions.github.publish"):
        assert method in denied, method
    for method in ("tools.invoke", "health", "sessions.list", "chat.history", "config.get", "models.list"):
        assert method not in denied, method


@pytest.mark.parametrize("required, granted, ok", [
    ("operator.read", {"operator.read"}, True), ("operator.read", {"operator.write"}, True),
    ("operator.read", {"operator.admin"}, True), ("operator.write", {"operator.read"}, False),
    ("operator.admin", {"operator.write", "operator.read"}, False), ("operator.talk", {"operator.write"}, True),
    ("operator.sessions.read", {"operator.read"}, True), ("operator.pairing", {"operator.write"}, False),
    ("operator.approvals", {"operator.admin"}, True), ("node", {"operator.admin"}, False),
])
def test_scope_satisfied_as_the_gateway(required: str, granted: set[str], ok: bool) -> None:
    assert scope_satisfied(required, frozenset(granted)) is ok


@needs_gateway
def test_scope_satisfied_is_the_gateways_for_every_scope_and_every_grant_of_up_to_three() -> None:
    """operatorScopeSatisfied itself: every known scope (and two that are not) against every grant
    of up to three known scopes. An implication too many lifts a ceiling (mutation testing: read
    satisfying sessions.write, write satisfying approvals, survived the table above)."""
    required = [*KNOWN_SCOPES, "node", "operator.unknown"]
    grants = [sorted(g) for n in range(4) for g in itertools.combinations(KNOWN_SCOPES, n)]
    cases = [(r, g) for r in required for g in grants]
    theirs = call_gateway(["operator-scope-compat:operatorScopeSatisfied"], """
        answer(input.map(([required, granted]) => gateway.operatorScopeSatisfied(required, granted)));""", cases)
    differ = [(r, g, t) for (r, g), t in zip(cases, theirs, strict=True) if scope_satisfied(r, frozenset(g)) is not t]
    assert differ == [], differ[:5]
    assert 0 < sum(theirs) < len(cases)


@pytest.mark.parametrize("method, params, scopes", [
    ("agent", {"message": "hi"}, ("operator.write",)), ("agent", {"message": "/reset now"}, ("operator.admin",)),
    ("talk.config", {}, ("operator.read",)), ("talk.config", {"includeSecrets": True}, ("operator.read", "operator.talk.secrets")),
    ("environments.list", {"runtimeId": "x"}, ("operator.write",)), ("fs.listDir", {"nodeId": "n"}, ("operator.admin",)),
    ("sessions.delete", {"key": "k", "archivedOnly": True}, ("operator.write",)), ("sessions.delete", {"key": "k"}, ("operator.admin",)),
    ("node.invoke", {"command": "system.run"}, ("operator.admin",)), ("channels.pairing.approve", None, ("operator.pairing",)),
])
def test_params_decide_dynamic_scopes(method: str, params: Any, scopes: tuple[str, ...]) -> None:
    assert dynamic_scopes(method, params) == scopes


DYNAMIC_PARAMS: list[Any] = [
    None, [], "x", {}, {"key": "k"}, {"message": "hi"}, {"message": "/new"}, {"includeSecrets": True}, {"includeSecrets": "true"},
    {"runtimeId": "r"}, {"runtimeId": ""}, {"runtimeId": 1}, {"bootstrapCommandOwner": True}, {"bootstrapCommandOwner": "true"},
    {"code": "c", "bootstrapCommandOwner": False}, {"nodeId": "n"}, {"nodeId": None}, {"path": "/"},
    {"key": "k", "archivedOnly": True}, {"key": "k", "archivedOnly": True, "deleteTranscript": True, "agentId": "a",
                                         "expectedSessionId": "s"},
    {"key": "k", "archivedOnly": True, "label": "x"}, {"key": "k", "archivedOnly": "true"}, {"archivedOnly": True},
    {"command": "system.run"}, {"command": "canvas.snapshot"}, {"key": "k", "model": "m"}, {"target": {"kind": "profile"}},
]
GRANTS = [frozenset(g) for n in range(3) for g in itertools.combinations(KNOWN_SCOPES, n)]
# The dynamic methods whose params the sidecar reads as the gateway does (the rest ask admin).
MIRRORED_DYNAMIC = frozenset({"agent", "talk.config", "environments.list", "channels.pairing.approve", "fs.listDir", "sessions.delete"})


@needs_gateway
def test_a_dynamic_methods_scopes_are_never_looser_than_the_gateways() -> None:
    """resolveLeastPrivilegeOperatorScopesForMethod for every dynamic method and a spread of
    params: whatever grant satisfies the sidecar's scopes satisfies the gateway's, and where the
    sidecar reads the params itself it asks exactly what the gateway asks (mutation testing:
    `bootstrapCommandOwner` and `sessions.delete`'s extra fields went unread, untested)."""
    methods = sorted(name for name, spec in method_catalogue().items() if spec.scope == "dynamic")
    cases = [(method, params) for method in methods for params in DYNAMIC_PARAMS]
    theirs = call_gateway(["method-scopes:resolveLeastPrivilegeOperatorScopesForMethod"], """
        answer(input.map(([method, params]) => gateway.resolveLeastPrivilegeOperatorScopesForMethod(method, params ?? undefined)));""",
                          cases)
    looser = [(case, mine, t, sorted(grant)) for case, t in zip(cases, theirs, strict=True)
              for mine in [dynamic_scopes(*case)] for grant in GRANTS
              if all(scope_satisfied(r, grant) for r in mine) and not all(scope_satisfied(r, grant) for r in t)]
    assert looser == [], looser[:5]
    differ = [(case, dynamic_scopes(*case), t) for case, t in zip(cases, theirs, strict=True)
              if case[0] in MIRRORED_DYNAMIC and list(dynamic_scopes(*case)) != t]
    assert differ == [], differ[:5]
    assert {tuple(t) for t in theirs} >= {("operator.write",), ("operator.admin",), ("operator.pairing", "operator.admin")}


@needs_gateway
def test_a_methods_missing_scope_is_never_looser_than_the_gateways_authorization() -> None:
    """authorizeOperatorScopesForMethod for every operator method of the gateway's core table (the
    dynamic ones with each params shape) and every grant of up to two scopes: what the sidecar
    passes the gateway passes, and where both refuse they name the same missing scope (mutation
    testing: only the first of two required scopes checked, which gave `talk.config`'s secrets to a
    read-only caller, survived). Plugin methods, scoped by their registration, and `health`,
    which authorizeGatewayMethod lets through before it, are not the core function's to judge."""
    catalogue = method_catalogue()
    cases = [(method, params) for method, spec in sorted(catalogue.items()) if spec.scope != "node" and method != "health"
             for params in (DYNAMIC_PARAMS if spec.scope == "dynamic" else [{}])]
    grants = [sorted(grant) for grant in GRANTS]
    theirs = call_gateway(["method-scopes:authorizeOperatorScopesForMethod", "method-scopes:resolveLeastPrivilegeOperatorScopesForMethod"], """
        const [cases, grants] = input;
        answer(cases.map(([method, params]) => gateway.resolveLeastPrivilegeOperatorScopesForMethod(method, params ?? undefined).length === 0
          ? null : grants.map((grant) => {
            const verdict = gateway.authorizeOperatorScopesForMethod(method, grant, params ?? undefined);
            return verdict.allowed ? null : verdict.missingScope; })));""", [cases, grants])
    judged = [(case, answers) for case, answers in zip(cases, theirs, strict=True) if answers is not None]
    # Exact where the sidecar reads the gateway's rule; its other dynamic methods ask admin outright.
    exact = {method for method, spec in catalogue.items() if spec.scope != "dynamic"} | MIRRORED_DYNAMIC
    looser, differ = [], []
    for (method, params), answers in judged:
        for grant, their_missing in zip(grants, answers, strict=True):
            mine = first_missing_scope(method, catalogue[method], params, frozenset(grant))
            if mine is None and their_missing is not None:
                looser.append((method, params, grant, their_missing))
            elif mine is not None and their_missing is not None and mine != their_missing and method in exact:
                differ.append((method, params, grant, mine, their_missing))
    assert looser == [], looser[:5]
    assert differ == [], differ[:5]
    assert len({method for (method, _), _ in judged}) > 300
    assert 1000 < sum(a is None for _, answers in judged for a in answers) < len(judged) * len(grants) - 1000


@needs_gateway
def test_a_sessions_delete_field_outside_the_gateways_write_set_needs_admin() -> None:
    """Each field of the gateway's SessionsDeleteParamsSchema beside `archivedOnly: true`: the
    sidecar asks exactly the scopes the gateway's resolver asks (mutation testing: a field the
    gateway reserves for admin, such as `emitLifecycleHooks`, taken into the write set survived)."""
    theirs = call_gateway(["SessionsDeleteParamsSchema", "method-scopes:resolveLeastPrivilegeOperatorScopesForMethod"], """
        const fields = Object.keys(gateway.SessionsDeleteParamsSchema.properties);
        answer(fields.map((field) => {
          const params = { key: "k", archivedOnly: true, [field]: field === "archivedOnly" ? true : "x" };
          return [params, gateway.resolveLeastPrivilegeOperatorScopesForMethod("sessions.delete", params)]; }));""", None)
    differ = [(params, t) for params, t in theirs if list(dynamic_scopes("sessions.delete", params)) != t]
    assert differ == [], differ
    assert {tuple(t) for _, t in theirs} == {("operator.write",), ("operator.admin",)}


RESET_MESSAGES = [head + gap + tail for head in ("/new", "/reset", "/NEW", "/Reſet", "/neW", "x/new", " /new")
                  for gap in ("", " ", "\t", "\ufeff", "\u00a0", "\u2028", "\x1c", "\x85", "\u200b", "\n")
                  for tail in ("", "hi", "hi\n", "\n")]


@needs_gateway
def test_an_agent_reset_needs_admin_exactly_where_the_gateway_says() -> None:
    """The gateway's AGENT_SESSION_RESET_COMMAND_RE: JavaScript's \\s, ASCII-only case folding."""
    theirs = call_gateway(["method-scopes:AGENT_SESSION_RESET_COMMAND_RE"], """
        answer(input.map((message) => gateway.AGENT_SESSION_RESET_COMMAND_RE.test(message)));""", RESET_MESSAGES)
    mine = [dynamic_scopes("agent", {"message": message}) == ("operator.admin",) for message in RESET_MESSAGES]
    differ = [(message, m, t) for message, m, t in zip(RESET_MESSAGES, mine, theirs, strict=True) if m != t]
    assert differ == [], differ
    assert 40 < sum(theirs) < len(theirs)


# ---- connect --------------------------------------------------------------------------------------


async def test_connect_with_the_secret_in_the_frame_is_rewritten_for_the_gateway() -> None:
    rpc, recorder = session(scopes=("operator.read", "operator.write"))
    frame = connect_frame(scopes=["operator.admin", "operator.read", "operator.write", "operator.read"], role="operator",
                          auth={"token": SECRET, "deviceToken": "dt"})
    verdict = await rpc.client_frame(frame)
    assert (verdict.verdict, verdict.reason) == ("forward", "connect")
    params = answer(verdict)["params"]
    assert params["auth"] == UPSTREAM  # the caller's secret and device token never reach the gateway
    assert params["scopes"] == ["operator.read", "operator.write"]  # cut to the ceiling, in order
    assert params["role"] == "operator" and params["client"]["id"] == "cli"
    assert recorder.secrets == [SECRET] and rpc.connected and rpc.scopes == frozenset({"operator.read", "operator.write"})


async def test_connect_keeps_the_scopes_the_ceiling_implies() -> None:
    """The ceiling is cut as the gateway's operatorScopeSatisfied reads it: write brings read, talk
    and the session scopes, never pairing (mutation testing: a cut to the literal names, which
    took read from a write caller, survived)."""
    rpc, _ = session(scopes=("operator.write",))
    asked = ["operator.read", "operator.talk", "operator.sessions.read", "operator.sessions.write", "operator.pairing",
             "operator.talk.secrets", "operator.write"]
    params = answer(await rpc.client_frame(connect_frame(scopes=asked)))["params"]
    assert params["scopes"] == ["operator.read", "operator.talk", "operator.sessions.read", "operator.sessions.write", "operator.write"]


@pytest.mark.parametrize("auth, code", [({"token": "wrong"}, "AUTH_TOKEN_MISMATCH"), ({}, "DEVICE_IDENTITY_REQUIRED"),
                                        ({"deviceToken": "dt"}, "DEVICE_IDENTITY_REQUIRED")])
async def test_connect_without_the_secret_is_refused_and_closed(auth: dict, code: str) -> None:
    rpc, recorder = session()
    verdict = await rpc.client_frame(connect_frame(auth=auth))
    assert (verdict.verdict, verdict.close_code) == ("close", 1008)
    error = answer(verdict)["error"]
    assert error["details"]["code"] == code
    assert answer(verdict)["id"] == "c1" and not rpc.connected


@pytest.mark.parametrize("outcome, message, details, extra", [
    (AuthOutcome(False, "password", "password_mismatch"), "unauthorized: gateway password mismatch (provide gateway auth password)",
     {"code": "AUTH_PASSWORD_MISMATCH", "authReason": "password_mismatch", "recommendedNextStep": "update_auth_credentials"}, {}),
    (AuthOutcome(False, "password", "credential_missing"), "unauthorized: gateway password missing (provide gateway auth password)",
     {"code": "AUTH_PASSWORD_MISSING", "authReason": "password_missing", "recommendedNextStep": "update_auth_configuration"}, {}),
    (AuthOutcome(False, "token", "token_not_configured"),
     "unauthorized: gateway token not configured on gateway (set gateway.auth.token)",
     {"code": "AUTH_TOKEN_NOT_CONFIGURED", "authReason": "token_missing_config", "recommendedNextStep": "update_auth_configuration"}, {}),
    (AuthOutcome(False, "token", "rate_limited", retry_after_s=299), "unauthorized: too many failed authentication attempts (retry later)",
     {"code": "AUTH_RATE_LIMITED", "authReason": "rate_limited", "recommendedNextStep": "wait_then_retry"},
     {"retryable": True, "retryAfterMs": 299_000}),
])
def test_a_refused_connect_credential_is_answered_as_the_gateway_answers_it(outcome, message, details, extra) -> None:
    """formatGatewayAuthFailureMessage, resolveAuthConnectErrorDetailCode and the handshake's next
    step: the gateway's own clients decide what to tell the user (wait, re-enter) from these."""
    error = json.loads(connect_auth_refusal("c1", outcome, {"id": "gateway-client", "mode": "backend"}, device=True)[0])["error"]
    assert error == {"code": "INVALID_REQUEST", "message": message, **extra,
                     "details": {**details, "canRetryWithDeviceToken": False}}


async def test_connect_authenticated_at_the_upgrade_needs_no_secret_in_the_frame() -> None:
    caller = AuthOutcome(True, "trusted-proxy", user="alice")
    rpc, recorder = session(caller=caller, scopes=("operator.read",))
    verdict = await rpc.client_frame(connect_frame(auth={}, scopes=["operator.admin", "operator.read"]))
    assert verdict.verdict == "forward" and recorder.secrets == []
    assert answer(verdict)["params"]["scopes"] == ["operator.read"]
    assert answer(verdict)["params"]["auth"] == UPSTREAM


async def test_without_an_upstream_credential_the_frame_carries_none() -> None:
    rpc, _ = session(caller=AuthOutcome(True, "trusted-proxy", user="alice"), upstream_auth=None)
    params = answer(await rpc.client_frame(connect_frame(auth={"token": "x"})))["params"]
    assert "auth" not in params


@pytest.mark.parametrize("role, mode", [("node", "node"), ("operator", "node")])
async def test_node_roles_are_refused(role: str, mode: str) -> None:
    rpc, _ = session()
    verdict = await rpc.client_frame(connect_frame(role=role, mode=mode))
    assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "node_role", 1008)


@pytest.mark.parametrize("allow_nodes", [False, True])
async def test_a_role_the_gateway_does_not_know_gets_its_answer(allow_nodes: bool) -> None:
    rpc, _ = session(allow_nodes=allow_nodes)
    verdict = await rpc.client_frame(connect_frame(role="admin"))
    assert (verdict.verdict, verdict.reason, verdict.close_code, verdict.close_reason) == ("close", "node_role", 1008, "invalid role")
    assert answer(verdict)["error"] == {"code": "INVALID_REQUEST", "message": "invalid role"}


async def test_a_role_the_gateway_does_not_know_with_a_protocol_it_does_not_speak_gets_the_protocol_answer() -> None:
    """admitGatewayConnect reads the protocol range before the role: its mismatch, closed 1002
    (mutation testing: the range left unread beside an unknown role survived)."""
    rpc, _ = session()
    verdict = await rpc.client_frame(connect_frame(role="admin", minProtocol=5, maxProtocol=6))
    assert (verdict.verdict, verdict.close_code, verdict.close_reason) == ("close", 1002, "protocol mismatch")
    assert answer(verdict)["error"] == {"code": "INVALID_REQUEST", "message": "protocol mismatch", "details": {
        "code": "PROTOCOL_MISMATCH", "clientMinProtocol": 5, "clientMaxProtocol": 6, "expectedProtocol": 4, "minimumProbeProtocol": 3}}


NODE_DEVICE = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}


async def node_session(scopes: tuple[str, ...] = DEFAULT_SCOPES, **policy_overrides: Any) -> tuple[RpcSession, Any]:
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=scopes, allow_nodes=True, **policy_overrides)
    return rpc, await rpc.client_frame(connect_frame(role="node", mode="node", scopes=[], device=NODE_DEVICE, auth=dict(UPSTREAM)))


async def test_an_allowed_node_passes_as_it_signed_itself() -> None:
    """Its device signs role, scopes and credential: a node rewritten to an operator no longer
    verifies (every node connect failed so with allowNodes on)."""
    rpc, verdict = await node_session()
    assert (verdict.verdict, verdict.detail) == ("forward", "role node")
    params = answer(verdict)["params"]
    assert (params["role"], params["scopes"], params["auth"], params["device"]) == ("node", [], UPSTREAM, NODE_DEVICE)


async def test_with_nodes_allowed_an_operator_from_a_node_client_stays_an_operator() -> None:
    rpc, _ = session(allow_nodes=True)
    params = answer(await rpc.client_frame(connect_frame(mode="node")))["params"]
    assert params["role"] == "operator"
    assert (await rpc.client_frame(req("node.event"))).reason == "node_method"


async def test_only_an_owner_may_connect_as_a_node() -> None:
    """Node methods pass no scope check at the gateway, and node.event runs agent turns."""
    rpc, verdict = await node_session(scopes=("operator.read", "operator.write", "operator.pairing"))
    message = "node connections need operator.admin in the caller's ceiling"
    assert (verdict.verdict, verdict.reason, verdict.close_code, verdict.close_reason) == ("close", "node_role", 1008, message)
    assert answer(verdict)["error"]["message"] == message


@pytest.mark.parametrize("low, high, probe, refused", [
    (4, 4, False, False), (1, 9, False, False), (3, 3, False, True), (5, 9, False, True),
    (3, 3, True, False), (2, 3, True, False), (1, 2, True, True), (3.0, 3.0, True, False), (9.0, 9.0, False, True),
    (4, 9, True, False), (5, 9, True, True),  # a probe too speaks nothing past the gateway's own (minProtocol <= 4)
    ("4", 4, False, False), (True, 4, False, False), (0, 0, False, False),  # left to the gateway's schema
])
def test_the_protocol_range_is_read_as_the_gateway_admits_it(low: Any, high: Any, probe: bool, refused: bool) -> None:
    """Its own protocol for anyone, the previous one for a probe (asked only beside a role the gateway
    does not know, so never for a node)."""
    details = protocol_mismatch({"minProtocol": low, "maxProtocol": high}, probe)
    assert (details is not None) is refused
    if details is not None:
        assert details == {"code": "PROTOCOL_MISMATCH", "clientMinProtocol": int(low), "clientMaxProtocol": int(high),
                           "expectedProtocol": 4, "minimumProbeProtocol": 3}
        assert json.dumps(details["clientMinProtocol"]) == str(int(low))  # 9, as JavaScript prints 9.0


@pytest.mark.parametrize("method", ["health", "node.event", "node.invoke.result", "node.pending.drain", "skills.bins",
                                    "node.runnerInventory.update"])
async def test_a_node_runs_its_own_methods_past_the_deny_list(method: str) -> None:
    rpc, _ = await node_session()
    verdict = await rpc.client_frame(req(method, {"event": "agent.request"}))
    assert (verdict.verdict, verdict.payload, verdict.method) == ("forward", None, method)


@pytest.mark.parametrize("method", ["chat.history", "config.get", "tools.invoke", "no.such.method", "connect", "node.invoke"])
async def test_a_node_calling_anything_else_gets_the_gateways_role_refusal(method: str) -> None:
    rpc, _ = await node_session()
    verdict = await rpc.client_frame(req(method, {"name": "exec", "args": {}}, request_id="n1"))
    assert verdict.verdict == "reply"
    assert verdict.reason == ("connect_repeated" if method == "connect" else "operator_method")
    frame = answer(verdict)
    assert (frame["id"], frame["ok"], frame["error"]) == ("n1", False, {"code": "INVALID_REQUEST", "message": "unauthorized role: node"})


async def test_a_device_cannot_pair_above_the_ceiling() -> None:
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=("operator.read",))
    device = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
    verdict = await rpc.client_frame(connect_frame(scopes=["operator.admin"], device=device, auth=dict(UPSTREAM)))
    assert (verdict.verdict, verdict.reason) == ("close", "device_above_ceiling")


async def test_a_device_within_the_ceiling_with_the_proxys_credential_passes_unchanged() -> None:
    """Its signature covers scopes and credential: nothing it signed is rewritten."""
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=("operator.read",))
    device = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
    verdict = await rpc.client_frame(connect_frame(scopes=["operator.read"], device=device, auth=dict(UPSTREAM)))
    assert verdict.verdict == "forward"
    params = answer(verdict)["params"]
    assert params["scopes"] == ["operator.read"] and params["auth"] == UPSTREAM and params["device"] == device


async def test_a_credential_with_a_lone_surrogate_is_a_wrong_credential() -> None:
    """As at the gateway (token_mismatch), not an internal error that closes 1011 uncounted."""
    rpc, recorder = session()
    verdict = await rpc.client_frame(connect_frame(auth={"token": "\ud800"}))
    assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "token_mismatch", 1008)
    assert recorder.secrets == ["\ud800"]


async def test_where_callers_hold_the_upstream_secret_a_signed_one_is_checked_as_their_secret() -> None:
    """Nothing else to guess at: a wrong one is counted as any wrong secret, by the usual rules."""
    rpc, recorder = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=("operator.read",),
                            upstream_auth={"token": SECRET}, callers_hold_upstream="token")
    device = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
    verdict = await rpc.client_frame(connect_frame(scopes=["operator.read"], device=device, auth={"token": "stale"}))
    assert (verdict.verdict, verdict.reason, recorder.secrets, recorder.signed) == ("close", "token_mismatch", ["stale"], [])


HELLO = {"type": "hello-ok", "server": {"version": "2026.9.6"}, "auth": {
    "method": "token", "role": "operator", "scopes": ["operator.read"], "recoveryScope": "hash",
    "recoveryMigrationAllowed": True, "deviceToken": "minted", "issuedAtMs": 1, "deviceTokens": [{"token": "more"}]}}


async def test_the_connects_answer_loses_the_device_token_the_gateway_minted() -> None:
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True))
    assert not rpc.answer_pending
    await rpc.client_frame(connect_frame(scopes=["operator.read"]))
    assert rpc.answer_pending
    assert rpc.server_message(b'{"type":"event","event":"tick","payload":{}}') is None  # relayed as it came
    assert rpc.server_message(b'{"type":"res","id":"other","ok":true}') is None and rpc.answer_pending
    rewritten = rpc.server_message(json.dumps({"type": "res", "id": "c1", "ok": True, "payload": HELLO}).encode())
    assert rewritten is not None and not rpc.answer_pending
    # ...and its recoveryScope, a hash of the upstream secret this caller never presented (red team)
    assert json.loads(rewritten) == {"type": "res", "id": "c1", "ok": True, "payload": {
        "type": "hello-ok", "server": {"version": "2026.9.6"}, "auth": {"method": "token", "role": "operator", "scopes": ["operator.read"]}}}


@pytest.mark.parametrize("auth, upstream, held", [
    ({"token": "gw-token-7f3a9c"}, None, "token"),
    ({"mode": "password", "password": "gw-password-7f3a9c"}, None, "password"),
    ({"token": "gw-token-7f3a9c"}, "another-upstream-7f3a9c", None),
    # a token its mode does not read is no caller's secret (mutation testing: survived)
    ({"mode": "password", "password": "gw-password-7f3a9c", "token": "gw-token-7f3a9c"}, "gw-token-7f3a9c", None),
])
def test_callers_hold_the_upstream_secret_only_through_the_secret_their_mode_reads(
        tmp_path: Path, auth: dict, upstream: str | None, held: str | None) -> None:
    sidecar: dict[str, Any] = {"upstream": "http://127.0.0.1:18789", **({"upstreamAuth": {"token": upstream}} if upstream else {})}
    config = load_config(write_config(tmp_path / "sidecar.yaml", {"sidecar": sidecar, "gateway": {"auth": auth}}), environ={})
    assert RpcPolicy.from_config(config, ToolChain(OpenClawRules())).callers_hold_upstream == held


async def test_only_a_caller_holding_the_upstream_secret_keeps_the_recovery_scope_derived_from_it() -> None:
    """Decided by the deployment (the callers' secret is the upstream one) and the caller's proof,
    never by what the frame carries: a frame naming the upstream secret beside another proof got
    the hash only when its guess was right (review)."""
    rpc, _ = session()
    await rpc.client_frame(connect_frame(scopes=["operator.read"], auth={"token": SECRET}))
    guessing, _ = session(caller=AuthOutcome(True, "token", shared_secret=True))
    await guessing.client_frame(connect_frame(scopes=["operator.read"], auth=dict(UPSTREAM)))
    previous, _ = session(caller=AuthOutcome(True, "token", shared_secret=True, previous_secret=True),
                          upstream_auth={"token": SECRET}, callers_hold_upstream="token")
    await previous.client_frame(connect_frame(scopes=["operator.read"]))
    own, _ = session(upstream_auth={"token": SECRET}, callers_hold_upstream="token")
    await own.client_frame(connect_frame(scopes=["operator.read"], auth={"token": SECRET}))
    # a secret of the other kind proves nothing of the upstream token (mutation testing: survived)
    other_kind, _ = session(caller=AuthOutcome(True, "password", shared_secret=True), upstream_auth={"token": SECRET},
                            callers_hold_upstream="token")
    await other_kind.client_frame(connect_frame(scopes=["operator.read"]))
    for caller, kept in ((rpc, {}), (guessing, {}), (previous, {}), (other_kind, {}), (own, {"recoveryScope": "hash"})):
        rewritten = caller.server_message(json.dumps({"type": "res", "id": "c1", "ok": True, "payload": HELLO}).encode())
        assert rewritten is not None
        assert json.loads(rewritten)["payload"]["auth"] == {"method": "token", "role": "operator", "scopes": ["operator.read"], **kept}


async def test_a_connect_answer_without_a_device_token_is_relayed_as_it_came() -> None:
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True))
    await rpc.client_frame(connect_frame(scopes=["operator.read"]))
    assert rpc.server_message(b'{"type":"res","id":"c1","ok":false,"error":{"code":"NOT_PAIRED"}}') is None
    assert not rpc.answer_pending


PASSWORD_UPSTREAM = {"password": "upstream-password"}


@pytest.mark.parametrize("upstream, auth, forwarded", [
    # The Control UI sends its secret as token and password (authPassword ??= authToken) and signs
    # the token: every browser connect was refused with a scope ceiling's words.
    (UPSTREAM, {**UPSTREAM, "password": UPSTREAM["token"]}, UPSTREAM),
    (UPSTREAM, {**UPSTREAM, "password": "unsigned, unread in token mode"}, UPSTREAM),
    (UPSTREAM, {**UPSTREAM, "deviceToken": "d"}, UPSTREAM),  # the token is what is signed; a device token never goes up
    (PASSWORD_UPSTREAM, {"token": "upstream-password", "password": "upstream-password"},
     {"password": "upstream-password", "token": "upstream-password"}),
    (PASSWORD_UPSTREAM, dict(PASSWORD_UPSTREAM), PASSWORD_UPSTREAM),  # signed over no token
    (UPSTREAM, {"bootstrapToken": UPSTREAM["token"]}, UPSTREAM),  # resolveSignatureToken reads it after the other two
])
async def test_a_device_connect_goes_up_with_the_proxys_credential_and_what_the_device_signed(
        upstream: dict, auth: dict, forwarded: dict) -> None:
    rpc, _ = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=("operator.read",), upstream_auth=upstream)
    device = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
    verdict = await rpc.client_frame(connect_frame(scopes=["operator.read"], device=device, auth=auth))
    assert verdict.verdict == "forward", answer(verdict)
    assert answer(verdict)["params"]["auth"] == forwarded


@pytest.mark.parametrize("upstream, auth, reason, checked", [
    # the caller's own secret, split from the upstream one: refused, not counted (it proved it)
    (UPSTREAM, {"token": SECRET, "password": UPSTREAM["token"]}, "device_above_ceiling", [SECRET]),
    (UPSTREAM, {"password": UPSTREAM["token"]}, "device_above_ceiling", []),  # signed over no token: no guess
    # anything else is a guess at the upstream secret, counted as a wrong secret (red team: unlimited)
    (UPSTREAM, {"token": "a guess", "password": SECRET}, "token_mismatch", ["a guess"]),
    (UPSTREAM, {"deviceToken": "a guess"}, "token_mismatch", ["a guess"]),
    # resolveSignatureToken's third field (mutation testing: a bootstrap token went unjudged)
    (UPSTREAM, {"bootstrapToken": "a guess"}, "token_mismatch", ["a guess"]),
    (PASSWORD_UPSTREAM, {"token": "anything else", "password": "upstream-password"}, "token_mismatch", ["anything else"]),
    ({}, {"token": "a stale token"}, "device_above_ceiling", []),  # no upstream secret to guess at: nothing counted
])
async def test_a_device_that_signed_another_credential_is_refused(upstream: dict, auth: dict, reason: str,
                                                                   checked: list[str]) -> None:
    rpc, recorder = session(caller=AuthOutcome(True, "token", shared_secret=True), scopes=("operator.read",), upstream_auth=upstream)
    device = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}
    verdict = await rpc.client_frame(connect_frame(scopes=["operator.read"], device=device, auth=auth))
    assert (verdict.verdict, verdict.reason, recorder.signed) == ("close", reason, checked)
    code = "DEVICE_SCOPES_ABOVE_CEILING" if reason == "device_above_ceiling" else "AUTH_TOKEN_MISMATCH"  # a wrong secret's words
    assert answer(verdict)["error"]["details"]["code"] == code


@pytest.mark.parametrize("content, code", [
    (b"not json", 1008), (b"[]", 1008), (req("health"), 1008), (b'{"type":"event","method":"connect"}', 1008),
    (b'{"type":"req","id":"c","method":"connect","params":[]}', 1008), (b"{" * 100_000, 1009),
    (connect_frame(scopes="operator.read"), 1008),  # type: ignore[arg-type]
])
async def test_a_bad_first_frame_closes(content: bytes, code: int) -> None:
    rpc, _ = session()
    verdict = await rpc.client_frame(content)
    assert (verdict.verdict, verdict.close_code) == ("close", code)


@pytest.mark.parametrize("content, answered, close_reason", [
    (req("health", request_id="h"), {"type": "res", "id": "h", "ok": False, "error": {
        "code": "INVALID_REQUEST", "message": "invalid handshake: first request must be connect"}},
     "invalid handshake: first request must be connect"),
    (b'{"type":"req","id":"c","method":"connect","params":[]}', {"type": "res", "id": "c", "ok": False, "error": {
        "code": "INVALID_REQUEST", "message": "invalid connect params: must be object"}}, "invalid connect params: must be object"),
    (b'{"type":"req","method":"health"}', None, "invalid request frame"),  # no id: no request to the gateway
    (b'{"type":"event","event":"tick"}', None, "invalid request frame"),
    # the gateway's request schema is closed and bounded: these are no request frames to it either
    (b'{"type":"req","id":"c","method":"connect","params":{},"extra":1}', None, "invalid request frame"),
    (b'{"type":"req","id":"c","method":""}', None, "invalid request frame"),
    (json.dumps({"type": "req", "id": "c", "method": "health", "traceparent": "t" * 129}).encode(), None, "invalid request frame"),
    (b'{"type":"req","id":"c","method":"health","expectedProfileId":""}', None, "invalid request frame"),
    (b"not json", None, None),  # the gateway closes 1000 here; the sidecar keeps 1008 malformed_frame
])
async def test_a_bad_first_frame_gets_the_gateways_answer_and_close_reason(content: bytes, answered: dict | None,
                                                                           close_reason: str | None) -> None:
    rpc, _ = session()
    verdict = await rpc.client_frame(content)
    assert verdict.verdict == "close" and verdict.close_code == 1008 and verdict.close_reason == close_reason
    assert (json.loads(verdict.payload) if verdict.payload else None) == answered


async def test_preauth_frames_are_bounded() -> None:
    rpc, _ = session()
    big = connect_frame(padding="x" * PREAUTH_MAX_BYTES)
    verdict = await rpc.client_frame(big)
    assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "preauth_frame_too_large", 1009)


async def test_the_preauth_bound_is_the_gateways_to_the_byte() -> None:
    """rejectOversizedPreauthFrame: 65,536 bytes are read, one more closes 1009 (mutation testing:
    a bound one byte looser survived)."""
    def frame_of(size: int) -> bytes:
        padding = size - len(connect_frame(padding=""))
        return connect_frame(padding="x" * padding)
    assert len(frame_of(PREAUTH_MAX_BYTES)) == PREAUTH_MAX_BYTES == 65536
    at_limit, _ = session()
    assert (await at_limit.client_frame(frame_of(PREAUTH_MAX_BYTES))).verdict == "forward"
    past, _ = session()
    verdict = await past.client_frame(frame_of(PREAUTH_MAX_BYTES + 1))
    assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "preauth_frame_too_large", 1009)


async def test_a_client_may_grow_a_message_to_the_gateways_own_limit_for_its_state() -> None:
    """What the relay may buffer of one message before judging it: 64 KiB until the connect is
    accepted (mutation testing: 25 MiB per socket went unnoticed, the frame refused only once
    whole), 25 MiB after; the gateway's largest on an opened non-RPC upgrade."""
    waiting, _ = session()
    assert client_message_limit(waiting, rpc_upgrade=True) == PREAUTH_MAX_BYTES
    assert client_message_limit(None, rpc_upgrade=True) == PREAUTH_MAX_BYTES  # its session still being built
    assert client_message_limit(await connected(), rpc_upgrade=True) == RPC_MAX_MESSAGE_BYTES == 25 * 1024 * 1024
    assert client_message_limit(None, rpc_upgrade=False) == GATEWAY_MAX_MESSAGE_BYTES


async def test_duplicate_keys_resolve_last_wins_as_the_gateway() -> None:
    rpc, _ = session()
    frame = (b'{"type":"req","id":"c1","method":"connect","params":{"role":"node","role":"operator",'
             b'"client":{"mode":"cli"},"scopes":[],"auth":{"token":"' + SECRET.encode() + b'"}}}')
    assert (await rpc.client_frame(frame)).verdict == "forward"


# ---- later frames -----------------------------------------------------------------------------------


async def test_allowed_methods_are_forwarded_unchanged() -> None:
    rpc = await connected()
    verdict = await rpc.client_frame(req("sessions.list"))
    assert (verdict.verdict, verdict.payload, verdict.method) == ("forward", None, "sessions.list")


@pytest.mark.parametrize("method, reason, code", [
    ("no.such.method", "unknown_method", "INVALID_REQUEST"),
    ("node.event", "node_method", "INVALID_REQUEST"), ("terminal.open", "method_denied", "FORBIDDEN"),
    ("config.patch", "method_denied", "FORBIDDEN"), ("device.pair.approve", "method_denied", "FORBIDDEN"),
])
async def test_refused_frames_get_an_error_with_the_same_id_and_keep_the_connection(method: str, reason: str, code: str) -> None:
    rpc = await connected()
    verdict = await rpc.client_frame(req(method, request_id="abc"))
    assert (verdict.verdict, verdict.reason) == ("reply", reason)
    frame = answer(verdict)
    assert (frame["type"], frame["id"], frame["ok"], frame["error"]["code"]) == ("res", "abc", False, code)


@pytest.mark.parametrize("scopes, method, error", [
    # the scope before the deny list, as the gateway checks: a caller without it learns nothing of the list
    (["operator.questions"], "config.patch", {"code": "FORBIDDEN", "message": "missing scope: operator.admin", "details": {
        "code": "MISSING_SCOPE", "missingScope": "operator.admin", "requiredScopes": ["operator.admin"]}}),
    (["operator.read"], "board.widget.grant", {"code": "FORBIDDEN", "message": "missing scope: operator.approvals", "details": {
        "code": "MISSING_SCOPE", "missingScope": "operator.approvals", "requiredScopes": ["operator.approvals"]}}),
    (["operator.read", "operator.write"], "nope.method", {"code": "FORBIDDEN", "message": "missing scope: operator.admin", "details": {
        "code": "MISSING_SCOPE", "missingScope": "operator.admin", "requiredScopes": ["operator.admin"]}}),
    (["operator.admin"], "nope.method", {"code": "INVALID_REQUEST", "message": "unknown method: nope.method"}),
    (["operator.read"], "skills.bins", {"code": "INVALID_REQUEST", "message": "unauthorized role: operator"}),
])
async def test_a_method_the_connection_cannot_run_is_refused_in_the_gateways_words(scopes: list[str], method: str,
                                                                                  error: dict) -> None:
    """authorizeGatewayMethod: a name it has no scope for needs admin, so only an admin hears that
    no handler has it; a node method is the wrong role (red team: the sidecar's own words)."""
    rpc = await connected(scopes)
    assert answer(await rpc.client_frame(req(method, request_id="m1")))["error"] == error


@pytest.mark.parametrize("browser, client_id, checked", [
    (BrowserOrigin.of("https://evil.example", "origin not allowed"), "cli", False),
    (BrowserOrigin.of("https://evil.example", "origin not allowed"), "openclaw-browser-copilot", False),
    (BrowserOrigin.of("chrome-extension://" + "a" * 32, "origin not allowed"), "openclaw-browser-copilot", True),
    (BrowserOrigin.of("https://gw.local", None), "cli", True),
])
async def test_a_browsers_origin_is_judged_before_its_credential(browser: BrowserOrigin, client_id: str, checked: bool) -> None:
    """As the gateway's connect does: answering the credential first told any web page in the
    user's browser whether its guess was right (red team: 300 guesses in 96 s, the right one
    standing out). The browser copilot's own Chrome extension origin is left to the gateway."""
    rpc, recorder = session(browser=browser)
    verdict = await rpc.client_frame(connect_frame(auth={"token": "guess"}, client={"id": client_id, "version": "1",
                                                                                     "platform": "linux", "mode": "ui"}))
    assert (recorder.secrets == ["guess"]) is checked
    if not checked:
        assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "origin_not_allowed", 1008)
        error = answer(verdict)["error"]
        assert error["details"] == {"code": "CONTROL_UI_ORIGIN_NOT_ALLOWED", "reason": "origin not allowed"}
        assert error["message"].startswith("origin not allowed (open the Control UI")


async def test_past_its_budget_of_refused_frames_a_connection_is_closed() -> None:
    """Refused and dropped frames spend the budget, forwarded ones neither spend nor refill it (the
    review: an allowed frame between refused ones reset a streak); past it the refusal is sent
    and the connection closed with 1008. The budget refills with time."""
    now = [0.0]
    rpc, _ = session()
    rpc.refusals = RefusalBudget(3, 1.0, clock=lambda: now[0])
    assert (await rpc.client_frame(connect_frame())).verdict == "forward"
    verdicts = [(await rpc.client_frame(frame)).verdict for frame in (
        req("config.patch"), b"not json", req("sessions.list"), req("terminal.open"))]
    assert verdicts == ["reply", "drop", "forward", "reply"]
    flood = await rpc.client_frame(req("config.patch", request_id="f"))
    assert (flood.verdict, flood.reason, flood.close_code, flood.close_reason) == ("close", "refused_frame_flood", 1008,
                                                                                     "too many refused requests")
    assert answer(flood)["id"] == "f" and answer(flood)["ok"] is False  # the refusal itself is still answered
    now[0] = 1.0
    assert (await rpc.client_frame(req("config.patch"))).verdict == "reply"


async def test_in_shadow_mode_frames_past_the_budget_are_forwarded_without_their_audit_lines() -> None:
    """Shadowed frames would be refused under enforcement: shadow mode forwards them whatever, so
    past a budget of their own they go unaudited line by line (red team: a read-only connection
    wrote 200 shadowed lines in 0.6 s). That budget never closes the connection: spending the
    refusal budget did, at the next frame the sidecar answers itself (the red team again)."""
    now = [0.0]
    rpc = await connected(scopes=["operator.read"], shadow=True)
    rpc.shadow_lines = RefusalBudget(2, 1.0, clock=lambda: now[0])
    rpc.refusals = RefusalBudget(2, 1.0, clock=lambda: now[0])
    verdicts = [await rpc.client_frame(req("config.patch")) for _ in range(4)]
    assert [(v.verdict, v.shadowed, v.audited) for v in verdicts] == [("forward", True, True)] * 2 + [("forward", True, False)] * 2
    assert (await rpc.client_frame(req("sessions.list"))).audited  # allowed frames are not shadowed ones
    answered = await rpc.client_frame(req("connect", request_id="again"))  # the sidecar's own answer
    assert (answered.verdict, answered.shadowed) == ("reply", False)
    now[0] = 1.0
    assert (await rpc.client_frame(req("config.patch"))).audited


async def test_missing_scope_is_the_gateways_own_refusal() -> None:
    rpc = await connected(scopes=["operator.read"])
    frame = answer(await rpc.client_frame(req("terminal.list", request_id="t")))
    assert frame == {"type": "res", "id": "t", "ok": False, "error": {
        "code": "FORBIDDEN", "message": "missing scope: operator.admin",
        "details": {"code": "MISSING_SCOPE", "missingScope": "operator.admin", "requiredScopes": ["operator.admin"]}}}


async def test_opened_methods_still_need_their_scope() -> None:
    rpc = await connected(scopes=["operator.read"], allow_methods=frozenset({"config.patch"}))
    assert (await rpc.client_frame(req("config.patch"))).reason == "missing_scope"
    admin = await connected(scopes=["operator.admin"], allow_methods=frozenset({"config.patch"}))
    assert (await admin.client_frame(req("config.patch"))).verdict == "forward"


async def test_dynamic_methods_are_judged_on_their_params() -> None:
    rpc = await connected(scopes=["operator.write"], allow_methods=frozenset({"agent"}))
    assert (await rpc.client_frame(req("agent", {"message": "hello"}))).verdict == "forward"
    assert (await rpc.client_frame(req("agent", {"message": "/new"}))).reason == "missing_scope"


async def test_tools_invoke_goes_through_the_tool_policy() -> None:
    denied = ToolChain(OpenClawRules.model_validate({"gateway": {"tools": {"deny": ["agents_list"]}}}))
    rpc = await connected(scopes=["operator.write"], tools=denied)
    for name in ("exec", "agents_list", "ＥＸＥＣ", "Sessions_List"):
        verdict = await rpc.client_frame(req("tools.invoke", {"name": name, "args": {}}))
        assert (verdict.verdict, verdict.reason) == ("reply", "tool_denied"), name
        # the gateway's handler answers a refused call as a successful request whose call failed
        assert {k: v for k, v in answer(verdict).items() if k != "payload"} == {"type": "res", "id": "r1", "ok": True}
        assert answer(verdict)["payload"]["ok"] is False
        assert answer(verdict)["payload"]["error"] == {"code": "not_found", "message": f"Tool not available: {name}"}
        assert verdict.detail  # the deciding layer reaches the audit line
    assert (await rpc.client_frame(req("tools.invoke", {"name": "  "}))).reason == "missing_tool_name"


@pytest.mark.parametrize("params, errors", [
    ({"args": {}}, "must have required property 'name'"),
    ({"tool": "sessions_list"}, "must have required property 'name'; at root: unexpected property 'tool'"),
    ({"name": 5}, "at /name: must be string"),
    ({"name": ""}, "at /name: must not have fewer than 1 characters"),
    ({"name": "sessions_list", "args": [], "confirm": "yes"}, "at /args: must be object; at /confirm: must be boolean"),
    (None, "must be object"),
])
async def test_tools_invoke_params_are_checked_against_the_gateways_schema(params: Any, errors: str) -> None:
    """The gateway refuses params its closed schema does not take; the sidecar read `tool` as the
    name and relayed a call the gateway then ran (red team)."""
    rpc = await connected(scopes=["operator.write"])
    frame = {"type": "req", "id": "p", "method": "tools.invoke", **({} if params is None else {"params": params})}
    verdict = await rpc.client_frame(json.dumps(frame).encode())
    assert verdict.verdict == "reply"
    assert answer(verdict)["error"] == {"code": "INVALID_REQUEST", "message": f"invalid tools.invoke params: {errors}"}


async def test_tools_invoke_session_errors_are_the_gateways_400_and_never_shadowed() -> None:
    rpc = await connected(scopes=["operator.write"], shadow=True)
    verdict = await rpc.client_frame(req("tools.invoke", {"name": "sessions_list", "sessionKey": "agent:main"}))
    assert (verdict.verdict, verdict.reason) == ("reply", "session_invalid")
    assert answer(verdict)["payload"]["error"] == {"code": "validation_error", "message": 'malformed session key "agent:main"'}
    shadowed = await rpc.client_frame(req("tools.invoke", {"name": "exec"}))
    assert (shadowed.verdict, shadowed.shadowed, shadowed.reason) == ("forward", True, "tool_denied")
    assert shadowed.detail and shadowed.detail.startswith("http-surface:")


async def test_tools_invoke_reads_the_connections_client_caps() -> None:
    """`screen` is built only for clients announcing `ui-commands`: without it the gateway has none."""
    without = await connected(scopes=["operator.admin"])
    assert (await without.client_frame(req("tools.invoke", {"name": "screen"}))).reason == "tool_denied"
    with_caps = await connected(scopes=["operator.admin"], caps=["ui-commands"])
    assert (await with_caps.client_frame(req("tools.invoke", {"name": "screen"}))).verdict == "forward"


@pytest.mark.parametrize("tool", ["sessions", "secrets", "browser"])
async def test_tools_invoke_keeps_owner_only_tools_for_admin_connections(tool: str) -> None:
    """The gateway's owner is the connection holding operator.admin: a write-scoped one is refused
    an owner-only tool (mutation testing: every connection judged as the owner survived)."""
    writer = await connected(scopes=["operator.write"])
    verdict = await writer.client_frame(req("tools.invoke", {"name": tool}))
    assert (verdict.verdict, verdict.reason) == ("reply", "tool_denied")
    assert verdict.detail is not None and "owner-only" in verdict.detail
    admin = await connected(scopes=["operator.admin"])
    assert (await admin.client_frame(req("tools.invoke", {"name": tool}))).verdict == "forward"


async def test_tools_invoke_forwards_the_name_it_judged() -> None:
    """`name` normalised: what ran is what was checked."""
    recorder = Recorder()
    rpc = await connected(scopes=["operator.write"], recorder=recorder)
    verdict = await rpc.client_frame(req("tools.invoke", {"name": " sessions_list ", "args": {"x": 1}}))
    assert verdict.verdict == "forward" and verdict.tool == "sessions_list"
    assert answer(verdict)["params"] == {"name": "sessions_list", "args": {"x": 1}}
    assert recorder.limits == [(None, "sessions_list")]


async def test_tools_invoke_respects_the_request_limits() -> None:
    rpc = await connected(scopes=["operator.write"], recorder=Recorder(limited="request_rate_limited"))
    verdict = await rpc.client_frame(req("tools.invoke", {"name": "sessions_list"}))
    assert (verdict.verdict, verdict.reason) == ("reply", "request_rate_limited")


@pytest.mark.parametrize("frame", [
    b"{oops",
    b'{"type":"req","id":"1","method":"tools.invoke","params":{"name":"agents_list","args":{"n":NaN}}}',
    b'{"type":"req","id":"1","method":"health","params":{"n":-Infinity}}',
    b'\xef\xbb\xbf{"type":"req","id":"1","method":"health","params":{}}',
    b'\x00{"type":"req","id":"1","method":"health","params":{}}',
])
async def test_a_later_frame_javascripts_json_parse_refuses_is_dropped_and_the_connection_kept(frame: bytes) -> None:
    """Frames are read as the gateway's JSON.parse reads their text: NaN, Infinity and a
    byte-order mark are not JSON, and the bytes are UTF-8 (no encoding sniffing). Once connected
    the gateway logs such a frame and reads on: nothing is relayed and nothing answered."""
    rpc = await connected()
    verdict = await rpc.client_frame(frame)
    assert (verdict.verdict, verdict.reason, verdict.payload) == ("drop", "malformed_frame", None)
    assert (await rpc.client_frame(req("health"))).verdict == "forward"


async def test_a_binary_frame_is_read_as_the_gateway_decodes_it() -> None:
    """The gateway decodes a binary frame as Buffer.toString does, a byte that is not UTF-8
    replaced, and runs the request; so is it judged here (it was dropped unanswered)."""
    rpc = await connected()
    allowed = await rpc.client_frame(b'{"type":"req","id":"b2","method":"health","params":{"probe":"\xff"}}')
    assert (allowed.verdict, allowed.method) == ("forward", "health")
    denied = await rpc.client_frame(b'{"type":"req","id":"b3","method":"terminal.open","params":{"p":"\xff"}}')
    assert (denied.verdict, denied.reason) == ("reply", "method_denied")


async def test_a_frame_nested_beyond_python_is_closed_never_dropped_in_silence() -> None:
    """The gateway's JSON.parse follows the nesting and runs it; the sidecar cannot judge it."""
    rpc = await connected()
    deep = b'{"type":"req","id":"d","method":"health","params":{"a":' + nested_beyond_python() + b"}}"
    verdict = await rpc.client_frame(deep)
    assert (verdict.verdict, verdict.reason, verdict.close_code) == ("close", "malformed_frame", 1008)


async def test_a_large_frame_of_too_many_values_is_closed_unparsed() -> None:
    """One 25 MiB frame of `[{},{},...]` from a read-only caller built 680 MB of objects and held
    the event loop 3 s (red team). Large frames the gateway's clients send are strings: they pass,
    commas and brackets inside them included."""
    rpc = await connected()
    many = b'{"type":"req","id":"m","method":"health","params":{"a":[' + b"{}," * 400_000 + b'{}]}}'
    verdict = await rpc.client_frame(many)
    assert (verdict.verdict, verdict.reason, verdict.close_code, verdict.close_text) == (
        "close", "frame_too_complex", 1009, "message too big")
    for text in ("A" * (2 << 20), '[{},{}], \\" ,' * 200_000):  # an upload; a text of brackets and commas
        large = json.dumps({"type": "req", "id": "u", "method": "health", "params": {"text": text}}).encode()
        assert len(large) > SCANNED_FRAME_BYTES
        assert (await rpc.client_frame(large)).verdict == "forward"
    small = b'{"type":"req","id":"s","method":"health","params":{"a":[' + b"0," * 300_000 + b'0]}}'  # under 1 MiB
    assert (await rpc.client_frame(small)).verdict == "forward"


@pytest.mark.parametrize("frame, request_id, errors", [
    ({"type": "event", "event": "tick"}, "invalid",
     "must have required property 'id'; at root: unexpected property 'event'; at /type: must be equal to constant"),
    ([1, 2], "invalid", "must be object"),
    ({"type": "req", "id": "x", "method": ""}, "x", "at /method: must not have fewer than 1 characters"),
    ({"type": "res", "id": "x", "ok": True}, "x",
     "must have required property 'method'; at root: unexpected property 'ok'; at /type: must be equal to constant"),
    ({"type": None, "id": 7, "method": "health"}, 7, "at /type: must be string; at /type: must be equal to constant; at /id: must be string"),
    ({"type": "req", "id": "x", "method": "health", "b": 1, "a": 2}, "x", "at root: unexpected property 'b'"),
    ({"type": "req", "id": "x", "method": "health", "traceparent": "\U0001F600" * 129}, "x",
     "at /traceparent: must not have more than 128 characters"),
])
async def test_a_later_frame_that_is_no_request_gets_the_gateways_answer_and_the_connection_stays(
        frame: Any, request_id: Any, errors: str) -> None:
    rpc = await connected()
    verdict = await rpc.client_frame(json.dumps(frame).encode())
    assert (verdict.verdict, verdict.reason) == ("reply", "malformed_frame")
    assert answer(verdict) == {"type": "res", "id": request_id, "ok": False,
                               "error": {"code": "INVALID_REQUEST", "message": f"invalid request frame: {errors}"}}


@pytest.mark.parametrize("scopes, error", [
    (["operator.read"], {"code": "FORBIDDEN", "message": "missing scope: operator.admin", "details": {
        "code": "MISSING_SCOPE", "missingScope": "operator.admin", "requiredScopes": ["operator.admin"]}}),
    (["operator.admin"], {"code": "INVALID_REQUEST", "message": "connect is only valid as the first request"}),
])
async def test_a_second_connect_is_answered_as_the_gateway_answers_it_and_never_relayed(scopes: list[str], error: dict) -> None:
    rpc = await connected(scopes=scopes, shadow=True)
    verdict = await rpc.client_frame(connect_frame())
    assert (verdict.verdict, verdict.reason) == ("reply", "connect_repeated")
    assert answer(verdict) == {"type": "res", "id": "c1", "ok": False, "error": error}


def test_the_readme_lists_the_whole_deny_list() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**The method deny list**", 1)[1].split("## ", 1)[0]
    missing = sorted(name for name in default_denied() if f"`{name}`" not in section)
    assert not missing, missing


def test_approving_what_an_agent_asked_for_is_denied_like_the_other_approvals() -> None:
    """board.widget.grant approves a widget's tools and network origins, as approval.resolve does an
    exec; sessions.github.confirm runs the publication whose sessions.github.publish is denied (red team)."""
    assert {"board.widget.grant", "approval.resolve", "sessions.github.confirm", "sessions.github.publish"} <= default_denied()


def test_a_write_scope_cannot_open_a_gateway_listener() -> None:
    """portal.open proxies a new gateway port to any local one: denied though only write-scoped."""
    assert {"portal.open", "push.web.subscribe", "push.test", "push.web.test"} <= default_denied()
    assert "portal.close" not in default_denied() and "portal.list" not in default_denied()


async def test_shadow_mode_forwards_policy_refusals_unchanged_and_marks_them() -> None:
    rpc = await connected(scopes=["operator.read"], shadow=True)
    for method, reason in (("sessions.companion.ask", "method_denied"), ("terminal.list", "missing_scope"), ("node.event", "node_method")):
        content = req(method)
        verdict = await rpc.client_frame(content)
        assert (verdict.verdict, verdict.reason, verdict.payload, verdict.shadowed) == ("forward", reason, None, True), method
    unknown = await rpc.client_frame(req("no.such.method"))  # not understood: refused even in shadow mode
    assert (unknown.verdict, unknown.shadowed) == ("reply", False)


async def test_in_shadow_mode_a_node_calling_an_operators_method_is_forwarded_and_marked() -> None:
    rpc, _ = await node_session(shadow=True)
    verdict = await rpc.client_frame(req("chat.history"))
    assert (verdict.verdict, verdict.reason, verdict.payload, verdict.shadowed) == ("forward", "operator_method", None, True)


@pytest.mark.parametrize("params, limited, reason", [
    ({"name": 5}, None, "malformed_frame"),
    ({"name": "  "}, None, "missing_tool_name"),
    ({"name": "sessions_list"}, "limiter_unavailable", "limiter_unavailable"),
])
async def test_shadow_mode_still_answers_what_no_policy_refused(params: dict, limited: str | None, reason: str) -> None:
    """Frames the gateway cannot take, and a limiter that cannot count, are no rule being rolled out."""
    rpc = await connected(scopes=["operator.write"], shadow=True, recorder=Recorder(limited=limited))
    verdict = await rpc.client_frame(req("tools.invoke", params))
    assert (verdict.verdict, verdict.reason, verdict.shadowed) == ("reply", reason, False)


async def test_frames_the_sidecar_writes_are_written_as_json_stringify_writes_them() -> None:
    """What JSON.parse accepts and Python cannot encode as is, a lone surrogate or a number past
    the double range, is re-encoded as JSON.stringify would (an escape, null), never an internal
    error or a frame the gateway cannot parse."""
    rpc = await connected(scopes=["operator.write"])
    frame = b'{"type":"req","id":"r\\ud800","method":"tools.invoke","params":{"name":"agents_list","args":{"q":"\\udc00","n":1e400}}}'
    verdict = await rpc.client_frame(frame)
    assert verdict.verdict == "forward" and verdict.payload is not None
    assert json.loads(verdict.payload)["params"] == {"args": {"q": "\udc00", "n": None}, "name": "agents_list"}
    refused = await rpc.client_frame(b'{"type":"req","id":"r\\ud800","method":"terminal.open","params":{}}')
    assert refused.verdict == "reply" and json.loads(refused.payload or b"")["id"] == "r\ud800"


@pytest.mark.parametrize("client, message", [
    ({"id": "cli", "mode": "CLI"}, "unauthorized: gateway token mismatch (set gateway.remote.token to match gateway.auth.token)"),
    ({"id": "openclaw-control-ui", "mode": "ui"},
     "unauthorized: gateway token mismatch (open the dashboard URL and paste the token in Control UI settings)"),
    ({"id": "x", "mode": "webchat"}, "unauthorized: gateway token mismatch (open the dashboard URL and paste the token in Control UI settings)"),
    ({"id": 5, "mode": None}, "unauthorized: gateway token mismatch (provide gateway auth token)"),
])
def test_the_refusal_hint_is_the_one_the_gateway_gives_that_kind_of_client(client: dict, message: str) -> None:
    error = json.loads(connect_auth_refusal("c1", AuthOutcome(False, "token", "token_mismatch"), client, device=True)[0])["error"]
    assert error["message"] == message


@pytest.mark.parametrize("route, content, speaks_rpc", [
    ("plugin:browser-extension", b'{"type":"req","id":"c1","method":"connect","params":{}}', True),
    ("plugin:browser-extension", b'{"\\u0074ype":"\\u0072eq","id":"c1","method":"connect"}', True),  # as JSON.parse reads it
    ("plugin:browser-extension", nested_beyond_python(), True),  # unreadable here, maybe not there
    ("plugin:browser-extension", b'{"id":1,"method":"Target.getTargets"}', False),  # the relay's own CDP
    ("plugin:browser-screencast", b"not json", False),
    ("worker-websocket", b'{"type":"req","id":"c1","method":"connect"}', False),  # a core handler: always there
])
def test_an_opened_plugin_socket_never_carries_the_gateways_rpc(route: str, content: bytes, speaks_rpc: bool) -> None:
    assert rpc_on_plugin_socket(route, content) is speaks_rpc


@pytest.mark.parametrize("mode, auth, read", [
    ("password", {"password": "p", "token": "t"}, "p"), ("password", {"token": "t"}, "t"),
    ("token", {"password": "p", "token": "t"}, "t"), ("token", {"password": "p"}, "p"), ("token", {}, None),
    ("token", {"token": " t\u3000"}, "t"), ("token", {"token": "", "password": "p"}, "p"), ("password", {"password": " "}, None),
    ("password", {"password": "  ", "token": "t"}, "t"),
])
def test_a_connect_credential_is_the_field_the_gateways_mode_names(mode: str, auth: dict, read: str | None) -> None:
    """resolveSharedConnectAuth then resolveConnectSecret: each field trimmed, a blank one absent,
    then `[mode] ?? [other]`. A password-mode sidecar read `token` first, so a caller holding the
    password was refused by sending a stale token beside it (red team); and a padded secret the
    gateway takes was refused here."""
    assert connect_secret(mode, auth) == read


@pytest.mark.parametrize("auth, message", [
    ({"token": SECRET, "extra": 1}, "invalid connect params: at /auth: unexpected property 'extra'"),
    ({"token": SECRET, "password": 5}, "invalid connect params: at /auth/password: must be string"),
    ({"token": SECRET, "password": None}, "invalid connect params: at /auth/password: must be string"),
    ("notadict", "invalid connect params: at /auth: must be object"),
])
async def test_an_auth_the_gateways_schema_refuses_is_refused_in_its_words(auth: Any, message: str) -> None:
    """The sidecar replaces `auth` before forwarding, so a connect the gateway would refuse for it
    was forwarded repaired, and accepted (red team). The gateway's answers, pinned against it."""
    await assert_schema_refusal(connect_frame(auth=auth), message)


@pytest.mark.parametrize("scopes, message", [
    ("x", "invalid connect params: at /scopes: must be array"), ([1], "invalid connect params: at /scopes/0: must be string"),
    (["operator.read", ""], "invalid connect params: at /scopes/1: must not have fewer than 1 characters"),
    ([1] * 12, "invalid connect params: " + "; ".join(f"at /scopes/{n}: must be string" for n in range(8))),  # at most eight
    (["operator.read", 2], "invalid connect params: at /scopes/1: must be string"),
])
async def test_scopes_the_gateways_schema_refuses_are_refused_in_its_words(scopes: Any, message: str) -> None:
    """Closed with 1008 and no answer before; the gateway answers first (its words, read from it)."""
    await assert_schema_refusal(connect_frame(scopes=scopes), message)


@needs_gateway
def test_the_connect_fields_the_sidecar_reads_are_checked_as_the_gateways_schema() -> None:
    """validateConnectParams over a good connect whose `role`, `scopes` or `auth` is changed: the
    sidecar's errors are the gateway's, in its words (mutation testing: an empty role, which the
    gateway refuses by its schema, answered as an unknown role, survived)."""
    base = json.loads(connect_frame())["params"]
    values: list[Any] = [5, "", None, True, [], {}, "operator", "node", "x", ["operator.read"], [""], [3], {"token": 1}, {"x": "y"}]
    cases = [{**base, field: value} for field in ("role", "scopes", "auth") for value in values]
    theirs = call_gateway(["validateConnectParams", "formatValidationErrors"], """
        const { validateConnectParams: validate, formatValidationErrors: format } = gateway;
        answer(input.map((params) => validate(params) ? null : format(validate.errors)));""", cases)
    mine = ["; ".join(connect_param_errors(params)) or None for params in cases]
    differ = [(params, m, t) for params, m, t in zip(cases, mine, theirs, strict=True) if m != t]
    assert differ == [], differ[:5]
    assert 4 < sum(t is None for t in theirs) < len(cases) - 10


async def assert_schema_refusal(frame: bytes, message: str) -> None:
    rpc, recorder = session()
    verdict = await rpc.client_frame(frame)
    assert (verdict.verdict, verdict.close_code, verdict.close_reason) == ("close", 1008, message)
    assert answer(verdict)["error"] == {"code": "INVALID_REQUEST", "message": message}
    assert recorder.secrets == [] and not rpc.connected  # refused before any secret was compared


async def test_health_needs_no_scope() -> None:
    """authorizeGatewayMethod lets `health` through for any operator connection."""
    rpc = await connected(scopes=["operator.questions"])
    verdict = await rpc.client_frame(req("health"))
    assert (verdict.verdict, verdict.payload) == ("forward", None)


async def test_a_failed_secret_closes_with_the_gateways_words() -> None:
    """The gateway closes with its answer's message; the sidecar closed with its reason code (red team)."""
    rpc, _ = session()
    verdict = await rpc.client_frame(connect_frame(auth={"token": "nope"}))
    message = answer(verdict)["error"]["message"]
    assert verdict.close_reason == message and message.startswith("unauthorized: gateway token mismatch")
