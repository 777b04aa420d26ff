"""sidecar.attribution: reference §2.4 ingress attribution and right-most XFF (corpus A3, A4, A7, A9, G1, G4)."""

from __future__ import annotations

import pytest

from sidecar.attribution import Attribution, attribute, client_from_forwarded, has_forwarding_evidence
from sidecar.ipaddrs import parse_network

from tests.builders import view
from tests.gateway.oracle import call_gateway, needs_gateway

PROXY = "198.51.100.5"
PROXY2 = "198.51.100.6"
CLIENT = "203.0.113.7"
TRUSTED = tuple(parse_network(e) for e in (PROXY, PROXY2))


def nets(*entries: str):
    return tuple(parse_network(e) for e in entries)


# ---- evidence --------------------------------------------------------------------------------

EVIDENCE = [
    "Forwarded", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-User",
    "x-forwarded-anything", "Tailscale-User-Login", "Tailscale-User-Name", "Tailscale-User-Profile-Pic",
    "Tailscale-Headers-Info", "Tailscale-Funnel-Request",
]


@pytest.mark.parametrize("name", EVIDENCE)
@pytest.mark.parametrize("value", ["", "x", "203.0.113.9"])
def test_presence_alone_is_forwarding_evidence(name: str, value: str) -> None:
    assert has_forwarding_evidence(view((name, value), peer=CLIENT))


@pytest.mark.parametrize("name", ["Via", "X-Forwarded", "X-Real-Ip-Not", "Client-IP", "True-Client-IP", "X-Client-IP", "Accept"])
def test_other_headers_are_not_evidence(name: str) -> None:
    assert not has_forwarding_evidence(view((name, "1.2.3.4"), peer=CLIENT))


# ---- the §2.4 cases ----------------------------------------------------------------------------

CASES = [
    # (id, peer, headers, trusted, real_ip_fallback, expected Attribution)
    ("loopback-direct", "127.0.0.1", [], (), False, Attribution("direct-local", "127.0.0.1", "127.0.0.1")),
    ("loopback-127.8.9.10", "127.8.9.10", [], (), False, Attribution("direct-local", "127.8.9.10", "127.8.9.10")),
    ("loopback-v6", "::1", [], (), False, Attribution("direct-local", "::1", "::1")),
    ("loopback-mapped", "::ffff:127.0.0.1", [], (), False, Attribution("direct-local", "127.0.0.1", "127.0.0.1")),
    ("remote-direct", CLIENT, [], (), False, Attribution("direct-remote", CLIENT, CLIENT)),
    ("remote-direct-mapped", f"::ffff:{CLIENT}", [], (), False, Attribution("direct-remote", CLIENT, CLIENT)),
    ("remote-direct-v6", "2001:db8::7", [], (), False, Attribution("direct-remote", "2001:db8::7", "2001:db8::7")),
    # case 25/26: evidence from an untrusted peer
    ("25-untrusted-xff", CLIENT, [("X-Forwarded-For", "10.1.1.1")], (), False, Attribution("unattributable", None, CLIENT)),
    ("26-untrusted-proto", CLIENT, [("X-Forwarded-Proto", "https")], (), False, Attribution("unattributable", None, CLIENT)),
    ("26-untrusted-user", CLIENT, [("X-Forwarded-User", "x")], (), False, Attribution("unattributable", None, CLIENT)),
    ("26-untrusted-empty-xff", CLIENT, [("X-Forwarded-For", "")], (), False, Attribution("unattributable", None, CLIENT)),
    ("untrusted-forwarded", CLIENT, [("Forwarded", "for=1.2.3.4")], (), False, Attribution("unattributable", None, CLIENT)),
    ("untrusted-real-ip", CLIENT, [("X-Real-IP", "1.2.3.4")], (), False, Attribution("unattributable", None, CLIENT)),
    ("untrusted-tailscale", CLIENT, [("Tailscale-User-Login", "a@b")], (), False, Attribution("unattributable", None, CLIENT)),
    # case 27: loopback carrying XFF while 127.0.0.1 is not trusted
    ("27-loopback-xff", "127.0.0.1", [("X-Forwarded-For", "198.51.100.9")], (), False, Attribution("unattributable", None, "127.0.0.1")),
    ("loopback-tailscale-untrusted", "127.0.0.1", [("Tailscale-User-Login", "a@b")], (), False, Attribution("unattributable", None, "127.0.0.1")),
    # case 28/29: trusted proxy without a usable client
    ("28-trusted-no-xff", PROXY, [], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("29-trusted-xff-loopback", PROXY, [("X-Forwarded-For", "127.0.0.1")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("trusted-xff-v6-loopback", PROXY, [("X-Forwarded-For", "::1")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("trusted-empty-xff", PROXY, [("X-Forwarded-For", "")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("trusted-xff-only-proxies", PROXY, [("X-Forwarded-For", f"{PROXY2}, {PROXY}")], (PROXY, PROXY2), False, Attribution("unattributable", None, PROXY)),
    ("trusted-xff-all-malformed", PROXY, [("X-Forwarded-For", "unknown, _hidden, 999.1.1.1")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("trusted-forwarded-never-parsed", PROXY, [("Forwarded", f"for={CLIENT}")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    # case 30/31: right-most untrusted hop
    ("30-skip-trusted-hop", PROXY, [("X-Forwarded-For", "198.51.100.9, 198.51.100.6")], (PROXY, PROXY2), False, Attribution("trusted-proxy", "198.51.100.9", PROXY)),
    ("31-rightmost-untrusted", PROXY, [("X-Forwarded-For", "1.1.1.1, 2.2.2.2")], (PROXY,), False, Attribution("trusted-proxy", "2.2.2.2", PROXY)),
    ("A3-leftmost-spoof-ignored", PROXY, [("X-Forwarded-For", "100.64.0.1, 203.0.113.9")], (PROXY,), False, Attribution("trusted-proxy", "203.0.113.9", PROXY)),
    ("skip-loopback-hops", PROXY, [("X-Forwarded-For", f"{CLIENT}, 127.0.0.1, ::1")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("trusted-cidr", PROXY, [("X-Forwarded-For", f"{CLIENT}, 198.51.100.77")], ("198.51.100.0/24",), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("trusted-mapped-peer", f"::ffff:{PROXY}", [("X-Forwarded-For", CLIENT)], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("trusted-mapped-cidr-entry", PROXY, [("X-Forwarded-For", CLIENT)], ("::ffff:198.51.100.0/120",), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-mapped-client-folded", PROXY, [("X-Forwarded-For", f"::ffff:{CLIENT}")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-mapped-proxy-hop-skipped", PROXY, [("X-Forwarded-For", f"{CLIENT}, ::ffff:{PROXY2}")], (PROXY, PROXY2), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-v6-client", PROXY, [("X-Forwarded-For", "2001:db8::1")], (PROXY,), False, Attribution("trusted-proxy", "2001:db8::1", PROXY)),
    ("xff-v6-client-uncompressed", PROXY, [("X-Forwarded-For", "2001:0db8:0000::0001")], (PROXY,), False, Attribution("trusted-proxy", "2001:db8::1", PROXY)),
    ("v6-trusted-proxy", "2001:db8::5", [("X-Forwarded-For", CLIENT)], ("2001:db8::/64",), False, Attribution("trusted-proxy", CLIENT, "2001:db8::5")),
    # ports in XFF entries are stripped
    ("xff-v4-port", PROXY, [("X-Forwarded-For", f"{CLIENT}:51234")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-v6-bracket-port", PROXY, [("X-Forwarded-For", "[2001:db8::1]:443")], (PROXY,), False, Attribution("trusted-proxy", "2001:db8::1", PROXY)),
    ("xff-v6-bracket-no-port", PROXY, [("X-Forwarded-For", "[2001:db8::1]")], (PROXY,), False, Attribution("trusted-proxy", "2001:db8::1", PROXY)),
    ("xff-proxy-with-port-skipped", PROXY, [("X-Forwarded-For", f"{CLIENT}, {PROXY2}:8080")], (PROXY, PROXY2), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    # malformed entries are dropped, not fatal
    ("xff-malformed-right", PROXY, [("X-Forwarded-For", f"{CLIENT}, garbage")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-malformed-mixed", PROXY, [("X-Forwarded-For", f"unknown, {CLIENT},, ,300.1.1.1")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-obfuscated-id", PROXY, [("X-Forwarded-For", f"{CLIENT}, _gazonk")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("xff-whitespace", PROXY, [("X-Forwarded-For", f"  {CLIENT}  ")], (PROXY,), False, Attribution("trusted-proxy", CLIENT, PROXY)),
    # case 32: X-Real-IP fallback only when enabled and XFF yields nothing
    ("32-real-ip-fallback", PROXY, [("X-Real-IP", "198.51.100.4")], (PROXY,), True, Attribution("trusted-proxy", "198.51.100.4", PROXY)),
    ("real-ip-ignored-when-off", PROXY, [("X-Real-IP", "198.51.100.4")], (PROXY,), False, Attribution("unattributable", None, PROXY)),
    ("real-ip-xff-wins", PROXY, [("X-Forwarded-For", CLIENT), ("X-Real-IP", "198.51.100.4")], (PROXY,), True, Attribution("trusted-proxy", CLIENT, PROXY)),
    ("real-ip-after-loopback-xff", PROXY, [("X-Forwarded-For", "127.0.0.1"), ("X-Real-IP", "198.51.100.4")], (PROXY,), True, Attribution("trusted-proxy", "198.51.100.4", PROXY)),
    ("real-ip-loopback-refused", PROXY, [("X-Real-IP", "127.0.0.1")], (PROXY,), True, Attribution("unattributable", None, PROXY)),
    ("real-ip-malformed", PROXY, [("X-Real-IP", "nope")], (PROXY,), True, Attribution("unattributable", None, PROXY)),
    ("real-ip-mapped", PROXY, [("X-Real-IP", "::ffff:198.51.100.4")], (PROXY,), True, Attribution("trusted-proxy", "198.51.100.4", PROXY)),
    ("real-ip-untrusted-peer", CLIENT, [("X-Real-IP", "198.51.100.4")], (PROXY,), True, Attribution("unattributable", None, CLIENT)),
    # trusted loopback proxy (a local Tailscale Serve): attribution works, the XFF client counts
    ("trusted-loopback-proxy", "127.0.0.1", [("X-Forwarded-For", CLIENT)], ("127.0.0.1/32",), False, Attribution("trusted-proxy", CLIENT, "127.0.0.1")),
    ("trusted-loopback-no-evidence", "127.0.0.1", [], ("127.0.0.1/32",), False, Attribution("direct-local", "127.0.0.1", "127.0.0.1")),
    # untrusted peer near a trusted one: exact entries match exactly
    ("exact-entry-no-neighbours", "198.51.100.50", [("X-Forwarded-For", CLIENT)], (PROXY,), False, Attribution("unattributable", None, "198.51.100.50")),
]


@pytest.mark.parametrize("peer, headers, trusted, fallback, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_attribution(peer: str, headers: list[tuple[str, str]], trusted: tuple[str, ...], fallback: bool, expected: Attribution) -> None:
    result = attribute(view(*headers, peer=peer), nets(*trusted), fallback)
    assert result == expected
    assert result.attributable is (expected.kind != "unattributable")


@pytest.mark.parametrize(
    "xff, expected",
    [
        (None, None), ("", None), (" , ,", None), (CLIENT, CLIENT), (f"{CLIENT},{PROXY}", CLIENT),
        (f"{PROXY}", None), (f"1.1.1.1,{CLIENT},{PROXY},127.0.0.1", CLIENT),
        ("[::1]:80, 2001:db8::9", "2001:db8::9"), ("2001:db8::9, [::1]:80", "2001:db8::9"),
    ],
)
def test_client_from_forwarded(xff: str | None, expected: str | None) -> None:
    assert client_from_forwarded(xff, TRUSTED) == expected


def test_only_first_xff_line_is_read() -> None:
    """A repeated X-Forwarded-For is refused by head_problem before attribution; attribution reads one line."""
    v = view(("X-Forwarded-For", CLIENT), ("X-Forwarded-For", "2.2.2.2"), peer=PROXY)
    assert attribute(v, TRUSTED, False).client_ip == CLIENT


HOPS = ["203.0.113.9", "[203.0.113.9", "203.0.113.9]", "[203.0.113.9]", "[203.0.113.9]:80", "203.0.113.9:80", "203.0.113.9:",
        "203.0.113.9:80:90", "::ffff:203.0.113.9", "[::ffff:203.0.113.9]:1", "2001:db8::1", "[2001:db8::1", "2001:db8::1]",
        "[2001:db8::1]:443", "2001:DB8::0:1", " 203.0.113.9 ", "\t203.0.113.9", "203.0.113.9\u00a0", "10.1.1.1", "127.0.0.1",
        "[::1]", "unknown", "", "[]", "[", "1.2.3.4/32", "::ffff:203.0.113.9:80", "[::ffff:203.0.113.9]x", "203.0.113.09",
        "2001:db8::1%1:80", "::ffff:203.0.113.9%x:1", "::ffff:203.0.113.9%x", "fe80::1%eth0", "[fe80::1%eth0]:80", "fe80::1%eth0.5",
        "fe80::1%e_1", "2001:db8::1%", "[203.0.113.9]x]", "[203.0.113.9]:80]", "203.0.113.9:80]", "[[203.0.113.9]]", "1:80",
        "0x7f.1:80"]
FORWARDED = [(hop, None) for hop in HOPS] + [(f"198.51.100.1, {hop}, 10.2.2.2", None) for hop in HOPS] + \
    [("10.1.1.1", hop) for hop in HOPS]


@needs_gateway
def test_the_client_behind_a_trusted_proxy_is_the_one_the_gateway_names() -> None:
    """X-Forwarded-For hops and X-Real-IP read as the gateway's parseIpLiteral reads them: an
    unclosed `[203.0.113.9` named the client here and nothing there, a port on X-Real-IP was
    refused here where the gateway drops it, and `2001:db8::1%1:80` (a zone index that is no
    zone) named a client the gateway drops (red team)."""
    trusted = ("127.0.0.1", "10.0.0.0/8")
    theirs = call_gateway(["net-:resolveClientIp"], """
        answer(input.cases.map(([forwardedFor, realIp]) => gateway.resolveClientIp({remoteAddr: "127.0.0.1", forwardedFor,
            realIp: realIp ?? undefined, trustedProxies: input.trusted, allowRealIpFallback: true}) ?? null));""",
                          {"cases": FORWARDED, "trusted": trusted})
    mine = []
    for xff, real in FORWARDED:
        headers = [("X-Forwarded-For", xff)] + ([("X-Real-IP", real)] if real is not None else [])
        found = attribute(view(*headers, peer="127.0.0.1"), nets(*trusted), True)
        mine.append(found.client_ip if found.attributable else None)
    # A loopback client is none to either; a zone index the gateway keeps, the sidecar folds away.
    theirs = [None if ip in ("127.0.0.1", "::1") else ip.split("%")[0] if ip else ip for ip in theirs]
    assert [case for case, m, t in zip(FORWARDED, mine, theirs) if m != t] == []
    assert theirs.count("203.0.113.9") > 20 and None in theirs
