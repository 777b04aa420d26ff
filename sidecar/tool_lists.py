"""Upstream tool lists, as data, each tagged with the gateway release it was read from.

The sidecar enforces the union over every upstream version it may front, so pinning an older
gateway never re-opens a tool a newer one closed (reference §5, open question 1).
"""

from __future__ import annotations

# DEFAULT_GATEWAY_HTTP_TOOL_DENY in openclaw 2026.9.6 (21 entries; `cron` is an alias of automations).
HTTP_DENY_2026_9_6 = frozenset({
    "exec", "spawn", "shell", "fs_write", "fs_delete", "fs_move", "apply_patch", "terminal",
    "portal", "sessions_spawn", "sessions_send", "conversations_list", "conversations_send",
    "conversations_turn", "automations", "gateway", "plugins", "nodes", "computer", "mobile_ui",
    "openclaw",
})

# DEFAULT_GATEWAY_HTTP_TOOL_DENY in openclaw 2026.4.26 (12 entries), plus `whatsapp_login`, which
# the 2026.2.14 fix for GHSA-943q-mwmv-hhvh introduced and the 2026.4.26 docs still list.
HTTP_DENY_2026_4_26 = frozenset({
    "exec", "spawn", "shell", "fs_write", "fs_delete", "fs_move", "apply_patch",
    "sessions_spawn", "sessions_send", "cron", "gateway", "nodes", "whatsapp_login",
})

# GATEWAY_OWNER_ONLY_CORE_TOOLS in openclaw 2026.9.6: removed for callers that are not owner.
OWNER_ONLY_2026_9_6 = frozenset({
    "automations", "gateway", "plugins", "sessions", "screen", "terminal", "portal",
    "conversations_list", "conversations_send", "conversations_turn", "nodes", "computer",
    "mobile_ui", "openclaw",
})

# Tools the gateway lets non-owners call whose actions are admin-only RPC methods on its WebSocket
# (our own review of 2026.9.6, not the gateway's list): `skill_workshop` creates and applies the
# skills every later turn loads (skills.proposals.*), `secrets` lists the secret store with the
# values of its env entries (secrets.store.*), `browser` drives the browser-control service
# (browser.request). Owner-only here too, so a scope ceiling without operator.admin holds on both.
OWNER_ONLY_SIDECAR_REVIEW = frozenset({"skill_workshop", "secrets", "browser"})

# normalizeToolPolicyName aliases in 2026.9.6 (applied after lower-casing).
TOOL_ALIASES_2026_9_6 = {"bash": "exec", "apply-patch": "apply_patch", "cron": "automations"}
