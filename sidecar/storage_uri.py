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
    """redis-py reads a `?password=` query argument as a password (any case is masked)."""
    return name.lower() == "password"


def _split(uri: str) -> tuple[str, str | None, str, list[tuple[str, str]]]:
    """`scheme://`, the user part (None without `@`), the rest, and the query's pairs; read on
    the raw text, as a URL parser would not: a '/', '?' or '#' in a password ends its netloc
    early, and the password would then be read as the host or the port."""
    scheme, sep, rest = uri.partition("://")
    userinfo, at, rest = rest.rpartition("@")
    query = rest.partition("?")[2]
    return scheme + sep, userinfo if at else None, rest, urllib.parse.parse_qsl(query, keep_blank_values=True)


def redact_uri(uri: str) -> str:
    """The URI with any password (in its user part or its query) replaced, fit for logs and
    error messages."""
    scheme, userinfo, rest, query = _split(uri)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{rest}" if colon else f"***@{rest}"
    if any(_is_password(name) for name, _ in query):
        head = rest.partition("?")[0]
        rest = head + "?" + "&".join(f"{name}=***" if _is_password(name) else f"{name}={value}" for name, value in query)
    return scheme + rest


def carries_password(uri: str) -> bool:
    """Whether the URI holds a password: `redis://:pw@host`, `redis://user:pw@host`, `?password=`."""
    _, userinfo, _, query = _split(uri)
    return (userinfo is not None and ":" in userinfo) or any(_is_password(name) for name, _ in query)


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
