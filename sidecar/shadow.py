"""Shadow mode (`sidecar.enforce: false`): which refusals it turns into logged forwards.

Only the policy layers, the rules being rolled out: routes, scopes, tool and RPC-method policy,
request rate limits. Authentication, attribution, framing and size checks stay enforced, so
shadow mode never lends the sidecar's credential to a caller it could not authenticate and never
relays a request two parsers could read differently.
"""

from __future__ import annotations

SHADOWABLE_REASONS = frozenset({
    "route_denied", "unknown_route", "node_capability", "method_not_served", "query_credential", "route_refused",
    "missing_scope", "tool_denied", "request_rate_limited", "method_denied", "node_method",
})
