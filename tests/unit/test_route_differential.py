"""Route decision differential: the sidecar's pipeline against Node's WHATWG URL (corpus E3, E4, E7).

The gateway claims a request for `/tools/invoke` iff
`new URL(req.url, "http://" + Host).pathname === "/tools/invoke"`. For every odd request
target below we ask real Node once, then ask the sidecar's pure pipeline (`Pipeline.on_head`,
no proxy, no sockets) what it does with the same head:

* Node says "tools route": the sidecar must treat it as the tools route (GET → 405) or refuse
  the spelling outright (400). Anything else (401, an "other" admission) would mean a request
  the gateway executes as a tool call was routed past the tools policy.
* Node says "not the tools route" (or throws): the sidecar must not answer 405, because it is
  another route (401 without auth, 400 when the target is refused, 404 where the route table
  has no route or refuses it, or admitted only on a public route at the path Node routes).

Node applies the gateway's capability rewrite first (`/__openclaw__/cap/<seg>/<rest>`).

A second pass with a valid token checks the positive side: whenever the sidecar admits a head,
its route label agrees with Node.

Node is a hard requirement: the test fails (never skips) when it is missing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sidecar.config import load_config
from tests.unit.fakes import NeverLimits
from sidecar.pipeline import Admitted, Pipeline, Refuse
from sidecar.view import RequestView
from tests.node import gateway_node

DATA = Path(__file__).resolve().parent.parent / "data" / "odd_targets.json"
BASE_HOST = "sidecar.test"
TOKEN = "route-differential-token"

NODE_SCRIPT = r"""
const targets = JSON.parse(require("fs").readFileSync(0, "utf8"));
// The gateway's capability rewrite (normalizePluginNodeCapabilityScopedUrl, 2026.9.6), run on
// the pathname before any route is chosen.
const PREFIX = "/__openclaw__/cap/";
function effectivePath(pathname) {
  if (!pathname.startsWith(PREFIX)) return { path: pathname };
  const remainder = pathname.slice(PREFIX.length);
  const slash = remainder.indexOf("/");
  if (slash <= 0) return { path: pathname, malformed: true };
  let capability;
  try { capability = decodeURIComponent(remainder.slice(0, slash)).trim(); } catch { return { path: pathname, malformed: true }; }
  if (!capability) return { path: pathname, malformed: true };
  return { path: remainder.slice(slash) || "/", capability: true };
}
const out = targets.map((t) => {
  try {
    const u = new URL(t, "http://sidecar.test");
    const routed = effectivePath(u.pathname);
    return { tools: !routed.malformed && routed.path === "/tools/invoke", pathname: routed.path, malformed: !!routed.malformed };
  } catch (e) {
    return { tools: false, error: String(e && e.code || e) };
  }
});
process.stdout.write(JSON.stringify(out));
"""

# Our own additions to tests/data/odd_targets.json: spellings aimed at the route decision.
OWN_TARGETS = [
    "/tools/invoke",
    "/tools/invoke?",
    "/tools/invoke?x=1#y",
    "/tools/invoke?x=/health",
    "/tools/invoke?/../healthz",
    "/healthz?/../tools/invoke",
    "/healthz#/../tools/invoke",
    "/healthz/../tools/invoke",
    "/healthz/..%2ftools/invoke",
    "/v1/models",
    "/v1/../tools/invoke",
    "/sessions/x/kill",
    "/sessions/../tools/invoke",
    "/api/channels/x",
    "/tools/invoke/.",
    "/tools/invoke/./",
    "/tools/invoke%2F",
    "/tools/invoke%20",
    "/tools/invoke%09",
    "/tools/Invoke",
    "/tools/invok%65",
    "/tools/%69nvoke",
    "/tools/invoke\\",
    "\\tools/invoke",
    "/tools/.\\invoke",
    "/tools/%2e%2E/tools/./invoke",
    "/tools/invoke/..;/invoke",
    "/tools;/invoke",
    "/tools/invoke%3b",
    "/tools/invoke..",
    "/tools/invoke/...",
    "///tools/invoke",
    "////tools/invoke",
    "/\\tools/invoke",
    "http://sidecar.test/tools/invoke",
    "http://sidecar.test:80/tools/invoke",
    "http://SIDECAR.TEST/tools/./invoke",
    "http://sidecar.test/x/../tools/invoke",
    "http://sidecar.test/v1/models",
    "https://sidecar.test/tools/invoke",
    "http://sidecar.test",
    "http://evil/v1/models",
    "http:/x/../tools/invoke",
    "http:\\tools\\invoke",
    "ws://sidecar.test/tools/invoke",
    "/tools/invoke\u00a0",
    "/tools/invok\u00e9",
    "/t\u200bools/invoke",
    "/tools/%E2%80%8Binvoke",
    "/%2F/tools/invoke",
    "/.%2e/.%2e/tools/invoke",
    # the gateway's capability rewrite: `/__openclaw__/cap/<seg>/<rest>` routes as `/<rest>`
    "/__openclaw__/cap/x/tools/invoke",
    "/__openclaw__/cap/%78/tools/invoke",
    "/__openclaw__/cap/x%2fy/tools/invoke",
    "/__openclaw__/cap/x/tools/./invoke",
    "/__openclaw__/cap/x/x/../tools/invoke",
    "/x/../__openclaw__/cap/x/tools/invoke",
    "/__openclaw__/%63ap/x/tools/invoke",
    "/__openclaw__/cap/%20/tools/invoke",
    "/__openclaw__/cap//tools/invoke",
    "/__openclaw__/cap/x",
    "/__openclaw__/cap/%zz/tools/invoke",
    "/__OPENCLAW__/cap/x/tools/invoke",
    "http://sidecar.test/__openclaw__/cap/x/tools/invoke",
    "/__openclaw__/cap/x/__openclaw__/cap/y/tools/invoke",
]


def all_targets() -> list[str]:
    targets = [entry["target"] for entry in json.loads(DATA.read_text(encoding="utf-8"))] if DATA.exists() else []
    for target in OWN_TARGETS:
        if target not in targets:
            targets.append(target)
    # A lone surrogate cannot be sent to Node as JSON text and never arrives in a latin-1 request line.
    return [t for t in targets if not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]


TARGETS = all_targets()


def node_decisions(targets: list[str]) -> list[dict]:
    proc = subprocess.run([gateway_node(), "-e", NODE_SCRIPT], input=json.dumps(targets).encode("utf-8"),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    assert len(result) == len(targets)
    return result


@pytest.fixture(scope="module")
def node() -> dict[str, dict]:
    return dict(zip(TARGETS, node_decisions(TARGETS), strict=True))


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(
        "gateway:\n"
        "  auth:\n"
        "    mode: token\n"
        f"    token: {TOKEN}\n"
        "sidecar:\n"
        f"  runtimeDir: {tmp_path / 'run'}\n"
    )
    return Pipeline(load_config(config_file, environ={}), NeverLimits())


def head(method: str, target: str, token: str | None = None) -> RequestView:
    headers: list[tuple[bytes, bytes]] = [(b"Host", BASE_HOST.encode())]
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    return RequestView(method, target, tuple(headers), "127.0.0.1")


def describe(decision: Refuse | Admitted) -> str:
    if isinstance(decision, Refuse):
        return f"Refuse {decision.envelope.status} ({decision.reason})"
    return f"Admitted route={decision.route} target={decision.target!r}"


def test_table_is_large_and_has_both_kinds(node: dict[str, dict]) -> None:
    """Guard: the differential really exercises both sides of the decision."""
    assert len(TARGETS) >= 60
    tools = [t for t in TARGETS if node[t]["tools"]]
    assert len(tools) >= 15, tools
    assert len(TARGETS) - len(tools) >= 30


async def test_unauthenticated_get_route_decision_matches_node(node: dict[str, dict], pipeline: Pipeline) -> None:
    """E3/E4/E7: GET without auth. Node tools route ⇒ 405 or 400; otherwise never 405, and a
    request admitted without credentials is a public route on exactly the path Node routes."""
    mismatches = []
    for target in TARGETS:
        decision = await pipeline.on_head(head("GET", target))
        if node[target]["tools"]:
            ok = isinstance(decision, Refuse) and decision.envelope.status in (405, 400)
        elif isinstance(decision, Refuse):
            ok = decision.envelope.status in (401, 400, 404)
        else:
            entry = pipeline.routes.match("GET", decision.target.split("?", 1)[0], "", websocket=False).entry
            ok = (entry is not None and entry.default_policy == "public"
                  and decision.target.split("?", 1)[0] == node[target]["pathname"])
        if not ok:
            mismatches.append(f"{target!r}: node {node[target]} vs sidecar {describe(decision)}")
    assert not mismatches, "\n".join(mismatches)


async def test_authenticated_post_route_label_matches_node(node: dict[str, dict], pipeline: Pipeline) -> None:
    """E7: with a valid token, an admitted head carries the route Node would pick, and a
    tools-route admission is only ever the canonical spelling (never rewritten)."""
    mismatches = []
    for target in TARGETS:
        decision = await pipeline.on_head(head("POST", target, TOKEN))
        if isinstance(decision, Refuse):
            # 400: refused spelling; 404: no route, or one the default policy refuses;
            # 401: a capability path the gateway itself answers 401; 405: a route Node also
            # picks that serves no POST (never the tools route).
            allowed = (400, 401) if node[target].get("malformed") else (400, 404) if node[target]["tools"] else (400, 404, 405)
            if decision.envelope.status not in allowed:
                mismatches.append(f"{target!r}: valid token refused with {describe(decision)}")
            continue
        if (decision.route == "tools-invoke") != node[target]["tools"]:
            mismatches.append(f"{target!r}: node {node[target]} vs sidecar {describe(decision)}")
        elif decision.route == "tools-invoke" and decision.target.split("?", 1)[0] != "/tools/invoke":
            mismatches.append(f"{target!r}: tools route forwarded as {decision.target!r}")
        elif decision.route == "tools-invoke" and target.split("?", 1)[0] != "/tools/invoke":
            mismatches.append(f"{target!r}: non-canonical tools spelling admitted ({describe(decision)})")
    assert not mismatches, "\n".join(mismatches)


async def test_refused_tools_spellings_use_the_gateway_invalid_url_body(node: dict[str, dict], pipeline: Pipeline) -> None:
    """E3: a relative non-canonical spelling of the tools route gets the gateway's
    `Invalid request URL` 400 (absolute forms may instead get the foreign-host 400)."""
    for target in ("/tools/./invoke", "/tools/%2e/invoke", "/x/../tools/invoke", "/tools\\invoke", "/tools/invoke#frag"):
        assert node[target]["tools"], target
        decision = await pipeline.on_head(head("POST", target, TOKEN))
        assert isinstance(decision, Refuse), (target, describe(decision))
        assert decision.envelope.status == 400
        assert decision.envelope.body == b'{"error":"bad_request","message":"Invalid request URL"}', target
