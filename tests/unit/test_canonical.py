"""Tests for sidecar.canonical: table cases plus a differential check vs Node.

The gateway routes on ``new URL(req.url, "http://" + Host).pathname``; the
differential tests run the real Node parser over odd targets and require the
sidecar's canonicaliser to agree byte for byte (or to throw when Node throws).
Node is a hard requirement on test machines: the tests fail, not skip,
without it.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from sidecar.canonical import (
    CanonicalTarget,
    InvalidTarget,
    UnsupportedTarget,
    canonicalize_target,
)
from tests.node import gateway_node

DATA = Path(__file__).resolve().parent.parent / "data" / "odd_targets.json"
TOOLS = "/tools/invoke"

# Node side of the differential tests: [[target, baseHost], ...] on stdin.
NODE_SCRIPT = r"""
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = cases.map(([t, baseHost]) => {
  try {
    const u = new URL(t, "http://" + baseHost);
    return { pathname: u.pathname, search: u.search, host: u.host };
  } catch (e) {
    return { error: true };
  }
});
process.stdout.write(JSON.stringify(out));
"""


def node_resolve(cases: list[tuple[str, str]]) -> list[dict]:
    """Resolve all (target, base_host) pairs in ONE node subprocess."""
    proc = subprocess.run(
        [gateway_node(), "-e", NODE_SCRIPT],
        input=json.dumps([list(c) for c in cases]).encode("utf-8"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    assert len(result) == len(cases)
    return result


def diff_against_node(cases: list[tuple[str, str]]) -> tuple[list[str], int]:
    """Return (mismatch descriptions, number of deliberately unsupported cases)."""
    mismatches, unsupported = [], 0
    for (target, base_host), expected in zip(cases, node_resolve(cases), strict=True):
        try:
            got = canonicalize_target(target, base_host)
        except UnsupportedTarget:
            unsupported += 1  # deliberate refusal: allowed whatever Node does
            continue
        except InvalidTarget as exc:
            if not expected.get("error"):
                mismatches.append(f"{target!r} @ {base_host!r}: we raised ({exc}), node gave {expected}")
            continue
        if expected.get("error"):
            mismatches.append(f"{target!r} @ {base_host!r}: node throws, we gave {got}")
            continue
        # host is None when inherited from the base; Node reports the base host then.
        ours = {
            "pathname": got.path,
            "search": got.query,
            "host": got.host if got.host is not None else expected_base_host(base_host),
        }
        if ours != expected:
            mismatches.append(f"{target!r} @ {base_host!r}: ours {ours} != node {expected}")
    return mismatches, unsupported


def expected_base_host(base_host: str) -> str:
    return canonicalize_target("http://" + base_host).host or ""


# ---------------------------------------------------------------------------
# 1. Table-driven unit tests
# ---------------------------------------------------------------------------

# (raw target, path, query, host)
CASES = [
    # Spellings that the gateway folds into /tools/invoke.
    ("/tools/invoke", TOOLS, "", None),
    ("/tools/./invoke", TOOLS, "", None),
    ("/tools/%2e/invoke", TOOLS, "", None),
    ("/tools/%2E/invoke", TOOLS, "", None),
    ("/tools/%2E%2E/tools/invoke", TOOLS, "", None),
    ("/x/../tools/invoke", TOOLS, "", None),
    ("/x/.%2e/tools/invoke", TOOLS, "", None),
    ("/x/%2e./tools/invoke", TOOLS, "", None),
    ("/tools/invoke/%2e%2e/invoke", TOOLS, "", None),
    ("/tools\\invoke", TOOLS, "", None),
    ("/tools/invoke#frag", TOOLS, "", None),
    ("/tools/invoke?x=1", TOOLS, "?x=1", None),
    ("/tools/invoke?x=/health", TOOLS, "?x=/health", None),
    ("/.//tools/invoke", "//tools/invoke", "", None),
    ("/tools/in\tvo\nke\r", TOOLS, "", None),
    ("  /tools/invoke\x00 ", TOOLS, "", None),
    ("http://evil/tools/invoke", TOOLS, "", "evil"),
    ("HTTP://EVIL/tools/invoke", TOOLS, "", "evil"),
    ("https://h/tools/invoke", TOOLS, "", "h"),
    ("http:/tools/invoke", TOOLS, "", None),
    ("http:tools/invoke", TOOLS, "", None),
    ("tools/invoke", TOOLS, "", None),
    ("\\\\evil\\tools\\invoke", TOOLS, "", "evil"),
    # Near misses: these do NOT reach the tools route.
    ("//tools/invoke", "/invoke", "", "tools"),
    ("/tools/invoke/", "/tools/invoke/", "", None),
    ("/TOOLS/invoke", "/TOOLS/invoke", "", None),
    ("/tools//invoke", "/tools//invoke", "", None),
    ("/tools%2finvoke", "/tools%2finvoke", "", None),
    ("/tools/invoke;a=b", "/tools/invoke;a=b", "", None),
    ("/%74ools/invoke", "/%74ools/invoke", "", None),
    ("/tools/;/invoke", "/tools/;/invoke", "", None),
    # Misc edge cases.
    ("", "/", "", None),
    ("*", "/*", "", None),
    ("?a#b", "/", "?a", None),
    ("/a b?c d", "/a%20b", "?c%20d", None),
    ("/q?'\"<>`{}", "/q", "?%27%22%3C%3E`{}", None),
    ("/\"<>`{}^|", "/%22%3C%3E%60%7B%7D%5E|", "", None),  # `^` escaped since Node 24
    ("/\u00e9/\u2603", "/%C3%A9/%E2%98%83", "", None),
    ("/a^b", "/a%5Eb", "", None),  # alone, each escaped path character still gets escaped
    ("/a`b", "/a%60b", "", None),
    ("/a{b", "/a%7Bb", "", None),
    ("/a}b", "/a%7Db", "", None),
    ("/%zz", "/%zz", "", None),
    ("/a/b/../../..", "/", "", None),
    ("/..", "/", "", None),
    ("/a/.", "/a/", "", None),
    ("/a/..", "/", "", None),
    ("/x?", "/x", "", None),
    ("http://evil:80/x", "/x", "", "evil"),
    ("http://evil:8080/x", "/x", "", "evil:8080"),
    ("https://evil:443/x", "/x", "", "evil"),
    ("http://u:p@Evil.Example:0080", "/", "", "evil.example"),
    ("http://0x7f.1/", "/", "", "127.0.0.1"),
    ("http://[0:0:0:0:0:ffff:1.2.3.4]/", "/", "", "[::ffff:102:304]"),
    ("http://ev%69l/", "/", "", "evil"),
    # Every special scheme is read with its own default port (ws 80, wss 443, ftp 21).
    ("ws://evil/tools/invoke", TOOLS, "", "evil"),
    ("wss://evil/tools/invoke", TOOLS, "", "evil"),
    ("ftp://evil/tools/invoke", TOOLS, "", "evil"),
    ("ws://evil:80/x", "/x", "", "evil"),
    ("ws://evil:443/x", "/x", "", "evil:443"),
    ("wss://evil:443/x", "/x", "", "evil"),
    ("wss://evil:80/x", "/x", "", "evil:80"),
    ("ftp://evil:21/x", "/x", "", "evil"),
    ("ftp://evil:80/x", "/x", "", "evil:80"),
    ("http://evil:21/x", "/x", "", "evil:21"),
    # A scheme-relative target takes the base's scheme, and so its default port.
    ("//evil:8080/x", "/x", "", "evil:8080"),
    ("//evil:80/x", "/x", "", "evil"),
    ("\\\\evil:8080\\x", "/x", "", "evil:8080"),
    # Hex digits of either case, in IPv4 parts, IPv6 pieces and host escapes; octal IPv4 parts.
    ("http://0xa.0xB.0xc.0xD/", "/", "", "10.11.12.13"),
    ("http://0xA.0xb.0xC.0xd/", "/", "", "10.11.12.13"),
    ("http://[a:b:c:d:A:B:C:D]/", "/", "", "[a:b:c:d:a:b:c:d]"),
    ("http://%4A%4b%4C%4d%6a%6B%6c%6D/", "/", "", "jklmjklm"),
    ("http://0XA.0Xb/", "/", "", "10.0.0.11"),
    ("http://012.05.06.0/", "/", "", "10.5.6.0"),  # octal parts
    # IPv6 serialisation: only a run of two or more zero pieces becomes `::`, the first longest one.
    ("http://[1:0:0:2:3:4:5:6]/", "/", "", "[1::2:3:4:5:6]"),
    ("http://[1:0:2:3:4:5:6:7]/", "/", "", "[1:0:2:3:4:5:6:7]"),
    ("http://[1:0:0:2:0:0:3:4]/", "/", "", "[1::2:0:0:3:4]"),
    ("http://[1::2]/", "/", "", "[1::2]"),
    ("http://[::1:2:3:4:5:6:7]/", "/", "", "[0:1:2:3:4:5:6:7]"),  # `::` may stand for one piece
    ("http://[1::3:4:5:6:7:8]/", "/", "", "[1:0:3:4:5:6:7:8]"),
    ("http://[1:2:3:4:5:6:0:0]/", "/", "", "[1:2:3:4:5:6::]"),  # a zero run ending the address
    ("http://[1:2:3:4:5:6:7::]/", "/", "", "[1:2:3:4:5:6:7:0]"),
    # After a special scheme other than the base's, slashes are optional before the host.
    ("https:x/y", "/y", "", "x"),
    ("https:/x", "/", "", "x"),
    ("https:/a/b", "/b", "", "a"),
    ("http:/a/b", "/a/b", "", None),
    ("http:x/y", "/x/y", "", None),
    # Any mix of `/` and `\` before the authority is skipped.
    ("https:\\\\evil\\x", "/x", "", "evil"),
    ("//\\evil/x", "/x", "", "evil"),
    # The authority ends at the first `/`, `\`, `?` or `#`: an `@` after it names no host.
    ("http://a\\b@c/x", "/b@c/x", "", "a"),
    ("http://a?b@c/x", "/", "?b@c/x", "a"),
    ("http://a#b@c/x", "/", "", "a"),
    ("http://u@x/", "/", "", "x"),
    # ... and so does the port.
    ("http://evil:8080\\x", "/x", "", "evil:8080"),
    ("http://evil:8080?q", "/", "?q", "evil:8080"),
    ("http://evil:8080#f", "/", "", "evil:8080"),
    # The largest port and IPv4-tail part are still in range.
    ("http://evil:65535/x", "/x", "", "evil:65535"),
    ("http://[::1.2.3.255]/", "/", "", "[::102:3ff]"),
]


@pytest.mark.parametrize(("raw", "path", "query", "host"), CASES)
def test_table(raw: str, path: str, query: str, host: str | None) -> None:
    got = canonicalize_target(raw)
    assert (got.path, got.query, got.host) == (path, query, host)
    assert got.origin_form == path + query
    assert got.raw_is_canonical == (raw == path + query)


# Targets Node's URL parser throws on.
INVALID = [
    "http://",
    "http://:80/x",
    "http://user@/x",
    "http://evil:65536/x",
    "http://evil:8a/x",
    "http://1.2.3.4.5/",
    "http://foo.1/",
    "http://256.0.0.1/",
    "http://[::1/",
    "http://[1::2::3]/",
    "http://ev%2fil/",
    "http://a^b/",
    "http://a%zzb/",
    "http://[1:2:3:4:5:6:7:8::]/",  # a ninth piece, even an empty one
    "http://[1:2:3:4:5:6:7::8]/",  # `::` must stand for at least one piece
    "http://[1:2:3:4:5:6::7:8]/",
    "http://a\x7fb/",
    "http://a%7Fb/",
    "http://[1:2:3:4:5:6:7:8:]/",  # a trailing single `:`
    "http://[1::2:]/",
    "http://[::1.2.3.]/",  # an IPv4 tail ending in a dot
    "http://[::1.2x3.4]/",
    "http://[1:2:3:4:5:6:1.2.3.4.5]/",  # a fifth IPv4 part past the last piece
    "http://a%1Fb/",
]


@pytest.mark.parametrize("raw", INVALID)
def test_invalid_like_node(raw: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        canonicalize_target(raw)
    assert not isinstance(info.value, UnsupportedTarget)


@pytest.mark.parametrize(
    "raw", ["a:b", "file:///tools/invoke", "javascript:alert(1)", "http://\u00e9vil/", "http://xn--abc/", "http://a%FFb/"]
)
def test_deliberately_unsupported(raw: str) -> None:
    with pytest.raises(UnsupportedTarget):
        canonicalize_target(raw)


@pytest.mark.parametrize("char", sorted(set(" #%/:<>?@[\\]^|")))
def test_host_refuses_a_forbidden_code_point_even_percent_encoded(char: str) -> None:
    """The host is percent-decoded before Node checks it: `a%3Ab` (`a:b`) is no host, not `a:b`."""
    with pytest.raises(InvalidTarget) as info:
        canonicalize_target(f"http://a%{ord(char):02X}b/")
    assert not isinstance(info.value, UnsupportedTarget)


@pytest.mark.parametrize("scheme", ["a+b", "a-b", "a.b", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"])
def test_any_scheme_spelling_is_read_as_a_scheme(scheme: str) -> None:
    """`<scheme>:x` is an opaque URL to Node (pathname `x`), never the relative path `/<scheme>:x`:
    every letter starts a scheme and `+ - .` continue one, and a non-special scheme is refused."""
    with pytest.raises(UnsupportedTarget):
        canonicalize_target(f"{scheme}:x")


def test_bytes_are_refused_with_how_to_decode_them() -> None:
    with pytest.raises(TypeError, match="latin-1"):
        canonicalize_target(b"/tools/invoke")  # type: ignore[arg-type]


def test_raw_is_canonical_and_frozen() -> None:
    plain = canonicalize_target("/tools/invoke?a=b")
    assert plain.raw_is_canonical and plain.origin_form == "/tools/invoke?a=b"
    assert not canonicalize_target("/tools/./invoke").raw_is_canonical
    assert not canonicalize_target("http://localhost/tools/invoke").raw_is_canonical
    with pytest.raises(AttributeError):
        plain.path = "/x"  # type: ignore[misc]
    assert isinstance(plain, CanonicalTarget)


def test_base_host_is_concatenated_like_the_gateway() -> None:
    # A Host header carrying a path changes what relative targets resolve to.
    assert canonicalize_target("*", "x/tools/").path == "/tools/*"
    assert canonicalize_target("http:invoke", "x/tools/").path == TOOLS
    assert canonicalize_target("", "x/tools/invoke").path == TOOLS
    assert canonicalize_target("/a", "x/tools/").path == "/a"
    # ... and a Host header carrying a query gives it to the targets that keep the base's query.
    assert canonicalize_target("", "h?q").query == "?q"
    assert canonicalize_target("#f", "h?q").query == "?q"
    assert canonicalize_target("?a", "h?q").query == "?a"
    assert canonicalize_target("x", "h?q").query == ""
    with pytest.raises(InvalidTarget):
        canonicalize_target("/a", "")


# ---------------------------------------------------------------------------
# 2. Differential test against Node over the odd-target corpus
# ---------------------------------------------------------------------------


def test_the_tables_are_nodes_reading() -> None:
    """Each row of CASES and INVALID was checked against Node by hand; here against the Node at
    hand, so a row written wrong, or a Node that reads a target otherwise, shows."""
    mismatches, unsupported = diff_against_node([(raw, "localhost") for raw, *_ in CASES] + [(raw, "localhost") for raw in INVALID])
    assert not mismatches and not unsupported, "\n".join(mismatches)


def test_odd_targets_match_node() -> None:
    corpus = json.loads(DATA.read_text(encoding="utf-8"))
    assert len(corpus) >= 80 and all(item["source"] for item in corpus)
    # A few Host-header quirks ride along in the same node call.
    quirks = [
        ("*", "x/tools/"),
        ("http:invoke", "x/tools/"),
        ("", "x/tools/invoke"),
        ("/a", "x/tools/"),
        ("/a", "x:8080"),
        ("?q", "[::1]:80"),
        ("x", "EX.com."),
    ]
    cases = [(item["target"], "localhost") for item in corpus] + quirks
    mismatches, unsupported = diff_against_node(cases)
    assert not mismatches, "\n".join(mismatches)
    assert unsupported <= 8, f"too many deliberately unsupported targets: {unsupported}"


# ---------------------------------------------------------------------------
# 3. Property-style test: random targets from a hostile alphabet, vs Node
# ---------------------------------------------------------------------------

ALPHABET = ["/", ".", "%2e", "%2E", "\\", "tools", "invoke", "?", "#", "a", "%2f", ";", " ",
            "..", "//", "\t", ":", "@", "http:", "%"]
SEGMENTS = ["tools", "invoke", ".", "..", "%2e", "%2E", ".%2e", "%2E.", "%2e%2e",
            "a", "", "%2f", ";", " ", "\t"]


def random_targets(rng: random.Random, count: int) -> list[str]:
    """Free-form strings over ALPHABET, random segment paths, and paths aimed at the route."""
    targets = {"/tools/invoke"}
    while len(targets) < count:
        prefix = rng.choice(["/", "/", "/", "\\", "//", "http://h/", ""])
        roll = rng.random()
        if roll < 0.4:
            body = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10)))
        else:
            segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(1, 6))]
            if roll < 0.7:  # aim at the route: junk, tools, no-op segments, invoke
                noop = [".", "%2e", "%2E", "a/..", "b/%2e%2e", "c/.%2E"]
                segs = segs[:2] + ["tools"] + rng.sample(noop, rng.randint(0, 2)) + ["invoke"]
            body = "".join(seg + rng.choice(["/", "/", "/", "\\"]) for seg in segs[:-1]) + segs[-1]
            body += rng.choice(["", "", "?x=1", "#f", "?a#b", "/"])
        targets.add(prefix + body)
    return sorted(targets)


def test_random_targets_match_node() -> None:
    cases = [(t, "localhost") for t in random_targets(random.Random(20240611), 400)]
    mismatches, _ = diff_against_node(cases)
    assert not mismatches, "\n".join(mismatches[:50])
    # Sanity: the generator really produced route-reaching non-canonical spellings.
    sneaky = [t for t, _ in cases if canonicalize_target_or_none(t) == TOOLS and t != TOOLS]
    assert len(sneaky) >= 5, sneaky


IPV4_NUMBERS = ["0", "00", "08", "09", "010", "0377", "0400", "07", "1", "127", "255", "256", "65535", "65536",
                "16777215", "16777216", "4294967295", "4294967296", "0x", "0X", "0x7f", "0xff", "0x100", "0xffffff",
                "0x1000000", "0xffffffff", "0x100000000"]
IPV4_OTHERS = ["0xg", "1e1", "a", "x", ""]
IPV6_PIECES = ["", "0", "1", "ffff", "FFFF", "10000", "::", ":", "1.2.3.4", "01.2.3.4", "1.2.3", "256.1.1.1",
               "1.2.3.4.5", "0.0.0.0", "1.02.3.4", "g"]


def random_hosts(rng: random.Random, count: int) -> list[str]:
    """Dotted numbers in every radix and size around each limit, and bracketed IPv6 with IPv4 tails."""
    hosts: set[str] = set()
    while len(hosts) < count:
        if rng.random() < 0.7:
            pieces = IPV4_NUMBERS if rng.random() < 0.8 else IPV4_NUMBERS + IPV4_OTHERS
            host = ".".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
            host += rng.choice(["", "", "", "."])
        else:
            host = "[" + ":".join(rng.choice(IPV6_PIECES) for _ in range(rng.randint(2, 9))) + "]"
        hosts.add(host)
    return sorted(hosts)


def test_random_hosts_match_node() -> None:
    """The host decides same-origin and loopback checks: it is read as URL reads it, radix, range
    and IPv4 tail included, or refused where URL refuses it."""
    edges = ["[1:2:3:4:5:6:7:1.2.3.4]", "[1:2:3:4:5:6:1.2.3.4]", "[::1:2:3:4:5:6:1.2.3.4]", "[1:2:3:4:5:6:1.2.3.4:1]",
             "[::1.2.3.4]", "[::ffff:1.2.3]", "[1::1.2.3.4.5]"]
    cases = [(f"http://{host}/x", "localhost") for host in edges + random_hosts(random.Random(20261204), 1500)]
    mismatches, _ = diff_against_node(cases)
    assert not mismatches, "\n".join(mismatches[:50])
    parsed = [t for t, _ in cases if canonicalize_target_or_none(t) is not None]
    assert len(parsed) >= 150 and len(cases) - len(parsed) >= 300, len(parsed)


def canonicalize_target_or_none(raw: str) -> str | None:
    try:
        return canonicalize_target(raw).path
    except InvalidTarget:
        return None


def test_the_fast_path_agrees_with_the_parser() -> None:
    """Plain targets skip the state machine: for them it must give exactly the parser's answer."""
    import random

    from sidecar import canonical as canonical_module
    from sidecar.canonical import _Parser

    rng = random.Random(20261130)
    alphabet = "abcXYZ019-._~!$&()*+,;=:@'/?%."
    base = _Parser("http://h", None).run()
    fast_paths = 0
    for _ in range(5000):
        raw = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        try:
            url = _Parser(raw, base).run()
        except InvalidTarget:
            with pytest.raises(InvalidTarget):
                canonicalize_target(raw, "h")
            continue
        slow = (url.pathname, url.search, raw == url.pathname + url.search)
        fast = canonicalize_target(raw, "h")
        assert (fast.path, fast.query, fast.raw_is_canonical) == slow, raw
        fast_paths += canonical_module._PLAIN_TARGET.fullmatch(raw) is not None
    assert fast_paths > 1000  # the generator really exercises the fast path

