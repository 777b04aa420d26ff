"""`openclaw-sidecar probe` against the sidecar in front of the real OpenClaw gateway (2026.9.6),
with the gateway itself as the baseline: every applicable case passes through the sidecar, and no
case is LOOSER than the gateway alone, apart from the parser-leniency findings in probe_helpers.

The session's token gateway is shared (it starts once); the sidecar is configured from the
gateway's own file, as in test_real_gateway_websocket.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gateway.real_gateway import RealGateway, unavailable_reason

from .conftest import REAL_GATEWAY_TOKEN as TOKEN
from .harness import SidecarProcess
from .probe_helpers import ProbeRun, run_probe

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

NEEDS_THE_RECORD = "only --backend-record can show whether the forged part arrived"


@pytest.fixture(scope="module")
def sidecar(token_gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return module_sidecar({"sidecar": {"upstream": token_gateway.url, "openclawConfig": str(token_gateway.config_path),
                                       "rateLimit": {"loopbackDelayBaseMs": 0, "refusalPacing": {}}}})  # pacing as deployed


@pytest.fixture(scope="module")
def with_baseline(sidecar: SidecarProcess, token_gateway: RealGateway, tmp_path_factory: pytest.TempPathFactory) -> ProbeRun:
    return run_probe(sidecar.url, "--token", TOKEN, "--baseline", token_gateway.url, "--timeout", "2",
                     tmp_path=tmp_path_factory.mktemp("probe-gateway"))


def test_every_applicable_case_passes_in_front_of_the_real_gateway(with_baseline):
    run = with_baseline
    assert run.ids("fail") == set(), {i: run.cases[i]["why"] for i in run.ids("fail")}
    # Without a backend record, a forwarded request cannot show which headers reached the gateway:
    # those cases, and only those, stay inconclusive here (test_probe_demo.py judges them with one).
    inconclusive = {i: run.cases[i]["why"] for i in run.ids("inconclusive")}
    assert all(NEEDS_THE_RECORD in why for why in inconclusive.values()), inconclusive
    not_applicable = {i: run.cases[i]["why"] for i in run.ids("not_applicable")}
    assert all(any(flag in why for flag in ("--identity-header", "--unsafe", "--backend-record"))
               for why in not_applicable.values()), not_applicable
    assert run.report["summary"]["pass"] >= 170
    assert run.cases["control.websocket"]["verdict"] == "pass"


def test_the_baseline_shows_no_case_looser_than_the_gateway_alone(with_baseline):
    run = with_baseline
    assert run.ids(differential="LOOSER") == set(), {
        i: (run.cases[i]["why"], run.cases[i]["baseline"]["why"]) for i in run.ids(differential="LOOSER")}
    decided = [c for c in run.report["cases"] if c["differential"] is not None]
    assert len(decided) >= 180


@pytest.mark.parametrize("case_id,gateway_alone", [
    ("door.capability-prefix", "let through: 200"),  # the capability rewrite runs the tool
    ("E3.dot-segment", "let through: 200"),  # WHATWG URL folds /tools/./invoke
    ("D1.authorization-repeated-right-first", "let through: 200"),  # Node keeps the first Authorization
    ("ws.denied.terminal.open", "let through: res error INVALID_REQUEST: invalid terminal.open params"),
    ("ws.node-client-mode", "let through: res ok"),
    ("door.worker-upgrade", "let through: 101"),
    # the handlers' own answers: the hooks want their token (a plain-text 401, not the gateway's JSON
    # one), the watch hands out a nonce, the pairing and worker-bundle handlers answer a JSON 404 (a
    # path with no route gets the UI's 200). Session kill's 403 is not among them: the sidecar answers
    # a capped caller in the same words, so only a record could tell the two apart (review)
    ("door.hooks-agent", "let through: 401 Unauthorized"),
    ("door.node-watch", "let through: 200"),
    ("door.pairing-code-redeem", "let through: 404 not_found"),
    ("door.worker-bundle", "let through: 404 not_found"),
])
def test_doors_the_gateway_leaves_open_are_stricter_through_the_sidecar(with_baseline, case_id, gateway_alone):
    case = with_baseline.cases[case_id]
    assert case["differential"] == "STRICTER", case
    assert case["verdict"] == "pass"
    assert case["baseline"]["why"].startswith(gateway_alone), case["baseline"]["why"]


def test_the_unsafe_cases_are_refused_by_the_sidecar(sidecar, tmp_path: Path):
    """--unsafe against the sidecar only: on a vulnerable target these would open a shell and
    rewrite the config; the sidecar's deny list answers them."""
    run = run_probe(sidecar.url, "--token", TOKEN, "--unsafe", "--cases", "ws.unsafe.*", tmp_path=tmp_path)
    assert run.returncode == 0
    for case_id in ("ws.unsafe.terminal-open", "ws.unsafe.config-patch"):
        case = run.cases[case_id]
        assert case["unsafe"] is True and case["verdict"] == "pass", case
        assert case["why"].startswith("refused: res error METHOD_DENIED"), case["why"]


# Tools 2026.9.6 has and denies over HTTP by default; re-enabled, each answers a tool_error for its
# missing arguments (and acts on nothing).
REENABLED = ["cron", "automations", "sessions_spawn"]


def test_a_tool_spelling_the_gateway_resolves_is_seen_when_nothing_in_front_refuses_it(tmp_path: Path):
    """The gateway alone, with the tools the J cases spell re-enabled: every spelling it resolves
    reaches the tool, so the probe must see it; the ones it does not resolve reach nothing."""
    gateway = RealGateway({"mode": "token", "token": TOKEN}, {"gateway": {"tools": {"allow": REENABLED}}})
    try:
        run = run_probe(gateway.url, "--token", TOKEN, "--cases", "J*,ws.tools-invoke-*", "--timeout", "3",
                        tmp_path=tmp_path)
    finally:
        gateway.stop()
    resolved = {"J1.padded", "J1.trailing-tab", "J1.line-separator", "J1.byte-order-mark", "J1.ogham-space",
                "J1.alias-cron", "J3.name-beats-tool", "J3.null-name-falls-back-to-tool",
                "J3.duplicate-key", "J3.json-unicode-escape", "ws.tools-invoke-denied-tool", "ws.tools-invoke-alias"}
    assert run.ids("fail") == resolved, {i: run.cases[i]["why"] for i in run.ids("fail") ^ resolved}
    assert all(run.cases[i]["admission"] == "let_through" for i in resolved)
