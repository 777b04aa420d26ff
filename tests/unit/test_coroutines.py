"""addons/coroutines.py: a coroutine started by hand (run synchronously until it first waits, as
the adapter runs hooks and frame judgements) is finished by `resume` on the event loop, with its
value, its exceptions, and a cancellation of whoever waits for it passed into it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from addons.coroutines import resume


def started_by_hand(coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """The adapter's way: the coroutine's synchronous part runs now; a task finishes the rest."""
    awaiting = coro.send(None)

    async def rest() -> Any:
        return await resume(coro, awaiting)

    return asyncio.ensure_future(rest())


async def test_the_rest_runs_on_the_loop_through_every_wait_and_gives_the_value() -> None:
    first, second = asyncio.Future[int](), asyncio.Future[int]()
    steps: list[str] = []

    async def judge() -> int:
        steps.append("sync part")
        value = await first
        steps.append("after the first wait")
        return value + await second

    task = started_by_hand(judge())
    assert steps == ["sync part"]
    first.set_result(40)
    await asyncio.sleep(0)
    second.set_result(2)
    assert await task == 42 and steps == ["sync part", "after the first wait"]


async def test_a_cancellation_is_passed_into_the_coroutine_which_may_still_answer() -> None:
    """Whoever waits for the rest is cancelled (a client gone, a shutdown): the coroutine sees the
    CancelledError where it waits, its clean-up runs, and what it returns is the answer."""
    waited = asyncio.Future[str]()
    seen: list[str] = []

    async def judge() -> str:
        try:
            return await waited
        except asyncio.CancelledError:
            seen.append("cancelled where it waited")
            return "tidied"

    task = started_by_hand(judge())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "tidied" and seen == ["cancelled where it waited"]
    assert waited.cancelled()


async def test_a_coroutine_that_lets_the_cancellation_through_is_cancelled_and_cleans_up() -> None:
    cleaned: list[bool] = []

    async def judge() -> None:
        try:
            await asyncio.Future()
        finally:
            cleaned.append(True)

    task = started_by_hand(judge())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_an_exception_thrown_in_may_be_answered_by_another_wait() -> None:
    """After the thrown exception the coroutine may wait again: the rest goes on from there."""
    later = asyncio.Future[str]()

    async def judge() -> str:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            return await later

    task = started_by_hand(judge())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    later.set_result("after the cancel")
    assert await task == "after the cancel"
