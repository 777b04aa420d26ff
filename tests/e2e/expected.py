"""Gateway answers as the reference (§8) spells them, written out here rather than imported from
the product, so a product change cannot silently change what the tests expect."""

from typing import Any

AGENTS = b'{"tool":"agents_list","args":{}}'

AGENTS_RESULT = {"ok": True, "result": {"agents": [{"id": "main", "default": True}], "action": None}}

DEFAULT_SCOPES = ("operator.admin,operator.read,operator.write,operator.approvals,"
                  "operator.questions,operator.pairing,operator.talk.secrets")

UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized"}}

MISSING_SCOPE = {"ok": False, "error": {
    "type": "forbidden", "message": "missing scope: operator.write",
    "details": {"code": "MISSING_SCOPE", "missingScope": "operator.write", "requiredScopes": ["operator.write"]},
}}

def not_available(tool: str) -> dict[str, Any]:
    """The gateway's 404 for a tool it will not run, naming the tool as the refusal spells it."""
    return {"ok": False, "error": {"type": "not_found", "message": f"Tool not available: {tool}"}}


ATTRIBUTION_REQUIRED = {"error": {
    "message": "Proxy client attribution is required. Configure gateway.trustedProxies narrowly and make "
               "the proxy overwrite or safely rebuild forwarded client headers.",
    "type": "proxy_attribution_required",
}}
