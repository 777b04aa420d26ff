"""Every place the sidecar relies on `limits`' private internals, in one module.

`limits` is pinned below 6; tests/unit/test_compat.py pins each assumption made here (the
memory storage's `storage`, `expirations` and `locks` mappings and its `get` expiring a key; the
redis-py bridge's `get` reading one prefixed key from its read connection).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.aio.storage.redis.redispy import RedispyBridge


class SweepThrottledMemoryStorage(MemoryStorage):
    """`limits`' async MemoryStorage with its expiry sweep throttled.

    Upstream schedules a task scanning *every* key after each ``incr``: with 10 000
    tracked clients that is milliseconds of event-loop CPU per failed login, which a
    spray of addresses turns into a denial of service.  Here keys still expire lazily
    when read (upstream ``get``), and the full sweep runs at most every `sweep_interval_s` (wall clock:
    it is garbage collection only, never a limiting decision).
    """

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *, sweep_interval_s: float,
                 **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.sweep_interval_s = sweep_interval_s
        self._next_sweep = time.time() + sweep_interval_s

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        await self.get(key)  # drops the key when it has expired
        self._maybe_sweep()
        async with self.locks[key]:
            self.storage[key] += amount
            if self.storage[key] == amount:
                self.expirations[key] = time.time() + expiry
        return self.storage.get(key, amount)

    def _maybe_sweep(self) -> None:
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        for key, expires in list(self.expirations.items()):
            if expires <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)


async def get_many(storage: Storage, keys: Sequence[str]) -> list[int]:
    """`storage.get` of several counters, in one round trip on Redis (MGET of the keys the
    redis-py bridge's `get` reads one at a time; on a cluster the keys must share a hash tag),
    failures raised as `get` raises them (StorageError when the storage wraps its errors)."""
    bridge = getattr(storage, "bridge", None)
    if not isinstance(bridge, RedispyBridge):
        return [await storage.get(key) for key in keys]
    client: Any = bridge.get_connection(readonly=True)  # a redis.asyncio client; limits types it narrower
    try:
        values = await client.mget([bridge.prefixed_key(key) for key in keys])
    except storage.base_exceptions as exc:  # as the storage's own methods report a Redis failure
        if storage.wrap_exceptions:
            raise StorageError(exc) from exc
        raise
    return [int(value or 0) for value in values]
