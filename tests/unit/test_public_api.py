"""The package's public surface, and the promise that `sidecar` is engine-agnostic (no mitmproxy)
and never loads the demo gateway (`openclaw_demo`) on import."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_ALL = [
    "Admitted", "Config", "ConfigError", "Forward", "Pipeline", "Refuse", "RequestView", "Runtime",
    "build_runtime", "load_config",
]
# Every module and subpackage under sidecar/ except `__main__`, which runs the CLI when imported.
MODULES = sorted(
    f"sidecar.{m.name}" for m in pkgutil.iter_modules(sidecar.__path__) if m.name != "__main__"
)


def test_all_is_exactly_the_public_surface() -> None:
    assert sidecar.__all__ == EXPECTED_ALL


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(sidecar, name) is not None


PROBE = r"""
import importlib, json, sys
modules = json.loads(sys.argv[1])
seen = {}
for name in modules:
    importlib.import_module(name)
    seen[name] = sorted(m for m in sys.modules if m == "mitmproxy" or m.startswith("mitmproxy."))
print(json.dumps({"per_module": seen, "addons": "addons" in sys.modules, "final": "mitmproxy" in sys.modules,
                  "demo": sorted(m for m in sys.modules if m.split(".")[0] == "openclaw_demo")}))
"""


def test_importing_every_sidecar_module_never_imports_mitmproxy() -> None:
    """A fresh interpreter imports `sidecar` and each module in turn; mitmproxy and the demo must stay unloaded."""
    assert {"sidecar.pipeline", "sidecar.config", "sidecar.cli", "sidecar.probe"} <= set(MODULES)  # the list is no empty one
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["sidecar", *MODULES])],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    offenders = {name: mods for name, mods in result["per_module"].items() if mods}
    assert offenders == {}
    assert result["final"] is False
    assert result["addons"] is False
    assert result["demo"] == []
