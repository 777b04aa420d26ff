"""Rate-limit storage URIs: which schemes the sidecar supports, their `limits` async form, and
their text with any password masked.

Plain string handling (no `limits`, no limiter), so `sidecar.config` validates and prints the
configured URI without importing the limiter; `sidecar.ratelimit` builds its storage from it.
"""

from __future__ import annotations

import re

import urllib.parse
from typing import Final

__all__ = ["SUPPORTED_STORAGE_SCHEMES", "async_storage_uri", "carries_password", "redact_uri"]

SUPPORTED_STORAGE_SCHEMES: Final = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


def _is_password(name: str) -> bool:
    """redis-py reads a `?password=` query argument as a password (its name percent-decoded;
    any case is masked)."""
    return urllib.parse.unquote_plus(name).lower() == "password"


def _password_spans(uri: str) -> tuple[list[tuple[int, int]], bool]:
    """Where `uri` may hold a password, as (start, end) offsets of the text to mask, and whether
    it holds one (a user part without ':' is masked too, but redis-py reads it as a user name).

    Read both ways, each masked. On the raw text, the user part runs to the last '@' (a '/', '?'
    or '#' in a password ends a URL parser's netloc early, and the password would then be read as
    the host or the port) and the query starts past it. As redis-py's URL parser reads it, the
    query starts at the first '?' (the netloc holds none): an '@' in a query's password is the
    password's, where the raw reading ends the user part after it and would show the rest. Either
    query runs to the end (a password-named field in a fragment is masked too)."""
    start = uri.find("://") + 3 if "://" in uri else 0
    spans: list[tuple[int, int]] = []
    at = uri.rfind("@", start)
    colon = uri.find(":", start, at) if at >= 0 else -1
    if at >= 0:
        spans.append((colon + 1 if colon >= 0 else start, at))
    found = colon >= 0
    for mark in {uri.find("?", max(at, start)), uri.find("?", start)}:
        if mark < 0:
            continue
        offset = mark + 1
        for field in uri[offset:].split("&"):
            name, equals, _ = field.partition("=")
            if equals and _is_password(name):
                found = True
                spans.append((offset + len(name) + 1, offset + len(field)))
            offset += len(field) + 1
    return spans, found


def redact_uri(uri: str) -> str:
    """The URI with any password (in its user part or its query) replaced, fit for logs and
    error messages."""
    masked: list[list[int]] = []
    for begin, end in sorted(_password_spans(uri)[0]):
        if masked and begin <= masked[-1][1]:
            masked[-1][1] = max(masked[-1][1], end)
        else:
            masked.append([begin, end])
    shown, kept = "", 0
    for begin, end in masked:
        shown += uri[kept:begin] + "***"
        kept = end
    return shown + uri[kept:]


def carries_password(uri: str) -> bool:
    """Whether the URI holds a password: `redis://:pw@host`, `redis://user:pw@host`, `?password=`."""
    return _password_spans(uri)[1]


def async_storage_uri(uri: str) -> str:
    """Map a configured storage URI (``memory://``, ``redis://`` ...) to its `limits` async form.

    Raises ValueError naming the scheme when it is not one the sidecar supports.
    """
    if not isinstance(uri, str) or "://" not in uri:
        # Echoed only up to the first `:/@?`: past it, where the URI is malformed, a password
        # cannot be told apart to be masked (`redis:/:pw@host`).
        shown = re.split(r"[:/@?]", uri, maxsplit=1)[0] if isinstance(uri, str) else uri
        raise ValueError(f"rate-limit storage URI must look like scheme://..., got {shown!r}...")
    scheme, rest = uri.split("://", 1)
    scheme = scheme.strip().lower()
    if scheme not in SUPPORTED_STORAGE_SCHEMES:
        raise ValueError(
            f"unsupported rate-limit storage scheme {scheme!r} in {redact_uri(uri)!r}; "
            f"use one of: {', '.join(s + '://' for s in SUPPORTED_STORAGE_SCHEMES)}"
        )
    return f"async+{scheme}://{rest}"
