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
import logging.handlers
import queue
import sys
import time
from dataclasses import dataclass, field

from .logging_limits import LOG_ONCE_PER_INTERVAL
from .metrics import AUDIT_LINES_DROPPED, DECISIONS, SHADOWED

log = logging.getLogger("sidecar.audit")
log.propagate = False
log.setLevel(logging.INFO)
diagnostics = logging.getLogger("sidecar")
# Lines waiting for the writer thread. A reader that stops reading (a full stdout pipe, a stuck
# disk) must never stall the proxy: beyond this the newest lines are counted and dropped.
QUEUE_LINES = 100_000
_listener: logging.handlers.QueueListener | None = None  # the writer thread


class _NonBlockingQueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # the message is already the finished line

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            AUDIT_LINES_DROPPED.inc()
            LOG_ONCE_PER_INTERVAL.warning(diagnostics, "audit log writer is behind: lines dropped "
                                          "(openclaw_sidecar_audit_lines_dropped_total)")


@dataclass(frozen=True)
class AuditEntry:
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
    shadowed: tuple[str, ...] = field(default=())

    def line(self, now: float) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "event": "decision", "request_id": self.request_id, "route": self.route, "decision": self.decision,
            "reason": self.reason, "status": self.status, "upstream_status": self.upstream_status,
            "duration_ms": self.duration_ms, "method": self.method[:64], "target": self.target[:512],
            "client": self.client, "peer": self.peer, "auth": self.auth, "identity": self.identity,
            "previous_secret": self.previous_secret, "scopes": list(self.scopes) if self.scopes is not None else None,
            "tool": self.tool[:128] if self.tool else self.tool,
        }
        if self.shadowed:
            entry["shadowed"] = list(self.shadowed)
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


def record(entry: AuditEntry) -> None:
    DECISIONS.labels(route=entry.route, outcome=entry.decision, reason=entry.reason).inc()
    for reason in entry.shadowed:
        SHADOWED.labels(reason=reason).inc()
    if log.handlers:
        log.info(entry.line(time.time()))


class _Writer(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # waits for room: stopping writes every queued line first


def configure(destination: str) -> None:
    """`stdout`, `stderr`, or a file (reopened when logrotate moves it), written by a thread of
    its own so a slow destination never blocks a request."""
    global _listener
    close()
    if destination in ("stdout", "stderr"):
        target: logging.Handler = logging.StreamHandler(sys.stdout if destination == "stdout" else sys.stderr)
    else:
        target = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
    target.setFormatter(logging.Formatter("%(message)s"))
    lines: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LINES)
    log.addHandler(_NonBlockingQueueHandler(lines))
    _listener = _Writer(lines, target)
    _listener.start()


def close() -> None:
    """Write what is queued and stop the writer (also at exit)."""
    global _listener
    for handler in list(log.handlers):
        log.removeHandler(handler)
    if _listener is not None:
        _listener.stop()
        for handler in _listener.handlers:
            handler.close()
        _listener = None


atexit.register(close)
