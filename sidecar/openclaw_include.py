"""The gateway's `$include` (2026.9.6, dist/includes-*.mjs), so that the sidecar reading the
gateway's config file reads the same rules: a `controlUi.basePath` or a `tools.deny` kept in an
included file moved routes and the tool policy for the gateway alone.

An object with `$include` is replaced by the named file's content (a list of files: deep-merged
in order, lists concatenated), and its other keys are merged over that. Paths are relative to the
including file and must stay inside the top directory of the config (or an absolute root in
OPENCLAW_INCLUDE_ROOTS), by name and once symlinks are resolved; at most ten deep, no cycles, 2 MB a
file, a regular file with one link. Anything else is an error, as at the gateway.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import json5

from .toolpolicy import js_trim

INCLUDE_KEY = "$include"
MAX_DEPTH = 10
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_PATH_LENGTH = 4096
# Keys the gateway's mergeDeep drops wherever it merges (they could reach an object's prototype).
BLOCKED_KEYS = frozenset({"__proto__", "prototype", "constructor"})
_TILDE = re.compile(r"\A~(?=\Z|[\\/])")  # a leading `~` alone or before a separator: the home


class IncludeError(ValueError):
    pass


def deep_merge(target: Any, source: Any) -> Any:
    """mergeDeep(target, source, {arrays: "concat"}): objects merge, lists concatenate, else source.
    Two objects merged lose their BLOCKED_KEYS, at any depth of either; so does an object merged
    over something else."""
    if isinstance(target, list) and isinstance(source, list):
        return target + source
    if not (isinstance(target, Mapping) and isinstance(source, Mapping)):
        return source
    merged = _without_blocked_keys(target)
    for key, value in source.items():
        if key in BLOCKED_KEYS:
            continue
        if isinstance(value, Mapping):
            merged[key] = deep_merge(merged[key], value) if isinstance(merged.get(key), Mapping) else _without_blocked_keys(value)
        else:
            merged[key] = deep_merge(merged.get(key), value)
    return merged


def _without_blocked_keys(value: Mapping[str, Any]) -> dict[str, Any]:
    """sanitizePlainObject: the keys dropped from nested objects too (not from lists' items)."""
    return {key: _without_blocked_keys(item) if isinstance(item, Mapping) else item
            for key, item in value.items() if key not in BLOCKED_KEYS}


def resolve_includes(document: Any, config_path: Path, environ: Mapping[str, str]) -> tuple[Any, tuple[Path, ...]]:
    """`document` (parsed from `config_path`) with every `$include` resolved, and the files read.
    A relative `config_path` is taken from the working directory, as the gateway's path.resolve
    takes it (compared as written, a file in the working directory had `.` for its root, and every
    include in it escaped)."""
    base = os.path.abspath(config_path)
    roots = [os.path.dirname(base), *include_roots(environ)]
    includes = _Includes(roots, [os.path.realpath(r) for r in roots])
    return includes.process(document, base, 0, (base,)), tuple(Path(f) for f in dict.fromkeys(includes.read))


def include_roots(environ: Mapping[str, str]) -> list[str]:
    """resolveIncludeRoots: OPENCLAW_INCLUDE_ROOTS split on the path separator, each entry trimmed,
    a leading `~` made the OpenClaw home, made absolute, each once. A relative entry is taken from
    the sidecar's working directory, which the gateway's may not be: name roots absolutely."""
    roots: dict[str, None] = {}
    for entry in js_trim(environ.get("OPENCLAW_INCLUDE_ROOTS", "")).split(os.pathsep):
        entry = js_trim(entry)
        if _TILDE.match(entry):
            entry = _expand_tilde(entry, _openclaw_home(environ))
        if entry:
            roots[os.path.abspath(entry)] = None
    return list(roots)


def _openclaw_home(environ: Mapping[str, str]) -> str:
    """resolveRequiredHomeDir as resolveIncludeRoots calls it: OPENCLAW_HOME (itself `~`-relative
    to the OS home), else the OS home (HOME, USERPROFILE, the user's entry), else the working
    directory. Where neither HOME nor USERPROFILE names the OS home, the gateway asks its own
    OpenClaw-home resolver for it (envHomedir), so a `~` in OPENCLAW_HOME is expanded three times
    over (`~/oc` is ~/oc/oc/oc), twice over the working directory when the user has no home."""
    env_home = _home_value(environ.get("HOME")) or _home_value(environ.get("USERPROFILE"))
    explicit = _home_value(environ.get("OPENCLAW_HOME"))
    if not (explicit and _TILDE.match(explicit)):
        return os.path.abspath(explicit or env_home or _home_value(_user_home()) or os.getcwd())
    home, expansions = (env_home, 1) if env_home else (_home_value(_user_home()), 3)
    if home is None:
        home, expansions = os.getcwd(), 2
    for _ in range(expansions):
        home = _expand_tilde(explicit, home)
    return home


def _expand_tilde(path: str, home: str) -> str:
    return os.path.abspath(_TILDE.sub(lambda _: home, path))


def _home_value(value: str | None) -> str | None:
    """normalizeHomeDirValue: blank, "undefined" and "null" name no home."""
    trimmed = js_trim(value or "")
    return trimmed if trimmed not in ("", "undefined", "null") else None


def _user_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


class _Includes:
    def __init__(self, roots: list[str], real_roots: list[str]) -> None:
        self.roots, self.real_roots = roots, real_roots
        self.read: list[str] = []  # for the reload watch

    def process(self, value: Any, base: str, depth: int, visited: tuple[str, ...]) -> Any:
        if isinstance(value, list):
            return [self.process(item, base, depth, visited) for item in value]
        if not isinstance(value, Mapping):
            return value
        if INCLUDE_KEY not in value:
            return {key: self.process(item, base, depth, visited) for key, item in value.items()}
        included = self._include(value[INCLUDE_KEY], base, depth, visited)
        rest = {key: self.process(item, base, depth, visited) for key, item in value.items() if key != INCLUDE_KEY}
        if not rest:
            return included
        if not isinstance(included, Mapping):
            raise IncludeError("sibling keys require included content to be an object")
        return deep_merge(included, rest)

    def _include(self, names: Any, base: str, depth: int, visited: tuple[str, ...]) -> Any:
        if isinstance(names, str):
            return self._load(names, base, depth, visited)
        if isinstance(names, list):
            merged: Any = {}
            for name in names:
                if not isinstance(name, str):
                    raise IncludeError(f"invalid $include array item: {name!r}")
                merged = deep_merge(merged, self._load(name, base, depth, visited))
            return merged
        raise IncludeError(f"invalid $include value: {names!r} (a path or a list of paths)")

    def _load(self, name: str, base: str, depth: int, visited: tuple[str, ...]) -> Any:
        if "\0" in name or len(name) >= MAX_PATH_LENGTH:
            raise IncludeError(f"invalid include path {name[:80]!r}")
        resolved = _node_normalize(name) if os.path.isabs(name) else os.path.normpath(os.path.join(os.path.dirname(base), name))
        if len(resolved) >= MAX_PATH_LENGTH or not _inside(resolved, self.roots):
            raise IncludeError(f"include path escapes the config directory: {name!r}")
        if os.path.exists(resolved) and not _inside(os.path.realpath(resolved), self.real_roots):
            raise IncludeError(f"include path resolves outside the config directory (symlink): {name!r}")
        if resolved in visited:
            raise IncludeError(f"circular include: {' -> '.join([*visited, resolved])}")
        if depth >= MAX_DEPTH:
            raise IncludeError(f"maximum include depth ({MAX_DEPTH}) exceeded at {name!r}")
        self.read.append(resolved)
        try:
            found = os.stat(resolved)
            if found.st_size > MAX_FILE_BYTES:
                raise IncludeError(f"include file over {MAX_FILE_BYTES} bytes: {name!r}")
            if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
                # The gateway's openRootFileSync: a FIFO would also hold the sidecar's start forever.
                raise IncludeError(f"include file failed security checks (regular file, no hardlinks): {name!r}")
            text = Path(resolved).read_text(encoding="utf-8")
        except OSError as exc:
            raise IncludeError(f"cannot read include file {name!r}: {exc.strerror}") from None
        try:
            parsed = json5.loads(text)
        except ValueError as exc:
            raise IncludeError(f"cannot parse include file {name!r}: {exc}") from None
        return self.process(parsed, resolved, depth + 1, (*visited, resolved))


def _node_normalize(path: str) -> str:
    """Node's path.normalize, which the gateway applies to an absolute include as written: one
    leading `/` however many there are (normpath keeps two), and a trailing `/` kept (the name of
    no file; normpath drops it, and the sidecar read a file the gateway refused)."""
    normalized = "/" + os.path.normpath(path).lstrip("/")
    return normalized + "/" if path.endswith("/") and normalized != "/" else normalized


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
