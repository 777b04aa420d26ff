"""One structured log line per decision, with every client-supplied value escaped (corpus D8).

JSON encoding turns CR, LF and other control characters into escapes, so a header value or a
tool name can never forge a second log line.
"""

from __future__ import annotations

import json
import logging

from .metrics import DECISIONS

log = logging.getLogger("sidecar.audit")


def record(*, route: str, outcome: str, reason: str, status: int | None, method: str, target: str,
           client_ip: str | None, peer_ip: str, user: str | None = None, tool: str | None = None) -> None:
    DECISIONS.labels(route=route, outcome=outcome, reason=reason).inc()
    if not log.isEnabledFor(logging.INFO):
        return
    entry = {
        "event": "decision", "route": route, "outcome": outcome, "reason": reason, "status": status,
        "method": method, "target": target[:512], "client": client_ip, "peer": peer_ip,
        "user": user, "tool": tool[:128] if tool else tool,
    }
    log.info(json.dumps(entry, ensure_ascii=True, separators=(",", ":")))
