"""The command line as a user meets it: `demo`, `--version`/`--help`, `check-config`, `run`
errors, and the precedence of flags > environment > file for the sidecar's own settings.

Everything runs `python -m sidecar ...` as a real subprocess.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend
from tests.builders import write_config
from tests.ports import free_port

from .conftest import UPSTREAM_TOKEN
from .harness import REPO, SidecarProcess, stop_process

CURL = "/usr/bin/curl"
TOKEN = "cli-test-token-Zq81"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCLAW_", "CLAWDBOT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def sidecar_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], check=False, cwd=REPO, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)


# ================================================================== demo


class Demo:
    """`python -m sidecar demo --listen 127.0.0.1:<port>` with its output collected."""

    def __init__(self, tmpdir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "demo", "--listen", f"127.0.0.1:{self.port}"],
            cwd=REPO, env=_env({**({"TMPDIR": str(tmpdir)} if tmpdir else {}), **(env or {})}), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._err_thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def curl_line(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"demo printed no curl line in {timeout} s; stdout: {self.stdout!r}; stderr: {self.stderr}")
            if line is None:
                pytest.fail(f"demo exited early ({self.proc.wait()}); stdout: {self.stdout!r}; stderr: {self.stderr}")
            self.stdout.append(line)
            if line.strip().startswith("curl "):
                return line.strip()

    @property
    def token(self) -> str:
        return next(line.split(":", 1)[1].strip() for line in self.stdout if line.startswith("token:"))

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=10)
        self._err_thread.join(5)
        return code

    def kill(self) -> None:
        """Stopped with Ctrl-C, so it removes its temporary directory (a SIGKILL left one behind
        per test)."""
        stop_process(self.proc, signal.SIGINT)


@pytest.fixture
def demo_tmp(tmp_path: Path) -> Path:
    """The demo's TMPDIR, where it keeps its config and runtime directory while it runs."""
    (tmp_path / "demo-tmp").mkdir()
    return tmp_path / "demo-tmp"


@pytest.fixture
def demo(demo_tmp: Path) -> Iterator[Demo]:
    running = Demo(demo_tmp)
    yield running
    running.kill()


def test_demo_prints_a_working_curl_command_and_stops_cleanly_on_sigint(demo, demo_tmp):
    curl_line = demo.curl_line()
    [workdir] = demo_tmp.iterdir()  # its config and runtime directory, removed when it stops
    assert (workdir / "demo.yaml").is_file()
    assert f"127.0.0.1:{demo.port}" in curl_line
    argv = shlex.split(curl_line)
    argv[0] = CURL
    done = subprocess.run([*argv, "-w", "\n%{http_code}"], check=False, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200"
    data = json.loads(body)
    assert data["ok"] is True
    assert data["result"]["agents"] == [{"id": "main", "default": True}]
    # The printed token is the one that works, and only it.
    assert f"Bearer {demo.token}" in curl_line
    wrong = httpx.post(f"http://127.0.0.1:{demo.port}/tools/invoke", json={"tool": "agents_list"},
                       headers={"Authorization": "Bearer not-the-token"}, trust_env=False, timeout=15)
    assert wrong.status_code == 401

    assert demo.interrupt() == 0
    assert "Traceback" not in demo.stderr, demo.stderr
    assert not workdir.exists()
    # The demo shows what it decided: one audit line per request, on stdout.
    while (line := demo.lines.get(timeout=5)) is not None:
        demo.stdout.append(line)
    decisions = [json.loads(line) for line in demo.stdout if line.startswith("{")]
    assert [(d["decision"], d["status"]) for d in decisions] == [("forwarded", 200), ("refused", 401)]


def test_demo_announces_itself_whole_through_a_pipe_whatever_the_shell_exports(demo_tmp):
    """Its stdout is a block-buffered pipe here (PYTHONUNBUFFERED empty), so the announcement is
    flushed, not left in the buffer while it serves; the shell's OPENCLAW_SIDECAR_LISTEN and _UPSTREAM
    neither move it off --listen nor send its calls elsewhere: the printed command is the working one."""
    elsewhere = free_port()
    running = Demo(demo_tmp, env={"PYTHONUNBUFFERED": "", "OPENCLAW_SIDECAR_LISTEN": f"127.0.0.1:{elsewhere}",
                                  "OPENCLAW_SIDECAR_UPSTREAM": f"http://127.0.0.1:{free_port()}"})
    try:
        running.curl_line()
        running.stdout.append(running.lines.get(timeout=20) or "")
        url, token = f"http://127.0.0.1:{running.port}", running.token
        assert running.stdout[0].startswith(f"openclaw-sidecar demo: sidecar {url} -> demo backend http://127.0.0.1:")
        assert running.stdout[1:] == [
            f"token: {token}\n", "try:\n",
            f"  curl -sS -X POST {url}/tools/invoke -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/json' -d '{\"tool\":\"agents_list\"}'\n",
            "press Ctrl-C to stop\n",
        ]
        served = httpx.post(f"{url}/tools/invoke", json={"tool": "agents_list"},
                            headers={"Authorization": f"Bearer {token}"}, trust_env=False, timeout=15)
        assert served.status_code == 200, served.text
    finally:
        running.kill()


def test_a_busy_port_fails_at_once_with_our_own_message(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = write_config(tmp_path / "c.json", {"sidecar": {"listen": f"127.0.0.1:{port}", "adminListen": "127.0.0.1:0"},
                                                "gateway": {"auth": {"token": "t"}}})
    with taken:
        done = sidecar_cli("run", "--config", str(config))
    assert done.returncode == 1
    assert f"cannot listen on sidecar.listen 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "--mode" not in done.stderr and "Traceback" not in done.stderr  # not mitmproxy's advice


def test_demo_sigint_with_an_idle_keep_alive_client_exits_cleanly(demo):
    """Ctrl-C while a client still holds a keep-alive connection: exit 0, no Traceback."""
    demo.curl_line()
    with httpx.Client(trust_env=False, timeout=15) as client:
        resp = client.post(f"http://127.0.0.1:{demo.port}/tools/invoke", json={"tool": "agents_list"},
                           headers={"Authorization": f"Bearer {demo.token}"})
        assert resp.status_code == 200
        assert demo.interrupt() == 0  # the pooled connection is still open here
    assert "Traceback" not in demo.stderr, demo.stderr


# ================================================================== version and help


def test_version_exits_0():
    done = sidecar_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("openclaw-sidecar ")
    assert done.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize("command", [[], ["run"], ["demo"], ["demo-backend"], ["check-config"]],
                         ids=lambda c: " ".join(c) or "top-level")
def test_help_exits_0_for_every_subcommand(command):
    done = sidecar_cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.lower().startswith("usage:")
    if command == ["run"]:
        for flag in ("--config", "--listen", "--upstream"):
            assert flag in done.stdout
    if command == ["demo"]:  # `make run` starts it without --listen
        assert "(default 127.0.0.1:18790)" in done.stdout


def test_demo_backend_serves_the_demo_tools_behind_its_token_until_sigterm():
    """`demo-backend` alone (what a developer points a sidecar of their own at): it announces its
    address, answers /tools/invoke only with the bearer token it was given, and exits 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "demo-backend", "--listen", f"127.0.0.1:{port}",
                             "--token", "tok-1"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = threading.Timer(20, proc.kill)  # never announced: stdout ends, the assertion fails
        deadline.start()
        announced = proc.stdout.readline()  # type: ignore[union-attr]
        deadline.cancel()
        assert announced == f"demo backend listening on http://127.0.0.1:{port}\n"
        url = f"http://127.0.0.1:{port}/tools/invoke"
        call = {"tool": "agents_list", "args": {}}
        refused = httpx.post(url, json=call, headers={"Authorization": "Bearer tok-2"})
        assert (refused.status_code, refused.json()) == (401, {"error": {"message": "Unauthorized", "type": "unauthorized"}})
        served = httpx.post(url, json=call, headers={"Authorization": "Bearer tok-1"})
        assert served.status_code == 200 and served.json()["ok"] is True, served.text
    finally:
        code = stop_process(proc, signal.SIGTERM)
    assert code == 0, proc.stderr.read()  # type: ignore[union-attr]


def test_no_subcommand_is_a_usage_error():
    done = sidecar_cli()
    assert done.returncode == 2
    assert "usage:" in done.stderr.lower()


# ================================================================== check-config


@pytest.mark.parametrize("content,key_path", [
    ({"sidecar": {"listne": "127.0.0.1:1"}}, "sidecar.listne"),
    ({"gateway": {"trustedProxies": ["not-an-ip"]}}, "gateway.trustedProxies"),
    ({"sidecar": {"timeouts": {"bodyReadSecond": 3}}}, "sidecar.timeouts.bodyReadSecond"),
    ({"sidecar": {"timeouts": {"bodyReadSeconds": 0}}}, "sidecar.timeouts.bodyReadSeconds"),
    ({"sidecar": {"rateLimit": {"storage": "ftp://x"}}}, "sidecar.rateLimit.storage"),
    ({"sidecar": {"upstream": "127.0.0.1:18789"}}, "sidecar.upstream"),
    ({"sidecar": {"listen": "nope"}}, "sidecar.listen"),
    ({"gateway": {"auth": {"mode": "tokn"}}}, "gateway.auth.mode"),
    ({"gateway": {"auth": {"mode": "token", "tokenFile": "/nonexistent/token"}}}, "gateway.auth.tokenFile"),
    ({"gateway": {"auth": {"mode": "trusted-proxy", "token": "x",
                           "trustedProxy": {"userHeader": "x-forwarded-user"}},
      "trustedProxies": ["10.0.0.5"]}}, "gateway.auth.token"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_check_config_rejects_a_bad_file_naming_the_key(tmp_path, content, key_path):
    done = sidecar_cli("check-config", str(write_config(tmp_path / "bad.yaml", content)))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert key_path in done.stderr
    assert done.stdout == ""


def test_check_config_names_every_bad_key(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"sidecar": {"listne": "x"}, "gateway": {"trustedProxies": ["nope"]}})
    done = sidecar_cli("check-config", str(bad))
    assert done.returncode == 1
    assert "sidecar.listne" in done.stderr
    assert "gateway.trustedProxies" in done.stderr


def test_check_config_unparseable_file_exits_1(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", "sidecar:\n  listen: [a\n  x: 1\n")
    done = sidecar_cli("check-config", str(bad))
    assert done.returncode == 1
    assert "configuration error" in done.stderr
    assert "at line 3, column 4" in done.stderr  # YAML's own position, kept
    assert "Traceback" not in done.stderr


def test_check_config_speaks_plainly_in_the_files_spelling(tmp_path):
    bad = write_config(tmp_path / "c.yaml", "sidecar:\n  routes: {allow: 5}\n  enforce: maybe\n")
    done = sidecar_cli("check-config", str(bad))
    assert done.returncode == 1
    assert "sidecar.routes.allow: must be a list" in done.stderr
    assert "sidecar.enforce: must be true or false" in done.stderr
    good = write_config(tmp_path / "g.yaml", {"sidecar": {"contextHeaders": {"pinned": {"alice_b": {"x-openclaw-account-id": "a"}}}},
                                              "gateway": {"auth": {"token": "t"}}})
    done = sidecar_cli("check-config", str(good), env={"OPENCLAW_SIDECAR_LISTN": "127.0.0.1:1"})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["sidecar"]["rateLimit"]["maxEntries"] == 10000 and "rate_limit" not in data["sidecar"]
    assert "alice_b" in data["sidecar"]["contextHeaders"]["pinned"]  # data keys stay as written
    assert "OPENCLAW_SIDECAR_LISTN names no setting" in done.stderr


def test_check_config_fails_a_config_that_can_never_authenticate(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"gateway": {"auth": {"mode": "token"}}})
    done = sidecar_cli("check-config", str(config))
    assert done.returncode == 1
    assert "configuration error: gateway.auth.mode is token but no token resolved" in done.stderr
    assert done.stderr.count("no token resolved") == 1, done.stderr  # said once, not also as a log line
    assert json.loads(done.stdout)["effective"]["problems"]  # the view is still printed


def test_check_config_prints_what_the_sidecar_would_warn_about_at_start(tmp_path):
    """The same warnings `run` logs (here a trusted-proxy config anyone in a range can speak for),
    in check-config's words, and exit 0: the config works, only too widely."""
    config = write_config(tmp_path / "c.yaml", {"gateway": {"trustedProxies": ["10.0.0.0/8"], "auth": {
        "mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user"}}}})
    done = sidecar_cli("check-config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: TRUSTED-PROXY MODE WITH NEITHER allowUsers NOR requiredHeaders: anyone who can reach a trusted "
        "proxy address is accepted as whatever user it names (attack corpus A11)",
        "warning: TRUSTED-PROXY MODE TRUSTING RANGES 10.0.0.0/8: any host in them can name any allowed user (on "
        "Kubernetes a pod range includes the node's own address: k8s/README.md)",
    ]


def test_run_needs_no_config_file(tmp_path):
    """Every setting has a default; flags and the environment are enough. Stdout, where the audit
    log goes by default, holds audit lines and nothing else (the announcements once went there).
    A misspelt variable is named on stderr, in the log's format, as check-config names it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--listen", f"127.0.0.1:{port}"], cwd=REPO,
        env=_env({"OPENCLAW_SIDECAR_ADMIN_LISTEN": "127.0.0.1:0", "OPENCLAW_SIDECAR_RUNTIME_DIR": str(tmp_path / "run"),
                  "OPENCLAW_GATEWAY_TOKEN": "t", "OPENCLAW_SIDECAR_LISTN": "127.0.0.1:1"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = threading.Timer(20, proc.kill)  # never announced: stderr ends, the assertion fails
        deadline.start()
        seen: list[str] = []
        for line in iter(proc.stderr.readline, ""):  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith(f"openclaw-sidecar listening on http://127.0.0.1:{port}"):
                break
        else:
            pytest.fail(f"never announced; stderr: {seen}")
        deadline.cancel()
        assert any(" WARNING sidecar OPENCLAW_SIDECAR_LISTN names no setting and is ignored" in line for line in seen), seen
        assert httpx.get(f"http://127.0.0.1:{port}/tools/invoke").status_code == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    stdout = proc.stdout.read().splitlines()  # type: ignore[union-attr]
    assert [json.loads(line)["status"] for line in stdout] == [405]


def test_check_config_prints_effective_config_with_secrets_redacted(tmp_path):
    good = write_config(tmp_path / "good.yaml", (
        "gateway:\n  auth:\n    mode: token\n    token: " + TOKEN + "\n  trustedProxies: ['10.0.0.5']\n"
        "sidecar:\n  upstream: http://127.0.0.1:18789\n  upstreamAuth:\n    token: up-secret-Kp2\n"
        "  rateLimit:\n    storage: redis://user:redis-pass-Vw9@127.0.0.1:6379/0\n"
    ))
    done = sidecar_cli("check-config", str(good))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["gateway"]["auth"]["token"] == "**********"
    for secret in (TOKEN, "up-secret-Kp2", "redis-pass-Vw9"):
        assert secret not in done.stdout
        assert secret not in done.stderr
    assert "**********" in json.dumps(data["sidecar"])
    assert data["effective"]["authMode"] == "token"
    assert data["effective"]["tokenConfigured"] is True


def test_check_config_reports_env_resolved_secret_without_printing_it(tmp_path):
    good = write_config(tmp_path / "good.yaml", {"gateway": {"auth": {"mode": "token"}}})
    done = sidecar_cli("check-config", str(good), env={"OPENCLAW_GATEWAY_TOKEN": "env-secret-Hh5"})
    assert done.returncode == 0, done.stderr
    assert "env-secret-Hh5" not in done.stdout
    assert json.loads(done.stdout)["effective"]["tokenConfigured"] is True


# ================================================================== run


ABSENT_REDIS_PASSWORD = {"sidecar": {"listen": "127.0.0.1:0", "adminListen": "127.0.0.1:0", "rateLimit": {
    "storage": "redis://127.0.0.1:1/0", "storagePasswordFile": "/nonexistent/redis-password"}},
    "gateway": {"auth": {"mode": "token", "token": "x"}}}


@pytest.mark.parametrize("content,key_path", [
    ({"sidecar": {"listne": "127.0.0.1:0"}}, "sidecar.listne"),
    ({"gateway": {"auth": {"mode": "token", "token": "x"}, "trustedProxies": ["10.0.0.0/33"]}},
     "gateway.trustedProxies"),
    # read when the storage is built, after the config has loaded
    (ABSENT_REDIS_PASSWORD, "sidecar.rateLimit.storagePasswordFile"),
], ids=["sidecar.listne", "gateway.trustedProxies", "storagePasswordFile"])
def test_run_with_a_bad_config_exits_1_naming_the_key(tmp_path, content, key_path):
    done = sidecar_cli("run", "--config", str(write_config(tmp_path / "bad.yaml", content)))
    assert done.returncode == 1
    assert key_path in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening on" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("storage", [
    "redis://127.0.0.1/0",  # no port
    "redis+sentinel://127.0.0.1:26379",  # no service
    "redis://default:Hunter2xyz/q@127.0.0.1:6379",  # a '/' in the password ends the host early
    "redis://:pa[Hunter2xyz]q@127.0.0.1:6379",
    "redis://:Hunter2xyz@127.0.0.1:6379/0?ssl=true",  # an argument no redis-py connection takes
])
def test_a_storage_uri_the_limiter_cannot_build_fails_check_config_and_run_alike(tmp_path, storage):
    """Both build the storage (no connection is opened); the parser's words never quote a password."""
    config = write_config(tmp_path / "bad.yaml", {"sidecar": {"listen": "127.0.0.1:0", "adminListen": "127.0.0.1:0",
                                                              "rateLimit": {"storage": storage}},
                                                  "gateway": {"auth": {"mode": "token", "token": "x"}}})
    for done in (sidecar_cli("check-config", str(config)), sidecar_cli("run", "--config", str(config))):
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "sidecar.rateLimit.storage: invalid rate-limit storage URI" in done.stderr
        assert "Hunter2" not in done.stderr + done.stdout


def test_a_password_holding_an_at_sign_still_builds(tmp_path):
    config = write_config(tmp_path / "ok.yaml", {"sidecar": {"rateLimit": {"storage": "redis://:p@ss@127.0.0.1:6379/0"}},
                                                 "gateway": {"auth": {"mode": "token", "token": "x"}}})
    done = sidecar_cli("check-config", str(config))
    assert done.returncode == 0, done.stderr
    assert "p@ss" not in done.stdout and "redis://:***@127.0.0.1:6379/0" in done.stdout


def test_check_config_reads_the_redis_password_file_as_run_does(tmp_path):
    done = sidecar_cli("check-config", str(write_config(tmp_path / "bad.yaml", ABSENT_REDIS_PASSWORD)))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "sidecar.rateLimit.storagePasswordFile: cannot read secret file" in done.stderr


def test_run_with_a_missing_config_file_exits_1(tmp_path):
    done = sidecar_cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert done.returncode == 1
    assert "absent.yaml" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ precedence


@pytest.fixture
def three_backends() -> Iterator[tuple[DemoBackend, DemoBackend, DemoBackend]]:
    with DemoBackend(token=UPSTREAM_TOKEN) as a, DemoBackend(token=UPSTREAM_TOKEN) as b, \
            DemoBackend(token=UPSTREAM_TOKEN) as c:
        yield a, b, c


@pytest.fixture
def run_sidecar(tmp_path: Path) -> Iterator[Any]:
    started: list[SidecarProcess] = []

    def start(cfg: dict[str, Any], env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> SidecarProcess:
        process = SidecarProcess(cfg, tmp_path / f"sc{len(started)}", env=env, extra_args=args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _cfg(upstream: str, **sidecar: Any) -> dict[str, Any]:
    return {"sidecar": {"upstream": upstream, "upstreamAuth": {"token": UPSTREAM_TOKEN}, **sidecar},
            "gateway": {"auth": {"mode": "token", "token": TOKEN}}}


def _invoke(url: str) -> httpx.Response:
    return httpx.post(url + "/tools/invoke", json={"tool": "agents_list"},
                      headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False, timeout=15)


def _receivers(*backends: DemoBackend) -> list[int]:
    return [len(b.requests()) for b in backends]


def test_upstream_from_file_when_nothing_overrides(three_backends, run_sidecar):
    file_be, env_be, flag_be = three_backends
    sc = run_sidecar(_cfg(file_be.url))
    assert _invoke(sc.url).status_code == 200
    assert _receivers(file_be, env_be, flag_be) == [1, 0, 0]


def test_env_upstream_beats_file(three_backends, run_sidecar):
    file_be, env_be, flag_be = three_backends
    sc = run_sidecar(_cfg(file_be.url), env={"OPENCLAW_SIDECAR_UPSTREAM": env_be.url})
    assert _invoke(sc.url).status_code == 200
    assert _receivers(file_be, env_be, flag_be) == [0, 1, 0]


def test_flag_upstream_beats_env_and_file(three_backends, run_sidecar):
    file_be, env_be, flag_be = three_backends
    sc = run_sidecar(_cfg(file_be.url), env={"OPENCLAW_SIDECAR_UPSTREAM": env_be.url},
                     args=("--upstream", flag_be.url))
    assert _invoke(sc.url).status_code == 200
    assert _receivers(file_be, env_be, flag_be) == [0, 0, 1]


def test_listen_precedence_flag_over_env_over_file(three_backends, run_sidecar):
    file_be = three_backends[0]
    env_port, flag_port = free_port(), free_port()
    sc = run_sidecar(_cfg(file_be.url), env={"OPENCLAW_SIDECAR_LISTEN": f"127.0.0.1:{env_port}"})
    assert sc.port == env_port
    sc.stop()
    sc = run_sidecar(_cfg(file_be.url), env={"OPENCLAW_SIDECAR_LISTEN": f"127.0.0.1:{free_port()}"},
                     args=("--listen", f"127.0.0.1:{flag_port}"))
    assert sc.port == flag_port
    assert _invoke(sc.url).status_code == 200


def test_nested_env_override_merges_with_the_file_section(three_backends, run_sidecar):
    """OPENCLAW_SIDECAR_TIMEOUTS__UPSTREAM_READ_SECONDS overrides one key of the file's `timeouts`."""
    file_be = three_backends[0]
    sc = run_sidecar(_cfg(file_be.url, timeouts={"upstreamReadSeconds": 300, "bodyReadSeconds": 7}),
                     env={"OPENCLAW_SIDECAR_TIMEOUTS__UPSTREAM_READ_SECONDS": "1"})
    resp = httpx.post(sc.url + "/tools/invoke", json={"tool": "slow", "args": {"seconds": 5}},
                      headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False, timeout=15)
    assert resp.status_code == 504
    assert resp.json()["error"]["type"] == "gateway_timeout"


def test_bad_env_override_is_a_config_error_naming_the_key(tmp_path):
    cfg = write_config(tmp_path / "ok.yaml", _cfg("http://127.0.0.1:1"))
    done = sidecar_cli("run", "--config", str(cfg), env={"OPENCLAW_SIDECAR_UPSTREAM": "not-a-url"})
    assert done.returncode == 1
    assert "upstream" in done.stderr
    assert "Traceback" not in done.stderr
