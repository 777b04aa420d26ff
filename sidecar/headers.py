"""Header hygiene: which request heads are refused, and the header list the upstream receives.

Attack corpus classes B, C and D. The rules are data (the tables below) so each protected
spelling is tested case by case; the functions only apply them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .view import RequestView

# The context headers tool policy reads (the channel and account a call comes from).
CHANNEL_HEADER = "x-openclaw-message-channel"
ACCOUNT_HEADER = "x-openclaw-account-id"
# Headers that must appear at most once: a repeat is a parser differential (Node keeps the first
# Authorization/Host and joins the rest with ", "), so it is refused (corpus D1, D2). The two
# context headers tool policy reads are among them: the gateway would judge "a, b".
SINGLETON_HEADERS = frozenset({
    "authorization", "host", "x-openclaw-scopes", "x-forwarded-for", "x-forwarded-user",
    "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded", "content-length",
    "transfer-encoding", "tailscale-user-login", "tailscale-user-name", "tailscale-user-profile-pic",
    "tailscale-funnel-request", "tailscale-headers-info", "x-openclaw-sender-is-owner", "x-session-key",
    CHANNEL_HEADER, ACCOUNT_HEADER,
})
# Every header whose name falls in these namespaces is the sidecar's to decide: protected from
# aliasing, and deleted from what the upstream gets (but allow-listed context headers). By pattern,
# not by list: one forgotten member of a family is a bypass (corpus A1, A8).
PROTECTED_PREFIXES = ("x-forwarded-", "tailscale-", "x-openclaw-", "x-clawdbot-", "x-original-", "x-rewrite-")
PROTECTED_NAMES = SINGLETON_HEADERS | {"proxy-authorization"}

# Client copies of these never reach the upstream; what the upstream must see is set afresh.
OWNED_NAMES = frozenset({
    "authorization", "proxy-authorization", "x-openclaw-scopes", "x-openclaw-sender-is-owner",
    "x-session-key", "forwarded", "x-real-ip", "x-request-id",
})

# Hop-by-hop headers (RFC 9110 §7.6.1) that must not be relayed; `connection` is rewritten instead.
# `expect` too: the proxy answers `100-continue` itself, so relaying it makes the upstream send a
# second interim response the client never asked for.
HOP_BY_HOP = frozenset({"keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"})
CONNECTION_TOKENS_KEPT = ("close", "keep-alive", "upgrade")
# Message framing and routing: a `Connection:` nomination must never remove these.
NEVER_NOMINATED = frozenset({"content-length", "transfer-encoding", "host"})

def is_context_header(name: str) -> bool:
    """An `x-openclaw-*` context header a client may send on; the sidecar's own never are."""
    lowered = name.lower()
    return lowered.startswith("x-openclaw-") and lowered not in OWNED_NAMES


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110's tchar: what a header name may hold (Node's parser answers 400 to anything else).
TOKEN_CHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_HEADER_NAME = re.compile(TOKEN_CHAR.encode() + b"+")


def fold(name: str) -> str:
    """The spelling WSGI, PHP and friends collapse onto: no case, no `-`, `_` or `.` (B3, B5)."""
    return re.sub(r"[-_.]", "", name.lower())


_FOLDED_NAMES = {fold(n) for n in PROTECTED_NAMES}
_FOLDED_PREFIXES = tuple(fold(p) for p in PROTECTED_PREFIXES)


@functools.cache
def _fold_all(names: frozenset[str]) -> frozenset[str]:
    """The configured extra names, folded once rather than for every header of every request."""
    return frozenset(map(fold, names))


def aliases_protected(name: str, extra: Iterable[str] = ()) -> bool:
    """True for a spelling that folds onto a protected name without being that name."""
    lowered = name.lower()
    if "_" not in lowered and "." not in lowered:
        return False
    folded = fold(lowered)
    return folded in _FOLDED_NAMES or folded.startswith(_FOLDED_PREFIXES) or folded in _fold_all(frozenset(extra))


def is_protected(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lowered = name.lower()
    return lowered in PROTECTED_NAMES or lowered in extra or lowered.startswith(PROTECTED_PREFIXES)


def head_problem(view: RequestView, extra_protected: frozenset[str] = frozenset()) -> str | None:
    """Why this request head must be refused with 400, or None. Checked before anything else."""
    for raw_name, raw_value in view.headers:
        name = raw_name.decode("latin-1")
        if not _HEADER_NAME.fullmatch(raw_name):
            return f"header name {name!r} is not a token"
        if aliases_protected(name, extra_protected):
            return f"header name {name!r} aliases a protected header"
        if _CONTROL.search(raw_value):  # includes obs-fold, which arrives as CR LF in the value
            return f"control character in header {name!r}"
        if is_protected(name, extra_protected):
            try:
                raw_value.decode("utf-8")
            except UnicodeDecodeError:
                return f"header {name!r} is not valid UTF-8"
    if view.has("trailer"):
        # Trailers arrive after the body, out of reach of every check here (corpus B6).
        return "request trailers are not accepted"
    for name in view.names:
        if (name in SINGLETON_HEADERS or name in extra_protected) and len(view.values(name)) > 1:
            return f"header {name!r} is repeated"
    return None


def connection_tokens(view: RequestView) -> list[str]:
    tokens = []
    for value in view.values("connection"):
        tokens += [t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()]
    return tokens


@dataclass(frozen=True)
class HeaderPlan:
    """How to rebuild the header list for the upstream."""

    owned: tuple[tuple[str, str], ...]  # set by the sidecar, after every deletion
    context_allow: frozenset[str]  # x-openclaw-* context headers a client may send on
    pinned: Mapping[str, str]  # context headers forced to a value for this identity
    drop: frozenset[str] = frozenset()  # further names to delete (e.g. the trusted user header)
    websocket: bool = False
    # Client headers that carry the route's own credential (a hooks token, a ticket Bearer):
    # relayed as sent, never read or replaced by the sidecar.
    passthrough: frozenset[str] = frozenset()


def rebuild_headers(view: RequestView, plan: HeaderPlan) -> tuple[tuple[str, str], ...]:
    """Delete every client copy of what we own and everything `Connection:` names, then set ours.

    Setting after all deletion means no client header can delete or shadow ours (C1-C4, B10).
    `Connection` itself is kept with only close/keep-alive/upgrade, because mitmproxy reads it to
    honour a client's `close`; nominating our headers there achieves nothing.
    """
    tokens = connection_tokens(view)
    nominated = {t for t in tokens if t not in CONNECTION_TOKENS_KEPT and t not in NEVER_NOMINATED}
    kept_tokens = [t for t in dict.fromkeys(tokens) if t in CONNECTION_TOKENS_KEPT]
    if not plan.websocket:
        kept_tokens = [t for t in kept_tokens if t != "upgrade"]
    pinned = {k.lower(): v for k, v in plan.pinned.items()}
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in view.headers:
        name = raw_name.decode("latin-1")
        lowered = name.lower()
        if lowered == "connection":
            continue
        if lowered in nominated or lowered in plan.drop or lowered in pinned:
            continue
        if lowered in HOP_BY_HOP and not (plan.websocket and lowered == "upgrade"):
            continue
        if lowered in plan.passthrough:
            out.append((name, raw_value.decode("latin-1")))
            continue
        context = lowered in plan.context_allow and is_context_header(lowered)
        if not context and (lowered in OWNED_NAMES or lowered.startswith(PROTECTED_PREFIXES)):
            continue
        out.append((name, raw_value.decode("latin-1")))
    if kept_tokens:
        out.append(("Connection", ", ".join(kept_tokens)))
    out += sorted(pinned.items())
    out += plan.owned
    return tuple(out)
