"""Log lines a flood could repeat: once per interval, the next one saying how many were left out."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sidecar import logging_limits
from sidecar.logging_limits import OncePerInterval, limit_library_logs


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_repeated_line_is_written_once_per_ten_seconds_then_says_how_many_were_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = OncePerInterval(clock=clock)
    log = logging.getLogger("tests.limits")
    for now, path in [(0.0, "a"), (5.0, "b"), (9.999, "c"), (10.0, "d"), (19.0, "e"), (20.0, "f"), (30.0, "g")]:
        clock.now = now
        limiter.warning(log, "cannot write the audit log: %s", path)
    assert messages(caplog) == ["cannot write the audit log: a",
                                "cannot write the audit log: d (2 similar lines left out)",
                                "cannot write the audit log: f (1 similar lines left out)",
                                "cannot write the audit log: g"]


def test_lines_are_limited_by_logger_and_template_not_by_their_arguments(caplog: pytest.LogCaptureFixture) -> None:
    limiter = OncePerInterval(clock=Clock())
    first, second = logging.getLogger("tests.limits.first"), logging.getLogger("tests.limits.second")
    limiter.warning(first, "writer behind")
    limiter.warning(second, "writer behind")
    limiter.warning(first, "destination gone: %s", "x")
    limiter.warning(first, "destination gone: %s", "y")
    assert messages(caplog) == ["writer behind", "writer behind", "destination gone: x"]


def test_messages_that_never_repeat_are_forgotten_once_an_interval_old(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's messages carry object addresses: each new one was remembered for ever before."""
    clock = Clock()
    limiter = OncePerInterval(clock=clock)
    log = logging.getLogger("tests.limits")
    limiter.warning(log, "steady")
    limiter.warning(log, "steady")  # left out: counted against the next "steady" line
    for n in range(3 * logging_limits.MAX_MESSAGES):
        clock.now = n * 0.01
        limiter.warning(log, f"Task exception was never retrieved: <Task at 0x{n:x}>")
        assert len(limiter) <= logging_limits.MAX_MESSAGES
    assert len(messages(caplog)) == 1 + 3 * logging_limits.MAX_MESSAGES  # every unique line still written once
    clock.now += 1
    limiter.warning(log, "steady")
    assert messages(caplog)[-1] == "steady"  # forgotten with its count, a whole interval quiet


def test_more_new_messages_in_one_interval_than_it_remembers_start_it_afresh(caplog: pytest.LogCaptureFixture) -> None:
    limiter = OncePerInterval(clock=Clock())
    log = logging.getLogger("tests.limits")
    for n in range(logging_limits.MAX_MESSAGES + 1):
        limiter.warning(log, f"line {n}")
        assert len(limiter) <= logging_limits.MAX_MESSAGES
    assert len(limiter) == 1
    limiter.warning(log, "line 0")  # remembered no more: written again
    assert messages(caplog)[-1] == "line 0"


@pytest.fixture
def library_loggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """limit_library_logs changes process-wide loggers: each test starts from untouched ones and
    leaves them so, with a limiter of its own on a clock it moves."""
    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    clock = Clock()
    monkeypatch.setattr(logging_limits, "LOG_ONCE_PER_INTERVAL", OncePerInterval(clock=clock))
    yield clock
    httpx_log.setLevel(level)


def test_asyncio_accept_errors_are_written_once_per_interval_however_often_a_sidecar_started(
        library_loggers: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """`serve` limits the library logs at each start; in a process that served twice, a second
    filter dropped the first line of every burst, the one that matters."""
    limit_library_logs()
    limit_library_logs()
    asyncio_log = logging.getLogger("asyncio")
    for now in (0.0, 1.0, 2.0, 10.0):
        library_loggers.now = now
        asyncio_log.error("socket.accept() out of system resource\nsocket: %s", "<listener>")
    assert messages(caplog) == ["socket.accept() out of system resource\nsocket: <listener>",
                                "socket.accept() out of system resource\nsocket: <listener> (2 similar lines left out)"]


def test_httpx_request_lines_are_not_written_and_the_sidecar_s_are(
        library_loggers: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs every request at INFO: the readiness check's, every few seconds."""
    caplog.set_level(logging.INFO)
    limit_library_logs()
    httpx_log = logging.getLogger("httpx")
    httpx_log.info("HTTP Request: GET http://127.0.0.1:18789/readyz")
    httpx_log.warning("connection pool full")
    logging.getLogger("sidecar").info("sidecar listening")
    assert messages(caplog) == ["connection pool full", "sidecar listening"]
