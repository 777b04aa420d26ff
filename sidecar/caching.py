"""Caching for pure functions of request text.

The cached functions (target canonicalisation, IP parsing, route matching) see the same few
inputs on nearly every request, but their inputs come from strangers: only calls whose text
arguments are short are cached, so a flood of distinct long inputs neither fills memory nor
evicts what every request repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache, wraps
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def text_length(values: Iterable[Any]) -> int:
    """How many characters the str values among `values` hold: what caching them would keep."""
    length = 0  # a plain loop: sum() over a generator costs more than the lookup it guards
    for value in values:
        if isinstance(value, str):
            length += len(value)
    return length


def short_call_cache(max_length: int, size: int) -> Callable[[F], F]:
    """`lru_cache(maxsize=size)` for positional calls whose str arguments total at most
    `max_length` characters; longer calls run uncached."""

    def decorate(function: F) -> F:
        cached = lru_cache(maxsize=size)(function)

        @wraps(function)
        def call(*args: Any) -> Any:
            return cached(*args) if text_length(args) <= max_length else function(*args)

        return cast(F, call)

    return decorate
