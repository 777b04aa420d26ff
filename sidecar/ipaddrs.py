"""IP address helpers shared by attribution, auth and rate limiting.

Every comparison goes through `normalize_ip` so that `::ffff:1.2.3.4` and `1.2.3.4`
are one client (attack corpus G4) and CIDR checks see the same form.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from .caching import short_call_cache
from .toolpolicy import js_trim

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Every request parses its peer (and forwarded hops) several times, and nearly all of them repeat:
# answers are cached for inputs no longer than the longest IPv6 literal with a zone and brackets.
_CACHEABLE_LENGTH = 64
_CACHE_SIZE = 4096


_ZONE = re.compile(r"[0-9A-Za-z]+")


@short_call_cache(_CACHEABLE_LENGTH, _CACHE_SIZE)
def parse_ip(text: str) -> IPAddress | None:
    """Parse an IP literal, folding IPv4-mapped IPv6 to IPv4; None when it is not one."""
    candidate = js_trim(text)
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if "%" in candidate and ":" in candidate:
        # An IPv6 zone index: not part of the client's identity, and only letters and digits, as
        # ipaddr.js reads one. `2001:db8::1%1:80` is no address to the gateway; cut at the `%`,
        # it named a client the gateway drops (red team).
        candidate, zone = candidate.split("%", 1)
        if _ZONE.fullmatch(zone) is None:
            return None
    try:
        address = ipaddress.ip_address(_embedded_ipv4(candidate))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# An IPv6 literal ending in a dotted quad, as ipaddr.js (the gateway's parser) reads one: each
# octet as JavaScript's parseInt reads it (`01`, `0x1`), and `::a.b.c.d` as the IPv4-mapped address.
_EMBEDDED_IPV4 = re.compile(r"(.*:)((?:0?\d+|0x[0-9a-f]+)(?:\.(?:0?\d+|0x[0-9a-f]+)){3})", re.IGNORECASE | re.ASCII)


def _embedded_ipv4(candidate: str) -> str:
    """`candidate` spelt so that Python reads it as the gateway does (unchanged when not such a literal)."""
    match = _EMBEDDED_IPV4.fullmatch(candidate)
    if match is None:
        return candidate
    octets = [int(part, 16) if part.lower().startswith("0x") else int(part) for part in match[2].split(".")]
    if max(octets) > 255:
        return candidate  # refused on both sides
    head = "::ffff:" if match[1] == "::" else match[1]
    return f"{head}{octets[0] << 8 | octets[1]:x}:{octets[2] << 8 | octets[3]:x}"


def normalize_ip(text: str | None) -> str | None:
    """Canonical text form of an IP literal (mapped IPv6 folded), or None."""
    return None if text is None else _canonical_text(text)


def ip_text(text: str) -> str:
    """normalize_ip's spelling of an address, or `text` as it is when it is no IP literal."""
    return _canonical_text(text) or text


@short_call_cache(_CACHEABLE_LENGTH, _CACHE_SIZE)
def _canonical_text(text: str) -> str | None:
    address = parse_ip(text)
    return None if address is None else str(address)


# Tailscale's IPv6 range (tsaddr.TailscaleULARange; Headscale's default too). Every node of a
# tailnet has one address in it, all in one /64, and WireGuard's cryptokey routing lets a node send
# from its own address only.
TAILNET_IPV6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")


def share_key(host: str) -> str:
    """Whose share of a per-client budget an address spends: the address, or for IPv6 its /64 (one
    host holds a whole /64 as easily as one address), but for a tailnet address, which is one node
    (its /64 is every user of the tailnet: one of them locked out all the others, red team)."""
    address = parse_ip(host)  # an IPv4-mapped address folded to IPv4
    if address is None:
        return host
    if address.version == 6 and address not in TAILNET_IPV6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def is_loopback(text: str | None) -> bool:
    address = parse_ip(text) if text else None
    return address is not None and address.is_loopback


def parse_network(entry: str) -> IPNetwork:
    """An IP or CIDR from config, as strictly as the gateway's parser (ipaddr.js) reads one: the
    entry trimmed, then no space around the slash, a prefix of ASCII digits and no zone index.
    Python's int() takes " 8", "+8", "-0" and "٨", where the gateway trusts nothing by such an
    entry. A bare IP is a single-address network. Raises ValueError."""
    text = js_trim(entry)
    base, slash, prefix = text.partition("/")
    address = parse_ip(base) if base == base.strip() and "%" not in base else None
    if address is None or (slash and (base.startswith("[") or not (prefix.isascii() and prefix.isdigit()))):
        raise ValueError(f"not an IP or CIDR: {entry!r}")
    if not slash:
        return ipaddress.ip_network(address)
    mapped = ":" in base and address.version == 4  # an IPv6 spelling: its prefix counts 96 bits more
    bits = int(prefix) - 96 if mapped else int(prefix)
    return ipaddress.ip_network(f"{address}/{bits}", strict=False)


def in_networks(text: str | None, networks: Iterable[IPNetwork]) -> bool:
    address = parse_ip(text) if text else None
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)
