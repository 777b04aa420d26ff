"""Wire bytes and recorded values as readable, single-purpose text for reasons and reports:
whatever was odd on the wire (a bare LF, a NUL, a non-ASCII byte) stays visible.

What a target wrote must not act on whoever reads the report either: no terminal escape, no line
break or bidirectional override of another alphabet, and no CI workflow command (GitHub Actions
runs `::name::` at a line's start, leading blanks aside, and legacy `##[name]` anywhere in one):
their first bracket or colon is written as \\xNN."""

from __future__ import annotations

import re

TEXT_LIMIT = 2000
_LEGACY_COMMAND = re.compile(r"##\[")
_LINE_COMMAND = re.compile(r"^([ \t]*):(?=:)", re.MULTILINE)


def _char(char: str) -> str:
    if char == "\t" or " " <= char <= "~":
        return char
    if ord(char) < 256:
        return f"\\x{ord(char):02x}"
    return char if char.isprintable() else f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def _inert(text: str) -> str:
    """No workflow command a CI runner would read in the text's lines."""
    return _LINE_COMMAND.sub(r"\1\\x3a", _LEGACY_COMMAND.sub(r"##\\x5b", text))


def visible(text: str, limit: int = TEXT_LIMIT) -> str:
    """Control characters as \\xNN (a line break included): one value stays on one line."""
    shown = _inert("".join(_char(c) for c in text[:limit]))
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
    return _inert("".join(out))
