"""The probe against proxies with one deliberate weakness each (tests/e2e/weak_proxy.py), in front
of the demo backend: a security engineer's evaluation found the probe passed every one of them
(exit 0, or the hole reported as a pass); each now fails, or says it could not finish."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openclaw_demo.backend import DemoBackend

from .probe_helpers import ProbeRun, mitmdump_in_front, run_probe

TOKEN = "weak-proxy-shared-token-7Qz"
ADDON = Path(__file__).with_name("weak_proxy.py")


@contextmanager
def weak_proxy(weakness: str) -> Iterator[tuple[str, DemoBackend]]:
    with DemoBackend(token=TOKEN) as backend, mitmdump_in_front(
            backend, "-s", str(ADDON), env={"WEAK_PROXY": weakness, "WEAK_PROXY_TOKEN": TOKEN}) as url:
        yield url, backend


def probe(weakness: str, tmp_path: Path, *args: str, record: bool = True) -> ProbeRun:
    with weak_proxy(weakness) as (url, backend):
        return run_probe(url, "--token", TOKEN, *(("--backend-record", backend.url) if record else ()),
                         "--ws-path", "/ws", "--timeout", "3", *args, tmp_path=tmp_path)


def failing(run: ProbeRun) -> dict[str, str]:
    return {i: run.cases[i]["why"] for i in run.ids("fail")}


def test_a_proxy_that_skips_authentication_by_a_rewrite_header_fails_class_a(tmp_path):
    run = probe("rewrite-header-skips-auth", tmp_path, "--cases", "A*")
    assert run.returncode == 1
    assert {"A1.x-forwarded-uri-without-credential", "A1.x-original-url-without-credential",
            "A1.x-rewrite-url-without-credential", "A8.forwarded-family-without-credential"} <= run.ids("fail"), failing(run)
    assert failing(run)["A1.x-forwarded-uri-without-credential"].startswith("let through: 200")


def test_a_proxy_that_trusts_a_clients_forwarded_address_fails_class_a(tmp_path):
    run = probe("forwarded-address-allowlist", tmp_path, "--cases", "A*")
    assert run.returncode == 1
    assert failing(run)["A7.forwarded-private-address-without-credential"].startswith("let through: 200")
    assert failing(run)["A7.x-real-ip-private-address-without-credential"].startswith("let through: 200")


def test_a_proxy_that_strips_forged_headers_by_their_case_fails_class_b(tmp_path):
    run = probe("case-sensitive-strip", tmp_path, "--cases", "B*")
    assert run.returncode == 1
    assert {"B1.upper-case-scopes", "B1.lower-case-forwarded-user", "B1.mixed-case-tailscale-login"} <= run.ids("fail")
    assert failing(run)["B1.lower-case-forwarded-user"].startswith("the forged value arrived at the backend: x-forwarded-user")


def test_a_proxy_with_a_public_prefix_on_the_raw_path_fails_class_e(tmp_path):
    run = probe("public-prefix", tmp_path, "--cases", "E*")
    assert run.returncode == 1
    assert failing(run)["E3.traversal-from-a-public-path-without-credential"].startswith("let through: 200")
    assert "E3.encoded-traversal-from-a-public-path-without-credential" in run.ids("fail")


def test_a_deny_list_that_trims_ascii_blanks_only_fails_class_j(tmp_path):
    run = probe("ascii-trim-deny", tmp_path, "--cases", "J1*")
    assert run.returncode == 1
    assert {"J1.line-separator", "J1.byte-order-mark", "J1.ogham-space"} <= run.ids("fail"), failing(run)
    assert run.cases["J1.padded"]["verdict"] == "pass"  # the ASCII blanks it does trim


def test_a_proxy_that_judges_only_a_connections_first_frame_fails_the_second_frame_cases(tmp_path):
    run = probe("judges-only-the-first-frame", tmp_path, "--cases", "ws.denied*")
    assert run.returncode == 1
    assert failing(run)["ws.denied-after-an-allowed-frame.terminal.open"].startswith(
        "let through: an echoing backend sent the frame back")
    assert "ws.denied-after-an-allowed-frame.config.patch" in run.ids("fail")


def test_a_proxy_that_filters_the_clients_scopes_instead_of_setting_its_own_fails_class_f(tmp_path):
    run = probe("filters-client-scopes", tmp_path, "--cases", "F*,D2*,B*")
    assert run.returncode == 1
    assert failing(run)["F2.client-declares-admin"] == (
        "x-openclaw-scopes arrived as operator.admin, not as on control.credential (operator.read): "
        "the client's forged value changed what the proxy presents upstream")
    assert failing(run)["F5.space-separated-scopes"].startswith("x-openclaw-scopes arrived as operator.read,operator.write,")


def test_a_proxy_that_hides_refusals_behind_502_is_judged_by_what_reached_the_backend(tmp_path):
    run = probe("hides-refusals-as-502", tmp_path, "--cases", "deny.exec,deny.shell")
    assert run.returncode == 1
    assert failing(run)["deny.exec"].startswith("it reached the backend: POST /tools/invoke (502")


def test_a_proxy_that_authenticates_only_the_upgrade_fails_the_websocket_cases(tmp_path):
    run = probe("authenticates-only-the-upgrade", tmp_path, "--cases", "ws.*")
    assert run.returncode == 1
    control = run.cases["control.websocket"]
    assert control["verdict"] == "pass" and "Authorization: Bearer <secret>" in control["sent"], control
    assert failing(run)["ws.denied.terminal.open"].startswith("let through: an echoing backend sent the frame back")


def test_a_proxy_that_locks_the_probe_out_cuts_the_run_short(tmp_path):
    """Once a good call is refused, every later refusal would be the lockout's: before, 112 cases
    of a pass-through that locks out for good turned from fail to pass. Without a record the auth
    cases pass (the backend refuses), so nothing failed, yet the run did not finish: exit 2."""
    run = probe("locks-out-for-good", tmp_path, "--cases", "auth.*", record=False)
    assert run.returncode == 2 and run.report["exitCode"] == 2
    cut = run.report["cutShort"]
    assert cut is not None and "locked the probe out" in cut, run.report
    after = [case for case in run.report["cases"] if case["why"] == f"not sent: {cut}"]
    assert after and all(case["verdict"] == "inconclusive" and case["sent"] is None for case in after), after
    assert not [case["id"] for case in run.report["cases"] if case["status"] == 429 and case["verdict"] != "inconclusive"]
