"""Coroutines started by hand: run synchronously as far as they go, and handed to the event loop
only when they really wait. A coroutine that never waits then costs no task, no future and no
extra turn of the loop (mitmproxy hooks, WebSocket frame judgements)."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


@types.coroutine
def resume(coro: Coroutine[Any, Any, T], awaiting: Any) -> Generator[Any, Any, T]:
    """Run the rest of a coroutine that was started by hand and suspended on `awaiting`."""
    while True:
        try:
            sent = yield awaiting
        except BaseException as exc:  # cancellation included: passed on into the coroutine
            try:
                awaiting = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                awaiting = coro.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
