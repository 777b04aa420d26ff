"""The real gateway (2026.9.6) with its own TLS (`gateway.tls.enabled`), behind the sidecar.

Its port then speaks only TLS, with a self-signed certificate for `CN=openclaw-gateway` that no
hostname check matches: the sidecar trusts it by a pinned fingerprint (`sidecar.upstreamTls`), or
a certificate the operator issued by a CA file; anything else is refused during the handshake,
before a byte of the request (and the sidecar's credential in it) goes out.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar import envelopes
from tests.builders import issue_certificate
from sidecar.routes import GATEWAY_VERSION as DESCRIBED
from tests.gateway.real_gateway import GATEWAY_VERSION, RealGateway, unavailable_reason
from tests.wsclient import WsClient

from .conftest import REAL_GATEWAY_TOKEN as TOKEN
from .harness import SidecarProcess
from .ratelimit_helpers import wait_until
from .test_real_gateway_websocket import connect_params

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

CALL = {"tool": "agents_list", "args": {}}


@pytest.fixture(scope="module")
def tls_gateway() -> Iterator[RealGateway]:
    gateway = RealGateway({"mode": "token", "token": TOKEN}, {"gateway": {"tls": {"enabled": True}}})
    yield gateway
    gateway.stop()


def fingerprint_of(pem_file: Path) -> str:
    der = x509.load_pem_x509_certificate(pem_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def generated_certificate(gateway: RealGateway) -> Path:
    return gateway.home / "state" / "gateway" / "tls" / "gateway-cert.pem"


def sidecar_config(gateway: RealGateway, **upstream_tls: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                                "rateLimit": {"loopbackDelayBaseMs": 0}}
    if upstream_tls:
        settings["upstreamTls"] = upstream_tls
    return {"sidecar": settings}


def invoke(sidecar: SidecarProcess) -> httpx.Response:
    return httpx.post(f"{sidecar.url}/tools/invoke", json=CALL, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15)


# What /readyz says of a gateway that answered: the release it reports, against the one described.
READY = {"ready": True, "reason": "ok", "upstreamRelease": GATEWAY_VERSION, "describedRelease": DESCRIBED}


def readiness(sidecar: SidecarProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{sidecar.admin_url}/readyz", timeout=10).json()
    return body


def assert_unreachable(sidecar: SidecarProcess) -> None:
    """502 in the gateway's words, and the call audited as one that never reached the gateway."""
    response = invoke(sidecar)
    expected = envelopes.upstream_unreachable()
    assert (response.status_code, response.content) == (expected.status, expected.body)
    assert wait_until(lambda: any(entry.get("tool") == CALL["tool"] for entry in sidecar.audit_lines()), 10)
    (line,) = [entry for entry in sidecar.audit_lines() if entry.get("tool") == CALL["tool"]]
    assert (line["decision"], line["reason"], line["status"], line.get("upstream_status")) == \
        ("forwarded", "upstream_unreachable", 502, None)


@pytest.mark.parametrize("spelling", ["plain", "sha256-colons"])
def test_the_gateways_own_certificate_pinned_carries_calls_and_sockets(tls_gateway, module_sidecar: Callable[..., SidecarProcess],
                                                                      spelling: str) -> None:
    pin = fingerprint_of(generated_certificate(tls_gateway))
    if spelling == "sha256-colons":  # as `openclaw gateway status` prints it for `gateway.remote.tlsFingerprint`
        pin = "SHA256:" + ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()
    sidecar = module_sidecar(sidecar_config(tls_gateway, fingerprint=pin))
    response = invoke(sidecar)
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True
    assert readiness(sidecar) == READY
    ws = WsClient("127.0.0.1", sidecar.port)
    try:
        assert ws.recv_json()["event"] == "connect.challenge"
        ws.send_json({"type": "req", "id": "c1", "method": "connect", "params": connect_params(["operator.read"])})
        hello = ws.response("c1")
        assert (hello["ok"], hello["payload"]["type"]) == (True, "hello-ok")
    finally:
        ws.close()


def test_another_certificate_than_the_pinned_one_is_refused_before_the_request(tls_gateway, module_sidecar: Callable[..., SidecarProcess]) -> None:
    sidecar = module_sidecar(sidecar_config(tls_gateway, fingerprint="ab" * 32))
    assert_unreachable(sidecar)
    assert readiness(sidecar) == {"ready": False, "reason": "upstream certificate does not match sidecar.upstreamTls.fingerprint"}
    assert "certificate verify failed" in sidecar.logs().lower()


def test_without_a_pin_its_self_signed_certificate_is_not_trusted(tls_gateway, module_sidecar: Callable[..., SidecarProcess]) -> None:
    """The system's CAs by default: the generated certificate chains to none of them. The sidecar
    says at start what to set."""
    sidecar = module_sidecar(sidecar_config(tls_gateway))
    assert_unreachable(sidecar)
    assert readiness(sidecar) == {"ready": False, "reason": "upstream unreachable: ConnectError"}
    assert "sidecar.upstreamTls.fingerprint" in sidecar.logs()


def test_a_certificate_issued_by_a_ca_file_is_trusted_by_it(module_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    ca, cert, key = issue_certificate(tmp_path)
    leaf_pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    cert.write_text(cert.read_text() + ca.read_text())  # the gateway sends its chain: leaf, then its CA
    gateway = RealGateway({"mode": "token", "token": TOKEN},
                          {"gateway": {"tls": {"enabled": True, "certPath": str(cert), "keyPath": str(key)}}})
    try:
        trusted = module_sidecar(sidecar_config(gateway, caFile=str(ca)))
        response = invoke(trusted)
        assert (response.status_code, response.json()["ok"]) == (200, True)
        assert readiness(trusted) == READY
        # Pinned, the leaf is the one certificate compared, whatever the chain above it.
        pinned = module_sidecar(sidecar_config(gateway, fingerprint=leaf_pin))
        assert (invoke(pinned).status_code, readiness(pinned)) == (200, READY)
        # The same certificate pinned by someone else's fingerprint is not trusted by its CA.
        assert_unreachable(module_sidecar(sidecar_config(gateway, fingerprint="cd" * 32)))
        # Without a CA file the proxy trusts mitmproxy's CAs, not the system store's, and so does
        # /readyz: a CA only the system store held made it ready while every call got 502 (red team).
        system_store_only = module_sidecar(sidecar_config(gateway), env={"SSL_CERT_FILE": str(ca)})
        assert_unreachable(system_store_only)
        assert readiness(system_store_only) == {"ready": False, "reason": "upstream unreachable: ConnectError"}
    finally:
        gateway.stop()
