"""Request-body rules for /tools/invoke (§1): size, JSON, tool name, and the body we forward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .envelopes import compact_json
from .toolpolicy import ToolName, js_trim, normalize_tool_name

MAX_BODY_BYTES = 2 * 1024 * 1024  # DEFAULT_BODY_BYTES; exactly this many is accepted


class BodyError(Exception):
    """The body is unusable; `kind` says which upstream answer applies."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind  # "invalid_json" | "missing_name"
        self.message = message


class NotJavaScriptJson(ValueError):
    """A constant JSON.parse does not know (NaN, Infinity, -Infinity), which Python's parser takes."""


def _reject_constant(token: str) -> Any:
    # JSON.parse has no NaN/Infinity; accepting them here would let the two parsers disagree.
    raise NotJavaScriptJson(f"Unexpected token {token} in JSON")


def _js_integer(digits: str) -> int | float:
    """An integer literal; past Python's digit bound for int() it is the double JSON.parse makes
    of every number (Infinity beyond 1e308, written back as null, as JSON.stringify does)."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


# Bound once: json.loads builds a new decoder, scanner included, for every call given options.
_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_js_integer).decode


def strict_json(text: str) -> Any:
    """JSON as JSON.parse reads it: no NaN or Infinity, no byte-order mark (ValueError, or
    RecursionError for nesting beyond Python's reach)."""
    if text.startswith("\ufeff"):  # checked by json.loads, not by the decoder itself
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _decode(text)


def parse_json_body(raw: bytes) -> Any:
    """Decode as Node does (UTF-8 with replacement, whatever Content-Type says), trim the whole
    text as readJsonBodyWithLimit does (JavaScript's trim: a byte-order mark goes, \x1c stays),
    and parse; nothing left is the empty object."""
    text = js_trim(raw.decode("utf-8", errors="replace"))
    if not text:
        return {}
    try:
        return strict_json(text)
    except json.JSONDecodeError as exc:
        raise BodyError("invalid_json", exc.msg) from exc
    except RecursionError as exc:
        raise BodyError("invalid_json", "JSON nested too deeply") from exc
    except NotJavaScriptJson as exc:  # any other ValueError is no fault of the body: an internal error
        raise BodyError("invalid_json", str(exc)) from exc


@dataclass(frozen=True)
class InvokeBody:
    tool: ToolName
    forward_bytes: bytes
    spelled: str = ""  # the name as sent, trimmed: what the gateway looks up (exactly)
    # The session fields the gateway resolves its agent and tool policy from, as sent (any JSON value).
    session_key: Any = None
    agent_id: Any = None


def _name_or_tool(payload: dict[str, Any]) -> Any:
    """`name ?? tool`, the field a 2026.9 gateway reads."""
    name = payload.get("name")
    return name if name is not None else payload.get("tool")


def _requested_name(payload: dict[str, Any]) -> str | None:
    """The requested tool, trimmed; a non-string or blank value counts as missing (L)."""
    value = _name_or_tool(payload)
    if not isinstance(value, str) or not js_trim(value):
        return None
    return js_trim(value)


def read_invoke_body(raw: bytes) -> InvokeBody:
    """Validate the body and decide the exact bytes to forward.

    The original bytes go upstream whenever the gateway would read the same tool name from them;
    otherwise a compact rewrite carries the normalised name in whichever of `name` and `tool` were
    sent, so 2026.4 (`tool` only) and 2026.9 (`name ?? tool`) gateways act on the name we checked.
    Re-serialising needlessly, or adding a field, could push a legal 2 MiB body over the gateway's
    own limit (reference (f) 8).
    """
    return invoke_body_of(parse_json_body(raw), raw)


def invoke_body_of(payload: Any, raw: bytes | None = None) -> InvokeBody:
    """The checks of read_invoke_body on a payload already parsed from `raw`. A WebSocket
    frame's params, which the session re-encodes itself, come without: `forward_bytes` is empty."""
    if not isinstance(payload, dict):
        raise BodyError("missing_name")
    requested = _requested_name(payload)
    if requested is None:
        raise BodyError("missing_name")
    tool = normalize_tool_name(requested)
    # A 2026.4 gateway reads only `tool`: `{"name":"agents_list","tool":"exec"}` must not pass as-is.
    # Only the fields sent are pinned: every byte added could push a legal body past the limit.
    sent = [field for field in ("name", "tool") if payload.get(field) is not None]
    if raw is None or all(payload[field] == tool.name for field in sent):
        return InvokeBody(tool, raw or b"", requested, payload.get("sessionKey"), payload.get("agentId"))
    rewritten = {**payload, **dict.fromkeys(sent, tool.name)}
    try:
        return InvokeBody(tool, compact_json(rewritten), requested, payload.get("sessionKey"), payload.get("agentId"))
    except RecursionError as exc:  # nesting deeper than the rewrite can walk
        raise BodyError("invalid_json", "JSON nested too deeply to rewrite") from exc
