"""The command line in process: what `main` returns and prints for check-config, run's refusals,
probe, --version and the parser's own rules. The commands that serve (run, demo, demo-backend)
are met as a user meets them in tests/e2e/test_cli_demo.py."""

from __future__ import annotations

import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

from openclaw_demo.backend import DemoBackend
from addons import embedded
from sidecar import cli
from sidecar.cli import build_parser, main

from tests.builders import write_config

pytestmark = pytest.mark.usefixtures("clean_env")

ABSENT_REDIS_PASSWORD: dict[str, Any] = {"sidecar": {"listen": "127.0.0.1:0", "adminListen": "127.0.0.1:0", "rateLimit": {
    "storage": "redis://127.0.0.1:1/0", "storagePasswordFile": "/nonexistent/redis-password"}},
    "gateway": {"auth": {"mode": "token", "token": "x"}}}
BAD_PROXY: dict[str, Any] = {"gateway": {"trustedProxies": ["not-an-ip"]}}
BAD_PROXY_PROBLEM = "gateway.trustedProxies: Value error, not an IP or CIDR: 'not-an-ip'"
WIDE_TRUSTED_PROXY: dict[str, Any] = {"gateway": {"trustedProxies": ["10.0.0.0/8"], "auth": {
    "mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user"}}}}


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert (done.value.code, capsys.readouterr().out) == (0, f"openclaw-sidecar {version('openclaw-sidecar')}\n")


def test_version_of_a_checkout_without_metadata_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a source tree that was never installed, there is no version to read: a marker, not a crash."""
    def absent(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cli, "version", absent)
    assert cli._version() == "0+unknown"


@pytest.mark.parametrize("argv, error", [
    ([], "the following arguments are required: COMMAND"),
    (["explain", "--tool", "agents_list"], "the following arguments are required: --config"),
])
def test_a_missing_required_argument_is_a_usage_error(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a handler called without its input: explain with no --config once judged the defaults."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: {error}\n")


@pytest.mark.parametrize("argv, listen", [(["demo"], "127.0.0.1:18790"), (["demo-backend"], "127.0.0.1:18789")])
def test_the_demos_default_addresses_meet(argv: list[str], listen: str) -> None:
    """The backend listens where the sidecar's default upstream points, and `demo` where its default
    listen is: both run with no flags. `run` has no default of its own, so the file and the
    environment decide."""
    assert build_parser().parse_args(argv).listen == listen
    assert build_parser().parse_args(["run"]).listen is None


def test_check_config_prints_the_sorted_view_and_the_warnings_run_would_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A stable, diffable document on stdout (two-space indent, sorted keys), every warning once on
    stderr in check-config's words, none logged besides, and exit 0: the config works."""
    monkeypatch.setenv("OPENCLAW_SIDECAR_LISTN", "127.0.0.1:1")
    assert main(["check-config", str(write_config(tmp_path / "c.yaml", WIDE_TRUSTED_PROXY))]) == 0
    out, err = capsys.readouterr()
    view = json.loads(out)
    assert out == json.dumps(view, indent=2, sort_keys=True) + "\n"
    assert view["gateway"]["trustedProxies"] == ["10.0.0.0/8"] and view["effective"]["authMode"] == "trusted-proxy"
    assert err.splitlines() == [
        "warning: OPENCLAW_SIDECAR_LISTN names no setting and is ignored",
        "warning: TRUSTED-PROXY MODE WITH NEITHER allowUsers NOR requiredHeaders: anyone who can reach a trusted "
        "proxy address is accepted as whatever user it names (attack corpus A11)",
        "warning: TRUSTED-PROXY MODE TRUSTING RANGES 10.0.0.0/8: any host in them can name any allowed user (on "
        "Kubernetes a pod range includes the node's own address: k8s/README.md)",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_check_config_fails_a_config_no_one_can_pass_but_still_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write_config(tmp_path / "c.yaml", {"gateway": {"auth": {"mode": "token"}}}))]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["effective"]["tokenConfigured"] is False
    assert err == ("configuration error: gateway.auth.mode is token but no token resolved "
                   "(gateway.auth.token, tokenFile or OPENCLAW_GATEWAY_TOKEN)\n")


@pytest.mark.parametrize("argv, document, problem", [
    (["check-config"], {"sidecar": {"listne": "x"}}, "sidecar.listne: is not a setting the sidecar knows (check the spelling)"),
    (["run", "--config"], {"sidecar": {"listne": "x"}}, "sidecar.listne: is not a setting the sidecar knows (check the spelling)"),
    # read when the storage is built, after the config has loaded: check-config builds it too
    (["check-config"], ABSENT_REDIS_PASSWORD,
     "sidecar.rateLimit.storagePasswordFile: cannot read secret file '/nonexistent/redis-password': No such file or directory"),
    (["run", "--config"], ABSENT_REDIS_PASSWORD,
     "sidecar.rateLimit.storagePasswordFile: cannot read secret file '/nonexistent/redis-password': No such file or directory"),
    # the file's own mistake keeps a run that ignored the flag from serving
    (["run", "--listen", "nope", "--config"], BAD_PROXY, f"sidecar.listen: Value error, expected HOST:PORT, got 'nope'\n  {BAD_PROXY_PROBLEM}"),
    (["run", "--upstream", "127.0.0.1:18789", "--config"], BAD_PROXY,
     f"sidecar.upstream: Value error, must be an http:// or https:// URL\n  {BAD_PROXY_PROBLEM}"),
], ids=["check-config", "run", "check-config-storage", "run-storage", "run-listen-flag", "run-upstream-flag"])
def test_a_bad_config_exits_1_naming_the_key_and_nothing_else(
        tmp_path: Path, argv: list[str], document: dict[str, Any], problem: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags are checked as the file is, and a storage that cannot be built fails before
    anything listens: a heading, one indented line per problem, nothing on stdout. A run that
    got past its checks would serve for ever: here it fails the test instead of hanging it."""
    def listening(*_args: Any, **_kwargs: Any) -> Any:
        pytest.fail("run got past its checks and would have served")
    monkeypatch.setattr(embedded, "build_master", listening)
    assert main([*argv, str(write_config(tmp_path / "c.json", document))]) == 1
    assert capsys.readouterr() == ("", f"configuration error:\n  {problem}\n")


def test_probe_reports_under_the_commands_version_and_exits_as_the_report_says(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the demo backend (no proxy: the forged header arrives, which only --backend-record
    could show) the case is inconclusive, exit 2, and the written report names this build."""
    with DemoBackend(token="tok-1") as backend:
        code = main(["probe", backend.url, "--token", "tok-1", "--timeout", "5", "--cases", "A1.x-forwarded-uri",
                     "--format", "json", "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tool"] == {"name": "openclaw-sidecar probe", "version": version("openclaw-sidecar")}
    assert [case["verdict"] for case in report["cases"]][-1] == "inconclusive"
    assert code == 2
    assert capsys.readouterr().err.endswith(f"report written to {tmp_path / 'report.json'}\n")
