"""Fixtures for end-to-end tests: demo backend, sidecar processes, the test network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.demo_backend import DemoBackend

from .harness import SidecarProcess, TestNet

UPSTREAM_TOKEN = "upstream-secret-for-the-gateway"


@pytest.fixture
def backend() -> Iterator[DemoBackend]:
    """The demo tool backend, requiring the sidecar's upstream credential like a real gateway."""
    with DemoBackend(token=UPSTREAM_TOKEN) as server:
        yield server


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start `openclaw-sidecar run` with a config dict; every process is stopped afterwards."""
    started: list[SidecarProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> SidecarProcess:
        process = SidecarProcess(config, tmp_path / f"sidecar{len(started)}", env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(15.0)) as http:
        yield http


@pytest.fixture(scope="session")
def testnet() -> Iterator[TestNet]:
    """Real non-loopback client and proxy addresses (needs root and iproute2, as CI has)."""
    with TestNet() as net:
        yield net
