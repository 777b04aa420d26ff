"""Configuration: one file (YAML or JSON5), environment and flags, validated once at start-up.

Precedence for the sidecar's own settings is written in one place (`SidecarSettings`):
flags > environment (`OPENCLAW_SIDECAR_*`, nested with `__`) > file > defaults. The rules use
OpenClaw's own key shape at the top level; `sidecar.openclawConfig` reads them from the
gateway's JSON5 file, and rules in the sidecar file override it key by key.
"""

from __future__ import annotations

import contextvars
import importlib.util
import json
import math
import os
import re
import tempfile
from types import MappingProxyType
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import json5
import limits
import yaml
from pydantic import (
    AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, StrictBool, ValidationError,
    ValidationInfo, field_validator, model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .errors import ConfigError
from .headers import ACCOUNT_HEADER, CHANNEL_HEADER, HOP_BY_HOP, OWNED_NAMES, PROTECTED_PREFIXES, TOKEN_CHAR
from .identities import for_identity
from .ipaddrs import IPNetwork, is_loopback, parse_network
from .openclaw_env import (
    KNOWN_WEAK_SECRETS, REDACTED_SECRET_VALUES, contains_reference, file_environment, secret_reference, substitute_all,
)
from .openclaw_include import IncludeError, resolve_includes
from .scopes import KNOWN_SCOPES
from .toolpolicy import js_trim
from .upstream_tls import check_ca_file, normalize_fingerprint
from .storage_uri import async_storage_uri, carries_password, redact_uri

# Keys are camelCase in files (OpenClaw's style); snake_case is accepted too, e.g. in env names.
_ALIASES = AliasGenerator(validation_alias=lambda name: AliasChoices(to_camel(name), name))
_STRICT = ConfigDict(extra="forbid", frozen=True, alias_generator=_ALIASES)
_LENIENT = ConfigDict(extra="ignore", frozen=True, alias_generator=_ALIASES)

DEFAULT_CONTEXT_HEADERS = (CHANNEL_HEADER, ACCOUNT_HEADER, "x-openclaw-message-to", "x-openclaw-thread-id")


def _default_runtime_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"openclaw-sidecar-{os.getuid()}"


_TOKEN = re.compile(TOKEN_CHAR + "+")
# Owned headers the sidecar writes on every forwarded request: a gateway demanding one of its
# proxy finds it there (it checks only that it is there).
_ALWAYS_SENT_UPSTREAM = frozenset({"x-request-id"})
# Headers the sidecar itself writes upstream (or that frame the message): a configured identity
# header may not be one of them, or the identity would overwrite or duplicate them.
_SIDECAR_WRITTEN = _ALWAYS_SENT_UPSTREAM | {
    "authorization", "x-openclaw-scopes", "x-forwarded-for", "host", "content-length",
    "transfer-encoding", "connection",
}


def header_name(name: str) -> str:
    """A configured header name, lower-cased; anything but an RFC 9110 token is an error."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    return name.lower()


def identity_header_name(name: str | None) -> str | None:
    if name is None:
        return None
    lowered = header_name(js_trim(name))  # the gateway trims and lower-cases the name it reads
    if lowered in _SIDECAR_WRITTEN:
        raise ValueError(f"{name!r} is written by the sidecar itself and cannot carry an identity")
    return lowered


def _lower_names(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(header_name(js_trim(n)) for n in names)


def relayable_required_headers(names: tuple[str, ...]) -> tuple[str, ...]:
    """`trustedProxy.requiredHeaders` the sidecar can hand on: the gateway demands them of its
    own proxy (the sidecar) as the sidecar demands them of the ingress. X-Forwarded-* ones are
    relayed as the ingress sent them, X-Request-Id is the sidecar's own; any other header the
    sidecar owns or deletes would never arrive, and the gateway would refuse every request."""
    lowered = _lower_names(names)
    for name in lowered:
        if name in _ALWAYS_SENT_UPSTREAM:
            continue
        if name in OWNED_NAMES or name in HOP_BY_HOP or (name.startswith(PROTECTED_PREFIXES) and not name.startswith("x-forwarded-")):
            raise ValueError(f"{name!r} is a header the sidecar deletes and never relays: the gateway behind it "
                             "would refuse every request")
    return lowered


# ---- the sidecar's own settings (strict: a typo is a start-up error) -------------------------


class Timeouts(BaseModel):
    model_config = _STRICT
    # From a connection's start, or the end of its previous exchange, until a complete request
    # head: slow heads get 408 and idle keep-alive connections are closed.
    head_read_seconds: float = Field(10.0, gt=0)
    body_read_seconds: float = Field(30.0, gt=0)
    upstream_read_seconds: float = Field(300.0, gt=0)


class RequestRateLimit(BaseModel):
    model_config = _STRICT
    limit: str
    per: Literal["identity", "ip"] = "identity"
    per_tool: bool = False

    @field_validator("limit")
    @classmethod
    def _parse(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError as exc:
            raise ValueError(f"not a rate like '120/minute': {exc}") from None
        return value


class RefusalPacing(BaseModel):
    """sidecar/pacing.py: past `afterRefusals` refusals in a row a client's refusals are answered
    after a delay doubling from `baseDelayMs` to `maxDelayMs` (0 turns pacing off)."""

    model_config = _STRICT
    after_refusals: int = Field(10, ge=0)
    base_delay_ms: int = Field(50, ge=0)
    max_delay_ms: int = Field(2_000, ge=0)


class RateLimitSettings(BaseModel):
    model_config = _STRICT
    storage: str = Field("memory://", repr=False)  # a Redis URI may carry a password
    # The Redis password in a file of its own (a Kubernetes Secret, a systemd credential), so that
    # neither the URI nor the config file holds it; read once, when the storage is built at
    # start-up (read_storage_password), so a reload never depends on it.
    storage_password_file: Path | None = None
    fail_closed: bool = False
    max_entries: int = Field(10_000, ge=1)
    loopback_delay_base_ms: int = Field(250, ge=0)
    loopback_delay_max_ms: int = Field(5_000, ge=0)
    requests: RequestRateLimit | None = None
    refusal_pacing: RefusalPacing = RefusalPacing()

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        async_storage_uri(value)  # the check the limiter's storage is built with: ValueError names the scheme
        return value

    @field_validator("storage_password_file")
    @classmethod
    def _redis_without_inline_password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        storage = info.data.get("storage")
        if value is None or storage is None:
            return value
        if async_storage_uri(storage).startswith("async+memory://"):
            raise ValueError("memory:// has no password; set it only with a Redis storage URI")
        if carries_password(storage):
            raise ValueError("the storage URI already carries a password; keep it in one place")
        return value


class ContextHeaders(BaseModel):
    """Which `x-openclaw-*` context headers reach the gateway, and per-identity pinned values."""

    model_config = _STRICT
    allow: tuple[str, ...] = DEFAULT_CONTEXT_HEADERS
    pinned: dict[str, dict[str, str]] = {}

    @field_validator("allow")
    @classmethod
    def _context_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .headers import is_context_header

        names = _lower_names(value)
        for name in names:
            if not is_context_header(name):
                raise ValueError(f"{name!r} is not an x-openclaw-* context header the sidecar lets clients set")
        return names


    def pinned_for(self, identity: str | None) -> dict[str, str]:
        """"*" pins apply to everyone; an identity's own pins add to them and win per header."""
        return {**self.pinned.get("*", {}), **for_identity(self.pinned, identity, {})}

    @field_validator("pinned")
    @classmethod
    def _pinnable(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        from .headers import is_context_header

        for identity, headers in value.items():
            for name, pinned in headers.items():
                header_name(name)
                if not is_context_header(name):
                    raise ValueError(f"{identity}: {name!r} is not an x-openclaw-* context header")
                if not pinned.isascii() or not pinned.isprintable():
                    raise ValueError(f"{identity}: the value for {name!r} must be printable ASCII")
        return value


class ScopeCeilingSettings(BaseModel):
    model_config = _STRICT
    default: tuple[str, ...] | None = None
    identities: dict[str, tuple[str, ...]] = {}

    @field_validator("default")
    @classmethod
    def _known_default(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _known_scopes(value, "") if value is not None else None

    @field_validator("identities")
    @classmethod
    def _known_by_identity(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for identity, scopes in value.items():
            _known_scopes(scopes, f"{identity}: ")
        return value


def _known_scopes(scopes: tuple[str, ...], where: str) -> tuple[str, ...]:
    """A ceiling holds operator scopes the gateway knows: a misspelt one would silently take its
    scope away from everybody under that ceiling."""
    unknown = [scope for scope in scopes if scope not in KNOWN_SCOPES]
    if unknown:
        raise ValueError(f"{where}unknown scope(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_SCOPES)}")
    return scopes


class RouteSettings(BaseModel):
    model_config = _STRICT
    # Route-table names opened beyond the default policy (sidecar/routes.py, README).
    allow: tuple[str, ...] = ()
    # The Control UI catch-all: served to anyone as the gateway does (`public`), only to callers
    # the sidecar authenticated (`authenticated`: for plugins with GET routes of their own), or not.
    control_ui: Literal["public", "authenticated", "off"] = "public"
    # Path prefixes of the route the gateway will run, refused outright with 404.
    deny: tuple[str, ...] = ()

    @field_validator("deny")
    @classmethod
    def _path_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """An empty prefix would refuse every request, health probes included, and one without
        a leading slash none: both are typos."""
        for index, prefix in enumerate(value):
            if not prefix.startswith("/"):
                raise ValueError(f"entry {index} ({prefix!r}) is no path prefix: it must start with '/'")
        return value

    @field_validator("allow")
    @classmethod
    def _known_routes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .routes import route_names

        known = route_names()
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown route name(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        return value


class RefusedFrames(BaseModel):
    """The refused frames one RPC connection may collect before it is closed (sidecar/pacing.py
    RefusalBudget): `burst` at once, given back at `perSecond`."""

    model_config = _STRICT
    burst: int = Field(40, ge=1)
    per_second: float = Field(2.0, ge=0)


class WebSocketSettings(BaseModel):
    """The gateway's WebSocket RPC: `enforce` judges every frame (sidecar/rpc.py), `off` refuses
    every upgrade, `passthrough` relays frames unread after authenticating the upgrade."""

    model_config = _STRICT
    mode: Literal["enforce", "off", "passthrough"] = "enforce"
    allow_nodes: bool = False
    # Methods opened past the deny list (they still need their scope).
    allow_methods: tuple[str, ...] = ()
    connect_seconds: float = Field(10.0, gt=0)  # the first frame must come by then
    # RPC upgrades one client may hold before its connect frame is accepted (sidecar/shares.py).
    unauthenticated_per_client: int = Field(8, ge=1)
    refused_frames: RefusedFrames = RefusedFrames()

    @field_validator("allow_methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .rpc import method_catalogue

        unknown = [name for name in value if name not in method_catalogue()]
        if unknown:
            raise ValueError(f"unknown gateway method(s) {', '.join(map(repr, unknown))}")
        return value


class UpstreamAuth(BaseModel):
    """The credential the sidecar presents to the gateway (default: the shared secret itself)."""

    model_config = _STRICT
    token: SecretStr | None = None
    token_file: Path | None = None
    # Header carrying a trusted-proxy identity to the gateway; default trustedProxy.userHeader.
    user_header: str | None = None

    _identity_header = field_validator("user_header")(lambda cls, v: identity_header_name(v))


class UpstreamTlsSettings(BaseModel):
    """How an https:// upstream is trusted (default: certifi's CAs, as mitmproxy's, with a hostname check). The
    gateway's own TLS (`gateway.tls.enabled`) serves a self-signed certificate no hostname check
    matches: pin it by `fingerprint` (SHA-256, as `gateway.remote.tlsFingerprint` takes it)."""

    model_config = _STRICT
    ca_file: Path | None = None
    fingerprint: str | None = None

    @field_validator("fingerprint")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pin = normalize_fingerprint(value)
        if pin is None:
            raise ValueError("is not a SHA-256 certificate fingerprint: 64 hex digits, optionally in pairs "
                             "separated by ':' and prefixed 'sha256:'")
        return pin

    @field_validator("ca_file")
    @classmethod
    def _trustable(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_ca_file(value)
        return value

    @model_validator(mode="after")
    def _one_way(self) -> "UpstreamTlsSettings":
        if self.ca_file is not None and self.fingerprint is not None:
            raise ValueError("set caFile or fingerprint, not both: a pinned certificate is trusted alone")
        return self

    @property
    def configured(self) -> bool:
        return self.ca_file is not None or self.fingerprint is not None


class SidecarAuth(BaseModel):
    """Secrets accepted beside the current one while clients move over (rotation); audited as
    `previous` so the last user of an old secret can be found before it is removed."""

    model_config = _STRICT
    previous_tokens: tuple[SecretStr, ...] = ()
    previous_token_files: tuple[Path, ...] = ()
    previous_passwords: tuple[SecretStr, ...] = ()
    previous_password_files: tuple[Path, ...] = ()


class _FileSection(PydanticBaseSettingsSource):
    """The `sidecar:` section of the config file, as the lowest-priority settings source."""

    current: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("sidecar_file_section", default=MappingProxyType({}))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ hands over the whole section at once

    def __call__(self) -> dict[str, Any]:
        # Top-level settings carry no alias (an alias would make pydantic-settings read the
        # environment without our prefix), so the file's camelCase keys are mapped here, at
        # every depth, so that a file key and its environment override merge as one key.
        return _snake_keys(self.settings_cls, self.current.get())


class _SnakeKeyed(PydanticBaseSettingsSource):
    """Another source (the environment's), its keys mapped as the file's are: a JSON object in a
    variable may spell them camelCase too, and beside the file's snake-cased key for the same
    setting the two spellings were taken for an unknown key."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ hands over the source's whole result

    def __call__(self) -> dict[str, Any]:
        return _snake_keys(self.settings_cls, self.source())


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (directly or as `Model | None`), if any."""
    return next((t for t in (annotation, *getattr(annotation, "__args__", ()))
                 if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _snake_keys(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    fields = model.model_fields
    by_camel = {to_camel(name): name for name in fields}
    converted: dict[str, Any] = {}
    for key, value in data.items():
        name = by_camel.get(key, key)
        nested = _nested_model(fields[name].annotation) if name in fields else None
        converted[name] = _snake_keys(nested, value) if nested and isinstance(value, Mapping) else value
    return converted


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPENCLAW_SIDECAR_", env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False,
    )

    listen: str = "127.0.0.1:18790"
    upstream: str = "http://127.0.0.1:18789"
    runtime_dir: Path = Field(default_factory=_default_runtime_dir)
    openclaw_config: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # /healthz, /readyz and /metrics on a port of their own, never on the proxied port (corpus G6).
    admin_listen: str = "127.0.0.1:18791"
    # One JSON object per line for every decision: `stdout`, `stderr` or a file path.
    audit_log: str = "stdout"
    # On SIGTERM, in-flight requests get this long to finish before the process exits.
    drain_seconds: float = Field(20.0, ge=0)
    # false: shadow mode, policy refusals are logged and counted but forwarded (README).
    enforce: bool = True
    # Open client connections; beyond it a connection is closed at accept. Default: what the
    # process's file-descriptor limit allows (two descriptors a proxied connection, some spare).
    max_connections: int | None = Field(None, ge=1)
    # The event loop mitmproxy runs on: libuv's (uvloop) costs 2-7% less CPU per proxied call
    # than the standard library's (bench row 1c-loop); `asyncio` is the fallback.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    timeouts: Timeouts = Timeouts()
    rate_limit: RateLimitSettings = RateLimitSettings()
    context_headers: ContextHeaders = ContextHeaders()
    scope_ceilings: ScopeCeilingSettings = ScopeCeilingSettings()
    routes: RouteSettings = RouteSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    upstream_auth: UpstreamAuth = UpstreamAuth()
    upstream_tls: UpstreamTlsSettings = UpstreamTlsSettings()
    auth: SidecarAuth = SidecarAuth()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (passed as init kwargs) > environment > the config file > defaults.
        return init_settings, _SnakeKeyed(settings_cls, env_settings), _FileSection(settings_cls)

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("event_loop")
    @classmethod
    def _loop_installed(cls, value: str) -> str:
        if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("uvloop is not installed: `pip install uvloop`, or set `asyncio`")
        return value

    @field_validator("audit_log")
    @classmethod
    def _writable(cls, value: str) -> str:
        """A file the process can append to, checked before the first decision: the first line
        written to a missing directory was lost with nothing but a log line (review)."""
        if value in ("stdout", "stderr"):
            return value
        path = Path(value)
        if path.is_dir():
            raise ValueError(f"{value!r} is a directory: name a file in it")
        if not path.parent.is_dir():
            raise ValueError(f"directory {str(path.parent)!r} does not exist")
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            raise ValueError(f"{value!r} is not writable by this process")
        return value

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def http_url(host: str, port: int) -> str:
    """The URL of a listener, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        nested = _nested_model(info.annotation)
        if nested is not None:
            names |= _field_names(nested)
    return names


_SETTING_NAMES = _field_names(SidecarSettings)


# ---- the rules, in OpenClaw's key shape (lenient: unknown OpenClaw keys are ignored) ---------


class TrustedProxyConfig(BaseModel):
    model_config = _LENIENT
    user_header: str | None = None
    required_headers: tuple[str, ...] = ()

    _identity_header = field_validator("user_header")(lambda cls, v: identity_header_name(v))
    allow_users: tuple[str, ...] = ()
    allow_loopback: StrictBool = False

    _relayable = field_validator("required_headers")(lambda cls, v: relayable_required_headers(v))


# Node's timer ceiling, to which the gateway's resolveTimerTimeoutMs clamps a duration.
_MAX_TIMER_MS = 2_147_000_000


def _gateway_number(value: Any) -> float:
    """What the gateway's schema takes for these keys (zod `number()`): a finite number, not a
    string or a boolean, which would fail its whole file."""
    try:
        number = float(value) if type(value) in (int, float) else math.nan  # an int past a float's range overflows
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _gateway_attempts(value: Any) -> int:
    """The gateway compares failures in the window (a whole count, 1 with the failure just
    recorded) with `maxAttempts` as given: 2.5 locks at 3, anything up to 1 at the first, and
    anything up to 0 also at every check while it holds the client (read as 0)."""
    return max(0, math.ceil(_gateway_number(value)))


def _gateway_duration_ms(value: Any) -> int:
    """As the gateway's resolveTimerTimeoutMs(value, default, 0): whole milliseconds, from 0
    (no window, no lockout) up to Node's timer ceiling."""
    return min(max(math.floor(_gateway_number(value)), 0), _MAX_TIMER_MS)


class AuthRateLimitConfig(BaseModel):
    """Read as the gateway reads it, so that every value its schema takes is taken here too: an
    edit refused here alone would keep a token rotated in the same edit out. Its keys are all
    here, and an unknown one fails the gateway's whole file (a strict object), so it is refused
    here too: applied here alone, it left the sidecar on limits the gateway never took."""
    model_config = _STRICT
    max_attempts: Annotated[int, BeforeValidator(_gateway_attempts)] = 10
    window_ms: Annotated[int, BeforeValidator(_gateway_duration_ms)] = 60_000
    lockout_ms: Annotated[int, BeforeValidator(_gateway_duration_ms)] = 300_000
    exempt_loopback: StrictBool = True


class GatewayAuthConfig(BaseModel):
    model_config = _LENIENT
    mode: Literal["none", "token", "password", "trusted-proxy"] | None = None
    token: SecretStr | None = None
    password: SecretStr | None = None
    token_file: Path | None = None
    password_file: Path | None = None
    trusted_proxy: TrustedProxyConfig = TrustedProxyConfig()
    rate_limit: AuthRateLimitConfig = AuthRateLimitConfig()


class GatewayToolsConfig(BaseModel):
    model_config = _LENIENT
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


def _resolved_path(path: str | None) -> str | None:
    """A path the routes are laid out by must hold no `${NAME}` left unresolved: the variable may be
    set in the gateway's environment, where it names a path the sidecar cannot know."""
    if path is not None and contains_reference(path):
        raise ValueError("holds a ${NAME} the sidecar's environment does not set; the gateway may read another path")
    return path


class ControlUiConfig(BaseModel):
    model_config = _LENIENT
    allowed_origins: tuple[str, ...] = ()
    dangerously_allow_host_header_origin_fallback: StrictBool = False
    enabled: StrictBool = True
    base_path: str | None = None

    _resolved = field_validator("base_path")(lambda cls, v: _resolved_path(v))


class Switch(BaseModel):
    """A gateway section the sidecar reads only `enabled` of: whether a route is served, or TLS spoken."""

    model_config = _LENIENT
    enabled: StrictBool = False


class HttpEndpoints(BaseModel):
    model_config = _LENIENT
    chat_completions: Switch = Switch()
    responses: Switch = Switch()


class GatewayHttpConfig(BaseModel):
    model_config = _LENIENT
    endpoints: HttpEndpoints = HttpEndpoints()


class McpConfig(BaseModel):
    """Only whether the gateway serves MCP app shells; the rest is the gateway's business."""

    model_config = _LENIENT
    apps: Switch = Switch()


class HooksConfig(BaseModel):
    """Only whether and where the gateway serves hooks; their token is the gateway's business."""

    model_config = _LENIENT
    enabled: StrictBool = False
    path: str | None = None

    _resolved = field_validator("path")(lambda cls, v: _resolved_path(v))

    @model_validator(mode="after")
    def _not_the_root(self) -> "HooksConfig":
        from .routes import normalize_hooks_path

        if self.enabled and normalize_hooks_path(self.path) == "/":
            raise ValueError("hooks.path may not be '/' (the gateway refuses it too)")
        return self


class GatewayConfig(BaseModel):
    model_config = _LENIENT
    auth: GatewayAuthConfig = GatewayAuthConfig()
    trusted_proxies: tuple[str, ...] = ()
    allow_real_ip_fallback: StrictBool = False
    tools: GatewayToolsConfig = GatewayToolsConfig()
    control_ui: ControlUiConfig = ControlUiConfig()
    http: GatewayHttpConfig = GatewayHttpConfig()
    tls: Switch = Switch()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Each entry an IP or CIDR; blank ones are dropped, as the gateway skips them (refusing
        them refused an edit the gateway took, with a token rotated in it)."""
        entries = tuple(entry for entry in value if js_trim(entry))
        for entry in entries:
            parse_network(entry)  # ValueError names the entry
        return entries

    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(map(parse_network, self.trusted_proxies))


# What the tool policy chain reads of `tools`, `agents`, `session` and `channels`: `True` keeps a
# value whole, `[shape]` each item of a list, `{"*": shape}` each value of an object. The rest (bot
# tokens, API keys, sandbox environments) never enters the sidecar, so no dump or log can show it.
_TOOL_POLICY: dict[str, Any] = {
    "profile": True, "allow": True, "alsoAllow": True, "deny": True, "byProvider": True, "toolsBySender": True,
    "updatePlan": True, "sandbox": {"tools": True}, "subagents": {"tools": True},
    "web": {"search": {"enabled": True}, "fetch": {"enabled": True}},
}
_AGENT: dict[str, Any] = {"id": True, "default": True, "tools": _TOOL_POLICY, "sandbox": {"mode": True}}
_POLICY_SHAPES: dict[str, Any] = {
    "tools": _TOOL_POLICY,
    "agents": {"ownership": True, "list": [_AGENT], "entries": {"*": _AGENT}, "defaults": {
        "systemAgent": {"agentId": True}, "sessionStore": {"agentId": True}, "tools": _TOOL_POLICY,
        "sandbox": {"mode": True}, "subagents": {"maxSpawnDepth": True}}},
    "session": {"scope": True, "mainKey": True, "store": True},
    "channels": {"*": {"groups": True, "accounts": {"*": {"groups": True}}}},
}


def _subset(value: Any, shape: Any) -> Any:
    if shape is True:
        return value
    if isinstance(shape, list):
        return [_subset(item, shape[0]) for item in value] if isinstance(value, list) else _hollow(value)
    if not isinstance(value, dict):
        return _hollow(value)
    if "*" in shape:
        return {key: _subset(item, shape["*"]) for key, item in value.items()}
    return {key: _subset(value[key], sub) for key, sub in shape.items() if key in value}


def _hollow(value: Any) -> Any:
    """A value not of the shape the policy reads: the policy reader tells only its type and that it
    is set (a list where an object belongs is no object to it), so that is all that is kept. Its
    content, a list of accounts with their tokens say, would otherwise reach check-config's dump."""
    if isinstance(value, (dict, list)):
        return type(value)()
    return "[not read]" if isinstance(value, str) else value


class OpenClawRules(BaseModel):
    model_config = _LENIENT
    gateway: GatewayConfig = GatewayConfig()
    hooks: HooksConfig = HooksConfig()
    mcp: McpConfig = McpConfig()
    # Read by the tool policy chain (sidecar/toolchain.py) as the gateway reads them: raw, with
    # JavaScript's own tests (`Array.isArray`, `??`), so a shape the gateway tolerates is read the same.
    tools: dict[str, Any] = {}
    agents: dict[str, Any] = {}
    session: dict[str, Any] = {}
    channels: dict[str, Any] = {}

    @field_validator("tools", "agents", "session", "channels")
    @classmethod
    def _policy_only(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        assert info.field_name is not None
        return _subset(value, _POLICY_SHAPES[info.field_name])

    @property
    def route_switches(self) -> dict[str, bool]:
        """The settings that switch rows of the gateway's route table on (their `enabledBy`)."""
        endpoints = self.gateway.http.endpoints
        return {
            "hooks.enabled": self.hooks.enabled,
            "gateway.http.endpoints.chatCompletions.enabled": endpoints.chat_completions.enabled,
            "gateway.http.endpoints.responses.enabled": endpoints.responses.enabled,
            "mcp.apps.enabled": self.mcp.apps.enabled,
        }

    @property
    def switched_off(self) -> frozenset[str]:
        return frozenset(name for name, on in self.route_switches.items() if not on)


# ---- secrets --------------------------------------------------------------------------------

_MISSING_LITERALS = {"", "undefined", "null"}


def _present(value: str | SecretStr | None) -> str | None:
    """Blank, `undefined` and `null` count as missing, as upstream does."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or js_trim(value).lower() in _MISSING_LITERALS:
        return None
    return value


def _header_safe(secret: str | None, key: str) -> str | None:
    """A secret we may send upstream as `Authorization: Bearer ...`: no control characters."""
    if secret is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise ConfigError([(key, "contains control characters")])
    return secret


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _read_secret_file(path: Path, key: str) -> str | None:
    try:
        return _present(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError([(key, f"cannot read secret file {str(path)!r}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(key, f"secret file {str(path)!r} is not UTF-8 text")]) from None


def read_storage_password(settings: RateLimitSettings) -> str | None:
    """`sidecar.rateLimit.storagePasswordFile`'s content, for building the limiter's storage."""
    file = settings.storage_password_file
    if file is None:
        return None
    key = "sidecar.rateLimit.storagePasswordFile"
    password = _read_secret_file(file, key)
    if password is None:
        raise ConfigError([(key, f"{str(file)!r} is empty")])
    return password


def _secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """An inline secret (trimmed as a file's content is: a Secret put in the environment often
    ends with a newline), else its file's content (re-read at every reload, so a rotated
    Kubernetes Secret takes effect without a restart)."""
    secret = _present(value)
    secret = secret.strip() if secret is not None else None
    if secret is None and file is not None:
        secret = _read_secret_file(file, f"{key}File")
    return _header_safe(secret, key)


def _previous(values: tuple[SecretStr, ...], files: tuple[Path, ...], kind: str) -> tuple[str, ...]:
    """`sidecar.auth.previous<Kind>s` and `previous<Kind>Files`, each error at its entry's own key: a
    file's was spelt `previousTokensFiles[i]`, a key no file has, and a control character in it named none."""
    secrets = [_secret(v, None, f"sidecar.auth.previous{kind}s[{i}]") for i, v in enumerate(values)]
    for i, file in enumerate(files):
        key = f"sidecar.auth.previous{kind}Files[{i}]"
        secrets.append(_header_safe(_read_secret_file(file, key), key))
    return tuple(s for s in secrets if s is not None)


@dataclass(frozen=True)
class AuthSecrets:
    """The resolved auth mode and secrets; `problems` says why every request will be refused.
    Secrets stay out of repr, so a logged config or traceback never shows them."""

    mode: str
    token: str | None = field(repr=False)
    password: str | None = field(repr=False)
    upstream_credential: str | None = field(repr=False)
    upstream_kind: Literal["token", "password"] | None  # how the gateway expects it in a connect frame
    problems: tuple[str, ...]
    previous_tokens: tuple[str, ...] = field(default=(), repr=False)
    previous_passwords: tuple[str, ...] = field(default=(), repr=False)


def _gateway_credential(value: str | SecretStr | None) -> str | None:
    """The gateway's trimCredentialToUndefined: trimmed, and none while a `${NAME}` is left in it."""
    secret = _present(value)
    secret = js_trim(secret) if secret is not None else None
    return None if secret is None or contains_reference(secret) else secret


def resolve_credential_references(rules: dict[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """gateway.auth.token and .password written as SecretRefs (`$NAME`, `${NAME}`, an object),
    resolved as the gateway resolves them where the sidecar can: env refs, from `environ`. One it
    cannot (an unset variable; a file, exec or store ref) is dropped, so the sidecar's own
    tokenFile / passwordFile or OPENCLAW_GATEWAY_* apply, and the reason is returned."""
    gateway = rules.get("gateway")
    if not isinstance(gateway, Mapping) or not isinstance(auth := gateway.get("auth"), Mapping):
        return rules, {}
    resolved, unresolved = dict(auth), {}
    for kind in ("token", "password"):
        reference = secret_reference(auth.get(kind))
        if reference is None:
            continue
        source, name = reference
        value = environ.get(name) if source == "env" else None
        if value:
            resolved[kind] = value
        else:
            del resolved[kind]
            unresolved[kind] = f"gateway.auth.{kind} is {'the unset variable' if source == 'env' else f'a {source} SecretRef'} {name!r}"
    return {**rules, "gateway": {**gateway, "auth": resolved}}, unresolved


def _refuse_placeholder(mode: str, secret: str | None) -> None:
    """As the gateway refuses to start (or reload) with them: a redaction marker or a published
    example is not a credential, and taken literally it would be one everybody knows."""
    if secret is not None and (secret in REDACTED_SECRET_VALUES or secret in KNOWN_WEAK_SECRETS[mode]):
        raise ConfigError([(f"gateway.auth.{mode}", "is a redaction marker or a published example placeholder, not a "
                            "credential (the gateway refuses it too): set a real secret")])


def _gateway_secret(kind: str, inline: str | SecretStr | None, file: Path | None,
                    environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The gateway's token or password, config first (inline, then its file), then the environment,
    a later source never read; and the key of the one it came from, for errors to name."""
    key, variable = f"gateway.auth.{kind}", f"OPENCLAW_GATEWAY_{kind.upper()}"
    sources: tuple[tuple[str, Callable[[], str | None]], ...] = (
        (key, lambda: _header_safe(_gateway_credential(inline), key)),
        (f"{key}File", lambda: _secret(None, file, key)),
        (variable, lambda: _header_safe(_gateway_credential(environ.get(variable)), variable)))
    for source, read in sources:
        secret = read()
        if secret is not None:
            return secret, source
    return None, key


def resolve_secrets(rules: OpenClawRules, sidecar: SidecarSettings, environ: Mapping[str, str],
                    unresolved: Mapping[str, str] | None = None) -> AuthSecrets:
    auth = rules.gateway.auth
    token, token_source = _gateway_secret("token", auth.token, auth.token_file, environ)
    password, _ = _gateway_secret("password", auth.password, auth.password_file, environ)
    mode = auth.mode or ("password" if password else "token")
    if mode in ("token", "password"):
        _refuse_placeholder(mode, token if mode == "token" else password)
    elif password in REDACTED_SECRET_VALUES:
        password = None  # trusted-proxy: the local password fallback is off, as at the gateway

    problems: list[str] = []
    why = dict(unresolved or {})
    if mode == "token" and token is None:
        problems.append("gateway.auth.mode is token but no token resolved (gateway.auth.token, tokenFile or "
                        "OPENCLAW_GATEWAY_TOKEN)" + (f": {why['token']}" if "token" in why else ""))
    if mode == "password" and password is None:
        problems.append("gateway.auth.mode is password but no password resolved (gateway.auth.password, passwordFile or "
                        "OPENCLAW_GATEWAY_PASSWORD)" + (f": {why['password']}" if "password" in why else ""))
    if mode == "trusted-proxy":
        if token is not None:  # named where it came from: users removed tokenFile and met the same error (review)
            where = {"gateway.auth.token": " (in this file, or in the gateway's read through sidecar.openclawConfig: "
                                           "`token: null` under gateway.auth here drops it)",
                     "OPENCLAW_GATEWAY_TOKEN": " (in the environment)"}.get(token_source, "")
            raise ConfigError([(token_source, f"trusted-proxy mode and a token are mutually exclusive{where}")])
        if not auth.trusted_proxy.user_header:
            problems.append("gateway.auth.trustedProxy.userHeader is required in trusted-proxy mode")
        if not rules.gateway.trusted_proxies:
            problems.append("gateway.trustedProxies is empty: trusted-proxy mode trusts no one")

    upstream = _secret(sidecar.upstream_auth.token, sidecar.upstream_auth.token_file, "sidecar.upstreamAuth.token")
    kind: Literal["token", "password"] | None = "token"
    upstream_key = "sidecar.upstreamAuth.token"
    if upstream is None:
        upstream = token if mode == "token" else password if mode == "password" else None
        kind = "password" if mode == "password" else "token" if mode == "token" else None
        upstream_key = f"gateway.auth.{kind}"
    if upstream is not None and not _latin1(upstream):  # every forwarded request would fail to build its header
        raise ConfigError([(upstream_key, "holds characters outside Latin-1: no HTTP header can carry it upstream")])
    rotation = sidecar.auth
    return AuthSecrets(
        mode, token, password, upstream, kind if upstream is not None else None, tuple(problems),
        previous_tokens=_previous(rotation.previous_tokens, rotation.previous_token_files, "Token"),
        previous_passwords=_previous(rotation.previous_passwords, rotation.previous_password_files, "Password"),
    )


# ---- loading --------------------------------------------------------------------------------


# The top-level keys of the gateway's own config the sidecar reads (OpenClawRules).
RULE_KEYS = ("gateway", "hooks", "mcp", "tools", "agents", "session", "channels")


@dataclass(frozen=True)
class Config:
    sidecar: SidecarSettings
    rules: OpenClawRules
    secrets: AuthSecrets
    included: tuple[Path, ...] = ()  # files the gateway's config read through `$include`


def read_structured_file(path: Path, key: str) -> dict[str, Any]:
    """YAML or JSON5 by extension (JSON is both); anything else is tried as JSON5 then YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(key, f"cannot read {str(path)!r}: {exc.strerror}")]) from None
    suffix = path.suffix.lower()
    parsers = [yaml.safe_load] if suffix in (".yaml", ".yml") else [json5.loads]
    if suffix not in (".yaml", ".yml", ".json", ".json5"):
        parsers.append(yaml.safe_load)
    errors = []
    for parse in parsers:
        try:
            data = parse(text)
        except Exception as exc:  # yaml and json5 raise their own types; both mean "not parseable"
            errors.append(_parse_error(exc))
            continue
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError([(key, f"{str(path)!r} must hold a mapping at the top level")])
        return data
    raise ConfigError([(key, f"cannot parse {str(path)!r}: {errors[-1]}")])


def _parse_error(exc: Exception) -> str:
    """The parser's complaint, with YAML's line and column kept (json5 puts them in its message)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# pydantic's wording for the mistakes people make in a config file, in plain words.
_PLAIN_WORDS = {
    "tuple_type": "must be a list", "list_type": "must be a list", "dict_type": "must be a mapping",
    "extra_forbidden": "is not a setting the sidecar knows (check the spelling)",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "int_parsing": "must be a whole number", "float_parsing": "must be a number",
    "string_type": "must be a string", "missing": "is required",
}


def _validation_problems(exc: ValidationError, prefix: str, flags: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Each error at its key as spelled in the file; for the sidecar's settings (`flags` given), also
    the OPENCLAW_SIDECAR_* variable a bad value came from, which the key alone sent users to a
    file that was right (review)."""
    problems = []
    for err in exc.errors():
        names = [str(p) for p in err["loc"]]
        source = _environment_source(names, flags) if flags is not None else None
        path = ".".join(to_camel(p) if p in _SETTING_NAMES else p for p in names)
        words = _PLAIN_WORDS.get(err["type"], err["msg"])
        problems.append((f"{prefix}{path}" if path else prefix.rstrip("."), f"{words} (from {source})" if source else words))
    return problems


def _environment_source(names: list[str], flags: Mapping[str, Any]) -> str | None:
    """The variable that set the setting at `names`, or set an object holding it with that key in
    its JSON, unless a flag did."""
    if not names or names[0] in flags:
        return None
    present = {name.upper(): name for name in os.environ}
    for end in range(len(names), 0, -1):
        variable = present.get(ENV_PREFIX + "__".join(names[:end]).upper())
        if variable is not None and (end == len(names) or _holds(os.environ[variable], names[end:])):
            return variable
    return None


def _holds(text: str, names: list[str]) -> bool:
    """Whether a JSON object holds the key path `names` (each key snake_case or camelCase)."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        return False
    for name in names:
        if not isinstance(value, Mapping):
            return False
        key = next((k for k in (name, to_camel(name)) if k in value), None)
        if key is None:
            return False
        value = value[key]
    return True


ENV_PREFIX = "OPENCLAW_SIDECAR_"


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """`OPENCLAW_SIDECAR_*` variables that name no setting (pydantic-settings ignores them): a
    misspelled override must not go unnoticed."""
    def known(path: list[str], model: type[BaseModel]) -> bool:
        field = model.model_fields.get(path[0])
        if field is None or len(path) == 1:
            return field is not None
        nested = _nested_model(field.annotation)
        return nested is not None and known(path[1:], nested)

    return sorted(
        name for name in environ
        if name.upper().startswith(ENV_PREFIX) and not known(name[len(ENV_PREFIX):].lower().split("__"), SidecarSettings)
    )


def openclaw_config_path(config_path: Path | None, sidecar: SidecarSettings) -> Path | None:
    """`sidecar.openclawConfig`, relative to the sidecar's own config file."""
    if sidecar.openclaw_config is None:
        return None
    base_dir = config_path.parent if config_path is not None else Path.cwd()
    return sidecar.openclaw_config if sidecar.openclaw_config.is_absolute() else base_dir / sidecar.openclaw_config


def _nested(document: Any, *keys: str) -> Any:
    for key in keys:
        document = document.get(key) if isinstance(document, Mapping) else None
    return document


def identity_header_names(config_path: Path | None, openclaw_path: Path | None,
                          environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Every header the sidecar's file and the gateway's name as a trusted-proxy identity, read
    leniently: a file the sidecar refuses whole may still be one the gateway applies, and then
    reads its identity from a header the sidecar would not know to strip."""
    environ = os.environ if environ is None else environ
    names: list[Any] = []
    try:
        own = read_structured_file(config_path, "config") if config_path is not None else {}
        names += [_nested(own, "gateway", "auth", "trustedProxy", "userHeader"), _nested(own, "sidecar", "upstreamAuth", "userHeader")]
        if openclaw_path is not None:
            gateway_doc, _ = resolve_includes(read_structured_file(openclaw_path, "sidecar.openclawConfig"), openclaw_path, environ)
            names.append(_nested(substitute_all(gateway_doc, file_environment(gateway_doc, environ)),
                                 "gateway", "auth", "trustedProxy", "userHeader"))
    except (ConfigError, IncludeError, ValueError, RecursionError):  # a file caught half-written, say
        pass  # what could be read is kept
    return identity_headers_among(names)


def identity_headers_among(names: Iterable[Any]) -> frozenset[str]:
    """Those of `names` a config could give as an identity header, as the gateway reads them."""
    found = set()
    for name in names:
        try:
            found.add(identity_header_name(name) if isinstance(name, str) and js_trim(name) else None)
        except ValueError:
            continue  # a name the sidecar writes itself (Host, Authorization...) or no header name
    return frozenset(name for name in found if name)


def load_config(
    path: Path | None, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate everything; raise ConfigError naming each bad key."""
    environ = os.environ if environ is None else environ
    document = read_structured_file(path, "config") if path is not None else {}
    section = document.get("sidecar") or {}
    if not isinstance(section, Mapping):
        raise ConfigError([("sidecar", "must be a mapping")])

    token = _FileSection.current.set(section)
    try:
        sidecar = SidecarSettings(**dict(overrides or {}))
    except ValidationError as exc:
        problems = _validation_problems(exc, "sidecar.", dict(overrides or {}))
        try:
            OpenClawRules.model_validate({k: document[k] for k in RULE_KEYS if k in document})
        except ValidationError as rules_exc:
            problems += _validation_problems(rules_exc, "")
        raise ConfigError(problems) from None
    except SettingsError as exc:  # an OPENCLAW_SIDECAR_* value that is no JSON where one is needed
        raise ConfigError([("sidecar", f"{exc} (a list or mapping in the environment is written as JSON)")]) from None
    finally:
        _FileSection.current.reset(token)

    own_rules = {k: document[k] for k in RULE_KEYS if k in document}
    openclaw_path = openclaw_config_path(path, sidecar)
    included: tuple[Path, ...] = ()
    if openclaw_path is not None:
        # The gateway's file, read as its loader reads it: `${NAME}` from the environment.
        try:
            gateway_doc, included = resolve_includes(read_structured_file(openclaw_path, "sidecar.openclawConfig"),
                                                     openclaw_path, environ)
        except IncludeError as exc:
            raise ConfigError([("sidecar.openclawConfig", f"$include: {exc}")]) from None
        environ = file_environment(gateway_doc, environ)
        own_rules = deep_merge(substitute_all({k: gateway_doc[k] for k in RULE_KEYS if k in gateway_doc}, environ), own_rules)
    own_rules, unresolved = resolve_credential_references(own_rules, environ)
    try:
        rules = OpenClawRules.model_validate(own_rules)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(exc, "")) from None
    secrets = resolve_secrets(rules, sidecar, environ, unresolved)
    _refuse_open_listener(sidecar, secrets)
    _refuse_upstream_scheme(sidecar, rules)
    return Config(sidecar, rules, secrets, included)


def _refuse_open_listener(sidecar: SidecarSettings, secrets: AuthSecrets) -> None:
    """As the gateway refuses to bind beyond loopback without a shared secret (trusted-proxy
    aside): through a listener others can reach, auth mode none makes every caller gateway admin."""
    host, _ = split_host_port(sidecar.listen)
    if secrets.mode == "none" and host != "localhost" and not is_loopback(host):
        raise ConfigError([("gateway.auth.mode", f"is none while sidecar.listen ({sidecar.listen}) is beyond loopback: "
                            "every caller would be gateway admin, and the gateway refuses to bind so too; "
                            "set a token or password, or listen on 127.0.0.1")])


def _refuse_upstream_scheme(sidecar: SidecarSettings, rules: OpenClawRules) -> None:
    """Settings that would fail every forwarded request, at start-up rather than as 502s."""
    plain = sidecar.upstream.startswith("http://")
    if plain and rules.gateway.tls.enabled:
        raise ConfigError([("sidecar.upstream", f"is {sidecar.upstream} while gateway.tls.enabled is true: the "
                            "gateway's port speaks only TLS; use https:// and pin its certificate with "
                            "sidecar.upstreamTls.fingerprint")])
    if plain and sidecar.upstream_tls.configured:
        raise ConfigError([("sidecar.upstreamTls", f"is set while sidecar.upstream ({sidecar.upstream}) is not https://")])


def camel_keys(value: Any) -> Any:
    """Setting names as the README and config files spell them (`rateLimit`, not `rate_limit`);
    keys that are data (identities, header names) stay as written."""
    if isinstance(value, Mapping):
        return {to_camel(k) if k in _ALL_FIELD_NAMES else k: camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


_ALL_FIELD_NAMES = _field_names(SidecarSettings) | _field_names(OpenClawRules)


def redacted_view(config: Config) -> dict[str, Any]:
    """The effective configuration for `check-config`: secrets are SecretStr, dumped masked."""
    sidecar = config.sidecar.model_dump(mode="json")
    sidecar["rate_limit"]["storage"] = redact_uri(sidecar["rate_limit"]["storage"])
    secrets = config.secrets
    return {
        "sidecar": sidecar,
        **config.rules.model_dump(mode="json", by_alias=False),
        "effective": {
            "authMode": secrets.mode,
            "tokenConfigured": secrets.token is not None,
            "passwordConfigured": secrets.password is not None,
            "upstreamCredentialConfigured": secrets.upstream_credential is not None,
            "previousSecrets": len(secrets.previous_tokens) + len(secrets.previous_passwords),
            "problems": list(secrets.problems),
        },
    }
