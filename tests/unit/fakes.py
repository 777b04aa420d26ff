"""Stand-ins shared by unit tests that run the pure pipeline without a real limiter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A limiter's answer; by default it allows."""

    allowed: bool = True
    retry_after_s: int = 0
    unavailable: bool = False
    no_failures: bool = False


class NeverLimits:
    """The auth-failure limiter stand-in: never limits, never delays."""

    async def check(self, ip: str | None) -> Verdict:
        return Verdict()

    async def record_failure(self, ip: str | None) -> float:
        return 0.0

    async def reset(self, ip: str | None) -> None:
        return None
