"""RPC WebSocket upgrades whose connect has not been accepted yet, counted per client.

The gateway lets each client address hold 32 such sockets (its preauth connection budget) and
answers the next upgrade 503. Behind the sidecar's own credential it sees one client, the sidecar,
so one stranger opening 32 upgrades and never sending `connect` took the RPC from everyone (red
team). Each client may hold `per_client` of them at once; the rest stay for everyone else.
"""

from __future__ import annotations

from collections import Counter


class PreauthHold:
    """One counted upgrade; released once, whichever comes first (connected, refused, gone)."""

    __slots__ = ("_sockets", "_client")

    def __init__(self, sockets: PreauthSockets, client: str) -> None:
        self._sockets: PreauthSockets | None = sockets
        self._client = client

    def release(self) -> None:
        if self._sockets is not None:
            self._sockets.release(self._client)
            self._sockets = None


class PreauthSockets:
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # set again on reload: the counts carry over
        self._held: Counter[str] = Counter()

    def acquire(self, client: str) -> PreauthHold | None:
        if self._held[client] >= self.per_client:
            return None
        self._held[client] += 1
        return PreauthHold(self, client)

    def release(self, client: str) -> None:
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]
