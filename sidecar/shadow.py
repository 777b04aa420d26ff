"""Shadow mode (`sidecar.enforce: false`): which refusals it turns into logged forwards.

Only the policy layers, the rules being rolled out: routes, scopes, tool and RPC-method policy,
request rate limits. Authentication, attribution, framing and size checks stay enforced, so
shadow mode never lends the sidecar's credential to a caller it could not authenticate and never
relays a request two parsers could read differently.
"""

from __future__ import annotations

from .metrics import SHADOWED
from .reasons import Reason

SHADOWABLE_REASONS: frozenset[Reason] = frozenset({
    Reason.ROUTE_DENIED, Reason.UNKNOWN_ROUTE, Reason.NODE_CAPABILITY, Reason.METHOD_NOT_SERVED,
    Reason.QUERY_CREDENTIAL, Reason.ROUTE_REFUSED, Reason.MISSING_SCOPE, Reason.TOOL_DENIED,
    Reason.REQUEST_RATE_LIMITED, Reason.METHOD_DENIED, Reason.NODE_METHOD, Reason.OPERATOR_METHOD, Reason.OWNER_REQUIRED, Reason.RPC_MISSING_SCOPE,
})

for _reason in SHADOWABLE_REASONS:  # at zero from the start, so the first one shows as an increase
    SHADOWED.labels(reason=_reason)
