"""Builders shared by the tests: a request head for the pure core, a config file on disk, JSON nested
beyond Python, a CA and a certificate it issued."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.view import RequestView

PEER = "203.0.113.7"

Header = tuple[str | bytes, str | bytes]


def _raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def view(*headers: Header, method: str = "POST", target: str = "/tools/invoke", peer: str = PEER,
         host: str | None = None, auth: str | None = None) -> RequestView:
    """A request head as the proxy hands it to the core: a `Host` line and an `Authorization` line
    when given, then `headers` in order with repeats kept (text as latin-1, bytes as they are)."""
    lines = [(b"Host", _raw(host))] if host is not None else []
    if auth is not None:
        lines.append((b"Authorization", _raw(auth)))
    lines.extend((_raw(name), _raw(value)) for name, value in headers)
    return RequestView(method, target, tuple(lines), peer)


def write_config(path: Path, document: dict[str, Any] | str) -> Path:
    """Write a config file (text as given; a dict as JSON, which is YAML too) and return its path."""
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def nested_beyond_python(depth: int = 1000) -> bytes:
    """Arrays nested deeper than this Python's json.loads follows (RecursionError), which V8's
    JSON.parse still reads: about 3,000 levels on 3.12, near 10,000 on 3.13."""
    while True:
        nested = b"[" * depth + b"]" * depth
        try:
            json.loads(nested)
        except RecursionError:
            return nested
        depth *= 2


def issue_certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it issues for 127.0.0.1 (an IP SAN: what a hostname check reads)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
