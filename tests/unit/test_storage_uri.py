"""sidecar.storage_uri: the rate-limit storage URI helpers, in a module of their own so
`sidecar.config` validates and prints the URI without importing the limiter."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

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
])
def test_async_form(uri: str, expected: str) -> None:
    assert async_storage_uri(uri) == expected


def test_an_unsupported_scheme_is_named_without_the_password() -> None:
    with pytest.raises(ValueError) as raised:
        async_storage_uri("mongodb://user:s3cret@h/x")
    assert "'mongodb'" in str(raised.value) and "s3cret" not in str(raised.value)


def test_redaction() -> None:
    assert redact_uri("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_uri("redis://h:6379") == "redis://h:6379"
    # redis-py reads a query password too (over any other)
    assert redact_uri("rediss://h:6380/0?ssl_cert_reqs=none&PASSWORD=s3cret") == "rediss://h:6380/0?ssl_cert_reqs=none&PASSWORD=***"
    # read on the raw text: a URL parser would end the host at the '/' or '[' inside the password
    assert redact_uri("redis://default:s3cret/q@h:6379") == "redis://default:***@h:6379"
    assert redact_uri("redis://:pa[s3cret]q@h:6379") == "redis://:***@h:6379"
    assert redact_uri("redis://:p@s3cret@h:6379/0") == "redis://:***@h:6379/0"


@pytest.mark.parametrize("uri, carries", [
    ("redis://:s3cret@h:6379", True), ("redis://user:s3cret@h:6379", True), ("redis://h:6379/0?password=s3cret", True),
    ("redis://user@h:6379", False), ("redis://h:6379/0?db=1", False), ("redis+cluster://h:7000,h:7001", False),
])
def test_a_password_is_found_wherever_redis_py_would_read_one(uri: str, carries: bool) -> None:
    assert carries_password(uri) is carries
