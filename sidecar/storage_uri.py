"""Rate-limit storage URIs: which schemes the sidecar supports, their `limits` async form, and
their text with any password masked.

Plain string handling (no `limits`, no limiter), so `sidecar.config` validates and prints the
configured URI without importing the limiter; `sidecar.ratelimit` builds its storage from it.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

__all__ = ["SUPPORTED_STORAGE_SCHEMES", "async_storage_uri", "carries_password", "redact_uri", "redis_uri_problem"]

SUPPORTED_STORAGE_SCHEMES: Final = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")


def _userinfo(uri: str) -> tuple[urllib.parse.SplitResult, str | None, str]:
    """The URI's parts, its user part (None without `@`) and its hosts."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return parts, None, parts.netloc
    userinfo, hosts = parts.netloc.rsplit("@", 1)
    return parts, userinfo, hosts


def _is_password(name: str) -> bool:
    """redis-py reads a `?password=` query argument as the password, over any other."""
    return name.lower() == "password"


def redact_uri(uri: str) -> str:
    """The URI with any password (in its user part or its query) replaced, fit for logs and
    error messages."""
    try:
        parts, userinfo, hosts = _userinfo(uri)
    except ValueError:
        return "<unparseable URI>"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if userinfo is None and not any(_is_password(name) for name, _ in query):
        return uri
    if userinfo is not None:
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hosts}" if ":" in userinfo else f"***@{hosts}")
    if query:
        parts = parts._replace(query="&".join(f"{name}=***" if _is_password(name) else f"{name}={value}"
                                              for name, value in query))
    return urllib.parse.urlunsplit(parts)


def carries_password(uri: str) -> bool:
    """Whether the URI holds a password: `redis://:pw@host`, `redis://user:pw@host`, `?password=`."""
    parts, userinfo, _ = _userinfo(uri)
    return (userinfo is not None and ":" in userinfo) or any(
        _is_password(name) for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))


def redis_uri_problem(uri: str) -> str | None:
    """What `limits` would refuse in a Redis URI when the sidecar builds its storage, said without
    quoting the URI (it may hold a password); None when it parses."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc.count("@") > 1:
            return "more than one '@' before the host: percent-encode it in the password (%40), or use storagePasswordFile"
        hosts = parts.netloc.rpartition("@")[2]
        for host in hosts.split(","):
            location = urllib.parse.urlsplit(f"fake://{host.strip()}")
            if not location.hostname or location.port is None:
                return "every host needs a name and a port (host:6379)"
    except ValueError as exc:  # a port out of range, a broken IPv6 literal
        return f"not a valid URI ({exc})"
    if parts.scheme.lower() == "redis+sentinel" and not parts.path.strip("/"):
        return "a Sentinel URI names the service: redis+sentinel://host:26379/SERVICE"
    return None


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
