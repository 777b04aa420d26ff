"""addons/embedded.py's heap settling: what lives on is frozen, what a reload replaced is freed."""

from __future__ import annotations

import gc
import weakref

from addons.embedded import settle_heap


class Runtime:
    """Stands in for a runtime: a cycle, as real object graphs have, so only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_settling_freezes_what_is_alive_and_a_replaced_runtime_is_freed() -> None:
    current = Runtime()
    settle_heap()
    try:
        assert gc.get_freeze_count() > 0
        replaced = weakref.ref(current)
        current = Runtime()  # a reload swapped it in; the old one is garbage now
        settle_heap()
        assert replaced() is None  # not frozen for good with the rest
    finally:
        gc.unfreeze()
