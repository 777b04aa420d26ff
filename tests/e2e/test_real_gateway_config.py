"""The gateway's own config file, read by the sidecar as the gateway reads it (the real gateway,
2026.9.6, on loopback): a credential written as OpenClaw's docs write it is the variable's value,
never the placeholder's letters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.routes import GATEWAY_VERSION as DESCRIBED
from tests.gateway.real_gateway import GATEWAY_VERSION, RealGateway, unavailable_reason

from .harness import SidecarProcess
from .ratelimit_helpers import wait_until

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

SECRET = "config-differential-secret-7d1c"


@pytest.fixture(scope="module", params=["${OPENCLAW_GATEWAY_TOKEN}", "\ufeff$OPENCLAW_GATEWAY_TOKEN"],
                ids=["template", "shorthand-behind-a-byte-order-mark"])
def env_token_gateway(request: pytest.FixtureRequest) -> Iterator[tuple[RealGateway, str]]:
    """`gateway.auth.token: "${OPENCLAW_GATEWAY_TOKEN}"` (docs/gateway/config-secrets-env.md), the
    variable set in the gateway's environment only; and the `$NAME` shorthand after a byte-order
    mark, which JavaScript's trim removes and Python's strip keeps. With the placeholder's letters,
    as a client would send them."""
    gateway = RealGateway({"mode": "token", "token": request.param}, environ={"OPENCLAW_GATEWAY_TOKEN": SECRET})
    yield gateway, request.param.lstrip("\ufeff")
    gateway.stop()


def invoke(url: str, token: str) -> int:
    return httpx.post(f"{url}/tools/invoke", json={"tool": "agents_list", "args": {}},
                      headers={"Authorization": f"Bearer {token}"}, timeout=15).status_code


def test_in_the_kubernetes_layout_the_placeholder_is_no_password(env_token_gateway, module_sidecar: Callable[..., SidecarProcess],
                                                                 tmp_path: Path) -> None:
    """The sidecar's container mounts the Secret as a file and has no such variable: the
    placeholder resolves to nothing there, so the sidecar's own tokenFile holds the secret. Before,
    `Bearer ${OPENCLAW_GATEWAY_TOKEN}` was the sidecar's token, and the real one was refused; and
    until the red team's round on values, `Bearer $OPENCLAW_GATEWAY_TOKEN` was, for the shorthand
    behind a byte-order mark, while the sidecar's upstream credential let the call through."""
    gateway, placeholder = env_token_gateway
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    sidecar = module_sidecar({
        "sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                    "upstreamAuth": {"tokenFile": str(token_file)}, "rateLimit": {"loopbackDelayBaseMs": 0}},
        "gateway": {"auth": {"tokenFile": str(token_file)}},
    })
    seen = {token: (invoke(gateway.url, token), invoke(sidecar.url, token)) for token in (SECRET, placeholder)}
    assert seen == {SECRET: (200, 200), placeholder: (401, 401)}


def test_with_the_variable_set_the_sidecar_reads_the_same_secret(env_token_gateway, module_sidecar: Callable[..., SidecarProcess]) -> None:
    gateway, placeholder = env_token_gateway
    sidecar = module_sidecar({
        "sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                    "rateLimit": {"loopbackDelayBaseMs": 0}},
    }, env={"OPENCLAW_GATEWAY_TOKEN": SECRET})
    assert (invoke(sidecar.url, SECRET), invoke(sidecar.url, placeholder)) == (200, 401)
    # The gateway tells the sidecar, a direct local caller, its release; the sidecar's /readyz passes it on.
    assert httpx.get(f"{sidecar.admin_url}/readyz", timeout=10).json() == {
        "ready": True, "reason": "ok", "upstreamRelease": GATEWAY_VERSION, "describedRelease": DESCRIBED}


def test_hooks_spelt_to_cover_every_path_are_laid_out_as_the_gateway_lays_them_out(
        module_sidecar: Callable[..., SidecarProcess]) -> None:
    """`hooks.path: "//"` leaves the gateway a hooks base of "", under which every path lies: its
    hooks handler takes /tools/invoke. The sidecar read `/`, judged the call as /tools/invoke and
    forwarded it with the gateway's token (red team: with a wake mapping, the hook ran)."""
    gateway = RealGateway({"mode": "token", "token": SECRET}, {"hooks": {"enabled": True, "token": "hooks-only-secret", "path": "//"}})
    try:
        sidecar = module_sidecar({"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                                              "rateLimit": {"loopbackDelayBaseMs": 0}}})
        direct = httpx.post(f"{gateway.url}/tools/invoke", json={"tool": "agents_list", "args": {}}, timeout=15,
                            headers={"Authorization": f"Bearer {SECRET}"})
        assert (direct.status_code, direct.text) == (401, "Unauthorized")  # the hooks handler's answer, not the tool's
        through = httpx.post(f"{sidecar.url}/tools/invoke", json={"tool": "agents_list", "args": {}}, timeout=15,
                             headers={"Authorization": f"Bearer {SECRET}"})
        assert (through.status_code, through.text) == (404, "Not Found")  # refused as the hooks route, in the gateway's words
        assert wait_until(lambda: bool(sidecar.audit_lines()), 10)  # the audit writer takes a batch every 50 ms
        assert sidecar.audit_lines()[-1]["route"] == "hooks"
    finally:
        gateway.stop()


def test_a_stopped_gateway_leaves_no_home_behind() -> None:
    """Every test gateway's state (its Control UI cache alone ~55 MB) was left in the temp
    directory: some 200 of them, 14 GB, after a day of runs."""
    gateway = RealGateway({"mode": "token", "token": SECRET})
    try:
        assert (gateway.home / "state").is_dir()
    finally:
        gateway.stop()
    assert not gateway.home.exists()
