"""A browser's Origin is judged as the gateway's own checkBrowserOrigin judges it, in its Node:
same-origin means the same host *and port* as the Host header, a loopback or private Host is
trusted only as the gateway trusts it, and a loopback Origin passes for a local client only.
The callers' part (who counts as a local client) is pinned in test_auth and test_pipeline."""

from __future__ import annotations

import itertools

import pytest

from sidecar.auth import OriginPolicy, parse_origin
from tests import builders
from tests.gateway.oracle import call_gateway
from tests.gateway.real_gateway import unavailable_reason

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

HOSTS = ["gw.example", "gw.example:8443", "10.0.0.2:18789", "10.0.0.2", "localhost:18790", "127.0.0.1:18790",
         "[::1]:18790", "gw.tail1234.ts.net", "gw.local:18789", "GW.Local:18789", " gw.local:18789 ", "93.184.216.34", "",
         # the edges of the private ranges and names (mutation review: widened, they went unnoticed)
         "172.31.0.1", "172.32.0.1", "100.64.0.1", "100.128.0.1", "evilts.net", "evillocal", "gw", "::1", "[::1]",
         "LOCALHOST:18790", "localhostX:18790", "localhost.:18790"]
ORIGINS = ["https://gw.example", "https://gw.example:8443", "http://gw.example:8443", "http://10.0.0.2:18789",
           "http://10.0.0.2:9999", "http://10.0.0.2", "http://localhost:18790", "http://localhost:3000",
           "http://127.0.0.1:18790", "http://[::1]:18790", "https://gw.tail1234.ts.net", "https://gw.tail1234.ts.net:444",
           "http://gw.local:18789", "http://gw.local", "http://93.184.216.34", "https://evil.example", "null",
           "http://172.31.0.1", "http://172.32.0.1", "http://100.64.0.1", "http://100.128.0.1", "https://evilts.net",
           "http://evillocal", "http://gw", "http://evillocalhost:3000", "http://localhost.:3000"]


def test_the_origin_verdict_is_the_gateways_for_every_host_and_client() -> None:
    cases = list(itertools.product(ORIGINS, HOSTS, (False, True), (False, True)))
    theirs = call_gateway(["origin-check-:checkBrowserOrigin"], """
        answer(input.map(([origin, requestHost, isLocalClient, allowHostHeaderOriginFallback]) => {
          const verdict = gateway.checkBrowserOrigin(
            { origin, allowedOrigins: [], requestHost, isLocalClient, allowHostHeaderOriginFallback });
          return verdict.ok ? null : verdict.reason;
        }));""", cases)
    mine = [OriginPolicy((), host_header_fallback=fallback).refusal(builders.view(("Origin", origin), host=host),
                                                                    local_client=local)
            for origin, host, local, fallback in cases]
    differ = [(case, m, t) for case, m, t in zip(cases, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(cases)} differ, first: {differ[:5]}"
    admitted = {case for case, verdict in zip(cases, theirs) if verdict is None}
    assert 40 <= len(admitted) < len(cases) // 2
    # each way in is exercised: the port must match, the fallback widens, a local client widens
    assert ("http://10.0.0.2:9999", "10.0.0.2:18789", False, True) not in admitted
    assert ("https://gw.example", "gw.example", False, True) in admitted
    assert ("https://gw.example", "gw.example", False, False) not in admitted
    assert ("http://localhost:3000", "gw.example", True, False) in admitted
    assert ("http://localhost:3000", "gw.example", False, False) not in admitted


SCHEMES = ["http", "HTTPS", "ws", "wss", "ftp", "foo", "git+ssh", "chrome-extension", "file"]
AUTHORITIES = [
    "h", "H.Example", "h.", "a..b", ".", "localhost", "LOCALHOST.", "127.1", "1.2.3.4", "0x7f.1", "1.2.3.256", "4294967295",
    "h:", "h:0", "h:080", "h:65535", "h:65536", "h:+1", "h:1a", "h:-1", "h:99999999999999999999", "a:b:c",
    "[", "]", "a]", "[::1", "[::1]", "[::1]:8", "[::1]x", "[1.2.3.4]", "[fe80::1%25eth0]",
    "@h", "u@h", ":@h", "u:p@h", "@@h", "a%41", "a%2f", "a%zz", "a b", "é", "\u00a0x", "xn--p1ai", "xn--zz",
    "*", "a,b", "a;b", "a!b", "a'b", "a$b", "a&b", "a=b", "a(b)", "a~b", "a|b", "a^b", "a<b", "a`b", "a{b}",
    # DEL, encoded in an opaque host; A-labels beside a Unicode label (mutation review: both unpinned)
    "a\x7fb", "xn--p1ai.é", "é.xn--p1ai",
]
RAW_ORIGINS = [f"{scheme}://{authority}{slash}" for scheme, authority, slash in itertools.product(SCHEMES, AUTHORITIES, ("", "/"))]


def test_an_origin_is_parsed_as_the_gateways_parseorigin_parses_it() -> None:
    """parseOrigin (Node's URL under a shape check) is not exported: checkBrowserOrigin, which starts
    with it, tells its result. An Origin the sidecar reads is allowed there by the sidecar's origin
    as the allow-list, and by the sidecar's host as the Host header; one the sidecar refuses is
    unparseable there too, but for the stricter cases (`file:`, a special host not in ASCII)."""
    mine = [parse_origin(raw) for raw in RAW_ORIGINS]
    cases = [[raw, ["*"] if parsed is None else [parsed.origin], parsed.host if parsed else ""]
             for raw, parsed in zip(RAW_ORIGINS, mine)]
    theirs = call_gateway(["origin-check-:checkBrowserOrigin"], """
        const check = (origin, allowedOrigins, requestHost) => gateway.checkBrowserOrigin(
          { origin, allowedOrigins, requestHost, isLocalClient: false, allowHostHeaderOriginFallback: true }).ok;
        answer(input.map(([origin, allowed, host]) => [check(origin, allowed, ""), host ? check(origin, [], host) : null]));""",
                          cases)
    differ = [raw for raw, parsed, (by_origin, by_host) in zip(RAW_ORIGINS, mine, theirs)
              if (parsed is None and by_origin) or (parsed is not None and not (by_origin and by_host))]
    # the stricter cases: every file: origin the gateway reads, and a Unicode host of a special scheme
    assert [raw for raw in differ if not raw.startswith("file:")] == [
        f"{scheme}://{authority}{slash}" for scheme in SCHEMES[:5] for authority in ("é", "xn--p1ai.é", "é.xn--p1ai")
        for slash in ("", "/")]
    assert sum(parsed is not None for parsed in mine) > len(RAW_ORIGINS) // 3
