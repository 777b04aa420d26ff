"""sidecar/caching.py: short calls are answered from the cache, long ones always computed."""

from __future__ import annotations

from sidecar.caching import short_call_cache


def test_only_short_calls_are_cached_and_the_cache_is_bounded() -> None:
    calls: list[tuple[str, str]] = []

    @short_call_cache(max_length=6, size=2)
    def join(a: str, b: str) -> str:
        calls.append((a, b))
        return a + b

    assert [join("ab", "cd"), join("ab", "cd")] == ["abcd", "abcd"]
    assert calls == [("ab", "cd")]  # the second came from the cache
    assert [join("abc", "def"), join("abc", "def")] == ["abcdef", "abcdef"]
    assert calls.pop() == ("abc", "def") and calls == [("ab", "cd")]  # 6 characters: cached
    assert [join("abcd", "efg"), join("abcd", "efg")] == ["abcdefg", "abcdefg"]
    assert calls[1:] == [("abcd", "efg")] * 2  # 7 characters: never cached
    join("x", "1")
    join("x", "2")  # the cache holds two calls: ("ab", "cd") was the least recent
    join("ab", "cd")
    assert calls[-1] == ("ab", "cd")


def test_only_text_arguments_count_towards_the_length() -> None:
    calls: list[tuple[str, int]] = []

    @short_call_cache(max_length=2, size=2)
    def repeat(text: str, times: int) -> str:
        calls.append((text, times))
        return text * times

    assert [repeat("ab", 3), repeat("ab", 3)] == ["ab" * 3] * 2
    assert calls == [("ab", 3)]
