"""This host's own interface addresses, for upstream's `trusted_proxy_local_interface_source`
rule: a trusted-proxy request from a non-loopback address of our own host is refused, since
anything on the host could have sent it (§2.3 step 3).

Linux only (the sidecar's platform): IPv4 from /proc/net/fib_trie, which lists every local
address including secondary ones, and IPv6 from /proc/net/if_inet6.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

PROC_NET = Path("/proc/net")


def parse_fib_trie(text: str) -> set[str]:
    """Addresses marked `/32 host LOCAL` in the kernel's FIB trie dump."""
    found: set[str] = set()
    last_ip: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last_ip = stripped[3:].strip()
        elif "/32 host LOCAL" in stripped and last_ip is not None:
            found.add(last_ip)
    return found


def parse_if_inet6(text: str) -> set[str]:
    return {str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))) for line in text.splitlines() if line.strip()}


def local_interface_addresses(proc_net: Path = PROC_NET) -> frozenset[str]:
    """Every address of this host's interfaces. Raises OSError when they cannot be read."""
    addresses = parse_fib_trie((proc_net / "fib_trie").read_text())
    inet6 = proc_net / "if_inet6"
    if inet6.exists():  # absent when IPv6 is disabled
        addresses |= parse_if_inet6(inet6.read_text())
    if not addresses:
        raise OSError("no local interface addresses found")
    return frozenset(addresses)
