"""A device identity as the gateway's clients hold one, to connect as a node or a browser in tests.

The gateway (2026.9.6, buildDeviceAuthPayloadV3) takes an Ed25519 key whose id is the SHA-256 of
its raw public key, and a signature over
`v3|id|client.id|client.mode|role|scopes|signedAtMs|token|nonce|platform|deviceFamily`: scopes
joined by commas, the token the frame presents, the challenge's nonce, platform and family trimmed
and lower-cased. So role, scopes and credential cannot be rewritten on the way.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway.real_gateway import PACKAGE
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


def signed_connect(ws: WsClient, key: Ed25519PrivateKey, client: dict[str, str], role: str, scopes: list[str],
                   auth: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Take the challenge, send a connect whose device signs `auth`'s token (the one the gateway
    verifies against); the `res` frame."""
    challenge = ws.recv_json()
    assert challenge["event"] == "connect.challenge", challenge
    device = signed_device(key, client, role, scopes, auth.get("token", ""), challenge["payload"]["nonce"])
    params = {"minProtocol": 4, "maxProtocol": 4, "client": client, "role": role, "scopes": scopes, "auth": auth,
              "device": device, **extra}
    ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": params})
    return ws.response("c1")


def node_connect(ws: WsClient, token: str, key: Ed25519PrivateKey, *, commands: list[str] | None = None) -> dict[str, Any]:
    """A node's connect, signed for role node with `token`."""
    return signed_connect(ws, key, NODE_CLIENT, "node", [], {"token": token}, caps=[], commands=commands or [])


@cache
def control_ui_client() -> dict[str, str]:
    """The Control UI's `client` as the installed bundle sends it: the gateway refuses a UI whose
    build id is not its own ('Control UI updated; reload this page')."""
    core = next((PACKAGE / "dist" / "control-ui" / "assets").glob("control-ui-core-*.js")).read_text()
    build = re.search(r"buildId:`([^`]+)`", core)
    assert build is not None, "no build id in the Control UI bundle"
    return {"id": "openclaw-control-ui", "version": "2026.9.6", "buildId": build.group(1), "platform": "Linux x86_64",
            "mode": "webchat"}


def control_ui_connect(ws: WsClient, secret: str, key: Ed25519PrivateKey, scopes: list[str]) -> dict[str, Any]:
    """The Control UI's connect in a browser with WebCrypto (2026.9.6): the secret typed in goes as
    both token and password (`authPassword ??= authToken`), and its device signs the token."""
    return signed_connect(ws, key, control_ui_client(), "operator", scopes, {"token": secret, "password": secret})
