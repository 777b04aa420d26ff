"""Running `openclaw-sidecar probe` as a user does (a real process, its JSON report read back), and
what the end-to-end probe tests know about the sidecar ahead of time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openclaw_demo.backend import DemoBackend
from tests.ports import free_port

from .harness import REPO

# The console script of this venv: the command the README tells a user to run.
PROBE = [str(Path(sys.executable).parent / "openclaw-sidecar"), "probe"]


@dataclass
class ProbeRun:
    returncode: int
    report: dict[str, Any]
    stderr: str

    @property
    def cases(self) -> dict[str, dict[str, Any]]:
        return {case["id"]: case for case in self.report["cases"]}

    def ids(self, verdict: str | None = None, differential: str | None = None) -> set[str]:
        return {case["id"] for case in self.report["cases"]
                if (verdict is None or case["verdict"] == verdict)
                and (differential is None or case["differential"] == differential)}

    def classes_failing(self) -> set[str]:
        return {case["class"] for case in self.report["cases"] if case["verdict"] == "fail"}


def probe_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENCLAW_", "CLAWDBOT_"))}


def run_probe(url: str, *args: str, tmp_path: Path, timeout: float = 120) -> ProbeRun:
    """The probe against `url` with `args`, its JSON report read from --out."""
    out = tmp_path / f"report-{len(list(tmp_path.glob('report-*.json')))}.json"
    done = subprocess.run([*PROBE, url, *args, "--format", "json", "--out", str(out)], cwd=REPO, env=probe_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert out.exists(), f"no report (exit {done.returncode}): {done.stderr[-3000:]}"
    return ProbeRun(done.returncode, json.loads(out.read_text()), done.stderr)


@contextmanager
def mitmdump_in_front(backend: DemoBackend, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mitmdump --mode reverse:<demo backend>` (plus `options`, e.g. an add-on, and `env` for it),
    listening at the URL yielded."""
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    proc = subprocess.Popen([str(mitmdump), "--mode", f"reverse:{backend.url}", "--listen-host", "127.0.0.1",
                             "--listen-port", str(port), "-q", *options],
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # it even crashes on trailers
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mitmdump did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()  # a throwaway relay with nothing to flush
        proc.wait(10)
