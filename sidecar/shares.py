"""Per-client shares of a budget that everyone draws on: each client (an address, an IPv6 /64) may
hold `per_client` at once, and the rest stay for everyone else.

- RPC WebSocket upgrades whose connect has not been accepted yet. The gateway lets each client
  address hold 32 such sockets (its preauth connection budget) and answers the next upgrade 503.
  Behind the sidecar's own credential it sees one client, the sidecar, so one stranger opening 32
  upgrades and never sending `connect` took the RPC from everyone (red team).
- Open client connections (`connections_per_client`). One address held every slot under the
  connection cap with idle sockets, reopened as the head deadline closed them, and authenticated
  clients were refused at accept (red team).
"""

from __future__ import annotations

from collections import Counter


def connections_per_client(cap: int) -> int:
    """A client's share of the connection cap: a sixteenth of it, and never fewer than 8."""
    return max(8, cap // 16)


class ClientShare:
    """One counted hold; released once, whichever comes first (connected, refused, gone)."""

    __slots__ = ("_shares", "_client")

    def __init__(self, shares: ClientShares, client: str) -> None:
        self._shares: ClientShares | None = shares
        self._client = client

    def release(self) -> None:
        if self._shares is not None:
            self._shares.release(self._client)
            self._shares = None


class ClientShares:
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # set again on reload: the counts carry over
        self._held: Counter[str] = Counter()

    def acquire(self, client: str) -> ClientShare | None:
        if self._held[client] >= self.per_client:
            return None
        self._held[client] += 1
        return ClientShare(self, client)

    def release(self, client: str) -> None:
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]
