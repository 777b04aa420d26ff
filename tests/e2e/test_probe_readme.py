"""The README's one-liner: `make run` (the demo) in one shell, the probe in another, exactly as
documented, `.venv/bin/openclaw-sidecar probe http://127.0.0.1:18790 --token <token>` (on a free
port instead of 18790, so a developer's running demo does not collide), and the fuller line the
README gives next to it, which adds the demo backend's record and WebSocket path."""

from __future__ import annotations

import re
import subprocess

from .harness import REPO
from .probe_helpers import PROBE, probe_env
from .test_cli_demo import Demo


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PROBE, *args], cwd=REPO, env=probe_env(), capture_output=True, text=True, timeout=120,
                          check=False)


def rows(table: str, verdict: str) -> set[str]:
    cases = table[:table.index("Summary by class")]
    return set(re.findall(rf"^(\S+) +\S+ +{verdict} ", cases, re.MULTILINE))


def test_the_documented_one_liners_probe_the_demo():
    demo = Demo()
    try:
        demo.curl_line()  # the demo is up and has printed its URL, backend and token
        url = f"http://127.0.0.1:{demo.port}"
        one_liner = probe(url, "--token", demo.token)
        [backend] = re.findall(r"-> demo backend (\S+)", "".join(demo.stdout))
        fuller = probe(url, "--token", demo.token, "--backend-record", backend, "--ws-path", "/ws")
    finally:
        demo.kill()

    table = one_liner.stdout
    assert one_liner.returncode == 0, one_liner.stderr[-2000:]
    assert rows(table, "FAIL") == set(), table
    assert rows(table, "inconclusive") and all(
        "--backend-record" in line for line in table.splitlines() if " inconclusive " in line)
    assert "serves no RPC WebSocket on /" in table and "--ws-path" in table  # the demo backend's is on /ws
    summary = table[table.index("Summary by class"):]
    assert re.findall(r"^([A-J]) ", summary, re.MULTILINE) == list("ABCDEFGHIJ")
    assert re.search(r"^result: PASS: 0 failed, \d+ passed", summary, re.MULTILINE)
    assert "[  1/" in one_liner.stderr  # progress as plain lines: stderr is no terminal here
    assert demo.token not in table

    assert rows(fuller.stdout, "FAIL") == set(), fuller.stdout
    assert rows(fuller.stdout, "inconclusive") == set()
    fuller_summary = fuller.stdout[fuller.stdout.index("Summary by class"):]
    for klass in "ABCDEFGHIJ":  # with the record, every class has cases that pass
        assert re.search(rf"^{klass} +[1-9]\d* ", fuller_summary, re.MULTILINE), klass
    assert rows(fuller.stdout, "pass") >= {"control.websocket", "ws.denied.terminal.open", "C1.connection-nominates-scopes"}
