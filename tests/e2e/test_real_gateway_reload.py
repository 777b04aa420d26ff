"""Edits to the gateway's own file while the gateway and the sidecar both run (the real gateway,
2026.9.6, on loopback). Each side applies an edit on its own schedule, or not at all: the gateway
refuses an edit its schema rejects or ignores every edit under `gateway.reload.mode: off`, and the
sidecar refuses one its stricter checks reject. Whatever header either side has been told carries a
trusted-proxy identity never comes from the client (red team: a caller named any allowed user)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.real_gateway import RealGateway, unavailable_reason

from .harness import SidecarProcess
from .ratelimit_helpers import wait_until

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

CLIENT = "198.51.100.7"  # the caller, as the ingress in front of the sidecar names it


def trusted_proxy(user_header: str, users: list[str]) -> dict[str, Any]:
    return {"mode": "trusted-proxy", "trustedProxy": {"userHeader": user_header, "allowLoopback": True, "allowUsers": users}}


def invoke(url: str, headers: dict[str, str]) -> int:
    return httpx.post(f"{url}/tools/invoke", json={"tool": "agents_list", "args": {}}, timeout=15,
                      headers={"x-openclaw-scopes": "operator.write", "X-Forwarded-For": CLIENT, **headers}).status_code


def edit(gateway: RealGateway, change: Callable[[dict[str, Any]], None]) -> None:
    """Replace the file by a rename, as an editor or a ConfigMap update does."""
    config = json.loads(gateway.config_path.read_text())
    change(config)
    draft = gateway.config_path.with_name("openclaw.json.tmp")
    draft.write_text(json.dumps(config))
    os.replace(draft, gateway.config_path)


@pytest.fixture
def gateway_with() -> Iterator[Callable[..., RealGateway]]:
    started: list[RealGateway] = []

    def start(auth: dict[str, Any], extra: dict[str, Any] | None = None) -> RealGateway:
        started.append(RealGateway(auth, {"gateway": {"trustedProxies": ["127.0.0.1"]}, **(extra or {})}))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def sidecar_for(gateway: RealGateway, start_sidecar: Callable[..., SidecarProcess], **sidecar: Any) -> SidecarProcess:
    return start_sidecar({"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                                      "rateLimit": {"loopbackDelayBaseMs": 0}, **sidecar}})


def test_the_header_a_gateway_keeps_after_the_sidecar_moved_on_is_still_stripped(
        gateway_with: Callable[..., RealGateway], start_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    """Under `reload.mode: off` the gateway reads x-auth-user until it restarts, while the sidecar
    applies the rename to x-forwarded-user: a client's x-auth-user named alice to the gateway. So
    it does for a sidecar restarted in the same runtime directory (a container restart in its pod),
    which never read the old name from the file."""
    gateway = gateway_with(trusted_proxy("x-auth-user", ["alice", "carol"]), {"gateway": {"trustedProxies": ["127.0.0.1"],
                                                                                         "reload": {"mode": "off"}}})
    sidecar = sidecar_for(gateway, start_sidecar, runtimeDir=str(tmp_path / "run"))
    assert invoke(sidecar.url, {"x-auth-user": "carol"}) == 200
    edit(gateway, lambda c: c["gateway"]["auth"]["trustedProxy"].update(userHeader="x-forwarded-user"))
    assert wait_until(lambda: "config reloaded" in sidecar.logs(), 20), "the sidecar applies the edit"
    assert invoke(gateway.url, {"x-auth-user": "alice"}) == 200  # the gateway still reads the old header
    assert invoke(sidecar.url, {"x-forwarded-user": "carol", "x-auth-user": "alice"}) == 401
    assert invoke(sidecar.url, {"x-forwarded-user": "carol"}) == 401  # fails closed until the two agree
    sidecar.stop()
    restarted = sidecar_for(gateway, start_sidecar, runtimeDir=str(tmp_path / "run"))
    assert invoke(restarted.url, {"x-forwarded-user": "carol", "x-auth-user": "alice"}) == 401


def test_the_header_of_an_edit_the_sidecar_refuses_is_stripped_when_the_gateway_applies_it(
        gateway_with: Callable[..., RealGateway], start_sidecar: Callable[..., SidecarProcess]) -> None:
    """A trustedProxies entry with a zone index matches nothing at the gateway and is refused by the
    sidecar: the gateway moved to x-remote-user, the sidecar kept x-forwarded-user and relayed the
    client's x-remote-user."""
    gateway = gateway_with(trusted_proxy("x-forwarded-user", ["alice", "bob"]))
    sidecar = sidecar_for(gateway, start_sidecar)
    assert invoke(sidecar.url, {"x-forwarded-user": "bob"}) == 200

    def rename(config: dict[str, Any]) -> None:
        config["gateway"]["auth"]["trustedProxy"].update(userHeader="x-remote-user", allowUsers=["alice"])
        config["gateway"]["trustedProxies"] = ["127.0.0.1", "fe80::1%eth0"]

    edit(gateway, rename)
    assert wait_until(lambda: invoke(gateway.url, {"x-remote-user": "alice"}) == 200, 20), "the gateway applies the edit"
    assert wait_until(lambda: "rejected" in sidecar.logs(), 20), "the sidecar refuses the edit"
    assert invoke(sidecar.url, {"x-forwarded-user": "bob", "x-remote-user": "alice"}) == 401
    assert sidecar.audit_lines()[-1]["reason"] == "allowed"  # the sidecar still judged bob, and sent no alice


def test_a_lowered_max_attempts_locks_out_at_once_a_client_already_past_it(
        gateway_with: Callable[..., RealGateway], start_sidecar: Callable[..., SidecarProcess]) -> None:
    """The gateway applies gateway.auth.rateLimit live (its limiter's updateConfig), with the
    failures on record: tightened during an attack, it holds at once. The sidecar kept its
    start-up limits until a restart, so the guesses went on under the old budget."""
    gateway = gateway_with({"mode": "token", "token": "good-token-1234"},
                           {"gateway": {"trustedProxies": ["127.0.0.1"], "auth": {"rateLimit": {"maxAttempts": 100}}}})
    sidecar = sidecar_for(gateway, start_sidecar)

    def attempt(url: str, client: str, token: str) -> httpx.Response:
        return httpx.post(f"{url}/tools/invoke", json={"tool": "agents_list", "args": {}}, timeout=15,
                          headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": client})

    for _ in range(4):
        assert attempt(sidecar.url, "198.51.100.7", "wrong").status_code == 401
        assert attempt(gateway.url, "198.51.100.8", "wrong").status_code == 401
    edit(gateway, lambda c: c["gateway"]["auth"]["rateLimit"].update(maxAttempts=3, lockoutMs=120_000))
    assert wait_until(lambda: "config reloaded" in sidecar.logs(), 20), "the sidecar applies the edit"
    # 100 failures lock under the old limits: a 429 before then is the new ones at work
    assert wait_until(lambda: attempt(gateway.url, "198.51.100.8", "wrong").status_code == 429, 20), "the gateway applies the edit"
    direct, proxied = attempt(gateway.url, "198.51.100.8", "good-token-1234"), attempt(sidecar.url, "198.51.100.7", "good-token-1234")
    assert proxied.status_code == direct.status_code == 429
    assert proxied.json() == direct.json()
    assert proxied.headers["retry-after"] == "120"  # locked at this check, for the new lockoutMs
    assert direct.headers["retry-after"] in ("119", "120")  # locked at the last poll
    assert attempt(sidecar.url, "198.51.100.9", "good-token-1234").status_code == 200  # a client with no failures


def test_the_openai_endpoints_are_routes_only_while_the_gateway_serves_them(
        gateway_with: Callable[..., RealGateway], start_sidecar: Callable[..., SidecarProcess]) -> None:
    """Off by default, `/v1/models` is no route at the gateway (404 whoever asks); the sidecar took
    it for the OpenAI models read, answered 401 to a caller without a token where the gateway
    answers 404, and forwarded the others with their credential. Switched on in the gateway's
    file, it is a read behind the sidecar's authentication, at once on both sides."""
    token = "good-token-1234"
    gateway = gateway_with({"mode": "token", "token": token})
    sidecar = sidecar_for(gateway, start_sidecar)
    auth = {"Authorization": f"Bearer {token}"}

    def models(url: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{url}/v1/models", headers=headers, timeout=15)

    def audited(count: int) -> dict[str, Any]:
        assert wait_until(lambda: len(sidecar.audit_lines()) == count, 10)  # the audit writer takes a batch every 50 ms
        return sidecar.audit_lines()[-1]

    for count, headers in enumerate(({}, auth), 1):
        direct, proxied = models(gateway.url, headers), models(sidecar.url, headers)
        assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content) == (404, b"Not Found")
        assert audited(count)["reason"] == "unknown_route"  # answered by the sidecar, nothing forwarded
    edit(gateway, lambda c: c["gateway"].update(http={"endpoints": {"chatCompletions": {"enabled": True}}}))
    assert wait_until(lambda: "config reloaded" in sidecar.logs(), 20), "the sidecar applies the edit"
    assert wait_until(lambda: models(gateway.url, auth).status_code == 200, 20), "the gateway applies the edit"
    direct, proxied = models(gateway.url, auth), models(sidecar.url, auth)
    assert proxied.status_code == direct.status_code == 200
    assert proxied.json() == direct.json()
    assert (audited(3)["route"], audited(3)["decision"]) == ("openai-models", "forwarded")
    assert models(sidecar.url, {}).status_code == models(gateway.url, {}).status_code == 401
