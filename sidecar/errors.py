"""The sidecar's exception tree.

    SidecarError
    └── ConfigError      bad configuration: names the key path and why; start-up fails
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """A configuration problem, with the offending key path(s) in the message."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {why}" for key, why in problems))
