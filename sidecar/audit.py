"""The audit log: one JSON object per line for every decision, and nothing else on those lines.

Separate from the diagnostic log (no prefix, its own destination, written whatever `logLevel`
says) so collectors parse it as is. JSON encoding turns CR, LF and other control characters into
escapes, so a header value or a tool name can never forge a second line (corpus D8). Never
secrets, bodies or arguments: identities and tool names are what the operator needs to see.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from functools import lru_cache
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote_plus

from .logging_limits import LOG_ONCE_PER_INTERVAL
from .canonical import InvalidTarget, canonicalize_target
from .metrics import AUDIT_LINES_DROPPED, SHADOWED, decision_counter
from .routes import CAPABILITY_PREFIX, QUERY_CREDENTIALS

diagnostics = logging.getLogger("sidecar")
# Lines waiting for the writer thread. A reader that stops reading (a full stdout pipe, a stuck
# disk) must never stall the proxy: beyond this the newest lines are counted and dropped.
QUEUE_LINES = 20_000
# How often the writer looks for queued lines: the delay before a line is written, and the
# writer's wake-ups per second when idle.
BATCH_SECONDS = 0.05
# How long stopping waits for the writer to empty the queue into a destination that takes nothing.
CLOSE_SECONDS = 5.0


class AuditEntry(NamedTuple):
    """One decision (a NamedTuple: immutable like a frozen dataclass, built in a fifth of the time)."""

    request_id: str
    route: str
    decision: str  # forwarded | refused | shadowed
    reason: str
    status: int | None  # what the client got (None: a WebSocket frame, or not answered)
    method: str  # the HTTP method, or the WebSocket RPC method
    target: str
    client: str | None
    peer: str
    auth: str | None = None
    identity: str | None = None
    previous_secret: bool = False
    scopes: tuple[str, ...] | None = None
    tool: str | None = None
    upstream_status: int | None = None
    duration_ms: float | None = None
    shadowed: tuple[str, ...] = ()
    detail: str | None = None  # why a policy layer refused (free text; `reason` is the metric label)
    outcome: str | None = None  # a forwarded call that ended without the upstream's whole answer: why

    def line(self, now: float) -> str:
        entry = {
            "time": _second(int(now)) + f".{int(now % 1 * 1000):03d}Z",
            "event": "decision", "request_id": self.request_id, "route": self.route, "decision": self.decision,
            "reason": self.reason, "status": self.status, "upstream_status": self.upstream_status,
            "duration_ms": self.duration_ms, "method": self.method[:64], "target": redacted(self.target),
            "client": self.client, "peer": self.peer, "auth": self.auth,
            "identity": self.identity[:256] if self.identity else self.identity,
            "previous_secret": self.previous_secret, "scopes": list(self.scopes) if self.scopes is not None else None,
            "tool": self.tool[:128] if self.tool else self.tool,
        }
        if self.shadowed:
            entry["shadowed"] = list(self.shadowed)
        if self.detail:
            entry["detail"] = self.detail[:256]
        if self.outcome:
            entry["outcome"] = self.outcome
        return _encode(entry)


_REDACTED = "[redacted]"
TARGET_CHARS = 512  # what an audit line keeps of a target: cut before it is searched, so the work is bounded
# Path segments that are bearer secrets: a node capability and an artifact download ticket (after
# the connection id); a device-pairing setup code follows the last `/j/`, under any prefix.
_CAPABILITY_SEGMENT = re.compile("(" + re.escape(CAPABILITY_PREFIX) + r")[^/?#]*", re.IGNORECASE)
_ARTIFACT_TICKET = re.compile(r"(/api/artifacts/download/[^/?#]*/)[^?#]*", re.IGNORECASE)
_JOIN_CODE = "/j/"
# The gateway's query credentials, the assistant-media ticket and an OAuth callback's code and state.
_QUERY_SECRETS = QUERY_CREDENTIALS | {"mediaticket", "code", "state"}
_QUERY_PAIR = re.compile(r"(^|&)([^=&#]*)=([^&#]*)")
# What makes the gateway's WHATWG pathname cut segments where the raw path has no `/`: a backslash,
# a dot segment (also percent-encoded), a tab or newline it removes.
_RESEGMENTED = re.compile(r"[\\\t\n\r]|%2e|(?:^|/)\.\.?(?:/|$)", re.IGNORECASE | re.ASCII)


def redacted(target: str) -> str:
    """The target with the bearer secrets it may carry masked (gateway-surface N8): a node
    capability, an artifact ticket or a pairing setup code in the path, and the query parameters
    that carry a credential, a media ticket or an OAuth code, under any spelling URLSearchParams
    decodes to them. The refusal stands; the secret stays out of the log.

    The gateway reads the path secrets from the WHATWG pathname, where `/j\\CODE` or
    `/x/../j/CODE` is `/j/CODE`: when the raw path is spelled so and the pathname carries a secret,
    the line has the pathname, masked, instead (the raw spelling would show the secret)."""
    target = target[:TARGET_CHARS]
    head, sep, query = target.partition("?")
    routed = _routed_path(head) if _RESEGMENTED.search(head) else None
    head = _masked_path(routed if routed is not None and _masked_path(routed) != routed else head)
    if not sep:
        return head

    def mask(pair: re.Match[str]) -> str:
        secret = unquote_plus(pair[2]).lower() in _QUERY_SECRETS
        return f"{pair[1]}{pair[2]}={_REDACTED}" if secret else pair[0]

    return head + sep + _QUERY_PAIR.sub(mask, query)


def _routed_path(head: str) -> str | None:
    """The pathname the gateway routes on; None for a target the sidecar refuses unread."""
    try:
        return canonicalize_target(head).path
    except InvalidTarget:
        return None


def _masked_path(head: str) -> str:
    lowered = head.lower()
    if CAPABILITY_PREFIX in lowered:
        head = _CAPABILITY_SEGMENT.sub(lambda found: found[1] + _REDACTED, head)
    if "/api/artifacts/download/" in lowered:
        head = _ARTIFACT_TICKET.sub(lambda found: found[1] + _REDACTED, head)
    code = lowered.rfind(_JOIN_CODE)
    if code >= 0:
        head = head[:code + len(_JOIN_CODE)] + _REDACTED
    return head


# Bound once: json.dumps builds a new encoder for every call that passes options.
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


@lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    """The timestamp up to the second, formatted once per second rather than once per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


class AuditWriter:
    """Writes queued lines from a thread of its own, in batches.

    A decision only appends to a deque: no lock, no syscall, and no wake-up of another thread,
    which on a busy core costs the event loop a context switch and a GIL hand-off. The writer
    looks every BATCH_SECONDS instead and writes what collected in one call.
    """

    def __init__(self, destination: str, capacity: int) -> None:
        self.destination = destination
        self.capacity = capacity
        self._pending: deque[str] = deque()
        self._writing = 0  # lines in the batch being written
        self._abandoned = False  # stop gave up on it: its lines are counted dropped already
        self._stopping = threading.Event()
        self._file: BinaryIO | None = None
        self._thread = threading.Thread(target=self._run, name="sidecar-audit", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        if len(self._pending) >= self.capacity:
            AUDIT_LINES_DROPPED.inc()
            LOG_ONCE_PER_INTERVAL.warning(diagnostics, "audit log writer is behind: lines dropped "
                                          "(openclaw_sidecar_audit_lines_dropped_total)")
            return
        self._pending.append(line)

    def close(self) -> None:
        """Returns once every queued line is written, or after CLOSE_SECONDS with the writer stuck
        on a destination nobody reads (a full pipe): then what is left is counted as dropped, and
        the process stops anyway (it waited for the pipe for ever, and a rolling restart ended in
        SIGKILL; red team)."""
        self._stopping.set()
        self._thread.join(CLOSE_SECONDS)
        if self._thread.is_alive():
            lost = len(self._pending) + self._writing
            self._abandoned = True
            AUDIT_LINES_DROPPED.inc(lost)
            diagnostics.warning("the audit log destination takes nothing: %d lines dropped at stop "
                                "(openclaw_sidecar_audit_lines_dropped_total)", lost)

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(BATCH_SECONDS)
            lines = [self._pending.popleft() for _ in range(len(self._pending))]
            if lines:
                self._writing = len(lines)
                lines.append("")
                self._write("\n".join(lines).encode())
                self._writing = 0
            if stopping:
                if self._file is not None:
                    self._file.close()
                return

    def _write(self, data: bytes) -> None:
        try:
            out = self._output()
            out.write(data)
            out.flush()
        except Exception as exc:  # the writer must outlive any failure of its destination
            # A closed or detached stdout raises ValueError or AttributeError, not OSError: this
            # thread dying would have lost every later line unsaid until the queue filled.
            if self._abandoned:
                return
            AUDIT_LINES_DROPPED.inc(data.count(b"\n"))  # an alert must see them: the log line is rate-limited
            LOG_ONCE_PER_INTERVAL.warning(diagnostics, "cannot write the audit log: %s (lines dropped: "
                                          "openclaw_sidecar_audit_lines_dropped_total)", exc)

    def _output(self) -> BinaryIO:
        if self.destination in ("stdout", "stderr"):
            return (sys.stdout if self.destination == "stdout" else sys.stderr).buffer
        if self._file is not None and not _same_file(self._file, self.destination):
            self._file.close()  # moved away by logrotate: reopen, once per batch at most
            self._file = None
        if self._file is None:
            self._file = open(self.destination, "ab")
        return self._file


def _same_file(opened: BinaryIO, path: str) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(opened.fileno())
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


_writer: AuditWriter | None = None
_closed = False  # a writer was stopped and none has replaced it: lines from now on are lost


def count(entry: AuditEntry) -> None:
    """The decision on /metrics only (a flood past its budget is counted, not written line by line)."""
    decision_counter(entry.route, entry.decision, entry.reason).inc()
    for reason in entry.shadowed:
        SHADOWED.labels(reason=reason).inc()


def record(entry: AuditEntry) -> None:
    count(entry)
    if _writer is not None:
        _writer.put(entry.line(time.time()))
    elif _closed:  # a decision made as the process stops, after its log: said on /metrics
        AUDIT_LINES_DROPPED.inc()


def configure(destination: str) -> None:
    """`stdout`, `stderr`, or a file (reopened when logrotate moves it)."""
    global _writer, _closed
    close()
    _writer, _closed = AuditWriter(destination, QUEUE_LINES), False


def close() -> None:
    """Write what is queued and stop the writer (also at exit)."""
    global _writer, _closed
    if _writer is not None:
        _writer.close()
        _writer, _closed = None, True


atexit.register(close)
