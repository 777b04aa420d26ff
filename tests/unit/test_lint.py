"""Undefined names, unused imports, bugbear findings and type errors fail the suite, not a later
reader; so does a case-insensitive pattern that folds more than the gateway's JavaScript does."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import addons
import sidecar

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "sidecar", "addons", "openclaw_demo", "tests", "bench"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    """mypy with the pydantic plugin ([tool.mypy] in pyproject.toml) over the product's code, the
    demo's and the bench's."""
    result = subprocess.run([sys.executable, "-m", "mypy", "sidecar", "addons", "openclaw_demo", "bench"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Redaction may match more than the gateway would act on: hiding a look-alike costs nothing. The
# pin's prefix mirrors the gateway's /^sha256:/iu, whose /u folds Unicode as IGNORECASE alone does.
BROAD_ON_PURPOSE = {"sidecar.audit._CAPABILITY_SEGMENT", "sidecar.audit._ARTIFACT_TICKET", "sidecar.upstream_tls._PREFIX"}


def test_case_insensitive_patterns_fold_ascii_only() -> None:
    """JavaScript's /i without /u folds ASCII letters only; Python's IGNORECASE on a str pattern
    also reads `ı` as i, `ſ` as s and `K` (Kelvin) as k, and `\\d` takes every script's digits.
    A pattern that judges what the gateway reads needs re.ASCII, or it reads text the gateway
    does not (a session key's `:topıc:` picked another group's tool policy: red team)."""
    loose = []
    for package in (sidecar, addons):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue  # runs the CLI
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (isinstance(value, re.Pattern) and isinstance(value.pattern, str)
                        and (value.flags & re.IGNORECASE or "(?i" in value.pattern) and not value.flags & re.ASCII
                        and f"{info.name}.{name}" not in BROAD_ON_PURPOSE):
                    loose.append(f"{info.name}.{name}")
    assert loose == []
