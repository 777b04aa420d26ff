"""Shared test fixtures.

``redis_server``: one real redis-server for the whole session (tests/redis_server.py),
skipped with one line when no binary can be had (``make test`` installs one via scripts/ensure-redis).
``redis_url``: that server, running and flushed, for one test; a test may stop/restart
the server (same port) to simulate an outage - the next test gets it running again.

``make test`` runs the suite on one pytest-xdist worker per core (``-n auto``);
``pytest_xdist_make_scheduler`` below says which tests go to a worker together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.redis_server import RedisServer, find_redis_server
except ImportError:  # tests/ itself is on sys.path (rootdir-less "prepend" import mode)
    from redis_server import RedisServer, find_redis_server  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("REDIS TESTS SKIPPED: no redis-server binary (scripts/ensure-redis installs Debian's package as root)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.start()  # no-op when running; revives it after a test that stopped it
    redis_server.flushall()
    return redis_server.url


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the number of workers `-n auto` means
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """One per core (xdist's own answer) as root; none, one process, for a session not run as
    root: it builds the test network in a user namespace of its own (tests/e2e/netns.py), which
    the kernel grants only to a process with one thread, and an xdist worker has two."""
    return None if os.geteuid() == 0 else 0


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: called only when it distributes the tests
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """A worker takes a module whole, so the sidecars and backends a module shares (its
    module-scoped fixtures) start once; the modules in front of the real gateway go to one worker
    together, so that the session's gateway (about 20 s of CPU to start) starts once too."""
    from xdist.scheduler import LoadScopeScheduling

    class WholeModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.partition("::")[0]
            return "the real gateway's modules" if "real_gateway" in Path(module).name else module

    return WholeModules(config, log)
