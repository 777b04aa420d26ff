"""The request line and head as the gateway's HTTP parser (Node's llhttp) reads them, byte by byte.

mitmproxy splits the line on any whitespace and takes any token as a method and any byte in the
target; the sidecar then forwards a line it wrote itself. So a line the gateway refuses with 400
(a tab, a form feed or a bare CR between the parts, a space after the version, a control or
non-ASCII byte in the target, `FOO` or `PRI` as the method, a TLS ClientHello) was judged and
relayed in a repaired spelling. These rules were read off the real gateway one byte at a time
(tests/e2e/test_real_gateway_routes.py keeps a sample of them).
"""

from __future__ import annotations

import re

# Node's `http.METHODS` (Node 24): the methods llhttp parses in a request. Case-sensitive.
NODE_METHODS = frozenset({
    "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK", "M-SEARCH",
    "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "NOTIFY", "OPTIONS", "PATCH", "POST",
    "PROPFIND", "PROPPATCH", "PURGE", "PUT", "QUERY", "REBIND", "REPORT", "SEARCH", "SOURCE",
    "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE",
})
# Method, one or more spaces, a target of visible ASCII, one or more spaces, a version llhttp knows
# (mitmproxy takes any digit.digit: HTTP/1.2 or 9.9 went on to be judged, where Node answers 400), CRLF.
_LINE = re.compile(rb"(?P<method>[A-Z-]+) +[\x21-\x7e]+ +HTTP/(?:0\.9|1\.[01]|2\.0)\r\n")
_BLANK = b"\r\n"
# The first letters of the methods llhttp knows (Node's, and RTSP's FLUSH, which it also waits on).
_METHOD_INITIALS = frozenset(b"ABCDFGHLMNOPQRSTU")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Control bytes Node refuses anywhere in a head (HTAB aside), a CR not ending a line among them;
# mitmproxy strips them from the ends of a value (a VT, FF or CR there) and relayed the rest.
_CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?=[^\n])")
# Node takes a final `chunked` followed by spaces only: after a tab the coding is another token, not
# chunked, and the request is refused. mitmproxy strips the tab and reads the body as chunked.
_CHUNKED_THEN_TAB = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked *\t[ \t]*\r\n", re.IGNORECASE)


def blank_prefix(data: bytes) -> int:
    """How many CR and LF bytes come before the request line: llhttp skips them (a client may send
    a CRLF after a body), where mitmproxy stalls on them."""
    return len(data) - len(data.lstrip(_BLANK))


def refused(data: bytes) -> bool:
    """Whether Node answers 400 to the request `data` begins (the head so far, blank prefix
    removed). Decided at the first byte when no method starts with it (TLS and SSLv2
    ClientHellos, a space, a tab), otherwise once the line is complete."""
    if not data:
        return False
    if data[0] not in _METHOD_INITIALS:
        return True
    end = data.find(b"\n")
    if end < 0:
        return False
    line = _LINE.fullmatch(data, 0, end + 1)
    return line is None or line["method"].decode("ascii") not in NODE_METHODS


def head_refused(data: bytes, judged: int, head_end: int) -> bool:
    """Whether Node answers 400 to the head `data[:head_end]` (complete or not), its first
    `judged` bytes found clean already: a bare LF as a line ending (mitmproxy accepts it), a
    control byte, `chunked<TAB>`, or a request line it would not parse (`refused`). Line-wide
    checks read each line once, when it is complete, so a head arriving a byte at a time costs
    no more than one arriving whole. The last byte of an unfinished head must be left unjudged:
    a CR there is refused or not by the byte after it."""
    if _BARE_LF.search(data, judged, head_end) or _CONTROL_BYTE.search(data, judged, head_end):
        return True
    line_start = data.rfind(b"\n", 0, judged) + 1
    if line_start == 0 and refused(data):  # the request line, not judged yet
        return True
    complete = data.rfind(b"\n", line_start, head_end) + 1
    return complete > line_start and _CHUNKED_THEN_TAB.search(data, max(line_start - 2, 0), complete) is not None
