"""The gateway route table and the route computation (sidecar/routes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.routes import (
    AUTHENTICATED_POWERS, GATEWAY_VERSION, PUBLIC_POWERS, RouteTable, capability_rewrite, decode_uri_component,
    normalize_base_path, normalize_hooks_path, plugin_path_candidates, route_names,
)
from tests.gateway.oracle import call_gateway, needs_gateway

TABLE = RouteTable.for_deployment()
DATA = Path(__file__).resolve().parents[2] / "sidecar" / "data" / f"gateway-routes-{GATEWAY_VERSION}.json"


def name_of(method: str, path: str, query: str = "", websocket: bool = False, table: RouteTable = TABLE) -> str:
    return table.match(method, path, query, websocket=websocket).name


# ---- the data -------------------------------------------------------------------------------------


def test_table_names_its_gateway_version_and_every_row_is_complete() -> None:
    data = json.loads(DATA.read_text())
    assert data["gatewayVersion"] == GATEWAY_VERSION
    for row in data["http"] + data["websocket"]:
        assert row["power"] in data["power"], row
        assert row["match"] in data["match"] or row["match"] in ("any", "plugin-prefix"), row
        assert row["credential"] in ("none", "gateway", "gateway-or-device", "own"), row
    names = [row["name"] for row in data["http"]]
    assert names[-1] == "control-ui", "the Control UI catch-all is the gateway's last stage"


def test_every_switch_a_row_names_is_read_from_the_gateways_config() -> None:
    from sidecar.config import OpenClawRules

    data = json.loads(DATA.read_text())
    named = {switch for row in data["http"] + data["websocket"] for switch in row.get("enabledBy", ())}
    assert named == set(OpenClawRules().route_switches)
    assert OpenClawRules().switched_off == named  # every one off by default, as at the gateway


def test_only_health_and_static_rows_are_public_and_only_reads_and_tools_authenticated() -> None:
    public = {e.name for e in TABLE.http if e.default_policy == "public"}
    authenticated = {e.name for e in TABLE.http if e.default_policy == "authenticated"}
    assert public == {"health", "readiness", "control-ui-documents", "control-ui-plugin-manager", "control-ui"}
    assert authenticated == {"openai-models", "tools-invoke", "session-history", "control-ui-plugin-assets", "user-avatar",
                             "chat-media", "control-ui-avatar", "control-ui-images", "control-ui-session-images", "assistant-media", "control-ui-config"}
    assert all(e.power in PUBLIC_POWERS | AUTHENTICATED_POWERS or e.default_policy == "refused" for e in TABLE.http)


def test_public_rows_take_no_credential_and_serve_only_reads() -> None:
    for entry in TABLE.http:
        if entry.default_policy == "public":
            assert entry.credential == "none" and entry.methods is not None and set(entry.methods) <= {"GET", "HEAD"}, entry


def test_route_names_include_the_capability_switch() -> None:
    assert {"node-capability", "hooks", "openai-chat-completions", "plugin:admin-http-rpc", "rpc-websocket"} <= route_names()


# ---- the gateway's path helpers -------------------------------------------------------------------


@pytest.mark.parametrize("text, decoded", [
    ("abc", "abc"), ("%41", "A"), ("%c3%a9", "é"), ("a%2Fb", "a/b"), ("%2567", "%67"), ("%e2%80%8b", "\u200b"),
])
def test_decode_uri_component(text: str, decoded: str) -> None:
    assert decode_uri_component(text) == decoded


@pytest.mark.parametrize("text", ["%", "%zz", "a%4", "%c3", "%ff", "%c3%28"])
def test_decode_uri_component_throws_like_javascript(text: str) -> None:
    with pytest.raises(ValueError):
        decode_uri_component(text)


def test_plugin_candidates_decode_repeatedly_lowercase_and_collapse() -> None:
    candidates, undecidable = plugin_path_candidates("/Plugins/%2567eolocation//")
    assert candidates == ["/plugins/%2567eolocation", "/plugins/%67eolocation", "/plugins/geolocation"]
    assert not undecidable


def test_plugin_candidates_resolve_dot_segments_after_decoding() -> None:
    candidates, _ = plugin_path_candidates("/x/..%2fapi/v1/admin/rpc")
    assert "/api/v1/admin/rpc" in candidates


@pytest.mark.parametrize("path", ["/x%zz", "/" + "%25" * 40 + "41"])
def test_plugin_candidates_flag_what_the_gateway_cannot_decide(path: str) -> None:
    assert plugin_path_candidates(path)[1]


@pytest.mark.parametrize("path, routed, malformed", [
    ("/tools/invoke", "/tools/invoke", False),
    ("/__openclaw__/cap/x/tools/invoke", "/tools/invoke", False),
    ("/__openclaw__/cap/%78/a/b", "/a/b", False),
    ("/__openclaw__/cap/x/", "/", False),
    ("/__openclaw__/cap/x", "/__openclaw__/cap/x", True),
    ("/__openclaw__/cap//tools/invoke", "/__openclaw__/cap//tools/invoke", True),
    ("/__openclaw__/cap/%20/tools/invoke", "/__openclaw__/cap/%20/tools/invoke", True),
    ("/__openclaw__/cap/%zz/tools/invoke", "/__openclaw__/cap/%zz/tools/invoke", True),
])
def test_capability_rewrite(path: str, routed: str, malformed: bool) -> None:
    result = capability_rewrite(path)
    assert (result[0], result[2]) == (routed, malformed)
    assert result[1] == path.startswith("/__openclaw__/cap/")


@pytest.mark.parametrize("raw, normalized", [(None, "/hooks"), ("", "/hooks"), ("in/", "/in"), ("/a/b//", "/a/b"),
                                             ("/", "/"), ("//", ""), ("/InboX/", "/InboX")])
def test_hooks_path_normalisation(raw: str | None, normalized: str) -> None:
    assert normalize_hooks_path(raw) == normalized


@pytest.mark.parametrize("raw, normalized", [(None, ""), ("/", ""), ("admin", "/admin"), ("/admin/", "/admin")])
def test_base_path_normalisation(raw: str | None, normalized: str) -> None:
    assert normalize_base_path(raw) == normalized


# ---- matching, in the gateway's router order -----------------------------------------------------


@pytest.mark.parametrize("method, path, route", [
    ("GET", "/healthz", "health"), ("HEAD", "/readyz", "readiness"), ("GET", "/startupz", "readiness"),
    ("GET", "/healthz/x", "unknown"),
    ("GET", "/__openclaw__/worker", "worker"), ("POST", "/__openclaw__/worker-transfer/a", "worker-artifacts"),
    ("GET", "/j", "device-pairing-join"), ("GET", "/x/j/ABC", "device-pairing-join"), ("GET", "/assets/j/x.js", "device-pairing-join"),
    ("GET", "/api/artifacts/download/c/t", "artifact-download"), ("POST", "/hooks", "hooks"), ("POST", "/hooks/agent", "hooks"),
    ("POST", "/hooksx", "unknown"), ("POST", "/api/nodes/watch/poll", "node-watch"),
    ("GET", "/v1/models", "openai-models"), ("GET", "/v1/models/x", "openai-models"), ("POST", "/v1/embeddings", "openai-embeddings"),
    ("POST", "/tools/invoke", "tools-invoke"), ("GET", "/tools/invoke", "tools-invoke"),
    ("POST", "/sessions/a%2Fb/kill", "session-kill"), ("GET", "/sessions/main/history", "session-history"),
    ("GET", "/sessions/a/b/history", "control-ui"), ("POST", "/sessions/a/b/history", "unknown"), ("GET", "/__openclaw__/board/s/n/index.html", "board"),
    ("GET", "/__openclaw__/plugins/control-ui/x/a.js", "control-ui-plugin-assets"), ("GET", "/api/users/u/avatar", "user-avatar"),
    ("POST", "/v1/responses", "openai-responses"), ("POST", "/v1/chat/completions", "openai-chat-completions"),
    ("GET", "/share/session", "public-share"), ("GET", "/share/agent/main", "control-ui-documents"), ("GET", "/approve/abc", "control-ui-documents"),
    ("GET", "/__openclaw__/canvas/documents/x", "canvas"), ("GET", "/__openclaw__/a2ui/x", "canvas"),
    ("GET", "/__OPENCLAW__/A2UI/", "canvas"), ("GET", "/__openclaw__/%61%32ui", "canvas"),  # plugin-style matching
    ("GET", "/settings/plugins", "control-ui-plugin-manager"), ("GET", "/__openclaw__/mcp-app", "mcp-app"),
    ("GET", "/api/channels", "plugin:channels"), ("POST", "/API/Channels/x", "plugin:channels"), ("GET", "/api/channels%2fx", "plugin:channels"),
    ("POST", "/api/v1/admin/rpc", "plugin:admin-http-rpc"), ("POST", "/API/V1/Admin/RPC/", "plugin:admin-http-rpc"),
    ("POST", "/api//v1/admin/rpc", "plugin:admin-http-rpc"), ("POST", "/api/v1/admin/%72pc", "plugin:admin-http-rpc"),
    ("POST", "/api/v1/admin/rpc/x", "unknown"), ("GET", "/Plugins/GeoLocation/lookup", "plugin:geolocation"),
    ("GET", "/Browser/Extension", "plugin:browser-extension"), ("GET", "/browser/Screencast/", "plugin:browser-screencast"), ("POST", "/plugins/openai/realtime/calls", "plugin:openai-realtime"),
    ("GET", "/__openclaw_tg_miniapp/", "plugin:telegram-miniapp"),
    ("GET", "/api/chat/media/outgoing/s/a/full", "chat-media"), ("GET", "/api/chat/media/outgoing/a", "unknown"), ("GET", "/avatar/main", "control-ui-avatar"),
    ("GET", "/__openclaw__/workspace-icon/x", "control-ui-session-images"), ("GET", "/__openclaw__/assistant-media", "assistant-media"),
    ("POST", "/__openclaw__/assistant-media", "assistant-media-ticket"), ("GET", "/control-ui-config.json", "control-ui-config"),
    ("GET", "/__openclaw__/control-ui-config.json", "control-ui-config"),
    ("GET", "/control-ui-configxjson", "control-ui"),  # an exact row's `.` is no wildcard (only regex rows are patterns)
    ("GET", "/", "control-ui"), ("HEAD", "/chat", "control-ui"), ("GET", "/assets/index-Ab_1.js", "control-ui"),
    ("GET", "/fonts/a.woff2", "control-ui"), ("GET", "/__openclaw__/favicon.svg", "control-ui"),
    # the Control UI catch-all takes plain paths only, and nothing a plugin or core route could own
    ("POST", "/", "unknown"), ("GET", "/a%20b", "unknown"), ("GET", "/.env", "unknown"), ("GET", "/a//b", "unknown"),
    ("GET", "/api/x", "unknown"), ("GET", "/v1/x", "unknown"), ("GET", "/ui/x", "unknown"), ("GET", "/plugins/x", "unknown"),
    ("GET", "/j/x", "device-pairing-join"), ("GET", "/%6a/ABC", "unknown"), ("GET", "/x%zz", "unknown"),
    # ...and, case-sensitive as the gateway, serves the SPA's own deep links
    ("GET", "/sessions", "control-ui"), ("GET", "/sessions/main", "control-ui"), ("GET", "/plugins", "control-ui"),
    ("GET", "/plugins/", "control-ui"), ("GET", "/tools", "control-ui"), ("GET", "/oauth", "control-ui"),
    ("GET", "/J/ABC", "control-ui"), ("GET", "/API/x", "control-ui"), ("GET", "/TOOLS/x", "control-ui"),
    ("GET", "/tools/invoke/", "control-ui"),
])
def test_http_routes_in_router_order(method: str, path: str, route: str) -> None:
    assert name_of(method, path) == route


@pytest.mark.parametrize("method, path, route", [
    # decodings of one path that reach two plugin routes: the gateway tries them in turn (exact
    # before prefix, the longer first) until a loaded plugin's handler takes it, so which runs is its
    # runtime state. Opened plugin:channels carried the admin RPC; opened, unloaded plugin:beam did too.
    ("POST", "/api/channels/%252e%252e/%252e%252e/api/v1/admin/rpc", "unknown"),
    ("POST", "/x%2f..%2fapi%2fv1%2fbeam%2fsessions%2fy%252f..%252f..%252f..%252fadmin%252frpc%252fz%2f..", "unknown"),
    ("POST", "/api/channels/x", "plugin:channels"), ("POST", "/api/v1/admin/rpc", "plugin:admin-http-rpc"),
    ("POST", "/api/v1/%62eam/sessions", "plugin:beam"),  # one route, however spelt
    # ...or a plugin route and a core route after the router, which takes the path if the plugin does not
    ("GET", "/avatar/%252e%252e/plugins/openai/realtime/calls", "unknown"),
    # (chat media's handler takes only <session>/<attachment>/(full|thumbnail): this one is the channels')
    ("GET", "/api/chat/media/outgoing/%252e%252e/%252e%252e/%252e%252e/%252e%252e/api/channels/x", "plugin:channels"),
    ("GET", "/plugins/geolocation/lookup", "plugin:geolocation"),
    # its handler declines any other path, which the stages after the router then take (red team:
    # an opened plugin:geolocation carried the Control UI past `routes.controlUi: off`)
    ("GET", "/Plugins/Geolocation/chat", "control-ui"), ("GET", "/plugins/geolocation/%6cookup", "unknown"),
    ("GET", "/plugins/geolocation/x/lookup", "plugin:geolocation"),
    # a core stage matched the path as it came; a decoding of it reaches a plugin route: which runs
    # is not the sidecar's to guess (they ran a refused plugin through /v1/models and /focus)
    ("GET", "/v1/models/%252e%252e/%252e%252e/plugins/geolocation/lookup", "unknown"),
    ("GET", "/focus/%252e%252e/plugins/geolocation/lookup", "unknown"),
    ("GET", "/admin/focus/%252e%252e/%252e%252e/browser/extension", "plugin:browser-extension"),  # no base path here
    ("GET", "/__openclaw__/plugins/control-ui/%252e%252e/%252e%252e/%252e%252e/plugins/geolocation/lookup", "unknown"),
    ("GET", "/api/users/%2e%2e/%2e%2e/api/channels/x", "unknown"),
    # the canvas row too: its A2UI prefix is a plugin route of the router (geolocation's, longer,
    # is tried first), a path outside its documents goes on to the router, and a documents path
    # that decodes to a plugin route is not one a node loads: refused rather than guessed
    ("GET", "/__openclaw__/a2ui/%252e%252e/%252e%252e/plugins/geolocation/lookup", "unknown"),
    ("POST", "/__openclaw__/canvas/%252e%252e/%252e%252e/api/v1/beam/sessions", "unknown"),
    ("GET", "/__openclaw__/canvas/documents/%252e%252e/%252e%252e/%252e%252e/api/channels/x", "unknown"),
    # ...and the same core paths, plainly spelt, are theirs
    ("GET", "/v1/models", "openai-models"), ("GET", "/focus/abc", "control-ui-documents"),
    ("GET", "/__openclaw__/plugins/control-ui/x.js", "control-ui-plugin-assets"),
])
def test_a_path_that_decodes_to_a_plugin_route_is_the_plugin_routers_or_nobodys(method: str, path: str, route: str) -> None:
    assert name_of(method, path) == route


@pytest.mark.parametrize("path, route", [
    ("/", "rpc-websocket"), ("/tools/invoke", "rpc-websocket"), ("/anything/x", "rpc-websocket"),
    ("/__openclaw__/worker", "worker-websocket"), ("/__openclaw__/worker/x", "worker-websocket"),
    ("/desktop/observe", "desktop-observe"), ("/node-desktop/attach", "node-desktop-attach"),
    ("/node-portal/attach", "node-portal-attach"), ("/browser/extension", "plugin:browser-extension"),
    ("/browser/screencast", "plugin:browser-screencast"),
    # the browser relays' upgrade handlers compare the pathname exactly (unlike plugin HTTP routes):
    # any other spelling falls through to the RPC WebSocket and must be judged as one
    ("/BROWSER/extension", "rpc-websocket"), ("/browser/%65xtension", "rpc-websocket"), ("/browser/extension/", "rpc-websocket"),
    ("/Browser/Screencast", "rpc-websocket"), ("/browser/%73creencast", "rpc-websocket"), ("/browser//screencast", "rpc-websocket"),
])
def test_websocket_routes(path: str, route: str) -> None:
    assert name_of("GET", path, websocket=True) == route


def test_capability_and_query_credentials_are_reported() -> None:
    match = TABLE.match("GET", "/__openclaw__/cap/c/sessions/main/history", "", websocket=False)
    assert (match.name, match.path, match.capability) == ("session-history", "/sessions/main/history", True)
    assert TABLE.match("GET", "/x", "?a=1&oc_cap=z", websocket=False).capability
    assert TABLE.match("GET", "/x", "?oc%5Fcap=z", websocket=False).capability  # URLSearchParams decodes names
    assert TABLE.match("GET", "/__openclaw__/assistant-media", "?source=a&token=t", websocket=False).query_credential == "token"
    assert TABLE.match("GET", "/x", "?bt=1", websocket=False).query_credential == "bt"
    assert TABLE.match("GET", "/x", "?tokens=1&xtoken=2", websocket=False).query_credential is None


def test_a_method_the_row_does_not_serve_is_reported() -> None:
    assert not TABLE.match("POST", "/sessions/main/history", "", websocket=False).method_served
    assert TABLE.match("GET", "/sessions/main/history", "", websocket=False).method_served


def test_deployment_settings_move_routes() -> None:
    table = RouteTable.for_deployment(hooks_path="/in", base_path="/admin")
    assert name_of("POST", "/in/agent", table=table) == "hooks"
    assert name_of("POST", "/hooks/agent", table=table) == "unknown"
    assert name_of("GET", "/admin/", table=table) == "control-ui"
    assert name_of("GET", "/admin", table=table) == "control-ui"  # the gateway's 302 to /admin/
    assert name_of("GET", "/", table=table) == "unknown"
    assert name_of("GET", "/admin/avatar/main", table=table) == "control-ui-avatar"
    assert name_of("GET", "/admin/control-ui-config.json", table=table) == "control-ui-config"
    off = RouteTable.for_deployment(control_ui_enabled=False)
    assert name_of("GET", "/", table=off) == "unknown"


# An internationalised host after `//`, which Node's URL takes and the sidecar's parser does not:
# the sidecar cannot say which path the gateway's plugin router reads, so it says undecidable (no route).
UNDECIDED_HERE = ("/%2Fxn--tda/api/channels/j/x", "//b\u00fccher.example/api/x")


@needs_gateway
def test_plugin_candidates_match_the_gateways_own_function() -> None:
    paths = ["/Plugins/%2567eolocation//", "/x/..%2fapi/v1/admin/rpc", "/x%zz", "/%2e%2e/API", "/a/%252e%252e/b",
             "/api%2Fv1%2Fadmin%2Frpc", "/%E2%80%8Bx", "/a\\..\\b", "/a?b", "/a#b", "/" + "%25" * 40 + "41", "/%c3%28",
             "//a//b//", "//%5B/x%20", "//%5B/x%C2%A0", "/%2F%5B/API%E3%80%80", "/%2Fexample.com/api/channels/j/x",
             *UNDECIDED_HERE]
    theirs = call_gateway(["security-path:canonicalizePathForSecurity"], """
        answer(input.map((path) => {
          const found = gateway.canonicalizePathForSecurity(path);
          return [found.candidates, found.malformedEncoding || found.decodePassLimitReached];
        }));""", paths)
    for path, (candidates, undecidable) in zip(paths, theirs, strict=True):
        if path in UNDECIDED_HERE:
            assert plugin_path_candidates(path)[1] is True, path
        else:
            assert plugin_path_candidates(path) == (candidates, undecidable), path


@pytest.mark.parametrize("path, route", [
    ("/api/channels/x", "plugin:channels"), ("/avatar/x", "control-ui-avatar"), ("/__openclaw__/a2ui/x", "canvas"),
])
def test_a_path_the_gateway_cannot_decode_is_no_route(path: str, route: str) -> None:
    """The same path with a malformed escape is undecidable, and no route: which handler would take
    it is not guessed (mutation testing: the flag alone was tested, not that it refuses)."""
    assert name_of("GET", path) == route
    assert plugin_path_candidates(path.replace("/x", "/%zz"))[1] is True
    assert name_of("GET", path.replace("/x", "/%zz")) == "unknown"


def test_the_readme_documents_every_route_name() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = sorted(name for name in route_names() if f"`{name}`" not in readme)
    assert not missing, f"README's route table lacks {missing}"


def test_opened_routes_are_announced_at_start_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.config import load_config
    from sidecar.runtime import warn_about_config

    config_file = tmp_path / "sidecar.json"
    config_file.write_text(json.dumps({"gateway": {"auth": {"token": "t"}},
                                       "sidecar": {"routes": {"allow": ["openai-chat-completions", "node-capability"]}}}))
    with caplog.at_level("WARNING", logger="sidecar"):
        warn_about_config(load_config(config_file, environ={}))
    lines = [r.getMessage() for r in caplog.records]
    assert any("route openai-chat-completions opened" in line and "agent turn as owner" in line for line in lines), lines
    assert any("route node-capability opened" in line for line in lines), lines
    assert any("route openai-chat-completions is opened but switched off in the gateway's config" in line for line in lines), lines


def test_an_unknown_route_name_fails_at_start_up_naming_the_key(tmp_path: Path) -> None:
    from sidecar.config import load_config
    from sidecar.errors import ConfigError

    config_file = tmp_path / "sidecar.json"
    config_file.write_text(json.dumps({"sidecar": {"routes": {"allow": ["openai-chat"]}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, environ={})
    assert "sidecar.routes.allow" in str(caught.value) and "'openai-chat'" in str(caught.value)


# ---- mutation survivors: decode passes, plugin matching and the Control UI, as the gateway reads them


def _nested(path_before: str, encoded_char: str, depth: int, path_after: str) -> str:
    """`encoded_char` (two hex digits) percent-encoded `depth` + 1 times: it takes that many decode passes."""
    return f"{path_before}%{'25' * depth}{encoded_char}{path_after}"


DEEP_PATHS = [_nested("/", "41", depth, "") for depth in (2, 3, 29, 30, 31, 32, 33, 40)] + \
    [_nested("/api/", "63", depth, "hannels/x") for depth in (3, 30, 31, 32)] + \
    [_nested("/", "zz", depth, "") for depth in (31, 32)]  # malformed at the last pass, or at the look after it


@needs_gateway
def test_the_decode_pass_limit_is_the_gateways() -> None:
    """32 passes, then one more look, as buildCanonicalPathCandidates: a path that still changes is
    past the limit (fail closed), one that took exactly 32 passes is not. The sidecar counted the
    32nd pass itself as past the limit, and neither a depth of 3 nor 31 was tested (a loop of 3
    passes survived)."""
    theirs = call_gateway(["security-path:canonicalizePathForSecurity"], """
        answer(input.map((path) => {
          const found = gateway.canonicalizePathForSecurity(path);
          return [found.candidates, found.malformedEncoding || found.decodePassLimitReached];
        }));""", DEEP_PATHS)
    assert [plugin_path_candidates(path) for path in DEEP_PATHS] == [(c, u) for c, u in theirs]
    assert [u for _, u in theirs].count(True) == 6, "depths 32, 33 and 40 past the limit, the channels path at 32, both malformed"


PLUGIN_ROWS = [entry for entry in TABLE.http if entry.match in ("plugin", "plugin-prefix")]
PLUGIN_PROBES = sorted({
    spelling.replace("/", sep, 1) if sep else spelling
    for entry in PLUGIN_ROWS for base in entry.paths
    for spelling in (base, base.upper(), base + "/", base + "/x", base + "x", base + "%2fx", base + "%20", base + "%",
                     base + "%2541", base[:-1], "/a/%2e%2e" + base, "/a/%252e%252e" + base, base.replace("/", "//"))
    for sep in ("", "%2f")
})


@needs_gateway
def test_plugin_rows_match_the_paths_the_gateways_router_matches() -> None:
    """findMatchingPluginHttpRoutes over the table's own plugin rows: a prefix row takes its path,
    `<prefix>/…` and `<prefix>%…` (a separator still encoded), never `<prefix>x` (mutation testing:
    the `%` boundary and a bare startswith survived)."""
    registry = [{"name": e.name, "path": path, "match": "prefix" if e.match == "plugin-prefix" else "exact"}
                for e in PLUGIN_ROWS for path in e.paths]
    theirs = call_gateway(["route-match:findMatchingPluginHttpRoutes", "route-match:resolvePluginRoutePathContext"], """
        const { findMatchingPluginHttpRoutes: find, resolvePluginRoutePathContext: context } = gateway;
        answer(input.paths.map((path) => [...new Set(find({ httpRoutes: input.registry }, context(path)).map((r) => r.name))].sort()));
        """, {"paths": PLUGIN_PROBES, "registry": registry})
    mine = []
    for path in PLUGIN_PROBES:
        candidates, _ = plugin_path_candidates(path)
        mine.append(sorted(e.name for e in PLUGIN_ROWS if RouteTable._plugin_matches(e, candidates)))
    assert [(p, m, t) for p, m, t in zip(PLUGIN_PROBES, mine, theirs, strict=True) if m != t] == []
    assert sum(bool(t) for t in theirs) > len(theirs) // 3 and ["plugin:channels"] in theirs


UI_ROOTS = ["/", "/api", "/v1", "/j", "/ui", "/health", "/healthz", "/ready", "/readyz", "/startup", "/startupz",
            "/__openclaw__/mcp-app", "/__openclaw__/worker", "/__openclaw__/worker-transfer", "/__openclaw__/worker-bundle",
            "/plugins", "/settings/plugins", "/chat", "/apix", "/v1x", "/jx", "/admin", "/adminx", "/admin/x", "/Admin/x",
            "/control", "/control/api", "/control/chat"]
UI_PATHS = sorted({root.rstrip("/") + suffix or "/" for root in UI_ROOTS for suffix in ("", "/", "/x")})


@needs_gateway
@pytest.mark.parametrize("base_path", ["", "/admin", "/control"])
def test_the_control_ui_catch_all_serves_what_the_gateways_classifier_serves(base_path: str) -> None:
    """classifyControlUiRequest (a browser asking for HTML): served or redirected there, served
    here; the namespaces it declines, exact and below, declined here, and a base path is a whole
    segment (mutation testing: `/api` itself, `/startupz`, `/__openclaw__/worker-transfer` and
    `/adminx` under base `/admin` were not tested). `/plugins/<id>` is the one difference: the
    gateway serves it for a plugin its catalogue knows, the sidecar declines every one."""
    cases = [(method, path) for method in ("GET", "HEAD", "POST", "OPTIONS") for path in UI_PATHS]
    theirs = call_gateway(["control-ui-share:classifyControlUiRequest"], """
        answer(input.cases.map(([method, pathname]) => gateway.classifyControlUiRequest(
          { basePath: input.basePath, pathname, search: "", method, accept: "text/html" }).kind));""",
                          {"cases": cases, "basePath": base_path})
    table = RouteTable.for_deployment(base_path=base_path)
    mine = [table._control_ui_may_serve(method, path) for method, path in cases]
    expected = [kind in ("serve", "redirect") and not (not base_path and path.startswith("/plugins/") and path != "/plugins/")
                for (_, path), kind in zip(cases, theirs, strict=True)]
    assert [(case, m) for case, m, e in zip(cases, mine, expected, strict=True) if m != e] == []
    assert 0 < sum(mine) < len(mine) // 2


def test_query_credentials_are_names_even_without_a_value_and_a_capability_is_none() -> None:
    """`?token` and `?bt=` name a credential as much as `?token=t`; `oc_cap` makes the request a
    node capability's, never a refused query credential (mutation testing)."""
    assert TABLE.match("GET", "/share/session", "?token", websocket=False).query_credential == "token"
    assert TABLE.match("GET", "/x", "?bt=", websocket=False).query_credential == "bt"
    capability = TABLE.match("GET", "/sessions/main/history", "?oc_cap=c", websocket=False)
    assert capability.capability and capability.query_credential is None
    both = TABLE.match("GET", "/x", "?oc_cap=c&token=t", websocket=False)
    assert both.capability and both.query_credential == "token"


def test_a_method_no_row_of_a_split_path_serves_stays_with_the_first_row() -> None:
    """Assistant media splits one path by method (GET/HEAD, POST); a PUT is neither's, and is
    reported unserved by the first row, not passed on to the Control UI or nobody."""
    match = TABLE.match("PUT", "/__openclaw__/assistant-media", "", websocket=False)
    assert (match.name, match.method_served) == ("assistant-media", False)


def test_core_routes_are_no_control_ui_fallback_and_plugin_routes_may_be() -> None:
    assert not TABLE.match("GET", "/avatar/main", "", websocket=False).ui_fallback
    assert TABLE.match("GET", "/browser/extension", "", websocket=False).ui_fallback
    assert not TABLE.match("POST", "/browser/extension", "", websocket=False).ui_fallback


def test_a_base_path_adds_spellings_to_base_rows_only() -> None:
    """Rows the gateway serves under the Control UI's base path keep their plain spelling too;
    other rows get no base spelling; a base path is literal text even in a regex row."""
    table = RouteTable.for_deployment(base_path="/ui.v2")
    assert name_of("GET", "/avatar/main", table=table) == "control-ui-avatar"
    assert name_of("GET", "/ui.v2/avatar/main", table=table) == "control-ui-avatar"
    assert name_of("GET", "/ui.v2/api/chat/media/outgoing/s/a/full", table=table) == "chat-media"
    assert name_of("GET", "/uixv2/api/chat/media/outgoing/s/a/full", table=table) == "unknown"
    assert name_of("GET", "/ui.v2/healthz", table=table) == "control-ui"
    assert name_of("POST", "/ui.v2/tools/invoke", table=table) == "unknown"


def test_regex_rows_match_the_whole_path() -> None:
    assert name_of("POST", "/sessions/main/kill") == "session-kill"
    assert name_of("POST", "/sessions/main/killall") == "unknown"
    assert name_of("GET", "/sessions/main/history/x") != "session-history"
