"""A device identity as the gateway's clients hold one, to connect as a node in tests.

The gateway (2026.9.6, buildDeviceAuthPayloadV3) takes an Ed25519 key whose id is the SHA-256 of
its raw public key, and a signature over
`v3|id|client.id|client.mode|role|scopes|signedAtMs|token|nonce|platform|deviceFamily`: scopes
joined by commas, the token the frame presents, the challenge's nonce, platform and family trimmed
and lower-cased. So role, scopes and credential cannot be rewritten on the way.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.wsclient import WsClient

NODE_CLIENT = {"id": "node-host", "version": "1.0.0", "platform": "linux", "mode": "node"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def device_id(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signed_device(key: Ed25519PrivateKey, client: dict[str, str], role: str, scopes: list[str], token: str, nonce: str) -> dict[str, Any]:
    signed_at = int(time.time() * 1000)
    fields = ["v3", device_id(key), client["id"], client["mode"], role, ",".join(scopes), str(signed_at), token, nonce,
              client.get("platform", "").strip().lower(), client.get("deviceFamily", "").strip().lower()]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"id": device_id(key), "publicKey": _b64url(raw), "signature": _b64url(key.sign("|".join(fields).encode())),
            "signedAt": signed_at, "nonce": nonce}


def node_connect(ws: WsClient, token: str, key: Ed25519PrivateKey, *, commands: list[str] | None = None) -> dict[str, Any]:
    """Take the challenge, send a connect signed for role node with `token`; the `res` frame."""
    challenge = ws.recv_json()
    assert challenge["event"] == "connect.challenge", challenge
    params = {"minProtocol": 4, "maxProtocol": 4, "client": NODE_CLIENT, "role": "node", "scopes": [], "caps": [],
              "commands": commands or [], "auth": {"token": token},
              "device": signed_device(key, NODE_CLIENT, "node", [], token, challenge["payload"]["nonce"])}
    ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": params})
    return ws.response("c1")
