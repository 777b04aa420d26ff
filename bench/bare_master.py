"""Reference (a): the sidecar's own embedded mitmproxy Master, built by the same `build_master`
(same addon chain, same options) from the same config file, with an addon that does nothing in
place of the enforcement addon. What enforcement costs is the sidecar's CPU minus this one's.

    .venv/bin/python -m bench.bare_master [--speedups] CONFIG

`--speedups` applies what the sidecar does for speed around mitmproxy (addons/compat.py:
skip_debug_typechecks, cache_hook_arguments, complete_hooks_inline, dispatch_hooks_directly; and the
config's `sidecar.eventLoop`, uvloop by default), to tell what they buy from what enforcement costs.
Without it the Master runs as stock mitmproxy does, on the standard library's loop.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from addons import compat
from addons.embedded import build_master, event_loop_factory
from sidecar.config import Config, load_config


class NoEnforcement:
    """Stands where the guard stands in the addon chain; hooks nothing."""


async def _run(config: Config, speedups: bool) -> None:
    master = build_master(config, NoEnforcement())  # type: ignore[arg-type]
    if speedups:
        compat.dispatch_hooks_directly(master.addons)
    await master.run()


if __name__ == "__main__":
    speedups = "--speedups" in sys.argv
    config = load_config(Path(sys.argv[-1]))
    loop_factory = asyncio.new_event_loop
    if speedups:
        compat.skip_debug_typechecks()
        compat.cache_hook_arguments()
        compat.complete_hooks_inline()
        loop_factory = event_loop_factory(config.sidecar.event_loop)
    asyncio.run(_run(config, speedups), loop_factory=loop_factory)
