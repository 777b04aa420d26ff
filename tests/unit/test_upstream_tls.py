"""Pinning an https:// upstream's certificate by the fingerprint spellings the gateway's own
clients take (`gateway.remote.tlsFingerprint`)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest

from sidecar.upstream_tls import certificate_matches, check_ca_file, normalize_fingerprint, peer_certificate, probe_context
from tests.builders import issue_certificate
from tests.gateway.oracle import call_gateway, needs_gateway

HEX = "0123456789abcdef" * 4
COLONS = ":".join(HEX[i:i + 2] for i in range(0, 64, 2))
SPELLINGS = [
    HEX, HEX.upper(), COLONS, COLONS.upper(), f"sha256:{HEX}", f"SHA256:{COLONS}", f"  {HEX}\n", f"\ufeff{HEX}\u3000",
    f"sha256:sha256:{HEX}", f"sha-256:{HEX}", HEX[:-1], HEX + "0", COLONS + ":", COLONS.replace(":", "-"), f"{HEX[:2]}:{HEX[2:]}",
    f"sha256: {HEX}", "", "sha256:", HEX.replace("a", "g"), f"{HEX}\u00a0", f"\x1c{HEX}",
    f"\u017fha256:{HEX}", f"\u017fHA256:{COLONS}",  # the long s: the gateway's /^sha256:/iu folds it to s
]


@needs_gateway
def test_a_fingerprint_is_read_as_the_gateways_clients_read_it() -> None:
    theirs = call_gateway(["client-address-utils-:normalizeTlsFingerprint"],
                          "answer(input.map((text) => gateway.normalizeTlsFingerprint(text) || null));", SPELLINGS)
    mine = [normalize_fingerprint(text) for text in SPELLINGS]
    assert list(zip(SPELLINGS, mine)) == list(zip(SPELLINGS, theirs))
    assert theirs.count(HEX) >= 6 and None in theirs


@pytest.mark.parametrize("text, pin", [
    (HEX, HEX), (HEX.upper(), HEX), (COLONS, HEX), (f"SHA256:{COLONS.upper()}", HEX), (f" \ufeff{HEX}\n", HEX),
    (f"\u017fha256:{HEX}", HEX), (f"sha256:sha256:{HEX}", None),
    (f"sha-256:{HEX}", None), (HEX[:-1], None), (COLONS + ":", None), (f"{HEX[:2]}:{HEX[2:]}", None), ("", None),
])
def test_a_fingerprint_spelling_is_read_or_refused(text: str, pin: str | None) -> None:
    """The same cases without the gateway installed (the differential above reads them from it)."""
    assert normalize_fingerprint(text) == pin


def test_only_the_pinned_certificate_matches() -> None:
    der = b"0\x82certificate bytes"
    assert certificate_matches(der, hashlib.sha256(der).hexdigest())
    assert not certificate_matches(der + b"x", hashlib.sha256(der).hexdigest())


def test_readiness_trusts_a_ca_file_as_the_proxy_does_whatever_pythons_defaults(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.13's default context turns on X.509 strict checks and partial chains; mitmproxy's
    OpenSSL context has neither. With those defaults (as 3.13 sets them, on any Python here), a
    certificate the proxy accepts, issued without an authority key id, failed /readyz's handshake."""
    ca, cert, key = issue_certificate(tmp_path)
    defaults = ssl.create_default_context

    def as_python_3_13(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = defaults(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    monkeypatch.setattr(ssl, "create_default_context", as_python_3_13)
    client = probe_context(ca, None)
    assert not client.verify_flags & (ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), server.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)

        threading.Thread(target=serve, daemon=True).start()
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.getpeercert(True) == ssl.PEM_cert_to_DER_cert(cert.read_text())


def answering_once(listener: socket.socket, tls: ssl.SSLContext | None) -> None:
    """Answers one HTTP request on `listener` (over TLS when given a server context), in a thread."""
    def serve() -> None:
        connection, _ = listener.accept()
        with contextlib.suppress(ssl.SSLError, OSError):
            stream = tls.wrap_socket(connection, server_side=True) if tls else connection
            with stream:
                stream.recv(65536)
                stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()


def test_a_pinned_upstream_is_reached_whoever_issued_it_and_its_certificate_is_the_one_compared(tmp_path: Path) -> None:
    """With a pin, /readyz must reach a gateway whose certificate no CA here trusts (the gateway's
    own is self-signed), and then compare the very certificate it was handed."""
    _, cert, key = issue_certificate(tmp_path)  # its CA is trusted nowhere here
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    pin = hashlib.sha256(der).hexdigest()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        answering_once(listener, server)
        port = listener.getsockname()[1]
        with httpx.Client(verify=probe_context(None, pin), trust_env=False, timeout=5) as client:
            with client.stream("GET", f"https://127.0.0.1:{port}/startupz") as response:
                assert response.status_code == 200
                assert peer_certificate(response) == der
                assert certificate_matches(peer_certificate(response) or b"", pin)


def test_without_a_ca_file_readiness_trusts_certifis_cas_as_the_proxy_does_not_the_system_store() -> None:
    """Each store trusted a CA the other did not: /readyz said ready while every call got 502."""
    assert probe_context(None, None).get_ca_certs() == ssl.create_default_context(cafile=certifi.where()).get_ca_certs()


def test_a_plain_http_answer_or_one_already_read_has_no_peer_certificate(tmp_path: Path) -> None:
    assert peer_certificate(httpx.Response(200)) is None
    with socket.create_server(("127.0.0.1", 0)) as listener:
        answering_once(listener, None)
        with httpx.Client(trust_env=False, timeout=5) as client:
            with client.stream("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/startupz") as response:
                assert response.status_code == 200
                assert peer_certificate(response) is None


def test_a_ca_file_OpenSSL_cannot_trust_is_refused_by_name(tmp_path: Path) -> None:
    ca, _, _ = issue_certificate(tmp_path)
    check_ca_file(ca)
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(ssl.PEM_cert_to_DER_cert(ca.read_text()))
    for path in (not_pem, tmp_path / "missing.pem"):
        with pytest.raises(ValueError, match=rf"^cannot load {re.escape(repr(str(path)))} as PEM certificates: \S"):
            check_ca_file(path)
