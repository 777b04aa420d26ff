"""Reload: a changed config or secret file (Kubernetes' symlink swap included) or SIGHUP builds a
new runtime and swaps it in whole; a bad one is refused and the old one keeps serving.

Files are compared by content, so an in-place write, a rename over the file and a ConfigMap's
`..data` swap all count, and a touch does not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import Config, identity_header_names, identity_headers_among, load_config, openclaw_config_path
from .errors import ConfigError
from .metrics import CONFIG_RELOADS
from .runtime import Runtime, build_runtime, restart_needed

log = logging.getLogger("sidecar.reload")


def watched_files(config_path: Path | None, config: Config) -> tuple[Path, ...]:
    """Every file the configuration was read from, secrets included."""
    sidecar, auth = config.sidecar, config.rules.gateway.auth
    files = [config_path, openclaw_config_path(config_path, sidecar), auth.token_file, auth.password_file,
             sidecar.upstream_auth.token_file, *sidecar.auth.previous_token_files, *sidecar.auth.previous_password_files,
             *config.included]
    return tuple(dict.fromkeys(f for f in files if f is not None))


def fingerprint(files: tuple[Path, ...]) -> tuple[tuple[str, str | None], ...]:
    def digest(path: Path) -> str | None:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    return tuple((str(path), digest(path)) for path in files)


class Reloader:
    """Owns the config path and the current runtime; `check()` reloads when a file changed,
    `reload()` unconditionally (SIGHUP). `apply(new)` installs a runtime that built cleanly."""

    def __init__(self, config_path: Path | None, overrides: Mapping[str, Any], runtime: Runtime,
                 apply: Callable[[Runtime], None], build: Callable[..., Runtime] = build_runtime) -> None:
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.runtime = runtime
        self.apply = apply
        self.build = build
        # The files of the last config that loaded, accepted or not: watching the serving one's
        # instead, an edit refused that named another file differed from them at every check and
        # was refused again at every poll (mutation testing).
        self._files = watched_files(config_path, runtime.config)
        self._seen = fingerprint(self._files)
        self._asked = False

    def check(self) -> bool | None:
        """Reload if a watched file changed; None when nothing did."""
        current = fingerprint(self._files)
        if current == self._seen:
            return None
        return self._reload("file change", current)

    def reload(self, why: str) -> bool:
        return self._reload(why, fingerprint(self._files))

    def ask(self, why: str) -> None:
        """Reload at the loop's next turn; every request made before it runs shares it. A reload
        holds the loop for about 0.1 s, and a burst of 30 SIGHUPs ran 30 of them: 2.6 s with no
        request answered (red team)."""
        if not self._asked:
            self._asked = True
            asyncio.get_running_loop().call_soon(self._asked_reload, why)

    def _asked_reload(self, why: str) -> None:
        self._asked = False
        self.reload(why)

    def _reload(self, why: str, current: tuple[tuple[str, str | None], ...]) -> bool:
        self._seen = current  # a rejected file is not retried until it changes again
        # First, and whether or not the rest is accepted: the gateway may apply a header name
        # from this version of its file before the sidecar does, or when the sidecar refuses it.
        self.runtime.pipeline.strip_identity_headers(identity_header_names(
            self.config_path, openclaw_config_path(self.config_path, self.runtime.config.sidecar)))
        try:
            config = load_config(self.config_path, self.overrides)
            self._files = watched_files(self.config_path, config)
            self._seen = fingerprint(self._files)
            if config.secrets.problems:
                # Every caller would get 401 and be counted toward a lockout that outlives the
                # fix, while /readyz says ready: a Secret caught empty mid-swap did that (review).
                raise ConfigError([("gateway.auth", problem) for problem in config.secrets.problems])
            blocker = restart_needed(self.runtime.config, config)
            if blocker is not None:
                raise ConfigError([(blocker, "changed; this setting needs a restart")])
            runtime = self.build(config, reuse=self.runtime)
        except ConfigError as exc:
            return self._rejected(why, "; ".join(f"{key}: {problem}" for key, problem in exc.problems))
        except Exception as exc:  # a bug in building must not take down the serving config
            log.exception("config reload (%s) failed", why)
            return self._rejected(why, f"internal error ({type(exc).__name__})")
        self.runtime = runtime
        self.apply(runtime)
        CONFIG_RELOADS.labels(result="applied").inc()
        log.warning("config reloaded (%s)", why)
        return True

    def _rejected(self, why: str, problem: str) -> bool:
        CONFIG_RELOADS.labels(result="rejected").inc()
        log.error("config reload (%s) rejected, the previous configuration keeps serving: %s", why, problem)
        return False


class IdentityHeaderMemory:
    """Every identity header name the sidecar was told of, kept in its runtime directory. A
    restarted sidecar container keeps that directory, and the gateway beside it may still read its
    identity from a header of a file version the new process never saw (`reload.mode: off`, an
    edit the gateway refused)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / "identity-headers.json"
        self._kept: frozenset[str] = frozenset()

    def recall(self) -> frozenset[str]:
        try:
            names = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return frozenset()
        return identity_headers_among(names if isinstance(names, list) else ())

    def keep(self, names: frozenset[str]) -> None:
        if names == self._kept:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.write_text(json.dumps(sorted(names)), encoding="utf-8")
            self._kept = names
        except OSError as exc:
            log.warning("cannot keep the identity header names in %s: %s", self.path, exc)
