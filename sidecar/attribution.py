"""Client attribution (§2.4): who the client is, and whether forwarded headers may be believed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .ipaddrs import IPNetwork, in_networks, ip_text, is_loopback, normalize_ip
from .toolpolicy import js_trim
from .view import RequestView

Kind = Literal["direct-local", "direct-remote", "trusted-proxy", "unattributable"]


@dataclass(frozen=True)
class Attribution:
    kind: Kind
    client_ip: str | None
    peer_ip: str

    @property
    def attributable(self) -> bool:
        return self.kind != "unattributable"


def has_forwarding_evidence(view: RequestView) -> bool:
    """Presence alone counts, even empty: Forwarded, X-Real-IP, X-Forwarded-*, Tailscale-*."""
    return any(
        name in ("forwarded", "x-real-ip") or name.startswith(("x-forwarded-", "tailscale-"))
        for name in view.names
    )


def ip_literal(raw: str | None) -> str | None:
    """The gateway's parseIpLiteral, for an X-Forwarded-For hop or X-Real-IP: trimmed, a port
    dropped (`[v6]:port` when the bracket closes, `v4:port`), then an IP or None. An unclosed
    `[203.0.113.9` is no address there; read as one, it named the client (red team)."""
    text = js_trim(raw or "")
    if text.startswith("[") and (end := text.find("]")) != -1:
        text = text[1:end]
    elif normalize_ip(text) is None and text.count(":") == 1 and "." in text:
        host = text.split(":", 1)[0]  # no colon left: an IPv4 address or nothing
        text = host if normalize_ip(host) is not None else text
    return normalize_ip(text)


def client_from_forwarded(xff: str | None, trusted: Sequence[IPNetwork]) -> str | None:
    """Right-most hop that is neither loopback nor a trusted proxy (A3, A4, G1)."""
    if not xff:
        return None
    hops = [ip for ip in map(ip_literal, xff.split(",")) if ip is not None]
    for ip in reversed(hops):
        if is_loopback(ip):
            continue
        if not in_networks(ip, trusted):
            return ip
    return None


def attribute(view: RequestView, trusted: Sequence[IPNetwork], allow_real_ip_fallback: bool) -> Attribution:
    peer = ip_text(view.peer_ip)
    evidence = has_forwarding_evidence(view)
    if is_loopback(peer) and not evidence:
        return Attribution("direct-local", peer, peer)
    if in_networks(peer, trusted):
        client = client_from_forwarded(view.first("x-forwarded-for"), trusted)
        if client is None and allow_real_ip_fallback:
            real = ip_literal(view.first("x-real-ip"))
            client = real if real and not is_loopback(real) else None
        if client is None:
            return Attribution("unattributable", None, peer)
        return Attribution("trusted-proxy", client, peer)
    if evidence:
        return Attribution("unattributable", None, peer)
    return Attribution("direct-remote", peer, peer)
