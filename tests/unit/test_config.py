"""sidecar.config: file formats, strict sidecar keys, lenient OpenClaw keys, precedence, secrets.

Reference §2.1 (mode resolution and secrets) and the briefing's config map. Every test passes
an explicit `environ` for the OPENCLAW_GATEWAY_* secrets and clears OPENCLAW_SIDECAR_* from the
process environment (SidecarSettings reads os.environ through pydantic-settings).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

import certifi
import pytest

from sidecar.config import (
    ConfigError, camel_keys, http_url, identity_header_names, load_config, openclaw_config_path, read_storage_password, redacted_view, unknown_environment,
)


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/unit/conftest.py


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


CA_FILE = ssl.get_default_verify_paths().cafile or certifi.where()


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


# ---- file formats ---------------------------------------------------------------------------

YAML_DOC = """\
sidecar:
  listen: 127.0.0.1:28790
  upstream: http://127.0.0.1:28789/
  timeouts:
    bodyReadSeconds: 5
  rateLimit:
    requests: {limit: 10/minute, perTool: true}
  contextHeaders:
    allow: [X-OpenClaw-Message-To]
gateway:
  auth:
    mode: token
    token: T
    rateLimit: {maxAttempts: 3, windowMs: 1000}
    trustedProxy: {requiredHeaders: [X-Forwarded-Proto]}
  trustedProxies: [198.51.100.5, "::ffff:198.51.100.0/120"]
  tools: {allow: [sessions_spawn], deny: [browser]}
  controlUi: {allowedOrigins: ["https://ui.example"]}
"""

JSON5_DOC = """\
// JSON5: comments, unquoted keys, single quotes, trailing commas
{
  sidecar: {
    listen: '127.0.0.1:28790',
    upstream: 'http://127.0.0.1:28789/',
    timeouts: { bodyReadSeconds: 5, },
    rateLimit: { requests: { limit: '10/minute', perTool: true } },
    contextHeaders: { allow: ['X-OpenClaw-Message-To'] },
  },
  gateway: {
    auth: {
      mode: 'token', token: 'T',
      rateLimit: { maxAttempts: 3, windowMs: 1000 },
      trustedProxy: { requiredHeaders: ['X-Forwarded-Proto'] },
    },
    trustedProxies: ['198.51.100.5', '::ffff:198.51.100.0/120'],
    tools: { allow: ['sessions_spawn'], deny: ['browser'] },
    controlUi: { allowedOrigins: ['https://ui.example'] },
  },
}
"""


@pytest.mark.parametrize(
    "name, text",
    [
        ("sidecar.yaml", YAML_DOC),
        ("sidecar.yml", YAML_DOC),
        ("sidecar.json5", JSON5_DOC),
        ("sidecar.json", JSON5_DOC),
        ("sidecar.conf", JSON5_DOC),  # unknown suffix: JSON5 first
        ("sidecar.cfg", YAML_DOC),  # unknown suffix: then YAML
    ],
)
def test_yaml_and_json5_files_load_the_same_config(tmp_path: Path, name: str, text: str) -> None:
    config = load_config(write(tmp_path, name, text), environ={})
    sidecar, gateway = config.sidecar, config.rules.gateway
    assert sidecar.listen == "127.0.0.1:28790"
    assert sidecar.upstream == "http://127.0.0.1:28789"  # trailing slash dropped
    assert sidecar.timeouts.body_read_seconds == 5
    assert sidecar.timeouts.upstream_read_seconds == 300  # default kept beside a file value
    assert sidecar.rate_limit.requests is not None
    assert sidecar.rate_limit.requests.limit == "10/minute"
    assert sidecar.rate_limit.requests.per_tool is True
    assert sidecar.rate_limit.requests.per == "identity"  # default: one budget a caller, not one an address
    assert sidecar.context_headers.allow == ("x-openclaw-message-to",)  # lower-cased
    assert gateway.auth.mode == "token"
    assert gateway.auth.rate_limit.max_attempts == 3
    assert gateway.auth.rate_limit.window_ms == 1000
    assert gateway.auth.rate_limit.lockout_ms == 300_000
    assert gateway.auth.trusted_proxy.required_headers == ("x-forwarded-proto",)
    assert gateway.trusted_proxies == ("198.51.100.5", "::ffff:198.51.100.0/120")
    assert gateway.tools.allow == ("sessions_spawn",)
    assert gateway.tools.deny == ("browser",)
    assert gateway.control_ui.allowed_origins == ("https://ui.example",)
    assert config.secrets.mode == "token"
    assert config.secrets.token == "T"
    assert config.secrets.upstream_credential == "T"  # default upstream credential: the shared secret
    assert config.secrets.problems == ()


def test_no_file_gives_defaults() -> None:
    config = load_config(None, environ={})
    assert config.sidecar.listen == "127.0.0.1:18790"
    assert config.sidecar.upstream == "http://127.0.0.1:18789"
    assert config.sidecar.rate_limit.storage == "memory://"
    assert config.sidecar.rate_limit.requests is None
    assert (config.sidecar.routes.allow, config.sidecar.routes.control_ui, config.sidecar.routes.deny) == ((), "public", ())
    assert config.rules.gateway.auth.rate_limit.max_attempts == 10
    assert config.rules.gateway.auth.rate_limit.window_ms == 60_000
    assert config.rules.gateway.auth.rate_limit.lockout_ms == 300_000
    assert config.rules.gateway.auth.rate_limit.exempt_loopback is True
    assert config.rules.gateway.trusted_proxies == ()
    assert config.rules.gateway.allow_real_ip_fallback is False
    sidecar, gateway = config.sidecar, config.rules.gateway
    assert (sidecar.admin_listen, sidecar.enforce, sidecar.rate_limit.fail_closed) == ("127.0.0.1:18791", True, False)
    assert (sidecar.websocket.mode, sidecar.websocket.allow_nodes) == ("enforce", False)
    # the gateway's own defaults: loopback proxies refused, the Control UI served, no Host-header origin
    assert gateway.auth.trusted_proxy.allow_loopback is False
    assert (gateway.control_ui.enabled, gateway.control_ui.dangerously_allow_host_header_origin_fallback) == (True, False)
    assert config.rules.switched_off == frozenset(config.rules.route_switches)  # every optional route off


def test_route_switches_follow_the_gateways_settings(tmp_path: Path) -> None:
    text = "hooks: {enabled: true, token: h}\nmcp: {apps: {enabled: true}}\ngateway:\n  http: {endpoints: {responses: {enabled: true}}}\n"
    rules = load_config(write(tmp_path, "c.yaml", text), environ={}).rules
    assert rules.switched_off == {"gateway.http.endpoints.chatCompletions.enabled"}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "sidecar:\n  # listen: 0.0.0.0:1\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.sidecar.listen == "127.0.0.1:18790"


@pytest.mark.parametrize(
    "name, text",
    [
        ("c.yaml", "sidecar: [1, 2\n"),
        ("c.json5", "{sidecar: "),
        ("c.yaml", "- a\n- b\n"),  # top level is not a mapping
        ("c.json", "[1, 2]"),
    ],
)
def test_unparseable_or_non_mapping_file_names_config(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, name, text), environ={})
    assert list(problems_of(exc)) == ["config"]


def test_missing_config_file_names_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.yaml", environ={})
    assert list(problems_of(exc)) == ["config"]


def test_sidecar_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", "sidecar: [listen]\n"), environ={})
    assert list(problems_of(exc)) == ["sidecar"]


# ---- strict sidecar keys, lenient OpenClaw keys --------------------------------------------


@pytest.mark.parametrize(
    "section, key",
    [
        ("listne: 127.0.0.1:1\n", "sidecar.listne"),
        ("timeouts:\n    bodyRead: 3\n", "sidecar.timeouts.bodyRead"),
        ("rateLimit:\n    stoarge: memory://\n", "sidecar.rateLimit.stoarge"),
        ("rateLimit:\n    requests: {limit: 1/second, perTol: true}\n", "sidecar.rateLimit.requests.perTol"),
        ("contextHeaders:\n    allowed: []\n", "sidecar.contextHeaders.allowed"),
        ("routes:\n    denied: [/x]\n", "sidecar.routes.denied"),
        ("upstreamAuth:\n    tokn: x\n", "sidecar.upstreamAuth.tokn"),
        ("scopeCeilings:\n    identity: {}\n", "sidecar.scopeCeilings.identity"),
    ],
)
def test_unknown_sidecar_key_is_a_config_error_naming_the_key(tmp_path: Path, section: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", f"sidecar:\n  {section}"), environ={})
    assert key in problems_of(exc), exc.value.problems
    assert problems_of(exc)[key] == "is not a setting the sidecar knows (check the spelling)"
    assert key in str(exc.value)


def test_unknown_openclaw_keys_are_ignored(tmp_path: Path) -> None:
    text = """\
meta: {lastTouchedVersion: 2026.9.6}
channels: {telegram: {enabled: true}}
gateway:
  port: 18789
  bind: loopback
  http: {securityHeaders: {strictTransportSecurity: "max-age=1"}}
  auth:
    token: T
    allowTailscale: true
    rateLimit: {maxAttempts: 4}  # a strict object at the gateway: an unknown key there fails its file
    trustedProxy: {userHeader: x-user, futureKey: 2}
  tools: {allow: [], futureField: 3}
  controlUi: {enabled: true, allowedOrigins: []}
tools: {profile: coding}
agents: {list: [{id: main, default: true}]}
session: {scope: per-sender}
"""
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.secrets.token == "T"
    assert config.rules.gateway.auth.rate_limit.max_attempts == 4
    assert config.rules.gateway.auth.trusted_proxy.user_header == "x-user"
    assert config.rules.tools == {"profile": "coding"}


@pytest.mark.parametrize(
    "text, key",
    [
        ("gateway:\n  trustedProxies: [198.51.100.5, not-an-ip]\n", "gateway.trustedProxies"),
        ("gateway:\n  trustedProxies: [10.0.0.0/33]\n", "gateway.trustedProxies"),
        ("gateway:\n  auth: {mode: magic}\n", "gateway.auth.mode"),
        ("gateway:\n  auth: {rateLimit: {maxAttempts: '3'}}\n", "gateway.auth.rateLimit.maxAttempts"),  # a string fails the gateway's file too
        ("gateway:\n  auth: {rateLimit: {maxAttempts: 50, bogusKey: 1}}\n", "gateway.auth.rateLimit.bogusKey"),  # so does an unknown key
        ("gateway:\n  auth: {rateLimit: {windowMs: 1%s}}\n" % ("0" * 400), "gateway.auth.rateLimit.windowMs"),  # past a float: an overflow
        # required of the ingress, but a header the sidecar deletes: the gateway would refuse everything
        ("gateway:\n  auth: {trustedProxy: {requiredHeaders: [X-Real-IP]}}\n", "gateway.auth.trustedProxy.requiredHeaders"),
        ("gateway:\n  auth: {trustedProxy: {requiredHeaders: [tailscale-user-login]}}\n", "gateway.auth.trustedProxy.requiredHeaders"),
        ("gateway:\n  auth: {trustedProxy: {requiredHeaders: [Keep-Alive]}}\n", "gateway.auth.trustedProxy.requiredHeaders"),
        ("sidecar:\n  rateLimit: {storage: 'mongodb://db'}\n", "sidecar.rateLimit.storage"),
        ("sidecar:\n  rateLimit: {storage: 'async+memory://'}\n", "sidecar.rateLimit.storage"),
        ("sidecar:\n  rateLimit: {requests: {limit: lots}}\n", "sidecar.rateLimit.requests.limit"),
        ("sidecar:\n  rateLimit: {requests: {limit: 10/fortnight}}\n", "sidecar.rateLimit.requests.limit"),
        ("sidecar:\n  rateLimit: {requests: {limit: 10/minute, per: tool}}\n", "sidecar.rateLimit.requests.per"),
        ("sidecar:\n  listen: localhost\n", "sidecar.listen"),
        ("sidecar:\n  listen: '127.0.0.1:99999'\n", "sidecar.listen"),
        ("sidecar:\n  upstream: ftp://gw\n", "sidecar.upstream"),
        ("sidecar:\n  timeouts: {bodyReadSeconds: 0}\n", "sidecar.timeouts.bodyReadSeconds"),
        ("sidecar:\n  logLevel: LOUD\n", "sidecar.logLevel"),
        # typos that would refuse every request (an empty prefix) or none (no leading slash)
        ("sidecar:\n  routes: {deny: ['']}\n", "sidecar.routes.deny"),
        ("sidecar:\n  routes: {deny: [/v1, api/v1]}\n", "sidecar.routes.deny"),
        # a switch the gateway's schema refuses unless boolean: read leniently, "false" switched a row off
        # that the gateway, refusing the edit, kept serving (red team)
        ("gateway:\n  http: {endpoints: {chatCompletions: {enabled: 'false'}}}\n", "gateway.http.endpoints.chatCompletions.enabled"),
        ("mcp:\n  apps: {enabled: 1}\n", "mcp.apps.enabled"),
        ("hooks:\n  enabled: 'yes'\n", "hooks.enabled"),
        ("gateway:\n  controlUi: {enabled: 'false'}\n", "gateway.controlUi.enabled"),
        ("gateway:\n  allowRealIpFallback: 'true'\n", "gateway.allowRealIpFallback"),
        ("gateway:\n  http: {endpoints: {responses: {enabled: 'true'}}}\n", "gateway.http.endpoints.responses.enabled"),
        ("gateway:\n  controlUi: {dangerouslyAllowHostHeaderOriginFallback: 'false'}\n",
         "gateway.controlUi.dangerouslyAllowHostHeaderOriginFallback"),
        ("gateway:\n  auth: {trustedProxy: {allowLoopback: 'false'}}\n", "gateway.auth.trustedProxy.allowLoopback"),
        # a misspelt scope in a ceiling would silently take that scope from everyone under it
        ("sidecar:\n  scopeCeilings: {default: [operator.wirte]}\n", "sidecar.scopeCeilings.default"),
        ("sidecar:\n  scopeCeilings: {identities: {alice: [operator.read, Operator.Admin]}}\n", "sidecar.scopeCeilings.identities"),
        # an https:// upstream's trust: a pin that is no SHA-256, a CA file that is none, both at once
        ("sidecar:\n  upstream: https://gw:1\n  upstreamTls: {fingerprint: 'sha1:ab:cd'}\n", "sidecar.upstreamTls.fingerprint"),
        ("sidecar:\n  upstream: https://gw:1\n  upstreamTls: {caFile: /nonexistent/ca.pem}\n", "sidecar.upstreamTls.caFile"),
        (f"sidecar:\n  upstream: https://gw:1\n  upstreamTls: {{fingerprint: '{'ab' * 32}', caFile: {sys.executable}}}\n",
         "sidecar.upstreamTls.caFile"),
        (f"sidecar:\n  upstream: https://gw:1\n  upstreamTls: {{fingerprint: '{'ab' * 32}', caFile: {CA_FILE}}}\n",
         "sidecar.upstreamTls"),
        # settings that would make every forwarded call a 502
        (f"sidecar:\n  upstreamTls: {{fingerprint: '{'ab' * 32}'}}\n", "sidecar.upstreamTls"),
        ("gateway:\n  tls: {enabled: true}\n", "sidecar.upstream"),
        ("gateway:\n  tls: {enabled: 'true'}\n", "gateway.tls.enabled"),
        # bounds: a zero timeout would time out everything, a negative count or delay means nothing
        ("sidecar:\n  timeouts: {headReadSeconds: 0}\n", "sidecar.timeouts.headReadSeconds"),
        ("sidecar:\n  timeouts: {upstreamReadSeconds: 0}\n", "sidecar.timeouts.upstreamReadSeconds"),
        ("sidecar:\n  rateLimit: {refusalPacing: {afterRefusals: -1}}\n", "sidecar.rateLimit.refusalPacing.afterRefusals"),
        ("sidecar:\n  rateLimit: {refusalPacing: {maxDelayMs: -1}}\n", "sidecar.rateLimit.refusalPacing.maxDelayMs"),
        ("sidecar:\n  websocket: {refusedFrames: {burst: 0}}\n", "sidecar.websocket.refusedFrames.burst"),
        ("sidecar:\n  websocket: {unauthenticatedPerClient: 0}\n", "sidecar.websocket.unauthenticatedPerClient"),
        ("sidecar:\n  drainSeconds: -1\n", "sidecar.drainSeconds"),
        ("sidecar:\n  maxConnections: 0\n", "sidecar.maxConnections"),
        ("sidecar:\n  listen: '127.0.0.1:65536'\n", "sidecar.listen"),
        ("sidecar:\n  upstream: ws://gw:1\n", "sidecar.upstream"),
        # names that open nothing: a misspelt route or method would leave the opening it meant undone
        ("sidecar:\n  routes: {allow: [no-such-route]}\n", "sidecar.routes.allow"),
        ("sidecar:\n  websocket: {allowMethods: [no.such.method]}\n", "sidecar.websocket.allowMethods"),
        # context headers: only x-openclaw-* ones, pinned to printable ASCII
        ("sidecar:\n  contextHeaders: {allow: [Authorization]}\n", "sidecar.contextHeaders.allow"),
        ("sidecar:\n  contextHeaders: {pinned: {alice: {x-forwarded-for: 10.0.0.1}}}\n", "sidecar.contextHeaders.pinned"),
        ("sidecar:\n  contextHeaders: {pinned: {alice: {x-openclaw-account-id: 'café'}}}\n", "sidecar.contextHeaders.pinned"),
        ("sidecar:\n  contextHeaders: {pinned: {alice: {x-openclaw-account-id: \"a\\tb\"}}}\n", "sidecar.contextHeaders.pinned"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert key in problems_of(exc), exc.value.problems


def test_bad_sidecar_and_bad_rule_keys_are_reported_together(tmp_path: Path) -> None:
    text = "sidecar:\n  listne: x\ngateway:\n  trustedProxies: [nope]\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert {"sidecar.listne", "gateway.trustedProxies"} <= set(problems_of(exc))


@pytest.mark.parametrize(
    "storage",
    ["memory://", "redis://localhost:6379/0", "rediss://h:6380", "redis+sentinel://h:26379/m", "redis+cluster://h:7000"],
)
def test_supported_storage_schemes_load(tmp_path: Path, storage: str) -> None:
    config = load_config(write(tmp_path, "c.yaml", f"sidecar:\n  rateLimit: {{storage: '{storage}'}}\n"), environ={})
    assert config.sidecar.rate_limit.storage == storage


@pytest.mark.parametrize("storage", ["redis://localhost:6379/0", "redis://limiter@h:6379/0", "redis+cluster://h:7000,h:7001"])
def test_the_redis_password_comes_from_its_file(tmp_path: Path, storage: str) -> None:
    (tmp_path / "pw").write_text("s3cret:@/#\n")
    text = f"sidecar:\n  rateLimit: {{storage: '{storage}', storagePasswordFile: {tmp_path / 'pw'}}}\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert read_storage_password(config.sidecar.rate_limit) == "s3cret:@/#"
    assert "s3cret" not in repr(config) and "s3cret" not in json.dumps(redacted_view(config))


@pytest.mark.parametrize("storage, password_file, why", [
    ("memory://", "pw", "memory:// has no password"),
    ("redis://:inline@h:6379/0", "pw", "already carries a password"),
    ("redis://user:inline@h:6379/0", "pw", "already carries a password"),
    ("redis://h:6379/0?password=inline", "pw", "already carries a password"),  # redis-py would take this one
    ("redis://h:6379/0", "absent", "cannot read secret file"),
    ("redis://h:6379/0", "empty", "is empty"),
    ("redis://h:6379/0", "latin1", "is not UTF-8 text"),
])
def test_a_redis_password_file_that_cannot_be_used_names_the_key(tmp_path: Path, storage: str, password_file: str,
                                                                  why: str) -> None:
    """Read as `run` reads it, when it builds the storage; `check-config` reads it too."""
    (tmp_path / "pw").write_text("s3cret")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    text = f"sidecar:\n  rateLimit: {{storage: '{storage}', storagePasswordFile: {tmp_path / password_file}}}\n"
    with pytest.raises(ConfigError) as exc:
        read_storage_password(load_config(write(tmp_path, "c.yaml", text), environ={}).sidecar.rate_limit)
    problems = problems_of(exc)
    assert list(problems) == ["sidecar.rateLimit.storagePasswordFile"] and why in problems["sidecar.rateLimit.storagePasswordFile"]
    assert "inline" not in str(exc.value)


# ---- openclawConfig: the gateway's own JSON5 file, overridden key by key ----------------------

GATEWAY_JSON5 = """\
// the gateway's openclaw.json
{
  gateway: {
    port: 18789,
    auth: { mode: 'token', token: 'FROM_GATEWAY', rateLimit: { maxAttempts: 7, windowMs: 5000 } },
    trustedProxies: ['198.51.100.5'],
    tools: { allow: ['sessions_spawn'], deny: ['browser'] },
  },
  agents: { list: [{ id: 'main', default: true }] },
  channels: { whatever: true },
}
"""


def test_openclaw_config_is_merged_and_sidecar_file_rules_override_key_by_key(tmp_path: Path) -> None:
    write(tmp_path, "openclaw.json", GATEWAY_JSON5)
    text = """\
sidecar:
  openclawConfig: openclaw.json
gateway:
  auth:
    rateLimit: {maxAttempts: 2}
  tools:
    deny: [canvas]
"""
    config = load_config(write(tmp_path, "sidecar.yaml", text), environ={})
    gateway = config.rules.gateway
    assert gateway.auth.rate_limit.max_attempts == 2  # sidecar file wins
    assert gateway.auth.rate_limit.window_ms == 5000  # sibling kept from the gateway file
    assert gateway.tools.deny == ("canvas",)  # a list is replaced, not merged
    assert gateway.tools.allow == ("sessions_spawn",)  # untouched sibling kept
    assert gateway.trusted_proxies == ("198.51.100.5",)
    assert config.secrets.token == "FROM_GATEWAY"
    assert config.rules.agents == {"list": [{"id": "main", "default": True}]}


def test_openclaw_config_absolute_path(tmp_path: Path) -> None:
    gateway_file = write(tmp_path, "gw.json5", GATEWAY_JSON5)
    other = tmp_path / "elsewhere"
    other.mkdir()
    config = load_config(write(other, "c.yaml", f"sidecar:\n  openclawConfig: {gateway_file}\n"), environ={})
    assert config.secrets.token == "FROM_GATEWAY"


def test_missing_openclaw_config_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", "sidecar:\n  openclawConfig: nope.json\n"), environ={})
    assert list(problems_of(exc)) == ["sidecar.openclawConfig"]


@pytest.mark.parametrize("text", ["sidecar:\n  eventLoop: trio\n", "sidecar:\n  eventLoop: uvloop\n"])
def test_an_event_loop_that_cannot_run_names_the_key(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without it: not importable
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    problems = problems_of(exc)
    assert list(problems) == ["sidecar.eventLoop"]
    assert ("pip install uvloop" in problems["sidecar.eventLoop"]) == text.endswith("uvloop\n")
    assert load_config(write(tmp_path, "c.yaml", "sidecar:\n  eventLoop: asyncio\n"), environ={}).sidecar.event_loop == "asyncio"


# ---- precedence: flags > environment > file > defaults ---------------------------------------


@pytest.mark.parametrize(
    "in_file, in_env, flag, expected",
    [
        (None, None, None, "127.0.0.1:18790"),
        ("127.0.0.1:1001", None, None, "127.0.0.1:1001"),
        ("127.0.0.1:1001", "127.0.0.1:1002", None, "127.0.0.1:1002"),
        ("127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1003"),
        (None, None, "127.0.0.1:1003", "127.0.0.1:1003"),
        (None, "127.0.0.1:1002", None, "127.0.0.1:1002"),
    ],
)
def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    in_file: str | None, in_env: str | None, flag: str | None, expected: str,
) -> None:
    text = f"sidecar:\n  listen: '{in_file}'\n" if in_file else ""
    if in_env:
        monkeypatch.setenv("OPENCLAW_SIDECAR_LISTEN", in_env)
    overrides = {"listen": flag} if flag else None
    config = load_config(write(tmp_path, "c.yaml", text), overrides, environ={})
    assert config.sidecar.listen == expected


def test_nested_env_override_merges_with_file_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIDECAR_TIMEOUTS__BODY_READ_SECONDS", "7")
    text = "sidecar:\n  timeouts:\n    bodyReadSeconds: 3\n    upstreamReadSeconds: 9\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.sidecar.timeouts.body_read_seconds == 7  # env beats file
    assert config.sidecar.timeouts.upstream_read_seconds == 9  # file sibling survives


def test_nested_env_override_of_rate_limit_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE", "redis://localhost:6379")
    text = "sidecar:\n  rateLimit: {storage: 'memory://', maxEntries: 5}\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.sidecar.rate_limit.storage == "redis://localhost:6379"
    assert config.sidecar.rate_limit.max_entries == 5


def test_a_json_variable_spelling_keys_as_the_file_does_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside the file's `maxEntries`, the variable's `maxEntries` was refused as an unknown key."""
    monkeypatch.setenv("OPENCLAW_SIDECAR_RATE_LIMIT", '{"maxEntries": 5}')
    config = load_config(write(tmp_path, "c.yaml", "sidecar:\n  rateLimit: {maxEntries: 7}\n"), environ={})
    assert config.sidecar.rate_limit.max_entries == 5


def test_env_list_value_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIDECAR_ROUTES__DENY", '["/v1", "/sessions"]')
    assert load_config(None, environ={}).sidecar.routes.deny == ("/v1", "/sessions")


def test_snake_case_file_keys_are_accepted(tmp_path: Path) -> None:
    text = "sidecar:\n  rate_limit: {max_entries: 3}\n  timeouts: {body_read_seconds: 4}\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert (config.sidecar.rate_limit.max_entries, config.sidecar.timeouts.body_read_seconds) == (3, 4)


def test_bad_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE", "mongodb://x")
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={})
    assert "sidecar.rateLimit.storage" in problems_of(exc)


def test_flag_overrides_env_for_nested_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIDECAR_LOG_LEVEL", "ERROR")
    assert load_config(None, environ={}).sidecar.log_level == "ERROR"
    assert load_config(None, {"log_level": "DEBUG"}, environ={}).sidecar.log_level == "DEBUG"


# ---- secrets (§2.1) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth_yaml, environ, mode, token, password",
    [
        # config token beats the environment
        ("{token: CFG}", {"OPENCLAW_GATEWAY_TOKEN": "ENV"}, "token", "CFG", None),
        # environment used when config has none
        ("{}", {"OPENCLAW_GATEWAY_TOKEN": "ENV"}, "token", "ENV", None),
        # legacy variables are ignored
        ("{}", {"CLAWDBOT_GATEWAY_TOKEN": "X", "MOLTBOT_GATEWAY_TOKEN": "Y"}, "token", None, None),
        # blank / undefined / null count as missing, falling through to the environment
        ("{token: '   '}", {"OPENCLAW_GATEWAY_TOKEN": "ENV"}, "token", "ENV", None),
        ("{token: undefined}", {}, "token", None, None),
        ("{token: 'null'}", {}, "token", None, None),
        ("{token: 'NULL'}", {}, "token", None, None),
        ("{token: ''}", {}, "token", None, None),
        ("{}", {"OPENCLAW_GATEWAY_TOKEN": "undefined"}, "token", None, None),
        # unset mode: password iff a password resolves
        ("{password: P}", {}, "password", None, "P"),
        ("{}", {"OPENCLAW_GATEWAY_PASSWORD": "EP"}, "password", None, "EP"),
        ("{token: T, password: P}", {}, "password", "T", "P"),
        ("{token: T, password: undefined}", {}, "token", "T", None),
        ("{password: '  '}", {}, "token", None, None),
        # explicit mode wins
        ("{mode: token, token: T, password: P}", {}, "token", "T", "P"),
        ("{mode: none}", {}, "none", None, None),
        ("{password: CFG}", {"OPENCLAW_GATEWAY_PASSWORD": "ENV"}, "password", None, "CFG"),
    ],
)
def test_secret_resolution(
    tmp_path: Path, auth_yaml: str, environ: dict[str, str], mode: str, token: str | None, password: str | None,
) -> None:
    config = load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {auth_yaml}\n"), environ=environ)
    assert (config.secrets.mode, config.secrets.token, config.secrets.password) == (mode, token, password)


@pytest.mark.parametrize(
    "auth_yaml, problem_fragment",
    [
        ("{}", "no token resolved"),
        ("{token: undefined}", "no token resolved"),
        ("{token: 'null'}", "no token resolved"),
        ("{token: ' '}", "no token resolved"),
        ("{mode: password}", "no password resolved"),
        ("{mode: password, password: undefined}", "no password resolved"),
        ("{mode: trusted-proxy}", "userHeader is required"),
        ("{mode: trusted-proxy, trustedProxy: {userHeader: x-user}}", "trustedProxies is empty"),
    ],
)
def test_missing_secret_is_a_problem_not_an_error(tmp_path: Path, auth_yaml: str, problem_fragment: str) -> None:
    """Case 14: a blank/undefined/null token loads, and every request will be 401; `problems` says why."""
    config = load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {auth_yaml}\n"), environ={})
    assert any(problem_fragment in p for p in config.secrets.problems), config.secrets.problems
    assert redacted_view(config)["effective"]["problems"] == list(config.secrets.problems)


def test_no_problems_when_secret_resolves(tmp_path: Path) -> None:
    text = "gateway:\n  auth: {mode: trusted-proxy, trustedProxy: {userHeader: x-user}}\n  trustedProxies: [198.51.100.5]\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.secrets.problems == ()
    assert config.secrets.upstream_credential is None


@pytest.mark.parametrize("content, expected", [("FILETOKEN\n", "FILETOKEN"), ("  FILETOKEN  ", "FILETOKEN"), ("undefined\n", None), ("\n", None)])
def test_token_file_is_read(tmp_path: Path, content: str, expected: str | None) -> None:
    token_file = write(tmp_path, "token", content)
    config = load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {{tokenFile: '{token_file}'}}\n"), environ={})
    assert config.secrets.token == expected


def test_config_token_beats_token_file(tmp_path: Path) -> None:
    token_file = write(tmp_path, "token", "FILETOKEN")
    text = f"gateway:\n  auth: {{token: CFG, tokenFile: '{token_file}'}}\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={"OPENCLAW_GATEWAY_TOKEN": "ENV"}).secrets.token == "CFG"


def test_token_file_beats_env(tmp_path: Path) -> None:
    token_file = write(tmp_path, "token", "FILETOKEN")
    text = f"gateway:\n  auth: {{tokenFile: '{token_file}'}}\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={"OPENCLAW_GATEWAY_TOKEN": "ENV"}).secrets.token == "FILETOKEN"


def test_password_file_is_read(tmp_path: Path) -> None:
    password_file = write(tmp_path, "pw", "FILEPW\n")
    config = load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {{passwordFile: '{password_file}'}}\n"), environ={})
    assert (config.secrets.mode, config.secrets.password) == ("password", "FILEPW")


@pytest.mark.parametrize(
    "key, camel",
    [("tokenFile", "gateway.auth.tokenFile"), ("passwordFile", "gateway.auth.passwordFile")],
)
def test_unreadable_secret_file_names_the_key(tmp_path: Path, key: str, camel: str) -> None:
    text = f"gateway:\n  auth: {{{key}: '{tmp_path / 'absent'}'}}\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == [camel]


def test_secret_file_that_is_a_directory_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {{tokenFile: '{tmp_path}'}}\n"), environ={})
    assert list(problems_of(exc)) == ["gateway.auth.tokenFile"]


@pytest.mark.parametrize("auth, environ, key", [
    ("token: T", {}, "gateway.auth.token"), ("tokenFile: TOKEN_FILE", {}, "gateway.auth.tokenFile"),
    ("", {"OPENCLAW_GATEWAY_TOKEN": "T"}, "OPENCLAW_GATEWAY_TOKEN"),
    ("tokenFile: EMPTY_FILE", {"OPENCLAW_GATEWAY_TOKEN": "T"}, "OPENCLAW_GATEWAY_TOKEN"),  # the file set, the variable read
])
def test_trusted_proxy_with_token_is_a_config_error_naming_where_the_token_came_from(tmp_path: Path, auth: str,
                                                                                     environ: dict[str, str], key: str) -> None:
    (tmp_path / "token").write_text("T\n")
    (tmp_path / "empty").write_text("\n")
    auth = auth.replace("TOKEN_FILE", str(tmp_path / "token")).replace("EMPTY_FILE", str(tmp_path / "empty"))
    text = f"gateway:\n  auth: {{mode: trusted-proxy, {auth + ', ' if auth else ''}trustedProxy: {{userHeader: x-user}}}}\n  trustedProxies: [198.51.100.5]\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ=environ)
    assert list(problems_of(exc)) == [key]
    assert "mutually exclusive" in str(exc.value)


def test_a_token_in_the_gateways_file_is_dropped_beside_trusted_proxy_mode_by_null(tmp_path: Path) -> None:
    """What the error tells users who run the gateway in token mode behind a trusted-proxy sidecar."""
    gateway_file = write(tmp_path, "openclaw.json5", "{gateway: {auth: {mode: 'token', token: 'gateway-token-0123456789'}}}")
    text = (f"sidecar: {{openclawConfig: '{gateway_file}', upstreamAuth: {{token: 'gateway-token-0123456789'}}}}\n"
            "gateway:\n  auth: {mode: trusted-proxy, token: null, trustedProxy: {userHeader: x-user, allowUsers: [a]}}\n"
            "  trustedProxies: [198.51.100.5]\n")
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert (config.secrets.mode, config.secrets.token, config.secrets.upstream_credential) == (
        "trusted-proxy", None, "gateway-token-0123456789")


@pytest.mark.parametrize(
    "upstream_yaml, expected",
    [
        ("", "T"),
        ("upstreamAuth: {token: UP}", "UP"),
        ("upstreamAuth: {token: undefined}", "T"),
    ],
)
def test_upstream_credential(tmp_path: Path, upstream_yaml: str, expected: str) -> None:
    text = f"sidecar:\n  {upstream_yaml}\ngateway:\n  auth: {{token: T}}\n" if upstream_yaml else "gateway:\n  auth: {token: T}\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={}).secrets.upstream_credential == expected


def test_upstream_token_file(tmp_path: Path) -> None:
    up = write(tmp_path, "up", "UPFILE\n")
    text = f"sidecar:\n  upstreamAuth: {{tokenFile: '{up}'}}\ngateway:\n  auth: {{token: T}}\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={}).secrets.upstream_credential == "UPFILE"


def test_unreadable_upstream_token_file_names_the_key(tmp_path: Path) -> None:
    text = f"sidecar:\n  upstreamAuth: {{tokenFile: '{tmp_path / 'absent'}'}}\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == ["sidecar.upstreamAuth.tokenFile"]


def test_password_mode_upstream_credential_is_the_password(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "c.yaml", "gateway:\n  auth: {password: P}\n"), environ={})
    assert config.secrets.upstream_credential == "P"


# ---- redacted view --------------------------------------------------------------------------


def test_redacted_view_and_repr_hide_every_secret(tmp_path: Path) -> None:
    text = """\
sidecar:
  upstreamAuth: {token: UPSTREAM-SECRET}
  rateLimit: {storage: 'redis://user:REDIS-SECRET@redis.internal:6379/0'}
  auth: {previousTokens: [OLD-SECRET], previousPasswords: [OLD-PASSWORD]}
gateway:
  auth: {mode: token, token: TOKEN-SECRET, password: PASSWORD-SECRET}
"""
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    view = redacted_view(config)
    secrets = ("UPSTREAM-SECRET", "REDIS-SECRET", "TOKEN-SECRET", "PASSWORD-SECRET", "OLD-SECRET", "OLD-PASSWORD")
    for shown in (json.dumps(view), repr(config), str(config)):
        for secret in secrets:
            assert secret not in shown
    assert (config.secrets.previous_tokens, config.secrets.previous_passwords) == (("OLD-SECRET",), ("OLD-PASSWORD",))
    assert view["gateway"]["auth"]["token"] == "**********"
    assert view["gateway"]["auth"]["password"] == "**********"
    assert view["sidecar"]["upstream_auth"]["token"] == "**********"
    assert view["sidecar"]["rate_limit"]["storage"] == "redis://user:***@redis.internal:6379/0"
    assert view["effective"] == {
        "authMode": "token", "tokenConfigured": True, "passwordConfigured": True,
        "upstreamCredentialConfigured": True, "previousSecrets": 2, "problems": [],
    }


def test_only_the_policy_parts_of_the_gateways_other_sections_are_kept(tmp_path: Path) -> None:
    """Channel bot tokens, tool API keys and sandbox environments never enter the sidecar."""
    document = {
        "channels": {"irc": {"token": "BOT-SECRET", "groups": {"9": {"tools": {"deny": ["theme"]}}},
                             "accounts": {"work": {"password": "ACCOUNT-SECRET", "groups": {}}, "other": "x"}}},
        "tools": {"profile": "coding", "web": {"search": {"enabled": False, "apiKey": "SEARCH-SECRET"}},
                  "exec": {"env": {"K": "EXEC-SECRET"}}, "alsoAllow": ["canvas"], "subagents": {"tools": {"deny": ["exec"]}}},
        "agents": {"list": [{"id": "main", "default": True, "tools": {"deny": ["x"]},
                             "sandbox": {"mode": "all", "docker": {"env": {"K": "SANDBOX-SECRET"}}}}],
                   "defaults": {"model": {"apiKey": "MODEL-SECRET"}, "subagents": {"maxSpawnDepth": 2}}},
        "session": {"scope": "global", "mainKey": "work", "reset": {"token": "SESSION-SECRET"}},
    }
    rules = load_config(write(tmp_path, "c.json", json.dumps(document)), environ={}).rules
    assert rules.channels == {"irc": {"groups": {"9": {"tools": {"deny": ["theme"]}}},
                                      "accounts": {"work": {"groups": {}}, "other": "[not read]"}}}
    assert rules.tools == {"profile": "coding", "web": {"search": {"enabled": False}}, "alsoAllow": ["canvas"],
                           "subagents": {"tools": {"deny": ["exec"]}}}
    assert rules.agents == {"list": [{"id": "main", "default": True, "tools": {"deny": ["x"]}, "sandbox": {"mode": "all"}}],
                            "defaults": {"subagents": {"maxSpawnDepth": 2}}}
    assert rules.session == {"scope": "global", "mainKey": "work"}
    assert "SECRET" not in json.dumps(rules.model_dump())


def test_a_section_not_of_the_shape_the_policy_reads_keeps_its_type_and_no_content(tmp_path: Path) -> None:
    """Admin/CLI red team: accounts written as a list, agents.list as an object, were kept whole,
    tokens and all, and printed by check-config. The tool policy reads such a value as empty (what
    the gateway's Array.isArray and object tests make of it), so only its type is kept."""
    document = {
        "channels": {"telegram": {"botToken": "BOT-SECRET", "accounts": [{"token": "ACCOUNT-SECRET"}], "groups": {"g": {"x": 1}}},
                     "irc": "CHANNEL-SECRET"},
        "agents": {"list": {"a": "AGENTS-SECRET"}, "entries": [{"id": "x", "apiKey": "ENTRY-SECRET"}]},
        "tools": {"web": ["WEB-SECRET"], "sandbox": 5},
    }
    config = load_config(write(tmp_path, "c.json", json.dumps(document)), environ={})
    assert config.rules.channels == {"telegram": {"accounts": [], "groups": {"g": {"x": 1}}}, "irc": "[not read]"}
    assert config.rules.agents == {"list": {}, "entries": []}
    assert config.rules.tools == {"web": [], "sandbox": 5}
    assert "SECRET" not in json.dumps(redacted_view(config))


def test_redacted_view_hides_env_and_file_secrets(tmp_path: Path) -> None:
    token_file = write(tmp_path, "token", "FILE-SECRET")
    text = f"gateway:\n  auth: {{tokenFile: '{token_file}'}}\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={"OPENCLAW_GATEWAY_PASSWORD": "ENV-SECRET"})
    dumped = json.dumps(redacted_view(config))
    assert "FILE-SECRET" not in dumped
    assert "ENV-SECRET" not in dumped


def test_redacted_view_keeps_plain_storage_uri() -> None:
    assert redacted_view(load_config(None, environ={}))["sidecar"]["rate_limit"]["storage"] == "memory://"


# ---- the gateway's own spellings of a credential ------------------------------------------------


def load_with_gateway_file(tmp_path: Path, gateway_json5: str, environ: dict[str, str], sidecar_yaml: str = ""):
    write(tmp_path, "openclaw.json5", gateway_json5)
    return load_config(write(tmp_path, "c.yaml", "sidecar:\n  openclawConfig: openclaw.json5\n" + sidecar_yaml), environ=environ)


@pytest.mark.parametrize("written", ["'${OPENCLAW_GATEWAY_TOKEN}'", "'$OPENCLAW_GATEWAY_TOKEN'",
                                     "{source: 'env', provider: 'default', id: 'OPENCLAW_GATEWAY_TOKEN'}"])
def test_an_env_reference_in_the_gateways_file_is_the_variables_value(tmp_path: Path, written: str) -> None:
    config = load_with_gateway_file(tmp_path, f"{{gateway: {{auth: {{token: {written}}}}}}}",
                                    {"OPENCLAW_GATEWAY_TOKEN": "real-secret"})
    assert (config.secrets.token, config.secrets.problems) == ("real-secret", ())


@pytest.mark.parametrize("written, why", [
    ("'${GW_TOKEN}'", "the unset variable 'GW_TOKEN'"), ("'$GW_TOKEN'", "the unset variable 'GW_TOKEN'"),
    ("{source: 'file', provider: 'filemain', id: '/gateway/token'}", "a file SecretRef '/gateway/token'"),
    ("'$${GW_TOKEN}'", None), ("'prefix-${GW_TOKEN}'", None),  # a literal reference is no credential either
])
def test_a_reference_the_sidecar_cannot_resolve_is_never_taken_as_the_secret(tmp_path: Path, written: str, why: str | None) -> None:
    """Taken literally, `${GW_TOKEN}` would be a token anyone can read in the docs (the gateway
    refuses it as a credential); with none resolved every request is refused, and the log says why."""
    config = load_with_gateway_file(tmp_path, f"{{gateway: {{auth: {{token: {written}}}}}}}", {})
    assert config.secrets.token is None
    (problem,) = config.secrets.problems
    assert "no token resolved" in problem and (why is None or problem.endswith(why)), problem


def test_an_unresolved_reference_leaves_the_sidecars_own_token_file(tmp_path: Path) -> None:
    """The Kubernetes layout: the gateway's file names its variable, the sidecar mounts the Secret."""
    token_file = write(tmp_path, "token", "mounted-secret\n")
    config = load_with_gateway_file(tmp_path, "{gateway: {auth: {token: '${OPENCLAW_GATEWAY_TOKEN}'}}}", {},
                                    f"gateway:\n  auth: {{tokenFile: '{token_file}'}}\n")
    assert config.secrets.token == "mounted-secret"


def test_the_gateways_env_block_and_substitution_reach_every_rule(tmp_path: Path) -> None:
    gateway = "{env: {vars: {GW_TOKEN: 'from-block', DENIED: 'canvas'}}, gateway: {auth: {token: '${GW_TOKEN}'}, tools: {deny: ['${DENIED}']}}}"
    config = load_with_gateway_file(tmp_path, gateway, {"DENIED": "browser"})  # the process environment wins
    assert (config.secrets.token, config.rules.gateway.tools.deny) == ("from-block", ("browser",))


@pytest.mark.parametrize("auth_yaml, key", [
    ("{token: __OPENCLAW_REDACTED__}", "gateway.auth.token"), ("{token: ' change-me-now '}", "gateway.auth.token"),
    ("{token: change-me-to-a-long-random-token}", "gateway.auth.token"), ("{mode: password, password: '***'}", "gateway.auth.password"),
    ("{mode: password, password: change-me-to-a-strong-password}", "gateway.auth.password"),
])
def test_a_redaction_marker_or_published_placeholder_is_refused_as_the_gateway_refuses_it(
        tmp_path: Path, auth_yaml: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", f"gateway:\n  auth: {auth_yaml}\n"), environ={})
    assert list(problems_of(exc)) == [key]


def test_a_redacted_password_in_trusted_proxy_mode_is_no_local_fallback(tmp_path: Path) -> None:
    text = "gateway:\n  auth: {mode: trusted-proxy, password: __OPENCLAW_REDACTED__, trustedProxy: {userHeader: x-user}}\n  trustedProxies: [198.51.100.5]\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={}).secrets.password is None


def test_the_gateways_credential_is_trimmed_as_it_trims_it(tmp_path: Path) -> None:
    config = load_with_gateway_file(tmp_path, "{gateway: {auth: {token: '  padded-secret\\u3000'}}}", {})
    assert config.secrets.token == "padded-secret"


@pytest.mark.parametrize("listen, refused", [("0.0.0.0:18790", True), ("[::]:18790", True), ("203.0.113.1:0", True),
                                             ("127.0.0.1:18790", False), ("127.0.0.2:0", False), ("[::1]:0", False),
                                             ("localhost:0", False), (":18790", True)])  # no host: every address
def test_auth_mode_none_is_refused_beyond_loopback_as_the_gateway_refuses_it(tmp_path: Path, listen: str, refused: bool) -> None:
    text = f"sidecar:\n  listen: '{listen}'\ngateway:\n  auth: {{mode: none}}\n"
    if not refused:
        assert load_config(write(tmp_path, "c.yaml", text), environ={}).secrets.mode == "none"
        return
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == ["gateway.auth.mode"]


@pytest.mark.parametrize("env_section, environ, name, token", [
    ("{vars: {GW: 'from-block'}}", {"GW": ""}, "GW", "from-block"),  # an empty process variable counts as missing
    ("{vars: {GW: 'from-block'}}", {"GW": " \t"}, "GW", "from-block"),  # and so does a blank one
    ("{vars: {GW: '${OTHER}'}}", {"OTHER": "x"}, "GW", None),  # a value holding a reference is not applied
    ("{vars: {GW: '  '}}", {}, "GW", None),
    ("{vars: {OPENCLAW_INCLUDE_ROOTS: '/'}}", {}, "OPENCLAW_INCLUDE_ROOTS", None),  # names the gateway refuses there
    ("{vars: {LD_AUDIT: 'x'}}", {}, "LD_AUDIT", None),
    ("{NODE_OPTIONS: 'x'}", {}, "NODE_OPTIONS", None),
    ("{GW: 'top-level'}", {}, "GW", "top-level"),  # `env.NAME` strings are variables too
    ("{vars: {GW: 'first'}, GW: 'second'}", {}, "GW", "second"),  # the later entry wins
    ("{vars: {' GW ': 'trimmed-name'}}", {}, "GW", "trimmed-name"),
])
def test_the_env_section_fills_in_only_what_the_gateway_applies(tmp_path: Path, env_section: str, environ: dict[str, str],
                                                                name: str, token: str | None) -> None:
    config = load_with_gateway_file(tmp_path, f"{{env: {env_section}, gateway: {{auth: {{token: '${{{name}}}'}}}}}}", environ)
    assert config.secrets.token == token


@pytest.mark.parametrize("proxies, warned", [(["10.42.0.0/16"], True), (["127.0.0.1", "::1"], False), (["198.51.100.5"], False)])
def test_trusted_proxy_mode_trusting_a_range_is_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         proxies: list[str], warned: bool) -> None:
    """Any host in a trusted range can name any allowed user; on Kubernetes a pod range holds the
    node's own address, which NetworkPolicy never stops (red team)."""
    from sidecar.runtime import warn_about_config

    text = json.dumps({"gateway": {"auth": {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user", "allowUsers": ["a"]}},
                                   "trustedProxies": proxies}})
    with caplog.at_level("WARNING", logger="sidecar"):
        warn_about_config(load_config(write(tmp_path, "c.json", text), environ={}))
    assert any("TRUSTED-PROXY MODE TRUSTING RANGES" in r.getMessage() for r in caplog.records) is warned


@pytest.mark.parametrize("upstream, warned", [({}, False), ({"upstreamAuth": {"token": "T"}}, False),
                                              ({"upstreamAuth": {"token": "other"}}, True)])
def test_nodes_allowed_that_no_node_could_sign_for_are_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 upstream: dict, warned: bool) -> None:
    """A node signs the credential it presents; the sidecar relays its connect only when that is
    the one the gateway gets, so another upstream credential leaves allowNodes doing nothing."""
    from sidecar.runtime import warn_about_config

    text = json.dumps({"gateway": {"auth": {"token": "T"}}, "sidecar": {"websocket": {"allowNodes": True}, **upstream}})
    with caplog.at_level("WARNING", logger="sidecar"):
        warn_about_config(load_config(write(tmp_path, "c.json", text), environ={}))
    assert any("no node can connect" in r.getMessage() for r in caplog.records) is warned


@pytest.mark.parametrize("proxies, allow_loopback, warned", [
    (["127.0.0.1", "::1"], False, True), (["127.0.0.1/32"], True, False), (["127.0.0.1", "198.51.100.5"], False, False),
])
def test_trusted_proxy_mode_that_refuses_its_only_proxy_is_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                     proxies: list[str], allow_loopback: bool, warned: bool) -> None:
    """`tailscale serve` in the pod or on the host connects from loopback: without allowLoopback
    the documented identity set-up refused every request, and nothing said why until one came (review)."""
    from sidecar.runtime import warn_about_config

    trusted_proxy = {"userHeader": "tailscale-user-login", "allowUsers": ["a"], "allowLoopback": allow_loopback}
    text = json.dumps({"gateway": {"auth": {"mode": "trusted-proxy", "trustedProxy": trusted_proxy}, "trustedProxies": proxies}})
    with caplog.at_level("WARNING", logger="sidecar"):
        warn_about_config(load_config(write(tmp_path, "c.json", text), environ={}))
    assert any("WITHOUT trustedProxy.allowLoopback" in r.getMessage() for r in caplog.records) is warned


def trusted_proxy(proxies: tuple[str, ...] = ("198.51.100.5",), **settings: object) -> dict:
    return {"auth": {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user", **settings}}, "trustedProxies": list(proxies)}


TOKEN_GATEWAY = {"auth": {"token": "T"}}
TLS_GATEWAY = {**TOKEN_GATEWAY, "tls": {"enabled": True}}
PASSWORD_GATEWAY = {"auth": {"mode": "password", "password": "P"}}


@pytest.mark.parametrize("config, warnings", [
    ({"gateway": TOKEN_GATEWAY}, ()),
    ({"gateway": {"auth": {"mode": "token"}}}, ("auth misconfigured, every authenticated request will get 401: gateway.auth.mode is token",)),
    ({"gateway": trusted_proxy()}, ("TRUSTED-PROXY MODE WITH NEITHER allowUsers NOR requiredHeaders",)),
    ({"gateway": trusted_proxy(requiredHeaders=["x-proto"])}, ()),
    ({"gateway": trusted_proxy(("10.42.0.0/16", "198.51.100.4/31"), allowUsers=["a"])},
     ("TRUSTED-PROXY MODE TRUSTING RANGES 10.42.0.0/16, 198.51.100.4/31: any host in them can name any allowed user",)),
    ({"gateway": {**TOKEN_GATEWAY, "trustedProxies": ["127.0.0.1", "10.42.0.0/16"]}}, ()),  # trusted for attribution alone
    ({"gateway": TOKEN_GATEWAY, "sidecar": {"enforce": False}}, ("SHADOW MODE",)),
    ({"gateway": TOKEN_GATEWAY, "sidecar": {"websocket": {"mode": "passthrough"}}}, ("WEBSOCKET PASSTHROUGH",)),
    ({"gateway": TLS_GATEWAY, "sidecar": {"upstream": "https://127.0.0.1:1"}}, ("gateway.tls.enabled and no sidecar.upstreamTls",)),
    ({"gateway": TLS_GATEWAY, "sidecar": {"upstream": "https://127.0.0.1:1", "upstreamTls": {"fingerprint": "ab" * 32}}}, ()),
    ({"gateway": {**TOKEN_GATEWAY, "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},  # opened, and switched on
      "sidecar": {"routes": {"allow": ["openai-chat-completions", "node-capability"]}}},
     ("route openai-chat-completions opened beyond the default policy (acts, credential gateway: agent turn as owner, "
      "scopes header ignored for the token)", "route node-capability opened beyond the default policy (node capabilities)")),
    ({"gateway": PASSWORD_GATEWAY, "sidecar": {"websocket": {"allowNodes": True}}}, ()),
    ({"gateway": PASSWORD_GATEWAY, "sidecar": {"websocket": {"allowNodes": True}, "upstreamAuth": {"token": "other"}}},
     ("sidecar.websocket.allowNodes is on but no node can connect",)),
])
async def test_building_the_runtime_says_what_will_refuse_every_call_or_let_calls_past_the_policy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, config: dict, warnings: tuple[str, ...]) -> None:
    """Said at start-up and at each reload, whichever way the sidecar is loaded (run, mitmdump,
    check-config): they all build the runtime. Nothing is said of a configuration that earns nothing."""
    from sidecar.runtime import build_runtime

    with caplog.at_level("WARNING", logger="sidecar"):
        runtime = build_runtime(load_config(write(tmp_path, "c.json", json.dumps(config)), environ={}))
    await runtime.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "sidecar"]
    assert len(said) == len(caplog.records) == len(warnings) and all(message.startswith(warning) for message, warning in zip(said, warnings)), said


@pytest.mark.parametrize("variable, value, flags, expected", [
    ("OPENCLAW_SIDECAR_LISTEN", "bad", {}, ("sidecar.listen", "expected HOST:PORT, got 'bad' (from OPENCLAW_SIDECAR_LISTEN)")),
    ("OPENCLAW_SIDECAR_RATE_LIMIT__MAX_ENTRIES", "-5", {},
     ("sidecar.rateLimit.maxEntries", "greater than or equal to 1 (from OPENCLAW_SIDECAR_RATE_LIMIT__MAX_ENTRIES)")),
    ("OPENCLAW_SIDECAR_RATE_LIMIT", '{"max_entries": -5}', {}, ("sidecar.rateLimit.maxEntries", "(from OPENCLAW_SIDECAR_RATE_LIMIT)")),
    ("OPENCLAW_SIDECAR_RATE_LIMIT", '{"maxEntries": -5}', {}, ("sidecar.rateLimit.maxEntries", "(from OPENCLAW_SIDECAR_RATE_LIMIT)")),
    ("OPENCLAW_SIDECAR_LISTEN", "bad", {"listen": "alsobad"}, ("sidecar.listen", "got 'alsobad'")),  # the flag's
    # the variable sets the object, but not the bad key: the file's value is named as the file's
    ("OPENCLAW_SIDECAR_RATE_LIMIT", '{"storage": "memory://"}', {}, ("sidecar.rateLimit.maxEntries", "greater than or equal to 1")),
])
def test_a_bad_value_from_the_environment_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str,
                                                              value: str, flags: dict, expected: tuple[str, str]) -> None:
    monkeypatch.setenv(variable, value)
    in_file = -5 if "storage" in value else 7
    with pytest.raises(ConfigError) as failed:
        load_config(write(tmp_path, "c.yaml", f"sidecar:\n  rateLimit: {{maxEntries: {in_file}}}\n"), flags, environ={})
    [(key, message)] = failed.value.problems
    assert key == expected[0] and message.endswith(expected[1]), message
    assert ("(from " in message) is (not flags and in_file > 0)


@pytest.mark.parametrize("where, problem", [("missing/audit.log", "does not exist"), (".", "is a directory")])
def test_an_audit_log_the_process_cannot_write_is_refused_at_start_up(tmp_path: Path, where: str, problem: str) -> None:
    """Its lines were dropped one batch after another, with a log line every ten seconds (review)."""
    path = tmp_path / where
    with pytest.raises(ConfigError) as failed:
        load_config(write(tmp_path, "c.json", json.dumps({"sidecar": {"auditLog": str(path)}})), environ={})
    assert problem in problems_of(failed)["sidecar.auditLog"]


def test_a_writable_audit_log_is_taken(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "c.json", json.dumps({"sidecar": {"auditLog": str(tmp_path / "a.log")}})), environ={})
    assert config.sidecar.audit_log == str(tmp_path / "a.log")


def test_an_inline_secret_is_trimmed_as_a_file_is(tmp_path: Path) -> None:
    """A Secret put in the environment often ends with a newline; it made the sidecar refuse to
    start ("contains control characters"), where the same Secret as a file was trimmed."""
    config = load_config(write(tmp_path, "c.yaml", "gateway:\n  auth: {token: T}\nsidecar:\n  upstreamAuth: {token: \"up-secret\\n\"}\n"),
                         environ={})
    assert config.secrets.upstream_credential == "up-secret"


@pytest.mark.parametrize("text, key", [
    ("sidecar:\n  upstreamAuth: {token: токен}\ngateway:\n  auth: {token: caller}\n", "sidecar.upstreamAuth.token"),
    ("gateway:\n  auth: {token: токен}\n", "gateway.auth.token"),
    ("gateway:\n  auth: {mode: password, password: 'pässwörd✓'}\n", "gateway.auth.password"),
])
def test_an_upstream_credential_no_http_header_can_carry_is_a_start_up_error(tmp_path: Path, text: str, key: str) -> None:
    """It passed, and every forwarded request failed building its header (red team: that fault
    reached mitmproxy's hook error path, which relayed the raw request)."""
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == [key]


def test_a_latin1_upstream_credential_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "c.yaml", "gateway:\n  auth: {token: tökén}\n"), environ={})
    assert config.secrets.upstream_credential == "tökén"


@pytest.mark.parametrize("gateway_file, key", [
    ("{hooks: {enabled: true, token: 'h', path: '${OPENCLAW_HOOKS_PATH}'}}", "hooks.path"),
    ("{gateway: {controlUi: {basePath: '${UI_BASE}'}}}", "gateway.controlUi.basePath"),
    ("{hooks: {enabled: true, token: 'h', path: ' / '}}", "hooks"),
])
def test_a_routing_path_the_sidecar_cannot_know_is_a_start_up_error(tmp_path: Path, gateway_file: str, key: str) -> None:
    """A variable set for the gateway alone (the Kubernetes layout) moved its hooks to a path the
    sidecar judged as /tools/invoke (red team); `/` the gateway refuses as a hooks path."""
    with pytest.raises(ConfigError) as exc:
        load_with_gateway_file(tmp_path, gateway_file, {})
    assert list(problems_of(exc)) == [key]


def test_blank_trusted_proxy_entries_are_skipped_as_the_gateway_skips_them(tmp_path: Path) -> None:
    """Refusing them refused the whole edit where the gateway took it, a rotated token with it."""
    config = load_config(write(tmp_path, "c.json", json.dumps({"gateway": {"trustedProxies": ["", " 10.0.0.1 ", "\u3000\ufeff"]}})),
                         environ={})
    assert config.rules.gateway.trusted_proxies == (" 10.0.0.1 ",)


def test_an_environment_value_that_is_no_json_where_json_is_needed_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was a pydantic-settings traceback (admin/CLI red team); the value itself is not echoed."""
    monkeypatch.setenv("OPENCLAW_SIDECAR_AUTH__PREVIOUS_TOKENS", "old-secret-1")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", "sidecar: {}\n"), environ={})
    assert "written as JSON" in str(exc.value) and "old-secret-1" not in str(exc.value)


# ---- what mutation testing found unpinned -----------------------------------------------------


def test_required_headers_are_read_as_the_gateway_reads_them(tmp_path: Path) -> None:
    """Trimmed and lower-cased (its normalizeLowercaseStringOrEmpty); X-Request-Id the sidecar writes itself."""
    text = "gateway:\n  auth: {trustedProxy: {requiredHeaders: [' X-Forwarded-Proto ', X-Request-Id]}}\n"
    config = load_config(write(tmp_path, "c.yaml", text), environ={})
    assert config.rules.gateway.auth.trusted_proxy.required_headers == ("x-forwarded-proto", "x-request-id")


def test_an_identitys_own_pins_win_over_everyones(tmp_path: Path) -> None:
    text = "sidecar:\n  contextHeaders: {pinned: {'*': {x-openclaw-account-id: all}, alice: {x-openclaw-account-id: mine}}}\n"
    headers = load_config(write(tmp_path, "c.yaml", text), environ={}).sidecar.context_headers
    assert (headers.pinned_for("alice"), headers.pinned_for("bob")) == ({"x-openclaw-account-id": "mine"}, {"x-openclaw-account-id": "all"})


def test_a_bad_storage_uri_beside_a_password_file_names_the_uri_alone(tmp_path: Path) -> None:
    text = f"sidecar:\n  rateLimit: {{storage: 'mongodb://db', storagePasswordFile: {tmp_path / 'pw'}}}\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == ["sidecar.rateLimit.storage"]


def test_a_storage_uri_only_the_storage_itself_refuses_fails_the_start_naming_the_key(tmp_path: Path) -> None:
    """A sentinel URI without its service name reads well and fails only when the limiter builds
    its storage: still a configuration error naming the key, with the password masked."""
    from sidecar.runtime import build_runtime

    config = load_config(write(tmp_path, "c.yaml", "sidecar:\n  rateLimit: {storage: 'redis+sentinel://:s3cret@sentinel:26379'}\n"), environ={})
    with pytest.raises(ConfigError) as exc:
        build_runtime(config)
    [(key, message)] = exc.value.problems
    assert key == "sidecar.rateLimit.storage" and "s3cret" not in message, message
    assert message.startswith("invalid rate-limit storage URI 'redis+sentinel://:***@sentinel:26379'"), message


def test_an_audit_log_the_process_may_not_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root every mode bit is writable, so the permission check is what is replaced here."""
    denied = tmp_path / "ro"
    denied.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == denied else real_access(path, mode))
    with pytest.raises(ConfigError) as failed:
        load_config(write(tmp_path, "c.json", json.dumps({"sidecar": {"auditLog": str(denied / "a.log")}})), environ={})
    assert "is not writable" in problems_of(failed)["sidecar.auditLog"]


def test_disabled_hooks_may_keep_the_root_path(tmp_path: Path) -> None:
    """The gateway's resolveHooksConfig returns before its `/` check when hooks are off."""
    config = load_with_gateway_file(tmp_path, "{hooks: {enabled: false, path: '/'}}", {})
    assert "hooks.enabled" in config.rules.switched_off


def test_a_listener_url_brackets_an_ipv6_host() -> None:
    assert (http_url("::1", 80), http_url("127.0.0.1", 80)) == ("http://[::1]:80", "http://127.0.0.1:80")


@pytest.mark.parametrize("written", [
    "{source: 'exec', provider: 'vault', id: 'GW_TOKEN'}",  # the gateway runs the provider, not reads GW_TOKEN
    "{source: 'env', provider: 'other', id: 'GW_TOKEN'}",  # an env provider of its own, with its own allowlist
])
def test_a_secret_ref_of_another_provider_is_not_read_from_the_environment(tmp_path: Path, written: str) -> None:
    config = load_with_gateway_file(tmp_path, f"{{gateway: {{auth: {{token: {written}}}}}}}", {"GW_TOKEN": "not-the-token"})
    assert config.secrets.token is None


def test_an_env_reference_to_an_empty_variable_says_why_no_token_resolved(tmp_path: Path) -> None:
    config = load_with_gateway_file(tmp_path, "{gateway: {auth: {token: '$GW_TOKEN'}}}", {"GW_TOKEN": ""})
    (problem,) = config.secrets.problems
    assert problem.endswith("the unset variable 'GW_TOKEN'"), problem


@pytest.mark.parametrize("control", ["\x1f", "\x7f"])
def test_a_control_character_in_the_environments_token_is_refused_naming_the_variable(tmp_path: Path, control: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={"OPENCLAW_GATEWAY_TOKEN": f"to{control}ken"})
    assert list(problems_of(exc)) == ["OPENCLAW_GATEWAY_TOKEN"]


def test_the_upstream_tokens_inline_value_beats_its_file(tmp_path: Path) -> None:
    up = write(tmp_path, "up", "UPFILE\n")
    text = f"sidecar:\n  upstreamAuth: {{token: UPINLINE, tokenFile: '{up}'}}\ngateway:\n  auth: {{token: T}}\n"
    assert load_config(write(tmp_path, "c.yaml", text), environ={}).secrets.upstream_credential == "UPINLINE"


@pytest.mark.parametrize("auth, environ", [
    ("{mode: trusted-proxy, password: P, trustedProxy: {userHeader: x-user}}", {}),
    ("{mode: none}", {"OPENCLAW_GATEWAY_PASSWORD": "P"}),
])
def test_no_shared_secret_goes_upstream_in_a_mode_without_one(tmp_path: Path, auth: str, environ: dict[str, str]) -> None:
    text = f"gateway:\n  auth: {auth}\n  trustedProxies: [198.51.100.5]\n"
    secrets = load_config(write(tmp_path, "c.yaml", text), environ=environ).secrets
    assert (secrets.password, secrets.upstream_credential, secrets.upstream_kind) == ("P", None, None)


def test_previous_secrets_come_from_their_own_files_and_blank_ones_are_dropped(tmp_path: Path) -> None:
    old_token, old_password = write(tmp_path, "t", "OLD-T\n"), write(tmp_path, "p", "OLD-P\n")
    text = (f"sidecar:\n  auth: {{previousTokens: ['', undefined], previousTokenFiles: ['{old_token}'],"
            f" previousPasswordFiles: ['{old_password}']}}\ngateway:\n  auth: {{token: T}}\n")
    secrets = load_config(write(tmp_path, "c.yaml", text), environ={}).secrets
    assert (secrets.previous_tokens, secrets.previous_passwords) == (("OLD-T",), ("OLD-P",))


@pytest.mark.parametrize("setting, content, key", [
    ("previousTokenFiles", None, "sidecar.auth.previousTokenFiles[1]"),
    ("previousPasswordFiles", None, "sidecar.auth.previousPasswordFiles[1]"),
    ("previousTokenFiles", "old\x01token", "sidecar.auth.previousTokenFiles[1]"),
])
def test_a_previous_secret_file_that_cannot_be_used_names_its_own_key(tmp_path: Path, setting: str, content: str | None,
                                                                       key: str) -> None:
    """The key was misspelt `previousTokensFiles[1]`, and a control character named none."""
    good, bad = write(tmp_path, "good", "old\n"), tmp_path / "bad"
    if content is not None:
        bad.write_text(content)
    text = f"sidecar:\n  auth: {{{setting}: ['{good}', '{bad}']}}\ngateway:\n  auth: {{token: T}}\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", text), environ={})
    assert list(problems_of(exc)) == [key]


@pytest.mark.parametrize("name", ["c.json", "c.json5"])
def test_a_json_file_is_never_read_as_yaml(tmp_path: Path, name: str) -> None:
    """The gateway reads its file as JSON5 alone: a YAML one it fails on must not give the sidecar rules."""
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, name, "gateway:\n  auth: {token: T}\n"), environ={})
    assert list(problems_of(exc)) == ["config"]


def test_a_yaml_error_says_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "c.yaml", "sidecar:\n  listen: [1, 2\n"), environ={})
    assert "line 3, column 1" in problems_of(exc)["config"]


@pytest.mark.parametrize("environ, unknown", [
    ({"OPENCLAW_SIDECAR_TIMEOUTS__BOGUS": "1", "OPENCLAW_SIDECAR_TIMEOUTS__HEAD_READ_SECONDS": "1"}, ["OPENCLAW_SIDECAR_TIMEOUTS__BOGUS"]),
    ({"openclaw_sidecar_bogus": "1", "openclaw_sidecar_listen": "127.0.0.1:1"}, ["openclaw_sidecar_bogus"]),  # read in any case
    ({"OPENCLAW_SIDECAR_LISTEN__PORT": "1"}, ["OPENCLAW_SIDECAR_LISTEN__PORT"]),
])
def test_a_variable_that_names_no_setting_is_reported(environ: dict[str, str], unknown: list[str]) -> None:
    assert unknown_environment(environ) == unknown


def test_an_absolute_gateway_config_path_is_kept(tmp_path: Path) -> None:
    write(tmp_path, "openclaw.json", "{}")
    settings = load_config(None, {"openclaw_config": str(tmp_path / "openclaw.json")}, environ={}).sidecar
    assert openclaw_config_path(tmp_path / "sub" / "c.yaml", settings) == tmp_path / "openclaw.json"
    assert openclaw_config_path(Path("/etc/sidecar/c.yaml"), settings.model_copy(update={"openclaw_config": Path("o.json")})) == Path("/etc/sidecar/o.json")


def test_check_config_spells_setting_names_as_files_do_and_data_as_written(tmp_path: Path) -> None:
    text = "sidecar:\n  contextHeaders: {pinned: {ops_team: {x-openclaw-account-id: a}}}\ngateway:\n  auth: {token: T}\n"
    view = camel_keys(redacted_view(load_config(write(tmp_path, "c.yaml", text), environ={})))
    assert view["sidecar"]["contextHeaders"]["pinned"] == {"ops_team": {"x-openclaw-account-id": "a"}}
    assert view["sidecar"]["rateLimit"]["maxEntries"] == 10_000


def test_identity_headers_are_gathered_from_both_files_as_the_gateway_reads_its_own(tmp_path: Path) -> None:
    gateway = write(tmp_path, "openclaw.json5", "{env: {vars: {USER_HEADER: 'X-Gw-User'}}, gateway: {auth: {trustedProxy: {userHeader: '${USER_HEADER}'}}}}")
    own = write(tmp_path, "c.yaml", "sidecar:\n  upstreamAuth: {userHeader: X-Up-User}\ngateway:\n  auth: {trustedProxy: {userHeader: x-own-user}}\n")
    assert identity_header_names(own, gateway, environ={}) == {"x-gw-user", "x-up-user", "x-own-user"}
