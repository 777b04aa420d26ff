"""The admin listener over a real socket: liveness, readiness (ours and the upstream's), metrics."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sidecar.admin import AdminServer, Health
from openclaw_demo.backend import DemoBackend


@pytest.fixture
def backend() -> Iterator[DemoBackend]:
    with DemoBackend() as backend:
        yield backend


@pytest.fixture
def admin(backend: DemoBackend) -> Iterator[AdminServer]:
    server = AdminServer("127.0.0.1", 0, Health(backend.url))
    server.start()
    yield server
    server.stop()


def test_ready_only_when_listening_not_draining_and_upstream_up(admin: AdminServer, backend: DemoBackend) -> None:
    def readyz() -> tuple[int, str]:
        response = httpx.get(f"{admin.url}/readyz", timeout=5)
        return response.status_code, response.json()["reason"]

    assert readyz() == (503, "not listening yet")
    admin.health.listening = True
    assert readyz() == (200, "ok")
    admin.health.draining = True
    assert readyz() == (503, "draining")
    admin.health.draining = False
    backend.__exit__(None, None, None)
    status, reason = readyz()
    assert status == 503 and reason.startswith("upstream unreachable")
    assert httpx.get(f"{admin.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("path, status", [("/healthz", 200), ("/metrics", 200), ("/", 404), ("/metrics/x", 404),
                                          ("/tools/invoke", 404)])
def test_only_three_paths(admin: AdminServer, path: str, status: int) -> None:
    response = httpx.get(f"{admin.url}{path}", timeout=5)
    assert response.status_code == status
    assert response.headers["cache-control"] == "no-store"
    if path == "/metrics":
        assert "process_open_fds" in response.text and "openclaw_sidecar_decisions_total" in response.text
