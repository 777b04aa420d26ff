"""Wire bytes and recorded values as readable, single-purpose text for reasons and reports:
whatever was odd on the wire (a bare LF, a NUL, a non-ASCII byte) stays visible."""

from __future__ import annotations

TEXT_LIMIT = 2000


def _char(char: str) -> str:
    return char if char == "\t" or " " <= char <= "~" else f"\\x{ord(char):02x}" if ord(char) < 256 else char


def visible(text: str, limit: int = TEXT_LIMIT) -> str:
    """Control characters as \\xNN (a line break included): one value stays on one line."""
    shown = "".join(_char(c) for c in text[:limit])
    return shown + (f"... ({len(text) - limit} more characters)" if len(text) > limit else "")


def printable(data: bytes, limit: int = TEXT_LIMIT) -> str:
    """Bytes as lines: CRLF as a line break, a bare LF as `\\n` plus a break, other control and
    non-ASCII bytes as \\xNN."""
    out: list[str] = []
    text = data[:limit].decode("latin-1")
    i = 0
    while i < len(text):
        if text.startswith("\r\n", i):
            out.append("\n")
            i += 2
            continue
        out.append("\\n\n" if text[i] == "\n" else _char(text[i]))
        i += 1
    if len(data) > limit:
        out.append(f"... ({len(data) - limit} more bytes)")
    return "".join(out)
