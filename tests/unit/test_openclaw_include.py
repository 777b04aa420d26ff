"""sidecar.openclaw_include against the gateway's own resolveConfigIncludes (in its Node): the
same tree of files gives the same config, and what the gateway refuses the sidecar refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.openclaw_include import IncludeError, resolve_includes
from tests.gateway.oracle import call_gateway, needs_gateway

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/unit/conftest.py

FILES = {
    "gateway.json5": "{controlUi: {basePath: '/admin'}, tools: {deny: ['exec']}}",
    "deny-a.json5": "{tools: {deny: ['canvas'], allow: ['a']}}",
    "deny-b.json5": "{tools: {deny: ['browser']}, extra: 1}",
    "nested.json5": "{$include: './gateway.json5', auth: {mode: 'token'}}",
    "list.json5": "['x', 'y']",
    "scalar.json5": "7",
    "loop-a.json5": "{$include: './loop-b.json5'}",
    "loop-b.json5": "{$include: './loop-a.json5'}",
    "bad.json5": "{nope",
    "sub/inner.json5": "{$include: '../gateway.json5'}",
    "sub/deep.json5": "{$include: './inner.json5', k: [1]}",
}
DOCUMENTS = [
    {"gateway": {"$include": "./gateway.json5"}},
    {"gateway": {"$include": "./gateway.json5", "tools": {"deny": ["browser"]}}},  # siblings merge over it
    {"gateway": {"$include": ["./deny-a.json5", "./deny-b.json5"]}},  # lists concatenate
    {"gateway": {"$include": "./nested.json5"}, "tools": {"$include": "./deny-a.json5"}},
    {"$include": "./gateway.json5", "agents": {"list": []}},
    {"gateway": {"$include": "./sub/deep.json5", "k": [2]}},
    {"gateway": [{"$include": "./list.json5"}, {"$include": "./scalar.json5"}]},
    {"gateway": {"$include": "./scalar.json5", "x": 1}},  # siblings need an object
    {"gateway": {"$include": "./loop-a.json5"}},
    {"gateway": {"$include": "./bad.json5"}},
    {"gateway": {"$include": "./missing.json5"}},
    {"gateway": {"$include": "../outside.json5"}},
    {"gateway": {"$include": "/etc/hostname"}},
    {"gateway": {"$include": 5}},
    {"gateway": {"$include": ["./gateway.json5", 5]}},
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "outside.json5").write_text("{secret: 1}")
    return root


@needs_gateway
def test_includes_resolve_as_the_gateway_resolves_them(tree: Path) -> None:
    config_path = tree / "openclaw.json"
    theirs = call_gateway(["resolveConfigIncludes"], """
        answer(input.documents.map((doc) => {
          try { return { value: gateway.resolveConfigIncludes(doc, input.path) }; } catch (err) { return { error: true }; }
        }));""", {"documents": DOCUMENTS, "path": str(config_path)})
    mine = []
    for document in DOCUMENTS:
        try:
            mine.append({"value": resolve_includes(document, config_path, {})[0]})
        except IncludeError:
            mine.append({"error": True})
    assert mine == theirs
    assert sum("error" in answer for answer in theirs) == 8  # the corpus holds both kinds


def test_a_route_prefix_kept_in_an_included_file_moves_the_sidecars_routes_too(tree: Path) -> None:
    """controlUi.basePath in an included file: the sidecar took the Control UI to be at /, and
    classified /admin/... (the gateway's own UI routes, with their tickets) as something else."""
    (tree / "openclaw.json").write_text(json.dumps({"gateway": {"$include": "./gateway.json5"}}))
    sidecar = tree / "sidecar.yaml"
    sidecar.write_text("sidecar:\n  openclawConfig: openclaw.json\n")
    config = load_config(sidecar, environ={})
    assert (config.rules.gateway.control_ui.base_path, config.rules.gateway.tools.deny) == ("/admin", ("exec",))
    assert config.included == (tree / "gateway.json5",)  # watched for reloads with the rest


def test_a_broken_include_fails_at_start_naming_the_key(tree: Path) -> None:
    (tree / "openclaw.json").write_text(json.dumps({"gateway": {"$include": "../outside.json5"}}))
    sidecar = tree / "sidecar.yaml"
    sidecar.write_text("sidecar:\n  openclawConfig: openclaw.json\n")
    with pytest.raises(ConfigError) as exc:
        load_config(sidecar, environ={})
    assert [key for key, _ in exc.value.problems] == ["sidecar.openclawConfig"]
