"""The auth-failure limiter against the gateway's own (createAuthRateLimiter, in its Node, with
Date.now stubbed): the same sequences of checks, failures, successes, clock steps and live
changes of gateway.auth.rateLimit (its updateConfig, the sidecar's reload) give the same verdicts.
The limits are written as the gateway's schema takes them (fractions, zero, negatives) and read by
the sidecar's config model, so the reading is tested with the limiter."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.config import AuthRateLimitConfig
from sidecar.ratelimit import AuthFailureLimiter
from tests.gateway.oracle import call_gateway
from tests.gateway.real_gateway import unavailable_reason
from tests.redis_server import RedisServer

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

START_MS = 1_700_000_040_000
CLIENTS = ["203.0.113.7", "198.51.100.23", "::ffff:203.0.113.7", "127.0.0.1"]
MAX_ATTEMPTS = [1, 2, 2.5, 3, 4, 10]
NO_ATTEMPTS = [0, -1, 0.5, 1]  # the first failure locks (0 and less: and the gateway locks again)
PRUNE_INTERVAL_MS = 60_000  # the gateway limiter's prune timer
DURATIONS_MS = [0, 1.5, 999.9, 1000, 5000, 60_000, 300_000, -5]
STEPS_MS = [0, 1, 400, 999, 1000, 4000, 60_000, 300_000]


def limits(rng: random.Random, window: dict[str, float] | None, attempts: list[float]) -> dict[str, Any]:
    """Some of gateway.auth.rateLimit's numbers, as an operator may write them; `window`, when
    given, is the sequence's fixed `windowMs` (or its absence)."""
    written = {"maxAttempts": rng.choice(attempts), "windowMs": rng.choice(DURATIONS_MS),
               "lockoutMs": rng.choice(DURATIONS_MS)}
    chosen = {key: value for key, value in written.items() if rng.random() < 0.85}
    if window is not None:
        chosen.pop("windowMs", None)
        chosen.update(window)
    return chosen


def sequences(*, fixed_window: bool, count: int = 250, length: int = 40,
              attempts: list[float] = MAX_ATTEMPTS) -> list[dict[str, Any]]:
    """Each with its own starting limits; `exemptLoopback` is fixed per sequence (flipping it is
    the one change the sidecar applies to new failures only: see README)."""
    rng = random.Random(13 + fixed_window)
    cases: list[dict[str, Any]] = []
    for _ in range(count):
        exempt = rng.random() < 0.5
        window = (rng.choice([{}, {"windowMs": rng.choice(DURATIONS_MS)}]) if fixed_window else None)
        ops: list[list[Any]] = []
        for _ in range(length):
            kind = rng.choices(["check", "fail", "reset", "wait", "update"], [8, 8, 1, 3, 1])[0]
            if kind in ("check", "fail", "reset"):
                ops.append([kind, rng.choice(CLIENTS)])
            elif kind == "wait":
                ops.append([kind, rng.choice(STEPS_MS)])
            else:
                ops.append([kind, {**limits(rng, window, attempts), "exemptLoopback": exempt}])
        cases.append({"initial": {**limits(rng, window, attempts), "exemptLoopback": exempt}, "ops": ops})
    return cases


def gateway_verdicts(cases: list[dict[str, Any]]) -> list[list[list[Any]]]:
    """[allowed, Retry-After seconds] for each check, as the gateway's HTTP answer gives them. Its
    prune timer fires as the clock passes each minute from the limiter's creation."""
    return call_gateway(["createAuthRateLimiter"], f"""
        let now = 0;
        Date.now = () => now;
        answer(input.map(({{ initial, ops }}) => {{
          now = {START_MS};
          let prune = now + {PRUNE_INTERVAL_MS};
          const limiter = gateway.createAuthRateLimiter(initial);
          const verdicts = [];
          for (const [kind, arg] of ops) {{
            if (kind === "check") {{
              const v = limiter.check(arg, "shared-secret");
              verdicts.push([v.allowed, v.allowed || v.retryAfterMs <= 0 ? 0 : Math.ceil(v.retryAfterMs / 1000)]);
            }} else if (kind === "fail") limiter.recordFailure(arg, "shared-secret");
            else if (kind === "reset") limiter.reset(arg, "shared-secret");
            else if (kind === "wait") {{
              const until = now + arg;
              for (; prune <= until; prune += {PRUNE_INTERVAL_MS}) {{ now = prune; limiter.prune(); }}
              now = until;
            }}
            else limiter.updateConfig(arg);
          }}
          limiter.dispose();
          return verdicts;
        }}));""", cases)


async def sidecar_verdicts(case: dict[str, Any], storage_uri: str) -> list[list[Any]]:
    now_ms = START_MS
    limiter = AuthFailureLimiter(**AuthRateLimitConfig.model_validate(case["initial"]).model_dump(),
                                 storage_uri=storage_uri, clock=lambda: now_ms / 1000)
    verdicts: list[list[Any]] = []
    try:
        for kind, arg in case["ops"]:
            if kind == "check":
                verdict = await limiter.check(arg)
                verdicts.append([verdict.allowed, 0 if verdict.allowed else verdict.retry_after_s])
            elif kind == "fail":
                await limiter.record_failure(arg)
            elif kind == "reset":
                await limiter.reset(arg)
            elif kind == "wait":
                now_ms += arg
            else:
                limiter.apply_limits(**AuthRateLimitConfig.model_validate(arg).model_dump())
    finally:
        await limiter.aclose()
    return verdicts


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def empty_storage(request: pytest.FixtureRequest) -> Callable[[], str]:
    """The URI of a storage holding nothing, once per case."""
    if request.param == "memory":
        return lambda: "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")

    def emptied() -> str:
        server.flushall()
        return server.url
    return emptied


async def compared(cases: list[dict[str, Any]], empty_storage: Callable[[], str]) -> list[tuple[list[Any], list[Any]]]:
    """(sidecar, gateway) verdicts of every check of every case."""
    pairs: list[tuple[list[Any], list[Any]]] = []
    for case, theirs in zip(cases, gateway_verdicts(cases)):
        pairs.extend(zip(await sidecar_verdicts(case, empty_storage()), theirs, strict=True))
    return pairs


async def test_verdicts_match_the_gateways_limiter_through_live_changes(empty_storage: Callable[[], str]) -> None:
    """Exactly, while the window stays: counts, lockouts and their ends, Retry-After, the
    one refusal a lockout of 0 gives, through changes of maxAttempts and lockoutMs."""
    cases = sequences(fixed_window=True)
    pairs = await compared(cases, empty_storage)
    differ = [pair for pair in pairs if pair[0] != pair[1]]
    assert differ == [], f"{len(differ)} of {len(pairs)} checks differ (sidecar, gateway): {differ[:5]}"
    refused = [theirs for _, theirs in pairs if not theirs[0]]
    assert len(refused) >= 200 and {retry for _, retry in refused} >= {0, 1, 5, 300}
    assert sum(1 for case in cases for kind, _ in case["ops"] if kind == "update") >= 100


async def test_a_changed_window_counts_nearly_as_the_gateway_does(empty_storage: Callable[[], str]) -> None:
    """The gateway forgets the failures that left the window each time it looks at a client (and
    every minute), so a window narrowed and then widened again counts fewer of them there than
    here, where each failure's time is kept for the window it was recorded under: the sidecar may
    refuse first. Once such an early lockout ends, its client's history is gone here and not at
    the gateway, which may then refuse first. Both are rare (a window not applied at all lets
    through about 1% of the checks the gateway refuses)."""
    pairs = await compared(sequences(fixed_window=False), empty_storage)
    laxer = [pair for pair in pairs if pair[0][0] and not pair[1][0]]
    assert len(laxer) <= 0.001 * len(pairs), f"{len(laxer)} of {len(pairs)} checks let through (sidecar, gateway): {laxer[:5]}"
    assert sum(1 for mine, theirs in pairs if mine == theirs) >= 0.99 * len(pairs)


async def test_no_attempts_allowed_never_lets_through_what_the_gateway_refuses(empty_storage: Callable[[], str]) -> None:
    """maxAttempts 0 or less: the first failure locks, and the gateway locks the client again at
    every check while it holds it, which its minute's prune lets go of once a lockout has ended
    unchecked. The sidecar holds it a whole minute after each lockout's end (RELOCK_MS): it may
    refuse a check the gateway would have let through after an early prune, never the other way
    (mutation testing: a lockout of 0 that did not mark the client to lock again survived)."""
    cases = sequences(fixed_window=True, attempts=NO_ATTEMPTS)
    pairs = await compared(cases, empty_storage)
    laxer = [pair for pair in pairs if pair[0][0] and not pair[1][0]]
    assert laxer == [], f"{len(laxer)} of {len(pairs)} checks let through (sidecar, gateway): {laxer[:5]}"
    assert sum(1 for mine, theirs in pairs if mine == theirs) >= 0.95 * len(pairs)
    assert sum(1 for _, theirs in pairs if not theirs[0]) >= 500


def test_durations_are_read_as_the_gateways_timer_clamps_them() -> None:
    """resolveTimerTimeoutMs(value, default, 0): floored, from 0 to its timer ceiling (2147e6, not 2**31 - 1)."""
    values = [-5, 0, 1.5, 2_146_999_999.9, 2_147_000_000, 2_147_000_001, 2_147_483_647, 1e12, 1e300]
    theirs = call_gateway(["number-coercion-:resolveTimerTimeoutMs"],
                          "answer(input.map((value) => gateway.resolveTimerTimeoutMs(value, 60000, 0)));", values)
    assert [AuthRateLimitConfig(windowMs=value).window_ms for value in values] == theirs
    assert [AuthRateLimitConfig(lockoutMs=value).lockout_ms for value in values] == theirs
