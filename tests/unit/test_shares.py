"""Per-client shares of a common budget (sidecar/shares.py)."""

from __future__ import annotations

import pytest

from sidecar.shares import ClientShares, connections_per_client


@pytest.mark.parametrize(("cap", "share"), [(16, 8), (128, 8), (143, 8), (144, 9), (1024, 64), (65536, 4096)])
def test_a_clients_share_is_a_sixteenth_of_the_cap_and_never_below_eight(cap: int, share: int) -> None:
    assert connections_per_client(cap) == share


def test_a_client_holds_its_share_and_no_more_while_others_keep_theirs() -> None:
    shares = ClientShares(per_client=2)
    alice = [shares.acquire("alice"), shares.acquire("alice")]
    assert all(alice) and shares.acquire("alice") is None
    assert shares.acquire("bob") is not None
    alice[0].release()
    alice[0].release()  # released once, however often it is told
    assert shares.acquire("alice") is not None and shares.acquire("alice") is None


def test_a_lowered_share_keeps_the_counts_held_before_it() -> None:
    """A reload sets `per_client` again: what a client already holds still counts against it."""
    shares = ClientShares(per_client=4)
    held = [shares.acquire("alice") for _ in range(3)]
    shares.per_client = 2
    assert shares.acquire("alice") is None
    held[0].release(), held[1].release()
    assert shares.acquire("alice") is not None


def test_a_client_that_holds_nothing_is_forgotten() -> None:
    """The map lives as long as the process: one entry per address ever seen would grow with every
    client of a flood (or every IPv6 source) for good."""
    shares = ClientShares(per_client=8)
    for n in range(1000):
        share = shares.acquire(f"client-{n}")
        assert share is not None
        share.release()
    assert not shares._held
