"""Shared test fixtures.

``redis_server``: one real redis-server for the whole session (tests/redis_server.py),
skipped with one line when no binary can be had (``make test`` installs one via scripts/ensure-redis).
``redis_url``: that server, running and flushed, for one test; a test may stop/restart
the server (same port) to simulate an outage - the next test gets it running again.
"""

from __future__ import annotations

from collections.abc import Iterator

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
