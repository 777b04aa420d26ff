"""Chunked request bodies against Node's own HTTP parser (the gateway's llhttp, in the gateway's Node).

Every byte at each place of a chunk-size line, extension and trailer, sizes with leading zeros,
and extensions around Node's 16 KiB limit (quoted values with separators in them too) go to
Node's `HTTPParser` in one run; the sidecar's
reader (addons/compat: the strict size-line pattern and `_NodeChunkedReader`) must end, refuse or
wait exactly where Node does. Node is a hard requirement: the test fails when it is missing.
"""

from __future__ import annotations

import h11
import pytest
from h11._receivebuffer import ReceiveBuffer

from addons import compat
from tests.node import node_http_parse

HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
TAIL = b"\r\nx\r\n0\r\n\r\n"  # the rest of a one-byte chunk and the last chunk


def node_verdicts(bodies: list[bytes]) -> list[str]:
    """For each body: Node's error code, "complete", or "more" (Node waits)."""
    parsed, _ = node_http_parse([HEAD + body for body in bodies])
    return [p["error"] or ("complete" if p["complete"] else "more") for p in parsed]


def sidecar_verdict(body: bytes) -> str:
    compat.refuse_trailers()
    compat.strict_chunk_headers()
    reader, buf = compat._http1.ChunkedReader(), ReceiveBuffer()
    buf += body
    try:
        while (event := reader(buf)) is not None:
            if isinstance(event, h11.EndOfMessage):
                return "complete"
    except h11.ProtocolError:
        return "HPE_CHUNK_EXTENSIONS_OVERFLOW" if reader.line_too_long else "error"
    return "more"


def corpus() -> list[bytes]:
    quote, backslash = b'"', b"\\"
    bodies = []
    for byte in (bytes([b]) for b in range(256)):
        bodies += [byte + TAIL, b"1" + byte + TAIL, b"1;" + byte + TAIL, b"1;a" + byte + TAIL, b"1;a=" + byte + TAIL,
                   b"1;a=" + quote + byte + quote + TAIL, b"1;a=" + quote + backslash + byte + quote + TAIL,
                   b"1\r\nx" + byte + b"\r\n0\r\n\r\n"]
    bodies += [b"0" * n + b"1" + TAIL for n in (15, 16, 17, 40)] + [b"f" * n + b"\r\n" for n in (15, 16, 17)]
    bodies += [ext + b"b" * n + TAIL for ext in (b"1;", b"1;a=", b"1;abc=", b"1;x;y=") for n in range(16380, 16386)]
    # a quoted value counts whole, its quotes and any `;` or `=` inside included
    bodies += [b'1;a="' + (fill * n)[:n] + b'"' + after + TAIL for fill in (b";", b"=", b";=", b"b") for after in (b"", b';c="d"')
               for n in range(16374, 16384)]
    bodies += [b'1;a="";b=' + b"c" * n + TAIL for n in range(16378, 16384)]
    # a line longer than 16 KiB whose names and values are not: separators are not counted
    bodies += [b"1" + b";a" * 9000 + TAIL, b"1" + b";a=b" * 6000 + TAIL]
    bodies += [b"1" + ext + TAIL for ext in (b" ;a=b", b"; a=b", b";a =b", b";a= b", b";a;b", b";", b";;", b";a=;", b";=")]
    bodies += [b"0\r\n\n", b"0\r\n\r\n", b"0\r\n\r", b"5\r\nhello\r\n0\r\n\r\n"]
    return bodies


def test_a_chunked_body_is_read_where_node_reads_it() -> None:
    bodies = corpus()
    disagreements = []
    for body, node in zip(bodies, node_verdicts(bodies), strict=True):
        expected = node if node in ("complete", "more", "HPE_CHUNK_EXTENSIONS_OVERFLOW") else "error"
        if sidecar_verdict(body) != expected:
            disagreements.append((body[:48], node))
    assert not disagreements, f"{len(disagreements)} of {len(bodies)} differ, e.g. {disagreements[:10]}"


def test_trailers_are_refused_at_their_first_byte_although_node_reads_them() -> None:
    """The one deliberate difference: nothing after the body may reach the gateway (corpus B6)."""
    assert node_verdicts([b"0\r\nX-Trailer: 1\r\n\r\n"]) == ["complete"]
    for byte in (bytes([b]) for b in range(256)):
        assert sidecar_verdict(b"0\r\n" + byte) == ("more" if byte == b"\r" else "error"), byte
        assert sidecar_verdict(b"0\r\n\r" + byte) == ("complete" if byte == b"\n" else "error"), byte


@pytest.mark.parametrize("start, fill", [(b"20;a=", b"b"), (b"2", b"0"), (b"0\r\nX-T: ", b"a")])
def test_a_line_that_never_ends_is_refused_within_nodes_limit(start: bytes, fill: bytes) -> None:
    """h11 waits for a whole line without limit; the reader gives up within 16 KiB and a read."""
    compat.refuse_trailers()
    compat.strict_chunk_headers()
    reader, buf = compat._http1.ChunkedReader(), ReceiveBuffer()
    buf += start
    with pytest.raises(h11.ProtocolError):
        for _ in range(64):
            assert reader(buf) is None
            buf += fill * 1024
    assert len(buf) < compat.MAX_CHUNK_LINE_BYTES + 2048


def test_a_size_line_past_its_bound_is_refused_whether_it_ends_in_the_same_read_or_not() -> None:
    """The bound is on the line, not on how it arrives: ending it in the read that crosses the
    bound must not let it through (Node would read the leading zeros; the sidecar stops at the bound)."""
    bound = compat.MAX_CHUNK_LINE_BYTES
    assert sidecar_verdict(b"0" * (bound - 1)) == "more"
    assert sidecar_verdict(b"0" * bound) == "HPE_CHUNK_EXTENSIONS_OVERFLOW"
    assert sidecar_verdict(b"0" * bound + b"1" + TAIL) == "HPE_CHUNK_EXTENSIONS_OVERFLOW"


def test_a_chunks_data_arriving_in_pieces_is_never_read_as_a_size_line() -> None:
    """A chunk larger than a size line's bound, its data in two reads, is data to its end."""
    compat.refuse_trailers()
    compat.strict_chunk_headers()
    reader, buf = compat._http1.ChunkedReader(), ReceiveBuffer()
    buf += b"10000\r\na"
    data = bytes(reader(buf).data)
    buf += b"a" * 0xFFFF + b"\r\n0\r\n\r\n"
    while not isinstance(event := reader(buf), h11.EndOfMessage):
        data += bytes(event.data)
    assert data == b"a" * 0x10000
