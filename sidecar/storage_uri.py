"""Rate-limit storage URIs: which schemes the sidecar supports, their `limits` async form, and
their text with any password masked.

Plain string handling (no `limits`, no limiter), so `sidecar.config` validates and prints the
configured URI without importing the limiter; `sidecar.ratelimit` builds its storage from it.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

__all__ = ["SUPPORTED_STORAGE_SCHEMES", "async_storage_uri", "carries_password", "redact_uri"]

SUPPORTED_STORAGE_SCHEMES: Final = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


def _userinfo(uri: str) -> tuple[urllib.parse.SplitResult, str | None, str]:
    """The URI's parts, its user part (None without `@`) and its hosts."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return parts, None, parts.netloc
    userinfo, hosts = parts.netloc.rsplit("@", 1)
    return parts, userinfo, hosts


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, fit for logs and error messages."""
    try:
        parts, userinfo, hosts = _userinfo(uri)
    except ValueError:
        return "<unparseable URI>"
    if userinfo is None:
        return uri
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"***@{hosts}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def carries_password(uri: str) -> bool:
    """Whether the URI holds a password (`redis://:pw@host`, `redis://user:pw@host`)."""
    userinfo = _userinfo(uri)[1]
    return userinfo is not None and ":" in userinfo


def async_storage_uri(uri: str) -> str:
    """Map a configured storage URI (``memory://``, ``redis://`` ...) to its `limits` async form.

    Raises ValueError naming the scheme when it is not one the sidecar supports.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"rate-limit storage URI must look like scheme://..., got {uri!r}")
    scheme, rest = uri.split("://", 1)
    scheme = scheme.strip().lower()
    if scheme not in SUPPORTED_STORAGE_SCHEMES:
        raise ValueError(
            f"unsupported rate-limit storage scheme {scheme!r} in {redact_uri(uri)!r}; "
            f"use one of: {', '.join(s + '://' for s in SUPPORTED_STORAGE_SCHEMES)}"
        )
    return f"async+{scheme}://{rest}"
