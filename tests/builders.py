"""Builders shared by the tests: a request head for the pure core, a config file on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidecar.view import RequestView

PEER = "203.0.113.7"

Header = tuple[str | bytes, str | bytes]


def _raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def view(*headers: Header, method: str = "POST", target: str = "/tools/invoke", peer: str = PEER,
         host: str | None = None, auth: str | None = None) -> RequestView:
    """A request head as the proxy hands it to the core: a `Host` line and an `Authorization` line
    when given, then `headers` in order with repeats kept (text as latin-1, bytes as they are)."""
    lines = [(b"Host", _raw(host))] if host is not None else []
    if auth is not None:
        lines.append((b"Authorization", _raw(auth)))
    lines.extend((_raw(name), _raw(value)) for name, value in headers)
    return RequestView(method, target, tuple(lines), peer)


def write_config(path: Path, document: dict[str, Any] | str) -> Path:
    """Write a config file (text as given; a dict as JSON, which is YAML too) and return its path."""
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path
