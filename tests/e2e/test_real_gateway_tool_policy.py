"""Differential test of the tool policy chain against the real gateway (issue 12).

One real 2026.9.6 gateway runs a policy that uses several layers at once (a profile with
alsoAllow, tools.deny, an agent roster with per-agent tools, channel groups with an account
override, subagent policy, gateway.tools.deny); one sidecar in front of it reads the same file.
Every request of a matrix (tool names x session keys x agentId x context headers) goes straight to
the gateway and through the sidecar; the sidecar's audit line says whether it refused or forwarded.

- The sidecar never answers 200 where the gateway refuses.
- Where the sidecar refuses, it gives the gateway's own status and body, except where it is
  stricter on purpose (keys naming an agent outside the roster: the gateway skips that agent's
  policy, the sidecar refuses with the gateway's `Unknown agent id` 400).
- Where it forwards, the client gets the gateway's own answer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.real_gateway import RealGateway, unavailable_reason

from .conftest import REAL_GATEWAY_TOKEN as TOKEN
from .harness import SidecarProcess

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

POLICY: dict[str, Any] = {
    "tools": {"profile": "coding", "alsoAllow": ["agents_list", "theme"], "deny": ["sessions_history"],
              "subagents": {"tools": {"deny": ["theme"]}}},
    "agents": {
        "ownership": "explicit",
        "defaults": {"systemAgent": {"agentId": "main"}, "subagents": {"maxSpawnDepth": 2}},
        "list": [{"id": "main", "tools": {"deny": ["create_goal"]}},
                 {"id": "ops", "tools": {"allow": ["agents_list", "session_status", "sessions_list", "theme"]}}],
    },
    "channels": {"irc": {
        "enabled": False,
        "groups": {"123": {"tools": {"deny": ["theme"]}},
                   "*": {"tools": {"allow": ["agents_list", "sessions_list", "session_status", "theme"]}}},
        "accounts": {"work": {"groups": {"123": {"tools": {"deny": ["sessions_list"]}}}}},
    }},
    "gateway": {"tools": {"deny": ["get_goal"]}},
}
TOOLS = ["agents_list", "session_status", "sessions_list", "sessions_history", "theme", "create_goal", "get_goal", "tts",
         "sessions", "sessions_spawn", "read", "screen", "Agents_List", "cron", "web_fetch", "sessions_yield"]
KEYS = [None, "agent:main:main", "agent:ops:main", "irc:group:123", "agent:ops:irc:group:123", "irc:group:999",
        "irc:channel:123:thread:7", "subagent:x", "agent:main:subagent:a:subagent:b", "agent:main:cron:nightly",
        "agent:zz:main", "agent:main", "MAIN"]
AGENT_IDS = [None, "ops", "Main", "ghost"]
HEADERS = [{}, {"x-openclaw-message-channel": "node"}, {"x-openclaw-account-id": "work"},
           {"x-openclaw-message-channel": "voice"}]


def _matrix() -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Every tool against every key; agentId and context-header variants on a slice of it."""
    def body(tool: str, key: str | None = None, agent: str | None = None) -> dict[str, Any]:
        return {"name": tool, "args": {}, **({"sessionKey": key} if key else {}), **({"agentId": agent} if agent else {})}

    cases = [(body(tool, key), {}) for tool, key in itertools.product(TOOLS, KEYS)]
    cases += [(body(tool, key, agent), {}) for tool, key, agent in
              itertools.product(["agents_list", "sessions_list", "theme"], [None, "agent:ops:main", "irc:group:5"], AGENT_IDS[1:])]
    cases += [(body(tool, key), headers) for tool, key, headers in
              itertools.product(["agents_list", "sessions_list", "theme", "tts", "web_fetch"], [None, "irc:group:123"], HEADERS[1:])]
    return cases


def _stricter(body: dict[str, Any]) -> bool:
    """Keys naming an agent the roster lacks: the sidecar refuses what the gateway runs unguarded."""
    return body.get("sessionKey") == "agent:zz:main" and "agentId" not in body


@pytest.fixture(scope="module")
def gateway() -> Iterator[RealGateway]:
    gw = RealGateway({"mode": "token", "token": TOKEN}, POLICY)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sidecar(gateway: RealGateway, module_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return module_sidecar({"sidecar": {"upstream": gateway.url, "openclawConfig": str(gateway.config_path),
                                       "rateLimit": {"loopbackDelayBaseMs": 0}}})


@pytest.fixture(scope="module")
def exchanges(gateway: RealGateway, sidecar: SidecarProcess) -> list[tuple[dict, dict, httpx.Response, httpx.Response, dict]]:
    """The whole matrix, sent once: (body, headers, direct answer, proxied answer, audit line)."""
    cases = _matrix()
    answers = []
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(60.0)) as http:
        for body, headers in cases:
            sent = {"Authorization": f"Bearer {TOKEN}", **headers}
            answers.append((http.post(gateway.url + "/tools/invoke", json=body, headers=sent),
                            http.post(sidecar.url + "/tools/invoke", json=body, headers=sent)))
    deadline = time.monotonic() + 10
    while len(lines := [a for a in sidecar.audit_lines() if a.get("route") == "tools-invoke"]) < len(cases):
        assert time.monotonic() < deadline, f"{len(lines)} audit lines for {len(cases)} requests"
        time.sleep(0.1)
    return [(body, headers, direct, proxied, line) for (body, headers), (direct, proxied), line in zip(cases, answers, lines)]


def _answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


def test_the_sidecar_never_answers_200_where_the_gateway_refuses(exchanges) -> None:
    for body, headers, direct, proxied, _ in exchanges:
        if proxied.status_code == 200:
            assert direct.status_code == 200, (body, headers, direct.text)


def test_a_refusal_is_the_gateways_own_answer(exchanges) -> None:
    refused = [(b, h, d, p, a) for b, h, d, p, a in exchanges if a["decision"] == "refused"]
    for body, headers, direct, proxied, audit in refused:
        assert audit["detail"], audit
        if _stricter(body):
            assert _answer(proxied) == (400, {"ok": False, "error": {"type": "invalid_request", "message": 'Unknown agent id "zz"'}})
        else:
            assert _answer(proxied) == _answer(direct), (body, headers, audit["detail"])


def test_a_forwarded_call_gets_the_gateways_answer(exchanges) -> None:
    for body, headers, direct, proxied, audit in exchanges:
        if audit["decision"] == "forwarded":
            assert proxied.status_code == direct.status_code, (body, headers, direct.text, proxied.text)
            if direct.status_code != 200:  # refusals and tool errors carry no run-dependent content
                assert proxied.json() == direct.json(), (body, headers)


def test_the_matrix_exercises_every_layer_the_config_decides(exchanges) -> None:
    layers = {audit["detail"].split(":")[0] for *_, audit in exchanges if audit["decision"] == "refused"}
    assert layers >= {"session", "lookup", "http-surface", "message-provider", "profile", "tools", "agent", "group",
                      "subagent", "gateway"}
    refused = sum(audit["decision"] == "refused" for *_, audit in exchanges)
    forwarded_ok = sum(p.status_code == 200 for _, _, _, p, _ in exchanges)
    assert refused > 100 and forwarded_ok > 20, (refused, forwarded_ok)
