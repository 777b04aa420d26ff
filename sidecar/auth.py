"""Authentication (§2): one authenticator per mode, chosen once from config.

Each returns an `AuthOutcome`; the pipeline wraps shared-secret checks with the failure limiter.
Reason codes are upstream's, so the sidecar's log reads like the gateway's.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

import idna

from .attribution import Attribution
from .canonical import FORBIDDEN_HOST_CODE_POINTS, InvalidTarget, UnsupportedTarget, canonicalize_target
from .config import Config
from .ipaddrs import IPNetwork, in_networks, ip_text, is_loopback, parse_ip, parse_network
from .localaddrs import local_interface_addresses
from .reasons import MissingHeader, Reason, ReasonCode
from .toolpolicy import js_trim, well_formed
from .view import RequestView

log = logging.getLogger("sidecar.auth")


@dataclass(frozen=True)
class AuthOutcome:
    ok: bool
    method: str  # "token" | "password" | "none" | "trusted-proxy" | "unauthenticated-route"
    reason: ReasonCode = Reason.OK
    user: str | None = None  # decoded identity: what allowUsers, ceilings and pins match
    user_header_value: str | None = None  # the identity exactly as the trusted proxy spelled it
    presented: bool = False  # a Bearer credential was offered (only mismatches are counted)
    shared_secret: bool = False  # token/password semantics: declared scopes ignored, owner
    previous_secret: bool = False  # matched a secret kept for rotation (sidecar.auth.previous*)
    retry_after_s: int | None = None  # locked out by the failure limiter: when it may try again

    @property
    def counts_as_failure(self) -> bool:
        return self.shared_secret and self.presented and not self.ok


def bearer_credential(view: RequestView) -> str | None:
    """`Authorization: Bearer x`: header trimmed, scheme case-insensitive, value trimmed."""
    header = view.first("authorization")
    if header is None:
        return None
    header = js_trim(header)
    if not header.lower().startswith("bearer "):
        return None
    credential = js_trim(header[7:])
    return credential or None


def safe_equal(presented: str, expected: str) -> bool:
    """safeEqualSecret: pad to the longer length, compare in constant time, then compare lengths.
    Both sides as Node's UTF-8 sees them: a connect frame's JSON may carry a lone surrogate."""
    a, b = well_formed(presented).encode(), well_formed(expected).encode()
    width = max(len(a), len(b))
    same = hmac.compare_digest(a.ljust(width, b"\0"), b.ljust(width, b"\0"))
    return same and len(a) == len(b)


def read_identity(value: str | None) -> str | None:
    """The identity exactly as the gateway reads it: the header value, trimmed; empty is no
    identity (D5). RFC 2047 words (Tailscale's spelling of non-ASCII logins) are NOT decoded: the
    gateway compares the raw value, so decoding here would give one caller two identities, e.g.
    `=?utf-8?q?alice?=` alice's ceiling in the sidecar and someone else's rights upstream. Config
    (allowUsers, ceilings, pins) names such users in the same raw spelling."""
    if value is None:
        return None
    text = js_trim(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):  # never from a parsed header; defence in depth
        return None
    return text or None


# Private ranges for the same-origin rule: RFC 1918, CGNAT (tailnets), IPv6 ULA and link-local.
# (Python's `is_private` also counts documentation ranges, which no real origin uses.)
_PRIVATE_NETWORKS = tuple(parse_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10",
))
_ORIGIN_SHAPE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\\]+/?", re.IGNORECASE | re.ASCII)
# Host names a browser reaches only on the local network or the tailnet (`tailscale serve`).
_PRIVATE_NAME_SUFFIXES = (".local", ".ts.net")


@dataclass(frozen=True)
class Origin:
    """An Origin header as parseOrigin reads it, lower-cased."""

    origin: str  # scheme://host[:port], the default port dropped (URL.origin)
    host: str  # host[:port]
    hostname: str

    @property
    def network(self) -> bool:
        """A scheme URL.origin spells out; for any other it is "null"."""
        return self.origin.split("://", 1)[0] in NETWORK_SCHEMES


NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})


def parse_origin(raw: str) -> Origin | None:
    """parseOrigin (origin-check.ts): scheme://authority and at most one `/`, no credentials;
    None for anything else, `null` included."""
    text = js_trim(raw)
    if not text or text == "null" or not _ORIGIN_SHAPE.fullmatch(text):
        return None
    scheme, authority = text.lower().split("://", 1)
    userinfo, at, authority = authority.rpartition("@")
    if at and userinfo.strip(":"):  # `http://@x` and `http://:@x` carry no credentials
        return None
    if scheme in NETWORK_SCHEMES:
        host = _network_host(scheme, authority)
    elif scheme == "file":  # refused, stricter: the gateway spells `file://host` for a named host
        return None
    else:  # an opaque host; URL.origin is "null", the gateway spells it scheme://host itself
        host = _opaque_host(authority.rstrip("/"))
    return Origin(f"{scheme}://{host}", host, _host_name(host)) if host else None


def _network_host(scheme: str, authority: str) -> str | None:
    """URL.host of a special-scheme origin (lower-cased), None where the URL parser throws. An
    internationalised name in its ASCII form (`xn--` labels) is taken when each such label is a
    valid IDNA A-label (red team: an allow-listed `https://app.xn--p1ai` was refused); a label the
    idna package rejects is refused, as the gateway also refuses most of them."""
    try:
        return canonicalize_target(f"{scheme}://{authority}").host
    except UnsupportedTarget:
        pass
    except InvalidTarget:
        return None
    name, colon, port = authority.rstrip("/").partition(":")
    labels = name.split(".")
    idn = {i: label for i, label in enumerate(labels) if label.startswith("xn--")}
    # A percent-escape could make labels (`%2e`) while the host is parsed, moving the A-labels.
    if not name.isascii() or "%" in name or not idn or not all(map(_a_label, idn.values())):
        return None
    # Each A-label stands in for a plain one while the rest of the host and the port are parsed.
    plain = ".".join(f"idn{i}" if i in idn else label for i, label in enumerate(labels))
    try:
        parsed = canonicalize_target(f"{scheme}://{plain}{colon}{port}").host
    except InvalidTarget:
        return None
    if parsed is None:
        return None
    parsed_name, colon, parsed_port = parsed.partition(":")
    restored = [idn.get(i, label) for i, label in enumerate(parsed_name.split("."))]
    return ".".join(restored) + colon + parsed_port


def _a_label(label: str) -> bool:
    try:
        idna.decode(label)
    except idna.IDNAError:
        return False
    return True


_OPAQUE_AUTHORITY = re.compile(r"(\[[0-9a-f:.]+\]|[^\[\]:]*)(?::([0-9]*))?")


def _opaque_host(authority: str) -> str | None:
    """A non-special URL's host[:port] as URL.host serialises it: an IPv6 literal in its canonical
    form, any other host with no forbidden host code point and everything past `~` percent-encoded
    (lower-cased, as the gateway lowers the origin), a port in range (leading zeros dropped, none
    when empty); None where the URL parser throws or finds no host. Control characters, which it
    strips or encodes by rules of their own, are refused (stricter)."""
    match = _OPAQUE_AUTHORITY.fullmatch(authority)
    if match is None:
        return None
    host, port = match.group(1), match.group(2)
    if port and int(port) > 65535:
        return None
    if host.startswith("["):
        try:
            host = canonicalize_target(f"http://{host}").host or ""
        except InvalidTarget:
            return None
    elif any(c in FORBIDDEN_HOST_CODE_POINTS or c < "!" for c in host):
        return None
    else:
        host = "".join(c if c < "\x7f" else quote(c, safe="").lower() for c in well_formed(host))
    if not host:
        return None
    return f"{host}:{int(port)}" if port else host


def _host_name(host: str) -> str:
    """resolveHostName: the host without its port; an IPv6 literal without its brackets."""
    if host.startswith("[") and "]" in host:
        return host[1:host.index("]")]
    if parse_ip(host) is not None and ":" in host:
        return host
    return host.split(":", 1)[0]


def _is_loopback_host(hostname: str) -> bool:
    """isLoopbackHost: `localhost` (trailing dots ignored) or a loopback IP literal."""
    return hostname.rstrip(".") == "localhost" or is_loopback(hostname)


def _trusted_same_origin_host(host: str, local_client: bool) -> bool:
    """isTrustedSameOriginHost: a loopback name for local clients only, a private or loopback IP,
    or a `.local` / `.ts.net` name."""
    hostname = _host_name(host)
    if not hostname:
        return False
    if _is_loopback_host(hostname):
        return local_client
    if parse_ip(hostname) is not None:
        return in_networks(hostname, _PRIVATE_NETWORKS)
    return hostname.endswith(_PRIVATE_NAME_SUFFIXES)


class OriginPolicy:
    """checkBrowserOrigin (origin-check.ts), for `none` and `trusted-proxy` (§2.3 step 8, §2.5):
    no Origin passes; otherwise the allow-list (or `*`), an Origin naming the request's own Host
    when that host is one the gateway trusts, or a loopback Origin from a local client. The
    gateway counts a trusted-proxy request as never local, a `none` one as local when it comes
    from loopback with no forwarding headers."""

    def __init__(self, allowed: Sequence[str], host_header_fallback: bool = False) -> None:
        self.allowed = {js_trim(entry).lower() for entry in allowed}
        # gateway.controlUi.dangerouslyAllowHostHeaderOriginFallback: any Origin naming the Host
        self.host_header_fallback = host_header_fallback

    def permits(self, view: RequestView, *, local_client: bool) -> bool:
        return self.refusal(view, local_client=local_client) is None

    def refusal(self, view: RequestView, *, local_client: bool) -> str | None:
        """None when the Origin passes, else checkBrowserOrigin's reason for refusing it."""
        # Node joins a repeated Origin with ", " (not a header it keeps the first of): the gateway
        # judges the joined value, which no allow-list entry matches (mutation review: the first was
        # judged alone, so an allowed Origin followed by any other passed here and not upstream).
        values = view.values("origin")
        raw = ", ".join(value.decode("latin-1") for value in values) if values else None
        if raw is None or not js_trim(raw):
            return None  # blank is absent (authorizeHttpBrowserOrigin: `origin?.trim()`); refused, it was stricter (red team)
        origin = parse_origin(raw)
        if origin is None:
            return "origin missing or invalid"
        if "*" in self.allowed or origin.origin in self.allowed:
            return None
        host = view.host
        if host and origin.host == host and (self.host_header_fallback or _trusted_same_origin_host(host, local_client)):
            return None
        return None if local_client and _is_loopback_host(origin.hostname) else "origin not allowed"


class Authenticator(Protocol):
    def authenticate(self, view: RequestView, attribution: Attribution) -> AuthOutcome: ...

    def rate_limited(self, attribution: Attribution) -> bool:
        """Whether the auth-failure limiter gates this request (shared-secret checks only, §3)."""
        ...


# Upstream's codes for a shared-secret check, by mode (`<mode>_not_configured`, `<mode>_mismatch`).
_NOT_CONFIGURED = {"token": Reason.TOKEN_NOT_CONFIGURED, "password": Reason.PASSWORD_NOT_CONFIGURED}
_MISMATCH = {"token": Reason.TOKEN_MISMATCH, "password": Reason.PASSWORD_MISMATCH}


@dataclass(frozen=True)
class SharedSecretAuth:
    """Token or password mode: the secret, and those kept during a rotation, each compared in
    constant time (all of them, whichever matches)."""

    method: str
    secret: str | None = field(repr=False)
    previous: tuple[str, ...] = field(default=(), repr=False)

    def authenticate(self, view: RequestView, attribution: Attribution) -> AuthOutcome:
        return self.check(bearer_credential(view))

    def check(self, credential: str | None) -> AuthOutcome:
        """One presented secret (a Bearer, or the `auth` of a WebSocket connect frame)."""
        if credential is None:
            return AuthOutcome(False, self.method, Reason.CREDENTIAL_MISSING, shared_secret=True)
        if self.secret is None:
            return AuthOutcome(False, self.method, _NOT_CONFIGURED[self.method], presented=True, shared_secret=True)
        current = safe_equal(credential, self.secret)
        previous = [safe_equal(credential, old) for old in self.previous]
        ok = current or any(previous)
        return AuthOutcome(ok, self.method, Reason.OK if ok else _MISMATCH[self.method], presented=True,
                           shared_secret=True, previous_secret=ok and not current)

    def rate_limited(self, attribution: Attribution) -> bool:
        return True


@dataclass(frozen=True)
class NoneAuth:
    origins: OriginPolicy

    def authenticate(self, view: RequestView, attribution: Attribution) -> AuthOutcome:
        if not self.origins.permits(view, local_client=attribution.kind == "direct-local"):
            return AuthOutcome(False, "none", Reason.ORIGIN_NOT_ALLOWED)
        return AuthOutcome(True, "none")

    def rate_limited(self, attribution: Attribution) -> bool:
        return False


@dataclass(frozen=True)
class TrustedProxyAuth:
    trusted: tuple[IPNetwork, ...]
    user_header: str | None
    required_headers: tuple[str, ...]
    allow_users: frozenset[str]
    allow_loopback: bool
    origins: OriginPolicy
    fallback: SharedSecretAuth | None  # local-direct password fallback (L)
    # This host's own addresses, read once at start-up; None when they could not be read.
    local_addresses: frozenset[str] | None = frozenset()

    def authenticate(self, view: RequestView, attribution: Attribution) -> AuthOutcome:
        outcome = self._check(view, attribution)
        if outcome.ok or not self.rate_limited(attribution):
            return outcome
        if bearer_credential(view) is not None:
            return self.fallback.authenticate(view, attribution)  # type: ignore[union-attr]
        return outcome

    def rate_limited(self, attribution: Attribution) -> bool:
        """Only the local-direct password fallback is a shared-secret check here."""
        return self.fallback is not None and attribution.kind == "direct-local"

    def _check(self, view: RequestView, attribution: Attribution) -> AuthOutcome:
        def fail(reason: ReasonCode) -> AuthOutcome:
            return AuthOutcome(False, "trusted-proxy", reason)

        if not self.user_header or not self.trusted:
            return fail(Reason.TRUSTED_PROXY_NOT_CONFIGURED)
        peer = attribution.peer_ip
        if not in_networks(peer, self.trusted):
            return fail(Reason.TRUSTED_PROXY_UNTRUSTED_SOURCE)
        if is_loopback(peer):
            if not self.allow_loopback:
                return fail(Reason.TRUSTED_PROXY_LOOPBACK_SOURCE)
        elif self.local_addresses is None:
            return fail(Reason.TRUSTED_PROXY_LOCAL_INTERFACE_CHECK_FAILED)
        elif peer in self.local_addresses:
            return fail(Reason.TRUSTED_PROXY_LOCAL_INTERFACE_SOURCE)
        for name in self.required_headers:
            if not js_trim(view.first(name) or ""):
                return fail(MissingHeader(name))
        spelled = js_trim(view.first(self.user_header) or "")
        user = read_identity(spelled)
        if user is None:
            return fail(Reason.TRUSTED_PROXY_USER_MISSING)
        if self.allow_users and user not in self.allow_users:
            return fail(Reason.TRUSTED_PROXY_USER_NOT_ALLOWED)
        if attribution.kind != "trusted-proxy":
            return fail(Reason.TRUSTED_PROXY_ATTRIBUTION_REQUIRED)
        if not self.origins.permits(view, local_client=False):
            return fail(Reason.TRUSTED_PROXY_ORIGIN_NOT_ALLOWED)
        return AuthOutcome(True, "trusted-proxy", user=user, user_header_value=spelled)


def origin_policy(config: Config) -> OriginPolicy:
    control_ui = config.rules.gateway.control_ui
    return OriginPolicy(control_ui.allowed_origins, control_ui.dangerously_allow_host_header_origin_fallback)


def build_authenticator(config: Config) -> Authenticator:
    """The authenticator for the configured mode."""
    secrets = config.secrets
    gateway = config.rules.gateway
    origins = origin_policy(config)
    if secrets.mode == "none":
        return NoneAuth(origins)
    if secrets.mode == "trusted-proxy":
        tp = gateway.auth.trusted_proxy
        try:
            local_addresses: frozenset[str] | None = frozenset(
                ip_text(a) for a in local_interface_addresses()
            )
        except OSError as exc:
            log.error("cannot read this host's interface addresses (%s): trusted-proxy requests from "
                      "non-loopback peers will be refused", exc)
            local_addresses = None
        return TrustedProxyAuth(
            trusted=gateway.trusted_networks,
            user_header=tp.user_header,  # lower-cased by the config validator
            required_headers=tp.required_headers,
            allow_users=frozenset(tp.allow_users),
            allow_loopback=tp.allow_loopback,
            origins=origins,
            fallback=SharedSecretAuth("password", secrets.password, secrets.previous_passwords) if secrets.password else None,
            local_addresses=local_addresses,
        )
    if secrets.mode == "token":
        return SharedSecretAuth("token", secrets.token, secrets.previous_tokens)
    return SharedSecretAuth("password", secrets.password, secrets.previous_passwords)
