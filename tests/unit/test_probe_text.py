"""sidecar/probe/text.py: what a target wrote, shown in a report as text that stays on its line,
keeps its odd bytes visible and acts on no terminal or CI runner reading it."""

from __future__ import annotations

import pytest

from sidecar.probe.text import printable, visible


@pytest.mark.parametrize("text, shown", [
    (" ~", " ~"),  # the printable ASCII range, both ends
    ("\x1f\x7f", "\\x1f\\x7f"),  # just outside it
    ("\u00e9\u00ff\u0100", "\\xe9\\xff\u0100"),  # Latin-1 as bytes would be; past it, a letter is a letter
    ("\u202e\u2066", "\\u202e\\u2066"),  # bidirectional overrides: would reorder the rest of the line
    ("\U000e0041\U0001f600", "\\U000e0041\U0001f600"),  # a tag character is no glyph; an emoji is one
    ("\uffff", "\\uffff"),  # the last code point four hex digits hold
])
def test_a_character_is_kept_only_when_printable_and_past_latin_1(text: str, shown: str) -> None:
    assert visible(text) == shown


@pytest.mark.parametrize("extra, suffix", [(0, ""), (1, "... (1 more characters)")])
def test_a_value_is_shown_up_to_2000_characters_then_counted(extra: int, suffix: str) -> None:
    assert visible("x" * (2000 + extra)) == "x" * 2000 + suffix
    assert printable(b"y" * (2000 + extra)) == "y" * 2000 + suffix.replace("characters", "bytes")


@pytest.mark.parametrize("text, shown", [
    ("::error::owned", "\\x3a:error::owned"),
    (" \t::add-mask::x\nline::two", " \t\\x3a:add-mask::x\\x0aline::two"),  # one line: a break is no new start
    ("a ##[error]b ##[group]", "a ##\\x5berror]b ##\\x5bgroup]"),
])
def test_a_ci_workflow_command_loses_its_first_colon_or_bracket_and_nothing_else(text: str, shown: str) -> None:
    """GitHub Actions runs `::name::` at a line's start (after blanks) and `##[name]` anywhere."""
    assert visible(text) == shown


def test_printed_bytes_keep_their_lines_and_each_line_is_made_inert() -> None:
    assert printable(b"HTTP/1.1 200 OK\r\n  ::warning::x\r\nsecond\nline ##[debug]") == \
        "HTTP/1.1 200 OK\n  \\x3a:warning::x\nsecond\\n\nline ##\\x5bdebug]"
