"""RequestView: the head the pipeline judges, read as the gateway's Node reads it."""

from __future__ import annotations

import pytest

from sidecar.view import RequestView

HEADERS = ((b"Host", b"gw.example"), (b"X-Empty", b""), (b"Authorization", b"Bearer T"), (b"x-a", b"1"), (b"X-A", b"2"))


def serialized(view: RequestView) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in view.headers)
    return f"{view.method} {view.target} HTTP/1.1\r\n".encode() + lines + b"\r\n"


@pytest.mark.parametrize("method, target, headers", [
    ("POST", "/tools/invoke", HEADERS),
    ("GET", "/", ()),
    ("OPTIONS", "*", ((b"Host", b"x"),)),
])
def test_the_head_size_is_the_head_as_sent(method: str, target: str, headers: tuple[tuple[bytes, bytes], ...]) -> None:
    """What the 16 KiB bound is held to, byte for byte (it once missed the space after the method)."""
    view = RequestView(method, target, headers, "192.0.2.1")
    assert view.head_size() == len(serialized(view))


@pytest.mark.parametrize("value, declared", [
    (None, 0),
    (b"0", 0),
    (b"35", 35),
    (b" 35\t", 35),  # optional whitespace around it, as Node reads it
    (b"007", 7),
    (b"+35", None),  # int() would take these; Node refuses them
    (b"-1", None),
    (b"3 5", None),
    (b"", None),
    (b"\xb2", None),  # "²": str.isdigit() says yes, int() says no
    (b"\xd9\xa3", None),  # "٣" as UTF-8 bytes read as latin-1: not ASCII digits
])
def test_the_declared_length_counts_only_ascii_digits(value: bytes | None, declared: int | None) -> None:
    headers = () if value is None else ((b"Content-Length", value),)
    assert RequestView("POST", "/tools/invoke", headers, "192.0.2.1").declared_length() == declared


def test_a_chunked_body_declares_no_length_whatever_content_length_says() -> None:
    headers = ((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5"))
    assert RequestView("POST", "/tools/invoke", headers, "192.0.2.1").declared_length() is None


def test_headers_are_found_by_any_spelling_and_the_first_value_is_the_one_read() -> None:
    view = RequestView("POST", "/tools/invoke", HEADERS, "192.0.2.1")
    assert view.first("X-A") == view.first("x-a") == "1" and view.values("x-A") == [b"1", b"2"]
    assert view.has("x-empty") and view.first("x-empty") == "" and not view.has("x-missing")
    assert view.first("x-missing") is None and view.values("x-missing") == []
    assert view.names == ["host", "x-empty", "authorization", "x-a"]
    assert view.host == "gw.example"


def test_values_are_latin_1_text_as_node_reads_header_bytes() -> None:
    view = RequestView("GET", "/", ((b"Host", b"  GW.\xc9xample \t"), (b"X-B", b"\xff")), "192.0.2.1")
    assert view.host == "gw.\xe9xample"  # trimmed as JavaScript trims, lower-cased
    assert view.first("x-b") == "\xff"
    assert RequestView("GET", "/", (), "192.0.2.1").host == ""


def test_a_view_cannot_be_changed_once_judged() -> None:
    """Every stage, the audit line and the upstream request read the same head."""
    view = RequestView("POST", "/tools/invoke", HEADERS, "192.0.2.1")
    with pytest.raises(AttributeError):
        view.target = "/other"  # type: ignore[misc]
