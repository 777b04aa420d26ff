"""Trusting an https:// upstream: certifi's CAs (the bundle mitmproxy checks with), a CA file of
one's own, or one certificate pinned by its SHA-256 fingerprint.

The pin is for the gateway's own TLS (`gateway.tls.enabled`): the certificate it generates is
self-signed for `CN=openclaw-gateway`, with no name a hostname check could match, and its own
clients trust it the same way (`gateway.remote.tlsFingerprint`, in the same spellings).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from pathlib import Path

import certifi
import httpx

from .toolpolicy import js_trim

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_COLONS = re.compile(r"(?:[0-9a-fA-F]{2}:){31}[0-9a-fA-F]{2}")
# Case-insensitive as the gateway's /^sha256:/iu is, Unicode folding included: `ſha256:` is the prefix.
_PREFIX = re.compile(r"^sha256:", re.IGNORECASE)


def normalize_fingerprint(text: str) -> str | None:
    """The gateway's normalizeTlsFingerprint: 64 hex digits, colons between pairs allowed, an
    optional `sha256:` prefix; lower-case hex without colons, or None when it is none of these."""
    value = _PREFIX.sub("", js_trim(text), count=1)
    if _HEX.fullmatch(value):
        return value.lower()
    if _COLONS.fullmatch(value):
        return value.replace(":", "").lower()
    return None


def certificate_matches(der: bytes, pin: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(der).hexdigest(), pin)


def check_ca_file(path: Path) -> None:
    """Raises ValueError unless the file holds certificates OpenSSL can trust."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load {str(path)!r} as PEM certificates: {exc}") from None


def probe_context(ca_file: Path | None, pin: str | None) -> ssl.SSLContext:
    """For the sidecar's own requests upstream (readiness): verified as the proxy verifies, by the
    same CAs (without a CA file, mitmproxy's certifi bundle, not the system store: each trusted a CA
    the other did not, and /readyz said ready while every call got 502; red team). With a pin
    nothing is verified during the handshake; the caller compares the certificate after it."""
    if pin is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else certifi.where())
    # Python 3.13 turns on X.509 strict checks and partial chains; mitmproxy's OpenSSL context has
    # neither: a CA the proxy trusts (an issued certificate without an authority key id) made
    # /readyz fail, and an intermediate in the CA file would make it ready where every call fails.
    context.verify_flags &= ~(ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    return context


def peer_certificate(response: httpx.Response) -> bytes | None:
    """The upstream's certificate (DER) of a response still open (`Client.stream`)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    return ssl_object.getpeercert(True) if ssl_object is not None else None  # positional: an _ssl socket here
