"""Undefined names, unused imports, bugbear findings and type errors fail the suite, not a later reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
