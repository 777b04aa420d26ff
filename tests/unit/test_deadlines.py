"""addons/deadlines.py: keyed one-shot timers swept by one loop callback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from addons.deadlines import Deadlines
from sidecar.metrics import INTERNAL_ERRORS

TICK = 0.01


async def settle(deadlines: Deadlines) -> None:
    """Until every armed deadline has fired and the sweep has stopped."""
    while deadlines._sweep_handle is not None:
        await asyncio.sleep(TICK)


async def test_deadlines_fire_once_in_order_and_the_sweep_stops_when_none_are_left() -> None:
    deadlines = Deadlines(tick=TICK)
    fired: list[str] = []
    deadlines.arm("late", 0.05, lambda: fired.append("late"))
    deadlines.arm("early", 0.02, lambda: fired.append("early"))
    assert len(deadlines) == 2 and deadlines._sweep_handle is not None
    await settle(deadlines)
    assert fired == ["early", "late"]
    assert len(deadlines) == 0


async def test_cancelled_and_rearmed_deadlines() -> None:
    deadlines = Deadlines(tick=TICK)
    fired: list[str] = []
    deadlines.arm("cancelled", 0.02, lambda: fired.append("cancelled"))
    deadlines.arm("rearmed", 0.02, lambda: fired.append("first"))
    deadlines.arm("rearmed", 0.04, lambda: fired.append("second"))  # one deadline per key: replaced
    deadlines.cancel("cancelled")
    deadlines.cancel("never armed")
    await settle(deadlines)
    assert fired == ["second"]


async def test_an_action_may_arm_another_and_a_failing_one_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """The failure is counted and logged with its traceback, where the adapter's own errors go."""
    deadlines = Deadlines(tick=TICK)
    fired: list[str] = []
    before = INTERNAL_ERRORS._value.get()

    def boom() -> None:
        raise RuntimeError("boom")

    deadlines.arm("a", 0.02, boom)
    deadlines.arm("b", 0.02, lambda: deadlines.arm("c", 0.02, lambda: fired.append("c")))
    await settle(deadlines)
    assert fired == ["c"]
    assert INTERNAL_ERRORS._value.get() == before + 1
    assert [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in caplog.records] == [
        ("sidecar.adapter", "internal error in a deadline action", RuntimeError)]


async def test_clear_drops_everything() -> None:
    deadlines = Deadlines(tick=TICK)
    fired: list[str] = []
    deadlines.arm("a", 0.02, lambda: fired.append("a"))
    deadlines.clear()
    await asyncio.sleep(0.05)
    assert fired == [] and len(deadlines) == 0 and deadlines._sweep_handle is None


async def test_one_sweep_waits_on_the_loop_however_deadlines_are_armed_cleared_and_rearmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's point: one loop timer, never one per deadline (each left behind would sweep
    on for as long as anything is armed), waiting its tick (a sweep due at once spins the loop).
    clear() stops it, and the next deadline armed starts another (a loop's sweep left behind
    would never run on the next loop, and nothing armed there would ever fire)."""
    loop = asyncio.get_running_loop()
    sweeps: list[tuple[float, asyncio.TimerHandle]] = []
    call_later = loop.call_later

    def recording(delay: float, callback: Callable[..., object], *args: object) -> asyncio.TimerHandle:
        handle = call_later(delay, callback, *args)
        sweeps.append((delay, handle))
        return handle

    monkeypatch.setattr(loop, "call_later", recording)
    deadlines = Deadlines()  # the default tick
    fired: list[str] = []
    deadlines.arm("a", 5.0, lambda: fired.append("a"))
    deadlines.arm("b", 1.0, lambda: fired.append("b"))
    deadlines.arm("a", 5.0, lambda: fired.append("a, rearmed"))
    deadlines.clear()
    deadlines.arm("c", 0.0, lambda: fired.append("c"))
    deadlines.arm("d", 0.0, lambda: fired.append("d"))
    assert [handle.cancelled() for _, handle in sweeps] == [True, False]
    assert all(delay > 0 for delay, _ in sweeps)
    await settle(deadlines)
    assert fired == ["c", "d"]


async def test_fire_earliest_runs_the_nearest_deadline_now_whatever_its_duration() -> None:
    """What makes room under the connection cap: the one that would be gone soonest anyway."""
    deadlines = Deadlines(tick=TICK)
    fired: list[str] = []
    deadlines.arm("long, armed first", 5.0, lambda: fired.append("long"))
    deadlines.arm("short, armed second", 1.0, lambda: fired.append("short"))
    deadlines.arm("short, armed third", 1.0, lambda: fired.append("short, later"))
    assert deadlines.fire_earliest() == "short, armed second"
    assert deadlines.fire_earliest() == "short, armed third"
    assert deadlines.fire_earliest() == "long, armed first"
    assert fired == ["short", "short, later", "long"]
    assert deadlines.fire_earliest() is None and len(deadlines) == 0
    deadlines.clear()
