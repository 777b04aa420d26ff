"""Config values that end up in upstream headers are validated at start-up (adversarial review)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.ipaddrs import parse_ip
from sidecar.pipeline import Admitted, Pipeline
from sidecar.ratelimit import AuthFailureLimiter
from sidecar.view import RequestView


def _load(tmp_path: Path, document: dict) -> object:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    return load_config(path, environ={})


@pytest.mark.parametrize(("document", "key"), [
    ({"sidecar": {"upstreamAuth": {"userHeader": "x-up-user: z\r\nx-openclaw-scopes"}}}, "sidecar.upstreamAuth.userHeader"),
    ({"sidecar": {"upstreamAuth": {"userHeader": "x-openclaw-scopes"}}}, "sidecar.upstreamAuth.userHeader"),
    ({"sidecar": {"upstreamAuth": {"userHeader": "Authorization"}}}, "sidecar.upstreamAuth.userHeader"),
    ({"gateway": {"auth": {"trustedProxy": {"userHeader": "x-forwarded-for"}}}}, "gateway.auth.trustedProxy.userHeader"),
    ({"gateway": {"auth": {"trustedProxy": {"userHeader": "X-Request-Id"}}}}, "gateway.auth.trustedProxy.userHeader"),
    ({"sidecar": {"upstreamAuth": {"userHeader": "x-request-id"}}}, "sidecar.upstreamAuth.userHeader"),
    ({"gateway": {"auth": {"trustedProxy": {"requiredHeaders": ["x-proto:\r\nx"]}}}}, "gateway.auth.trustedProxy.requiredHeaders"),
    ({"sidecar": {"contextHeaders": {"pinned": {"alice": {"x-openclaw-foo: a\r\nx-injected": "v"}}}}}, "sidecar.contextHeaders.pinned"),
    ({"sidecar": {"contextHeaders": {"pinned": {"alice": {"x-openclaw-scopes ": "v"}}}}}, "sidecar.contextHeaders.pinned"),
    ({"sidecar": {"upstreamAuth": {"token": "UP\r\nX-Injected: 1"}}}, "sidecar.upstreamAuth.token"),
    ({"gateway": {"auth": {"mode": "token", "token": "T\nX: 1"}}}, "gateway.auth.token"),
])
def test_header_injection_through_config_fails_at_start_up(tmp_path: Path, document: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, document)
    assert any(problem_key == key for problem_key, _ in caught.value.problems), caught.value.problems


async def test_wildcard_pins_still_apply_to_an_identity_with_its_own_pins(tmp_path: Path) -> None:
    config = _load(tmp_path, {
        "sidecar": {"contextHeaders": {"pinned": {
            "alice": {"x-openclaw-account-id": "A1"}, "*": {"x-openclaw-message-channel": "web"},
        }}},
        "gateway": {"auth": {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-forwarded-user", "allowLoopback": True}},
                    "trustedProxies": ["127.0.0.1"]},
    })
    pipeline = Pipeline(config, AuthFailureLimiter())
    view = RequestView("POST", "/tools/invoke", (
        (b"Host", b"x"), (b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-User", b"alice"),
        (b"x-openclaw-message-channel", b"evil"),
    ), "127.0.0.1")
    admitted = await pipeline.on_head(view)
    assert isinstance(admitted, Admitted)
    headers = [(k.lower(), v) for k, v in admitted.headers]
    assert [v for k, v in headers if k == "x-openclaw-message-channel"] == ["web"]
    assert [v for k, v in headers if k == "x-openclaw-account-id"] == ["A1"]


@pytest.mark.parametrize("text", ["1.2.3.4%x", "127.0.0.1%2f.evil.com"])
def test_zone_suffixes_are_only_stripped_from_ipv6(text: str) -> None:
    assert parse_ip(text) is None


def test_ipv6_zone_is_stripped() -> None:
    assert str(parse_ip("fe80::1%eth0")) == "fe80::1"
