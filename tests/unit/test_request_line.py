"""The request line against Node's own HTTP parser (the gateway's llhttp, run in the gateway's Node).

Every byte at each place of a request line, the methods, and a seeded batch of random lines go to
Node's `HTTPParser` in one run (no sockets); for each, the sidecar's `request_line.refused` must
say what Node says: an error is a refusal, a parsed head or a wait for more bytes is not. One
deliberate difference: a line without a version (Node reads it as HTTP/0.9) is refused, as
mitmproxy also refuses it; forwarding it would mean framing a 0.9 request.

Node is a hard requirement: the test fails (never skips) when it is missing.
"""

from __future__ import annotations

import random

from sidecar.request_line import NODE_METHODS, blank_prefix, head_refused, refused
from tests.node import node_http_parse

TAIL = b"Host: x\r\n\r\n"


def node_verdicts(heads: list[bytes]) -> tuple[list[str], list[str]]:
    """For each head: "error", "more" (Node waits), or the version of a parsed head."""
    parsed, methods = node_http_parse(heads)
    return ["error" if p["error"] else p["version"] or "more" for p in parsed], methods


def sidecar_refuses(head: bytes) -> bool:
    """As compat.limit_request_heads applies it: blank lines skipped, then the line judged."""
    return refused(head[blank_prefix(head):])


def corpus() -> list[bytes]:
    heads = []
    for byte in map(lambda b: bytes([b]), range(256)):
        heads += [byte + b"GET /healthz HTTP/1.1\r\n", b"GET" + byte + b"/healthz HTTP/1.1\r\n",
                  b"GET /healthz?a" + byte + b"b HTTP/1.1\r\n", b"GET /healthz" + byte + b"HTTP/1.1\r\n",
                  b"GET /healthz HTTP/1.1" + byte + b"\r\n", byte]
    heads += [m.encode() + b" /tools/invoke HTTP/1.1\r\n" for m in sorted(NODE_METHODS)]
    heads += [m + b" / HTTP/1.1\r\n" for m in (b"get", b"Post", b"FOO", b"GETX", b"GE", b"PRI", b"M_SEARCH", b"-")]
    heads += [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x80\x2e\x01\x00\x02", b"\r\n\r\nGET / HTTP/1.1\r\n",
              b"\rGET / HTTP/1.1\r\n", b"GET   /  HTTP/1.1\r\n", b"GET / HTTP/1.1 \r\n", b"GET / HTTP/1.1\r\r\n"]
    # llhttp knows four versions, spelled exactly (0.9 spelled out has its own test: the rule above
    # is for a line with no version).
    heads += [b"GET / HTTP/%d.%d\r\n" % (major, minor) for major in range(10) for minor in range(10) if (major, minor) != (0, 9)]
    heads += [b"GET / http/1.1\r\n", b"GET / HTTp/1.1\r\n", b"GET / HTTP/1x1\r\n", b"GET / HTTP/11\r\n", b"GET / HTTP/1.10\r\n"]
    rng = random.Random(20261201)
    pieces = [b"GET", b"POST", b"get", b" ", b"  ", b"\t", b"\r", b"\x00", b"\x7f", b"\xff", b"/", b"/tools/invoke",
              b"?", b"#", b"%", b"*", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"http/1.1", b"X"]
    for _ in range(3000):
        heads.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 7))) + b"\r\n")
    return [head + TAIL if head.endswith(b"\n") else head for head in heads]


def test_the_request_line_is_refused_exactly_where_node_refuses_it() -> None:
    heads = corpus()
    verdicts, _ = node_verdicts(heads)
    disagreements = []
    for head, node in zip(heads, verdicts):
        expected = node == "error" or node == "0.9"  # 0.9: see the module docstring
        if sidecar_refuses(head) != expected:
            disagreements.append((head[:60], node))
    assert not disagreements, f"{len(disagreements)} of {len(heads)} differ, e.g. {disagreements[:10]}"
    assert verdicts.count("error") > 1000 and verdicts.count("1.1") > 100  # the corpus covers both sides


def test_the_method_list_is_the_one_node_parses() -> None:
    _, methods = node_verdicts([])
    assert set(methods) - {"PRI"} == NODE_METHODS  # PRI only opens HTTP/2's preface, refused by Node


def test_a_tls_client_hello_is_refused_at_its_first_byte() -> None:
    assert refused(b"\x16") and refused(b"\x80") and refused(b" ")
    assert not refused(b"G") and not refused(b"") and not refused(b"GET /tools/inv")


def test_blank_lines_before_the_request_line_are_counted() -> None:
    assert blank_prefix(b"\r\n\n\rGET") == 4
    assert blank_prefix(b"GET /\r\n") == 0


def head_corpus() -> list[bytes]:
    """Whole heads with one odd byte or spelling in a header line (the request line is plain)."""
    heads = []
    for byte in map(lambda b: bytes([b]), [*range(0, 32), 127, 128, 255]):
        heads += [b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nX-A: a" + byte + b"b\r\n\r\n",
                  b"POST /tools/invoke HTTP/1.1\r\nHost: x" + byte + b"\r\n\r\n"]
    heads += [b"POST / HTTP/1.1\nHost: x\r\n\r\n", b"POST / HTTP/1.1\r\nHost: x\n\r\n",
              b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n",
              b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked  \r\n\r\n",
              b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked \t \r\n\r\n",
              b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\tfoo, chunked\r\n\r\n",  # chunked after all
              b"POST / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n",
              b"POST  /\tHTTP/1.1\r\nHost: x\r\n\r\n", b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\r\n\r\n",
              b"POST / HTTP/1.1 \r\nHost: x\r\n\r\n"]
    return heads


def test_a_head_is_refused_exactly_where_node_refuses_it_however_it_arrives() -> None:
    """`head_refused`, judged on the whole head and a byte at a time (each call told how much the
    earlier ones found clean), against Node's parser."""
    heads = head_corpus()
    verdicts, _ = node_verdicts(heads)
    differ = []
    for head, node in zip(heads, verdicts):
        whole = head_refused(head, 0, len(head))
        judged, dribbled = 0, False
        for end in range(1, len(head) + 1):
            if head_refused(head[:end], judged, end):  # what has arrived so far, the request line included
                dribbled = True
                break
            judged = end - 1  # as compat.limit_request_heads leaves it: a last CR is judged by what follows
        if (node == "error") != whole or whole != dribbled:
            differ.append((head, node, whole, dribbled))
    assert not differ, f"{len(differ)} of {len(heads)} differ, e.g. {differ[:5]}"
    assert 20 < verdicts.count("error") < len(heads)


def test_the_bytes_after_the_head_are_left_to_the_body() -> None:
    """The buffer judged may hold the start of the body, where a bare LF or a control byte is no
    fault in the head; the same bytes in the head are."""
    head = b"POST /tools/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n"
    data = head + b"a\nb\x00c\x0b\rd"
    assert not head_refused(data, 0, len(head))
    assert head_refused(data, 0, len(data))


def test_a_version_spelled_0_9_is_read_as_node_reads_it() -> None:
    """Node parses `HTTP/0.9` spelled out as it does 1.0, headers and Content-Length included; only
    a line with no version at all is refused (the module docstring)."""
    assert not refused(b"POST / HTTP/0.9\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert refused(b"POST /\r\nHost: x\r\n\r\n")
