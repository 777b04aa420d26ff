"""sidecar.ipaddrs.parse_network against the gateway's own trusted-proxy check
(isTrustedProxyAddress, in its Node): an entry the sidecar accepts trusts exactly the addresses
the gateway trusts by it; one it cannot read the same way is a start-up error, never wider trust."""

from __future__ import annotations

import re

import pytest

from sidecar.ipaddrs import in_networks, ip_text, normalize_ip, parse_network, share_key
from tests.gateway.oracle import call_gateway, needs_gateway

ENTRIES = [
    "10.0.0.0/8", "10.0.0.0/ 8", "10.0.0.0/+8", "10.0.0.0/\u0668", "10.0.0.0 /8", " 10.0.0.0/8 ", "10.0.0.1/8", "10.0.0.0/08",
    "::ffff:10.0.0.0/104", "::ffff:10.0.0.0/8", "10.0.0.0/8\u00a0", "10.0.0.0/8\t", "10.0.0.0/1_0", "10.0.0.0/8\n",
    "0:0:0:0:0:ffff:a00:0/104", "10.0.0.0/008", "10.0.0.5", "010.0.0.5", "10.0.0.5 ", "[::1]", "[::1]/128", "::1/128",
    "fe80::1%eth0", "fe80::/10", "::ffff:10.0.0.5", "10.0.0.0/\uff18", "0.0.0.0/0", "::/0", "10.0.0.0/0x8", "10.0.0.0/8/9",
    "10/8", "10.0.0.0/-0", "\ufeff10.0.0.5", "10.0.0.5\u2028", "10.0.0.0/33", "10.0.0.0/32", "::/129", "1.2.3.4/24",
    # IPv6 spellings ending in a dotted quad, which ipaddr.js reads its own way (red team)
    "::10.0.0.0/104", "::10.0.0.5", "::010.0.0.5", "::ffff:010.0.0.5", "::0xa.0.0.5", "::1.2.3.99", "0::10.0.0.5",
    "fe80::1%eth0/64", "::g/8",  # no address before the slash, as Python reads it
]
ADDRESSES = ["10.1.2.3", "10.0.0.5", "::ffff:10.1.2.3", "127.0.0.1", "::1", "fe80::1", "8.8.8.8", "1.2.3.99", "10.200.0.1",
             "11.0.0.1"]  # the last two: just inside and just outside 10.0.0.0/8


@needs_gateway
def test_a_trusted_proxy_entry_trusts_what_the_gateway_trusts_or_fails_at_start() -> None:
    theirs = call_gateway(["net-:isTrustedProxyAddress"], """
        answer(input.entries.map((entry) => input.addresses.map((ip) => gateway.isTrustedProxyAddress(ip, [entry]))));""",
                          {"entries": ENTRIES, "addresses": ADDRESSES})
    refused, differ = [], []
    for entry, trusted in zip(ENTRIES, theirs):
        try:
            network = parse_network(entry)
        except ValueError:
            refused.append(entry)
            continue
        mine = [in_networks(ip, [network]) for ip in ADDRESSES]
        if mine != trusted:
            differ.append((entry, mine, trusted))
    assert differ == []
    assert "10.0.0.0/8" not in refused and len(refused) < len(ENTRIES) / 2
    # A refusal costs the start, so it is kept for entries the gateway trusts nobody by, but for the
    # IPv6 spelling of a prefix shorter than its IPv4 part, which no IPv4 network can say, and a zone index.
    trusted_by = dict(zip(ENTRIES, theirs))
    assert [entry for entry in refused if any(trusted_by[entry])] == ["::ffff:10.0.0.0/8", "fe80::1%eth0/64"]


EMBEDDED_HEADS = ["::", "::ffff:", "::FFFF:", "0::", "::0:", "1::", "0:0:0:0:0:ffff:", "64:ff9b::", "1:2:3:4:5:6:", "1:2:3:4:5:6:7:"]
EMBEDDED_QUADS = ["1.2.3.4", "01.2.3.4", "0001.2.3.4", "1.2.3.256", "127.0.0.1", "0.0.0.0", "1.2.3", "1.2.3.4.5", "0x1.2.3.4",
                  "0X1.2.3.4", "0xg.2.3.4", "1.2.0x3.4"]


@needs_gateway
def test_an_ipv6_literal_ending_in_a_dotted_quad_is_the_address_the_gateway_reads() -> None:
    """ipaddr.js reads the octets as JavaScript's parseInt does (`01`, `0x1`) and `::1.2.3.4` as
    the IPv4-mapped address: the gateway trusted 10.0.0.0/8 by `::10.0.0.0/104`, and took the hop
    `::127.0.0.1` for loopback, where the sidecar read IPv6 addresses (red team)."""
    literals = [head + quad for head in EMBEDDED_HEADS for quad in EMBEDDED_QUADS]
    theirs = call_gateway(["ip-:normalizeIpAddress"], """
        answer(input.map((literal) => gateway.normalizeIpAddress(literal) ?? null));""", literals)
    mine = [normalize_ip(literal) for literal in literals]
    differ = [(literal, m, t) for literal, m, t in zip(literals, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(literals)} differ, first: {differ[:5]}"
    assert "127.0.0.1" in theirs and None in theirs


# Spellings of a peer or a forwarded hop: brackets, blanks, zone indexes, and IPv6 ending in a quad.
LITERALS = [
    "[::1]", "[1.2.3.4]", " [::1] ", "[::1", "::1]", "1::1]", "[[::1]]", "[ ::1 ]", "[]", "[", "]", "%", "1.2.3.4%1",
    "fe80::1%eth0", "fe80::1%ETH0", "[fe80::1%eth0]", "::1%0", "fe80::1%", "fe80::1%eth-0", "fe80::1%a%b", "fe80::1%1:80",
    "fe80::1%%", "fe80::1%e\u0131", "fe80::1%eth_0", "::ffff:1.2.3.4%1", "1:2:3:4:5:6:1.2.3.4%z", "::1.2.3.255", "::ffff:1.2.3.255",
    "::255.255.255.255", "::1.2.3.256", "::1.2.3.\u0664",
]


@needs_gateway
def test_a_bracketed_or_zoned_literal_is_the_address_the_gateway_reads() -> None:
    """The gateway strips one pair of brackets and reads a zone index as ipaddr.js does (letters and
    digits): the sidecar names the same client, or none where the gateway has none. The zone itself
    it drops, as no part of who the client is."""
    theirs = call_gateway(["ip-:normalizeIpAddress"], """
        answer(input.map((literal) => gateway.normalizeIpAddress(literal) ?? null));""", LITERALS)
    expected = [None if answer is None else answer.partition("%")[0] for answer in theirs]
    mine = [normalize_ip(literal) for literal in LITERALS]
    assert [(lit, m, e) for lit, m, e in zip(LITERALS, mine, expected) if m != e] == []
    assert "fe80::1%eth0" in theirs and None in theirs


def test_no_address_normalizes_to_none() -> None:
    """No address (the limiter asked for a client it could not name) is no address, not an error."""
    assert normalize_ip(None) is None


@pytest.mark.parametrize("text", [None, "", "unknown", "10.0.0.0/8", "fe80::1%eth-0"])
def test_what_is_no_address_is_in_no_network(text: str | None) -> None:
    """A peer or hop that names no address is never inside a trusted network, even 0.0.0.0/0."""
    assert in_networks(text, [parse_network("0.0.0.0/0"), parse_network("::/0")]) is False


@pytest.mark.parametrize("text, spelt", [("::ffff:10.0.0.5", "10.0.0.5"), ("[::1]", "::1"), ("", ""), ("unknown", "unknown")])
def test_ip_text_spells_an_address_as_normalize_ip_and_anything_else_as_it_came(text: str, spelt: str) -> None:
    """A peer is logged and compared in one spelling; what is no address stays what it was, not None."""
    assert ip_text(text) == spelt


@pytest.mark.parametrize("peer", ["", "/run/sidecar/admin.sock", "unknown"])
def test_a_peer_that_is_no_address_spends_its_own_share(peer: str) -> None:
    """The admin listener's peer on a Unix socket is a path or nothing: its share is named by it."""
    assert share_key(peer) == peer


def test_a_refused_entry_is_named_in_the_error() -> None:
    """The start-up error says which trustedProxies entry the sidecar cannot read."""
    with pytest.raises(ValueError, match=re.escape("not an IP or CIDR: '10.0.0.0/ 8'")):
        parse_network("10.0.0.0/ 8")
