"""The gateway's `$include` (2026.9.6, dist/includes-*.mjs), so that the sidecar reading the
gateway's config file reads the same rules: a `controlUi.basePath` or a `tools.deny` kept in an
included file moved routes and the tool policy for the gateway alone.

An object with `$include` is replaced by the named file's content (a list of files: deep-merged
in order, lists concatenated), and its other keys are merged over that. Paths are relative to the
including file and must stay inside the top directory of the config (or an absolute root in
OPENCLAW_INCLUDE_ROOTS), by name and once symlinks are resolved; at most ten deep, no cycles, 2 MB a
file. Anything else is an error, as at the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import json5

INCLUDE_KEY = "$include"
MAX_DEPTH = 10
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_PATH_LENGTH = 4096


class IncludeError(ValueError):
    pass


def deep_merge(target: Any, source: Any) -> Any:
    """mergeDeep(target, source, {arrays: "concat"}): objects merge, lists concatenate, else source."""
    if isinstance(target, Mapping) and isinstance(source, Mapping):
        merged = dict(target)
        for key, value in source.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else value
        return merged
    if isinstance(target, list) and isinstance(source, list):
        return target + source
    return source


def resolve_includes(document: Any, config_path: Path, environ: Mapping[str, str]) -> tuple[Any, tuple[Path, ...]]:
    """`document` (parsed from `config_path`) with every `$include` resolved, and the files read."""
    roots = [os.path.normpath(config_path.parent)]
    roots += [os.path.normpath(r) for r in environ.get("OPENCLAW_INCLUDE_ROOTS", "").split(os.pathsep) if os.path.isabs(r)]
    includes = _Includes(roots, [os.path.realpath(r) for r in roots])
    base = os.path.normpath(config_path)
    return includes.process(document, base, 0, (base,)), tuple(Path(f) for f in dict.fromkeys(includes.read))


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
        resolved = os.path.normpath(os.path.join(os.path.dirname(base), name))
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
            if os.path.getsize(resolved) > MAX_FILE_BYTES:
                raise IncludeError(f"include file over {MAX_FILE_BYTES} bytes: {name!r}")
            text = Path(resolved).read_text(encoding="utf-8")
        except OSError as exc:
            raise IncludeError(f"cannot read include file {name!r}: {exc.strerror}") from None
        try:
            parsed = json5.loads(text)
        except ValueError as exc:
            raise IncludeError(f"cannot parse include file {name!r}: {exc}") from None
        return self.process(parsed, resolved, depth + 1, (*visited, resolved))


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
