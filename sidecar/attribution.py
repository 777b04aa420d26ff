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


def _xff_entry_ip(entry: str) -> str | None:
    """One X-Forwarded-For hop as an IP; `ip:port` and `[v6]:port` suffixes are stripped."""
    text = js_trim(entry)
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return normalize_ip(text)


def client_from_forwarded(xff: str | None, trusted: Sequence[IPNetwork]) -> str | None:
    """Right-most hop that is neither loopback nor a trusted proxy (A3, A4, G1)."""
    if not xff:
        return None
    hops = [ip for ip in map(_xff_entry_ip, xff.split(",")) if ip is not None]
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
            real = normalize_ip(view.first("x-real-ip") or "")
            client = real if real and not is_loopback(real) else None
        if client is None:
            return Attribution("unattributable", None, peer)
        return Attribution("trusted-proxy", client, peer)
    if evidence:
        return Attribution("unattributable", None, peer)
    return Attribution("direct-remote", peer, peer)
