"""Fixtures shared by unit tests.

``clean_env``: no ``OPENCLAW_SIDECAR_*`` / ``OPENCLAW_GATEWAY_*`` variable from the caller's shell
reaches the test; a module opts in with ``pytestmark = pytest.mark.usefixtures("clean_env")``.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("OPENCLAW_SIDECAR_", "OPENCLAW_GATEWAY_")):
            monkeypatch.delenv(name)
