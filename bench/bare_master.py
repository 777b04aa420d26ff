"""Reference (a): the sidecar's own embedded mitmproxy Master, built by the same `build_master`
(same addon chain, same options) from the same config file, with an addon that does nothing in
place of the enforcement addon. What enforcement costs is the sidecar's CPU minus this one's.

    .venv/bin/python -m bench.bare_master [--speedups] CONFIG

`--speedups` applies the sidecar's mitmproxy patches that are about speed (addons/compat.py:
skip_debug_typechecks, cache_hook_arguments, complete_hooks_inline, dispatch_hooks_directly), to tell what they buy
from what enforcement costs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from addons import compat
from addons.embedded import build_master
from sidecar.config import load_config


class NoEnforcement:
    """Stands where the guard stands in the addon chain; hooks nothing."""


async def _run(config_path: Path, speedups: bool) -> None:
    master = build_master(load_config(config_path), NoEnforcement())  # type: ignore[arg-type]
    if speedups:
        compat.dispatch_hooks_directly(master.addons)
    await master.run()


if __name__ == "__main__":
    speedups = "--speedups" in sys.argv
    if speedups:
        compat.skip_debug_typechecks()
        compat.cache_hook_arguments()
        compat.complete_hooks_inline()
    asyncio.run(_run(Path(sys.argv[-1]), speedups))
