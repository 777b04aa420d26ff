"""sidecar/pacing.py: refusals in a row are answered ever later; a call let through clears it."""

from __future__ import annotations

import pytest

from sidecar.pacing import RefusalBudget, RefusalPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pacer(clock: Clock, **overrides: int) -> RefusalPacer:
    settings = {"after_refusals": 3, "base_delay_ms": 50, "max_delay_ms": 400, "max_clients": 100, **overrides}
    return RefusalPacer(clock=clock, **settings)


def test_delays_double_after_the_free_refusals_up_to_the_cap() -> None:
    p = pacer(Clock())
    assert [p.refused("a") for _ in range(8)] == [0, 0, 0, 0.05, 0.1, 0.2, 0.4, 0.4]


def test_clients_are_paced_apart() -> None:
    p = pacer(Clock())
    for _ in range(5):
        p.refused("flood")
    assert p.refused("other") == 0
    assert p.refused("flood") > 0


def test_a_call_let_through_clears_the_streak() -> None:
    p = pacer(Clock())
    for _ in range(5):
        p.refused("a")
    p.let_through("a")
    assert p.refused("a") == 0


def test_a_streak_fades_after_a_quiet_minute_and_starts_over() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(5):
        p.refused("a")
    clock.now += 60.5
    assert [p.refused("a") for _ in range(4)] == [0, 0, 0, 0.05]


def test_a_streak_lasts_through_a_pause_of_exactly_a_minute() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(3):
        p.refused("a")
    clock.now += 60
    assert p.refused("a") == 0.05


@pytest.mark.parametrize(("first", "second", "one_client"), [
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),
    ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
    ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", False),  # tailnet nodes, each one address
    ("192.0.2.1", "192.0.2.2", False),
])
def test_an_ipv6_64_is_one_client(first: str, second: str, one_client: bool) -> None:
    """One IPv6 host holds a whole /64, as every other per-client count has it: keyed by address,
    a fresh source address for each refusal was never paced."""
    p = pacer(Clock())
    for _ in range(3):
        p.refused(first)
    assert p.refused(second) == (0.05 if one_client else 0)
    p.let_through(second)
    assert p.refused(first) == (0 if one_client else 0.05)


def test_a_refusal_budget_refills_at_its_rate_up_to_its_burst_and_no_more() -> None:
    """Mutation testing: a budget that kept filling while idle, or that counted the refill from
    its creation at every spend, survived."""
    clock = Clock()
    budget = RefusalBudget(burst=2, per_second=2, clock=clock)
    assert [budget.spend() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert [budget.spend() for _ in range(2)] == [True, False]
    clock.now += 100  # idle: full again, but only to its burst
    assert [budget.spend() for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize("overrides", [{"base_delay_ms": 0}, {"max_delay_ms": 0}])
def test_zero_turns_pacing_off(overrides: dict[str, int]) -> None:
    p = pacer(Clock(), **overrides)
    assert max(p.refused("a") for _ in range(20)) == 0


def test_pacing_turned_off_keeps_no_streaks_and_one_millisecond_is_on() -> None:
    """`baseDelayMs: 0` is off: the table would hold `max_clients` streaks for nothing."""
    off, on = pacer(Clock(), base_delay_ms=0), pacer(Clock(), base_delay_ms=1)
    assert [off.refused("a") for _ in range(5)] == [0] * 5 and len(off) == 0
    assert [on.refused("a") for _ in range(5)] == [0, 0, 0, 0.001, 0.002]


def test_the_table_is_bounded_oldest_first() -> None:
    p = pacer(Clock(), max_clients=2)
    for client in ("a", "a", "a", "a", "b", "c"):
        p.refused(client)
    assert len(p) == 2
    assert p.refused("a") == 0  # its streak was the least recently refused and went first
