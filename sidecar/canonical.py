"""Canonicalise an HTTP request target exactly like the gateway does.

The OpenClaw Gateway (2026.9.6 runs on Node 24) routes with::

    new URL(req.url, "http://" + req.headers.host).pathname === "/tools/invoke"

so any spelling that the WHATWG URL parser folds into ``/tools/invoke``
(``/tools/./invoke``, ``/tools/%2e/invoke``, ``/tools\\invoke``,
``http://evil/tools/invoke`` ...) reaches the tools route.  The sidecar must
therefore decide on the *same* pathname.  This module re-implements the part of
the WHATWG URL parser (https://url.spec.whatwg.org/#concept-basic-url-parser)
that matters for a request target resolved against ``http://<host>``:
special schemes only, no ``file:``, no state override, UTF-8 encoding.

Anything we do not model exactly is rejected with :class:`UnsupportedTarget`
(a subclass of :class:`InvalidTarget`) rather than guessed at:

* non-special schemes (``foo:x``, ``mailto:``, ``data:``) and ``file:``;
* hosts that need real IDNA/UTS-46 processing (non-ASCII after
  percent-decoding, or a label starting with ``xn--``).

Pure and stdlib-only on purpose: no mitmproxy import, so it is unit-testable
and reusable.  Callers holding raw request-line bytes should decode them as
latin-1, which is what Node's HTTP parser does to build ``req.url``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .caching import short_call_cache
from .toolpolicy import well_formed

__all__ = ["CanonicalTarget", "InvalidTarget", "UnsupportedTarget", "canonicalize_target"]


class InvalidTarget(ValueError):
    """The target is unusable: ``new URL()`` would throw on it."""


class UnsupportedTarget(InvalidTarget):
    """Node might accept this target, but we deliberately refuse to model it."""


@dataclass(frozen=True)
class CanonicalTarget:
    path: str  # exactly `new URL(raw, base).pathname`
    query: str  # exactly `url.search`: "" or "?..."
    host: str | None  # `url.host` if the target named a host, else None
    raw_is_canonical: bool  # raw == path + query: nothing was rewritten

    @property
    def origin_form(self) -> str:
        """What the sidecar forwards upstream."""
        return self.path + self.query


# --------------------------------------------------------------------------
# Character sets (https://url.spec.whatwg.org/#percent-encoded-bytes)
# --------------------------------------------------------------------------

_SPECIAL_SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME_CHARS = _ALPHA | _DIGITS | frozenset("+-.")

# Bytes (as ints) that get %XX-escaped.  C0 controls and everything > 0x7E
# are in every set; the sets differ only in the printable ASCII they add.
_QUERY_SET = frozenset(b' "#<>')
_SPECIAL_QUERY_SET = _QUERY_SET | frozenset(b"'")
_PATH_SET = _QUERY_SET | frozenset(b"?^`{}")  # `^` since the URL spec change Node 24 ships

# The spec's forbidden host code points (an opaque host may hold none; sidecar.auth reads origins).
FORBIDDEN_HOST_CODE_POINTS = frozenset("\x00\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = FORBIDDEN_HOST_CODE_POINTS | frozenset(chr(c) for c in range(0x20)) | {"%", "\x7f"}

_SINGLE_DOT = {".", "%2e"}
_DOUBLE_DOT = {"..", ".%2e", "%2e.", "%2e%2e"}

_EOF = ""  # sentinel "code point" past the end of input


def _pct_encode(s: str, encode_set: frozenset[int]) -> str:
    """UTF-8 percent-encode; existing ``%xx`` sequences are left as they are."""
    out = []
    for ch in s:
        if " " < ch < "\x7f" and ord(ch) not in encode_set:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _pct_decode(s: str) -> bytes:
    """Percent-decode; malformed ``%`` sequences pass through untouched."""
    data = s.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data) and chr(data[i + 1]) in _HEX and chr(data[i + 2]) in _HEX:
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


# --------------------------------------------------------------------------
# Host parsing (https://url.spec.whatwg.org/#host-parsing), special schemes
# --------------------------------------------------------------------------


def _parse_host(raw: str) -> str:
    """Return the serialised host, or raise InvalidTarget where Node throws."""
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise InvalidTarget("unclosed IPv6 address")
        return "[" + _serialize_ipv6(_parse_ipv6(raw[1:-1])) + "]"
    domain = _pct_decode(raw).decode("utf-8", errors="replace")
    if not domain.isascii() or any(label[:4].lower() == "xn--" for label in domain.split(".")):
        # Needs UTS-46 (mapping, NFC, punycode validation): not modelled.
        raise UnsupportedTarget(f"internationalised host not supported: {raw!r}")
    # For ASCII without xn-- labels, domain-to-ASCII is just lower-casing.
    domain = domain.lower()
    if any(ch in _FORBIDDEN_DOMAIN for ch in domain):
        raise InvalidTarget(f"forbidden code point in host: {raw!r}")
    if _ends_in_a_number(domain):
        return _parse_ipv4(domain)
    return domain


def _parse_ipv4_number(s: str) -> int | None:
    """``0x`` = hex, leading ``0`` = octal, else decimal; None on failure."""
    if not s:
        return None
    radix = 10
    if len(s) >= 2 and s[:2] in ("0x", "0X"):
        s, radix = s[2:], 16
    elif len(s) >= 2 and s[0] == "0":
        s, radix = s[1:], 8
    if not s:
        return 0
    allowed = {16: _HEX, 10: _DIGITS, 8: frozenset("01234567")}[radix]
    if any(ch not in allowed for ch in s):
        return None
    return int(s, radix)


def _ends_in_a_number(domain: str) -> bool:
    """A host whose last label looks numeric must parse as IPv4 (or fail)."""
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and all(ch in _DIGITS for ch in last):
        return True
    return _parse_ipv4_number(last) is not None


def _parse_ipv4(domain: str) -> str:
    """Legacy inet_aton-style IPv4 (``0x7f.1``, ``2130706433``) -> dotted quad."""
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise InvalidTarget(f"too many IPv4 parts: {domain!r}")
    numbers = []
    for part in parts:
        n = _parse_ipv4_number(part)
        if n is None:
            raise InvalidTarget(f"invalid IPv4 part in {domain!r}")
        numbers.append(n)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidTarget(f"IPv4 part out of range: {domain!r}")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _parse_ipv6(s: str) -> list[int]:
    """The spec's IPv6 parser, transcribed step by step (stdlib differs)."""
    addr = [0] * 8
    piece, compress, i, n = 0, None, 0, len(s)

    def bad() -> InvalidTarget:
        return InvalidTarget(f"invalid IPv6 address: [{s}]")

    if s[:1] == ":":
        if s[:2] != "::":
            raise bad()
        i, piece = 2, 1
        compress = piece
    while i < n:
        if piece == 8:
            raise bad()
        if s[i] == ":":
            if compress is not None:
                raise bad()
            i += 1
            piece += 1
            compress = piece
            continue
        value = length = 0
        while length < 4 and i < n and s[i] in _HEX:
            value = value * 16 + int(s[i], 16)
            i += 1
            length += 1
        if i < n and s[i] == ".":  # embedded IPv4 tail, e.g. ::ffff:1.2.3.4
            if length == 0 or piece > 6:
                raise bad()
            i -= length
            seen = 0
            while i < n:
                if seen > 0:
                    if s[i] == "." and seen < 4:
                        i += 1
                    else:
                        raise bad()
                if i >= n or s[i] not in _DIGITS:
                    raise bad()
                octet = None
                while i < n and s[i] in _DIGITS:
                    if octet == 0:  # leading zeros are not allowed here
                        raise bad()
                    octet = int(s[i]) if octet is None else octet * 10 + int(s[i])
                    if octet > 255:
                        raise bad()
                    i += 1
                if octet is None:  # a dot with no digits after it
                    raise bad()
                addr[piece] = addr[piece] * 0x100 + octet
                seen += 1
                if seen in (2, 4):
                    piece += 1
            if seen != 4:
                raise bad()
            break
        if i < n and s[i] == ":":
            i += 1
            if i >= n:
                raise bad()
        elif i < n:
            raise bad()
        addr[piece] = value
        piece += 1
    if compress is not None:
        swaps, piece = piece - compress, 7
        while piece != 0 and swaps > 0:
            j = compress + swaps - 1
            addr[piece], addr[j] = addr[j], addr[piece]
            piece -= 1
            swaps -= 1
    elif piece != 8:
        raise bad()
    return addr


def _serialize_ipv6(addr: list[int]) -> str:
    """Lower-case hex, first longest run (>= 2) of zero pieces becomes ``::``."""
    compress, best, i = None, 1, 0
    while i < 8:
        j = i
        while j < 8 and addr[j] == 0:
            j += 1
        if j - i > best:
            compress, best = i, j - i
        i = max(j, i + 1)
    out, ignore0 = "", False
    for idx, value in enumerate(addr):
        if ignore0 and value == 0:
            continue
        ignore0 = False
        if compress == idx:
            out += "::" if idx == 0 else ":"
            ignore0 = True
            continue
        out += format(value, "x") + (":" if idx != 7 else "")
    return out


# --------------------------------------------------------------------------
# The basic URL parser, restricted to special schemes
# --------------------------------------------------------------------------


@dataclass
class _URL:
    scheme: str = ""
    host: str | None = None  # serialised host incl. ":port" when non-default
    host_from_input: bool = False  # False when copied from the base URL
    path: list[str] | None = None
    query: str | None = None

    @property
    def pathname(self) -> str:
        return "".join("/" + seg for seg in self.path or [])

    @property
    def search(self) -> str:
        return "?" + self.query if self.query else ""


class _Parser:
    """One run of the spec's state machine; each ``_s_*`` method is a state.

    ``self.i`` is the spec's *pointer*; a state that says "decrease pointer by
    1" re-feeds the current code point to the next state.
    """

    def __init__(self, text: str, base: _URL | None):
        text = well_formed(text)  # JS strings are UTF-16; the URL parser takes a USVString
        # Strip leading/trailing C0-control-or-space, drop every tab/newline.
        text = text.strip("".join(chr(c) for c in range(0x21)))
        self.s = text.replace("\t", "").replace("\n", "").replace("\r", "")
        self.base = base
        self.url = _URL(path=[])
        # The spec's buffer, as pieces joined when read: appending to a str attribute copies it
        # each time, which made one long segment quadratic (a 1 MB segment took seconds).
        self._buf: list[str] = []
        self.i = 0
        self.at_sign_seen = False
        self.inside_brackets = False
        self.state = self._s_scheme_start

    def run(self) -> _URL:
        n = len(self.s)
        while True:
            c = self.s[self.i] if self.i < n else _EOF
            self.state(c)
            if self.i >= n:
                return self.url
            self.i += 1

    @property
    def buf(self) -> str:
        return "".join(self._buf)

    @buf.setter
    def buf(self, value: str) -> None:
        self._buf = [value] if value else []

    def _remaining_startswith(self, prefix: str) -> bool:
        return self.s.startswith(prefix, self.i + 1)

    def _copy_base(self, path: bool) -> None:
        """Relative reference: inherit authority (and maybe path/query) from base."""
        assert self.base is not None
        self.url.host = self.base.host
        self.url.host_from_input = False
        if path:
            self.url.path = list(self.base.path or [])
            self.url.query = self.base.query

    # -- scheme ------------------------------------------------------------

    def _s_scheme_start(self, c: str) -> None:
        """A leading ASCII letter may start a scheme; otherwise it's relative."""
        if c and c in _ALPHA:
            self._buf.append(c.lower())
            self.state = self._s_scheme
        else:
            self.state = self._s_no_scheme
            self.i -= 1

    def _s_scheme(self, c: str) -> None:
        """Collect ``[a-z0-9+.-]*:``; anything else means there was no scheme."""
        if c and c in _SCHEME_CHARS:
            self._buf.append(c.lower())
        elif c == ":":
            scheme, self.buf = self.buf, ""
            if scheme not in _SPECIAL_SCHEMES:  # file:, foo:, javascript:, ...
                raise UnsupportedTarget(f"scheme {scheme!r} not supported")
            self.url.scheme = scheme
            if self.base is not None and self.base.scheme == scheme:
                # `http:foo` / `http:/foo` are *relative* to an http base.
                self.state = self._s_special_relative_or_authority
            else:
                self.state = self._s_special_authority_slashes
        else:
            self.buf = ""
            self.state = self._s_no_scheme
            self.i = -1  # start over from the first code point

    def _s_no_scheme(self, c: str) -> None:
        """No scheme: resolve against the base URL (always special here)."""
        if self.base is None:
            raise InvalidTarget("relative URL without a base")
        self.state = self._s_relative
        self.i -= 1

    def _s_special_relative_or_authority(self, c: str) -> None:
        if c == "/" and self._remaining_startswith("/"):
            self.state = self._s_special_authority_ignore_slashes
            self.i += 1
        else:
            self.state = self._s_relative
            self.i -= 1

    def _s_special_authority_slashes(self, c: str) -> None:
        if c == "/" and self._remaining_startswith("/"):
            self.i += 1
        else:
            self.i -= 1
        self.state = self._s_special_authority_ignore_slashes

    def _s_special_authority_ignore_slashes(self, c: str) -> None:
        """Any run of ``/`` and ``\\`` before the authority is skipped."""
        if c not in ("/", "\\"):
            self.state = self._s_authority
            self.i -= 1

    # -- relative references ---------------------------------------------

    def _s_relative(self, c: str) -> None:
        assert self.base is not None
        self.url.scheme = self.base.scheme
        if c in ("/", "\\"):
            self.state = self._s_relative_slash
            return
        self._copy_base(path=True)
        if c == "?":
            self.url.query = ""
            self.state = self._s_query
        elif c == "#":
            self.state = self._s_fragment
        elif c != _EOF:
            # `foo` replaces the last segment of the base path.
            self.url.query = None
            self._shorten_path()
            self.state = self._s_path
            self.i -= 1

    def _s_relative_slash(self, c: str) -> None:
        """``//`` (or ``\\\\``, ``/\\``) makes it scheme-relative: a new host."""
        if c in ("/", "\\"):
            self.state = self._s_special_authority_ignore_slashes
        else:
            self._copy_base(path=False)
            self.state = self._s_path
            self.i -= 1

    # -- authority ---------------------------------------------------------

    def _s_authority(self, c: str) -> None:
        """Skip ``user:pass@`` (last ``@`` wins), then re-read the host part."""
        if c == "@":
            self.at_sign_seen = True
            self.buf = ""  # credentials are not part of url.host
        elif c in (_EOF, "/", "\\", "?", "#"):
            if self.at_sign_seen and self.buf == "":
                raise InvalidTarget("credentials without a host")
            self.i -= len(self.buf) + 1
            self.buf = ""
            self.state = self._s_host
        else:
            self._buf.append(c)

    def _s_host(self, c: str) -> None:
        if c == ":" and not self.inside_brackets:
            if self.buf == "":
                raise InvalidTarget("empty host")
            self.url.host, self.url.host_from_input = _parse_host(self.buf), True
            self.buf = ""
            self.state = self._s_port
        elif c in (_EOF, "/", "\\", "?", "#"):
            self.i -= 1
            if self.buf == "":
                raise InvalidTarget("empty host")
            self.url.host, self.url.host_from_input = _parse_host(self.buf), True
            self.buf = ""
            self.state = self._s_path_start
        else:
            if c == "[":
                self.inside_brackets = True
            elif c == "]":
                self.inside_brackets = False
            self._buf.append(c)

    def _s_port(self, c: str) -> None:
        """Digits only; the scheme's default port is dropped from ``host``."""
        if c and c in _DIGITS:
            self._buf.append(c)
        elif c in (_EOF, "/", "\\", "?", "#"):
            if self.buf:
                port = int(self.buf)
                if port > 65535:
                    raise InvalidTarget(f"port out of range: {port}")
                if port != _SPECIAL_SCHEMES[self.url.scheme]:
                    self.url.host = f"{self.url.host}:{port}"
                self.buf = ""
            self.state = self._s_path_start
            self.i -= 1
        else:
            raise InvalidTarget(f"invalid port character {c!r}")

    # -- path, query, fragment ----------------------------------------------

    def _s_path_start(self, c: str) -> None:
        self.state = self._s_path
        if c not in ("/", "\\"):
            self.i -= 1

    def _shorten_path(self) -> None:
        if self.url.path:
            self.url.path.pop()

    def _s_path(self, c: str) -> None:
        """Split on ``/`` or ``\\``; resolve ``.``/``..`` (also ``%2e``) segments."""
        if c in (_EOF, "/", "\\", "?", "#"):
            assert self.url.path is not None  # a hierarchical URL: the path state is never entered otherwise
            seg = self.buf.lower()
            slash = c in ("/", "\\")
            if seg in _DOUBLE_DOT:
                self._shorten_path()
                if not slash:
                    self.url.path.append("")  # `/a/..` -> `/`, not ``
            elif seg in _SINGLE_DOT:
                if not slash:
                    self.url.path.append("")  # `/a/.` -> `/a/`
            else:
                self.url.path.append(self.buf)
            self.buf = ""
            if c == "?":
                self.url.query = ""
                self.state = self._s_query
            elif c == "#":
                self.state = self._s_fragment
        else:
            self._buf.append(_pct_encode(c, _PATH_SET))

    def _s_query(self, c: str) -> None:
        if c in (_EOF, "#"):
            self.url.query = (self.url.query or "") + _pct_encode(self.buf, _SPECIAL_QUERY_SET)
            self.buf = ""
            if c == "#":
                self.state = self._s_fragment
        else:
            self._buf.append(c)

    def _s_fragment(self, c: str) -> None:
        """The fragment is never sent on; just consume it."""


# Origin-form targets the WHATWG parser returns unchanged: characters outside every encode set,
# no `%` in the path (`%2e` can be a dot segment), no `\\`, no `//` start, a non-empty query
# without `'` (special-query set) and no fragment. The fast path for almost every request.
_PLAIN_TARGET = re.compile(r"(/(?!/)[A-Za-z0-9\-._~!$&()*+,;=:@'/]*)(\?[A-Za-z0-9\-._~!$&()*+,;=:@/?%]+)?")


def _has_dot_segment(path: str) -> bool:
    return "." in path and any(segment in (".", "..") for segment in path.split("/"))


def canonicalize_target(raw: str, base_host: str = "localhost") -> CanonicalTarget:
    """Resolve *raw* like ``new URL(raw, "http://" + base_host)`` in Node 24.

    Raises :class:`InvalidTarget` where Node would throw (including when
    ``"http://" + base_host`` itself is not a valid URL), and its subclass
    :class:`UnsupportedTarget` for inputs we refuse to model (see module doc).
    Note that *base_host* is concatenated verbatim, like the gateway does, so
    a Host header such as ``x/tools/`` gives the base a path that relative
    targets (``*``, ``http:invoke``, ``""``) resolve against.
    """
    if not isinstance(raw, str):
        raise TypeError("raw must be str (decode request-line bytes as latin-1)")
    return _canonicalize(raw, base_host)


# Nearly every request repeats a target and Host seen before, and the answer is a pure function
# of the two: cached (refusals are not), for inputs short enough that a flood of distinct ones
# holds at most a few MB.
@short_call_cache(256, 4096)
def _canonicalize(raw: str, base_host: str) -> CanonicalTarget:
    base = _Parser("http://" + base_host, None).run()  # Node throws on a bad base whatever the target
    plain = _PLAIN_TARGET.fullmatch(raw)
    if plain is not None and not _has_dot_segment(plain.group(1)):
        # Nothing the parser would change: no escapes to apply, no dot segments, no authority.
        return CanonicalTarget(path=plain.group(1), query=plain.group(2) or "", host=None, raw_is_canonical=True)
    url = _Parser(raw, base).run()
    path, query = url.pathname, url.search
    return CanonicalTarget(
        path=path,
        query=query,
        host=url.host if url.host_from_input else None,
        raw_is_canonical=raw == path + query,
    )
