"""sidecar.storage_uri: the rate-limit storage URI helpers, in a module of their own so
`sidecar.config` validates and prints the URI without importing the limiter."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from redis.connection import parse_url

from sidecar import ratelimit, storage_uri
from sidecar.storage_uri import async_storage_uri, carries_password, redact_uri

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"


def _imported(path: Path) -> set[str]:
    """Every name the module imports, at the top or inside a function, spelled absolutely."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("sidecar." if node.level else "") + (node.module or "")
            names.add(base.rstrip("."))
            names.update(f"{base.rstrip('.')}.{alias.name}" for alias in node.names)
    return names


def test_config_does_not_import_the_limiter() -> None:
    imported = _imported(SIDECAR / "config.py")
    assert "sidecar.storage_uri" in imported
    assert not {name for name in imported if name == "sidecar.ratelimit" or name.startswith("sidecar.ratelimit.")}


def test_the_uri_helpers_need_nothing_but_the_standard_library() -> None:
    imported = {name.split(".")[0] for name in _imported(SIDECAR / "storage_uri.py")}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_limiter_uses_the_same_helpers() -> None:
    assert ratelimit.async_storage_uri is storage_uri.async_storage_uri
    assert ratelimit.redact_uri is storage_uri.redact_uri
    assert ratelimit.SUPPORTED_STORAGE_SCHEMES is storage_uri.SUPPORTED_STORAGE_SCHEMES


def test_only_limits_compat_imports_the_storage_whose_internals_it_relies_on() -> None:
    """`limits`' private internals stay in sidecar/limits_compat.py (tests/unit/test_compat.py pins them)."""
    users = sorted(path.name for path in SIDECAR.rglob("*.py")
                   if {"limits.aio.storage.MemoryStorage", "limits.storage.MemoryStorage"} & _imported(path))
    assert users == ["limits_compat.py"]


@pytest.mark.parametrize("uri, expected", [
    ("memory://", "async+memory://"),
    ("REDIS://h:6379/0", "async+redis://h:6379/0"),
    ("redis+sentinel://h:26379/mymaster", "async+redis+sentinel://h:26379/mymaster"),
    ("redis://:pa://ss@h:6379", "async+redis://:pa://ss@h:6379"),  # only the first '://' ends the scheme
])
def test_async_form(uri: str, expected: str) -> None:
    assert async_storage_uri(uri) == expected


def test_an_unsupported_scheme_is_named_without_the_password_beside_the_ones_to_use() -> None:
    with pytest.raises(ValueError) as raised:
        async_storage_uri("mongodb://user:s3cret@h/x")
    assert str(raised.value) == "unsupported rate-limit storage scheme 'mongodb' in 'mongodb://user:***@h/x'; " \
        "use one of: memory://, redis://, rediss://, redis+sentinel://, redis+cluster://"


def test_a_uri_without_scheme_slashes_is_echoed_only_up_to_where_a_password_could_start() -> None:
    with pytest.raises(ValueError) as raised:
        async_storage_uri("redis:/:s3cret@h:6379")
    assert str(raised.value) == "rate-limit storage URI must look like scheme://..., got 'redis'..."


def test_redaction() -> None:
    assert redact_uri("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_uri("redis://h:6379") == "redis://h:6379"
    # redis-py reads a query password too (over any other)
    assert redact_uri("rediss://h:6380/0?ssl_cert_reqs=none&PASSWORD=s3cret") == "rediss://h:6380/0?ssl_cert_reqs=none&PASSWORD=***"
    # read on the raw text: a URL parser would end the host at the '/' or '[' inside the password
    assert redact_uri("redis://default:s3cret/q@h:6379") == "redis://default:***@h:6379"
    assert redact_uri("redis://:pa[s3cret]q@h:6379") == "redis://:***@h:6379"
    assert redact_uri("redis://:p@s3cret@h:6379/0") == "redis://:***@h:6379/0"
    # a user part without ':' is redis-py's user name, but some clients read it as the password
    assert redact_uri("redis://s3cret@h:6379") == "redis://***@h:6379"
    # a query past a password holding '?' is a query to the raw reading: its password is masked
    assert redact_uri("redis://:pa?ss@h:6379/0?password=s3cret") == "redis://:***@h:6379/0?password=***"
    # an '@' in a query's password is the password's: the masks of both readings are one
    assert redact_uri("redis://h:6379/0?password=s3@cret&db=1") == "redis://h:***&db=1"
    assert redact_uri("redis://h:6379/0?password=") == "redis://h:6379/0?password=***"


PASSWORD = "Pw1@Pw2"  # an '@' in a query's password is the password's, to redis-py's URL parser


@pytest.mark.parametrize("uri", [
    f"redis://h:6379/0?password={PASSWORD}",
    f"redis://h:6379/0?db=1&password={PASSWORD}&socket_timeout=5",
    f"rediss://user@h:6380/0?password={PASSWORD}",
    f"redis://:{PASSWORD}@h:6379/0",
    f"redis://user:{PASSWORD}/x?y#z@h:6379/0",
])
def test_no_piece_of_the_password_redis_py_reads_is_shown(uri: str) -> None:
    """Read on the raw text alone, a query's password showed what followed its '@' (mutation
    sweep); redis-py's own parser says which password it reads."""
    password = parse_url(uri)["password"]
    shown = redact_uri(uri)
    assert [piece for piece in password.split("@") if piece in shown] == [], shown


@pytest.mark.parametrize("uri, carries", [
    ("redis://:s3cret@h:6379", True), ("redis://user:s3cret@h:6379", True), ("redis://h:6379/0?password=s3cret", True),
    ("redis://h/0?db=1&password=s3@cr@et", True),
    ("redis://user@h:6379", False), ("redis://h:6379/0?db=1", False), ("redis+cluster://h:7000,h:7001", False),
])
def test_a_password_is_found_wherever_redis_py_would_read_one(uri: str, carries: bool) -> None:
    assert carries_password(uri) is carries
