"""sidecar.pipeline: every stage's refusal and reason code, the stage ORDER (reference §0 and
the conformance cases it decides), the admitted request, body rules and review_response.

No sockets: fake limiters record what the pipeline asked of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sidecar import envelopes
from sidecar.body import MAX_BODY_BYTES
from sidecar.config import load_config
from sidecar.envelopes import Envelope
from sidecar.pipeline import PUBLIC_READ_METHOD, Admitted, Forward, Pipeline, Refuse
from sidecar.ratelimit import UPSTREAM_GUESS_SUBJECT, AuthFailureLimiter
from sidecar.scopes import DEFAULT_SCOPES
from sidecar.view import RequestView

from tests import builders
from tests.unit.fakes import Verdict

TOKEN = "T"
UPSTREAM = "UP"
CLIENT = "203.0.113.7"
PROXY = "198.51.100.5"
XFF_CLIENT = "198.51.100.9"
BODY = b'{"tool":"agents_list","args":{}}'
ALL_DEFAULT_SCOPES = ",".join(DEFAULT_SCOPES)


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/unit/conftest.py


# ---- fakes --------------------------------------------------------------------------------------


@dataclass
class FakeFailureLimiter:
    verdict: Verdict = Verdict()
    delay_s: float = 0.0
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    async def check(self, ip: str | None) -> Verdict:
        self.calls.append(("check", ip))
        return self.verdict

    async def record_failure(self, ip: str | None) -> float:
        self.calls.append(("record_failure", ip))
        return self.delay_s

    async def reset(self, ip: str | None) -> None:
        self.calls.append(("reset", ip))


@dataclass
class FakeRequestLimiter:
    verdict: Verdict = Verdict()
    calls: list[tuple[str | None, str | None, str | None]] = field(default_factory=list)

    async def hit(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> Verdict:
        self.calls.append((identity, tool, client_ip))
        return self.verdict


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The gateway's defaults: the OpenAI endpoints off, and so their rows.
DEFAULT_ROUTES_CONFIG: dict[str, Any] = {"sidecar": {"upstreamAuth": {"token": UPSTREAM}}, "gateway": {"auth": {"token": TOKEN}}}
OPENAI_ENDPOINTS_ON: dict[str, Any] = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True},
                                                                          "responses": {"enabled": True}}}}}
# Most tests: a gateway with the routes that act switched on, so that those doors exist to be judged.
TOKEN_CONFIG: dict[str, Any] = deep_merge(DEFAULT_ROUTES_CONFIG, OPENAI_ENDPOINTS_ON)
TRUSTED_PROXY_CONFIG: dict[str, Any] = {
    "sidecar": {"upstreamAuth": {"token": UPSTREAM}},
    "gateway": {
        "auth": {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-forwarded-user"}},
        "trustedProxies": [PROXY],
    },
}
NONE_CONFIG: dict[str, Any] = {"gateway": {"auth": {"mode": "none"}}}


@dataclass
class Harness:
    pipeline: Pipeline
    failures: FakeFailureLimiter
    requests: FakeRequestLimiter | None


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Harness]:
    counter = iter(range(1000))

    def build(config: dict[str, Any] | None = None, *, extra: dict[str, Any] | None = None,
              failures: FakeFailureLimiter | None = None, requests: FakeRequestLimiter | None = None) -> Harness:
        document = deep_merge(TOKEN_CONFIG if config is None else config, extra or {})
        path = tmp_path / f"config{next(counter)}.json"
        path.write_text(json.dumps(document))
        failures = failures or FakeFailureLimiter()
        return Harness(Pipeline(load_config(path, environ={}), failures, requests), failures, requests)

    return build


def view(method: str = "POST", target: str = "/tools/invoke", headers: list[builders.Header] | None = None,
         peer: str = CLIENT, *, host: str | None = "gw.example", auth: str | None = f"Bearer {TOKEN}") -> RequestView:
    """tests/builders.py's `view` with this module's defaults: a Host line and the client's token."""
    return builders.view(*(headers or ()), method=method, target=target, peer=peer, host=host, auth=auth)


def assert_refused(result: Refuse | Admitted | Forward, envelope: Envelope, reason: str) -> None:
    assert isinstance(result, Refuse), result
    assert (result.envelope, result.reason) == (envelope, reason)


BAD_HEAD = envelopes.bad_request  # the message names the rule that fired


# ---- head stages, one by one ----------------------------------------------------------------------

HEAD_REFUSALS = [
    # (id, view kwargs, expected envelope, reason)
    ("malformed-duplicate-auth", dict(headers=[("Authorization", "Bearer T")]),
     BAD_HEAD("header 'authorization' is repeated"), "malformed_head"),
    ("malformed-alias", dict(headers=[("X_OpenClaw_Scopes", "operator.admin")]),
     BAD_HEAD("header name 'X_OpenClaw_Scopes' aliases a protected header"), "malformed_head"),
    ("malformed-obs-fold", dict(headers=[("Tailscale-User-Login", b"a\r\n b")]),
     BAD_HEAD("control character in header 'Tailscale-User-Login'"), "malformed_head"),
    ("malformed-non-utf8", dict(headers=[("x-openclaw-message-to", b"\xff")]),
     BAD_HEAD("header 'x-openclaw-message-to' is not valid UTF-8"), "malformed_head"),
    ("malformed-duplicate-host", dict(headers=[("Host", "other")]), BAD_HEAD("header 'host' is repeated"), "malformed_head"),
    ("expect-other", dict(headers=[("Expect", "something-else")]), envelopes.expectation_failed(), "expectation_failed"),
    ("host-with-path", dict(host="gw.example/tools"), BAD_HEAD("Host must be host[:port]"), "invalid_host"),
    ("host-with-userinfo", dict(host="user@gw.example"), BAD_HEAD("Host must be host[:port]"), "invalid_host"),
    ("host-with-query", dict(host="gw.example?x"), BAD_HEAD("Host must be host[:port]"), "invalid_host"),
    ("relative-target", dict(target="tools/invoke"), envelopes.invalid_request_url(), "invalid_target"),
    ("asterisk-target", dict(target="*"), envelopes.invalid_request_url(), "invalid_target"),
    ("unparseable-absolute", dict(target="http://[::1/tools/invoke"), envelopes.invalid_request_url(), "invalid_target"),
    ("unsupported-idna-host", dict(target="http://xn--abc/tools/invoke"), envelopes.invalid_request_url(), "invalid_target"),
    ("E3-absolute-foreign", dict(target="http://evil/tools/invoke"), BAD_HEAD("request target names a foreign host"), "foreign_host"),
    ("E4-double-slash-host", dict(target="//tools/invoke"), BAD_HEAD("request target names a foreign host"), "foreign_host"),
    ("E3-absolute-same-host", dict(target="http://gw.example/tools/invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("E3-dot-segment", dict(target="/tools/./invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("E3-encoded-dot", dict(target="/tools/%2e/invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("E3-dotdot", dict(target="/x/../tools/invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("E3-backslash", dict(target="/tools\\invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("E3-fragment", dict(target="/tools/invoke#frag"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("26-untrusted-proto", dict(headers=[("X-Forwarded-Proto", "https")]), envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("25-untrusted-xff", dict(headers=[("X-Forwarded-For", "10.1.1.1")]), envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("27-loopback-xff", dict(headers=[("X-Forwarded-For", "198.51.100.9")], peer="127.0.0.1"), envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("I2-untrusted-tailscale", dict(headers=[("Tailscale-User-Login", "a@b")]), envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("1-get", dict(method="GET", auth=None), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("2-put", dict(method="PUT"), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("2-delete", dict(method="DELETE"), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("2-options", dict(method="OPTIONS"), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("2-head", dict(method="HEAD"), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("5-no-auth", dict(auth=None), envelopes.unauthorized(), "credential_missing"),
    ("6-wrong-token", dict(auth="Bearer wrong"), envelopes.unauthorized(), "token_mismatch"),
    ("8-basic", dict(auth="Basic dDpU"), envelopes.unauthorized(), "credential_missing"),
    ("46-too-large", dict(headers=[("Content-Length", str(MAX_BODY_BYTES + 1))]), envelopes.payload_too_large(), "payload_too_large"),
]


@pytest.mark.parametrize("kwargs, envelope, reason", [c[1:] for c in HEAD_REFUSALS], ids=[c[0] for c in HEAD_REFUSALS])
async def test_head_refusal(make, kwargs: dict, envelope: Envelope, reason: str) -> None:
    assert_refused(await make().pipeline.on_head(view(**kwargs)), envelope, reason)


async def test_a_request_without_host_is_refused(make) -> None:
    """RFC 9112 §3.2; the gateway answers 400 too (found by `probe`, H1.missing-host)."""
    assert_refused(await make().pipeline.on_head(view(host=None)), BAD_HEAD("Host header is required"), "invalid_host")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="plain"),
        pytest.param(dict(auth="bearer T"), id="7-lowercase-scheme"),
        pytest.param(dict(auth="   Bearer    T   "), id="9-trimmed"),
        pytest.param(dict(target="/tools/invoke?x=1"), id="3-query"),
        pytest.param(dict(headers=[("Expect", "100-continue")]), id="expect-100-continue"),
        pytest.param(dict(headers=[("Expect", " 100-Continue ")]), id="expect-case"),
        pytest.param(dict(host="GW.example:18790"), id="host-with-port"),
        pytest.param(dict(host="[::1]:18790"), id="host-v6"),
        pytest.param(dict(headers=[("Content-Length", str(MAX_BODY_BYTES))]), id="47-exact-limit"),
        pytest.param(dict(headers=[("x-openclaw-scopes", "operator.approvals")]), id="10-scopes-ignored"),
        pytest.param(dict(headers=[("Content-Type", "text/plain")]), id="53-content-type-ignored"),
        pytest.param(dict(headers=[("Origin", "https://evil.example")]), id="token-mode-ignores-origin"),
    ],
)
async def test_head_admitted(make, kwargs: dict) -> None:
    result = await make().pipeline.on_head(view(**kwargs))
    assert isinstance(result, Admitted), result
    assert result.route == "tools-invoke"
    assert result.auth.ok and result.auth.shared_secret
    assert result.scopes is not None and result.scopes.owner


# ---- the admitted request: target, client, header list -----------------------------------------


async def test_admitted_request_is_rebuilt(make) -> None:
    v = view(target="/tools/invoke?x=1", headers=[
        ("Content-Length", "32"), ("x-openclaw-scopes", "operator.admin"), ("x-openclaw-sender-is-owner", "true"),
        ("x-openclaw-message-to", "channel:24514"), ("x-openclaw-thread-id", "thread-24514"),
        ("X-OpenClaw-Account-Id", "acct"), ("x-session-key", "agent:main:main"), ("Connection", "keep-alive, x-openclaw-scopes"),
        ("Accept", "*/*"),
    ])
    result = await make().pipeline.on_head(v)
    assert isinstance(result, Admitted)
    assert result.target == "/tools/invoke?x=1"
    assert result.client_ip == CLIENT
    assert result.headers == (
        ("Host", "gw.example"), ("Content-Length", "32"),
        ("x-openclaw-message-to", "channel:24514"), ("x-openclaw-thread-id", "thread-24514"),  # case 77
        ("X-OpenClaw-Account-Id", "acct"), ("Accept", "*/*"), ("Connection", "keep-alive"),
        ("Authorization", f"Bearer {UPSTREAM}"), ("x-openclaw-scopes", ALL_DEFAULT_SCOPES), ("X-Forwarded-For", CLIENT),
    )


async def test_loopback_client_gets_no_x_forwarded_for(make) -> None:
    """(f) 8: a gateway trusting 127.0.0.1 would find no client in `X-Forwarded-For: 127.0.0.1`."""
    result = await make().pipeline.on_head(view(peer="127.0.0.1"))
    assert isinstance(result, Admitted)
    assert "x-forwarded-for" not in [n.lower() for n, _ in result.headers]
    assert result.client_ip == "127.0.0.1"


async def test_default_upstream_credential_is_the_shared_secret(make) -> None:
    result = await make({"gateway": {"auth": {"token": TOKEN}}}).pipeline.on_head(view())
    assert isinstance(result, Admitted)
    assert ("Authorization", f"Bearer {TOKEN}") in result.headers


async def test_trusted_proxy_admitted_headers(make) -> None:
    v = view(peer=PROXY, auth=None, headers=[
        ("X-Forwarded-For", f"1.1.1.1, {XFF_CLIENT}"), ("X-Forwarded-User", "alice"), ("X-Forwarded-Proto", "https"),
        ("x-openclaw-scopes", " operator.write , operator.read,operator.write "),
    ])
    result = await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(v)
    assert isinstance(result, Admitted)
    assert result.client_ip == XFF_CLIENT
    assert result.auth.user == "alice" and result.auth.method == "trusted-proxy"
    assert result.scopes is not None and not result.scopes.owner
    assert result.headers == (
        ("Host", "gw.example"),
        ("Authorization", f"Bearer {UPSTREAM}"), ("x-openclaw-scopes", "operator.write,operator.read"),
        ("x-forwarded-user", "alice"), ("X-Forwarded-For", XFF_CLIENT),
    )


async def test_a_required_request_id_is_demanded_of_the_ingress_and_the_sidecars_own_handed_on(make) -> None:
    """The gateway checks only that a required header is there, and the sidecar sends its own
    X-Request-Id on every forwarded request: refusing `requiredHeaders: [X-Request-Id]` kept the
    whole edit out (a token rotated in it too) where the gateway took it."""
    pipeline = make(TRUSTED_PROXY_CONFIG, extra={"gateway": {"auth": {"trustedProxy": {"requiredHeaders": ["X-Request-Id"]}}}}).pipeline
    sent = [("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice")]
    assert_refused(await pipeline.on_head(view(peer=PROXY, auth=None, headers=sent)), envelopes.unauthorized(),
                   "trusted_proxy_missing_header_x-request-id")
    admitted = await pipeline.on_head(replace(view(peer=PROXY, auth=None, headers=[*sent, ("X-Request-Id", "ingress-7")]),
                                              request_id="sidecar-1"))
    assert isinstance(admitted, Admitted) and admitted.auth.user == "alice"
    assert [value for name, value in admitted.headers if name.lower() == "x-request-id"] == ["sidecar-1"]


async def test_trusted_proxy_upstream_user_header_configurable(make) -> None:
    config = deep_merge(TRUSTED_PROXY_CONFIG, {"sidecar": {"upstreamAuth": {"userHeader": "X-Gateway-User"}}})
    v = view(peer=PROXY, auth=None, headers=[
        ("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"), ("X-Gateway-User", "mallory"),
    ])
    result = await make(config).pipeline.on_head(v)
    assert isinstance(result, Admitted)
    assert ("x-gateway-user", "alice") in result.headers
    assert ("X-Gateway-User", "mallory") not in result.headers
    assert "x-forwarded-user" not in [n.lower() for n, _ in result.headers]


async def test_required_forwarding_headers_are_relayed_but_never_the_client_identity_header(make) -> None:
    """requiredHeaders are demanded of the ingress and handed on (the gateway demands them of the
    sidecar), except the identity header, which goes up only as the sidecar writes it."""
    config = deep_merge(TRUSTED_PROXY_CONFIG, {
        "sidecar": {"upstreamAuth": {"userHeader": "X-Gateway-User"}},
        "gateway": {"auth": {"trustedProxy": {"requiredHeaders": ["x-forwarded-proto", "x-forwarded-user"]}}},
    })
    v = view(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"),
                                              ("X-Forwarded-Proto", "https")])
    result = await make(config).pipeline.on_head(v)
    assert isinstance(result, Admitted)
    upstream = [(n.lower(), value) for n, value in result.headers]
    assert ("x-forwarded-proto", "https") in upstream and ("x-gateway-user", "alice") in upstream
    assert "x-forwarded-user" not in [n for n, _ in upstream]


async def test_trusted_proxy_no_scopes_header_means_owner(make) -> None:
    """Case 33: header absent → defaults (incl. admin) → owner; forwarded explicitly (F1)."""
    v = view(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice")])
    result = await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(v)
    assert isinstance(result, Admitted)
    assert result.scopes is not None and result.scopes.owner
    assert ("x-openclaw-scopes", ALL_DEFAULT_SCOPES) in result.headers


async def test_context_pins_apply_per_identity(make) -> None:
    config = deep_merge(TRUSTED_PROXY_CONFIG, {"sidecar": {"contextHeaders": {"pinned": {
        "alice": {"x-openclaw-message-channel": "webchat"}, "*": {"x-openclaw-message-channel": "none"},
    }}}})
    harness = make(config)
    for user, pinned in (("alice", "webchat"), ("bob", "none")):
        v = view(peer=PROXY, auth=None, headers=[
            ("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", user), ("x-openclaw-message-channel", "discord"),
        ])
        result = await harness.pipeline.on_head(v)
        assert isinstance(result, Admitted)
        channel = [v for n, v in result.headers if n.lower() == "x-openclaw-message-channel"]
        assert channel == [pinned]


async def test_an_e_mail_identity_in_another_case_gets_its_ceiling_and_pins(make) -> None:
    """The gateway serves ALICE@x.com as alice@x.com (identityScopes, its profile): her ceiling and
    pins held for her one spelling only, and another lifted her to operator.write (red team)."""
    config = deep_merge(TRUSTED_PROXY_CONFIG, {"sidecar": {
        "scopeCeilings": {"default": ["operator.read", "operator.write"], "identities": {"alice@x.com": ["operator.read"]}},
        "contextHeaders": {"pinned": {"alice@x.com": {"x-openclaw-message-channel": "webchat"}}},
    }})
    harness = make(config)
    for user in ("alice@x.com", "ALICE@x.com", "Alice@X.COM"):
        v = view(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", user),
                                                 ("x-openclaw-message-channel", "discord")])
        assert_refused(await harness.pipeline.on_head(v), envelopes.missing_scope(), "missing_scope")
        v = view(peer=PROXY, auth=None, method="GET", target="/sessions/k/history", headers=[
            ("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", user), ("x-openclaw-message-channel", "discord")])
        result = await harness.pipeline.on_head(v)
        assert isinstance(result, Admitted), user
        assert ("x-openclaw-scopes", "operator.read") in result.headers
        assert [v for n, v in result.headers if n.lower() == "x-openclaw-message-channel"] == ["webchat"]


async def test_scope_ceiling_caps_shared_secret(make) -> None:
    harness = make(extra={"sidecar": {"scopeCeilings": {"default": ["operator.write", "operator.read"]}}})
    result = await harness.pipeline.on_head(view())
    assert isinstance(result, Admitted)
    assert result.scopes is not None and not result.scopes.owner
    assert ("x-openclaw-scopes", "operator.read,operator.write") in result.headers


async def test_scope_ceiling_without_write_refuses(make) -> None:
    harness = make(extra={"sidecar": {"scopeCeilings": {"default": ["operator.read"]}}})
    assert_refused(await harness.pipeline.on_head(view()), envelopes.missing_scope(), "missing_scope")


SCOPED_READS = [
    ("GET", "/sessions/k/history", None), ("GET", "/v1/models", None), ("GET", "/control-ui-config.json", None),
    ("GET", "/avatar/main", None), ("GET", "/api/users/u/avatar", None), ("GET", "/__openclaw__/assistant-media", None),
    ("GET", "/api/chat/media/outgoing/s/a/full", "owner-access-typed"), ("GET", "/__openclaw__/workspace-icon/w", "owner-access"),
    ("GET", "/__openclaw__/channel-avatar/c", "owner-access"),
]


@pytest.mark.parametrize("method, target, owner", SCOPED_READS)
async def test_every_authenticated_read_needs_its_scope_and_owner_rows_admin(make, method: str, target: str,
                                                                             owner: str | None) -> None:
    """Behind the shared secret the gateway grants every scope: the ceiling is held here (red team)."""
    def head(*ceiling: str) -> Any:
        harness = make(extra={"sidecar": {"scopeCeilings": {"default": list(ceiling)}}})
        return harness.pipeline.on_head(view(method, target))

    assert_refused(await head(), envelopes.missing_scope("operator.read"), "missing_scope")
    reader = await head("operator.read")
    if owner is None:
        assert isinstance(reader, Admitted)
    else:
        assert_refused(reader, envelopes.ROUTE_ANSWERS[owner], "owner_required")
    assert isinstance(await head("operator.read", "operator.admin"), Admitted)


@pytest.mark.parametrize("method, scopes, answer", [
    ("config.get", ["operator.read"], None), ("config.get", [], (500, "missing scope: operator.read")),
    ("config.patch", ["operator.read"], (500, "missing scope: operator.admin")),  # the scope before the deny list
    ("config.patch", ["operator.admin"], (403, "method not allowed through this proxy: config.patch")),
    ("health", [], None), ("commands.list", [], None),  # the dispatcher's exemption; the plugin's own answer
    # not on the plugin's list: its own 400, whatever the caller holds (review: 500 "missing scope: node")
    ("node.event", ["operator.admin"], None), ("chat.send", ["operator.read"], None),
])
async def test_the_admin_rpc_judges_the_methods_its_plugin_dispatches(make, method: str, scopes: list[str],
                                                                      answer: tuple[int, str] | None) -> None:
    harness = make(extra={"sidecar": {"routes": {"allow": ["plugin:admin-http-rpc"]}, "scopeCeilings": {"default": scopes}}})
    head = await harness.pipeline.on_head(view("POST", "/api/v1/admin/rpc"))
    assert isinstance(head, Admitted)
    decision = await harness.pipeline.on_body(head, json.dumps({"id": "r1", "method": f" {method} ", "params": {}}).encode())
    if answer is None:
        assert isinstance(decision, Forward)
    else:
        assert isinstance(decision, Refuse)
        body = json.loads(decision.envelope.body)
        assert (decision.envelope.status, body["error"]["message"], body["id"]) == (*answer, "r1")


@pytest.mark.parametrize("target", ["/v1/chat/completions", "/v1/responses"])
async def test_an_agent_turn_behind_the_shared_secret_needs_admin(make, target: str) -> None:
    """The gateway makes every shared-secret caller owner, and these start an agent turn with the
    owner's tools: a writer capped below admin would run one as owner, so it is refused."""
    opened = {"allow": ["openai-chat-completions", "openai-responses"]}
    writer = make(extra={"sidecar": {"routes": opened, "scopeCeilings": {"default": ["operator.read", "operator.write"]}}})
    assert_refused(await writer.pipeline.on_head(view("POST", target)), envelopes.missing_scope("operator.admin"), "missing_scope")
    admin = make(extra={"sidecar": {"routes": opened, "scopeCeilings": {"default": ["operator.write", "operator.admin"]}}})
    assert isinstance(await admin.pipeline.on_head(view("POST", target)), Admitted)


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", WS_KEY)]


async def test_websocket_upgrade_on_other_route(make) -> None:
    result = await make().pipeline.on_head(view(method="GET", target="/ws", headers=UPGRADE))
    assert isinstance(result, Admitted)
    assert result.route == "rpc-websocket" and result.websocket and result.rpc
    assert ("Upgrade", "websocket") in result.headers and ("Connection", "upgrade") in result.headers


async def test_rpc_upgrade_without_credentials_waits_for_the_connect_frame(make) -> None:
    """Token mode: browsers cannot set headers on an upgrade; the frame carries the secret."""
    harness = make()
    result = await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
    assert isinstance(result, Admitted) and result.auth.method == "websocket-connect"
    assert not any(n.lower() == "authorization" for n, _ in result.headers)  # nothing authenticated yet
    assert ("x-openclaw-scopes", ",".join(DEFAULT_SCOPES)) in result.headers  # always exactly one, the most the caller may hold
    assert harness.failures.calls == []


async def test_a_client_holds_only_its_share_of_unauthenticated_rpc_upgrades(make) -> None:
    """The gateway's preauth budget is per address, and behind the sidecar every client is one
    address: each client may hold `unauthenticatedPerClient` RPC upgrades before its connect."""
    harness = make(extra={"sidecar": {"websocket": {"unauthenticatedPerClient": 2}}})

    async def upgrade(peer: str = CLIENT, auth: str | None = None) -> Refuse | Admitted:
        return await harness.pipeline.on_head(view(method="GET", target="/", auth=auth, headers=UPGRADE, peer=peer))

    first, second = await upgrade(), await upgrade()
    assert isinstance(first, Admitted) and isinstance(second, Admitted) and first.preauth is not None
    assert_refused(await upgrade(), envelopes.too_many_unauthenticated_sockets(), "preauth_sockets")
    assert isinstance(await upgrade(peer="203.0.113.99"), Admitted)  # another client's share
    # The gateway counts an upgrade until its connect, whatever the upgrade carried: so does the
    # sidecar (red team: 32 upgrades with the token on them were not counted here, and filled it).
    assert_refused(await upgrade(auth=f"Bearer {TOKEN}"), envelopes.too_many_unauthenticated_sockets(), "preauth_sockets")
    first.preauth.release()
    first.preauth.release()  # once, whichever way the socket ends
    assert isinstance(await upgrade(), Admitted)
    assert_refused(await upgrade(), envelopes.too_many_unauthenticated_sockets(), "preauth_sockets")
    # An IPv6 client holds a /64: its addresses share one share (red team: four addresses, 32 sockets)
    assert isinstance(await upgrade(peer="2001:db8::1"), Admitted) and isinstance(await upgrade(peer="2001:db8::2"), Admitted)
    assert_refused(await upgrade(peer="2001:db8::3"), envelopes.too_many_unauthenticated_sockets(), "preauth_sockets")
    assert isinstance(await upgrade(peer="2001:db8:0:1::1"), Admitted)


async def test_a_wrong_secret_in_the_connect_frame_gets_the_loopback_delay(make, monkeypatch) -> None:
    harness = make(failures=FakeFailureLimiter(delay_s=0.25))
    admitted = await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
    slept: list[float] = []

    async def record_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("sidecar.pipeline.asyncio.sleep", record_sleep)
    connect = json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4, "role": "operator", "auth": {"token": "wrong"},
        "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"}}}).encode()
    verdict = await harness.pipeline.rpc_session(admitted).client_frame(connect)
    assert verdict.verdict == "close" and slept == [0.25]
    assert ("record_failure", CLIENT) in harness.failures.calls


async def test_a_client_locked_out_of_upstream_guesses_learns_nothing_more_from_device_connects(tmp_path: Path) -> None:
    """The sidecar's secret is not the upstream one here. Wrong signed credentials lock the
    client's upstream-guess count, and its ordinary one (no double budget); after that every
    device connect is refused alike, the sidecar's own secret and the upstream one too (third
    review: its own still answered apart)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TOKEN_CONFIG))
    pipeline = Pipeline(load_config(path, environ={}), AuthFailureLimiter(storage_uri="memory://", max_attempts=3))

    async def device_connect(auth: dict[str, str]) -> str:
        admitted = await pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
        assert isinstance(admitted, Admitted) and admitted.preauth is not None
        admitted.preauth.release()
        connect = json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
            "minProtocol": 4, "maxProtocol": 4, "role": "operator", "scopes": ["operator.read"], "auth": auth,
            "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"},
            "device": {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}}}).encode()
        return (await pipeline.rpc_session(admitted).client_frame(connect)).reason

    assert await device_connect({"token": TOKEN}) == "device_above_ceiling"  # its own secret: no guess, not counted
    assert [await device_connect({"token": guess}) for guess in ("g1", "g2", "g3")] == ["token_mismatch"] * 3
    assert [await device_connect({"token": secret}) for secret in (TOKEN, UPSTREAM, "g4")] == ["rate_limited"] * 3
    # each wrong one may have been a guess at the sidecar's own secret too: that count is spent as well
    assert not (await pipeline.failure_limiter.check(CLIENT)).allowed


async def test_rpc_upgrade_with_a_wrong_bearer_is_refused_and_counted(make) -> None:
    harness = make()
    result = await harness.pipeline.on_head(view(method="GET", target="/", auth="Bearer wrong", headers=UPGRADE))
    assert_refused(result, envelopes.unauthorized(), "token_mismatch")
    assert ("record_failure", CLIENT) in harness.failures.calls


async def test_rpc_upgrade_never_forwards_the_client_address(make) -> None:
    """The gateway clears token-only connections' scopes when it sees a forwarded client (N3)."""
    config = deep_merge(TOKEN_CONFIG, {"gateway": {"trustedProxies": [PROXY]}})
    result = await make(config).pipeline.on_head(
        view(method="GET", target="/", peer=PROXY, headers=[("X-Forwarded-For", XFF_CLIENT), *UPGRADE]))
    assert isinstance(result, Admitted) and result.client_ip == XFF_CLIENT
    assert not any(n.lower() == "x-forwarded-for" for n, _ in result.headers)


@pytest.mark.parametrize("peer, forwarded, refusal", [
    ("127.0.0.1", [], None),  # a page on this host, straight to the port: a local client
    (PROXY, [("X-Forwarded-For", XFF_CLIENT)], "origin not allowed"),  # a page elsewhere, relayed
    ("127.0.0.1", [("X-Forwarded-For", XFF_CLIENT)], "origin not allowed"),  # a local proxy relaying: not direct
    (CLIENT, [], "origin not allowed"),
])
async def test_a_browsers_rpc_upgrade_is_judged_local_as_the_gateway_judges_it(make, peer: str, forwarded: list, refusal) -> None:
    """A loopback Origin passes the connect's origin check for a direct-local client only (the
    gateway's `ingressAttribution.kind === "direct-local"`); the sidecar judges it on the frame."""
    config = deep_merge(TOKEN_CONFIG, {"gateway": {"trustedProxies": [PROXY, "127.0.0.1"]}})
    result = await make(config).pipeline.on_head(
        view(method="GET", target="/", peer=peer, auth=None, headers=[*forwarded, ("Origin", "http://localhost:3000"), *UPGRADE]))
    assert isinstance(result, Admitted) and result.browser is not None
    assert result.browser.refusal == refusal


@pytest.mark.parametrize("change", [
    {"method": "POST"}, {"Sec-WebSocket-Version": "8"}, {"Sec-WebSocket-Key": "short"}, {"Sec-WebSocket-Key": None},
    {"Connection": "keep-alive"}, {"Content-Length": "5"},
])
async def test_only_rfc6455_upgrades_reach_the_rpc(make, change: dict) -> None:
    """Anything else could become a raw tunnel past frame inspection."""
    headers = dict(UPGRADE)
    method = change.pop("method", "GET")
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    result = await make().pipeline.on_head(view(method=method, target="/", headers=list(headers.items())))
    assert_refused(result, BAD_HEAD("not an RFC 6455 WebSocket upgrade"), "invalid_websocket_upgrade")


@pytest.mark.parametrize("mode, admitted", [("off", False), ("passthrough", True)])
async def test_websocket_modes(make, mode: str, admitted: bool) -> None:
    harness = make(extra={"sidecar": {"websocket": {"mode": mode}}})
    result = await harness.pipeline.on_head(view(method="GET", target="/", headers=UPGRADE))
    if admitted:
        assert isinstance(result, Admitted) and not result.rpc
        anonymous = await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
        assert_refused(anonymous, envelopes.unauthorized(), "credential_missing")  # frames unread: auth at the upgrade
    else:
        assert_refused(result, envelopes.route_not_found(), "websocket_off")


@pytest.mark.parametrize("upgrade", ["h2c", "websocket2", "TLS/1.2"])
async def test_upgrades_other_than_websocket_get_the_gateways_400(make, upgrade: str) -> None:
    v = view(method="GET", target="/", headers=[("Connection", "Upgrade"), ("Upgrade", upgrade)])
    assert_refused(await make().pipeline.on_head(v), envelopes.websocket_upgrade_not_supported(), "unsupported_upgrade")


# ---- other routes: the gateway's route table ------------------------------------------------------


@pytest.mark.parametrize("target, canonical, route", [
    ("/healthz", "/healthz", "health"), ("/readyz", "/readyz", "readiness"), ("/x/../healthz", "/healthz", "health"),
    ("/", "/", "control-ui"), ("/assets/index-abc.js", "/assets/index-abc.js", "control-ui"),
    ("/share/agent/main", "/share/agent/main", "control-ui-documents"),
])
async def test_public_routes_serve_plain_reads_without_credentials(make, target: str, canonical: str, route: str) -> None:
    harness = make()
    result = await harness.pipeline.on_head(view(method="GET", target=target, auth=None))
    assert isinstance(result, Admitted)
    assert (result.route, result.target, result.auth.method, result.scopes) == (route, canonical, "unauthenticated-route", None)
    assert ("x-openclaw-scopes", "") in result.headers  # explicit, empty: never the defaults (F1)
    assert not any(n.lower() == "authorization" for n, _ in result.headers)  # never lent our credential
    assert harness.failures.calls == []


@pytest.mark.parametrize("target", ["/v1/models", "/sessions/x/history", "/control-ui-config.json", "/__openclaw__/assistant-media?source=a.png"])
async def test_read_routes_require_auth(make, target: str) -> None:
    """Reads sit behind the sidecar's authentication, whatever the gateway would do there."""
    result = await make().pipeline.on_head(view(method="GET", target=target, auth=None))
    assert_refused(result, envelopes.unauthorized(), "credential_missing")


@pytest.mark.parametrize("target, route", [("/v1/models", "openai-models"), ("/sessions/main/history", "session-history")])
async def test_authenticated_read_is_forwarded_with_our_credential(make, target: str, route: str) -> None:
    result = await make().pipeline.on_head(view(method="GET", target=target))
    assert isinstance(result, Admitted) and result.route == route
    assert ("Authorization", f"Bearer {UPSTREAM}") in result.headers


@pytest.mark.parametrize("method, target, reason", [
    # look-alikes of the tools route are no route at all (E4, E9): the gateway's 404
    ("POST", "/tools/invoke/", "unknown_route"), ("POST", "/TOOLS/INVOKE", "unknown_route"), ("POST", "/tools//invoke", "unknown_route"),
    ("POST", "/tools%2finvoke", "unknown_route"), ("POST", "/tools/invoke;a=b", "unknown_route"), ("POST", "/nope", "unknown_route"),
    ("GET", "/api/nope", "unknown_route"), ("GET", "/healthz/x", "unknown_route"),
    # routes that act, pair, or take node, worker or URL-borne credentials
    ("POST", "/v1/chat/completions", "route_refused"), ("POST", "/v1/responses", "route_refused"),
    ("POST", "/v1/embeddings", "route_refused"), ("POST", "/sessions/x/kill", "route_refused"),
    ("POST", "/hooks/agent", "unknown_route"),  # hooks are off by default: no route there
    ("GET", "/j/ABCDEF", "route_refused"), ("GET", "/x/y/j/ABCDEF", "route_refused"),
    ("POST", "/api/nodes/watch/challenge", "route_refused"), ("GET", "/__openclaw__/worker-bundle/x", "route_refused"),
    ("POST", "/api/v1/admin/rpc", "route_refused"), ("POST", "/API/V1/Admin/RPC", "route_refused"),
    ("POST", "/x/..%2fapi/v1/admin/rpc", "route_refused"), ("GET", "/plugins/%2567eolocation/lookup", "route_refused"),
    ("POST", "/__openclaw__/assistant-media?meta=1&allow=1", "route_refused"), ("GET", "/__openclaw__/board/s/n/index.html", "route_refused"),
    ("GET", "/share/session?token=t", "query_credential"), ("GET", "/oauth/provider/callback", "route_refused"),
    # credentials in the query string and node capabilities
    ("GET", "/__openclaw__/assistant-media?source=a.png&token=t", "query_credential"),
    ("GET", "/sessions/main/history?token=t", "query_credential"),
    ("GET", "/?oc_cap=abc", "node_capability"), ("GET", "/__openclaw__/cap/abc/sessions/main/history", "node_capability"),
    # a method the row's handler does not serve, where it answers 404 (or its route is refused)
    ("DELETE", "/oauth/mcp/callback", "method_not_served"), ("GET", "/v1/chat/completions", "method_not_served"),
    ("GET", "/sessions/main/kill", "method_not_served"),
    # ... on routes the default policy lets in, whose handlers answer other methods 404, not 405
    ("POST", "/control-ui-config.json", "method_not_served"), ("DELETE", "/avatar/x", "method_not_served"),
    ("PUT", "/approve", "method_not_served"),
])
async def test_routes_outside_the_default_policy_get_the_gateways_404(make, method: str, target: str, reason: str) -> None:
    """With credentials and all: refused before anything reaches the gateway."""
    harness = make()
    assert_refused(await harness.pipeline.on_head(view(method=method, target=target)), envelopes.route_not_found(), reason)
    assert harness.failures.calls == []


CHAT_COMPLETIONS_ON = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}}}
RESPONSES_ON = {"gateway": {"http": {"endpoints": {"responses": {"enabled": True}}}}}
MCP_APPS_ON = {"mcp": {"apps": {"enabled": True}}}
ALL_ON_BUT_CHAT_COMPLETIONS = deep_merge(deep_merge(RESPONSES_ON, MCP_APPS_ON), {"hooks": {"enabled": True}})


@pytest.mark.parametrize("switches, method, target, reason", [
    # the gateway's defaults: no handler there, so no route, even for a caller without a token (never 401)
    ({}, "GET", "/v1/models", "unknown_route"), ({}, "POST", "/v1/embeddings", "unknown_route"),
    ({}, "POST", "/v1/chat/completions", "unknown_route"), ({}, "POST", "/v1/responses", "unknown_route"),
    ({}, "GET", "/__openclaw__/mcp-app/shell", "unknown_route"),
    # each switch serves its own rows; the models and embeddings rows follow either OpenAI switch
    (CHAT_COMPLETIONS_ON, "GET", "/v1/models", "credential_missing"), (RESPONSES_ON, "GET", "/v1/models", "credential_missing"),
    (CHAT_COMPLETIONS_ON, "POST", "/v1/embeddings", "route_refused"), (RESPONSES_ON, "POST", "/v1/embeddings", "route_refused"),
    (CHAT_COMPLETIONS_ON, "POST", "/v1/chat/completions", "route_refused"), (CHAT_COMPLETIONS_ON, "POST", "/v1/responses", "unknown_route"),
    (RESPONSES_ON, "POST", "/v1/responses", "route_refused"), (RESPONSES_ON, "POST", "/v1/chat/completions", "unknown_route"),
    (MCP_APPS_ON, "GET", "/__openclaw__/mcp-app/shell", "route_refused"),
    # a row's switch the only one off: still no route (every switch off, not more than its own)
    (ALL_ON_BUT_CHAT_COMPLETIONS, "POST", "/v1/chat/completions", "unknown_route"),
    (ALL_ON_BUT_CHAT_COMPLETIONS, "POST", "/v1/responses", "route_refused"),
])
async def test_rows_follow_the_switches_in_the_gateways_config(make, switches, method, target, reason) -> None:
    """A row the gateway's config switches off is no route, as the gateway skips its handler."""
    harness = make(DEFAULT_ROUTES_CONFIG, extra=switches)
    result = await harness.pipeline.on_head(view(method=method, target=target, auth=None))
    expected = envelopes.unauthorized() if reason == "credential_missing" else envelopes.route_not_found()
    assert_refused(result, expected, reason)


@pytest.mark.parametrize("control_ui, plugin, method, target, admitted", [
    # the Control UI serves these paths when the plugin is not loaded (the plugin router matched case-insensitively)
    ("off", "plugin:geolocation", "GET", "/Plugins/Geolocation/lookup", False),
    ("off", "plugin:geolocation", "GET", "/plugins/geolocation/lookup", True),  # a path the UI declines
    ("authenticated", "plugin:geolocation", "GET", "/Plugins/Geolocation/lookup", True),  # authenticated either way
    ("authenticated", "plugin:telegram-miniapp", "GET", "/__openclaw_tg_miniapp/app", False),  # its own credential: not ours
    ("authenticated", "plugin:telegram-miniapp", "POST", "/__openclaw_tg_miniapp/app", True),  # the UI serves no POST
    ("public", "plugin:telegram-miniapp", "GET", "/__openclaw_tg_miniapp/app", True),
    # however the path is spelt: the catch-all serves `//`, escapes and `;` alike (red team)
    ("off", "plugin:browser-extension", "GET", "/browser//extension", False),
    ("off", "plugin:browser-extension", "GET", "/browser/%65xtension", False),
    ("off", "plugin:geolocation", "GET", "/Plugins/Geolocation/x;/lookup", False),
    # the canvas host takes its paths only with a node capability: without one, the catch-all does
    ("off", "canvas", "GET", "/__openclaw__/canvas/x", False),
    ("authenticated", "canvas", "GET", "/__openclaw__/canvas/x", False),
    ("public", "canvas", "GET", "/__openclaw__/canvas/x", True),
    # ...but the canvas plugin always answers its A2UI route itself (review: a node's bundle was refused)
    ("off", "canvas", "GET", "/__openclaw__/a2ui/a2ui.bundle.js", True),
    ("authenticated", "canvas", "GET", "/__OPENCLAW__/A2UI/a2ui.bundle.js", True),
])
async def test_an_opened_plugin_path_the_control_ui_would_serve_meets_its_policy(make, control_ui, plugin, method, target,
                                                                                admitted) -> None:
    """An opened plugin that is not loaded leaves its path to the Control UI catch-all: the path
    takes the stricter of the two policies (review: `/Plugins/Geolocation/lookup` carried the UI
    past `routes.controlUi: off`)."""
    harness = make(extra={"sidecar": {"routes": {"allow": [plugin], "controlUi": control_ui}}})
    result = await harness.pipeline.on_head(view(method=method, target=target, headers=[("Content-Length", "0")]))
    if admitted:
        assert isinstance(result, Admitted) and result.route == plugin, result
    else:
        assert_refused(result, envelopes.route_not_found(), "route_refused")


@pytest.mark.parametrize("route, target, public", [
    ("device-pairing-join", "/j/ABC", True),  # the gateway serves it to anyone: so, opened, does the sidecar
    ("plugin:channels", "/api/channels/x", False),  # behind the gateway's credential: opened, still behind ours
    ("plugin:geolocation", "/plugins/geolocation/lookup", False),
    ("plugin:admin-http-rpc", "/api/v1/admin/rpc", False),
])
async def test_a_route_opened_by_name_is_as_public_as_the_gateway_makes_it(make, route: str, target: str, public: bool) -> None:
    """Opening a route refused by default lets callers in as the gateway lets them in: a read of
    a row behind the gateway's credential must still bring one, or a gateway left without auth
    behind the sidecar would serve it to anyone."""
    harness = make(extra={"sidecar": {"routes": {"allow": [route], "controlUi": "authenticated"}}})
    result = await harness.pipeline.on_head(view(method="GET", target=target, auth=None))
    if public:
        assert isinstance(result, Admitted) and result.route == route and result.auth.method == PUBLIC_READ_METHOD
    else:
        assert_refused(result, envelopes.unauthorized(), "credential_missing")


async def test_a_route_opened_by_name_and_switched_off_at_the_gateway_is_no_route(make) -> None:
    harness = make(DEFAULT_ROUTES_CONFIG, extra={"sidecar": {"routes": {"allow": ["openai-chat-completions"]}}})
    result = await harness.pipeline.on_head(view(target="/v1/chat/completions"))
    assert_refused(result, envelopes.route_not_found(), "unknown_route")


@pytest.mark.parametrize("method, target, allow, opened", [
    ("POST", "/healthz", "GET, HEAD", ()), ("DELETE", "/readyz", "GET, HEAD", ()),
    ("POST", "/sessions/main/history", "GET", ()), ("HEAD", "/sessions/main/history", "GET", ()),
    ("PUT", "/api/users/u/avatar", "GET, HEAD", ()),
    ("GET", "/sessions/main/kill", "POST", ("session-kill",)),
])
async def test_a_method_a_route_does_not_serve_gets_its_405_before_any_credential(make, method, target, allow, opened) -> None:
    """As the gateway's handlers answer it, with their Allow; a route the sidecar refuses stays 404."""
    harness = make(extra={"sidecar": {"routes": {"allow": list(opened)}}})
    refused = await harness.pipeline.on_head(view(method=method, target=target, auth=None))
    assert_refused(refused, envelopes.method_not_allowed(allow), "method_not_allowed")
    assert harness.failures.calls == []


@pytest.mark.parametrize("target", [
    "/__openclaw__/cap/x/tools/invoke", "/__openclaw__/cap/%78/tools/invoke", "/x/../__openclaw__/cap/x/tools/invoke",
    "/__openclaw__/cap/x/tools/./invoke", "http://localhost/__openclaw__/cap/x/tools/invoke", "/tools/invoke?oc_cap=x",
])
async def test_capability_spellings_of_the_tools_route_are_non_canonical(make, target: str) -> None:
    """The gateway rewrites `/__openclaw__/cap/<seg>/<rest>` to `/<rest>?oc_cap=<seg>` before routing."""
    harness = make(extra={"sidecar": {"routes": {"allow": ["node-capability"]}}})
    result = await harness.pipeline.on_head(view(target=target, host="localhost"))
    assert_refused(result, envelopes.invalid_request_url(), "non_canonical_target")


@pytest.mark.parametrize("target", ["/__openclaw__/cap/%20/x", "/__openclaw__/cap//tools/invoke", "/__openclaw__/cap/x"])
async def test_malformed_capability_paths_get_the_gateways_401(make, target: str) -> None:
    result = await make().pipeline.on_head(view(method="GET", target=target))
    assert_refused(result, envelopes.unauthorized(), "malformed_capability_path")


async def test_opened_route_gets_gateway_auth_and_our_credential(make) -> None:
    harness = make(extra={"sidecar": {"routes": {"allow": ["openai-chat-completions"]}}})
    assert_refused(await harness.pipeline.on_head(view(target="/v1/chat/completions", auth=None)), envelopes.unauthorized(), "credential_missing")
    result = await harness.pipeline.on_head(view(target="/v1/chat/completions"))
    assert isinstance(result, Admitted) and result.route == "openai-chat-completions"
    assert ("Authorization", f"Bearer {UPSTREAM}") in result.headers


async def test_opened_route_with_its_own_credential_relays_it_unread(make) -> None:
    """Hooks take their own token: the sidecar neither checks it as its own nor replaces it."""
    harness = make(extra={"sidecar": {"routes": {"allow": ["hooks"]}}, "hooks": {"enabled": True, "path": "/in/"}})
    v = view(target="/in/agent", auth="Bearer hooks-secret", headers=[("X-OpenClaw-Token", "hooks-secret")])
    result = await harness.pipeline.on_head(v)
    assert isinstance(result, Admitted) and result.route == "hooks" and result.auth.method == "route-credential"
    assert ("Authorization", "Bearer hooks-secret") in result.headers
    assert ("X-OpenClaw-Token", "hooks-secret") in result.headers
    assert ("x-openclaw-scopes", "") in result.headers
    assert harness.failures.calls == []


async def test_hooks_path_comes_from_the_gateway_config(make) -> None:
    harness = make(extra={"hooks": {"enabled": True, "path": "/in"}})
    assert_refused(await harness.pipeline.on_head(view(target="/in/wake")), envelopes.route_not_found(), "route_refused")


@pytest.mark.parametrize("hooks, hooks_route", [
    ({"enabled": True, "path": "//"}, True),  # the gateway strips every trailing slash: a base of "", under which all lies
    ({"enabled": True, "path": "\ufeff/tools"}, True),  # JavaScript's trim takes the byte-order mark
    ({"enabled": False, "path": "/tools"}, False),  # hooks off: the path is the tools route's again
])
async def test_the_hooks_path_is_laid_out_as_the_gateway_lays_it_out(make, hooks: dict, hooks_route: bool) -> None:
    """Spelt otherwise than the sidecar read it, the gateway's hooks handler took calls the sidecar
    had judged as /tools/invoke (red team: a wake hook ran; with hooks off, the sidecar refused the tool)."""
    result = await make(extra={"hooks": hooks}).pipeline.on_head(view(target="/tools/invoke"))
    if hooks_route:
        assert_refused(result, envelopes.route_not_found(), "route_refused")
    else:
        assert isinstance(result, Admitted) and result.route == "tools-invoke"


async def test_control_ui_base_path_moves_the_ui(make) -> None:
    harness = make(extra={"gateway": {"controlUi": {"basePath": "/admin/"}}})
    ok = await harness.pipeline.on_head(view(method="GET", target="/admin/", auth=None))
    assert isinstance(ok, Admitted) and ok.route == "control-ui"
    assert_refused(await harness.pipeline.on_head(view(method="GET", target="/", auth=None)), envelopes.route_not_found(), "unknown_route")


@pytest.mark.parametrize("setting, outcome", [("authenticated", "credential_missing"), ("off", "route_refused")])
async def test_control_ui_policy_is_configurable(make, setting: str, outcome: str) -> None:
    harness = make(extra={"sidecar": {"routes": {"controlUi": setting}}})
    result = await harness.pipeline.on_head(view(method="GET", target="/", auth=None))
    expected = envelopes.unauthorized() if outcome == "credential_missing" else envelopes.route_not_found()
    assert_refused(result, expected, outcome)


async def test_public_route_with_a_body_needs_credentials(make) -> None:
    result = await make().pipeline.on_head(view(method="GET", target="/healthz", auth=None, headers=[("Content-Length", "3")]))
    assert_refused(result, envelopes.unauthorized(), "credential_missing")


@pytest.mark.parametrize("target", ["/v1/models", "/v1/chat/completions", "/v1", "/__openclaw__/cap/x/v1/models"])
async def test_denied_route_prefix_is_404(make, target: str) -> None:
    harness = make(extra={"sidecar": {"routes": {"deny": ["/v1"], "allow": ["node-capability"]}}})
    assert_refused(await harness.pipeline.on_head(view(method="GET", target=target)), envelopes.route_not_found(), "route_denied")


async def test_unauthenticated_route_still_requires_attribution(make) -> None:
    result = await make().pipeline.on_head(view(method="GET", target="/healthz", auth=None, headers=[("X-Forwarded-For", "1.2.3.4")]))
    assert_refused(result, envelopes.proxy_attribution_required(), "proxy_attribution_required")


# ---- auth and the failure limiter ----------------------------------------------------------------


async def test_failure_is_recorded_with_delay(make) -> None:
    harness = make(failures=FakeFailureLimiter(delay_s=0.25))
    result = await harness.pipeline.on_head(view(auth="Bearer wrong"))
    assert_refused(result, envelopes.unauthorized(), "token_mismatch")
    assert result.delay_s == 0.25
    assert harness.failures.calls == [("check", CLIENT), ("record_failure", CLIENT)]


@pytest.mark.parametrize("auth", [None, "Basic dDpU", "Bearer   "])
async def test_missing_credential_is_not_counted(make, auth: str | None) -> None:
    """Case 17: no Authorization (or no Bearer) → 401, never counted."""
    harness = make()
    result = await harness.pipeline.on_head(view(auth=auth))
    assert_refused(result, envelopes.unauthorized(), "credential_missing")
    assert result.delay_s == 0
    assert harness.failures.calls == [("check", CLIENT)]


async def test_success_resets_the_key(make) -> None:
    """Case 16: a success resets."""
    harness = make()
    assert isinstance(await harness.pipeline.on_head(view()), Admitted)
    assert harness.failures.calls == [("check", CLIENT), ("reset", CLIENT)]


async def test_a_success_has_nothing_to_reset_when_the_check_found_no_failures(make) -> None:
    """The limiter's check says when the client has no failure on record: the success after it
    skips the reset (on Redis, a round trip on nearly every call)."""
    harness = make(failures=FakeFailureLimiter(Verdict(no_failures=True)))
    assert isinstance(await harness.pipeline.on_head(view()), Admitted)
    assert harness.failures.calls == [("check", CLIENT)]
    result = await harness.pipeline.on_head(view(auth="Bearer wrong"))
    assert_refused(result, envelopes.unauthorized(), "token_mismatch")
    assert harness.failures.calls == [("check", CLIENT), ("check", CLIENT), ("record_failure", CLIENT)]


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}", "Bearer wrong", None])
async def test_locked_key_gets_429_even_with_the_right_token(make, auth: str | None) -> None:
    """Cases 15, 18: the lock is checked before the credential."""
    harness = make(failures=FakeFailureLimiter(Verdict(allowed=False, retry_after_s=300)))
    result = await harness.pipeline.on_head(view(auth=auth))
    assert_refused(result, envelopes.rate_limited(300), "rate_limited")
    assert dict(result.envelope.headers)["Retry-After"] == "300"
    assert harness.failures.calls == [("check", CLIENT)]


async def test_limiter_outage_is_503(make) -> None:
    harness = make(failures=FakeFailureLimiter(Verdict(allowed=False, unavailable=True)))
    assert_refused(await harness.pipeline.on_head(view()), envelopes.limiter_unavailable(), "limiter_unavailable")


async def test_limiter_key_is_the_attributed_client(make) -> None:
    """Case 30: failures behind a trusted proxy lock the forwarded client, not the proxy."""
    config = deep_merge(TOKEN_CONFIG, {"gateway": {"trustedProxies": [PROXY, "198.51.100.6"]}})
    harness = make(config)
    result = await harness.pipeline.on_head(view(peer=PROXY, auth="Bearer wrong",
                                                 headers=[("X-Forwarded-For", f"{XFF_CLIENT}, 198.51.100.6")]))
    assert_refused(result, envelopes.unauthorized(), "token_mismatch")
    assert harness.failures.calls == [("check", XFF_CLIENT), ("record_failure", XFF_CLIENT)]


@pytest.mark.parametrize(
    "config, kwargs",
    [
        pytest.param(NONE_CONFIG, dict(auth="Bearer wrong"), id="24-none-mode"),
        pytest.param(TRUSTED_PROXY_CONFIG, dict(peer=PROXY, auth="Bearer x", headers=[("X-Forwarded-For", XFF_CLIENT)]), id="trusted-proxy-fail"),
        pytest.param(TRUSTED_PROXY_CONFIG, dict(peer=PROXY, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "a")]), id="trusted-proxy-ok"),
    ],
)
async def test_none_and_trusted_proxy_never_touch_the_limiter(make, config: dict, kwargs: dict) -> None:
    harness = make(config, failures=FakeFailureLimiter(Verdict(allowed=False, retry_after_s=5)))
    result = await harness.pipeline.on_head(view(**kwargs))
    assert not (isinstance(result, Refuse) and result.reason == "rate_limited")
    assert harness.failures.calls == []


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(peer="10.0.0.9", auth=None), "trusted_proxy_untrusted_source"),  # case 34
        (dict(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT)]), "trusted_proxy_user_missing"),  # case 35
        (dict(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "")]), "trusted_proxy_user_missing"),
        (dict(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "a"),
                                              ("Origin", "https://evil.example")]), "trusted_proxy_origin_not_allowed"),
    ],
)
async def test_trusted_proxy_refusals(make, kwargs: dict, reason: str) -> None:
    assert_refused(await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(view(**kwargs)), envelopes.unauthorized(), reason)


async def test_trusted_proxy_with_attribution_failure_is_403(make) -> None:
    """Case 28: a trusted proxy with no XFF is unattributable → 403 before auth."""
    result = await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(view(peer=PROXY, auth=None, headers=[("X-Forwarded-User", "a")]))
    assert_refused(result, envelopes.proxy_attribution_required(), "proxy_attribution_required")


async def test_trusted_proxy_local_password_fallback_is_limited(make) -> None:
    """Case 45: loopback, no forwarded headers, password set → password auth, with rate limiting."""
    config = deep_merge(TRUSTED_PROXY_CONFIG, {"gateway": {"auth": {"password": "P"}}})
    harness = make(config)
    ok = await harness.pipeline.on_head(view(peer="127.0.0.1", auth="Bearer P"))
    assert isinstance(ok, Admitted)
    assert ok.auth.method == "password" and ok.scopes is not None and ok.scopes.owner
    bad = await harness.pipeline.on_head(view(peer="127.0.0.1", auth="Bearer nope"))
    assert_refused(bad, envelopes.unauthorized(), "password_mismatch")
    assert harness.failures.calls == [("check", "127.0.0.1"), ("reset", "127.0.0.1"), ("check", "127.0.0.1"), ("record_failure", "127.0.0.1")]


async def test_literal_undefined_token_refuses_everything(make) -> None:
    """Case 14."""
    harness = make({"gateway": {"auth": {"token": "undefined"}}})
    for auth in ("Bearer undefined", "Bearer ", None):
        result = await harness.pipeline.on_head(view(auth=auth))
        assert isinstance(result, Refuse) and result.envelope == envelopes.unauthorized()


async def test_password_mode(make) -> None:
    """Case 11."""
    harness = make({"gateway": {"auth": {"mode": "password", "password": "P", "token": TOKEN}}})
    assert isinstance(await harness.pipeline.on_head(view(auth="Bearer P")), Admitted)
    assert_refused(await harness.pipeline.on_head(view(auth=f"Bearer {TOKEN}")), envelopes.unauthorized(), "password_mismatch")


# ---- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scopes, admitted",
    [
        ("", False),  # case 39
        ("operator.read", False),  # case 40
        ("operator.read operator.write", False),  # case 41
        ("OPERATOR.WRITE", False),  # case 42
        ("  operator.read , operator.write ", True),  # case 43
        ("operator.admin", True),
    ],
)
@pytest.mark.parametrize("mode", ["none", "trusted-proxy"])
async def test_declared_scopes_gate(make, mode: str, scopes: str, admitted: bool) -> None:
    if mode == "none":
        harness, kwargs = make(NONE_CONFIG), dict(auth=None)
    else:
        harness = make(TRUSTED_PROXY_CONFIG)
        kwargs = dict(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice")])
    kwargs.setdefault("headers", []).append(("x-openclaw-scopes", scopes))
    result = await harness.pipeline.on_head(view(**kwargs))
    if admitted:
        assert isinstance(result, Admitted)
    else:
        assert_refused(result, envelopes.missing_scope(), "missing_scope")


# ---- stage ORDER ----------------------------------------------------------------------------------

ORDER = [
    # (id, config, view kwargs, expected envelope, reason): the request breaks several rules at once
    ("malformed-before-attribution", None, dict(headers=[("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")]),
     BAD_HEAD("header 'x-forwarded-for' is repeated"), "malformed_head"),
    ("malformed-before-405", None, dict(method="GET", auth=None, headers=[("x_openclaw_scopes", "x")]),
     BAD_HEAD("header name 'x_openclaw_scopes' aliases a protected header"), "malformed_head"),
    ("417-before-host", None, dict(host="gw/x", headers=[("Expect", "nope")]), envelopes.expectation_failed(), "expectation_failed"),
    ("host-before-target", None, dict(host="gw/x", target="/tools/./invoke"), BAD_HEAD("Host must be host[:port]"), "invalid_host"),
    ("invalid-url-before-attribution", None, dict(target="/tools/./invoke", headers=[("X-Forwarded-For", "1.1.1.1")]),
     envelopes.invalid_request_url(), "non_canonical_target"),
    ("invalid-url-before-405", None, dict(method="GET", auth=None, target="/tools/%2e/invoke"), envelopes.invalid_request_url(), "non_canonical_target"),
    ("route-deny-before-attribution", {"sidecar": {"routes": {"deny": ["/v1"]}}}, dict(target="/v1/models", headers=[("X-Real-IP", "1.1.1.1")]),
     envelopes.route_not_found(), "route_denied"),
    ("403-attribution-before-405", None, dict(method="GET", auth=None, headers=[("X-Forwarded-For", "1.1.1.1")]),
     envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("403-attribution-before-401", None, dict(auth=None, headers=[("X-Forwarded-Proto", "https")]),
     envelopes.proxy_attribution_required(), "proxy_attribution_required"),
    ("405-before-401", None, dict(method="GET", auth=None), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("405-before-401-bad-token", None, dict(method="DELETE", auth="Bearer wrong"), envelopes.method_not_allowed("POST"), "method_not_allowed"),
    ("12-401-before-413", None, dict(auth="Bearer wrong", headers=[("Content-Length", "5242880")]), envelopes.unauthorized(), "token_mismatch"),
    ("401-missing-before-413", None, dict(auth=None, headers=[("Content-Length", "5242880")]), envelopes.unauthorized(), "credential_missing"),
]


@pytest.mark.parametrize("config, kwargs, envelope, reason", [c[1:] for c in ORDER], ids=[c[0] for c in ORDER])
async def test_stage_order(make, config: dict | None, kwargs: dict, envelope: Envelope, reason: str) -> None:
    harness = make(extra=config) if config else make()
    assert_refused(await harness.pipeline.on_head(view(**kwargs)), envelope, reason)


async def test_funnel_before_405(make) -> None:
    """Funnel requests are 401 in every mode (sidecar hardening, corpus I2), before the method check."""
    config = deep_merge(TOKEN_CONFIG, {"gateway": {"trustedProxies": [PROXY]}})
    v = view(method="GET", peer=PROXY, headers=[("X-Forwarded-For", XFF_CLIENT), ("Tailscale-Funnel-Request", "?1")])
    assert_refused(await make(config).pipeline.on_head(v), envelopes.unauthorized(), "funnel_request")


async def test_funnel_in_none_mode(make) -> None:
    config = deep_merge(NONE_CONFIG, {"gateway": {"trustedProxies": [PROXY]}})
    v = view(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("Tailscale-Funnel-Request", "?1")])
    assert_refused(await make(config).pipeline.on_head(v), envelopes.unauthorized(), "funnel_request")


async def test_429_before_401(make) -> None:
    harness = make(failures=FakeFailureLimiter(Verdict(allowed=False, retry_after_s=1)))
    assert_refused(await harness.pipeline.on_head(view(auth=None)), envelopes.rate_limited(1), "rate_limited")


async def test_405_never_consults_the_limiter(make) -> None:
    harness = make(failures=FakeFailureLimiter(Verdict(allowed=False, retry_after_s=1)))
    assert_refused(await harness.pipeline.on_head(view(method="GET")), envelopes.method_not_allowed("POST"), "method_not_allowed")
    assert harness.failures.calls == []


async def test_403_scope_before_413(make) -> None:
    v = view(peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"),
                                             ("x-openclaw-scopes", "operator.read"), ("Content-Length", "5242880")])
    assert_refused(await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(v), envelopes.missing_scope(), "missing_scope")


async def test_13_bad_token_with_invalid_json_is_401_and_body_never_read(make) -> None:
    """Case 13: the head refusal comes first; on_body is never reached."""
    result = await make().pipeline.on_head(view(auth="Bearer wrong", headers=[("Content-Length", "8")]))
    assert_refused(result, envelopes.unauthorized(), "token_mismatch")


# ---- body stage ---------------------------------------------------------------------------------


async def admitted(harness: Harness, **kwargs: Any) -> Admitted:
    result = await harness.pipeline.on_head(view(**kwargs))
    assert isinstance(result, Admitted), result
    return result


BODY_REFUSALS = [
    # (id, body, expected envelope, reason)
    ("49-invalid-json", b'{"tool":', None, "invalid_json"),
    ("nan", b'{"tool":"agents_list","x":NaN}', None, "invalid_json"),
    ("50-empty", b"", envelopes.missing_tool_name(), "missing_tool_name"),
    ("51-whitespace-tool", b'{"tool":"   "}', envelopes.missing_tool_name(), "missing_tool_name"),
    ("51-array", b"[]", envelopes.missing_tool_name(), "missing_tool_name"),
    ("51-null", b"null", envelopes.missing_tool_name(), "missing_tool_name"),
    ("51-string", b'"x"', envelopes.missing_tool_name(), "missing_tool_name"),
    ("52-blank-name", b'{"name":"","tool":"agents_list"}', envelopes.missing_tool_name(), "missing_tool_name"),
    ("58-sessions-spawn", b'{"tool":"sessions_spawn"}', envelopes.tool_not_available("sessions_spawn"), "tool_denied"),
    ("63-cron", b'{"tool":"cron"}', envelopes.tool_not_available("automations"), "tool_denied"),
    ("64-exec", b'{"tool":"exec"}', envelopes.tool_not_available("exec"), "tool_denied"),
    ("64-apply-patch", b'{"tool":"apply_patch"}', envelopes.tool_not_available("apply_patch"), "tool_denied"),
    ("64-nodes", b'{"tool":"nodes"}', envelopes.tool_not_available("nodes"), "tool_denied"),
    # The gateway looks names up exactly: other spellings get its 404 naming them as sent.
    ("J1-bash", b'{"tool":"bash"}', envelopes.tool_not_available("bash"), "tool_denied"),
    ("J1-EXEC", b'{"tool":" EXEC "}', envelopes.tool_not_available("EXEC"), "tool_denied"),
    ("J1-Agents_List", b'{"tool":"Agents_List"}', envelopes.tool_not_available("Agents_List"), "tool_denied"),
    ("J4-fullwidth", '{"tool":"ｅｘｅｃ"}'.encode(), envelopes.tool_not_available("ｅｘｅｃ"), "tool_denied"),
    ("J4-zero-width", '{"tool":"agents\u200b_list"}'.encode(), envelopes.tool_not_available("agents\u200b_list"), "tool_denied"),
    ("name-tool-differential", b'{"name":"exec","tool":"agents_list"}', envelopes.tool_not_available("exec"), "tool_denied"),
    ("over-limit-no-declared-length", b"{" + b" " * MAX_BODY_BYTES + b"}", envelopes.payload_too_large(), "payload_too_large"),
]


@pytest.mark.parametrize("body, envelope, reason", [c[1:] for c in BODY_REFUSALS], ids=[c[0] for c in BODY_REFUSALS])
async def test_body_refusal(make, body: bytes, envelope: Envelope | None, reason: str) -> None:
    requests = FakeRequestLimiter()
    harness = make(requests=requests)
    result = await harness.pipeline.on_body(await admitted(harness), body)
    assert isinstance(result, Refuse)
    assert result.reason == reason
    if envelope is None:  # JSON.parse message text is version-specific: match status and type (open question 6)
        assert result.envelope.status == 400
        assert json.loads(result.envelope.body)["error"]["type"] == "invalid_request_error"
        assert "ok" not in json.loads(result.envelope.body)
    else:
        assert result.envelope == envelope
    assert requests.calls == []  # refused before the request budget is spent


async def test_trailers_are_refused(make) -> None:
    harness = make()
    result = await harness.pipeline.on_body(await admitted(harness), BODY, has_trailers=True)
    assert_refused(result, BAD_HEAD("request trailers are not accepted"), "trailers")


async def test_trailers_refused_on_other_routes_too(make) -> None:
    harness = make()
    result = await harness.pipeline.on_body(await admitted(harness, target="/v1/models", method="GET"), b"x", has_trailers=True)
    assert_refused(result, BAD_HEAD("request trailers are not accepted"), "trailers")


async def test_other_route_body_is_forwarded_unchanged(make) -> None:
    harness = make(extra={"sidecar": {"routes": {"allow": ["openai-embeddings"]}}})
    adm = await admitted(harness, target="/v1/embeddings")
    result = await harness.pipeline.on_body(adm, b"not json at all")
    assert result == Forward(adm, None)


@pytest.mark.parametrize(
    "body, forwarded, tool",
    [
        (BODY, None, "agents_list"),
        (b'{"tool":"agents_list","args":[1,2]}', None, "agents_list"),  # case 55
        (b'{"tool":"agents_list","dryRun":true}', None, "agents_list"),  # case 57
        (b'{"name":"agents_list","tool":"nope"}', b'{"name":"agents_list","tool":"agents_list"}', "agents_list"),  # case 52
        (b'{"tool":" agents_list "}', b'{"tool":"agents_list"}', "agents_list"),
        (b'{"tool":"sessions"}', None, "sessions"),  # owner reaches owner-only tools (case 65)
    ],
)
async def test_body_forwarded(make, body: bytes, forwarded: bytes | None, tool: str) -> None:
    harness = make()
    adm = await admitted(harness)
    result = await harness.pipeline.on_body(adm, body)
    assert result == Forward(adm, forwarded, tool)


async def test_exact_limit_body_is_processed(make) -> None:
    """Case 47."""
    prefix, suffix = b'{"tool":"agents_list","pad":"', b'"}'
    body = prefix + b"x" * (MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    harness = make()
    result = await harness.pipeline.on_body(await admitted(harness), body)
    assert isinstance(result, Forward) and result.body is None


@pytest.mark.parametrize(
    "extra, tool, scopes, forwarded",
    [
        ({"gateway": {"tools": {"allow": ["sessions_spawn"]}}}, "sessions_spawn", "operator.write", True),  # case 59
        ({"gateway": {"tools": {"allow": ["gateway"]}}}, "gateway", "operator.write", False),  # case 60
        ({"gateway": {"tools": {"allow": ["gateway"]}}}, "gateway", "operator.admin", True),  # case 60
        ({"gateway": {"tools": {"allow": ["gateway"], "deny": ["gateway"]}}}, "gateway", "operator.admin", False),  # case 61
        ({"gateway": {"tools": {"allow": ["cron", "gateway", "nodes"]}}}, "cron", "operator.write", False),  # case 62
        ({"gateway": {"tools": {"allow": ["cron", "gateway", "nodes"]}}}, "nodes", "operator.write", False),
        ({}, "sessions", "operator.write", False),  # case 65
        ({}, "screen", "operator.write", False),
        ({}, "sessions", "operator.admin", True),
        ({"gateway": {"tools": {"deny": ["browser"]}}}, "browser", "operator.admin", False),  # case 66
        ({"gateway": {"tools": {"allow": ["CRON"]}}}, "cron", "operator.admin", True),  # case 67
        ({}, "agents_list", "operator.write", True),
    ],
)
async def test_tool_gate_with_declared_scopes(make, extra: dict, tool: str, scopes: str, forwarded: bool) -> None:
    harness = make(deep_merge(TRUSTED_PROXY_CONFIG, extra))
    adm = await admitted(harness, peer=PROXY, auth=None, headers=[
        ("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"), ("x-openclaw-scopes", scopes),
        ("x-openclaw-sender-is-owner", "true"),  # case 76: never makes an owner
    ])
    result = await harness.pipeline.on_body(adm, json.dumps({"tool": tool}).encode())
    if forwarded:
        assert isinstance(result, Forward)
    else:
        name = "automations" if tool == "cron" else tool
        assert_refused(result, envelopes.tool_not_available(name), "tool_denied")


# ---- request rate limit ---------------------------------------------------------------------------


async def test_request_limiter_429(make) -> None:
    requests = FakeRequestLimiter(Verdict(allowed=False, retry_after_s=7))
    harness = make(requests=requests)
    result = await harness.pipeline.on_body(await admitted(harness), BODY)
    assert_refused(result, envelopes.request_rate_limited(7), "request_rate_limited")
    assert requests.calls == [(None, "agents_list", CLIENT)]


async def test_request_limiter_outage_503(make) -> None:
    harness = make(requests=FakeRequestLimiter(Verdict(allowed=False, unavailable=True)))
    result = await harness.pipeline.on_body(await admitted(harness), BODY)
    assert_refused(result, envelopes.limiter_unavailable(), "limiter_unavailable")


@pytest.mark.parametrize("per", ["identity", "ip"])
async def test_request_limiter_gets_identity_tool_and_client(make, per: str) -> None:
    """The pipeline hands over everything; the limiter's `per` decides the key (test_ratelimit)."""
    requests = FakeRequestLimiter()
    config = deep_merge(TRUSTED_PROXY_CONFIG, {"sidecar": {"rateLimit": {"requests": {"limit": "5/minute", "per": per}}}})
    harness = make(config, requests=requests)
    adm = await admitted(harness, peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice")])
    assert isinstance(await harness.pipeline.on_body(adm, b'{"tool":"cron"}'), Refuse)  # denied: not counted
    assert isinstance(await harness.pipeline.on_body(adm, BODY), Forward)
    assert requests.calls == [("alice", "agents_list", XFF_CLIENT)]


# ---- review_response ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, status, replaced",
    [
        ("/tools/invoke", 500, True),  # case 71: "boom" never leaks
        ("/tools/invoke", 200, False),
        ("/tools/invoke", 400, False),
        ("/tools/invoke", 403, False),
        ("/tools/invoke", 404, False),
        ("/tools/invoke", 502, False),
        ("/v1/models", 500, False),
    ],
)
async def test_review_response(make, target: str, status: int, replaced: bool) -> None:
    harness = make()
    adm = await admitted(harness, target=target, method="POST" if target == "/tools/invoke" else "GET")
    result = harness.pipeline.review_response(adm, status)
    assert result == (envelopes.tool_execution_failed() if replaced else None)


@pytest.mark.parametrize("method, target, route", [
    ("POST", "/v1/chat/completions", "openai-chat-completions"), ("POST", "/tools/invoke", "tools-invoke"),
    ("POST", "/nope/x", "unknown"), ("GET", "/__openclaw__/cap/x/v1/models", "openai-models"),
])
async def test_refusals_carry_the_route_the_gateway_would_run(make, method: str, target: str, route: str) -> None:
    """The audit line and the decision metric name the effective route, not the spelling."""
    result = await make().pipeline.on_head(view(method=method, target=target, auth=None))
    assert isinstance(result, Refuse) and result.route == route


@pytest.mark.parametrize("method, target, websocket", [
    ("GET", "/a/..//x/__openclaw__/worker", True), ("POST", "/.//tools/invoke", False), ("GET", "/x/..//y/healthz", False),
])
async def test_a_path_that_resolves_to_a_double_slash_is_refused(make, method: str, target: str, websocket: bool) -> None:
    """Forwarded as `//x/...`, the gateway would read `x` as a host and route the rest: refused."""
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")] if websocket else []
    result = await make().pipeline.on_head(view(method=method, target=target, headers=headers))
    assert_refused(result, envelopes.invalid_request_url(), "invalid_target")


# ---- shadow mode (sidecar.enforce: false) -----------------------------------------------------------

SHADOW = {"sidecar": {"enforce": False}, "gateway": {"tools": {"deny": ["agents_list"]}}}


async def test_shadow_mode_forwards_policy_refusals_and_names_them(make) -> None:
    h = make(extra=SHADOW)
    head = await h.pipeline.on_head(view())
    assert isinstance(head, Admitted)
    forward = await h.pipeline.on_body(head, BODY)
    assert isinstance(forward, Forward) and forward.shadowed == ("tool_denied",) and forward.tool == "agents_list"
    assert forward.detail == "gateway: gateway.tools.deny lists 'agents_list'"  # what enforcement would have said
    refused_route = await h.pipeline.on_head(view("POST", "/v1/chat/completions", [("Content-Length", "0")]))
    assert isinstance(refused_route, Admitted) and refused_route.shadowed == ("route_refused",)
    assert ("Authorization", f"Bearer {UPSTREAM}") in refused_route.headers  # in as an authenticated caller


@pytest.mark.parametrize("request_view, reason", [
    (view(auth="Bearer wrong"), "token_mismatch"),
    (view(auth=None), "credential_missing"),
    (view("POST", "/v1/chat/completions", auth=None), "credential_missing"),  # a shadowed route still needs auth
    (view(headers=[("Host", "b.example")]), "malformed_head"),
    (view(target="/tools/%2e%2e/tools/invoke"), "non_canonical_target"),
])
async def test_shadow_mode_still_enforces_authentication_and_hygiene(make, request_view, reason) -> None:
    result = await make(extra=SHADOW).pipeline.on_head(request_view)
    assert isinstance(result, Refuse) and result.reason == reason, result


@pytest.mark.parametrize("method, target, extra, reason", [
    ("POST", "/nope", {}, "unknown_route"),
    ("GET", "/share/session?token=t", {}, "query_credential"),
    ("GET", "/?oc_cap=abc", {}, "node_capability"),
    ("GET", "/v1/chat/completions", {}, "method_not_served"),
    ("GET", "/__openclaw__/workspace-icon/w", {"sidecar": {"scopeCeilings": {"default": ["operator.read"]}}}, "owner_required"),
])
async def test_shadow_mode_forwards_each_policy_refusal_of_a_head_and_names_it(make, method: str, target: str,
                                                                              extra: dict, reason: str) -> None:
    result = await make(extra=deep_merge({"sidecar": {"enforce": False}}, extra)).pipeline.on_head(view(method=method, target=target))
    assert isinstance(result, Admitted) and result.shadowed == (reason,), result


async def test_shadow_mode_forwards_a_rate_limited_request_and_names_it(make) -> None:
    harness = make(extra={"sidecar": {"enforce": False}}, requests=FakeRequestLimiter(Verdict(allowed=False, retry_after_s=7)))
    result = await harness.pipeline.on_body(await admitted(harness), BODY)
    assert isinstance(result, Forward) and result.shadowed == ("request_rate_limited",), result


@pytest.mark.parametrize("method, target, allow", [("GET", "/tools/invoke", "POST"), ("POST", "/healthz", "GET, HEAD")])
async def test_shadow_mode_still_answers_a_method_the_route_does_not_take(make, method: str, target: str, allow: str) -> None:
    """The gateway's 405 comes before any credential: no policy of the sidecar's."""
    result = await make(extra=SHADOW).pipeline.on_head(view(method=method, target=target))
    assert_refused(result, envelopes.method_not_allowed(allow), "method_not_allowed")


async def test_shadow_mode_still_refuses_an_admin_rpc_body_it_cannot_read(make) -> None:
    """V8 reads nesting Python cannot: such a body may carry any method, so it is never relayed;
    a method the caller lacks the scope for is policy, and goes on."""
    harness = make(extra={"sidecar": {"enforce": False, "routes": {"allow": ["plugin:admin-http-rpc"]}, "scopeCeilings": {"default": []}}})
    head = await harness.pipeline.on_head(view("POST", "/api/v1/admin/rpc"))
    assert isinstance(head, Admitted)
    result = await harness.pipeline.on_body(head, b'{"method":')
    assert isinstance(result, Refuse) and result.reason == "unreadable_rpc_body", result
    lacking = await harness.pipeline.on_body(head, b'{"id":"r1","method":"config.get","params":{}}')
    assert isinstance(lacking, Forward) and lacking.shadowed == ("rpc_missing_scope",), lacking  # a scope is policy


async def test_shadow_mode_enforces_the_gateways_session_errors(make) -> None:
    """A malformed key is not policy: the gateway would refuse it too, so it is never shadowed."""
    h = make(extra=SHADOW)
    result = await h.pipeline.on_body(await admitted(h), b'{"tool":"sessions_list","sessionKey":"agent:main"}')
    assert_refused(result, envelopes.invalid_request('malformed session key "agent:main"'), "session_invalid")


# ---- the tool policy chain (sidecar/toolchain.py) ---------------------------------------------------


async def test_a_policy_refusal_names_its_layer_for_the_audit_line(make) -> None:
    h = make(extra={"tools": {"profile": "minimal"}})
    result = await h.pipeline.on_body(await admitted(h), BODY)
    assert_refused(result, envelopes.tool_not_available("agents_list"), "tool_denied")
    assert isinstance(result, Refuse) and result.tool == "agents_list"
    assert result.detail == "profile: profile 'minimal': not in the allow list"


@pytest.mark.parametrize("extra, headers, refused", [
    ({}, [("x-openclaw-message-channel", "node")], True),  # keeps only canvas, pdf, tts, ... for node
    ({}, [("x-openclaw-message-channel", "webchat")], False),
    ({}, [("X-OpenClaw-Message-Channel", "node")], True),  # a header name in any case
    # Not allow-listed: stripped before the gateway, so it cannot filter there either.
    ({"sidecar": {"contextHeaders": {"allow": []}}}, [("x-openclaw-message-channel", "node")], False),
    # Pinned: the gateway sees the pinned value whatever the caller sent.
    ({"sidecar": {"contextHeaders": {"pinned": {"*": {"x-openclaw-message-channel": "node"}}}}},
     [("x-openclaw-message-channel", "webchat")], True),
])
async def test_tool_policy_reads_the_context_headers_the_gateway_will_receive(make, extra, headers, refused) -> None:
    h = make(extra=extra)
    result = await h.pipeline.on_body(await admitted(h, headers=headers), BODY)
    assert isinstance(result, Refuse) is refused, result
    if refused:
        assert isinstance(result, Refuse) and result.detail is not None and result.detail.startswith("message-provider: ")


async def test_group_policy_follows_the_forwarded_account(make) -> None:
    groups = {"channels": {"irc": {"groups": {"9": {"tools": {"deny": ["sessions_list"]}}},
                                   "accounts": {"work": {"groups": {"9": {"tools": {"deny": ["agents_list"]}}}}}}}}
    h = make(extra=groups)
    body = b'{"tool":"agents_list","sessionKey":"irc:group:9"}'
    assert isinstance(await h.pipeline.on_body(await admitted(h), body), Forward)
    refused = await h.pipeline.on_body(await admitted(h, headers=[("x-openclaw-account-id", "work")]), body)
    assert isinstance(refused, Refuse) and refused.detail is not None and "accounts.work.groups" in refused.detail


# ---- the auth-failure limiter under concurrency -----------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_the_right_guess_inside_a_burst_of_wrong_ones_is_locked_out_too(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest,
) -> None:
    """Upstream checks the lock, compares and counts in one event-loop turn. With maxAttempts 3,
    40 concurrent guesses from one client, the right one 31st, get three 401s and 429 for all
    the rest, the right one included, even when every limiter step is a Redis round trip."""
    uri = "memory://" if storage == "memory" else request.getfixturevalue("redis_url")
    limiter = AuthFailureLimiter(storage_uri=uri, max_attempts=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TOKEN_CONFIG))
    pipeline = Pipeline(load_config(path, environ={}), limiter)
    heads = [view(auth="Bearer wrong") for _ in range(40)]
    heads[30] = view()
    try:
        results = await asyncio.gather(*(pipeline.on_head(head) for head in heads))
    finally:
        await limiter.aclose()
    reasons = [result.reason if isinstance(result, Refuse) else "admitted" for result in results]
    assert reasons[:3] == ["token_mismatch"] * 3 and reasons[3:] == ["rate_limited"] * 37, reasons
    assert len(pipeline.check_turns) == 0


async def test_the_refused_frame_budget_is_the_configured_one(make) -> None:
    harness = make(extra={"sidecar": {"websocket": {"refusedFrames": {"burst": 2, "perSecond": 0}}}})
    admitted = await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
    session = harness.pipeline.rpc_session(admitted)
    connect = json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4, "role": "operator", "auth": {"token": TOKEN},
        "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"}}}).encode()
    assert (await session.client_frame(connect)).verdict == "forward"
    denied = json.dumps({"type": "req", "id": "x", "method": "config.patch", "params": {}}).encode()
    assert [(await session.client_frame(denied)).verdict for _ in range(3)] == ["reply", "reply", "close"]


def test_a_connection_spends_its_clients_share_of_the_cap_unless_a_trusted_proxy_opened_it(make) -> None:
    pipeline = make(TRUSTED_PROXY_CONFIG).pipeline
    assert pipeline.connection_client(PROXY) is None  # its connections carry many clients
    assert pipeline.connection_client("198.51.100.4") == "198.51.100.4"
    assert pipeline.connection_client("2001:db8:0:1::5") == pipeline.connection_client("2001:db8:0:1::6") == "2001:db8:0:1::/64"


# ---- edges a mutation sweep of the stages found unpinned ----------------------------------------

HEAD_BASE = view(headers=[("X-Pad", "")]).head_size()


@pytest.mark.parametrize("over, admitted", [(0, True), (1, False)])
async def test_a_head_of_exactly_16_kib_is_read_and_one_byte_more_is_refused(make, over: int, admitted: bool) -> None:
    """Node's --max-http-header-size is inclusive: 16,384 bytes of head pass, 16,385 do not."""
    padded = view(headers=[("X-Pad", "a" * (16 * 1024 - HEAD_BASE + over))])
    assert padded.head_size() == 16 * 1024 + over
    result = await make().pipeline.on_head(padded)
    if admitted:
        assert isinstance(result, Admitted)
    else:
        assert_refused(result, envelopes.head_too_large(), "request_head_too_large")


async def test_an_empty_expect_gets_417_as_node_answers_any_expect_but_100_continue(make) -> None:
    assert_refused(await make().pipeline.on_head(view(headers=[("Expect", "")])), envelopes.expectation_failed(), "expectation_failed")


async def test_an_empty_host_is_admitted_and_the_target_read_against_localhost(make) -> None:
    result = await make().pipeline.on_head(view(host=""))
    assert isinstance(result, Admitted) and result.route == "tools-invoke"


@pytest.mark.parametrize("host", ["gw.example:123456", "gw_example"])
async def test_a_host_no_hostname_and_port_can_spell_is_refused(make, host: str) -> None:
    assert_refused(await make().pipeline.on_head(view(host=host)), BAD_HEAD("Host must be host[:port]"), "invalid_host")


@pytest.mark.parametrize("target, host", [
    ("HTTP://gw.example/healthz", "gw.example"),  # a scheme is case-insensitive
    ("http://gw.example/healthz", "gw.example:80"),  # the Host names the default port the URL drops
    ("https://gw.example/healthz", "gw.example:443"),
])
async def test_an_absolute_target_naming_the_hosts_own_authority_is_admitted(make, target: str, host: str) -> None:
    result = await make().pipeline.on_head(view("GET", target, host=host, auth=None))
    assert isinstance(result, Admitted) and result.route == "health" and result.target == "/healthz"


async def test_a_denied_prefix_holds_on_the_path_as_sent_when_the_gateway_routes_another(make) -> None:
    """A capability path is routed by what follows the token; the prefix denied is the one sent."""
    harness = make(extra={"sidecar": {"routes": {"deny": ["/__openclaw__/cap/"]}}})
    result = await harness.pipeline.on_head(view("GET", "/__openclaw__/cap/abc/healthz", auth=None))
    assert_refused(result, envelopes.route_not_found(), "route_denied")


async def test_a_denied_plugin_prefix_covers_the_plugin_path_without_its_trailing_slash(make) -> None:
    harness = make(extra={"sidecar": {"routes": {"deny": ["/api/v1/beam/sessions/"], "allow": ["plugin:beam"]}}})
    assert_refused(await harness.pipeline.on_head(view("POST", "/api/v1/beam/sessions")), envelopes.route_not_found(), "route_denied")


@pytest.mark.parametrize("method, key", [
    ("HEAD", WS_KEY),
    ("GET", WS_KEY + "!"),  # base64 with a stray byte, which a lenient decoder would skip
    ("GET", "AAAAAAAAAAAAAAAAAAAAAAA="),  # 17 bytes
])
async def test_an_upgrade_with_another_method_or_a_key_not_of_16_bytes_never_reaches_the_rpc(make, method: str, key: str) -> None:
    headers = [*UPGRADE[:3], ("Sec-WebSocket-Key", key)]
    result = await make().pipeline.on_head(view(method=method, target="/", headers=headers))
    assert_refused(result, BAD_HEAD("not an RFC 6455 WebSocket upgrade"), "invalid_websocket_upgrade")


async def test_in_trusted_proxy_mode_an_rpc_upgrade_without_an_identity_is_refused_not_left_to_a_connect_frame(make) -> None:
    """Only a shared secret can come in the connect frame: a trusted-proxy caller is known by its
    header or not at all."""
    result = await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(
        view(method="GET", target="/", peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), *UPGRADE]))
    assert_refused(result, envelopes.unauthorized(), "trusted_proxy_user_missing")


async def test_an_rpc_upgrade_behind_the_upstream_credential_carries_neither_identity_nor_client(make) -> None:
    result = await make(TRUSTED_PROXY_CONFIG).pipeline.on_head(view(
        method="GET", target="/", peer=PROXY, auth=None, headers=[("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"), *UPGRADE]))
    assert isinstance(result, Admitted) and result.auth.user == "alice"
    upstream = {n.lower() for n, _ in result.headers}
    assert "authorization" in upstream and not upstream & {"x-forwarded-user", "x-forwarded-for"}


async def test_without_an_upstream_credential_an_rpc_upgrade_carries_the_identity_and_one_attributed_client(make) -> None:
    """The gateway then knows the caller only by the identity header and the client it names;
    a required X-Forwarded-For is the sidecar's own, never the chain the ingress sent."""
    config = {"gateway": {"auth": {"mode": "trusted-proxy", "trustedProxy": {
        "userHeader": "x-forwarded-user", "requiredHeaders": ["x-forwarded-for"]}}, "trustedProxies": [PROXY]}}
    result = await make(config).pipeline.on_head(view(method="GET", target="/", peer=PROXY, auth=None, headers=[
        ("X-Forwarded-For", f"192.0.2.1, {XFF_CLIENT}"), ("X-Forwarded-User", "alice"), *UPGRADE]))
    assert isinstance(result, Admitted) and result.rpc
    upstream = [(n.lower(), v) for n, v in result.headers if n.lower() in ("authorization", "x-forwarded-user", "x-forwarded-for")]
    assert upstream == [("x-forwarded-user", "alice"), ("x-forwarded-for", XFF_CLIENT)]


async def test_without_an_upstream_credential_an_agent_turn_is_the_gateways_to_scope(make) -> None:
    """Only behind the sidecar's shared secret does the gateway make every caller owner."""
    config = deep_merge(OPENAI_ENDPOINTS_ON, {"sidecar": {"routes": {"allow": ["openai-chat-completions"]}},
                                              "gateway": {"auth": {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-forwarded-user"}},
                                                          "trustedProxies": [PROXY]}})
    result = await make(config).pipeline.on_head(view("POST", "/v1/chat/completions", peer=PROXY, auth=None, headers=[
        ("X-Forwarded-For", XFF_CLIENT), ("X-Forwarded-User", "alice"), ("x-openclaw-scopes", "operator.write")]))
    assert isinstance(result, Admitted) and ("x-openclaw-scopes", "operator.write") in result.headers


async def test_shadow_mode_lets_a_route_scope_refusal_through_and_names_it(make) -> None:
    harness = make(extra={"sidecar": {"enforce": False, "scopeCeilings": {"default": ["operator.read"]}}})
    result = await harness.pipeline.on_head(view())
    assert isinstance(result, Admitted) and result.shadowed == ("missing_scope",)


async def test_a_route_with_words_of_its_own_for_a_missing_scope_answers_with_them(make) -> None:
    harness = make(extra={"sidecar": {"routes": {"allow": ["plugin:beam"]}, "scopeCeilings": {"default": ["operator.read"]}}})
    result = await harness.pipeline.on_head(view("POST", "/api/v1/beam/sessions"))
    assert_refused(result, envelopes.missing_scope("operator.write", "write-required"), "missing_scope")
    assert isinstance(result, Refuse) and result.envelope.body == b'{"ok":false,"error":"operator.write is required"}'


async def test_a_blank_origin_on_an_rpc_upgrade_is_no_browser(make) -> None:
    result = await make().pipeline.on_head(view(method="GET", target="/", auth=None, headers=[("Origin", " \t"), *UPGRADE]))
    assert isinstance(result, Admitted) and result.rpc and result.browser is None


async def test_a_body_refusal_is_audited_with_the_route_and_the_client_of_its_head(make) -> None:
    harness = make(extra={"gateway": {"tools": {"deny": ["agents_list"]}}})
    result = await harness.pipeline.on_body(await admitted(harness), BODY)
    assert_refused(result, envelopes.tool_not_available("agents_list"), "tool_denied")
    assert isinstance(result, Refuse) and (result.route, result.client_ip) == ("tools-invoke", CLIENT)


async def test_a_read_carrying_a_blank_upgrade_header_is_no_plain_read_and_needs_credentials(make) -> None:
    result = await make().pipeline.on_head(view("GET", "/healthz", [("Upgrade", " ")], auth=None))
    assert_refused(result, envelopes.unauthorized(), "credential_missing")


async def test_behind_a_trusted_proxy_each_forwarded_client_holds_its_own_share_of_rpc_upgrades(make) -> None:
    config = deep_merge(TOKEN_CONFIG, {"gateway": {"trustedProxies": [PROXY]}, "sidecar": {"websocket": {"unauthenticatedPerClient": 1}}})
    pipeline = make(config).pipeline

    async def upgrade(client: str) -> Refuse | Admitted:
        return await pipeline.on_head(view(method="GET", target="/", peer=PROXY, auth=None, headers=[("X-Forwarded-For", client), *UPGRADE]))

    assert isinstance(await upgrade(XFF_CLIENT), Admitted) and isinstance(await upgrade("198.51.100.10"), Admitted)
    assert_refused(await upgrade(XFF_CLIENT), envelopes.too_many_unauthenticated_sockets(), "preauth_sockets")


@pytest.mark.parametrize("request_id, answered", [(" r1 ", "r1"), ("r2", "r2")])
async def test_the_admin_rpc_refusal_answers_the_request_id_as_the_plugin_trims_it(make, request_id: str, answered: str) -> None:
    harness = make(extra={"sidecar": {"routes": {"allow": ["plugin:admin-http-rpc"]}, "scopeCeilings": {"default": ["operator.read"]}}})
    head = await harness.pipeline.on_head(view("POST", "/api/v1/admin/rpc"))
    assert isinstance(head, Admitted)
    result = await harness.pipeline.on_body(head, json.dumps({"id": request_id, "method": "config.patch", "params": {}}).encode())
    assert_refused(result, envelopes.rpc_missing_scope("operator.admin", answered), "rpc_missing_scope")


CONNECT = {"type": "req", "id": "c1", "method": "connect", "params": {
    "minProtocol": 4, "maxProtocol": 4, "role": "operator", "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"}}}
GUESSES = UPSTREAM_GUESS_SUBJECT + CLIENT  # the count of guesses at the upstream secret
DEVICE = {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}


def connect_frame(auth: dict[str, str], **params: Any) -> bytes:
    return json.dumps({**CONNECT, "params": {**CONNECT["params"], "auth": auth, **params}}).encode()


async def test_a_loopback_browsers_wrong_secret_counts_against_its_origin_not_the_loopback_address(make) -> None:
    """Any page can open a loopback connection: its failures count where the gateway's browser
    limiter counts them, by origin."""
    harness = make(extra={"gateway": {"trustedProxies": []}})
    admitted = await harness.pipeline.on_head(
        view(method="GET", target="/", peer="127.0.0.1", auth=None, headers=[("Origin", "http://localhost:3000"), *UPGRADE]))
    assert isinstance(admitted, Admitted) and admitted.browser is not None and admitted.browser.refusal is None
    verdict = await harness.pipeline.rpc_session(admitted).client_frame(connect_frame({"token": "wrong"}))
    assert verdict.verdict == "close"
    recorded = [key for call, key in harness.failures.calls if call == "record_failure"]
    assert recorded == [admitted.browser.limit_key] and "127.0.0.1" not in recorded


async def test_a_device_signed_with_the_sidecars_own_secret_clears_no_upstream_guesses(make) -> None:
    """Else a client could wipe its count of guesses at the upstream secret with the one it holds."""
    harness = make()
    admitted = await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
    assert isinstance(admitted, Admitted)
    verdict = await harness.pipeline.rpc_session(admitted).client_frame(
        connect_frame({"token": TOKEN}, device=DEVICE, scopes=["operator.read"]))
    assert verdict.reason == "device_above_ceiling"
    assert ("check", GUESSES) in harness.failures.calls and ("reset", GUESSES) not in harness.failures.calls



@pytest.mark.parametrize("mode, target, extra, reason", [
    ("passthrough", "/", {}, "websocket_passthrough"),  # the RPC, its frames unread
    ("enforce", "/", {}, "allowed"),  # the RPC, its frames judged
    ("enforce", "/__openclaw__/worker", {"routes": {"allow": ["worker-websocket"]}}, "allowed"),  # no RPC to read
])
async def test_only_an_rpc_upgrade_whose_frames_go_unread_is_audited_as_a_passthrough(make, mode, target, extra, reason) -> None:
    harness = make(extra={"sidecar": {"websocket": {"mode": mode}, **extra}})
    head = await harness.pipeline.on_head(view(method="GET", target=target, headers=UPGRADE))
    assert isinstance(head, Admitted) and head.websocket
    forward = await harness.pipeline.on_body(head, b"")
    assert isinstance(forward, Forward) and forward.reason == reason


async def test_an_rpc_upgrade_that_fails_to_be_admitted_gives_back_its_preauth_share(make, monkeypatch) -> None:
    harness = make(extra={"sidecar": {"websocket": {"unauthenticatedPerClient": 1}}})

    def broken(*_: Any) -> Any:
        raise RuntimeError("rebuild failed")

    with monkeypatch.context() as patched:
        patched.setattr("sidecar.pipeline.rebuild_headers", broken)
        with pytest.raises(RuntimeError):
            await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE))
    assert isinstance(await harness.pipeline.on_head(view(method="GET", target="/", auth=None, headers=UPGRADE)), Admitted)
