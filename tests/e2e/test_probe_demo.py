"""`openclaw-sidecar probe` end to end against the demo backend: through the sidecar (token and
trusted-proxy mode) every applicable case passes, and the backend record shows what arrived;
through a plain `mitmdump` reverse proxy with no addon the probe finds the holes.

Real processes and sockets throughout: the probe is the console script, the sidecar is
`openclaw-sidecar run`, the naive proxy is this venv's `mitmdump`.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest

from openclaw_demo.backend import DemoBackend
from tests.ports import free_port

from .conftest import UPSTREAM_TOKEN
from .harness import REPO, SidecarProcess
from .probe_helpers import PROBE, ProbeRun, mitmdump_in_front, probe_env, run_probe

TOKEN = "probe-shared-token-Hx41"
FAST = ("--timeout", "3")
IDENTITY = ("--identity-header", "x-forwarded-user=alice@example.com", "--identity-header", "X-Forwarded-For=203.0.113.9")


def sidecar_config(backend: DemoBackend, auth: dict, **gateway: object) -> dict:
    return {"sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN},
                        "rateLimit": {"loopbackDelayBaseMs": 0, "refusalPacing": {}}},  # pacing as deployed
            "gateway": {"auth": auth, **gateway}}


@pytest.fixture(scope="module")
def token_sc(module_sidecar: Callable[..., SidecarProcess], module_backend: DemoBackend) -> SidecarProcess:
    return module_sidecar(sidecar_config(module_backend, {"mode": "token", "token": TOKEN}))


@pytest.fixture(scope="module")
def tp_sc(module_sidecar: Callable[..., SidecarProcess], module_backend: DemoBackend) -> SidecarProcess:
    """Trusted-proxy mode with the probe standing where the ingress proxy stands (loopback)."""
    return module_sidecar(sidecar_config(
        module_backend, {"mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-forwarded-user", "allowLoopback": True}},
        trustedProxies=["127.0.0.1"]))


@pytest.fixture(scope="module")
def through_sidecar(token_sc: SidecarProcess, module_backend: DemoBackend,
                    tmp_path_factory: pytest.TempPathFactory) -> ProbeRun:
    """One full run, shared by the tests that read it."""
    return run_probe(token_sc.url, "--token", TOKEN, "--backend-record", module_backend.url, "--ws-path", "/ws", *FAST,
                     tmp_path=tmp_path_factory.mktemp("probe"))


# ---- through the sidecar: every applicable case passes --------------------------------------------


def test_every_applicable_case_passes_through_the_sidecar(through_sidecar):
    run = through_sidecar
    assert run.ids("fail") == set(), {i: run.cases[i]["why"] for i in run.ids("fail")}
    assert run.ids("inconclusive") == set()
    not_applicable = {i: run.cases[i]["why"] for i in run.ids("not_applicable")}
    assert all("--identity-header" in why or "--unsafe" in why for why in not_applicable.values()), not_applicable
    assert run.returncode == 0
    summary = run.report["summary"]
    assert summary["total"] == len(run.report["cases"]) >= 80
    assert summary["pass"] >= 190
    for klass in "ABCDEFGHIJ":
        assert summary["byClass"][klass]["pass"] > 0, klass


def test_every_case_ran_with_the_record_and_the_websocket(through_sidecar):
    """No case was judged blind: HTTP cases read the backend record, WebSocket cases ran."""
    for case in through_sidecar.report["cases"]:
        if case["verdict"] != "not_applicable":
            assert case["arrived"] is not None, case["id"]
    assert through_sidecar.cases["control.websocket"]["verdict"] == "pass"
    assert through_sidecar.cases["ws.denied.terminal.open"]["why"].startswith("refused: res error METHOD_DENIED")


def test_the_record_shows_the_forged_headers_never_arrived(through_sidecar):
    case = through_sidecar.cases["C1.connection-nominates-scopes"]
    assert case["verdict"] == "pass" and case["why"].startswith("let through, and the forged part never arrived")
    [arrived] = case["arrived"]
    headers = [(name.lower(), value) for name, value in arrived["headers"]]
    assert [v for n, v in headers if n == "x-openclaw-scopes"] == [
        "operator.admin,operator.read,operator.write,operator.approvals,operator.questions,operator.pairing,"
        "operator.talk.secrets"]
    assert all("x-openclaw-scopes" not in v.lower() for n, v in headers if n == "connection")
    marker = through_sidecar.report["marker"]
    for case in through_sidecar.report["cases"]:
        for request in case["arrived"] or []:
            assert marker not in str(request["headers"]), case["id"]


def test_refused_cases_never_reached_the_backend(through_sidecar):
    for case_id in ("B3.underscore-scopes", "E3.dot-segment", "J1.upper-case", "door.capability-prefix", "D7.obs-fold-hides-header"):
        case = through_sidecar.cases[case_id]
        assert case["admission"] == "refused" and case["arrived"] == [], case


def test_the_report_keeps_the_secret_out(through_sidecar):
    text = str(through_sidecar.report)
    assert TOKEN not in text and UPSTREAM_TOKEN not in text
    assert "Bearer <secret>" in through_sidecar.cases["control.credential"]["sent"]


def test_in_trusted_proxy_mode_the_identity_cases_apply_and_pass(tp_sc, module_backend, tmp_path):
    run = run_probe(tp_sc.url, *IDENTITY, "--backend-record", module_backend.url, "--ws-path", "/ws", *FAST,
                    "--cases", "scope.*,deny.*,B*,I*,F*", tmp_path=tmp_path)
    assert run.ids("fail") == set(), {i: run.cases[i]["why"] for i in run.ids("fail")}
    scope_cases = {i for i in run.cases if i.startswith("scope.")}
    assert run.ids("pass") >= scope_cases - {"scope.shared-secret-ignores-the-header"}
    assert run.cases["scope.read-only"]["status"] == 403
    assert run.cases["deny.owner-only-for-a-non-owner"]["why"] == "refused: 404 not_found"
    assert "untrusted caller" in run.cases["I4.pod-forges-forwarded-identity"]["why"]


# ---- report formats and errors through the CLI ---------------------------------------------------


def probe_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*PROBE, *args], cwd=REPO, env=probe_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_junit_and_table_reports(token_sc, tmp_path):
    selection = ("--token", TOKEN, "--cases", "E3.*,J1.*", *FAST)
    junit = probe_cli(token_sc.url, *selection, "--format", "junit")
    assert junit.returncode == 0, junit.stderr
    root = ET.fromstring(junit.stdout)
    suites = {s.get("name").split(":")[0]: s for s in root.findall("testsuite")}
    assert set(suites) == {"control", "E", "J"}
    assert root.get("failures") == "0" and int(root.get("tests")) == len(root.findall(".//testcase"))
    assert "[  1/" in junit.stderr  # progress: plain lines off a terminal
    out = tmp_path / "report.txt"
    table = probe_cli(token_sc.url, *selection, "--out", str(out))
    assert table.returncode == 0 and table.stdout == ""
    text = out.read_text()
    assert "Summary by class" in text and "result: PASS" in text and "E3.dot-segment" in text


def test_a_baseline_that_refuses_the_credential_compares_only_what_needs_none(token_sc, module_backend, tmp_path):
    """The demo backend wants the sidecar's upstream token, not the caller's: as a baseline it
    refuses the probe's credential, so credentialed cases are not sent to it (no false LOOSER, no
    failed logins walking the probe into its lockout there)."""
    run = run_probe(token_sc.url, "--token", TOKEN, "--baseline", module_backend.url, "--cases", "E3.*,auth.no-credential",
                    *FAST, tmp_path=tmp_path)
    assert run.cases["control.credential"]["baseline"]["why"].startswith("refused: 401")
    e3 = [c for c in run.report["cases"] if c["id"].startswith("E3.")]
    credentialed = [c for c in e3 if "credential" in c["needs"]]
    assert credentialed and all(c["differential"] is None and c["baseline"] is None for c in credentialed)
    assert {c["differential"] for c in e3 if c not in credentialed} == {"SAME"}
    assert run.cases["auth.no-credential"]["differential"] == "SAME"
    assert run.ids(differential="LOOSER") == set() and run.returncode == 0


def test_a_wrong_token_fails_the_control_and_decides_nothing_else(token_sc, tmp_path):
    run = run_probe(token_sc.url, "--token", "not-the-token", "--cases", "J1.*", *FAST, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.cases["control.credential"]["verdict"] == "fail"
    j1 = [c for c in run.report["cases"] if c["id"].startswith("J1.")]
    assert j1 and all(c["verdict"] == "inconclusive" and c["sent"] is None for c in j1)


def test_setup_errors_exit_2(token_sc, tmp_path):
    unreachable = probe_cli(f"http://127.0.0.1:{free_port()}", "--token", TOKEN)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    with DemoBackend() as elsewhere:  # a demo backend, but not the one behind this sidecar
        wrong_record = probe_cli(token_sc.url, "--token", TOKEN, "--backend-record", elsewhere.url, "--cases", "J1.*")
    assert wrong_record.returncode == 2 and "not the backend behind this target" in wrong_record.stderr
    nothing = probe_cli(token_sc.url, "--token", TOKEN, "--cases", "no-such-case")
    assert nothing.returncode == 2 and "selects no case" in nothing.stderr


# ---- a naive set-up: plain mitmdump, no addon ----------------------------------------------------


@pytest.fixture(scope="module")
def naive_proxy() -> Iterator[tuple[str, DemoBackend]]:
    """A plain mitmdump reverse proxy: forwards whatever it parses, no policy at all."""
    with DemoBackend(token=TOKEN) as backend, mitmdump_in_front(backend) as url:
        yield url, backend


# Traefik CVE-2021-32813: the proxy sets its own headers (with UPSTREAM, its own credential too),
# then deletes every header the client's Connection names (its own included), then drops Connection.
CONNECTION_BUG_ADDON = """
from mitmproxy import http
UPSTREAM = {upstream!r}
def request(flow: http.HTTPFlow) -> None:
    h = flow.request.headers
    for name in list(h.keys()):
        if name.lower().startswith(("x-openclaw", "x-forwarded", "tailscale", "forwarded", "x-real-ip")):
            del h[name]
    h["x-openclaw-scopes"] = "operator.read"
    h["X-Forwarded-For"] = flow.client_conn.peername[0]
    if UPSTREAM:
        h["Authorization"] = "Bearer " + UPSTREAM
    for token in [t.strip() for v in h.get_all("connection") for t in v.split(",") if t.strip()]:
        if token.lower() not in ("keep-alive", "close", "upgrade"):
            h.pop(token, None)
    h.pop("connection", None)
"""
UPSTREAM_SECRET = "the-proxys-own-upstream-secret"


@pytest.mark.parametrize("swaps_credential", [True, False], ids=["own-credential", "passes-the-clients"])
def test_a_proxy_that_lets_connection_delete_its_own_headers_fails_the_c_cases(tmp_path, swaps_credential):
    """A proxy that presents its own credential loses it to `Connection: authorization` (C3, C4
    fail); one that passes the client's through drops the client's own there, as RFC 9110 asks, and
    the backend's 401 is a refusal (a blanket FAIL on that 401 failed Go's and Caddy's proxies; review)."""
    addon = tmp_path / "connection_bug.py"
    addon.write_text(CONNECTION_BUG_ADDON.format(upstream=UPSTREAM_SECRET if swaps_credential else ""))
    with DemoBackend(token=UPSTREAM_SECRET if swaps_credential else TOKEN) as backend, \
            mitmdump_in_front(backend, "-s", str(addon)) as url:
        run = run_probe(url, "--token", TOKEN, "--backend-record", backend.url, "--cases", "C*", *FAST,
                        tmp_path=tmp_path)
    why = {i: run.cases[i]["why"] for i in run.ids("fail")}
    assert run.cases["control.credential"]["verdict"] == "pass"
    assert why["C1.connection-nominates-scopes"].startswith("x-openclaw-scopes reached the backend on control.credential")
    assert why["C2.connection-nominates-forwarded"].startswith("x-forwarded-for reached the backend on control.credential")
    lost_in_c4 = "authorization, x-openclaw-scopes" if swaps_credential else "x-openclaw-scopes"
    assert why["C4.two-connection-lines"].startswith(f"{lost_in_c4} reached the backend on control.credential"), why
    if swaps_credential:  # the backend's own 401, to the proxy's credential it lost
        assert why["C3.connection-nominates-authorization"].startswith(
            "authorization reached the backend on control.credential but not here"), why
    else:
        assert run.cases["C3.connection-nominates-authorization"]["verdict"] == "pass", run.cases["C3.connection-nominates-authorization"]


def test_a_naive_mitmdump_fails_in_classes_a_b_e_f_and_j(naive_proxy, tmp_path):
    url, backend = naive_proxy
    run = run_probe(url, "--token", TOKEN, "--backend-record", backend.url, "--ws-path", "/ws", "--timeout", "1.5",
                    tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.cases["control.credential"]["verdict"] == "pass"  # the probe itself worked
    assert {"A", "B", "E", "F", "J"} <= run.classes_failing(), run.classes_failing()
    why = {i: run.cases[i]["why"] for i in run.ids("fail")}
    # the evidence, class by class: forged headers arrived, spellings ran the tool, no scopes were set,
    # denied names reached the backend, denied RPC frames were relayed unread
    assert why["A1.x-forwarded-uri"].startswith("the forged value arrived at the backend: X-Forwarded-Uri")
    assert why["B3.underscore-scopes"].startswith("the forged value arrived at the backend: x_openclaw_scopes")
    assert why["E3.dot-segment"].startswith("let through: 200")
    assert why["F1.one-explicit-scopes-header"] == "x-openclaw-scopes arrived 0 times (exactly one, set by the proxy, is required)"
    assert why["J1.upper-case"].startswith("refused (404 not_found), but only after it reached the backend")
    assert why["ws.denied.terminal.open"].startswith("let through: an echoing backend sent the frame back unchanged")
