"""Fixtures for end-to-end tests: demo backend, sidecar processes, the test network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend

from tests.gateway.real_gateway import RealGateway, unavailable_reason

from .harness import SidecarProcess, TestNet
from .netns import NamespaceError

UPSTREAM_TOKEN = "upstream-secret-for-the-gateway"
REAL_GATEWAY_TOKEN = "real-gateway-shared-token"
REAL_GATEWAY_HOOKS_TOKEN = "real-gateway-hooks-token"
# The gateway's HTTP endpoints switched on (off by default, and then no route): the demo backend
# and the shared real gateway stand for a deployment that serves them.
OPENAI_ENDPOINTS = {"endpoints": {"chatCompletions": {"enabled": True}, "responses": {"enabled": True}}}
TESTNET_SKIP_REASON = pytest.StashKey[str | None]()


@pytest.fixture
def backend() -> Iterator[DemoBackend]:
    """The demo tool backend, requiring the sidecar's upstream credential like a real gateway."""
    with DemoBackend(token=UPSTREAM_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def module_backend() -> Iterator[DemoBackend]:
    """One backend for a module's shared sidecars; its record is cleared before every test."""
    with DemoBackend(token=UPSTREAM_TOKEN) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_module_backend_record(request: pytest.FixtureRequest) -> None:
    if "module_backend" in request.fixturenames:
        request.getfixturevalue("module_backend").clear_requests()


def _sidecar_starter(workdir: Callable[[], Path]) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, module: str = "sidecar") -> SidecarProcess:
        process = SidecarProcess(config, workdir(), env=env, module=module)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start `openclaw-sidecar run` with a config dict; every process is stopped afterwards."""
    count = iter(range(1_000_000))
    yield from _sidecar_starter(lambda: tmp_path / f"sidecar{next(count)}")


@pytest.fixture(scope="module")
def module_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SidecarProcess]]:
    """Like start_sidecar, for sidecars a whole module shares (their config never changes)."""
    yield from _sidecar_starter(lambda: tmp_path_factory.mktemp("sidecar"))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A plain client for a test's own requests (no proxy from the environment, 15 s timeout)."""
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(15.0)) as http:
        yield http


@pytest.fixture
def http(client: httpx.Client) -> httpx.Client:
    """`client`, under the name the conformance and forwarding tests use."""
    return client


def pytest_collection_finish(session: pytest.Session) -> None:
    """Settle the test network before the first test, while the process still has one thread
    (TestNet.prepare_session), and only when a selected test uses it."""
    if any("testnet" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[TESTNET_SKIP_REASON] = TestNet.prepare_session()


@pytest.fixture(scope="session")
def testnet(request: pytest.FixtureRequest) -> Iterator[TestNet]:
    """Real non-loopback client and proxy addresses (needs iproute2, and root or an unprivileged
    user namespace); skipped with one line saying why where the machine cannot have them."""
    reason = request.config.stash[TESTNET_SKIP_REASON]
    if reason is not None:
        pytest.skip(f"TEST NETWORK TESTS SKIPPED: {reason}")
    try:
        net = TestNet().__enter__()
    except NamespaceError as exc:
        pytest.skip(f"TEST NETWORK TESTS SKIPPED: {exc}")
    try:
        yield net
    finally:
        net.__exit__(None, None, None)


@pytest.fixture(scope="session")
def token_gateway() -> Iterator[RealGateway]:
    """One real gateway in token mode for the session, with the routes that act switched on
    (OpenAI endpoints, hooks, admin HTTP RPC) so that the doors the sidecar closes really exist
    behind it."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {reason}")
    gateway = RealGateway({"mode": "token", "token": REAL_GATEWAY_TOKEN}, {
        "gateway": {"http": OPENAI_ENDPOINTS},
        "hooks": {"enabled": True, "token": REAL_GATEWAY_HOOKS_TOKEN},
        "plugins": {"entries": {"admin-http-rpc": {"enabled": True}}},
    })
    yield gateway
    gateway.stop()
