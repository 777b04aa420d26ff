"""sidecar.ipaddrs.parse_network against the gateway's own trusted-proxy check
(isTrustedProxyAddress, in its Node): an entry the sidecar accepts trusts exactly the addresses
the gateway trusts by it; one it cannot read the same way is a start-up error, never wider trust."""

from __future__ import annotations


from sidecar.ipaddrs import in_networks, normalize_ip, parse_network
from tests.gateway.oracle import call_gateway, needs_gateway

ENTRIES = [
    "10.0.0.0/8", "10.0.0.0/ 8", "10.0.0.0/+8", "10.0.0.0/\u0668", "10.0.0.0 /8", " 10.0.0.0/8 ", "10.0.0.1/8", "10.0.0.0/08",
    "::ffff:10.0.0.0/104", "::ffff:10.0.0.0/8", "10.0.0.0/8\u00a0", "10.0.0.0/8\t", "10.0.0.0/1_0", "10.0.0.0/8\n",
    "0:0:0:0:0:ffff:a00:0/104", "10.0.0.0/008", "10.0.0.5", "010.0.0.5", "10.0.0.5 ", "[::1]", "[::1]/128", "::1/128",
    "fe80::1%eth0", "fe80::/10", "::ffff:10.0.0.5", "10.0.0.0/\uff18", "0.0.0.0/0", "::/0", "10.0.0.0/0x8", "10.0.0.0/8/9",
    "10/8", "10.0.0.0/-0", "\ufeff10.0.0.5", "10.0.0.5\u2028", "10.0.0.0/33", "10.0.0.0/32", "::/129", "1.2.3.4/24",
    # IPv6 spellings ending in a dotted quad, which ipaddr.js reads its own way (red team)
    "::10.0.0.0/104", "::10.0.0.5", "::010.0.0.5", "::ffff:010.0.0.5", "::0xa.0.0.5", "::1.2.3.99", "0::10.0.0.5",
]
ADDRESSES = ["10.1.2.3", "10.0.0.5", "::ffff:10.1.2.3", "127.0.0.1", "::1", "fe80::1", "8.8.8.8", "1.2.3.99"]


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


EMBEDDED_HEADS = ["::", "::ffff:", "::FFFF:", "0::", "::0:", "1::", "0:0:0:0:0:ffff:", "64:ff9b::", "1:2:3:4:5:6:", "1:2:3:4:5:6:7:"]
EMBEDDED_QUADS = ["1.2.3.4", "01.2.3.4", "0001.2.3.4", "1.2.3.256", "127.0.0.1", "0.0.0.0", "1.2.3", "1.2.3.4.5", "0x1.2.3.4",
                  "0X1.2.3.4", "0xg.2.3.4"]


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
