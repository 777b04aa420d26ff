"""`openclaw-sidecar explain`: the sidecar's answer to one tool call, layer by layer, from config.

It runs the pieces the proxy runs (the scope check, the context-header rebuild, the RPC method
table, `ToolChain`), so what it prints is what a running sidecar with that config decides for that
caller. Nothing is sent anywhere.
"""

from __future__ import annotations

import json
from typing import Any

from .body import BodyError, read_invoke_body
from .config import Config
from .headers import ACCOUNT_HEADER, CHANNEL_HEADER, HeaderPlan, rebuild_headers
from .pipeline import tool_request
from .reasons import Reason, ReasonCode, answer
from .routes import RouteTable, collapse_slashes
from .rpc import TOOLS_INVOKE, FrameVerdict, RpcPolicy, judge_method, judge_tool_frame, scope_satisfied
from .scopes import ADMIN, ceilings_from_config, parse_scope_header, resolve_scopes, shared_secret_scopes
from .shadow import SHADOWABLE_REASONS
from .toolchain import CATALOGUE_VERSION, Step, ToolChain, ToolDecision, detail_of
from .view import RequestView

_FRAME_ID = "explain"
RPC_PATH = "/"  # where a client opens the RPC socket (the gateway serves it at any path)
SHARED_SECRET_MODES = ("token", "password")  # callers without an identity; HTTP ignores their scopes header


def _tools_route_scope() -> str:
    """The scope the route table gives the tools route, checked as the pipeline checks it."""
    entry = RouteTable.for_deployment().match("POST", "/tools/invoke", "", websocket=False).entry
    assert entry is not None and entry.scope is not None
    return entry.scope


def explain(config: Config, tool: str | None, **request: str | None) -> dict[str, Any]:
    """The decision as a JSON-able dict (`request`: `_decide`'s keywords). In shadow mode
    (`sidecar.enforce: false`) what the policy layers refuse is forwarded: `shadowed` says so, and
    `status` and `body` are then the answer enforcement would give."""
    result = _decide(config, tool, **request)
    result["shadowed"] = not config.sidecar.enforce and result["decision"] == "refuse" and result["reason"] in SHADOWABLE_REASONS
    if result["shadowed"]:
        result["decision"] = "forward"
    return result


def _decide(config: Config, tool: str | None, *, scopes: str | None = None, user: str | None = None,
            session_key: str | None = None, agent_id: str | None = None, channel: str | None = None,
            account: str | None = None, websocket_method: str | None = None) -> dict[str, Any]:
    """`scopes` is an x-openclaw-scopes value (absent: the gateway's default set), capped by the
    user's ceiling. A token or password caller's header is read on the WebSocket only: on HTTP the
    gateway, and so the sidecar, gives it the default set."""
    chain = ToolChain(config.rules)
    ceilings = config.sidecar.scope_ceilings
    ceiling = ceilings_from_config(ceilings.default, ceilings.identities).ceiling_for(user)
    shared_secret = config.secrets.mode in SHARED_SECRET_MODES and not websocket_method
    granted = shared_secret_scopes(ceiling) if shared_secret else resolve_scopes(parse_scope_header(scopes), ceiling)
    body: dict[str, Any] = {} if tool is None else {"name": tool}  # None: an RPC method that takes no tool
    body.update({k: v for k, v in (("sessionKey", session_key), ("agentId", agent_id)) if v is not None})
    result: dict[str, Any] = {
        "gatewayVersion": CATALOGUE_VERSION, "surface": "websocket" if websocket_method else "http",
        "request": {"body": body, "channel": channel, "account": account, "user": user, "websocketMethod": websocket_method},
        "scopes": list(granted.scopes), "owner": granted.owner,
    }
    path = RPC_PATH if websocket_method else "/tools/invoke"
    denied = next((prefix for prefix in config.sidecar.routes.deny if collapse_slashes(path).startswith(collapse_slashes(prefix))), None)
    if denied is not None:  # the route stage runs before authentication: nothing else is asked
        where = f"the RPC socket's upgrade at {path}" if websocket_method else path
        step = Step("route", "deny", f"{where} is under sidecar.routes.deny {denied}")
        return _refused(result, [step], Reason.ROUTE_DENIED)
    if websocket_method:
        return _websocket(result, chain, RpcPolicy.from_config(config, chain), websocket_method, body, frozenset(granted.scopes))
    needed = _tools_route_scope()
    if not scope_satisfied(needed, granted.granted):
        step = Step("scopes", "deny", f"POST /tools/invoke needs {needed} or {ADMIN}")
        return _refused(result, [step], Reason.MISSING_SCOPE)
    ignored = f" ({config.secrets.mode} caller: x-openclaw-scopes ignored)" if shared_secret and scopes is not None else ""
    scope_step = Step("scopes", "allow", f"{needed} or {ADMIN}: may invoke tools{ignored}")
    context = _upstream_context(config, user, channel, account)
    result["upstreamContext"] = {"channel": context.get(CHANNEL_HEADER), "account": context.get(ACCOUNT_HEADER)}
    try:
        invoke = read_invoke_body(json.dumps(body).encode())
    except BodyError:
        return _refused(result, [scope_step], Reason.MISSING_TOOL_NAME)
    decision = chain.decide(tool_request(invoke, granted.owner, context.items()))
    envelope = json.loads(decision.envelope().body) if decision.refused else None
    return _finish(result, [scope_step, *decision.steps], decision.status, envelope, decision.reason, decision)


def _websocket(result: dict[str, Any], chain: ToolChain, policy: RpcPolicy, method: str, params: dict[str, Any],
               scopes: frozenset[str]) -> dict[str, Any]:
    """A `req` frame on an RPC connection granted these scopes (and announcing no client caps)."""
    refused = judge_method(policy, method, _FRAME_ID, params, scopes)
    if refused is not None:
        step = Step("websocket-method", "deny", f"{method}: {refused.reason}")
        return _finish(result, [step], None, _frame(refused.payload), refused.reason)
    step = Step("websocket-method", "allow", f"{method}: known, not on the deny list, scope held")
    if method != TOOLS_INVOKE:
        return _finish(result, [step], None, None, Reason.ALLOWED)
    judged, decision = judge_tool_frame(chain, _FRAME_ID, params, ADMIN in scopes, frozenset())
    frame = _frame(judged.payload) if isinstance(judged, FrameVerdict) else None
    if decision is None:
        assert isinstance(judged, FrameVerdict)
        return _finish(result, [step], None, frame, judged.reason)
    return _finish(result, [step, *decision.steps], None, frame, decision.reason, decision)


def _refused(result: dict[str, Any], steps: list[Step], reason: Reason) -> dict[str, Any]:
    """Refused over HTTP with the sidecar's answer for `reason`: its status, and its JSON body or
    its text (a denied route is answered as the gateway answers an unknown path, `Not Found`)."""
    envelope = answer(reason)
    json_body = dict(envelope.headers).get("Content-Type", "").startswith("application/json")
    return _finish(result, steps, envelope.status, json.loads(envelope.body) if json_body else envelope.body.decode(), reason)


def _frame(payload: bytes | None) -> Any:
    return None if payload is None else json.loads(payload)


def _upstream_context(config: Config, user: str | None, channel: str | None, account: str | None) -> dict[str, str]:
    """The two context headers tool policy reads, as the gateway will receive them: dropped unless
    allow-listed, replaced when pinned for the user."""
    sent = tuple((name.encode(), value.encode()) for name, value in
                 ((CHANNEL_HEADER, channel), (ACCOUNT_HEADER, account)) if value is not None)
    settings = config.sidecar.context_headers
    plan = HeaderPlan(owned=(), context_allow=frozenset(settings.allow), pinned=settings.pinned_for(user))
    rebuilt = rebuild_headers(RequestView("POST", "/tools/invoke", sent, "127.0.0.1"), plan)
    return {name.lower(): value for name, value in rebuilt if name.lower() in (CHANNEL_HEADER, ACCOUNT_HEADER)}


def _finish(result: dict[str, Any], steps: list[Step], status: int | None, body: Any, reason: ReasonCode,
            decision: ToolDecision | None = None) -> dict[str, Any]:
    session = decision.session if decision is not None else None
    refused = body is not None
    result.update({
        "session": None if session is None else {"agent": session.agent, "key": session.key},
        "layers": [{"layer": s.layer, "verdict": s.verdict, "rule": s.rule} for s in steps],
        "decision": "refuse" if refused else "forward", "status": status, "body": body, "reason": reason,
        "detail": detail_of(steps),
    })
    return result


def render_text(result: dict[str, Any]) -> str:
    """The same decision for a terminal: the request, the caller, then one line per layer."""
    request = result["request"]
    target = f"RPC {request['websocketMethod']}" if result["surface"] == "websocket" else "POST /tools/invoke"
    lines = [
        f"request  {target} {json.dumps(request['body'], ensure_ascii=False)}",
        f"caller   user {request['user'] or '-'}, scopes {','.join(result['scopes']) or '(none)'}"
        f" ({'owner' if result['owner'] else 'not owner'})",
    ]
    if "upstreamContext" in result:
        context = result["upstreamContext"]
        lines.append(f"context  channel {context['channel'] or '-'}, account {context['account'] or '-'} (as forwarded)")
    if result["session"]:
        lines.append(f"session  agent {result['session']['agent']!r}, key {result['session']['key']!r}")
    width = max(len(layer["layer"]) for layer in result["layers"])
    lines += ["", f"  {'layer'.ljust(width)}  verdict  rule"]
    lines += [f"  {layer['layer'].ljust(width)}  {layer['verdict'].upper() if layer['verdict'] == 'deny' else layer['verdict']:<7}  "
              f"{layer['rule']}" for layer in result["layers"]]
    lines.append("")
    if result["body"] is not None:  # refused, or forwarded in shadow mode where enforcing would refuse
        status = f" {result['status']}" if result["status"] is not None else " (answered in a res, connection kept)"
        verdict = "forward (shadow mode: sidecar.enforce false; enforcing would refuse" if result["shadowed"] else "refuse"
        lines.append(f"decision {verdict}{status} {json.dumps(result['body'], ensure_ascii=False, separators=(',', ':'))}"
                     + (")" if result["shadowed"] else ""))
        lines.append(f"reason   {result['reason']}" + (f" ({result['detail']})" if result["detail"] else ""))
    else:
        left = [layer["layer"] for layer in result["layers"] if layer["verdict"] == "gateway"]
        lines.append("decision forward" + (f" (the gateway decides: {', '.join(left)})" if left else ""))
    lines.append(f"policy   openclaw {result['gatewayVersion']} tool catalogue")
    return "\n".join(lines) + "\n"
