"""sidecar.pipeline HEAD_STAGES: the order, declared once and pinned here, and each stage called
alone on a HeadState (what the stages before it wrote, then the one stage under test).

tests/unit/test_pipeline.py covers the same refusals through `on_head`; these show where each
one is decided and what a stage leaves for the next.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar import pipeline as pipeline_module
from sidecar.auth import AuthOutcome
from sidecar.body import MAX_BODY_BYTES
from sidecar.canonical import canonicalize_target
from sidecar.config import load_config
from sidecar.pipeline import HEAD_STAGES, Admitted, HeadState, Pipeline, Refuse
from sidecar.reasons import HOST_NOT_PLAIN, HOST_REQUIRED, Reason, answer
from sidecar.view import RequestView
from tests.builders import view, write_config
from tests.unit.fakes import NeverLimits, Verdict

pytestmark = pytest.mark.usefixtures("clean_env")

TOKEN = "T"
CLIENT = "203.0.113.7"
ORDER = [
    "head_size", "method_syntax", "malformed_head", "expect", "host", "target", "upgrade", "route", "denied_routes",
    "route_access", "rpc_upgrade", "attribution", "funnel", "method", "settled_route", "auth", "scopes",
    "declared_size", "preauth_sockets",
]
AWAITED = {"auth"}
STAGES = {stage.name: stage for stage in HEAD_STAGES}
UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


@dataclass
class Limiter:
    """The auth-failure limiter, answering `verdict` and noting what it was asked."""

    verdict: Verdict = Verdict()
    calls: list[str] = field(default_factory=list)

    async def check(self, ip: str | None) -> Verdict:
        self.calls.append("check")
        return self.verdict

    async def record_failure(self, ip: str | None) -> float:
        self.calls.append("record_failure")
        return 0.5

    async def reset(self, ip: str | None) -> None:
        self.calls.append("reset")


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Pipeline]:
    counter = iter(range(1000))

    def build(sidecar: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None, limiter: Any = None) -> Pipeline:
        document = {"sidecar": sidecar or {}, "gateway": gateway or {"auth": {"token": TOKEN}}}
        path = write_config(tmp_path / f"config{next(counter)}.json", document)
        return Pipeline(load_config(path, environ={}), limiter or NeverLimits())

    return build


def request(method: str = "POST", target: str = "/tools/invoke", *headers: tuple[str, str], host: str | None = "gw.example",
            auth: str | None = f"Bearer {TOKEN}") -> RequestView:
    """A head from CLIENT, with a Host and the right token unless told otherwise."""
    return view(*headers, method=method, target=target, peer=CLIENT, host=host, auth=auth)


async def run(pipeline: Pipeline, name: str, head: HeadState) -> Refuse | None:
    """One stage, alone."""
    _, sync, awaited = STAGES[name]
    if sync is not None:
        return sync(pipeline, head)
    assert awaited is not None
    return await awaited(pipeline, head)


async def reach(pipeline: Pipeline, head_view: RequestView, name: str) -> HeadState:
    """The head as the stage `name` receives it: every stage before it has run and let it on."""
    head = HeadState(head_view)
    for earlier in ORDER[:ORDER.index(name)]:
        assert await run(pipeline, earlier, head) is None, earlier
    return head


def refused(result: Refuse | None, reason: Reason, *data: str | int) -> Refuse:
    assert isinstance(result, Refuse), result
    assert result.reason == reason and result.envelope == answer(reason, *data)
    return result


# ---- the order --------------------------------------------------------------------------------------


def test_the_order_is_pinned() -> None:
    assert [stage.name for stage in HEAD_STAGES] == ORDER


def test_each_stage_is_the_pipeline_method_of_its_name() -> None:
    for name, sync, awaited in HEAD_STAGES:
        method = getattr(Pipeline, f"stage_{name}")
        assert (sync, awaited) == ((None, method) if name in AWAITED else (method, None)), name


def test_the_module_docstring_lists_the_same_order() -> None:
    """The docstring's `→` chain is what a reader sees first: it must name the stages that run."""
    doc = " ".join((pipeline_module.__doc__ or "").split())
    chain = re.search(r"head size → .*? → preauth sockets", doc)
    assert chain is not None
    names = [re.sub(r"[ -]", "_", part.strip().lower()) for part in chain.group(0).split("→")]
    assert names == ORDER


def test_each_stage_appears_once() -> None:
    assert isinstance(HEAD_STAGES, tuple) and len(set(HEAD_STAGES)) == len(ORDER)


async def test_on_head_is_the_stages_in_order(make) -> None:
    """Running the stages by hand gives what on_head gives (here: the admitted request)."""
    pipeline = make()
    head_view = request()
    head = await reach(pipeline, head_view, "preauth_sockets")
    assert await run(pipeline, "preauth_sockets", head) is None
    assert pipeline._admit(head) == await pipeline.on_head(head_view)


# ---- each stage alone -------------------------------------------------------------------------------


async def test_head_size(make) -> None:
    pipeline = make()
    assert await run(pipeline, "head_size", HeadState(request())) is None
    big = request("POST", "/tools/invoke", ("X-Padding", "a" * (16 * 1024)))
    refused(await run(pipeline, "head_size", HeadState(big)), Reason.REQUEST_HEAD_TOO_LARGE)


async def test_method_syntax(make) -> None:
    pipeline = make()
    for method in ("post", "FOO", "PRI", "GETX"):
        refused(await run(pipeline, "method_syntax", HeadState(request(method))), Reason.INVALID_METHOD)
    assert await run(pipeline, "method_syntax", HeadState(request("M-SEARCH"))) is None


async def test_malformed_head(make) -> None:
    repeated = request("POST", "/tools/invoke", ("Authorization", "Bearer T"))
    refused(await run(make(), "malformed_head", HeadState(repeated)), Reason.MALFORMED_HEAD, "header 'authorization' is repeated")


async def test_expect(make) -> None:
    pipeline = make()
    refused(await run(pipeline, "expect", HeadState(request("POST", "/", ("Expect", "later")))), Reason.EXPECTATION_FAILED)
    assert await run(pipeline, "expect", HeadState(request("POST", "/", ("Expect", " 100-Continue ")))) is None


async def test_host(make) -> None:
    pipeline = make()
    refused(await run(pipeline, "host", HeadState(request(host=None))), Reason.INVALID_HOST, HOST_REQUIRED)
    refused(await run(pipeline, "host", HeadState(request(host="gw.example/x"))), Reason.INVALID_HOST, HOST_NOT_PLAIN)
    head = HeadState(request(host=" GW.Example:8080 "))
    assert await run(pipeline, "host", head) is None
    assert head.host == "gw.example:8080"


@pytest.mark.parametrize("target, reason", [
    ("tools/invoke", Reason.INVALID_TARGET),
    ("http://[::1/tools/invoke", Reason.INVALID_TARGET),
    ("http://evil/tools/invoke", Reason.FOREIGN_HOST),
    ("/a/..//x/y", Reason.INVALID_TARGET),
])
async def test_target_refusals(make, target: str, reason: Reason) -> None:
    head = HeadState(request("POST", target))
    head.host = "gw.example"  # what the host stage leaves
    refused(await run(make(), "target", head), reason)


async def test_target_is_left_canonical(make) -> None:
    head = HeadState(request("GET", "http://gw.example:80/a/../b?q"))
    head.host = "gw.example"
    assert await run(make(), "target", head) is None
    assert (head.target.path, head.target.query, head.target.raw_is_canonical) == ("/b", "?q", False)


async def test_upgrade(make) -> None:
    pipeline = make()
    refused(await run(pipeline, "upgrade", HeadState(request("GET", "/", ("Upgrade", "h2c")))), Reason.UNSUPPORTED_UPGRADE)
    head = HeadState(request("GET", "/", ("Upgrade", " WebSocket ")))
    assert await run(pipeline, "upgrade", head) is None and head.websocket
    head = HeadState(request())
    assert await run(pipeline, "upgrade", head) is None and not head.websocket


async def test_route_names_the_route_and_the_client(make) -> None:
    pipeline = make()
    head = HeadState(request())
    head.target, head.websocket = canonicalize_target("/tools/invoke", "gw.example"), False
    assert await run(pipeline, "route", head) is None
    assert head.route == "tools-invoke" and head.match.name == "tools-invoke"
    assert head.attribution.client_ip == CLIENT and head.attribution.attributable


async def test_route_refuses_non_canonical_tools_spellings(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request("POST", "/tools/./invoke"), "route")
    refused(await run(pipeline, "route", head), Reason.NON_CANONICAL_TARGET)
    assert head.route == "tools-invoke"  # known before the refusal: it is audited with it


@pytest.mark.parametrize("target", ["/plugins/openai/realtime/calls", "/PLUGINS/openai/realtime/calls",
                                    "/plugins/%6fpenai/realtime/calls", "/Plugins//OpenAI/realtime/calls/"])
async def test_denied_routes_read_a_plugin_path_as_the_plugin_router_does(make, target: str) -> None:
    """The gateway matches plugin routes lower-cased and percent-decoded: a deny on the plugin's
    prefix must hold for every spelling its router takes."""
    pipeline = make({"routes": {"allow": ["plugin:openai-realtime"], "deny": ["/plugins/openai/"]}})
    head = await reach(pipeline, request("POST", target), "denied_routes")
    assert head.route == "plugin:openai-realtime"
    refused(await run(pipeline, "denied_routes", head), Reason.ROUTE_DENIED)


@pytest.mark.parametrize("deny, target, denied", [
    ("/api/", "/API/channels/x", True),  # plugin:channels, read by the plugin router
    ("/api/", "/apikeys", False),  # a trailing `/` means a directory, whatever the case
    ("/plugins/openai/", "/plugins/openaix/realtime/calls", False),
    ("/Plugins//OpenAI/", "/plugins/openai/realtime/calls", True),
    ("/hooks/agent", "/hooks//agent", True),  # the hooks handler strips the slashes after its path
    ("/hooks/agent", "/hooks///agent/", True),
    ("/hooks/agent", "/hooks/wake", False),
])
async def test_denied_prefixes_hold_for_the_spellings_the_handlers_fold(make, deny: str, target: str, denied: bool) -> None:
    pipeline = make({"routes": {"allow": ["plugin:openai-realtime", "plugin:channels", "hooks"], "deny": [deny]}})
    head = await reach(pipeline, request("POST", target), "denied_routes")
    result = await run(pipeline, "denied_routes", head)
    assert (result is not None and result.reason == Reason.ROUTE_DENIED) is denied


async def test_denied_routes(make) -> None:
    pipeline = make({"routes": {"deny": ["/tools/"]}})
    head = await reach(pipeline, request(), "denied_routes")
    refused(await run(pipeline, "denied_routes", head), Reason.ROUTE_DENIED)
    head = await reach(make(), request(), "denied_routes")
    assert await run(make(), "denied_routes", head) is None


async def test_a_shadowed_stage_notes_the_refusal_and_lets_the_head_on(make) -> None:
    pipeline = make({"enforce": False, "routes": {"deny": ["/tools/"]}})
    head = await reach(pipeline, request(), "denied_routes")
    assert await run(pipeline, "denied_routes", head) is None
    assert head.shadowed == (Reason.ROUTE_DENIED,)
    result = await pipeline.on_head(request())
    assert isinstance(result, Admitted) and result.shadowed == ("route_denied",)


async def test_route_access(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request("POST", "/sessions/main/kill"), "route_access")
    refused(await run(pipeline, "route_access", head), Reason.ROUTE_REFUSED)
    assert head.access.refusal is None and not head.access.public  # shadowed: in as an authenticated route
    head = await reach(pipeline, request(), "route_access")
    assert await run(pipeline, "route_access", head) is None and not head.access.public


async def test_rpc_upgrade(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request("GET", "/", *UPGRADE), "rpc_upgrade")
    assert await run(pipeline, "rpc_upgrade", head) is None and head.rpc
    head = await reach(pipeline, request("POST", "/", *UPGRADE), "rpc_upgrade")
    refused(await run(pipeline, "rpc_upgrade", head), Reason.INVALID_WEBSOCKET_UPGRADE)
    off = make({"websocket": {"mode": "off"}})
    head = await reach(off, request("GET", "/", *UPGRADE), "rpc_upgrade")
    refused(await run(off, "rpc_upgrade", head), Reason.WEBSOCKET_OFF)
    head = await reach(pipeline, request(), "rpc_upgrade")
    assert await run(pipeline, "rpc_upgrade", head) is None and not head.rpc


async def test_attribution(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request("POST", "/tools/invoke", ("X-Forwarded-For", "10.1.1.1")), "attribution")
    refused(await run(pipeline, "attribution", head), Reason.PROXY_ATTRIBUTION_REQUIRED)


async def test_funnel(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request(), "funnel")
    assert await run(pipeline, "funnel", head) is None
    # Alone: the header is also forwarding evidence, which the attribution stage refuses first.
    head.view = request("POST", "/tools/invoke", ("Tailscale-Funnel-Request", "?1"))
    refused(await run(pipeline, "funnel", head), Reason.FUNNEL_REQUEST)


async def test_method(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request("PUT"), "method")
    refused(await run(pipeline, "method", head), Reason.METHOD_NOT_ALLOWED, "POST")


async def test_auth_refuses_a_locked_client_whatever_it_presents(make) -> None:
    limiter = Limiter(Verdict(allowed=False, retry_after_s=30))
    pipeline = make(limiter=limiter)
    head = await reach(pipeline, request(), "auth")
    refused(await run(pipeline, "auth", head), Reason.RATE_LIMITED, 30)
    assert limiter.calls == ["check"] and head.outcome is None
    limiter.verdict = Verdict(allowed=False, unavailable=True)
    refused(await run(pipeline, "auth", head), Reason.LIMITER_UNAVAILABLE)


async def test_settled_route_settles_a_public_read_without_the_limiter(make) -> None:
    limiter = Limiter(Verdict(allowed=False, retry_after_s=30))
    pipeline = make(limiter=limiter)
    head = await reach(pipeline, request("GET", "/health", auth=None), "settled_route")
    assert await run(pipeline, "settled_route", head) is None
    assert head.outcome is not None and head.outcome.method == "unauthenticated-route"
    assert await run(pipeline, "auth", head) is None and limiter.calls == []


async def test_auth(make) -> None:
    limiter = Limiter()
    pipeline = make(limiter=limiter)
    head = await reach(pipeline, request(auth="Bearer wrong"), "auth")
    result = refused(await run(pipeline, "auth", head), Reason.TOKEN_MISMATCH)
    assert result.delay_s == 0.5 and result.auth is not None and limiter.calls == ["check", "record_failure"]
    head = await reach(pipeline, request(), "auth")
    assert await run(pipeline, "auth", head) is None
    assert head.outcome is not None and head.outcome.ok and limiter.calls[-1] == "reset"


async def test_auth_leaves_an_outcome_already_settled(make) -> None:
    pipeline = make()
    head = await reach(pipeline, request(auth="Bearer wrong"), "auth")
    head.outcome = settled = AuthOutcome(True, "route-credential")
    assert await run(pipeline, "auth", head) is None and head.outcome is settled


async def test_scopes(make) -> None:
    pipeline = make(gateway={"auth": {"mode": "none"}})
    head = await reach(pipeline, request("POST", "/tools/invoke", ("x-openclaw-scopes", "operator.read"), auth=None), "scopes")
    result = refused(await run(pipeline, "scopes", head), Reason.MISSING_SCOPE)
    assert result.auth is head.outcome and head.scopes is not None and head.scopes.scopes == ("operator.read",)


async def test_declared_size(make) -> None:
    pipeline = make()
    large = ("Content-Length", str(MAX_BODY_BYTES + 1))
    head = await reach(pipeline, request("POST", "/tools/invoke", large), "declared_size")
    refused(await run(pipeline, "declared_size", head), Reason.PAYLOAD_TOO_LARGE)
    head = await reach(pipeline, request("GET", "/health", large), "declared_size")
    assert head.route != "tools-invoke" and await run(pipeline, "declared_size", head) is None


# ---- what on_head adds: the route and client on refusals from the route stage on ---------------------


async def test_refusals_before_the_route_carry_no_route(make) -> None:
    result = await make().on_head(request("POST", "tools/invoke"))
    assert isinstance(result, Refuse) and (result.reason, result.route, result.client_ip) == (Reason.INVALID_TARGET, None, None)


async def test_refusals_from_the_route_on_carry_route_and_client(make) -> None:
    result = await make().on_head(request("PUT"))
    assert isinstance(result, Refuse)
    assert (result.reason, result.route, result.client_ip) == (Reason.METHOD_NOT_ALLOWED, "tools-invoke", CLIENT)
