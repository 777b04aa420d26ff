"""One-shot timers by key, swept by one loop callback instead of a loop timer each.

Every request arms and cancels two or three deadlines (next head, body, upstream answer), and
nearly all of them are cancelled long before they would fire. `loop.call_later` builds a
TimerHandle (with a context copy) and pushes it on the loop's heap for each one, and cancelled
handles stay on the heap until swept; here arming is a dict insert and cancelling a dict pop.

Deadlines of one duration expire in the order they were armed, so each duration keeps an
insertion-ordered dict and a sweep stops at its first entry still in the future. A deadline
fires at most `tick` seconds late. The sweep runs only while something is armed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable

from sidecar.metrics import INTERNAL_ERRORS

log = logging.getLogger("sidecar.adapter")

TICK_SECONDS = 0.1


class Deadlines:
    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._by_duration: dict[float, dict[Hashable, tuple[float, Callable[[], object]]]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(map(len, self._by_duration.values()))

    def arm(self, key: Hashable, seconds: float, action: Callable[[], object]) -> None:
        """Run `action` once `seconds` have passed, unless cancelled or re-armed first (a key
        holds one deadline: arming replaces it)."""
        self.cancel(key)
        loop = asyncio.get_running_loop()
        queue = self._by_duration.get(seconds)
        if queue is None:
            queue = self._by_duration[seconds] = {}
        queue[key] = (loop.time() + seconds, action)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self.tick, self._sweep)

    def cancel(self, key: Hashable) -> None:
        for queue in self._by_duration.values():
            queue.pop(key, None)

    def fire_earliest(self) -> Hashable | None:
        """Run, now, the action whose deadline is nearest; returns its key (None: none armed).
        Making room under a cap: that one would be gone soonest anyway."""
        queue = min((queue for queue in self._by_duration.values() if queue),
                    key=lambda queue: next(iter(queue.values()))[0], default=None)
        if queue is None:
            return None
        key = next(iter(queue))
        _, action = queue.pop(key)
        self._run(action)
        return key

    def clear(self) -> None:
        self._by_duration.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    @staticmethod
    def _run(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            INTERNAL_ERRORS.inc()
            log.exception("internal error in a deadline action")

    def _sweep(self) -> None:
        self._sweep_handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due: list[Callable[[], object]] = []
        for queue in self._by_duration.values():
            expired = []
            for key, (deadline, action) in queue.items():
                if deadline > now:
                    break
                expired.append(key)
                due.append(action)
            for key in expired:
                del queue[key]
        for action in due:  # after the sweep: an action may arm or cancel deadlines
            self._run(action)
        if self._sweep_handle is None and any(self._by_duration.values()):
            self._sweep_handle = loop.call_later(self.tick, self._sweep)
