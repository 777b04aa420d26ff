"""What the deployment tests share: the rendered kustomizations and the tools that check them.

The tools come from the test extra (pyproject.toml) and are taken from beside the interpreter,
never from PATH, so the pinned versions are the ones that run; a missing one skips its tests
with one line saying so.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DEPLOY = REPO / "deploy"
# Everything a user may apply: the base and each overlay.
KUSTOMIZATIONS = {"base": K8S / "base"} | {p.name: p for p in sorted((K8S / "overlays").iterdir()) if p.is_dir()}

SIDECAR_PORT = 18790
ADMIN_PORT = 18791
GATEWAY_PORT = 18789


def venv_tool(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed beside {sys.executable}: pip install -e '.[test]'")
    return path


@dataclass(frozen=True)
class Render:
    """One `kubectl kustomize` output, with the look-ups the tests need."""

    name: str
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found

    @cached_property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", "openclaw-gateway")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def sidecar(self) -> dict[str, Any]:
        (found,) = [c for c in self.pod.get("initContainers", []) if c["name"] == "sidecar"]
        return found

    @property
    def gateway(self) -> dict[str, Any]:
        (found,) = [c for c in self.pod["containers"] if c["name"] == "gateway"]
        return found

    def volume(self, name: str) -> dict[str, Any]:
        (found,) = [v for v in self.pod["volumes"] if v["name"] == name]
        return found

    def mounted(self, container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
        """The volume a path in a container lies on, and the path inside that volume."""
        target = PurePosixPath(path)
        for mount in container.get("volumeMounts", []):
            if target.is_relative_to(mount["mountPath"]):
                return self.volume(mount["name"]), str(target.relative_to(mount["mountPath"]))
        raise AssertionError(f"{path} is on no volume of container {container['name']}")

    def config_file(self, container: dict[str, Any], path: str) -> str:
        """The text of a file a container reads from a mounted ConfigMap."""
        volume, key = self.mounted(container, path)
        assert "configMap" in volume, f"{path} is not on a ConfigMap volume"
        return self.get("ConfigMap", volume["configMap"]["name"])["data"][key]

    @cached_property
    def sidecar_config(self) -> dict[str, Any]:
        args = self.sidecar["args"]
        return yaml.safe_load(self.config_file(self.sidecar, args[args.index("--config") + 1]))


def render(path: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([venv_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(scope="session")
def renders() -> dict[str, Render]:
    return {name: Render(name, render(path)) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest, renders: dict[str, Render]) -> Render:
    """Each kustomization in turn: every property below must hold for whatever is applied."""
    return renders[request.param]
