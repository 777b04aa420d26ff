"""Errors the sidecar raises on purpose (others are bugs: they fail closed with a 500)."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, with the offending key path(s) in the message; start-up fails."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {why}" for key, why in problems))
