"""A mitmdump addon with one deliberate weakness (WEAK_PROXY names it), each a pattern real proxies
shipped: the probe must catch every one of them. Loaded with `mitmdump -s`; WEAK_PROXY_TOKEN is
the secret clients and the backend share."""

from __future__ import annotations

import ipaddress
import json
import os
import re

from mitmproxy import http

TOKEN = os.environ["WEAK_PROXY_TOKEN"]
WEAKNESS = os.environ["WEAK_PROXY"]
REWRITE_HEADERS = ("x-forwarded-uri", "x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-path")
KNOWN_SCOPES = {"operator.read", "operator.write", "operator.admin", "operator.approvals", "operator.pairing"}
FORGED_NAMES = ("X-OpenClaw-Scopes", "X-Forwarded-User", "Tailscale-User-Login")  # as documented, one spelling
DENIED_TOOLS = {"cron", "sessions_spawn", "exec", "shell", "gateway"}
DENIED_METHODS = {"terminal.open", "config.patch"}
failures: dict[str, int] = {}


def authenticated(flow: http.HTTPFlow) -> bool:
    return flow.request.headers.get_all("authorization") == [f"Bearer {TOKEN}"]


def refuse(flow: http.HTTPFlow, status: int, kind: str) -> None:
    flow.response = http.Response.make(status, json.dumps({"error": {"type": kind}}), {"Content-Type": "application/json"})


def request(flow: http.HTTPFlow) -> None:
    headers, peer = flow.request.headers, flow.client_conn.peername[0]
    if WEAKNESS == "rewrite-header-skips-auth":  # oauth2-proxy GHSA-7x63-xv5r-3p2x: decides by a client's header
        public = any(headers.get(name, "").startswith("/healthz") for name in REWRITE_HEADERS)
        for name in REWRITE_HEADERS:
            headers.pop(name, None)
        if not public and not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        headers["authorization"] = f"Bearer {TOKEN}"
    elif WEAKNESS == "forwarded-address-allowlist":  # the internal network needs no token, read from a client's header
        found = re.search(r"for=\"?([0-9.]+)", headers.get("forwarded", "")) or re.search(r"([0-9.]+)", headers.get("x-real-ip", ""))
        for name in ("forwarded", "x-real-ip", "x-forwarded-for"):
            headers.pop(name, None)
        if not (found and ipaddress.ip_address(found.group(1)) in ipaddress.ip_network("10.0.0.0/8")) and not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        headers["authorization"] = f"Bearer {TOKEN}"
    elif WEAKNESS == "filters-client-scopes":  # "normalises" the client's scopes instead of setting its own
        if not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        asked = [s for v in headers.get_all("x-openclaw-scopes")[:1] for s in re.split(r"[,\s]+", v) if s in KNOWN_SCOPES]
        headers.pop("x-openclaw-scopes", None)
        headers["x-openclaw-scopes"] = ",".join(asked) or "operator.read"
    elif WEAKNESS == "case-sensitive-strip":  # compares names by case, where HTTP does not
        if not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        for name in [n for n in headers.keys() if n in FORGED_NAMES]:
            del headers[name]
    elif WEAKNESS == "public-prefix":  # /healthz* is public, matched on the raw path
        if not flow.request.path.startswith("/healthz") and not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        headers["authorization"] = f"Bearer {TOKEN}"
    elif WEAKNESS == "ascii-trim-deny":  # folds case, but trims ASCII blanks only
        if not authenticated(flow):
            return refuse(flow, 401, "unauthorized")
        try:
            name = json.loads(flow.request.get_content() or b"{}").get("name", "")
        except ValueError:
            name = ""
        if isinstance(name, str) and name.strip(" \t\r\n").lower() in DENIED_TOOLS:
            refuse(flow, 404, "not_found")
    elif WEAKNESS == "locks-out-for-good" and failures.get(peer, 0) >= 3:  # a success never clears the count
        refuse(flow, 429, "rate_limited")
    elif WEAKNESS == "authenticates-only-the-upgrade" and not authenticated(flow):  # frames then pass unread
        refuse(flow, 401, "unauthorized")


def response(flow: http.HTTPFlow) -> None:
    assert flow.response is not None
    if WEAKNESS == "locks-out-for-good" and flow.response.status_code == 401:
        peer = flow.client_conn.peername[0]
        failures[peer] = failures.get(peer, 0) + 1
    elif WEAKNESS == "hides-refusals-as-502" and 400 <= flow.response.status_code < 500:
        flow.response.status_code = 502


def websocket_message(flow: http.HTTPFlow) -> None:
    """judges-only-the-first-frame: the connect, then the first request frame; the rest go unread."""
    assert flow.websocket is not None
    message = flow.websocket.messages[-1]
    if WEAKNESS != "judges-only-the-first-frame" or not message.from_client:
        return
    judged = flow.metadata.setdefault("judged", 0)
    flow.metadata["judged"] = judged + 1
    if judged == 1 and json.loads(message.text).get("method") in DENIED_METHODS:
        message.drop()
