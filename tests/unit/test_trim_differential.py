"""Header values and config entries are trimmed as the gateway trims them: JavaScript's trim,
which keeps characters Python's str.strip() takes (\\x85 and \\x1c-\\x1f, legal in a header value
as Node reads it) and takes one it keeps (a byte-order mark). A token, a forwarded hop or an
allowed origin followed by one of them is another value to the gateway, so it must be one to the
sidecar (red team: `allowedOrigins: ["*\\x85"]` let any origin in here, none there): the gateway's
own functions, in its Node, against the sidecar's."""

from __future__ import annotations

import random

import pytest

from sidecar.attribution import client_from_forwarded
from sidecar.auth import OriginPolicy, bearer_credential
from sidecar.ipaddrs import parse_network
from sidecar.routes import capability_rewrite, normalize_base_path
from sidecar.rpc import _client_kind
from tests import builders
from tests.gateway.oracle import call_gateway
from tests.gateway.real_gateway import unavailable_reason

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

EDGES = ["", " ", "\t", "\xa0", "\x85", "\x1c", "\x1f", " \x85"]
HOPS = ["203.0.113.9", "10.0.0.7", "127.0.0.1", "::ffff:203.0.113.9", "[2001:db8::1]:443", "203.0.113.9:80", "bogus", "",
        "::127.0.0.1", "::010.0.0.7"]
TRUSTED = "10.0.0.0/8"


def forwarded_chains() -> list[str]:
    rng = random.Random(5)
    return [",".join(rng.choice(EDGES) + rng.choice(HOPS) + rng.choice(EDGES) for _ in range(rng.randint(1, 3)))
            for _ in range(2000)]


def test_the_client_is_the_hop_the_gateway_takes_from_x_forwarded_for() -> None:
    chains = forwarded_chains()
    theirs = call_gateway(["net-:resolveClientIp"], f"""
        answer(input.map((forwardedFor) => gateway.resolveClientIp(
          {{ remoteAddr: "10.0.0.1", forwardedFor, trustedProxies: ["{TRUSTED}"] }}) ?? null));""", chains)
    mine = [client_from_forwarded(chain, [parse_network(TRUSTED)]) for chain in chains]
    differ = [(chain, m, t) for chain, m, t in zip(chains, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(chains)} differ, first: {differ[:5]}"
    assert sum(t is None for t in theirs) >= 100 and len(set(theirs)) >= 3  # hops taken, skipped, none at all


def authorization_values() -> list[str]:
    return [pre + scheme + gap + token + post for pre in EDGES for scheme in ("Bearer", "bearer", "BEARER", "Basic")
            for gap in (" ", "  ", "\t") for token in ("tok", "t o k", "") for post in EDGES]


def test_the_bearer_token_is_the_one_the_gateway_reads() -> None:
    values = authorization_values()
    theirs = call_gateway(["getBearerToken"], """
        answer(input.map((authorization) => gateway.getBearerToken({ headers: { authorization } }) ?? null));""", values)
    mine = [bearer_credential(builders.view(auth=value)) for value in values]
    differ = [(value, m, t) for value, m, t in zip(values, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(values)} differ, first: {differ[:5]}"
    assert "tok\x85" in theirs and "tok" in theirs


ORIGIN_ENTRIES = [pre + entry + post for pre in ("", " ", "\ufeff", "\x85") for entry in ("*", "https://a.example", "HTTPS://A.example")
                  for post in ("", " ", "\x85", "\x1c", "\ufeff", "\u3000", "\u200b")]
ORIGINS = ["https://a.example", "https://evil.example", "HTTPS://A.EXAMPLE", "https://a.example:443", "null"]


def test_an_allowed_origin_admits_the_origins_the_gateway_admits() -> None:
    cases = [(entry, origin) for entry in ORIGIN_ENTRIES for origin in ORIGINS]
    theirs = call_gateway(["origin-check-:checkBrowserOrigin"], """
        answer(input.map(([entry, origin]) => gateway.checkBrowserOrigin(
          { origin, allowedOrigins: [entry], requestHost: "gw.internal:18789", isLocalClient: false }).ok));""", cases)
    mine = [OriginPolicy([entry]).permits(builders.view(("Origin", origin), host="gw.internal:18789"), local_client=False)
            for entry, origin in cases]
    differ = [(case, m, t) for case, m, t in zip(cases, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(cases)} differ, first: {differ[:5]}"
    assert 50 <= sum(theirs) < len(cases)


def test_the_control_ui_base_path_is_the_gateways() -> None:
    values = [pre + path + post for pre in ("", " ", "\ufeff", "\x85") for path in ("", "/", "ui", "/ui", "/ui/", "/ui//", "//", "/a/b/")
              for post in ("", " ", "\x85", "\ufeff", "\u2028")]
    theirs = call_gateway(["control-ui-shared-:normalizeControlUiBasePath"], """
        answer(input.map((value) => gateway.normalizeControlUiBasePath(value)));""", values)
    mine = [normalize_base_path(value) for value in values]
    differ = [(value, m, t) for value, m, t in zip(values, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(values)} differ, first: {differ[:5]}"


def test_a_capability_in_the_path_is_the_one_the_gateway_reads() -> None:
    """`/__openclaw__/cap/<capability>/<rest>`: the capability is trimmed (a `%1C` one is a
    capability there, a byte-order mark none), and a blank one makes the path malformed (401)."""
    segments = [pre + core + post for pre in ("", "%20", "%1C", "%EF%BB%BF", "%C2%85", "%E3%80%80") for core in ("cap", "")
                for post in ("", "%20", "%1F", "%EF%BB%BF", "%C2%A0")]
    paths = [f"/__openclaw__/cap/{segment}/tools/invoke" for segment in segments]
    theirs = call_gateway(["plugin-node-capability-:normalizePluginNodeCapabilityScopedUrl"], """
        answer(input.map((path) => {
          const r = gateway.normalizePluginNodeCapabilityScopedUrl(path);
          return [r.malformedScopedPath ? path : r.pathname, r.malformedScopedPath];
        }));""", paths)
    mine = [[routed, malformed] for routed, _, malformed in map(capability_rewrite, paths)]
    differ = [(path, m, t) for path, m, t in zip(paths, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(paths)} differ, first: {differ[:5]}"
    assert 10 <= sum(malformed for _, malformed in theirs) < len(paths)


def test_a_connects_client_kind_is_the_one_the_gateway_reads() -> None:
    """The hints of a refused connect follow the client's mode and id, trimmed as the gateway trims them."""
    clients = [{"mode": pre + mode + post, "id": pre + client_id + post} for pre in EDGES + ["\ufeff"] for post in EDGES + ["\ufeff"]
               for mode in ("cli", "CLI", "webchat", "ui") for client_id in ("openclaw-control-ui", "openclaw-tui", "other")]
    theirs = call_gateway(["message-channel-:isGatewayCliClient", "message-channel-:isOperatorUiClient",
                           "message-channel-:isWebchatClient"], """
        answer(input.map((client) => gateway.isGatewayCliClient(client) ? "cli"
          : gateway.isOperatorUiClient(client) || gateway.isWebchatClient(client) ? "ui" : "other"));""", clients)
    mine = [_client_kind(client) for client in clients]
    differ = [(client, m, t) for client, m, t in zip(clients, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(clients)} differ, first: {differ[:5]}"
    assert set(theirs) == {"cli", "ui", "other"}


IDN_ORIGINS = ["https://app.xn--p1ai", "https://APP.XN--P1AI", "https://xn--bcher-kva.example:8443",
               "wss://xn--d1acpjx3f.xn--p1ai", "https://app.xn--p1ai.", "http://xn--80ak6aa92e.com"]
IDN_REFUSED_HERE = ["https://xn--i-7iq.ws"]  # an emoji name: UTS-46 takes it, IDNA 2008 (the idna package) does not
IDN_INVALID = ["https://xn--zz.example", "https://xn--.example", "https://xn--a.example", "https://a.xn--ls8h-.example",
               "https://xn--p1ai:99999", "https://xn--p1ai@x.example"]


def test_an_internationalised_origin_is_allowed_where_the_gateway_allows_it() -> None:
    """An allow-listed origin spelt with IDNA A-labels passes as at the gateway (red team: the
    sidecar refused `https://app.xn--p1ai` outright); one the gateway cannot parse never passes,
    and one only UTS-46 takes is refused here, the strict side."""
    cases = IDN_ORIGINS + IDN_REFUSED_HERE + IDN_INVALID
    theirs = call_gateway(["origin-check-:checkBrowserOrigin"], """
        answer(input.map((origin) => gateway.checkBrowserOrigin(
          { origin, allowedOrigins: [origin.toLowerCase()], requestHost: "gw.internal:18789", isLocalClient: false }).ok));""",
                          cases)
    mine = [OriginPolicy([origin.lower()]).permits(builders.view(("Origin", origin), host="gw.internal:18789"), local_client=False)
            for origin in cases]
    verdicts = dict(zip(cases, zip(mine, theirs)))
    assert all(verdicts[origin] == (True, True) for origin in IDN_ORIGINS), verdicts
    assert all(verdicts[origin] == (False, True) for origin in IDN_REFUSED_HERE), verdicts
    assert all(not m for m, _ in (verdicts[origin] for origin in IDN_INVALID)), verdicts
