"""A browser's Origin is judged as the gateway's own checkBrowserOrigin judges it, in its Node:
same-origin means the same host *and port* as the Host header, a loopback or private Host is
trusted only as the gateway trusts it, and a loopback Origin passes for a local client only.
The callers' part (who counts as a local client) is pinned in test_auth and test_pipeline."""

from __future__ import annotations

import itertools

import pytest

from sidecar.auth import OriginPolicy
from tests import builders
from tests.gateway.oracle import call_gateway
from tests.gateway.real_gateway import unavailable_reason

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

HOSTS = ["gw.example", "gw.example:8443", "10.0.0.2:18789", "10.0.0.2", "localhost:18790", "127.0.0.1:18790",
         "[::1]:18790", "gw.tail1234.ts.net", "gw.local:18789", "GW.Local:18789", " gw.local:18789 ", "93.184.216.34", "",
         # the edges of the private ranges and names (mutation review: widened, they went unnoticed)
         "172.31.0.1", "172.32.0.1", "100.64.0.1", "100.128.0.1", "evilts.net", "evillocal", "gw"]
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
