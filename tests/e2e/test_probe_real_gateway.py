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
