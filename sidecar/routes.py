"""Which gateway handler a request will reach, judged as the gateway routes it.

The gateway's port has many doors besides `/tools/invoke`, and it rewrites some paths before it
routes them. This module computes the route the pinned gateway release dispatches a request to
(the capability-prefix rewrite, WHATWG paths for core routes, plugin matching after repeated
percent-decoding, the Control UI base path and hooks path from config) and looks it up in the
route table shipped as data (`data/gateway-routes-<version>.json`). The pipeline then gives the
request that route's checks, or refuses it. Pure: no I/O after the table is loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qsl

from .caching import short_call_cache
from .canonical import InvalidTarget, UnsupportedTarget, canonicalize_target
from .toolpolicy import js_trim

# The gateway release whose routes, RPC methods and refusals this sidecar describes; the admin
# listener's upstream check compares the release the gateway reports with it (admin.py).
GATEWAY_VERSION = "2026.9.6"
Power = Literal["liveness", "static", "read", "tools", "rpc", "acts", "pairing", "node", "worker", "ticket", "plugin"]
Credential = Literal["none", "gateway", "gateway-or-device", "own"]

# The default policy a platform team would choose: what the gateway serves to anyone stays public
# (a browser loads the Control UI, kubelet probes health), reads and tools sit behind the
# sidecar's authentication, and everything that acts, pairs, or takes node, worker or URL-borne
# credentials is refused until `sidecar.routes.allow` opens it by name.
PUBLIC_POWERS: frozenset[str] = frozenset({"liveness", "static"})
AUTHENTICATED_POWERS: frozenset[str] = frozenset({"read", "tools", "rpc"})

CAPABILITY_PREFIX = "/__openclaw__/cap/"
PLUGIN_ROUTE_PREFIX = "plugin:"  # the rows of the gateway's plugin router
PLUGIN_MATCHES = ("plugin", "plugin-prefix")  # rows matched on the decoded path candidates
CAPABILITY_QUERY = "oc_cap"
NODE_CAPABILITY_ROUTE = "node-capability"
# Query parameters the gateway reads as credentials (assistant media and public shares take
# `token`, the board `bt`, node capabilities `oc_cap`): a secret in a URL ends up in logs and
# browser history, so such requests are refused unless their route is opened by name.
QUERY_CREDENTIALS = frozenset({"token", "bt", CAPABILITY_QUERY})
_MAX_DECODE_PASSES = 32  # the gateway's MAX_PATH_DECODE_PASSES
# Control UI catch-all: plain path segments only, so the gateway's WHATWG pathname, its plugin
# matcher's decoded candidates and the file the UI serves are all the same string.
_PLAIN_UI_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")
# Namespaces the Control UI catch-all declines (classifyControlUiRequest, case-sensitive as there);
# `/plugins` itself is a UI page but `/plugins/<id>` depends on the plugin catalogue: declined.
_UI_DECLINED_ROOTS = ("/api", "/v1", "/j", "/ui", "/health", "/healthz", "/ready", "/readyz", "/startup", "/startupz",
                      "/__openclaw__/mcp-app", "/__openclaw__/worker", "/__openclaw__/worker-transfer")


@dataclass(frozen=True)
class RouteEntry:
    """One row of the gateway's route table."""

    name: str
    match: str
    paths: tuple[str, ...]
    methods: tuple[str, ...] | None
    credential: Credential
    power: Power
    base: bool = False
    pass_headers: tuple[str, ...] = ()
    note: str = ""
    method_not_allowed: bool = False  # its handler answers other methods 405 with Allow
    # Plugin rows: their paths as the gateway's matcher normalises them, computed once.
    plugin_paths: tuple[str, ...] = ()
    handles_only: str | None = None  # the pathname suffix its handler takes; it declines the rest
    always_taken: tuple[str, ...] = ()  # plugin-matched prefixes never left to the Control UI
    # The operator scope its handler requires (and its own answer without it), and whether it
    # then requires operator.admin too (the answer it refuses others with): checked by the
    # sidecar, since behind its shared secret the gateway grants every scope.
    scope: str | None = None
    scope_answer: str | None = None
    owner: str | None = None
    owner_behind_secret: bool = False  # acts as owner for a shared-secret caller (an agent turn)
    dispatches: frozenset[str] = frozenset()  # gateway methods its handler runs by name (the admin RPC)

    @property
    def default_policy(self) -> Literal["public", "authenticated", "refused"]:
        if self.power in PUBLIC_POWERS:
            return "public"
        if self.power in AUTHENTICATED_POWERS:
            return "authenticated"
        return "refused"


@dataclass(frozen=True)
class RouteMatch:
    """What the gateway will do with a request: the handler's table row and the path it sees."""

    entry: RouteEntry | None  # None: no handler (the gateway answers 404)
    path: str  # the pathname the gateway routes on, after its rewrites
    capability: bool = False  # reached through a node capability (cap path or ?oc_cap=)
    malformed_capability: bool = False  # a capability path the gateway answers 401
    query_credential: str | None = None  # a credential-bearing query parameter, by name
    method_served: bool = True  # False: the row's handler does not serve this method
    # A plugin route whose path the Control UI's catch-all serves when the plugin is not loaded
    # (or its handler declines): the gateway's answer there depends on its runtime state.
    ui_fallback: bool = False

    @property
    def name(self) -> str:
        return self.entry.name if self.entry is not None else "unknown"


@cache
def _table_data(version: str) -> dict[str, Any]:
    text = resources.files("sidecar").joinpath(f"data/gateway-routes-{version}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _entry(row: dict[str, Any], hooks_path: str) -> RouteEntry:
    paths = tuple(hooks_path if p == "@hooks.path" else p for p in row.get("paths", ()))
    methods = row.get("methods")
    plugin = row["match"] in PLUGIN_MATCHES
    return RouteEntry(
        name=row["name"], match=row["match"], paths=paths, methods=tuple(methods) if methods else None,
        credential=row["credential"], power=row["power"], base=row.get("base", False),
        pass_headers=tuple(row.get("passHeaders", ())), note=row.get("note", ""),
        method_not_allowed=row.get("methodNotAllowed", False),
        plugin_paths=tuple(_security_normalize(p) for p in paths) if plugin else (),
        handles_only=row.get("handlesOnly"),
        always_taken=tuple(_security_normalize(p) for p in row.get("alwaysTaken", ())),
        scope=row.get("scope"), scope_answer=row.get("scopeAnswer"), owner=row.get("owner"),
        owner_behind_secret=row.get("ownerBehindSecret", False), dispatches=frozenset(row.get("dispatches", ())),
    )


def route_names(version: str = GATEWAY_VERSION) -> frozenset[str]:
    """Every name `sidecar.routes.allow` may open."""
    data = _table_data(version)
    return frozenset(r["name"] for r in data["http"] + data["websocket"]) | {NODE_CAPABILITY_ROUTE}


def normalize_hooks_path(raw: str | None) -> str:
    """`hooks.path` as the gateway resolves it (resolveHooksConfig): JavaScript's trim, every
    trailing slash dropped. `//` leaves "", a base under which every path lies; `/` the gateway
    refuses (and so does the sidecar's config)."""
    path = js_trim(raw or "") or "/hooks"
    path = path if path.startswith("/") else f"/{path}"
    return path.rstrip("/") if len(path) > 1 else path


def normalize_base_path(raw: str | None) -> str:
    """`gateway.controlUi.basePath` as the gateway's normalizeControlUiBasePath resolves it: "" or
    "/x", trimmed as JavaScript trims, one trailing slash dropped (`/ui//` is `/ui/` there)."""
    path = js_trim(raw or "")
    if not path or path == "/":
        return ""
    path = path if path.startswith("/") else f"/{path}"
    return path[:-1] if path.endswith("/") else path


# ---- the gateway's path helpers, in Python ----------------------------------------------------

_PCT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


class _Malformed(ValueError):
    pass


def decode_uri_component(text: str) -> str:
    """JavaScript's decodeURIComponent: each run of %XX bytes must be UTF-8, a stray % throws."""
    if "%" not in text:
        return text
    out: list[str] = []
    last = 0
    for run in _PCT_RUN.finditer(text):
        between = text[last:run.start()]
        if "%" in between:
            raise _Malformed(text)
        out.append(between)
        try:
            out.append(bytes.fromhex(run.group().replace("%", "")).decode("utf-8"))
        except UnicodeDecodeError:
            raise _Malformed(text) from None
        last = run.end()
    tail = text[last:]
    if "%" in tail:
        raise _Malformed(text)
    out.append(tail)
    return "".join(out)


def _resolve_dot_segments(path: str) -> str:
    """`new URL(path, "http://localhost").pathname`, or the path where Node's URL throws. A path
    Node parses and the sidecar's parser does not (an internationalised host after `//`) raises
    UnsupportedTarget: which path the gateway reads then is not known here."""
    try:
        return canonicalize_target(path, "localhost").path
    except UnsupportedTarget:
        raise
    except InvalidTarget:
        return path


def collapse_slashes(path: str) -> str:
    """Every run of `/` as one, as the gateway's path normalisers read it."""
    return re.sub(r"/{2,}", "/", path) if "//" in path else path


def _security_normalize(path: str) -> str:
    """normalizePathForSecurity: WHATWG dot segments, trimmed, lower case, `//` collapsed, no
    trailing `/`."""
    collapsed = collapse_slashes(js_trim(_resolve_dot_segments(path)).lower())
    if len(collapsed) > 1:
        collapsed = collapsed.rstrip("/")
    return collapsed or "/"


def plugin_path_candidates(path: str) -> tuple[list[str], bool]:
    """buildCanonicalPathCandidates: the path and each percent-decoding pass of it, normalised.
    The flag says whether the gateway's own protected-prefix rule would fail closed (malformed
    encoding or the decode-pass limit reached), or the sidecar cannot tell what the gateway reads."""
    candidates: list[str] = []
    decoded = path
    try:
        candidates.append(_security_normalize(path))
        for _ in range(_MAX_DECODE_PASSES):
            try:
                following = decode_uri_component(decoded)
            except _Malformed:
                return candidates, True
            if following == decoded:
                return candidates, False
            decoded = following
            normalized = _security_normalize(decoded)
            if normalized not in candidates:
                candidates.append(normalized)
    except UnsupportedTarget:
        return candidates, True
    # Every pass changed it: the gateway looks once more, and a path still changing is past its limit.
    try:
        return candidates, decode_uri_component(decoded) != decoded
    except _Malformed:
        return candidates, True


def _plugin_prefix_match(candidate: str, prefix: str) -> bool:
    return candidate == prefix or candidate.startswith(prefix + "/") or candidate.startswith(prefix + "%")


def _query_names(query: str) -> set[str]:
    return {name for name, _ in parse_qsl(query.removeprefix("?"), keep_blank_values=True)}


def capability_rewrite(path: str) -> tuple[str, bool, bool]:
    """normalizePluginNodeCapabilityScopedUrl: `/__openclaw__/cap/<seg>/<rest>` → `/<rest>`.
    Returns (path the gateway routes on, scoped, malformed)."""
    if not path.startswith(CAPABILITY_PREFIX):
        return path, False, False
    remainder = path[len(CAPABILITY_PREFIX):]
    slash = remainder.find("/")
    if slash <= 0:
        return path, True, True
    try:
        capability = js_trim(decode_uri_component(remainder[:slash]))
    except _Malformed:
        return path, True, True
    if not capability:
        return path, True, True
    return remainder[slash:], True, False


# ---- the table ----------------------------------------------------------------------------------


def _in_plugin_router(entry: RouteEntry) -> bool:
    """A route the gateway's plugin router matches on decoded path candidates (its WebSocket
    upgrades are matched on the exact path)."""
    return entry.name.startswith(PLUGIN_ROUTE_PREFIX) and entry.match in PLUGIN_MATCHES


ROUTE_CACHE_SIZE = 1024
ROUTE_CACHEABLE_LENGTH = 256


@dataclass(frozen=True)
class RouteTable:
    """The pinned gateway's routes, placed for one deployment (hooks path, Control UI base path)."""

    http: tuple[RouteEntry, ...]
    websocket: tuple[RouteEntry, ...]
    base_path: str = ""
    control_ui_enabled: bool = True
    # Routing is a pure function of (method, path, query, websocket) and nearly every request
    # repeats one seen before: short ones are cached, so a flood of distinct paths holds little.
    _cached_match: Callable[[str, str, str, bool], RouteMatch] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cached_match", short_call_cache(ROUTE_CACHEABLE_LENGTH, ROUTE_CACHE_SIZE)(self._match))

    @classmethod
    def for_deployment(cls, *, hooks_path: str | None = None, base_path: str | None = None,
                       control_ui_enabled: bool = True, switched_off: frozenset[str] = frozenset(),
                       version: str = GATEWAY_VERSION) -> "RouteTable":
        """`switched_off`: the settings among the rows' `enabledBy` that are false
        (OpenClawRules.route_switches). A row whose every switch is off is left out, as the gateway
        skips its handler and the path goes on to the next one: with the OpenAI endpoints off (their
        default), `/v1/models` is no route, not a read forwarded with the caller's credential."""
        data = _table_data(version)
        hooks = normalize_hooks_path(hooks_path)

        def served(rows: list[dict[str, Any]]) -> tuple[RouteEntry, ...]:
            return tuple(_entry(row, hooks) for row in rows
                         if not row.get("enabledBy") or not set(row["enabledBy"]) <= switched_off)

        return cls(http=served(data["http"]), websocket=served(data["websocket"]),
                   base_path=normalize_base_path(base_path), control_ui_enabled=control_ui_enabled)

    def match(self, method: str, path: str, query: str, *, websocket: bool) -> RouteMatch:
        """The handler the gateway dispatches to for a canonical (WHATWG) path and query."""
        return self._cached_match(method, path, query, websocket)

    def _match(self, method: str, path: str, query: str, websocket: bool) -> RouteMatch:
        routed, scoped, malformed = capability_rewrite(path)
        names = _query_names(query) if query else set()
        capability = scoped or CAPABILITY_QUERY in names
        credential = next((n for n in sorted(names & QUERY_CREDENTIALS) if n != CAPABILITY_QUERY), None)
        entry = self._find(self.websocket if websocket else self.http, method, routed)
        served = entry is None or entry.methods is None or method in entry.methods
        ui_fallback = (entry is not None and entry.match in PLUGIN_MATCHES and self._control_ui_may_serve(method, routed)
                       and not self._always_taken(entry, routed))
        return RouteMatch(entry, routed, capability, malformed, credential, served, ui_fallback)

    def _find(self, entries: tuple[RouteEntry, ...], method: str, path: str) -> RouteEntry | None:
        candidates, undecidable = plugin_path_candidates(path)
        if undecidable:
            # The gateway's plugin matcher fails closed on such paths; which handler would take
            # one is not worth guessing: no route.
            return None
        router_judged = False
        for index, entry in enumerate(entries):
            if _in_plugin_router(entry):
                if router_judged:
                    continue  # the plugin router's rows are judged together, at its first
                router_judged = True
                matched = self._plugin_routes(entries, candidates)
                if len(matched) > 1:
                    # Each matched route is tried in turn until a handler takes the request, and a
                    # plugin that is not loaded takes none: which one runs is the gateway's runtime
                    # state (red team: an opened, unloaded plugin's path decoded into the admin
                    # RPC). No plain path matches two rows, only different decodings of one: no route.
                    return None
                if matched and matched[0].handles_only is not None and not path.endswith(matched[0].handles_only):
                    continue  # its handler declines the path: the stages after the router take it
                if matched:
                    # Nor may a core route after the router take the path as it came: a plugin that
                    # is not loaded, or declines, leaves it to that one (the Control UI catch-all
                    # aside: RouteMatch.ui_fallback, judged by `sidecar.routes.controlUi`).
                    if any(self._core_matches(later, path) for later in entries[index + 1:]
                           if later.match not in PLUGIN_MATCHES and later.match != "control-ui"):
                        return None
                    return matched[0]
            elif entry.match in PLUGIN_MATCHES:
                if self._plugin_matches(entry, candidates):
                    # The canvas row: its documents are a core stage, its A2UI prefix one route of
                    # the plugin router, where a longer prefix is tried first. A decoding that
                    # reaches a plugin route too may run that plugin instead: no route (mutation
                    # testing: an opened canvas carried a path decoding to a refused plugin).
                    return None if self._plugin_routes(entries, candidates) else entry
            elif entry.match == "control-ui":
                if self._control_ui_serves(method, path):
                    return entry
            elif self._core_matches(entry, path):
                if entry.methods is not None and method not in entry.methods and self._method_split(entry, entries, method):
                    continue
                # A core stage reads the path as it came; the plugin router, after it, reads every
                # percent-decoding of it (`%252e%252e` climbs there). Where a decoding reaches a
                # plugin route the two may not agree which handler runs: no route (red team: a
                # /v1/models or /focus path ran a refused plugin, the admin RPC among them).
                if any(self._plugin_matches(later, candidates) for later in entries[index + 1:]
                       if later.match in PLUGIN_MATCHES):
                    return None
                return entry
        return None

    def _plugin_routes(self, entries: tuple[RouteEntry, ...], candidates: list[str]) -> list[RouteEntry]:
        """findMatchingPluginHttpRoutes: the rows any candidate matches. Their order does not
        matter here: where more than one matches, the path is no route."""
        return [entry for entry in entries if _in_plugin_router(entry) and self._plugin_matches(entry, candidates)]

    def _method_split(self, entry: RouteEntry, entries: tuple[RouteEntry, ...], method: str) -> bool:
        """One handler serving a path under two rows by method (assistant media GET vs POST)."""
        return any(
            other is not entry and other.paths == entry.paths and other.methods is not None and method in other.methods
            for other in entries
        )

    def _spellings(self, entry: RouteEntry) -> tuple[str, ...]:
        if not entry.base or not self.base_path:
            return entry.paths
        base = re.escape(self.base_path) if entry.match == "regex" else self.base_path
        return entry.paths + tuple(base + p for p in entry.paths)

    def _core_matches(self, entry: RouteEntry, path: str) -> bool:
        """Core routes: exact, case-sensitive string rules on the WHATWG pathname."""
        if entry.match == "any":
            return True
        if entry.match == "join-code":
            return path.endswith("/j") or "/j/" in path
        for pattern in self._spellings(entry):
            if entry.match == "exact" and path == pattern:
                return True
            if entry.match == "namespace" and (path == pattern or path.startswith(pattern + "/")):
                return True
            if entry.match == "prefix" and path.startswith(pattern):
                return True
            if entry.match == "regex" and re.fullmatch(pattern, path) is not None:
                return True
        return False

    @staticmethod
    def _plugin_matches(entry: RouteEntry, candidates: list[str]) -> bool:
        if entry.match == "plugin-prefix":
            return any(_plugin_prefix_match(c, r) for c in candidates for r in entry.plugin_paths)
        return any(c in entry.plugin_paths for c in candidates)

    @staticmethod
    def _always_taken(entry: RouteEntry, path: str) -> bool:
        """Whether a handler answers the path whatever is loaded (review: the canvas plugin's A2UI
        route was refused as a Control UI fallback under `controlUi: off`)."""
        if not entry.always_taken:
            return False
        candidates, _ = plugin_path_candidates(path)
        return any(_plugin_prefix_match(c, prefix) for c in candidates for prefix in entry.always_taken)

    def _control_ui_serves(self, method: str, path: str) -> bool:
        """The catch-all's row: only plain paths, which every reader of the path spells alike."""
        return _PLAIN_UI_PATH.fullmatch(path) is not None and self._control_ui_may_serve(method, path)

    def _control_ui_may_serve(self, method: str, path: str) -> bool:
        """Whether the gateway's catch-all (classifyControlUiRequest) would answer the path, however
        spelt: what a plugin that is not loaded, or the canvas host without a node capability,
        leaves to it."""
        if not self.control_ui_enabled or method not in ("GET", "HEAD"):
            return False
        if self.base_path:
            return path == self.base_path or path.startswith(self.base_path + "/")
        if path.startswith("/plugins/") and path != "/plugins/":
            return False
        return not any(path == root or path.startswith(root + "/") for root in _UI_DECLINED_ROOTS)
