"""Every sidecar config we ship loads with the code that will read it, and says what the
deployment around it assumes."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import Config, load_config, read_storage_password

from .conftest import DEPLOY, K8S, REPO, Render

SHIPPED = sorted(K8S.rglob("sidecar*.yaml")) + sorted(DEPLOY.glob("sidecar*.yaml"))


def load_shipped(path: Path, tmp_path: Path, environ: dict[str, str] | None = None) -> Config:
    """Load a shipped config with its token files pointed at real files (the deployment's own
    paths exist only in a pod or under systemd) and the rules from the shipped openclaw.json5."""
    document = yaml.safe_load(path.read_text())
    token_file = tmp_path / "token"
    token_file.write_text("shipped-config-token\n")
    document["gateway"]["auth"]["tokenFile"] = str(token_file)
    rate_limit = document["sidecar"].get("rateLimit", {})
    if "storagePasswordFile" in rate_limit:
        password_file = tmp_path / "redis-password"
        password_file.write_text("shipped-redis-password\n")
        rate_limit["storagePasswordFile"] = str(password_file)
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(document))
    return load_config(copy, {"openclaw_config": K8S / "base" / "openclaw.json5"}, environ=environ or {})


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_sidecar_configs_load(path: Path, tmp_path: Path) -> None:
    config = load_shipped(path, tmp_path)
    assert config.secrets.mode == "token"
    assert config.secrets.token == "shipped-config-token"
    assert not config.secrets.problems
    proxies = [ipaddress.ip_network(p) for p in config.rules.gateway.trusted_proxies]
    assert proxies, "shipped configs name their proxies explicitly"
    if path.is_relative_to(K8S):
        # The pod CIDR, made safe by the NetworkPolicy (k8s/README.md): never a whole private block.
        assert all(map(is_a_pod_cidr, proxies)), proxies
    else:
        # `tailscale serve` on the same host: loopback and nothing else.
        assert all(p.is_loopback for p in proxies), proxies


# The private blocks a pod CIDR is carved from: RFC 1918, CGNAT, IPv6 ULA.
_PRIVATE_BLOCKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def is_a_pod_cidr(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Inside a private block and narrower than it: not `0.0.0.0/8`, link-local, the node network's
    whole block or everyone."""
    return any(network.version == block.version and network.subnet_of(block) and network.prefixlen > block.prefixlen  # type: ignore[arg-type]
               for block in _PRIVATE_BLOCKS)


@pytest.mark.parametrize("cidr, ok", [
    ("10.42.0.0/16", True), ("10.244.0.0/16", True), ("fd00:10:244::/56", True),
    ("10.0.0.0/8", False), ("172.16.0.0/12", False), ("192.168.0.0/16", False), ("0.0.0.0/8", False),
    ("169.254.0.0/16", False), ("0.0.0.0/0", False), ("203.0.113.0/24", False),
])
def test_the_pod_cidr_guard_refuses_what_the_readme_forbids(cidr: str, ok: bool) -> None:
    assert is_a_pod_cidr(ipaddress.ip_network(cidr)) is ok


def test_no_shipped_file_uses_the_removed_metrics_listen() -> None:
    files = [p for d in (K8S, DEPLOY) for p in d.rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert not [p for p in files if "metricsListen" in p.read_text() or "METRICS_LISTEN" in p.read_text()]


def test_every_overlay_runs_the_bases_sidecar_file(renders: dict[str, Render]) -> None:
    """One file to edit (the pod CIDR, a rotation's previous token): the redis overlay once
    shipped a copy of it, which no edit of the base reached (review). It changes the limiter
    through the environment only."""
    base = renders["base"]
    for rendered in renders.values():
        assert rendered.sidecar_config == base.sidecar_config, rendered.name
        added = {e["name"] for e in rendered.sidecar.get("env", [])} - {e["name"] for e in base.sidecar.get("env", [])}
        assert added == ({"OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE", "OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE_PASSWORD_FILE"}
                         if rendered.name == "redis" else set()), rendered.name


def container_environ(container: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The container's environment, with every Secret reference read as `shipped-env-secret` and
    a password file where the pod would mount one."""
    environ = {e["name"]: e.get("value", "shipped-env-secret") for e in container.get("env", [])}
    if "OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE_PASSWORD_FILE" in environ:
        password_file = tmp_path / "env-redis-password"
        password_file.write_text("shipped-redis-password\n")
        environ["OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE_PASSWORD_FILE"] = str(password_file)
    return environ


def test_the_pod_runs_the_config_it_ships(rendered: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered ConfigMap's sidecar.yaml with the sidecar container's environment: what the
    pod will actually run (an environment name the settings do not know would be ignored). The
    settings read the process's environment, so the container's is put there."""
    path = tmp_path / "rendered" / "sidecar.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(rendered.sidecar_config))
    environ = container_environ(rendered.sidecar, tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = load_shipped(path, tmp_path, environ)
    assert config.secrets.upstream_credential == "shipped-env-secret"
    assert str(config.sidecar.runtime_dir) == rendered.sidecar_config["sidecar"]["runtimeDir"]
    assert config.sidecar.admin_listen == "0.0.0.0:18791"
    expected = "redis://" if rendered.deployment["spec"]["replicas"] > 1 else "memory://"
    assert config.sidecar.rate_limit.storage.startswith(expected)
    assert (read_storage_password(config.sidecar.rate_limit) == "shipped-redis-password") == (expected == "redis://")
