"""Discovery of this host's interface addresses and the trusted-proxy rule built on it (§2.3 step 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.attribution import Attribution
from sidecar.auth import OriginPolicy, TrustedProxyAuth
from sidecar.ipaddrs import parse_network
from sidecar.localaddrs import local_interface_addresses, parse_fib_trie, parse_if_inet6
from sidecar.view import RequestView

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /32 link BROADCAST
           /24 link UNICAST
        |-- 10.0.0.7
           /32 host LOCAL
        |-- 10.0.0.9
           /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.0.7
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 02 40 00 80     eth0
"""


def test_fib_trie_lists_every_local_ipv4_including_secondary_addresses() -> None:
    assert parse_fib_trie(FIB_TRIE) == {"10.0.0.7", "10.0.0.9", "127.0.0.1"}


def test_if_inet6_addresses_are_formatted_canonically() -> None:
    assert parse_if_inet6(IF_INET6) == {"::1", "fd00::2"}


def test_discovery_reads_both_files(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    assert local_interface_addresses(tmp_path) == {"10.0.0.7", "10.0.0.9", "127.0.0.1", "::1", "fd00::2"}


def test_discovery_without_ipv6_reads_ipv4_alone(tmp_path: Path) -> None:
    """/proc/net/if_inet6 is absent when IPv6 is disabled: that is no failure to read."""
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    assert local_interface_addresses(tmp_path) == {"10.0.0.7", "10.0.0.9", "127.0.0.1"}


def test_discovery_failure_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        local_interface_addresses(tmp_path)


def test_discovering_no_address_is_an_error(tmp_path: Path) -> None:
    """An empty answer would refuse no trusted peer as this host's own: it is a failure to read."""
    (tmp_path / "fib_trie").write_text("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n")
    with pytest.raises(OSError, match="^no local interface addresses found$"):
        local_interface_addresses(tmp_path)


def test_this_machine_has_loopback() -> None:
    assert "127.0.0.1" in local_interface_addresses()


def _auth(local: frozenset[str] | None) -> TrustedProxyAuth:
    return TrustedProxyAuth(
        trusted=(parse_network("10.0.0.0/24"), parse_network("198.51.100.5")), user_header="x-forwarded-user",
        required_headers=(), allow_users=frozenset(), allow_loopback=False, origins=OriginPolicy(()),
        fallback=None, local_addresses=local,
    )


@pytest.mark.parametrize(
    ("peer", "local", "reason"),
    [
        ("10.0.0.7", frozenset({"10.0.0.7"}), "trusted_proxy_local_interface_source"),
        ("10.0.0.9", None, "trusted_proxy_local_interface_check_failed"),
        ("198.51.100.5", frozenset({"10.0.0.7"}), "ok"),
    ],
)
def test_a_trusted_peer_that_is_this_host_is_refused(peer: str, local: frozenset[str] | None, reason: str) -> None:
    view = RequestView("POST", "/tools/invoke", ((b"X-Forwarded-User", b"alice"), (b"X-Forwarded-For", b"203.0.113.7")), peer)
    outcome = _auth(local).authenticate(view, Attribution("trusted-proxy", "203.0.113.7", peer))
    assert outcome.reason == reason
    assert outcome.ok is (reason == "ok")
