"""sidecar.openclaw_include against the gateway's own resolveConfigIncludes (in its Node): the
same tree of files gives the same config, and what the gateway refuses the sidecar refuses."""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.openclaw_include import IncludeError, include_roots, resolve_includes
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
    "blocked.json5": "{tools: {deny: ['canvas'], constructor: {x: 1}, prototype: 2}, agents: [{constructor: 1}]}",
    "linked.json5": "{tools: {deny: ['exec']}}",
    "scalar-key.json5": "{x: 1, w: 2}",
    "nested-blocked.json5": "{a: {b: {constructor: 1, c: 2}}}",
    "sub/inner.json5": "{$include: '../gateway.json5'}",
    "sub/deep.json5": "{$include: './inner.json5', k: [1]}",
    # eleven files, each including the next: the gateway reads ten deep, no deeper
    **{f"chain/c{i}.json5": f"{{$include: './c{i + 1}.json5'}}" for i in range(10)}, "chain/c10.json5": "{deep: true}",
}
# Spelt with `x/../` so that only the name, not the path it resolves to, is 4095 or 4096 long.
LONG_NAMES = ["./" + "x/../" * 816 + "gateway.json5", "./" + "./" * 3 + "x/../" * 815 + "gateway.json5"]
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
    {"$include": "./gateway.json5", "controlUi": {"basePath": "/other"}, "tools": {"deny": "exec"}},  # a sibling's value wins
    {"gateway": {"$include": ["./deny-a.json5", "./list.json5"]}},  # an object, then a list: the list
    {"gateway": {"$include": ["./list.json5", "./deny-a.json5"]}},
    {"gateway": {"$include": "./chain/c1.json5"}},  # ten deep
    {"gateway": {"$include": "./chain/c0.json5"}},  # eleven
    {"gateway": {"$include": "./alias.json5"}},  # a symlink to a file inside
    {"gateway": {"$include": "./escape.json5"}},  # a symlink to a file outside
    {"gateway": {"$include": "../elsewhere/link.json5"}},  # outside by name, inside once resolved
    {"gateway": {"$include": "./gateway\u0000.json5"}},
    {"gateway": {"$include": LONG_NAMES[0]}},
    {"gateway": {"$include": LONG_NAMES[1]}},
    # Keys that could reach a prototype: kept where nothing merges, dropped wherever objects merge.
    {"gateway": {"$include": "./blocked.json5"}},
    {"gateway": {"$include": "./blocked.json5", "constructor": 1, "__proto__": {"x": 1}, "tools": {"prototype": [1]}}},
    {"gateway": {"$include": ["./deny-a.json5", "./blocked.json5"]}},
    {"gateway": {"$include": ["./list.json5", "./blocked.json5"]}},
    {"gateway": {"$include": "./nested-blocked.json5", "x": 1}},  # dropped however deep in what a sibling merges over
    {"gateway": {"$include": "./deny-b.json5", "extra": {"constructor": 1, "x": 2}}},  # an object over a number
    {"gateway": {"$include": "./hardlink.json5"}},  # a second name for linked.json5
    # An object merged over a scalar loses its blocked keys at every depth.
    {"gateway": {"$include": "./scalar-key.json5", "x": {"constructor": 1, "y": {"prototype": 2, "z": 3}}}},
    {"gateway": {"$include": "../config-evil/x.json5"}},  # a sibling directory whose name starts with the config's
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "outside.json5").write_text("{secret: 1}")
    (tmp_path / "config-evil").mkdir()
    (tmp_path / "config-evil" / "x.json5").write_text("{secret: 2}")
    (root / "alias.json5").symlink_to(root / "gateway.json5")
    (root / "escape.json5").symlink_to(tmp_path / "outside.json5")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link.json5").symlink_to(root / "gateway.json5")
    os.link(root / "linked.json5", root / "hardlink.json5")
    return root


def resolved_by_both(documents: list, config_path: Path) -> tuple[list, list]:
    """Each document resolved by the sidecar and by the gateway: its value, or that it failed."""
    theirs = call_gateway(["resolveConfigIncludes"], """
        answer(input.documents.map((doc) => {
          try { return { value: gateway.resolveConfigIncludes(doc, input.path) }; } catch (err) { return { error: true }; }
        }));""", {"documents": documents, "path": str(config_path)})
    mine = []
    for document in documents:
        try:
            mine.append({"value": resolve_includes(document, config_path, {})[0]})
        except IncludeError:
            mine.append({"error": True})
    return mine, theirs


@needs_gateway
def test_includes_resolve_as_the_gateway_resolves_them(tree: Path) -> None:
    mine, theirs = resolved_by_both(DOCUMENTS, tree / "openclaw.json")
    assert mine == theirs
    assert sum("error" in answer for answer in theirs) == 15  # the corpus holds both kinds
    assert [len(name) for name in LONG_NAMES] == [4095, 4096]


@needs_gateway
def test_an_absolute_include_is_spelt_out_as_the_gateway_spells_it(tree: Path) -> None:
    """Node's path.normalize, not normpath: a trailing `/` stays, naming no file (the sidecar read
    the file the gateway refused), and a leading `//` is `/` (the sidecar took it for a path
    outside every root)."""
    names = [f"{tree}/gateway.json5/", f"/{tree}/gateway.json5", f"{tree}//gateway.json5", f"{tree}/gateway.json5/.",
             f"//{tree}/sub/", f"{tree}/sub/..", f"{tree}/sub/../"]
    mine, theirs = resolved_by_both([{"$include": name} for name in names], tree / "openclaw.json")
    assert mine == theirs
    assert [answer.get("error", False) for answer in theirs] == [True, False, False, False, True, True, True]


def test_a_route_prefix_kept_in_an_included_file_moves_the_sidecars_routes_too(tree: Path) -> None:
    """controlUi.basePath in an included file: the sidecar took the Control UI to be at /, and
    classified /admin/... (the gateway's own UI routes, with their tickets) as something else."""
    (tree / "openclaw.json").write_text(json.dumps({"gateway": {"$include": "./gateway.json5"}}))
    sidecar = tree / "sidecar.yaml"
    sidecar.write_text("sidecar:\n  openclawConfig: openclaw.json\n")
    config = load_config(sidecar, environ={})
    assert (config.rules.gateway.control_ui.base_path, config.rules.gateway.tools.deny) == ("/admin", ("exec",))
    assert config.included == (tree / "gateway.json5",)  # watched for reloads with the rest


def test_a_gateway_file_named_from_the_working_directory_has_its_includes_read(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`openclaw-sidecar run --config sidecar.yaml` beside the gateway's file: its directory was
    compared as `.`, no include was inside that, and the sidecar refused to start on a file the
    gateway loads. The directory still bounds what may be included."""
    monkeypatch.chdir(tree)
    Path("openclaw.json").write_text(json.dumps({"gateway": {"$include": "./gateway.json5"}}))
    Path("sidecar.yaml").write_text("sidecar:\n  openclawConfig: openclaw.json\n")
    config = load_config(Path("sidecar.yaml"), environ={})
    assert (config.rules.gateway.control_ui.base_path, config.included) == ("/admin", (tree / "gateway.json5",))
    with pytest.raises(IncludeError, match="escapes the config directory"):
        resolve_includes({"$include": "../outside.json5"}, Path("openclaw.json"), {})


def test_a_broken_include_fails_at_start_naming_the_key(tree: Path) -> None:
    (tree / "openclaw.json").write_text(json.dumps({"gateway": {"$include": "../outside.json5"}}))
    sidecar = tree / "sidecar.yaml"
    sidecar.write_text("sidecar:\n  openclawConfig: openclaw.json\n")
    with pytest.raises(ConfigError) as exc:
        load_config(sidecar, environ={})
    assert [key for key, _ in exc.value.problems] == ["sidecar.openclawConfig"]


@pytest.mark.parametrize("document, why", [
    ({"$include": 5}, "invalid $include value: 5 (a path or a list of paths)"),
    ({"$include": ["./gateway.json5", 5]}, "invalid $include array item: 5"),
    ({"$include": "./scalar.json5", "x": 1}, "sibling keys require included content to be an object"),
    ({"$include": "./loop-a.json5"}, "circular include: {config}/openclaw.json -> {config}/loop-a.json5 -> "
                                      "{config}/loop-b.json5 -> {config}/loop-a.json5"),
    ({"$include": "./chain/c0.json5"}, "maximum include depth (10) exceeded at './c10.json5'"),
    ({"$include": "../outside.json5"}, "include path escapes the config directory: '../outside.json5'"),
    ({"$include": "./escape.json5"}, "include path resolves outside the config directory (symlink): './escape.json5'"),
    ({"$include": "./missing.json5"}, "cannot read include file './missing.json5': No such file or directory"),
    ({"$include": "./bad.json5"}, "cannot parse include file './bad.json5': <string>:1 Unexpected end of input"),
    ({"$include": "../config-evil/x.json5"}, "include path escapes the config directory: '../config-evil/x.json5'"),
    ({"$include": "./gateway\u0000.json5"}, "invalid include path './gateway\\x00.json5'"),
    ({"$include": LONG_NAMES[1]}, f"invalid include path {LONG_NAMES[1][:80]!r}"),  # its first 80 characters
], ids=["value", "item", "siblings", "cycle", "depth", "escape", "symlink", "missing", "parse", "sibling-dir", "nul", "long"])
def test_a_refused_include_says_why(tree: Path, document: dict, why: str) -> None:
    """The start-up error an operator reads names the rule and the include it broke."""
    with pytest.raises(IncludeError, match=re.escape(why.replace("{config}", str(tree)))):
        resolve_includes(document, tree / "openclaw.json", {})


def test_an_include_file_may_hold_two_megabytes_and_not_a_byte_more(tree: Path) -> None:
    """The gateway's limit (MAX_INCLUDE_FILE_BYTES): a file of exactly 2 MiB is read (this one then
    fails to parse, at its first byte), one byte more is refused unread."""
    (tree / "full.json5").write_text("}" + " " * (2 * 1024 * 1024 - 1))
    (tree / "over.json5").write_text("}" + " " * (2 * 1024 * 1024))
    with pytest.raises(IncludeError, match="cannot parse include file"):
        resolve_includes({"$include": "./full.json5"}, tree / "openclaw.json", {})
    with pytest.raises(IncludeError, match="include file over 2097152 bytes"):
        resolve_includes({"$include": "./over.json5"}, tree / "openclaw.json", {})


def test_an_include_that_is_no_regular_file_is_refused_not_waited_on(tree: Path) -> None:
    """A FIFO named as an include held the sidecar's start forever (its size reads 0, then the
    read blocks); the gateway opens only regular files."""
    os.mkfifo(tree / "pipe.json5")
    with pytest.raises(IncludeError, match="failed security checks"):
        resolve_includes({"$include": "./pipe.json5"}, tree / "openclaw.json", {})


def test_an_absolute_root_in_openclaw_include_roots_lets_includes_out_of_the_config_directory(tree: Path) -> None:
    """OPENCLAW_INCLUDE_ROOTS (a path list) widens where includes may live, for the gateway and so
    for the sidecar; without it the same include is an escape."""
    shared = tree.parent / "shared"
    shared.mkdir()
    (shared / "tools.json5").write_text("{deny: ['exec']}")
    document = {"tools": {"$include": str(shared / "tools.json5")}}
    with pytest.raises(IncludeError, match="escapes the config directory"):
        resolve_includes(document, tree / "openclaw.json", {})
    environ = {"OPENCLAW_INCLUDE_ROOTS": f"{tree.parent / 'other'}{os.pathsep}{shared}"}
    assert resolve_includes(document, tree / "openclaw.json", environ) == ({"tools": {"deny": ["exec"]}}, (shared / "tools.json5",))


ROOTS_ENVIRONMENTS = [
    {},
    {"OPENCLAW_INCLUDE_ROOTS": "  "},
    {"OPENCLAW_INCLUDE_ROOTS": " /a : /b/ :: /a ", "HOME": "/home/u"},  # trimmed, each once
    {"OPENCLAW_INCLUDE_ROOTS": "\u00a0/a/../b/./c\ufeff", "HOME": "/home/u"},
    {"OPENCLAW_INCLUDE_ROOTS": "~/shared:~:~x/y:rel/dir", "HOME": "/home/u"},
    {"OPENCLAW_INCLUDE_ROOTS": "~/s", "OPENCLAW_HOME": "~/oc", "HOME": "/home/u"},
    {"OPENCLAW_INCLUDE_ROOTS": "~/s", "OPENCLAW_HOME": " /srv/oc ", "HOME": "/home/u"},
    {"OPENCLAW_INCLUDE_ROOTS": "~/s", "OPENCLAW_HOME": "undefined", "HOME": " null", "USERPROFILE": "/u2"},
    {"OPENCLAW_INCLUDE_ROOTS": "~\\s", "HOME": "/home/u"},
    # No HOME nor USERPROFILE: the user's own home directory (os.homedir(), the passwd entry).
    {"OPENCLAW_INCLUDE_ROOTS": "~/s"},
    {"OPENCLAW_INCLUDE_ROOTS": "~/s", "OPENCLAW_HOME": "~/oc"},
]


@needs_gateway
def test_include_roots_are_read_as_the_gateway_reads_them() -> None:
    """OPENCLAW_INCLUDE_ROOTS=" ~/shared" let the gateway include from the home's shared/ while the
    sidecar, taking only entries already absolute, refused to start. (os.homedir() reads the Node
    process's own HOME before the user's entry: the script removes it, as the environments lack it;
    a CI runner's HOME need not be its passwd entry's.)"""
    theirs = call_gateway(["resolveIncludeRoots"], """
        delete process.env.HOME; delete process.env.USERPROFILE;
        answer(input.map((env) => gateway.resolveIncludeRoots(env)));""", ROOTS_ENVIRONMENTS)
    assert [include_roots(environ) for environ in ROOTS_ENVIRONMENTS] == theirs
    assert theirs[4][0] == "/home/u/shared" and theirs[5] == ["/home/u/oc/s"]  # the cases are the ones meant
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert theirs[-2:] == [[f"{home}/s"], [f"{home}/oc/oc/oc/s"]]  # no HOME: the gateway nests OPENCLAW_HOME's ~


def test_a_tilde_in_openclaw_home_without_any_home_nests_over_the_working_directory(monkeypatch: pytest.MonkeyPatch,
                                                                                      tmp_path: Path) -> None:
    """No HOME, no USERPROFILE, no passwd entry: the gateway's resolvers fall back to the working
    directory and expand `~` twice over it (the entry-point case next to it is checked in its Node)."""
    monkeypatch.setattr("sidecar.openclaw_include._user_home", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert include_roots({"OPENCLAW_INCLUDE_ROOTS": "~/s", "OPENCLAW_HOME": "~/oc"}) == [f"{tmp_path}/oc/oc/s"]
    assert include_roots({"OPENCLAW_INCLUDE_ROOTS": "~/s"}) == [f"{tmp_path}/s"]


def test_a_symlink_out_of_the_config_directory_is_refused_wherever_the_sidecar_runs(
    tree: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run from the directory the symlink points into, with no OPENCLAW_INCLUDE_ROOTS set: that
    directory is still no include root (the gateway has none but the config's)."""
    monkeypatch.chdir(tree.parent)
    with pytest.raises(IncludeError, match="symlink"):
        resolve_includes({"$include": "./escape.json5"}, tree / "openclaw.json", {"OPENCLAW_INCLUDE_ROOTS": ""})
    with pytest.raises(IncludeError, match="symlink"):
        resolve_includes({"$include": "./escape.json5"}, tree / "openclaw.json", {})
