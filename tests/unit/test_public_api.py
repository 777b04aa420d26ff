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


def test_the_counters_an_alert_watches_exist_at_zero_before_their_first_event() -> None:
    """A series born at 1 shows no increase: the first rejected reload or shadowed refusal passed an
    `increase(...) > 0` alert by (review). A fresh process, so no other test has touched them."""
    script = ("from prometheus_client import generate_latest; import sidecar.pipeline, sidecar.metrics as m; "
              "print(generate_latest(m.REGISTRY).decode())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    series = done.stdout.splitlines()
    for line in ('openclaw_sidecar_config_reloads_total{result="applied"} 0.0',
                 'openclaw_sidecar_config_reloads_total{result="rejected"} 0.0',
                 'openclaw_sidecar_shadowed_total{reason="route_denied"} 0.0',
                 'openclaw_sidecar_shadowed_total{reason="method_denied"} 0.0'):
        assert line in series, line
