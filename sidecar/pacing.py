"""Refusal pacing: a client that keeps being refused waits longer for each next refusal.

A refusal costs the sidecar nearly as much CPU as an allowed call (mitmproxy's per-request work
dominates), so a flood of refused requests on keep-alive connections would take the one event
loop from everyone else's allowed calls. After `after_refusals` refusals in a row, a client's
refusals are answered after a delay that doubles from `base_delay_ms` up to `max_delay_ms`: its
connection waits idle, costing nothing, while other clients are served. Any call of the client's
the sidecar authenticated and let through clears its streak (a public one, which anyone may make
between refusals, does not), and a streak fades after a quiet minute. A client is an address, an
IPv6 one's /64 as one, as in every per-client count (sidecar/ipaddrs.py share_key): one host holds
a whole /64, and by address each fresh source started a fresh streak, never paced.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .ipaddrs import share_key

QUIET_SECONDS = 60.0


class RefusalPacer:
    def __init__(self, *, after_refusals: int, base_delay_ms: int, max_delay_ms: int, max_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after_refusals = after_refusals
        self.base_delay_ms = base_delay_ms
        self.max_delay_ms = max_delay_ms
        self.max_clients = max_clients
        self._clock = clock
        # client → (refusals in a row, time of the last one); least recently refused first
        self._streaks: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def refused(self, client: str) -> float:
        """Count a refusal; returns the seconds to wait before answering it."""
        if self.base_delay_ms <= 0:
            return 0.0
        now = self._clock()
        client = share_key(client)
        count, last = self._streaks.pop(client, (0, now))
        count = 1 if now - last > QUIET_SECONDS else count + 1
        self._streaks[client] = (count, now)
        if len(self._streaks) > self.max_clients:
            self._streaks.popitem(last=False)
        excess = count - self.after_refusals
        if excess <= 0:
            return 0.0
        return min(self.base_delay_ms * 2 ** min(excess - 1, 32), self.max_delay_ms) / 1000

    def let_through(self, client: str) -> None:
        self._streaks.pop(share_key(client), None)

    def __len__(self) -> int:
        return len(self._streaks)


class RefusalBudget:
    """The refused frames one RPC connection may collect: `burst` at once, given back at
    `per_second`. Frames the gateway would act on never spend it, and never give it back either,
    so allowed frames between refused ones do not reset it. A WebSocket client is not slowed by
    making it wait (mitmproxy reads on, and queues what it reads): past the budget it is closed."""

    def __init__(self, burst: float, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._tokens = burst
        self._since = clock()

    def spend(self) -> bool:
        """One refusal; False when the budget is spent."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._since) * self.per_second)
        self._since = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
