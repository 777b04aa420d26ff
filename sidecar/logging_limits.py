"""Log lines that a flood could repeat thousands of times a second, written once per interval.

A client flood must not become a log flood: the first line for a message goes out, the same
message is then counted for the rest of the interval, and the next line says how many were left
out. Also applied, as a filter, to asyncio's accept errors (`Too many open files`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

INTERVAL_SECONDS = 10.0
# Messages remembered at once. asyncio's lines carry object reprs (`<Task ... at 0x7f...>`), so
# its messages need not repeat: past this many, those not written within an interval are forgotten.
MAX_MESSAGES = 1024


class OncePerInterval:
    """Rate-limited logging keyed by the message template (not its arguments)."""

    def __init__(self, interval_s: float = INTERVAL_SECONDS, clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def admit(self, logger_name: str, template: str) -> int | None:
        """None: leave this line out; otherwise the number left out since the last one."""
        key = (logger_name, template)
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if last is None and len(self._last) >= MAX_MESSAGES:
                self._forget_before(now - self.interval_s)
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def _forget_before(self, moment: float) -> None:
        """Drop messages last written before `moment`, and the count of lines left out after them:
        a message quiet for a whole interval is written again anyway when it comes back. Should
        more than MAX_MESSAGES be that recent, all are forgotten (each may be written once more)."""
        for key in [key for key, last in self._last.items() if last < moment]:
            del self._last[key]
            self._suppressed.pop(key, None)
        if len(self._last) >= MAX_MESSAGES:
            self._last.clear()
            self._suppressed.clear()

    def __len__(self) -> int:
        """The messages remembered."""
        return len(self._last)

    def warning(self, logger: logging.Logger, template: str, *args: Any) -> None:
        left_out = self.admit(logger.name, template)
        if left_out is not None:
            suffix = f" ({left_out} similar lines left out)" if left_out else ""
            logger.warning(template + suffix, *args)


class RepeatFilter(logging.Filter):
    """A logging filter with the same policy, for loggers we do not own (asyncio's)."""

    def __init__(self, limiter: OncePerInterval) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        left_out = self.limiter.admit(record.name, str(record.msg))
        if left_out is None:
            return False
        if left_out:
            record.msg = f"{record.msg} ({left_out} similar lines left out)"
        return True


LOG_ONCE_PER_INTERVAL = OncePerInterval()


def limit_library_logs() -> None:
    """asyncio logs every failed accept with a traceback; once per interval is enough. httpx logs
    every request at INFO: the readiness check's, every few seconds. Called at every start: a second
    filter, finding each line just admitted by the first, dropped the first line of every burst."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(installed, RepeatFilter) for installed in asyncio_log.filters):
        asyncio_log.addFilter(RepeatFilter(LOG_ONCE_PER_INTERVAL))
    logging.getLogger("httpx").setLevel(logging.WARNING)
