"""Operating the running process: admin port, audit log, drain, reload, rotation, shadow mode.

Real `openclaw-sidecar run` processes in front of the demo backend, over real sockets; files are
changed the way operators and Kubernetes change them, and signals are real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend

from .conftest import UPSTREAM_TOKEN
from .harness import SidecarProcess, http_request, read_response

TOKEN = "T-current"
OLD_TOKEN = "T-previous"
NOT_FOUND_TOOL = {"ok": False, "error": {"type": "not_found", "message": "Tool not available: exec"}}


def base(backend: DemoBackend, **sidecar: Any) -> dict[str, Any]:
    return {
        "sidecar": {"upstream": backend.url, "upstreamAuth": {"token": UPSTREAM_TOKEN}, **sidecar},
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
    }


def invoke(sc: SidecarProcess, token: str | None, tool: str = "agents_list", args: dict | None = None,
           headers: dict[str, str] | None = None, timeout: float = 10) -> httpx.Response:
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{sc.url}/tools/invoke", json={"tool": tool, "args": args or {}},
                      headers={**sent, **(headers or {})}, timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def audit_lines(sc: SidecarProcess, count: int) -> list[dict[str, Any]]:
    """The first `count` audit lines, once they are written."""
    return wait_for(lambda: len(found := sc.audit_lines()) >= count and found)[:count]


def metric(sc: SidecarProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{sc.admin_url}/metrics", timeout=5).text
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


# ---- event loop --------------------------------------------------------------------------------


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_the_proxy_runs_on_the_event_loop_the_config_names(backend, start_sidecar, event_loop: str) -> None:
    """uvloop by default (every other test runs on it); `asyncio`, the fallback, gives the same answers."""
    sc = start_sidecar(base(backend) if event_loop == "uvloop" else base(backend, eventLoop=event_loop))
    assert invoke(sc, TOKEN).status_code == 200
    refused = invoke(sc, TOKEN, "exec")
    assert refused.status_code == 404 and refused.json() == NOT_FOUND_TOOL
    assert invoke(sc, "wrong").status_code == 401
    maps = Path(f"/proc/{sc.proc.pid}/maps").read_text()
    assert ("/uvloop/loop." in maps) == (event_loop == "uvloop")
    assert f"(auth mode token, {event_loop} event loop)" in sc.logs()


# ---- admin listener ----------------------------------------------------------------------------


def test_admin_port_serves_health_readiness_and_metrics_only(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend))
    assert sc.admin_url is not None and sc.admin_url != sc.url
    live = httpx.get(f"{sc.admin_url}/healthz", timeout=5)
    assert live.status_code == 200 and live.json()["ok"] is True
    ready = httpx.get(f"{sc.admin_url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reason": "ok"}
    invoke(sc, TOKEN, "exec")
    metrics = httpx.get(f"{sc.admin_url}/metrics", timeout=5)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "process_resident_memory_bytes" in metrics.text  # process metrics
    assert 'openclaw_sidecar_decisions_total{outcome="refused",reason="tool_denied",route="tools-invoke"}' in metrics.text
    assert TOKEN not in metrics.text and UPSTREAM_TOKEN not in metrics.text
    other = httpx.get(f"{sc.admin_url}/tools/invoke", timeout=5)
    assert other.status_code == 404 and other.text == "Not Found"
    # Nothing admin on the proxied port: /metrics there is the gateway's (here the backend's) path.
    proxied = httpx.get(f"{sc.url}/metrics", timeout=5)
    assert "openclaw_sidecar" not in proxied.text and "process_resident" not in proxied.text


def test_readiness_follows_the_upstream(backend, start_sidecar) -> None:
    """The pod is Ready only when the gateway is: an unreachable upstream makes /readyz 503."""
    dead = DemoBackend()
    dead.__enter__()
    url = dead.url
    dead.__exit__(None, None, None)
    sc = start_sidecar(base(backend) | {"sidecar": {"upstream": url}})
    ready = httpx.get(f"{sc.admin_url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["ready"] is False and "upstream unreachable" in ready.json()["reason"]
    assert httpx.get(f"{sc.admin_url}/healthz", timeout=5).status_code == 200  # alive all the same


# ---- audit log -----------------------------------------------------------------------------------


def test_every_decision_is_one_json_line_joined_to_the_upstream_by_request_id(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend))
    assert invoke(sc, TOKEN, headers={"X-Request-Id": "forged"}).status_code == 200
    assert invoke(sc, TOKEN, "exec").status_code == 404
    assert invoke(sc, "wrong").status_code == 401
    lines = audit_lines(sc, 3)
    forwarded, denied, unauthorised = lines
    (received,) = [r for r in backend.requests() if r["path"] == "/tools/invoke"]
    request_ids = [v for k, v in received["headers"] if k.lower() == "x-request-id"]
    assert request_ids == [forwarded["request_id"]]  # the client's "forged" copy was dropped
    assert forwarded["decision"] == "forwarded" and forwarded["status"] == 200 and forwarded["upstream_status"] == 200
    assert forwarded["auth"] == "token" and forwarded["tool"] == "agents_list" and forwarded["duration_ms"] >= 0
    assert forwarded["scopes"] and forwarded["client"] == "127.0.0.1"
    assert denied["decision"] == "refused" and denied["reason"] == "tool_denied" and denied["tool"] == "exec"
    assert denied["status"] == 404 and denied["upstream_status"] is None
    assert unauthorised["reason"] == "token_mismatch" and unauthorised["auth"] == "token"
    assert unauthorised["client"] == "127.0.0.1"
    text = json.dumps(lines)
    assert TOKEN not in text and UPSTREAM_TOKEN not in text and "wrong" not in text
    assert "agents_list" in text and '"args"' not in text
    assert all(line["time"].endswith("Z") and line["request_id"] for line in lines)


def test_audit_log_to_a_file(backend, start_sidecar, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sc = start_sidecar(base(backend, auditLog=str(path)))
    invoke(sc, TOKEN, "exec")
    (line,) = wait_for(lambda: path.exists() and path.read_text().splitlines())
    assert json.loads(line)["reason"] == "tool_denied"
    assert sc.audit_lines() == []


# ---- graceful drain ------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_requests_then_exits_zero(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend, drainSeconds=10))
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=invoke(sc, TOKEN, "slow", {"seconds": 2}, timeout=15)))
    slow.start()
    wait_for(lambda: any(r["path"] == "/tools/invoke" for r in backend.requests()))
    sc.proc.send_signal(signal.SIGTERM)
    draining = wait_for(lambda: (r := httpx.get(f"{sc.admin_url}/readyz", timeout=5)).status_code == 503 and r)
    assert draining.json()["reason"] == "draining"
    with pytest.raises(httpx.ConnectError):  # no new connections
        invoke(sc, TOKEN, timeout=2)
    slow.join(15)
    assert result["r"].status_code == 200 and result["r"].json()["ok"] is True
    assert result["r"].headers["connection"] == "close"
    assert sc.proc.wait(10) == 0
    assert "Traceback" not in sc.logs()


@pytest.mark.parametrize("second_signal", [False, True], ids=["deadline", "second-signal"])
def test_drain_deadline_bounds_the_wait_and_audits_what_it_cut(backend, start_sidecar, second_signal) -> None:
    """The backend ran the call the stop cut off: its audit line says so (there was none: the log
    closed before mitmproxy's error hooks ran; review)."""
    sc = start_sidecar(base(backend, drainSeconds=1 if not second_signal else 30))
    threading.Thread(target=lambda: _quietly(lambda: invoke(sc, TOKEN, "slow", {"seconds": 20}, timeout=30)),
                     daemon=True).start()
    wait_for(lambda: any(r["path"] == "/tools/invoke" for r in backend.requests()))
    sc.proc.send_signal(signal.SIGTERM)
    if second_signal:
        wait_for(lambda: "draining:" in sc.logs())
        sc.proc.send_signal(signal.SIGTERM)
    assert sc.proc.wait(10) == 0  # the call it waited for takes 20 s
    wait_for(lambda: "sidecar stopped" in sc.logs())  # read by a thread: the whole log, then the audit lines
    why = "second stop signal" if second_signal else "drain deadline passed"
    assert f"{why}: stopping with forwarded call(s) in flight, 1 cut off" in sc.logs()
    cut = wait_for(lambda: [line for line in sc.audit_lines() if line.get("tool") == "slow"])
    assert [(line["decision"], line["outcome"], line["status"]) for line in cut] == [("forwarded", "shutdown", None)]


def test_a_request_still_arriving_at_the_deadline_reached_no_one_and_is_not_counted_as_cut(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend, drainSeconds=1))
    sock = socket.create_connection((sc.host, sc.port))
    sock.sendall(f"POST /tools/invoke HTTP/1.1\r\nHost: sidecar.test\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tool\":".encode())  # the rest never comes
    time.sleep(1)  # its head judged (milliseconds), its body awaited
    sc.proc.send_signal(signal.SIGTERM)
    assert sc.proc.wait(10) == 0
    sock.close()
    wait_for(lambda: "sidecar stopped" in sc.logs())
    assert "drain deadline passed: stopping with forwarded call(s) in flight, 0 cut off" in sc.logs()
    assert not backend.requests() and not [line for line in sc.audit_lines() if line.get("outcome") == "shutdown"]


def _quietly(call: Callable[[], Any]) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass


# ---- reload and rotation -------------------------------------------------------------------------


def _token_file_config(backend: DemoBackend, token_file: Path, **sidecar: Any) -> dict[str, Any]:
    config = base(backend, **sidecar)
    config["gateway"]["auth"] = {"mode": "token", "tokenFile": str(token_file)}
    return config


def test_a_rotated_kubernetes_secret_takes_effect_without_a_restart(backend, start_sidecar, tmp_path: Path) -> None:
    """Kubernetes updates a mounted Secret by swapping the `..data` symlink to a new directory."""
    mount = tmp_path / "secret"
    mount.mkdir()
    (mount / "..v1").mkdir()
    (mount / "..v1" / "token").write_text(TOKEN + "\n")
    (mount / "..data").symlink_to("..v1")
    (mount / "token").symlink_to("..data/token")
    sc = start_sidecar(_token_file_config(backend, mount / "token"))
    assert invoke(sc, TOKEN).status_code == 200

    (mount / "..v2").mkdir()
    (mount / "..v2" / "token").write_text("T-rotated\n")
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    wait_for(lambda: invoke(sc, "T-rotated").status_code == 200)
    assert invoke(sc, TOKEN).status_code == 401
    assert metric(sc, "openclaw_sidecar_config_reloads_total", result="applied") == 1
    assert sc.proc.poll() is None


def test_a_bad_new_config_is_refused_and_the_old_one_keeps_serving(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend))
    good = sc.config_path.read_text()
    sc.config_path.write_text("sidecar: {enforce: maybe}\n")
    wait_for(lambda: "reload (file change) rejected" in sc.logs())
    assert "sidecar.enforce" in sc.logs()  # the key is named
    assert invoke(sc, TOKEN).status_code == 200 and invoke(sc, TOKEN, "exec").status_code == 404
    assert metric(sc, "openclaw_sidecar_config_reloads_total", result="rejected") == 1

    changed_listen = json.loads(good)
    changed_listen["sidecar"]["listen"] = "127.0.0.1:1"
    sc.config_path.write_text(json.dumps(changed_listen))
    wait_for(lambda: "sidecar.listen: changed; this setting needs a restart" in sc.logs())
    assert invoke(sc, TOKEN).status_code == 200
    assert sc.proc.poll() is None


def test_sighup_reloads_and_limiter_state_survives(backend, start_sidecar) -> None:
    config = base(backend)
    config["gateway"]["auth"]["rateLimit"] = {"maxAttempts": 2, "windowMs": 60_000, "lockoutMs": 60_000,
                                              "exemptLoopback": False}
    config["sidecar"]["rateLimit"] = {"loopbackDelayBaseMs": 0}
    sc = start_sidecar(config)
    sc.proc.send_signal(signal.SIGHUP)  # nothing changed: reloaded on the signal alone, not by the file watch
    wait_for(lambda: "config reloaded (SIGHUP)" in sc.logs())
    for _ in range(2):
        assert invoke(sc, "wrong").status_code == 401
    assert invoke(sc, TOKEN).status_code == 429  # locked out
    config["gateway"]["tools"] = {"deny": ["agents_list"]}
    sc.config_path.write_text(json.dumps(config))
    sc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded (SIGHUP)" in sc.logs() or "config reloaded (file change)" in sc.logs())
    assert invoke(sc, TOKEN).status_code == 429  # the lockout carried over
    assert sc.proc.poll() is None


def test_previous_tokens_are_accepted_during_rotation_and_audited(backend, start_sidecar, tmp_path: Path) -> None:
    old_file = tmp_path / "old-token"
    old_file.write_text("T-older\n")
    sc = start_sidecar(base(backend, auth={"previousTokens": [OLD_TOKEN], "previousTokenFiles": [str(old_file)]}))
    for token in (TOKEN, OLD_TOKEN, "T-older"):
        assert invoke(sc, token).status_code == 200
    assert invoke(sc, "T-unknown").status_code == 401
    forwarded = [r for r in backend.requests() if r["path"] == "/tools/invoke"]
    assert {v for r in forwarded for k, v in r["headers"] if k.lower() == "authorization"} == {f"Bearer {UPSTREAM_TOKEN}"}
    lines = audit_lines(sc, 3)
    assert [line["previous_secret"] for line in lines] == [False, True, True]


def test_a_head_admitted_before_a_reload_is_judged_again_when_its_body_comes(backend, start_sidecar) -> None:
    """A secret revoked while a request's body was still coming admitted that request (red team):
    the whole request is judged by the rules in force once its body is here."""
    config = base(backend, auth={"previousTokens": [OLD_TOKEN]})
    sc = start_sidecar(config)
    body = json.dumps({"tool": "agents_list", "args": {}}).encode()
    with socket.create_connection((sc.host, sc.port), timeout=10) as sock:
        sock.sendall(http_request("POST", "/tools/invoke", [("Authorization", f"Bearer {OLD_TOKEN}"),
                                                            ("Content-Type", "application/json")], body)[:-len(body)])
        del config["sidecar"]["auth"]
        sc.config_path.write_text(json.dumps(config))
        wait_for(lambda: "config reloaded (file change)" in sc.logs())
        sock.sendall(body)
        answer = read_response(sock)
    assert answer.status == 401 and answer.json()["error"]["type"] == "unauthorized", answer
    assert [r for r in backend.requests() if r["path"] == "/tools/invoke"] == []
    (refused,) = audit_lines(sc, 1)  # audited from the new judgment, not the admission it replaced
    assert (refused["decision"], refused["previous_secret"], refused["scopes"]) == ("refused", False, None), refused
    assert invoke(sc, TOKEN).status_code == 200


# ---- shadow mode ---------------------------------------------------------------------------------


def test_shadow_mode_forwards_policy_refusals_but_still_authenticates(backend, start_sidecar) -> None:
    config = base(backend, enforce=False)
    config["gateway"]["tools"] = {"deny": ["agents_list"]}  # a new rule being rolled out
    sc = start_sidecar(config)
    assert "SHADOW MODE" in sc.logs()
    shadowed = invoke(sc, TOKEN)
    assert shadowed.status_code == 200  # the backend ran what the sidecar would have refused
    assert invoke(sc, "wrong").status_code == 401  # never lends its credential to a stranger
    line = wait_for(lambda: next((x for x in sc.audit_lines() if x["decision"] == "shadowed"), None))
    assert line["reason"] == "allowed" and line["shadowed"] == ["tool_denied"] and line["tool"] == "agents_list"
    assert metric(sc, "openclaw_sidecar_shadowed_total", reason="tool_denied") == 1
    assert len([r for r in backend.requests() if r["path"] == "/tools/invoke"]) == 1


def test_an_auth_failure_behind_a_trusted_proxy_names_the_forwarded_client(backend, start_sidecar) -> None:
    config = base(backend)
    config["gateway"]["trustedProxies"] = ["127.0.0.1"]
    sc = start_sidecar(config)
    assert invoke(sc, "wrong", headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 401
    (line,) = audit_lines(sc, 1)
    assert (line["client"], line["peer"], line["reason"]) == ("198.51.100.9", "127.0.0.1", "token_mismatch")


# ---- refusal pacing ------------------------------------------------------------------------------


def test_a_client_refused_again_and_again_is_paced_until_a_call_goes_through(backend, start_sidecar) -> None:
    sc = start_sidecar(base(backend, rateLimit={"refusalPacing": {"afterRefusals": 2, "baseDelayMs": 1, "maxDelayMs": 4}}))
    for _ in range(5):
        refused = invoke(sc, TOKEN, tool="exec")
        assert (refused.status_code, refused.json()) == (404, NOT_FOUND_TOOL)  # still the gateway's answer
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 3  # the 3rd, 4th and 5th
    assert invoke(sc, TOKEN).status_code == 200  # let through: the streak is over
    assert invoke(sc, TOKEN, tool="exec").status_code == 404
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 3


def test_a_public_call_between_refusals_does_not_end_the_streak(backend, start_sidecar) -> None:
    """A stranger who sent /healthz after every few refusals was never paced (red team)."""
    sc = start_sidecar(base(backend, rateLimit={"refusalPacing": {"afterRefusals": 2, "baseDelayMs": 1, "maxDelayMs": 4}}))
    for _ in range(3):
        assert invoke(sc, "wrong").status_code == 401
        assert httpx.get(f"{sc.url}/healthz", timeout=10).status_code == 200
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 1  # the 3rd refusal


def test_refusals_behind_a_trusted_proxy_are_paced_per_forwarded_client(backend, start_sidecar) -> None:
    """Body-stage refusals (a denied tool) count toward the forwarded client's streak, not the
    ingress's: one client's streak must not slow the others behind the same proxy."""
    config = base(backend, rateLimit={"refusalPacing": {"afterRefusals": 2, "baseDelayMs": 1, "maxDelayMs": 4}})
    config["gateway"]["trustedProxies"] = ["127.0.0.1"]
    sc = start_sidecar(config)
    first, second = {"X-Forwarded-For": "198.51.100.9"}, {"X-Forwarded-For": "198.51.100.10"}
    for _ in range(3):
        assert invoke(sc, TOKEN, tool="exec", headers=first).status_code == 404
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 1  # the first client's 3rd
    assert invoke(sc, TOKEN, tool="exec", headers=second).status_code == 404
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 1  # the second client's 1st
    assert invoke(sc, TOKEN, headers=first).status_code == 200  # ends the first client's streak
    assert invoke(sc, TOKEN, tool="exec", headers=first).status_code == 404
    assert metric(sc, "openclaw_sidecar_refusals_paced_total") == 1
