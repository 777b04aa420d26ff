"""Rate limiting: the upstream auth-failure limiter, reproduced, plus an optional request limiter.

Why the sidecar needs its own auth-failure limiter
--------------------------------------------------
Behind the sidecar every request reaches the OpenClaw Gateway from loopback, and the
gateway exempts loopback from its auth-failure limiter, so the sidecar must enforce what
OpenClaw 2026.9.6 enforces per real client (`AuthFailureLimiter`):

* key ``"shared-secret:<normalized ip>"`` (``::ffff:1.2.3.4`` is ``1.2.3.4``; a missing or
  unparseable address is ``"unknown"``);
* ``check()`` runs *before* the credential comparison (the sidecar may compare first: the
  outcome of a locked client's comparison is never told); a locked key is refused (429 with
  ``retry_after_s = ceil(remaining lockout)``) whatever credential it carries; when a
  lockout has expired the key's failure history is cleared;
* ``record_failure()`` (mismatched credential only) keeps a sliding window of failure
  times: failures at or before ``now - window`` are dropped, ``now`` is added, and when
  the count reaches ``max_attempts`` the key is locked until ``now + lockout``.  That
  request still gets its 401, the next one the 429.  Failures during a lockout are not
  recorded and never extend it;
* ``reset()`` (successful auth) clears the key;
* ``updateConfig()`` (a reload of ``gateway.auth.rateLimit``) changes the limits at once:
  failures and lockouts on record stay and are judged by the new limits, and ``check()``
  locks a key whose window already holds the (lowered) ``max_attempts``.  A lockout of 0
  ends at once and takes the key's history with it (that one check is refused, with no
  ``Retry-After``). ``max_attempts`` 0 (upstream: anything up to 0) locks at the first failure
  and locks again at each check within ``RELOCK_MS`` of the last lockout's end or of the last
  failure leaving the window, where upstream's check locks any client its minute's prune has
  not dropped yet (so an ended lockout's end is kept, and every key lives that minute longer);
* loopback clients (with ``exempt_loopback``) are never locked; each failure instead
  returns a delay for the 401: ``min(base * 2**(n-1), cap)`` with ``n`` the recent
  failures (history capped at 6): 0.25, 0.5, 1, 2, 4, 5, 5 ... seconds by default.

How it is stored (and why not a `limits` strategy)
--------------------------------------------------
State lives in a `limits` async storage (``memory://`` or Redis via
``storage_from_string("async+...", wrap_exceptions=True)``), so a Redis shared by
several replicas gives each client ONE budget.  But `limits`' strategies read the wall
clock inside the storage (``time.time()`` in ``MemoryStorage`` and in the Redis bridge),
they cannot lock out, and the upstream window is an exact log, not an approximation.  So
the algorithm is built on the storage's atomic primitives (``incr``/``get``/``clear``),
with every *decision* taken on values computed from the injected ``clock``:

* ``authfail/{<key>}/seq``   - failure sequence number (``incr`` is atomic across replicas);
* ``authfail/{<key>}/t/<n>`` - the time (ms, from our clock) of failure ``n``; written by
  ``incr`` on a fresh key, i.e. an atomic set; only the last ``ring`` are kept;
* ``authfail/{<key>}/lock``  - ``lockedUntil`` in ms from our clock.

"Count in window >= max_attempts" is equivalent to "failure ``seq - max_attempts + 1``
happened after ``now - window``", so recording a failure reads one timestamp, not a list.
Storage TTLs (wall clock, set by `limits` on key creation) are only garbage collection:
they are always longer than the window/lockout they back, so with ``clock=time.time`` they
never fire before our own comparison would have, and in tests - where the injected clock
jumps minutes ahead in microseconds - they never fire at all.

Memory bounds
-------------
For ``memory://`` (and for the per-replica fallback and the loopback history) at most
``max_entries`` clients are tracked: a new failing client first evicts the least recently
failing *unlocked* client; locked clients are never evicted; when every slot holds a live
lockout a global overflow lock is set for ``lockout``, during which ``check()`` refuses
any client that is not already tracked (tracked clients behave normally).  For Redis
``max_entries`` does not apply: every key carries a TTL, so Redis holds only clients that
failed within about one window/lockout, and its own ``maxmemory`` policy is the bound.

Loopback failure history is always kept per replica in memory: a loopback client is a
process on the same host as that replica, so sharing "127.0.0.1" across hosts would mix
unrelated clients (and it costs no Redis round trip).  With ``exempt_loopback=False``
loopback is an ordinary key in the shared storage.

Storage outages
---------------
Storage errors never escape ``check``/``record_failure``/``reset``/``hit``.  On a
``StorageError`` the limiter logs ONE warning per outage (logger ``sidecar.ratelimit``),
increments ``RATELIMIT_STORAGE_FALLBACKS`` once per outage and ``RATELIMIT_STORAGE_ERRORS``
for every failed operation, and serves from a fresh per-replica in-memory limiter with the
same semantics; or, with ``fail_closed=True``, answers ``LimitVerdict.unavailable`` (the
caller sends 503).  While degraded the shared storage is probed with a write (``incr`` of a
key of its own: a replica left behind by a failover, or a full ``noeviction`` Redis, answers
PING and reads and refuses every write) at most every ``probe_interval_s`` (on the injected
clock); on success the limiter logs the recovery once and goes back to the shared storage (the
fallback state is dropped).

An outage never ends a lockout early. The auth-failure limiter notes the lockouts it sees on the
shared storage (bounded by ``max_entries``); on the fallback a client noted as locked stays
refused until its lockout's end, and on recovery the lockouts still running, noted before the
outage or set on the fallback during it, are written to the shared storage before the fallback is
dropped (a Redis that came back empty has lost its own). The request limiter's windows are not
carried: an outage may give a client a fresh window of allowed calls, never a fresh run of guesses.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import limits
from limits.aio.storage import Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from sidecar.identities import person_key
from sidecar.ipaddrs import is_loopback, normalize_ip, share_key
from sidecar.limits_compat import SweepThrottledMemoryStorage, get_many
from sidecar.metrics import RATELIMIT_STORAGE_ERRORS, RATELIMIT_STORAGE_FALLBACKS
from sidecar.storage_uri import SUPPORTED_STORAGE_SCHEMES, async_storage_uri, redact_uri  # re-exported

__all__ = [
    "SUPPORTED_STORAGE_SCHEMES",
    "AuthFailureLimiter",
    "ClientTurns",
    "LimitVerdict",
    "RequestRateLimiter",
    "async_storage_uri",
    "auth_key",
    "redact_uri",
]

log = logging.getLogger("sidecar.ratelimit")

Clock = Callable[[], float]

REDIS_KEY_PREFIX: Final = "openclaw-sidecar"
AUTH_SCOPE: Final = "shared-secret"
LOOPBACK_HISTORY_CAP: Final = 6
BROWSER_ORIGIN_SUBJECT: Final = "browser-origin:"
# A client's guesses at the sidecar's upstream secret, signed by a device in a connect frame: a
# count of their own, which no success with the sidecar's own secret clears, never exempt.
UPSTREAM_GUESS_SUBJECT: Final = "upstream-guess:"
RELOCK_MS: Final = 60_000  # the gateway's prune interval: how long after a lockout it may still hold a client
DEFAULT_STORAGE_TIMEOUT_S: Final = 0.5
DEFAULT_PROBE_INTERVAL_S: Final = 1.0
# A storage is back when it takes a write: PING and reads succeed on a read-only one (red team).
PROBE_KEY: Final = "openclaw-sidecar/probe"
PROBE_EXPIRY_S: Final = 10
_SEQ_TTL_MIN_S: Final = 86_400
CARRY_BACK_BATCH: Final = 100  # lockouts written back to a recovered storage at once
_MEMORY_SWEEP_INTERVAL_S: Final = 10.0


@dataclass(frozen=True)
class LimitVerdict:
    """Outcome of `AuthFailureLimiter.check` / `RequestRateLimiter.hit`.

    ``allowed`` False with ``unavailable`` False: 429 with ``Retry-After: retry_after_s``.
    ``unavailable`` True: the shared storage is down and the limiter is fail-closed (503).
    """

    allowed: bool
    retry_after_s: int = 0
    unavailable: bool = False
    # check: the client had no failure on record, so a success right after has nothing to reset
    # (on Redis that saves the reset's round trip on nearly every authenticated call). A hint
    # about the work left, not part of the verdict: equal verdicts may differ in it.
    no_failures: bool = field(default=False, compare=False)


ALLOWED: Final = LimitVerdict(True)
ALLOWED_WITHOUT_FAILURES: Final = LimitVerdict(True, no_failures=True)
UNAVAILABLE: Final = LimitVerdict(False, unavailable=True)


# --------------------------------------------------------------------------- storage


def _make_storage(uri: str, timeout_s: float, options: Mapping[str, Any] | None) -> tuple[Storage, bool]:
    """Build the `limits` storage for ``uri``; returns (storage, is_shared). ValueError if invalid."""
    async_uri = async_storage_uri(uri)
    if async_uri.startswith("async+memory://"):
        return _memory_storage(), False
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # redis-py's default retry (3 tries with exponential backoff up to 10 s) would stall
    # every request during an outage; one immediate retry still replaces a stale
    # pooled connection after a Redis restart.
    opts: dict[str, Any] = {
        "implementation": "redispy",
        "key_prefix": REDIS_KEY_PREFIX,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if async_uri.startswith("async+redis+sentinel://"):
        # limits hands the Sentinels its own kwargs (the password alone), so redis-py's default
        # retries with backoff applied there: the first request of an outage waited ~30 s.
        opts["sentinel_kwargs"] = {key: opts[key] for key in ("socket_timeout", "socket_connect_timeout", "retry")}
    opts.update(options or {})
    try:
        storage = storage_from_string(async_uri, wrap_exceptions=True, **opts)
    except Exception as exc:  # ConfigurationError, bad host/port, missing service name ...
        # The parsers' own words quote pieces of the URI, and a URI with a user part can be cut
        # anywhere in its password (a '/' there ends the host early): then they are withheld.
        detail = str(exc) if "@" not in uri else "the URI has a user part, so the parser's message is withheld; " \
            "check its form, or keep the password in storagePasswordFile"
        # `from None`: the original exception's text may carry the password
        raise ValueError(f"invalid rate-limit storage URI {redact_uri(uri)!r}: {detail}") from None
    if not isinstance(storage, Storage):  # pragma: no cover - async+ schemes give async storages
        raise ValueError(f"rate-limit storage URI {redact_uri(uri)!r} did not give an async storage")
    _build_one_connection(storage, uri)
    return storage, True


def _build_one_connection(storage: Storage, uri: str) -> None:
    """redis-py hands a URI's query arguments to each connection it opens, so an unknown one
    (`?ssl=true`) failed every request as a storage outage: build one connection object now (no
    I/O) and let redis-py itself refuse it at start-up."""
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "connection_class"):  # a cluster client checks its own
        return
    try:
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:  # names the argument, never its value
        raise ValueError(f"invalid rate-limit storage URI {redact_uri(uri)!r}: {exc}") from None


def _memory_storage() -> Storage:
    return SweepThrottledMemoryStorage(wrap_exceptions=True, sweep_interval_s=_MEMORY_SWEEP_INTERVAL_S)


async def _close_storage(storage: Storage) -> None:
    """Release a storage's connections (Redis) or its expiry task (memory); never raises."""
    try:
        bridge = getattr(storage, "bridge", None)
        seen: set[int] = set()
        for attr in ("storage", "storage_replica"):
            client = getattr(bridge, attr, None) if bridge is not None else None
            if client is not None and id(client) not in seen and hasattr(client, "aclose"):
                seen.add(id(client))
                await client.aclose()
        timer = getattr(storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
    except Exception:  # pragma: no cover - best effort at shutdown
        log.debug("error while closing rate-limit storage", exc_info=True)


def client_share(ip: str | None) -> str:
    """Whose count a client address spends: the normalized address, an IPv6 one's /64 (the gateway
    counts each address: one IPv6 host holds a whole /64, and filled the limiter's table alone,
    locking every new client out; red team), or 'unknown'."""
    normalized = normalize_ip(ip)
    return share_key(normalized) if normalized else "unknown"


def auth_key(ip: str | None) -> str:
    """The limiter key of a client address: ``shared-secret:<client_share>``; a browser origin's
    subject (``browser-origin:...``) passes as it is, as upstream passes it, and so does a client's
    upstream-guess subject."""
    if ip is not None and ip.startswith((BROWSER_ORIGIN_SUBJECT, UPSTREAM_GUESS_SUBJECT)):
        return f"{AUTH_SCOPE}:{ip}"
    return f"{AUTH_SCOPE}:{client_share(ip)}"


class ClientTurns:
    """One failed credential check at a time per client, in this replica, and no success
    overtaking one in flight.

    Upstream checks the lock, compares and records the failure in one event-loop turn. Here a
    shared storage's round trips suspend between those steps, so without turns a burst of
    concurrent guesses would all pass the lock check before the first failure is counted (200
    answered guesses where `maxAttempts` allows 3). Replicas sharing Redis still interleave: a
    burst spread over R replicas can get at most R - 1 answers past the limit. Only clients with
    a check in flight hold an entry.
    """

    def __init__(self) -> None:
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def turn(self, ip: str | None) -> AsyncIterator[None]:
        key = auth_key(ip)
        lock, waiting = self._turns.get(key) or self._turns.setdefault(key, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                del self._turns[key]

    def busy(self, ip: str | None) -> bool:
        """A check of this client is in flight: a success must queue behind it too, or it could
        read the lock before the failures ahead of it are counted."""
        return auth_key(ip) in self._turns

    def __len__(self) -> int:
        return len(self._turns)


def _ceil_s(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


# --------------------------------------------------------------------------- failure log


class _FailureLog:
    """Exact sliding log of failure times plus a lock, per client key, on one storage.

    ``max_entries`` (memory storages only) bounds the number of tracked clients; the index
    mirrors which clients have state and which are locked, for eviction decisions.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_attempts: int,
        window_ms: int,
        lockout_ms: int,
        ring: int,
        max_entries: int | None,
    ) -> None:
        self.storage = storage
        self.max_entries = max_entries
        self.set_limits(max_attempts, window_ms, lockout_ms, ring)
        # index (bounded mode only): unlocked clients in least-recently-failed order, locked ones apart
        self._open: OrderedDict[str, None] = OrderedDict()
        self._locked: dict[str, int] = {}
        self.overflow_until = 0

    def set_limits(self, max_attempts: int, window_ms: int, lockout_ms: int, ring: int) -> None:
        """Limits from now on. Failures and lockouts on record stay, judged by the new limits;
        times recorded under a shorter window expire with it, and a larger max_attempts counts
        only the failures the old ring kept."""
        self.max_attempts = max_attempts
        # maxAttempts 0 (anything up to 0 at the gateway): the first failure locks, and the gateway's
        # check locks again a client it still holds, which its minute's prune lets go of.
        self.threshold = max(1, max_attempts)
        self.relock = max_attempts < 1
        self.window_ms = window_ms
        self.lockout_ms = lockout_ms
        self.ring = max(1, ring)
        # The gateway may hold a client until its prune, a minute after its last failure left the
        # window or its lockout ended: what the sidecar knows of it stays that long, for a
        # max_attempts lowered to 0 (which locks any client it holds) to find.
        held = window_ms + RELOCK_MS
        # How long a failure counts at a check: its window, and with max_attempts 0 as long as it is held.
        self._counted_ms = held if self.relock else window_ms
        self._t_ttl = math.ceil(held / 1000) + 2
        self._lock_ttl = math.ceil((lockout_ms + held) / 1000) + 2
        self._seq_ttl = max(_SEQ_TTL_MIN_S, 2 * self._lock_ttl)

    # keys: the {...} hash tag keeps one client's keys on one Redis Cluster slot
    @staticmethod
    def _seq(key: str) -> str:
        return f"authfail/{{{key}}}/seq"

    @staticmethod
    def _lock(key: str) -> str:
        return f"authfail/{{{key}}}/lock"

    @staticmethod
    def _t(key: str, n: int) -> str:
        return f"authfail/{{{key}}}/t/{n}"

    @property
    def bounded(self) -> bool:
        return self.max_entries is not None

    def tracked(self, key: str) -> bool:
        return key in self._open or key in self._locked

    def __len__(self) -> int:
        return len(self._open) + len(self._locked)

    def live_locks(self, now: int) -> dict[str, int]:
        """The lockouts running at `now` (bounded mode: the index knows them), key -> end."""
        return {key: until for key, until in self._locked.items() if until > now}

    def untracked(self, key: str) -> bool:
        """Known without a storage read to have no failures and no lock: in bounded (in-memory)
        mode every key with stored state is in the index, and almost every client is clean."""
        return self.max_entries is not None and key not in self._open and key not in self._locked

    # -- queries -------------------------------------------------------------------------

    async def blocked_for(self, key: str, now: int) -> tuple[int | None, bool]:
        """Milliseconds the key is still refused (None = allowed), and whether it has no failure
        on record; clears an expired lockout. One read: the lock and the sequence together."""
        if self.untracked(key):
            return (self.overflow_until - now if now < self.overflow_until else None), True
        until, seq = await get_many(self.storage, (self._lock(key), self._seq(key)))
        if until:
            if now < until:
                return until - now, False
            if self.relock and now - until < RELOCK_MS:
                return await self.set_lock(key, now + self.lockout_ms, now) - now, False
            if seq:  # lockout over: the history goes with it, its end stays (see set_limits)
                await self.clear(key, seq, keep_tracked=True, keep_lock=True)
            return None, False  # until a success clears it, as the gateway's reset drops its entry
        if seq >= self.threshold and await self._window_full(key, seq, now, recorded_now=False):
            # max_attempts lowered since these failures (to 0: any client the gateway may still
            # hold): the gateway's check locks such a client at once
            return await self._lock_out(key, now), False
        return None, not seq

    # -- updates -------------------------------------------------------------------------

    async def record_locking(self, key: str, now: int) -> int | None:
        """One failure for a lockable key; locks it when the window holds max_attempts and then
        returns the lockout's end."""
        until = await self.storage.get(self._lock(key))
        if until:
            if now < until:
                return None  # failures during a lockout are not recorded and never extend it
            await self.clear(key, keep_tracked=True)
        seq = await self._append(key, now)
        if seq is not None and await self._window_full(key, seq, now, recorded_now=True):
            return now + await self._lock_out(key, now)
        return None

    async def _lock_out(self, key: str, now: int) -> int:
        """Lock the key for lockout_ms; returns the milliseconds left. A lockout of 0 is over at
        once (the gateway's next look takes the history with it), but its lock still marks the
        client as one the gateway holds, which a max_attempts lowered to 0 locks again."""
        return await self.set_lock(key, now + self.lockout_ms, now) - now

    async def _window_full(self, key: str, seq: int, now: int, *, recorded_now: bool) -> bool:
        """The window holds max_attempts failures: failure `seq - max_attempts + 1` is in it.
        One recorded now counts whatever the window (the gateway adds it after dropping the old
        ones); at a check every failure must be younger than the window, none with a window of 0.
        With max_attempts 0 a client counts while the gateway may still hold it: up to its prune
        a minute after the last failure left the window (its check then locks on no failure)."""
        oldest = seq - self.threshold + 1
        if oldest < 1:
            return False
        if oldest == seq and recorded_now:
            return True
        stamp = await self.storage.get(self._t(key, oldest))
        return bool(stamp) and stamp - 1 > now - self._counted_ms

    async def record_counting(self, key: str, now: int) -> int:
        """One failure for a never-locked key; returns the failures in the window (<= ring)."""
        seq = await self._append(key, now)
        if seq is None:
            return 0
        older = range(max(1, seq - self.ring + 1), seq)
        stamps = await asyncio.gather(*(self.storage.get(self._t(key, n)) for n in older))
        cutoff = now - self.window_ms
        return 1 + sum(1 for stamp in stamps if stamp and stamp - 1 > cutoff)

    async def reset(self, key: str) -> None:
        if self.untracked(key):
            return
        await self.clear(key)  # (an ended lockout's end too)

    async def clear(self, key: str, seq: int | None = None, *, keep_tracked: bool = False, keep_lock: bool = False) -> None:
        """Drop the key's failure history and lock.

        ``keep_tracked``: an expired lockout keeps the client in the table as an unlocked,
        empty entry (upstream keeps the map entry), so an overflow lock does not treat it
        as a new client. ``keep_lock``: and the expired lock's end stays with it.
        """
        if seq is None:
            seq = await self.storage.get(self._seq(key))
        stale = [self._t(key, n) for n in range(max(1, seq - self.ring + 1), seq + 1)]
        lock = () if keep_lock else (self._lock(key),)
        await asyncio.gather(*(self.storage.clear(k) for k in (*lock, self._seq(key), *stale)))
        was_tracked = self.tracked(key)
        self._forget(key)
        if keep_tracked and was_tracked:
            self._open[key] = None

    async def _append(self, key: str, now: int) -> int | None:
        """Store failure time ``now``; returns its sequence number, None if refused (overflow)."""
        if self.bounded and not await self._admit(key, now):
            return None
        seq = await self.storage.incr(self._seq(key), self._seq_ttl)
        stamp = now + 1  # +1 so that 0 (a missing key) never looks like a failure time
        slot = self._t(key, seq)
        if await self.storage.incr(slot, self._t_ttl, amount=stamp) != stamp:
            # a leftover from a sequence that expired or was cleared concurrently: overwrite
            await self.storage.clear(slot)
            await self.storage.incr(slot, self._t_ttl, amount=stamp)
        if seq > self.ring:
            await self.storage.clear(self._t(key, seq - self.ring))
        return seq

    async def set_lock(self, key: str, until: int, now: int) -> int:
        """Lock until `until`, or keep another replica's lock; returns the lock's end."""
        value = await self.storage.incr(self._lock(key), self._lock_ttl, amount=until)
        if value != until:
            # another replica locked it a moment ago: undo our add, its lockout stands
            await self.storage.incr(self._lock(key), self._lock_ttl, amount=-until)
            if value - until <= now:  # ... unless that was a stale, expired lock
                await self.storage.clear(self._lock(key))
                await self.storage.incr(self._lock(key), self._lock_ttl, amount=until)
            else:
                until = value - until
        if self.bounded:
            self._open.pop(key, None)
            self._locked[key] = until
        return until

    # -- bounded index -------------------------------------------------------------------

    def _forget(self, key: str) -> None:
        self._open.pop(key, None)
        self._locked.pop(key, None)

    async def _admit(self, key: str, now: int) -> bool:
        """Make room for ``key`` in the index; False (and overflow lock) when none can be made."""
        assert self.max_entries is not None
        if key in self._open:
            self._open.move_to_end(key)
            return True
        if key in self._locked:  # lock expired and cleared concurrently; treat as tracked
            del self._locked[key]
            self._open[key] = None
            return True
        while len(self) >= self.max_entries:
            victim: str | None
            if self._open:
                victim = next(iter(self._open))
            else:
                victim = next((k for k, until in self._locked.items() if until <= now), None)
                if victim is None:
                    if now >= self.overflow_until:
                        self.overflow_until = now + self.lockout_ms
                        log.warning(
                            "auth-failure limiter full: %d clients locked out; refusing new clients for %d s",
                            len(self),
                            _ceil_s(self.lockout_ms),
                        )
                    return False
            await self.clear(victim)
        self._open[key] = None
        return True


# --------------------------------------------------------------------------- outage guard

_C = TypeVar("_C")
_T = TypeVar("_T")


class _Failed:
    """Neither the storage nor a fallback produced an answer."""


_FAILED: Final = _Failed()


def _build_guard(
    what: str, storage_uri: str, storage_timeout_s: float, storage_options: Mapping[str, Any] | None,
    make_primary: Callable[[Storage, bool], _C], make_fallback: Callable[[], tuple[_C, Storage]],
    fail_closed: bool, clock: Clock, probe_interval_s: float,
    carry_back: Callable[[_C | None, _C], Awaitable[None]] | None = None,
) -> "_Guard[_C]":
    """The storage named by the URI, wrapped in the outage policy both limiters share."""
    storage, shared = _make_storage(storage_uri, storage_timeout_s, storage_options)
    return _Guard(
        what=what, uri=storage_uri, primary=make_primary(storage, shared), primary_storage=storage, shared=shared,
        make_fallback=make_fallback, fail_closed=fail_closed, clock=clock,
        probe_interval_s=probe_interval_s, probe_timeout_s=max(storage_timeout_s, 0.05), carry_back=carry_back,
    )


class _Guard(Generic[_C]):
    """Runs an operation on the primary (shared) core, or on a per-replica fallback while the
    primary storage is out; see the module docstring for the policy."""

    def __init__(
        self,
        *,
        what: str,
        uri: str,
        primary: _C,
        primary_storage: Storage,
        shared: bool,
        make_fallback: Callable[[], tuple[_C, Storage]],
        fail_closed: bool,
        clock: Clock,
        probe_interval_s: float,
        probe_timeout_s: float,
        carry_back: Callable[[_C | None, _C], Awaitable[None]] | None = None,
    ) -> None:
        self._what = what
        self._uri = redact_uri(uri)
        self._primary = primary
        self._primary_storage = primary_storage
        self._shared = shared
        self._make_fallback = make_fallback
        self._fail_closed = fail_closed
        self._clock = clock
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._carry_back = carry_back
        self._fallback: tuple[_C, Storage] | None = None
        self._degraded = False
        self._last_probe = 0.0

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def primary(self) -> _C:
        return self._primary

    def cores(self) -> list[_C]:
        """The shared core and, during an outage, the per-replica fallback."""
        return [self._primary] + ([self._fallback[0]] if self._fallback is not None else [])

    @property
    def outage_verdict(self) -> "LimitVerdict":
        """What a request gets when no storage could answer (the shared one out with fail_closed,
        or the fallback broken too): 503, never "allowed" with nothing recorded."""
        return UNAVAILABLE

    async def run(self, op: Callable[[_C], Awaitable[_T]]) -> _T | _Failed:
        """`op` on the core in force. A shared storage's operation runs in a task of its own: the
        Redis client's read timeout cancels the task it was entered in, and the proxy runs hooks
        inline in a connection's task (addons/compat.py), so a stalled Redis cancelled the
        connection, its request unanswered and unaudited, never the read (red team)."""
        if self._shared:  # started at once (no extra turn of the loop), current in its first step
            return await asyncio.Task(self._run(op), loop=asyncio.get_running_loop(), eager_start=True)
        return await self._run(op)

    async def _run(self, op: Callable[[_C], Awaitable[_T]]) -> _T | _Failed:
        if self._degraded:
            now = self._clock()
            if now - self._last_probe >= self._probe_interval_s or now < self._last_probe:
                self._last_probe = now
                await self._probe()
        if not self._degraded:
            try:
                return await op(self._primary)
            except Exception as exc:
                # Any exception is an outage, an in-memory store's too (that one is a bug: the
                # trace is logged); the limiter moves to a fresh per-replica store or answers 503.
                RATELIMIT_STORAGE_ERRORS.inc()
                self._enter_outage(exc)
        if self._fail_closed:
            return _FAILED
        if self._fallback is None:
            self._fallback = self._make_fallback()
        try:
            return await op(self._fallback[0])
        except Exception:
            log.exception("%s failed on its in-memory fallback", self._what)
            return _FAILED

    def _enter_outage(self, exc: Exception) -> None:
        if self._degraded:
            return
        self._degraded = True
        self._last_probe = self._clock()
        RATELIMIT_STORAGE_FALLBACKS.inc()
        cause = exc.storage_error if isinstance(exc, StorageError) else exc
        policy = (
            "answering 503 (fail_closed)"
            if self._fail_closed
            else "enforcing per-replica in-memory limits"
        )
        log.warning(
            "%s: rate-limit storage %s failed (%s: %s); %s until it recovers",
            self._what,
            self._uri,
            type(cause).__name__,
            cause,
            policy,
            exc_info=not isinstance(exc, StorageError),  # not a storage error: maybe a bug, keep the trace
        )

    async def _probe(self) -> None:
        """Back on the shared storage once it takes a write, and (`carry_back`) what the outage
        must not lose has been written to it; the fallback is dropped then, not before."""
        try:
            await asyncio.wait_for(self._primary_storage.incr(PROBE_KEY, PROBE_EXPIRY_S), self._probe_timeout_s)
            if self._carry_back is not None:
                await self._carry_back(None if self._fallback is None else self._fallback[0], self._primary)
        except Exception:
            return
        self._degraded = False
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            await _close_storage(fallback[1])
        log.warning("%s: rate-limit storage %s recovered; back on shared limits", self._what, self._uri)

    async def aclose(self) -> None:
        await _close_storage(self._primary_storage)
        if self._fallback is not None:
            await _close_storage(self._fallback[1])
            self._fallback = None


# --------------------------------------------------------------------------- auth failures


def _check_limits(max_attempts: int, window_ms: int, lockout_ms: int) -> None:
    if max_attempts < 0:
        raise ValueError("max_attempts must be >= 0 (0: lock at the first failure, and again at each check for a minute)")
    if window_ms < 0:
        raise ValueError("window_ms must be >= 0")
    if lockout_ms < 0:
        raise ValueError("lockout_ms must be >= 0")


class AuthFailureLimiter:
    """Upstream OpenClaw's auth-failure limiter (see the module docstring).

    ``storage_uri``: ``memory://`` (default), ``redis://``, ``rediss://``,
    ``redis+sentinel://``, ``redis+cluster://``; validated here (ValueError).
    ``storage_options`` are passed to the Redis client (e.g. ``ssl_ca_certs``).
    ``clock`` returns seconds (``time.time`` semantics) and drives every time decision.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 10,
        window_ms: int = 60_000,
        lockout_ms: int = 300_000,
        exempt_loopback: bool = True,
        max_entries: int = 10_000,
        loopback_delay_base_ms: int = 250,
        loopback_delay_max_ms: int = 5_000,
        storage_uri: str = "memory://",
        fail_closed: bool = False,
        clock: Clock = time.time,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        storage_timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        _check_limits(max_attempts, window_ms, lockout_ms)
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if loopback_delay_base_ms < 0 or loopback_delay_max_ms < 0:
            raise ValueError("loopback delays must be >= 0")
        self.max_attempts = max_attempts
        self.window_ms = window_ms
        self.lockout_ms = lockout_ms
        self.exempt_loopback = exempt_loopback
        self.max_entries = max_entries
        self.loopback_delay_base_ms = loopback_delay_base_ms
        self.loopback_delay_max_ms = loopback_delay_max_ms
        self._clock = clock

        # Redis: max_entries does not apply (every key expires); memory: bounded index
        self._guard: _Guard[_FailureLog] = _build_guard(
            "auth-failure limiter", storage_uri, storage_timeout_s, storage_options,
            lambda storage, shared: self._failure_log(storage, bounded=not shared),
            self._make_fallback, fail_closed, clock, probe_interval_s, carry_back=self._carry_locks_back,
        )
        # The shared storage's lockouts this replica has seen, key -> end (ms): a storage outage
        # must not hand a locked client a fresh budget on the per-replica fallback, nor the
        # storage's return one locked on the fallback (or lost by a Redis that came back empty).
        self._locks_seen: OrderedDict[str, int] = OrderedDict()
        self._loopback = _FailureLog(
            _memory_storage(),
            max_attempts=max_attempts,
            window_ms=window_ms,
            lockout_ms=lockout_ms,
            ring=LOOPBACK_HISTORY_CAP,
            max_entries=max_entries,
        )

    def apply_limits(self, *, max_attempts: int, window_ms: int, lockout_ms: int, exempt_loopback: bool) -> None:
        """gateway.auth.rateLimit as a reload gives it, applied at once as the gateway's limiter
        takes its updateConfig: failures and lockouts on record carry over, judged by the new
        limits (a client already past a lowered max_attempts is locked at its next check)."""
        _check_limits(max_attempts, window_ms, lockout_ms)
        self.max_attempts, self.window_ms, self.lockout_ms = max_attempts, window_ms, lockout_ms
        self.exempt_loopback = exempt_loopback
        for core in self._guard.cores():
            core.set_limits(max_attempts, window_ms, lockout_ms, ring=max_attempts)
        self._loopback.set_limits(max_attempts, window_ms, lockout_ms, ring=LOOPBACK_HISTORY_CAP)

    def _failure_log(self, storage: Storage, *, bounded: bool) -> _FailureLog:
        return _FailureLog(
            storage,
            max_attempts=self.max_attempts,
            window_ms=self.window_ms,
            lockout_ms=self.lockout_ms,
            ring=self.max_attempts,
            max_entries=self.max_entries if bounded else None,
        )

    def _make_fallback(self) -> tuple[_FailureLog, Storage]:
        storage = _memory_storage()
        return self._failure_log(storage, bounded=True), storage

    def _saw_lock(self, log_: _FailureLog, key: str, until: int) -> None:
        """Note a lockout the shared storage holds (bounded: the oldest noted goes first)."""
        if log_ is not self._guard.primary:
            return
        self._locks_seen[key] = until
        self._locks_seen.move_to_end(key)
        if len(self._locks_seen) > self.max_entries:
            self._locks_seen.popitem(last=False)

    def _lock_seen(self, key: str, now: int) -> int | None:
        """Milliseconds left of a lockout seen on the shared storage, None when there is none."""
        until = self._locks_seen.get(key, 0)
        return until - now if until > now else None

    async def _carry_locks_back(self, fallback: _FailureLog | None, primary: _FailureLog) -> None:
        """The storage is back: lockouts set during the outage, and those seen before it, are
        written to it (another replica's lock on the same client stands), at most
        CARRY_BACK_BATCH at a time."""
        now = self._now_ms()
        locks = {key: until for key, until in self._locks_seen.items() if until > now}
        if fallback is not None:
            locks.update(fallback.live_locks(now))
        pending = list(locks.items())
        for start in range(0, len(pending), CARRY_BACK_BATCH):
            batch = pending[start:start + CARRY_BACK_BATCH]
            await asyncio.gather(*(primary.set_lock(key, until, now) for key, until in batch))

    @property
    def degraded(self) -> bool:
        """True while the shared storage is out and the per-replica fallback (or 503) applies."""
        return self._guard.degraded

    @property
    def tracked_clients(self) -> int | None:
        """Clients in the in-memory table (bounded by max_entries); None on Redis."""
        primary = self._guard.primary
        return len(primary) if primary.bounded else None

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _exempt(self, ip: str | None) -> bool:
        return self.exempt_loopback and is_loopback(ip)

    async def check(self, ip: str | None) -> LimitVerdict:
        """Before comparing credentials: is this client locked out? Never raises."""
        if self._exempt(ip):
            return ALLOWED
        key, now = auth_key(ip), self._now_ms()

        async def op(log_: _FailureLog) -> tuple[int | None, bool]:
            blocked_ms, no_failures = await log_.blocked_for(key, now)
            if blocked_ms is None and log_ is not self._guard.primary:
                blocked_ms = self._lock_seen(key, now)  # on the fallback: a lockout from before the outage
            elif blocked_ms:
                self._saw_lock(log_, key, now + blocked_ms)
            return blocked_ms, no_failures and blocked_ms is None

        state = await self._guard.run(op)
        if isinstance(state, _Failed):
            return self._guard.outage_verdict
        blocked_ms, no_failures = state
        if blocked_ms is not None:  # 0: refused this once, nothing to wait for (no Retry-After)
            return LimitVerdict(False, retry_after_s=math.ceil(blocked_ms / 1000))
        return ALLOWED_WITHOUT_FAILURES if no_failures else ALLOWED

    async def record_failure(self, ip: str | None) -> float:
        """A mismatched credential: returns seconds to wait before the 401 (loopback), else 0."""
        key, now = auth_key(ip), self._now_ms()
        if self._exempt(ip):
            try:
                recent = await self._loopback.record_counting(key, now)
            except Exception:  # pragma: no cover - memory storage
                log.exception("loopback failure history failed")
                return 0.0
            return self.loopback_delay_s(recent)

        async def op(log_: _FailureLog) -> None:
            until = await log_.record_locking(key, now)
            if until is not None and until > now:
                self._saw_lock(log_, key, until)

        await self._guard.run(op)
        return 0.0

    async def reset(self, ip: str | None) -> None:
        """Successful authentication: forget the client's failures. Never raises."""
        key = auth_key(ip)
        if self._exempt(ip):
            try:
                await self._loopback.reset(key)
            except Exception:  # pragma: no cover - memory storage
                log.exception("loopback failure history reset failed")
            return

        async def op(log_: _FailureLog) -> None:
            await log_.reset(key)

        await self._guard.run(op)

    def loopback_delay_s(self, recent_failures: int) -> float:
        """``min(base * 2**(n-1), cap)`` seconds for ``n`` recent failures (n capped at 6)."""
        n = min(recent_failures, LOOPBACK_HISTORY_CAP)
        if n < 1 or self.loopback_delay_base_ms <= 0:
            return 0.0
        return min(self.loopback_delay_base_ms * 2 ** (n - 1), self.loopback_delay_max_ms) / 1000

    async def aclose(self) -> None:
        await self._guard.aclose()
        await _close_storage(self._loopback.storage)


# --------------------------------------------------------------------------- allowed calls


class _RequestWindow:
    """Sliding-window counter (the `limits` SlidingWindowCounter algorithm: the previous
    fixed window weighted by its remaining overlap plus the current one) with window
    boundaries taken from our clock; rejected hits are given back so they do not count."""

    def __init__(self, storage: Storage, item: limits.RateLimitItem) -> None:
        self.storage = storage
        self.item = item
        self.period = item.get_expiry()

    async def hit(self, base: str, now: float) -> float:
        """Consume one hit; returns 0 when allowed, else seconds until one would be."""
        period, limit = self.period, self.item.amount
        window = math.floor(now / period)
        current_key, previous_key = f"{base}/{window}", f"{base}/{window - 1}"
        current, previous = await asyncio.gather(
            self.storage.incr(current_key, 2 * period + 1), self.storage.get(previous_key)
        )
        elapsed = (now - window * period) / period
        if math.floor(previous * (1 - elapsed)) + current <= limit:
            return 0.0
        await self.storage.incr(current_key, 2 * period + 1, amount=-1)
        before = current - 1  # hits this window without this one
        window_end = (window + 1) * period
        if before + 1 <= limit and previous > 0:
            # wait until the previous window's weight has decayed enough
            free_at = window * period + period * (1 - (limit - before) / previous)
        else:
            # wait for the next window, where this window becomes the weighted previous one
            free_at = window_end + (period * (1 - limit / before) if before > limit else 0.0)
        return max(free_at - now, 0.001)


class RequestRateLimiter:
    """The sidecar's own limit on ALLOWED calls (built only when configured): ``limit`` such as
    ``"120/minute"`` (`limits.parse`), per identity (``per="identity"``, falling back to the
    client IP for callers without one) or per client IP, and with ``per_tool`` per tool too.

    Same storage URIs, validation, clock and outage policy as `AuthFailureLimiter`.
    """

    def __init__(
        self,
        limit: str,
        *,
        per: str = "identity",
        per_tool: bool = False,
        storage_uri: str = "memory://",
        fail_closed: bool = False,
        clock: Clock = time.time,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        storage_timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            self.item: limits.RateLimitItem = limits.parse(limit)
        except ValueError as exc:
            raise ValueError(f"invalid request rate limit {limit!r}: {exc}") from exc
        if per not in ("identity", "ip"):
            raise ValueError(f"per must be 'identity' or 'ip', got {per!r}")
        self.per_identity = per == "identity"
        self.per_tool = per_tool
        self._clock = clock
        item = self.item
        self._guard: _Guard[_RequestWindow] = _build_guard(
            "request rate limiter", storage_uri, storage_timeout_s, storage_options,
            lambda storage, shared: _RequestWindow(storage, item),
            lambda: self._make_fallback(item), fail_closed, clock, probe_interval_s,
        )

    @staticmethod
    def _make_fallback(item: limits.RateLimitItem) -> tuple[_RequestWindow, Storage]:
        storage = _memory_storage()
        return _RequestWindow(storage, item), storage

    @property
    def degraded(self) -> bool:
        return self._guard.degraded

    def key_for(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> str:
        """Storage key: the identity (when limiting per identity and there is one), else
        ``ip:<client_share>``; plus the tool if per_tool."""
        if identity and self.per_identity:
            who = f"id:{person_key(identity)}"
        else:
            who = f"ip:{client_share(client_ip)}"
        parts = [who, f"tool:{tool or ''}"] if self.per_tool else [who]
        return "req/" + self.item.key_for(*parts)

    async def hit(self, identity: str | None, tool: str | None = None, *, client_ip: str | None = None) -> LimitVerdict:
        """Count one allowed call; a refusal carries ``retry_after_s``. Never raises."""
        base, now = self.key_for(identity, tool, client_ip=client_ip), self._clock()

        async def op(window: _RequestWindow) -> float:
            return await window.hit(base, now)

        wait = await self._guard.run(op)
        if isinstance(wait, _Failed):
            return self._guard.outage_verdict
        return ALLOWED if wait <= 0 else LimitVerdict(False, retry_after_s=max(1, math.ceil(wait)))

    async def aclose(self) -> None:
        await self._guard.aclose()