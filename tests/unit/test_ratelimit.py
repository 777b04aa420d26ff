"""sidecar.ratelimit: upstream auth-failure limiter conformance, storage and outage policy.

Every behavioural test runs on ``memory://`` and on a real redis-server (tests/redis_server.py,
one per session, flushed per test).  Time comes from an injected clock: no test sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.metrics import REGISTRY
from sidecar.ratelimit import (
    AuthFailureLimiter,
    ClientTurns,
    LimitVerdict,
    RequestRateLimiter,
    _make_storage,
    async_storage_uri,
    auth_key,
    redact_uri,
)

try:
    from tests.redis_server import RedisServer, free_port
except ImportError:  # tests/ itself on sys.path
    from redis_server import RedisServer, free_port  # type: ignore[no-redef]

IP = "203.0.113.7"
OTHER = "198.51.100.23"
START = 1_700_000_040.0  # a whole minute, so fixed windows start here


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def storage_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def make_limiter(storage_uri: str, clock: FakeClock) -> AsyncIterator[Callable[..., AuthFailureLimiter]]:
    made: list[AuthFailureLimiter] = []

    def factory(**kwargs: Any) -> AuthFailureLimiter:
        kwargs.setdefault("storage_uri", storage_uri)
        kwargs.setdefault("clock", clock)
        limiter = AuthFailureLimiter(**kwargs)
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
async def make_request_limiter(
    storage_uri: str, clock: FakeClock
) -> AsyncIterator[Callable[..., RequestRateLimiter]]:
    made: list[RequestRateLimiter] = []

    def factory(limit: str | None, **kwargs: Any) -> RequestRateLimiter:
        kwargs.setdefault("storage_uri", storage_uri)
        kwargs.setdefault("clock", clock)
        limiter = RequestRateLimiter(limit, **kwargs)
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


async def attempt(limiter: AuthFailureLimiter, ip: str | None, *, good: bool) -> int:
    """What the sidecar answers: the limiter is consulted before the credential comparison."""
    verdict = await limiter.check(ip)
    if verdict.unavailable:
        return 503
    if not verdict.allowed:
        return 429
    if good:
        await limiter.reset(ip)
        return 200
    await limiter.record_failure(ip)
    return 401


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


FALLBACKS = "openclaw_sidecar_ratelimit_storage_fallbacks_total"
ERRORS = "openclaw_sidecar_ratelimit_storage_errors_total"


# --------------------------------------------------------------------------- conformance


async def test_case15_lockout_after_max_attempts_even_with_good_credential(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter()
    statuses = [await attempt(limiter, IP, good=False) for _ in range(10)]
    assert statuses == [401] * 10  # the 10th failure is itself still a 401
    verdict = await limiter.check(IP)
    assert verdict == LimitVerdict(False, retry_after_s=300)
    assert await attempt(limiter, IP, good=True) == 429  # right credential: still locked
    assert await attempt(limiter, IP, good=False) == 429
    assert await attempt(limiter, OTHER, good=True) == 200  # other clients unaffected


async def test_case16_success_resets_the_budget(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(max_attempts=3)
    assert [await attempt(limiter, IP, good=False) for _ in range(2)] == [401, 401]
    assert await attempt(limiter, IP, good=True) == 200
    assert [await attempt(limiter, IP, good=False) for _ in range(2)] == [401, 401]
    assert (await limiter.check(IP)).allowed
    assert await attempt(limiter, IP, good=False) == 401  # 3rd since the reset: now locked
    assert await attempt(limiter, IP, good=True) == 429


async def test_case18_clients_have_independent_budgets(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(max_attempts=2)
    await limiter.record_failure(IP)
    await limiter.record_failure(OTHER)
    assert (await limiter.check(IP)).allowed and (await limiter.check(OTHER)).allowed
    await limiter.record_failure(IP)
    assert not (await limiter.check(IP)).allowed
    assert (await limiter.check(OTHER)).allowed
    # no or unparseable address: one shared "unknown" bucket
    assert auth_key(None) == auth_key("not-an-ip") == "shared-secret:unknown"
    await limiter.record_failure(None)
    await limiter.record_failure("not-an-ip")
    assert (await limiter.check(None)).retry_after_s == 300


async def test_case19_loopback_never_blocked_but_delayed(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter()
    delays = [await limiter.record_failure("127.0.0.1") for _ in range(9)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    for ip in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert await limiter.check(ip) == LimitVerdict(True)
    assert await attempt(limiter, "127.0.0.1", good=True) == 200
    assert await limiter.record_failure("127.0.0.1") == 0.25  # success cleared the history
    assert await limiter.record_failure("::1") == 0.25  # a different loopback client
    # the mapped form is the same client as 127.0.0.1
    assert await limiter.record_failure("::ffff:127.0.0.1") == 0.5


async def test_case19_loopback_delay_history_slides_and_is_configurable(
    make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock
) -> None:
    limiter = make_limiter(loopback_delay_base_ms=100, loopback_delay_max_ms=300)
    assert [await limiter.record_failure("::1") for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    clock.advance(61)  # all of them left the window
    assert await limiter.record_failure("::1") == 0.1
    disabled = make_limiter(loopback_delay_base_ms=0)
    assert [await disabled.record_failure("127.0.0.1") for _ in range(12)] == [0.0] * 12
    assert (await disabled.check("127.0.0.1")).allowed


async def test_case20_loopback_limited_when_not_exempt(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(exempt_loopback=False, max_attempts=3)
    assert [await limiter.record_failure("127.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await limiter.check("127.0.0.1") == LimitVerdict(False, retry_after_s=300)
    assert not (await limiter.check("::ffff:127.0.0.1")).allowed


async def test_an_ipv6_slash_64_is_one_client(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    """Counted per address, one IPv6 host filled the table with identities of its own /64 and
    every new client was refused, the right token included (red team)."""
    limiter = make_limiter(max_attempts=2)
    for ip in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
        assert await attempt(limiter, ip, good=False) == 401
    assert not (await limiter.check("2001:db8:1:2::77")).allowed
    assert (await limiter.check("2001:db8:1:3::1")).allowed  # the next /64 is another client
    assert auth_key("2001:db8:1:2::1") == "shared-secret:2001:db8:1:2::/64"


async def test_each_tailnet_ipv6_address_is_a_client_of_its_own(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    """Every node of a tailnet has one address in Tailscale's fd7a:115c:a1e0::/48, all in one /64:
    counted by /64, one user's wrong tokens locked out every other user (red team)."""
    limiter = make_limiter(max_attempts=2)
    mallory, alice = "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", "fd7a:115c:a1e0:ab12:4843:cd96:626b:430b"
    assert [await attempt(limiter, mallory, good=False) for _ in range(3)] == [401, 401, 429]
    assert await attempt(limiter, alice, good=True) == 200
    assert auth_key(alice) == f"shared-secret:{alice}"
    assert auth_key("fd7a:115c:a1e1::1") == "shared-secret:fd7a:115c:a1e1::/64"  # outside the tailnet range


async def test_subjects_that_are_no_address_keep_their_client_apart(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    """A browser origin's subject and a client's upstream-guess subject are keys as they are: read
    as addresses they were all 'unknown', one guesser locking out every client's device connects."""
    limiter = make_limiter(max_attempts=2)
    for subject in (f"upstream-guess:{IP}", f"browser-origin:{IP}"):
        assert auth_key(subject) == f"shared-secret:{subject}"
        assert [await attempt(limiter, subject, good=False) for _ in range(3)] == [401, 401, 429]
    assert (await limiter.check(f"upstream-guess:{OTHER}")).allowed
    assert (await limiter.check(None)).allowed  # 'unknown' is nobody's guesses


async def test_case21_ipv4_mapped_ipv6_shares_the_bucket(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(max_attempts=4)
    for ip in ("1.2.3.4", "::ffff:1.2.3.4", "[::ffff:1.2.3.4]", " 1.2.3.4 "):
        assert await attempt(limiter, ip, good=False) == 401
    assert not (await limiter.check("1.2.3.4")).allowed
    assert not (await limiter.check("::ffff:1.2.3.4")).allowed
    assert auth_key("::ffff:1.2.3.4") == "shared-secret:1.2.3.4"


async def test_case22_failures_leave_the_sliding_window(
    make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock
) -> None:
    limiter = make_limiter(max_attempts=3, window_ms=60_000)
    await limiter.record_failure(IP)  # t = 0
    clock.advance(30)
    await limiter.record_failure(IP)  # t = 30
    clock.advance(29.999)
    await limiter.record_failure(IP)  # t = 59.999: the first is still inside the window
    assert not (await limiter.check(IP)).allowed

    other = make_limiter(max_attempts=3, window_ms=60_000)
    await other.record_failure(OTHER)  # t0
    clock.advance(30)
    await other.record_failure(OTHER)  # t0 + 30
    clock.advance(30)
    await other.record_failure(OTHER)  # t0 + 60: the first failure has just dropped out
    assert (await other.check(OTHER)).allowed
    clock.advance(29.999)
    await other.record_failure(OTHER)  # t0 + 89.999: failures at +30, +60, +89.999
    assert await other.check(OTHER) == LimitVerdict(False, retry_after_s=300)


async def test_case22_window_expiry_with_defaults(make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock) -> None:
    limiter = make_limiter()
    for _ in range(9):
        await limiter.record_failure(IP)
    clock.advance(60)
    for _ in range(9):
        await limiter.record_failure(IP)
    assert (await limiter.check(IP)).allowed
    await limiter.record_failure(IP)
    assert not (await limiter.check(IP)).allowed


async def test_case23_lockout_expires_then_evaluated_normally(
    make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock
) -> None:
    limiter = make_limiter(max_attempts=3, lockout_ms=300_000)
    for _ in range(3):
        await limiter.record_failure(IP)
    clock.advance(299.5)
    assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=1)
    clock.advance(0.5)
    assert await limiter.check(IP) == LimitVerdict(True)
    # history was cleared with the lockout: a full budget again
    assert [await attempt(limiter, IP, good=False) for _ in range(3)] == [401, 401, 401]
    assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=300)


async def test_failures_during_lockout_do_not_extend_it(
    make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock
) -> None:
    limiter = make_limiter(max_attempts=2, lockout_ms=100_000)
    await limiter.record_failure(IP)
    await limiter.record_failure(IP)
    clock.advance(50)
    for _ in range(5):
        assert await limiter.record_failure(IP) == 0.0
    assert (await limiter.check(IP)).retry_after_s == 50
    clock.advance(50)
    assert (await limiter.check(IP)).allowed
    await limiter.record_failure(IP)  # one failure after the lockout: not locked again
    assert (await limiter.check(IP)).allowed


async def test_the_check_says_when_a_client_has_no_failures_to_reset(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    """`no_failures` lets the pipeline skip the reset after a success: it must be False whenever
    there is a failure a reset would clear."""
    limiter = make_limiter(max_attempts=3)
    assert (await limiter.check(IP)).no_failures
    await limiter.record_failure(IP)
    verdict = await limiter.check(IP)
    assert verdict.allowed and not verdict.no_failures
    assert (await limiter.check(OTHER)).no_failures
    await limiter.reset(IP)
    assert (await limiter.check(IP)).no_failures


async def test_reset_while_locked_clears_the_lock(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(max_attempts=1)
    await limiter.record_failure(IP)
    assert not (await limiter.check(IP)).allowed
    await limiter.reset(IP)  # e.g. an operator unlocking the client
    assert (await limiter.check(IP)).allowed


async def test_max_attempts_0_locks_at_once_and_again_at_each_check_for_a_minute(
        make_limiter: Callable[..., AuthFailureLimiter], clock: FakeClock) -> None:
    """maxAttempts up to 0 at the gateway: the first failure locks, and its check locks again any
    client it still holds (0 failures >= 0) until its minute's prune lets go. Read as 1 before,
    a client got a guess per lockout, where the gateway gave one per pause of a minute (red team)."""
    limiter = make_limiter(max_attempts=0, lockout_ms=1000)
    assert await attempt(limiter, IP, good=False) == 401
    assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=1)
    for _ in range(5):  # trying again as each lockout ends: locked again each time
        clock.advance(1.5)
        assert await attempt(limiter, IP, good=True) == 429
    clock.advance(61)  # a minute's pause after the last lockout: let go
    assert await attempt(limiter, IP, good=True) == 200
    assert (await limiter.check(OTHER)).allowed


async def test_zero_lockout_never_locks(make_limiter: Callable[..., AuthFailureLimiter]) -> None:
    limiter = make_limiter(max_attempts=1, lockout_ms=0)
    for _ in range(3):
        await limiter.record_failure(IP)
    assert (await limiter.check(IP)).allowed


# --------------------------------------------------------------------------- memory bounds


async def test_max_entries_evicts_least_recent_unlocked_client(clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=2, max_entries=3, clock=clock)
    try:
        await limiter.record_failure("10.0.0.1")
        await limiter.record_failure("10.0.0.2")
        await limiter.record_failure("10.0.0.3")
        await limiter.record_failure("10.0.0.1")  # locks 10.0.0.1: it is never evicted
        assert not (await limiter.check("10.0.0.1")).allowed
        await limiter.record_failure("10.0.0.4")  # evicts 10.0.0.2 (least recent, unlocked)
        await limiter.record_failure("10.0.0.2")  # back with a fresh history: 1 failure, not 2
        assert (await limiter.check("10.0.0.2")).allowed
        assert limiter.tracked_clients == 3
        assert not (await limiter.check("10.0.0.1")).allowed
        # the table stays bounded under a spray of addresses
        for n in range(50):
            await limiter.record_failure(f"192.0.2.{n}")
        assert limiter.tracked_clients == 3
        assert not (await limiter.check("10.0.0.1")).allowed
    finally:
        await limiter.aclose()


async def test_table_full_of_lockouts_sets_overflow_lock(clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=1, max_entries=2, lockout_ms=300_000, clock=clock)
    try:
        await limiter.record_failure("10.0.0.1")
        await limiter.record_failure("10.0.0.2")
        assert (await limiter.check("10.0.0.3")).allowed  # not full of *new* failures yet
        clock.advance(10)
        await limiter.record_failure("10.0.0.3")  # nothing can be evicted: overflow lock
        assert await limiter.check("10.0.0.3") == LimitVerdict(False, retry_after_s=300)
        assert await limiter.check("10.0.0.99") == LimitVerdict(False, retry_after_s=300)
        # existing keys behave normally: their own lockouts, and their expiry
        assert await limiter.check("10.0.0.1") == LimitVerdict(False, retry_after_s=290)
        clock.advance(291)
        assert (await limiter.check("10.0.0.1")).allowed
        assert await limiter.check("10.0.0.99") == LimitVerdict(False, retry_after_s=9)
        clock.advance(9)
        assert (await limiter.check("10.0.0.99")).allowed
        assert await attempt(limiter, "10.0.0.99", good=False) == 401
        assert not (await limiter.check("10.0.0.99")).allowed
    finally:
        await limiter.aclose()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "reset", "check", "wait"]), st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
                max_size=40))
@example([("fail", "10.0.0.1")] * 2 + [("wait", "10.0.0.1")] * 3 + [("check", "10.0.0.1"), ("reset", "10.0.0.1")])  # an ended lockout's kept end
def test_an_untracked_memory_client_has_no_stored_state(steps: list[tuple[str, str]]) -> None:
    """The in-memory fast path answers `check` and `reset` for a client outside the index
    without reading the storage; that is only right while every key with stored failures or
    a lock is in the index, whatever the sequence of failures, resets, evictions and expiries."""

    async def run() -> None:
        clock = FakeClock()
        limiter = AuthFailureLimiter(max_attempts=2, max_entries=2, window_ms=10_000, lockout_ms=20_000,
                                     exempt_loopback=False, clock=clock)
        log = limiter._guard.primary
        try:
            for action, ip in steps:
                if action == "fail":
                    await limiter.record_failure(ip)
                elif action == "reset":
                    await limiter.reset(ip)
                elif action == "check":
                    await limiter.check(ip)
                else:
                    clock.advance(7)
                for other in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
                    key = auth_key(other)
                    if log.untracked(key):
                        assert await log.storage.get(log._lock(key)) == 0
                        assert await log.storage.get(log._seq(key)) == 0
        finally:
            await limiter.aclose()

    asyncio.run(run())


@pytest.mark.redis
async def test_redis_has_no_entry_table(redis_url: str, clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=1, max_entries=1, storage_uri=redis_url, clock=clock)
    try:
        assert limiter.tracked_clients is None
        for n in range(5):  # max_entries does not apply: keys expire in Redis
            await limiter.record_failure(f"10.0.0.{n}")
        for n in range(5):
            assert not (await limiter.check(f"10.0.0.{n}")).allowed
        assert (await limiter.check("10.9.9.9")).allowed
    finally:
        await limiter.aclose()


# --------------------------------------------------------------------------- shared Redis


@pytest.mark.redis
async def test_replicas_on_one_redis_share_one_budget(redis_url: str, clock: FakeClock) -> None:
    a = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    b = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    try:
        for n in range(10):
            assert await attempt(a if n % 2 else b, IP, good=False) == 401
        assert await a.check(IP) == LimitVerdict(False, retry_after_s=300)
        assert await b.check(IP) == LimitVerdict(False, retry_after_s=300)
        assert await attempt(b, IP, good=True) == 429
        # a success on one replica resets the client for both
        await attempt(a, OTHER, good=False)
        await attempt(b, OTHER, good=True)
        for n in range(9):
            await attempt(b if n % 2 else a, OTHER, good=False)
        assert (await a.check(OTHER)).allowed
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_concurrent_failures_across_replicas(redis_url: str, clock: FakeClock) -> None:
    a = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    b = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    try:
        await asyncio.gather(*((a if n % 2 else b).record_failure(IP) for n in range(25)))
        for limiter in (a, b):
            assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=300)
        await asyncio.gather(*((a if n % 2 else b).record_failure(OTHER) for n in range(9)))
        assert (await a.check(OTHER)).allowed and (await b.check(OTHER)).allowed
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_redis_keys_are_prefixed_and_expire(redis_server: RedisServer, redis_url: str, clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=2, storage_uri=redis_url, clock=clock)
    try:
        await limiter.record_failure(IP)
        await limiter.record_failure(IP)
        keys = redis_server.command("KEYS", "*")
        lock = f"openclaw-sidecar:authfail/{{shared-secret:{IP}}}/lock"
        assert lock.encode() in keys
        for key in (lock, f"openclaw-sidecar:authfail/{{shared-secret:{IP}}}/t/1"):
            ttl = int(redis_server.command("TTL", key).strip().lstrip(b":"))
            assert 0 < ttl <= 430  # garbage collection only: lockout + window + the prune minute (+slack)
        await limiter.reset(IP)
        assert b"authfail" not in redis_server.command("KEYS", "*")
    finally:
        await limiter.aclose()


@pytest.mark.redis
async def test_redis_outage_falls_back_then_recovers(
    redis_server: RedisServer, redis_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.ratelimit")
    a = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)
    b = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)
    fallbacks, errors = metric(FALLBACKS), metric(ERRORS)
    try:
        await a.record_failure(IP)
        assert not a.degraded

        redis_server.stop()
        # still limiting, now on this replica's own memory (a fresh history)
        assert [await attempt(a, IP, good=False) for _ in range(4)] == [401, 401, 401, 429]
        assert await attempt(a, OTHER, good=True) == 200
        assert a.degraded
        assert metric(FALLBACKS) - fallbacks == 1  # once per outage ...
        assert metric(ERRORS) - errors >= 1  # ... errors per failed operation
        outage_logs = [r for r in caplog.records if r.name == "sidecar.ratelimit" and "failed" in r.getMessage()]
        assert len(outage_logs) == 1 and outage_logs[0].levelno == logging.WARNING
        assert "redis://127.0.0.1" in outage_logs[0].getMessage()

        redis_server.start()  # same port, empty data set
        assert not (await a.check(IP)).allowed  # no probe before the interval: still on memory
        assert a.degraded
        clock.advance(1.0)
        # probed, recovered: the lockout set on the fallback was written to Redis
        assert await a.check(IP) == LimitVerdict(False, retry_after_s=299)
        assert not a.degraded
        assert await b.check(IP) == LimitVerdict(False, retry_after_s=299)
        recovery_logs = [r for r in caplog.records if "recovered" in r.getMessage()]
        assert len(recovery_logs) == 1
        assert metric(FALLBACKS) - fallbacks == 1

        # back to ONE shared budget; b never saw the outage (its stale connection is replaced)
        for n in range(3):
            await (a if n % 2 else b).record_failure(OTHER)
        assert not (await a.check(OTHER)).allowed
        assert not (await b.check(OTHER)).allowed
    finally:
        redis_server.start()
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_a_lockout_on_the_shared_storage_outlives_its_outage(
    redis_server: RedisServer, redis_url: str, clock: FakeClock
) -> None:
    """A locked client gets no fresh run of guesses on the fallback, up to its lockout's end."""
    limiter = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)
    try:
        assert [await attempt(limiter, IP, good=False) for _ in range(4)] == [401, 401, 401, 429]
        redis_server.stop()
        clock.advance(100)
        assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=200)
        assert limiter.degraded
        assert await attempt(limiter, IP, good=True) == 429  # the right secret too, as on Redis
        assert await attempt(limiter, OTHER, good=True) == 200
        clock.advance(200)
        assert await attempt(limiter, IP, good=True) == 200  # the lockout's end, not the outage's
    finally:
        redis_server.start()
        await limiter.aclose()


@pytest.mark.redis
async def test_lockouts_are_written_back_to_a_storage_that_returns_empty(
    redis_server: RedisServer, redis_url: str, clock: FakeClock
) -> None:
    """Recovery writes back the lockouts seen before the outage (lost by a Redis restarted
    without its data) and those set on the fallback during it, so every replica holds them."""
    a = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)
    try:
        for _ in range(3):
            await a.record_failure(IP)
        redis_server.stop()
        clock.advance(10)
        for _ in range(3):
            await a.record_failure(OTHER)  # locked on the fallback
        assert a.degraded
        redis_server.start()  # same port, empty data set
        clock.advance(1.0)
        assert await a.check(IP) == LimitVerdict(False, retry_after_s=289)
        assert not a.degraded
        b = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)  # a replica that saw nothing
        try:
            assert await b.check(IP) == LimitVerdict(False, retry_after_s=289)
            assert await b.check(OTHER) == LimitVerdict(False, retry_after_s=299)
            assert await b.check("192.0.2.1") == LimitVerdict(True)
        finally:
            await b.aclose()
    finally:
        redis_server.start()
        await a.aclose()


@pytest.mark.redis
async def test_fail_closed_answers_unavailable(redis_server: RedisServer, redis_url: str, clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(storage_uri=redis_url, fail_closed=True, clock=clock)
    requests = RequestRateLimiter("5/minute", storage_uri=redis_url, fail_closed=True, clock=clock)
    fallbacks = metric(FALLBACKS)
    try:
        assert (await limiter.check(IP)).allowed
        redis_server.stop()
        assert await limiter.check(IP) == LimitVerdict(False, unavailable=True)
        assert await attempt(limiter, IP, good=True) == 503
        assert await limiter.record_failure(IP) == 0.0  # never raises
        await limiter.reset(IP)
        assert (await limiter.check("127.0.0.1")).allowed  # loopback needs no shared storage
        assert await requests.hit("alice") == LimitVerdict(False, unavailable=True)
        assert metric(FALLBACKS) - fallbacks == 2  # one outage seen by each limiter
        redis_server.start()
        clock.advance(1.5)
        assert (await limiter.check(IP)).allowed
        assert (await requests.hit("alice")).allowed
    finally:
        redis_server.start()
        await limiter.aclose()
        await requests.aclose()


async def test_redis_down_at_start_up_still_limits(clock: FakeClock) -> None:
    """Construction does not connect; the first operation falls back to memory."""
    limiter = AuthFailureLimiter(max_attempts=2, storage_uri=f"redis://127.0.0.1:{free_port()}/0", clock=clock)
    try:
        assert await limiter.check(IP) == LimitVerdict(True)
        assert limiter.degraded
        await limiter.record_failure(IP)
        await limiter.record_failure(IP)
        assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=300)
    finally:
        await limiter.aclose()


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("memory://", "async+memory://"),
        ("redis://h:6379/0", "async+redis://h:6379/0"),
        ("rediss://u:p@h:6380", "async+rediss://u:p@h:6380"),
        ("redis+sentinel://h:26379/main", "async+redis+sentinel://h:26379/main"),
        ("redis+cluster://h:7000,h:7001", "async+redis+cluster://h:7000,h:7001"),
        ("REDIS://h:6379", "async+redis://h:6379"),
    ],
)
def test_storage_uri_mapping(uri: str, expected: str) -> None:
    assert async_storage_uri(uri) == expected


def test_sentinels_get_the_same_timeouts_and_single_retry_as_the_servers() -> None:
    """limits gives the Sentinels only the password; redis-py's default there (retries with
    backoff, no socket timeout) held the first request of a Sentinel outage for ~30 s."""
    storage, shared = _make_storage("redis+sentinel://h1:26379,h2:26379/main", 0.25, {"password": "pw"})
    sentinel = storage.bridge.sentinel  # type: ignore[attr-defined]
    assert shared and sentinel.sentinel_kwargs["password"] == "pw"
    assert sentinel.sentinel_kwargs["socket_timeout"] == sentinel.sentinel_kwargs["socket_connect_timeout"] == 0.25
    for node in sentinel.sentinels:
        kwargs = node.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25 and kwargs["retry"].get_retries() == 1


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("memcached://h:11211", "memcached"),
        ("mongodb://h", "mongodb"),
        ("async+redis://h:6379", "async+redis"),
        ("valkey://h:6379", "valkey"),
        ("localhost:6379", "localhost"),
        ("nonsense", "nonsense"),
        ("redis+sentinel://h:26379", "service_name"),
        ("redis://h:notaport", "notaport"),
        ("redis://h:6379/0?ssl=true", "'ssl'"),  # redis-py would refuse it on every connection
        ("rediss://:pw@h:6379/0?foo=bar", "'foo'"),
    ],
)
def test_bad_storage_uri_fails_at_construction(uri: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        AuthFailureLimiter(storage_uri=uri)
    with pytest.raises(ValueError, match=re.escape(named)):
        RequestRateLimiter("10/minute", storage_uri=uri)


def test_errors_and_logs_do_not_carry_the_password() -> None:
    assert redact_uri("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_uri("redis://:s3cret@h:6379") == "redis://:***@h:6379"
    for uri in ("redis://user:s3cret@h:bad", "redis:/:s3cret@h:6379", "redis:s3cret@h", "h?password=s3cret"):
        with pytest.raises(ValueError) as info:  # the last three lack `scheme://` (admin/CLI red team)
            AuthFailureLimiter(storage_uri=uri)
        assert "s3cret" not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": -1}, {"window_ms": -1}, {"lockout_ms": -1}, {"max_entries": 0}, {"loopback_delay_base_ms": -1}],
)
def test_invalid_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AuthFailureLimiter(**kwargs)


# --------------------------------------------------------------------------- allowed calls


async def test_request_limiter_basics(make_request_limiter: Callable[..., RequestRateLimiter], clock: FakeClock) -> None:
    limiter = make_request_limiter("3/minute")
    assert [(await limiter.hit("alice", "exec")).allowed for _ in range(3)] == [True] * 3
    refused = await limiter.hit("alice", "read")  # not per tool: one budget for alice
    assert not refused.allowed and not refused.unavailable and 1 <= refused.retry_after_s <= 60
    for _ in range(5):  # refused calls do not consume the budget
        assert not (await limiter.hit("alice")).allowed
    assert (await limiter.hit("bob")).allowed
    assert (await limiter.hit(None, client_ip="::ffff:10.1.2.3")).allowed  # no identity: by client IP
    clock.advance(120)
    assert [(await limiter.hit("alice")).allowed for _ in range(3)] == [True] * 3


async def test_request_limiter_sliding_window(make_request_limiter: Callable[..., RequestRateLimiter], clock: FakeClock) -> None:
    limiter = make_request_limiter("4/minute")
    for _ in range(4):
        assert (await limiter.hit("alice")).allowed
    assert await limiter.hit("alice") == LimitVerdict(False, retry_after_s=60)
    clock.advance(90)  # half of the previous window still weighs: 4 * 0.5 = 2 used
    assert [(await limiter.hit("alice")).allowed for _ in range(3)] == [True, True, False]


async def test_request_limiter_per_tool(make_request_limiter: Callable[..., RequestRateLimiter]) -> None:
    limiter = make_request_limiter("2/minute", per_tool=True)
    assert (await limiter.hit("alice", "exec")).allowed
    assert (await limiter.hit("alice", "exec")).allowed
    assert not (await limiter.hit("alice", "exec")).allowed
    assert (await limiter.hit("alice", "read")).allowed


async def test_an_e_mail_in_any_case_is_one_budget(make_request_limiter: Callable[..., RequestRateLimiter]) -> None:
    """The gateway serves ALICE@x.com as alice@x.com; a login that is no e-mail keeps its case."""
    limiter = make_request_limiter("2/minute")
    assert (await limiter.hit("alice@x.com")).allowed
    assert (await limiter.hit("ALICE@x.com")).allowed
    assert not (await limiter.hit("Alice@X.com")).allowed
    assert (await limiter.hit("bob")).allowed and (await limiter.hit("Bob")).allowed and (await limiter.hit("BOB")).allowed


async def test_request_limiter_invalid_settings() -> None:
    with pytest.raises(ValueError, match="often"):
        RequestRateLimiter("often")
    with pytest.raises(ValueError, match="per"):
        RequestRateLimiter("1/minute", per="tool")


async def test_request_limiter_per_ip_ignores_identity() -> None:
    limiter = RequestRateLimiter("1/minute", per="ip")
    assert (await limiter.hit("alice", client_ip="203.0.113.7")).allowed
    assert not (await limiter.hit("bob", client_ip="203.0.113.7")).allowed
    assert (await limiter.hit("alice", client_ip="203.0.113.8")).allowed
    await limiter.aclose()


@pytest.mark.redis
async def test_request_limiter_shared_and_outage(redis_server: RedisServer, redis_url: str, clock: FakeClock) -> None:
    a = RequestRateLimiter("4/minute", storage_uri=redis_url, clock=clock)
    b = RequestRateLimiter("4/minute", storage_uri=redis_url, clock=clock)
    try:
        for n in range(4):
            assert (await (a if n % 2 else b).hit("alice")).allowed
        assert not (await a.hit("alice")).allowed
        assert not (await b.hit("alice")).allowed
        redis_server.stop()
        assert (await a.hit("carol")).allowed  # fallback memory keeps limiting
        assert a.degraded
        assert [(await a.hit("carol")).allowed for _ in range(4)] == [True, True, True, False]
    finally:
        redis_server.start()
        await a.aclose()
        await b.aclose()


async def test_memory_storage_sweeps_expired_keys_without_a_task_per_write() -> None:
    from sidecar.ratelimit import _memory_storage

    storage = _memory_storage()
    for n in range(100):
        await storage.incr(f"old/{n}", 1)
    storage.expirations.update({k: time.time() - 1 for k in storage.expirations})  # type: ignore[attr-defined]
    assert storage.timer is None  # type: ignore[attr-defined]  # no sweep task per incr
    storage._next_sweep = 0.0  # type: ignore[attr-defined]  # next write sweeps (GC, wall clock)
    await storage.incr("new", 60)
    assert list(storage.storage) == ["new"]  # type: ignore[attr-defined]


async def test_a_broken_memory_store_is_an_outage_not_a_pass(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A limiter bug must never turn lockout off: the failures go to a fresh per-replica store."""
    limiter = AuthFailureLimiter(max_attempts=2, exempt_loopback=False, clock=clock)
    primary = limiter._guard.primary.storage

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected storage fault")

    for name in ("get", "incr", "get_moving_window", "acquire_sliding_window_entry", "get_sliding_window", "clear"):
        if hasattr(primary, name):
            monkeypatch.setattr(primary, name, broken)
    monkeypatch.setattr(primary, "check", broken)  # and it does not come back
    for _ in range(2):
        assert await attempt(limiter, "203.0.113.9", good=False) == 401
    assert await attempt(limiter, "203.0.113.9", good=True) == 429
    assert limiter._guard.degraded  # the injected fault was met and the fallback answered
    await limiter.aclose()


async def test_when_no_store_can_answer_the_verdict_is_unavailable(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import ratelimit

    limiter = AuthFailureLimiter(max_attempts=2, exempt_loopback=False, clock=clock)

    async def failed(op: object) -> object:
        return ratelimit._FAILED

    monkeypatch.setattr(limiter._guard, "run", failed)
    verdict = await limiter.check("203.0.113.9")
    assert verdict.unavailable and not verdict.allowed
    await limiter.aclose()


# --------------------------------------------------------------------------- client turns


async def test_client_turns_run_one_check_per_client_at_a_time_and_keep_nothing_after() -> None:
    """A client's checks queue behind each other (a mapped IPv4 address is the same client);
    other clients' checks do not wait; no entry outlives the checks in flight."""
    turns, trace = ClientTurns(), []

    async def check(ip: str, name: str) -> None:
        async with turns.turn(ip):
            trace.append(f"{name}+")
            await asyncio.sleep(0.01)  # a storage round trip
            trace.append(f"{name}-")

    await asyncio.gather(check(IP, "a"), check(f"::ffff:{IP}", "b"), check("198.51.100.1", "c"))
    assert trace.index("a-") < trace.index("b+") and trace.index("c+") < trace.index("a-")
    assert len(turns) == 0


# --------------------------------------------------------------------------- bookkeeping (mutation survivors)


def _ttl(redis_server: RedisServer, key: str) -> int:
    return int(redis_server.command("TTL", f"openclaw-sidecar:{key}").strip().lstrip(b":"))


@pytest.mark.redis
async def test_a_lockouts_record_outlives_its_window_and_the_relock_minute(redis_server: RedisServer, redis_url: str,
                                                                           clock: FakeClock) -> None:
    """A lock key that expired with its lockout would leave the failures still in the window to
    lock the client again at its next check, where the gateway drops them with the lockout; with
    maxAttempts 0 the gateway locks again for a minute after a lockout ends (RELOCK_MS)."""
    limiter = AuthFailureLimiter(max_attempts=2, storage_uri=redis_url, clock=clock)
    relocking = AuthFailureLimiter(max_attempts=0, window_ms=1_000, lockout_ms=1_000, storage_uri=redis_url, clock=clock)
    try:
        await limiter.record_failure(IP)
        await limiter.record_failure(IP)
        assert 420 < _ttl(redis_server, f"authfail/{{shared-secret:{IP}}}/lock") <= 422  # lockout + window + a minute + 2 s
        await relocking.record_failure(OTHER)
        assert 62 < _ttl(redis_server, f"authfail/{{shared-secret:{OTHER}}}/lock") <= 64  # lockout + window + a minute + 2 s
    finally:
        await limiter.aclose()
        await relocking.aclose()


@pytest.mark.redis
async def test_a_clients_failure_times_are_kept_for_its_last_max_attempts_only(redis_server: RedisServer, redis_url: str,
                                                                               clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=3, window_ms=1_000, storage_uri=redis_url, clock=clock)
    try:
        for _ in range(12):  # each alone in its window: never locked, the sequence grows
            await limiter.record_failure(IP)
            clock.advance(2)
        times = [key for key in redis_server.command("KEYS", "*").split(b"\r\n") if b"/t/" in key]
        assert sorted(times) == [f"openclaw-sidecar:authfail/{{shared-secret:{IP}}}/t/{n}".encode() for n in (10, 11, 12)]
    finally:
        await limiter.aclose()


@pytest.mark.redis
async def test_a_lock_two_replicas_set_at_once_is_the_first_ones_and_a_stale_one_is_replaced(redis_url: str,
                                                                                           clock: FakeClock) -> None:
    """Both replicas read no lock and lock the client: the lockout that began first stands, as
    the gateway's single process would have it; a lock key whose end has passed but which has
    not expired yet is replaced, not taken for a running lockout."""
    a = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    b = AuthFailureLimiter(storage_uri=redis_url, clock=clock)
    key, now = auth_key(IP), round(clock() * 1000)
    try:
        assert await a._guard.primary.set_lock(key, now + 300_000, now) == now + 300_000
        assert await b._guard.primary.set_lock(key, now + 310_000, now + 10_000) == now + 300_000
        clock.advance(10)
        assert await b.check(IP) == LimitVerdict(False, retry_after_s=290)
        ended = now + 300_000
        assert await b._guard.primary.set_lock(key, ended + 300_000, ended) == ended + 300_000
        clock.advance(290)
        assert await a.check(IP) == LimitVerdict(False, retry_after_s=300)
    finally:
        await a.aclose()
        await b.aclose()


async def test_loopback_failures_leave_the_delay_count_with_the_window(clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(window_ms=60_000, loopback_delay_base_ms=250, clock=clock)
    try:
        assert await limiter.record_failure("127.0.0.1") == 0.25
        clock.advance(60)  # exactly one window later: the first failure has left it
        assert await limiter.record_failure("127.0.0.1") == 0.25
        clock.advance(59.999)
        assert await limiter.record_failure("127.0.0.1") == 0.5
    finally:
        await limiter.aclose()


async def test_eviction_takes_the_client_that_failed_least_recently(clock: FakeClock) -> None:
    """Not the one that failed first: a client still guessing keeps its count."""
    limiter = AuthFailureLimiter(max_attempts=3, max_entries=2, clock=clock)
    try:
        for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"):  # 10.0.0.2 goes
            await limiter.record_failure(ip)
        await limiter.record_failure("10.0.0.1")  # its third
        assert await limiter.check("10.0.0.1") == LimitVerdict(False, retry_after_s=300)
    finally:
        await limiter.aclose()


async def test_a_full_table_of_lockouts_refuses_new_clients_for_one_lockout_not_longer(clock: FakeClock) -> None:
    """Each new client's failure while the table is full finds the overflow running, and does
    not extend it: it ends one lockout after it began."""
    limiter = AuthFailureLimiter(max_attempts=1, max_entries=2, lockout_ms=300_000, clock=clock)
    try:
        await limiter.record_failure("10.0.0.1")
        await limiter.record_failure("10.0.0.2")
        clock.advance(10)
        await limiter.record_failure("10.0.0.3")  # the overflow begins
        clock.advance(100)
        await limiter.record_failure("10.0.0.4")
        assert await limiter.check("10.0.0.99") == LimitVerdict(False, retry_after_s=200)
    finally:
        await limiter.aclose()


async def test_a_success_after_a_lockout_leaves_nothing_for_max_attempts_0_to_find(make_limiter: Callable[..., AuthFailureLimiter],
                                                                               clock: FakeClock) -> None:
    """An ended lockout's end is kept (the gateway holds the client until its prune, and a
    maxAttempts lowered to 0 locks whoever it holds); a success drops it, as the gateway's reset
    drops its entry."""
    limiter = make_limiter(max_attempts=1, lockout_ms=10_000)
    await limiter.record_failure(IP)
    await limiter.record_failure(OTHER)
    clock.advance(11)
    assert await attempt(limiter, IP, good=True) == 200
    assert await limiter.check(OTHER) == LimitVerdict(True)
    limiter.apply_limits(max_attempts=0, window_ms=60_000, lockout_ms=10_000, exempt_loopback=True)
    assert await limiter.check(IP) == LimitVerdict(True)
    assert await limiter.check(OTHER) == LimitVerdict(False, retry_after_s=10)


async def test_a_client_whose_lockout_ended_stays_in_the_table_until_it_succeeds(clock: FakeClock) -> None:
    """As the gateway keeps its map entry: the ended lockout's client is no new client when the
    table is full; its success forgets it."""
    limiter = AuthFailureLimiter(max_attempts=1, lockout_ms=10_000, clock=clock)
    try:
        await limiter.record_failure(IP)
        assert limiter.tracked_clients == 1
        clock.advance(11)
        assert await limiter.check(IP) == LimitVerdict(True)
        assert limiter.tracked_clients == 1
        await limiter.reset(IP)
        assert limiter.tracked_clients == 0
    finally:
        await limiter.aclose()


@pytest.mark.redis
async def test_an_outage_probes_the_storage_once_an_interval_not_at_every_request(redis_server: RedisServer, redis_url: str,
                                                                                  clock: FakeClock) -> None:
    """A probe of a stalled Redis waits out its timeout: probed at each request, every request
    during an outage would (mutation testing: an outage that began with no probe time, and a
    probe that did not note its time, survived)."""
    limiter = AuthFailureLimiter(storage_uri=redis_url, clock=clock, probe_interval_s=1.0)
    probes, probe = 0, limiter._guard._probe

    async def counted() -> None:
        nonlocal probes
        probes += 1
        await probe()

    limiter._guard._probe = counted  # type: ignore[method-assign]
    try:
        redis_server.stop()
        for _ in range(5):
            await limiter.record_failure(IP)  # the first one finds the outage
        assert limiter.degraded and probes == 0
        clock.advance(1.0)
        for _ in range(5):
            await limiter.check(IP)
        assert limiter.degraded and probes == 1
    finally:
        redis_server.start()
        await limiter.aclose()


async def test_a_failure_time_left_from_an_older_sequence_is_overwritten(make_limiter: Callable[..., AuthFailureLimiter],
                                                                         clock: FakeClock) -> None:
    """A maxAttempts lowered from 10 to 2 clears only the last two failure times with the lockout;
    the others stay until they expire, where the next sequence's failures are stored. Added to
    instead of overwritten, a time would lie in the future and never leave the window (mutation
    testing)."""
    limiter = make_limiter(max_attempts=10, window_ms=60_000, lockout_ms=10_000)
    for _ in range(8):
        await limiter.record_failure(IP)
    limiter.apply_limits(max_attempts=2, window_ms=60_000, lockout_ms=10_000, exempt_loopback=True)
    assert await limiter.check(IP) == LimitVerdict(False, retry_after_s=10)  # 8 in the window: locked at once
    clock.advance(11)
    assert (await limiter.check(IP)).allowed
    await limiter.record_failure(IP)  # stored where failure 1 of the older sequence still is
    clock.advance(61)
    await limiter.record_failure(IP)  # the one before has left the window: no lockout
    assert (await limiter.check(IP)).allowed


async def test_a_lockout_ending_now_makes_room_in_a_full_table(clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(max_attempts=1, max_entries=1, lockout_ms=10_000, clock=clock)
    try:
        await limiter.record_failure("10.0.0.1")
        clock.advance(10)  # its lockout ends this very millisecond
        await limiter.record_failure("10.0.0.2")  # takes its place: no overflow
        assert await limiter.check("10.0.0.2") == LimitVerdict(False, retry_after_s=10)
        assert (await limiter.check("10.0.0.3")).allowed
    finally:
        await limiter.aclose()


@pytest.mark.redis
async def test_each_outage_starts_a_fresh_fallback(redis_server: RedisServer, redis_url: str, clock: FakeClock) -> None:
    """The per-replica fallback is dropped when the storage recovers (what must not be lost, the
    lockouts, was written back): a later outage counts afresh, as the first did (mutation testing)."""
    limiter = AuthFailureLimiter(max_attempts=3, storage_uri=redis_url, clock=clock)
    try:
        redis_server.stop()
        await limiter.record_failure(IP)
        await limiter.record_failure(IP)
        redis_server.start()
        clock.advance(1.0)
        assert (await limiter.check(IP)).allowed and not limiter.degraded
        redis_server.stop()
        await limiter.record_failure(IP)  # the second outage: its fallback's first failure
        assert (await limiter.check(IP)).allowed and limiter.degraded
    finally:
        redis_server.start()
        await limiter.aclose()
