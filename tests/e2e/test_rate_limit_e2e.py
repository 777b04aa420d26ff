"""End to end: the auth-failure limiter (reference §3, conformance cases 15-24), its shared Redis
storage and outage policy, and the sidecar's own request rate limit.

Real `openclaw-sidecar run` processes in front of the demo backend; storage is `memory://` or a
real redis-server (tests/redis_server.py). Non-loopback clients are either real addresses in the
test network namespace (`testnet`) or clients named in `X-Forwarded-For` by a trusted 127.0.0.1.
Times are shortened through config (windowMs / lockoutMs / loopback delays); no timing upper
bounds are asserted.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from openclaw_demo.backend import DemoBackend

from tests.redis_server import RedisServer

from .conftest import UPSTREAM_TOKEN
from .harness import SidecarProcess
from .harness import TestNet as NetNamespace  # (a `Test*` name here would be collected)
from .ratelimit_helpers import (
    JSON_CT,
    LIMITER_UNAVAILABLE_BODY,
    RATE_LIMITED_BODY,
    REQUEST_LIMITED_BODY,
    TOKEN,
    UNAUTHORIZED_BODY,
    WRONG,
    ConfigBuilder,
    LoopbackCaller,
    Reply,
    TestnetCaller,
    avoid_minute_boundary,
    count_matches,
    scrape_metric,
    wait_until,
)

CLIENT = "203.0.113.7"
OTHER_CLIENT = "203.0.113.8"
FALLBACK_WARNING = r"WARNING sidecar\.ratelimit auth-failure limiter: rate-limit storage \S+ failed \("
RECOVERED_LOG = "auth-failure limiter: rate-limit storage"
RECOVERED_TAIL = "recovered; back on shared limits"
FALLBACKS_METRIC = "openclaw_sidecar_ratelimit_storage_fallbacks_total"


def assert_logged(sc: SidecarProcess, pattern: str, times: int) -> None:
    """`pattern` in the diagnostic log exactly `times` times. The log is read from the process's
    stderr by a thread: a line written before an answer may be read after the answer arrives."""
    wait_until(lambda: count_matches(pattern, sc.logs()) >= times, 5)
    assert count_matches(pattern, sc.logs()) == times, sc.logs()


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    """The limiter storage URI: per-process memory, or the real (flushed) redis-server."""
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("redis_url")


def cfg(backend: DemoBackend, storage: str = "memory://", **kw: Any) -> ConfigBuilder:
    return ConfigBuilder(upstream=backend.url, upstream_token=UPSTREAM_TOKEN, storage=storage, **kw)


def assert_ok(reply: Reply) -> None:
    assert reply.status == 200, reply
    assert reply.json()["ok"] is True, reply


def assert_unauthorized(reply: Reply) -> None:
    assert reply.status == 401, reply
    assert reply.json() == UNAUTHORIZED_BODY
    assert reply.header("content-type") == JSON_CT
    assert reply.header("retry-after") is None


def assert_locked(reply: Reply, retry_after: Callable[[int], bool] = lambda s: s > 0) -> int:
    """429 with upstream's exact body and a positive Retry-After; returns the Retry-After seconds."""
    assert reply.status == 429, reply
    assert reply.json() == RATE_LIMITED_BODY
    assert reply.header("content-type") == JSON_CT
    value = reply.header("retry-after")
    assert value is not None and value.isdigit(), reply.headers
    assert retry_after(int(value)), f"Retry-After {value}"
    return int(value)


def assert_backend_saw_nothing(backend: DemoBackend) -> None:
    assert backend.requests() == []


def tools_calls(backend: DemoBackend) -> list[dict]:
    return [r for r in backend.requests() if r["path"] == "/tools/invoke"]


# --------------------------------------------------------------------------- case 15


@pytest.mark.parametrize("client_kind", ["testnet", "trusted-xff"])
def test_case15_ten_failures_lock_even_the_good_token(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    testnet: NetNamespace, storage: str, client_kind: str, request: pytest.FixtureRequest,
) -> None:
    """Case 15: 10 bad tokens from 203.0.113.7 → 401 each; the 11th with the GOOD token → 429
    rate_limited, Retry-After 299-300; neither the 401s nor the 429 reach the backend."""
    if client_kind == "testnet":
        sc = start_sidecar(cfg(backend, storage, sidecar={"listen": "203.0.113.1:0"}).build())
        caller: Any = TestnetCaller(testnet, CLIENT, sc)
        other: Any = TestnetCaller(testnet, OTHER_CLIENT, sc)
    else:
        sc = start_sidecar(cfg(backend, storage, trusted_proxies=["127.0.0.1"]).build())
        caller = LoopbackCaller(client, sc, xff=CLIENT)
        other = LoopbackCaller(client, sc, xff=OTHER_CLIENT)

    for _ in range(10):
        assert_unauthorized(caller.invoke(WRONG))
    assert_backend_saw_nothing(backend)
    if storage.startswith("redis://"):  # the failures really live in the shared storage
        keys = request.getfixturevalue("redis_server").command("KEYS", "*")
        assert b"authfail" in keys and CLIENT.encode() in keys, keys

    locked = caller.invoke(TOKEN)
    assert_locked(locked, lambda s: s in (299, 300))
    assert b"agents" not in locked.body
    assert_backend_saw_nothing(backend)

    # the lock is the client's, not the sidecar's: another client still gets through
    assert_ok(other.invoke(TOKEN))
    assert len(tools_calls(backend)) == 1


def test_a_burst_of_concurrent_guesses_gets_max_attempts_comparisons(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], storage: str,
) -> None:
    """Upstream checks, compares and records in one event-loop turn: 40 wrong guesses sent at
    once on 40 connections must get exactly maxAttempts 401s (the rest 429), with the limiter's
    round trips to Redis suspending between those steps too."""
    sc = start_sidecar(cfg(backend, storage, trusted_proxies=["127.0.0.1"], rate_limit={"maxAttempts": 3}).build())
    start = threading.Barrier(40)

    def guess(_: int) -> Reply:
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(30.0)) as own:
            caller = LoopbackCaller(own, sc, xff=CLIENT)
            start.wait()
            return caller.invoke(WRONG)

    with ThreadPoolExecutor(40) as pool:
        replies = list(pool.map(guess, range(40)))
    statuses = Counter(reply.status for reply in replies)
    assert statuses == {401: 3, 429: 37}, statuses
    for reply in replies:
        (assert_unauthorized if reply.status == 401 else assert_locked)(reply)
    assert_backend_saw_nothing(backend)


# --------------------------------------------------------------------------- cases 16-18


def test_case16_success_resets_the_failure_count(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 16: maxAttempts 3: 2 bad, 1 good, 2 bad → no 429 (the success reset the count);
    a 3rd failure since the reset then does lock."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3}, trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)

    assert_unauthorized(caller.invoke(WRONG))
    assert_unauthorized(caller.invoke(WRONG))
    assert_ok(caller.invoke(TOKEN))
    assert_unauthorized(caller.invoke(WRONG))
    assert_unauthorized(caller.invoke(WRONG))
    assert_ok(caller.invoke(TOKEN))  # 4 failures in the window, but never 3 since a success

    for _ in range(3):
        assert_unauthorized(caller.invoke(WRONG))
    backend.clear_requests()
    assert_locked(caller.invoke(TOKEN))
    assert_backend_saw_nothing(backend)


def test_case17_missing_authorization_is_never_counted(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 17: requests with NO Authorization get 401 and are not counted: 10 of them with
    maxAttempts 3 never produce a 429, and the good token still works afterwards."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3}, trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)

    for _ in range(10):
        assert_unauthorized(caller.invoke(None))
    # "Bearer" with no credential and a non-Bearer scheme are "missing" too
    for value in ("Basic dDpU", "Bearer"):
        assert_unauthorized(caller.request("POST", "/tools/invoke", json_body={"tool": "agents_list"},
                                           headers=[("Authorization", value)]))
    assert_backend_saw_nothing(backend)
    assert_ok(caller.invoke(TOKEN))


def test_case18_locked_client_without_authorization_gets_429(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], testnet: NetNamespace, storage: str,
) -> None:
    """Case 18: the lock check runs before credentials are looked at: a locked client sending no
    Authorization at all gets 429, not 401."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3},
                           sidecar={"listen": "203.0.113.1:0"}).build())
    caller = TestnetCaller(testnet, CLIENT, sc)
    for _ in range(3):
        assert_unauthorized(caller.invoke(WRONG))
    assert_locked(caller.invoke(None), lambda s: s in (299, 300))
    assert_backend_saw_nothing(backend)


# --------------------------------------------------------------------------- cases 19-20 (loopback)


def test_case19_loopback_is_never_locked_but_failures_are_delayed_increasingly(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 19: a direct 127.0.0.1 client (default exemptLoopback) is never locked; instead each
    401 is delayed min(base·2^(n-1), max): with base 10 ms / max 80 ms: 10, 20, 40, 80, 80 ... ms
    (only lower bounds are checked)."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3},
                           sidecar_rate_limit={"loopbackDelayBaseMs": 10, "loopbackDelayMaxMs": 80}).build())
    caller = LoopbackCaller(client, sc)  # no forwarded headers: direct-local

    replies = [caller.invoke(WRONG) for _ in range(8)]
    for reply in replies:
        assert_unauthorized(reply)
    expected_s = [min(10 * 2 ** n, 80) / 1000 for n in range(8)]
    latencies = [r.elapsed for r in replies]
    for latency, floor in zip(latencies, expected_s):
        assert latency >= floor - 0.002, (latencies, expected_s)
    # the delay grows: the later 401s all waited at least the cap
    assert min(latencies[3:]) >= 0.078, latencies
    assert_backend_saw_nothing(backend)

    assert_ok(caller.invoke(TOKEN))  # 8 failures with maxAttempts 3, still not locked


def test_case20_loopback_is_locked_when_exemption_is_off(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 20: exemptLoopback false → 127.0.0.1 is locked after maxAttempts like anyone else."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3, "exemptLoopback": False}).build())
    caller = LoopbackCaller(client, sc)
    for _ in range(3):
        assert_unauthorized(caller.invoke(WRONG))
    assert_locked(caller.invoke(TOKEN), lambda s: s in (299, 300))
    assert_backend_saw_nothing(backend)


# --------------------------------------------------------------------------- case 21


def test_case21_ipv4_and_mapped_ipv6_share_one_bucket(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 21: maxAttempts 2: 2 failures as 1.2.3.4 lock ::ffff:1.2.3.4 too (and vice versa);
    a neighbouring address is unaffected."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 2}, trusted_proxies=["127.0.0.1"]).build())
    v4 = LoopbackCaller(client, sc, xff="1.2.3.4")
    mapped = LoopbackCaller(client, sc, xff="::ffff:1.2.3.4")

    assert_unauthorized(v4.invoke(WRONG))
    assert_unauthorized(v4.invoke(WRONG))
    assert_locked(mapped.invoke(TOKEN))
    assert_locked(v4.invoke(TOKEN))
    assert_backend_saw_nothing(backend)

    # the other direction: failures as the mapped form lock the plain IPv4 form
    mapped5 = LoopbackCaller(client, sc, xff="::ffff:5.6.7.8")
    v45 = LoopbackCaller(client, sc, xff="5.6.7.8")
    assert_unauthorized(mapped5.invoke(WRONG))
    assert_unauthorized(v45.invoke(WRONG))  # one failure each form = 2 on one key
    assert_locked(v45.invoke(TOKEN))
    assert_backend_saw_nothing(backend)

    assert_ok(LoopbackCaller(client, sc, xff="1.2.3.5").invoke(TOKEN))


def test_tailnet_users_behind_the_ingress_each_have_their_own_budget(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Behind a Tailscale ingress every user's IPv6 address is in one /64 of fd7a:115c:a1e0::/48,
    one address per node: counted by /64, one user's wrong tokens locked every other user out
    (red team). A public IPv6 /64 is still one client."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 2}, trusted_proxies=["127.0.0.1"]).build())
    # (guessing, then who is locked out): tailnet nodes apart, a public /64 as one
    for guessers, bystander, locked in ((["fd7a:115c:a1e0:ab12:4843:cd96:6258:b240"] * 2,
                                         "fd7a:115c:a1e0:ab12:4843:cd96:626b:430b", False),
                                        (["2001:db8:7:1::1", "2001:db8:7:1::2"], "2001:db8:7:1::3", True)):
        for guesser in guessers:
            assert_unauthorized(LoopbackCaller(client, sc, xff=guesser).invoke(WRONG))
        assert_locked(LoopbackCaller(client, sc, xff=guessers[0]).invoke(TOKEN))
        (assert_locked if locked else assert_ok)(LoopbackCaller(client, sc, xff=bystander).invoke(TOKEN))


# --------------------------------------------------------------------------- cases 22-23 (time)


def test_case22_failures_older_than_the_window_do_not_count(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 22 (scaled: windowMs 1000 instead of 10000): maxAttempts 3: 2 failures, wait past the
    window, 2 failures → not locked (the 5th failure is still a 401); a 3rd failure inside the
    window then does lock."""
    import time

    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3, "windowMs": 1000},
                           trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)

    assert_unauthorized(caller.invoke(WRONG))
    assert_unauthorized(caller.invoke(WRONG))
    time.sleep(1.1)
    assert_unauthorized(caller.invoke(WRONG))
    assert_unauthorized(caller.invoke(WRONG))  # 4 failures, only 2 in the window: no lock
    assert_unauthorized(caller.invoke(WRONG))  # would be 429 had the old ones counted
    assert_locked(caller.invoke(TOKEN))  # now 3 in the window: locked
    assert_backend_saw_nothing(backend)


def test_case23_lockout_expires_and_clears_the_history(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 23 (scaled: lockoutMs 1000): after the lockout the next request is evaluated
    normally; the failures that caused the lock are forgotten (one new failure does not relock,
    although the 60 s window would still hold them)."""
    import time

    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 2, "lockoutMs": 1000},
                           trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)

    assert_unauthorized(caller.invoke(WRONG))
    assert_unauthorized(caller.invoke(WRONG))
    assert_locked(caller.invoke(TOKEN), lambda s: s == 1)
    assert_backend_saw_nothing(backend)
    time.sleep(1.1)
    assert_unauthorized(caller.invoke(WRONG))  # evaluated normally: 401, not 429
    assert_ok(caller.invoke(TOKEN))  # one failure since the lockout: not locked


# --------------------------------------------------------------------------- case 24


def test_case24_mode_none_never_rate_limits(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Case 24: mode none authenticates everyone and never touches the limiter: any
    Authorization, any number of times → 200, never 429. (On loopback, where mode none may
    listen; the client a trusted loopback proxy speaks for is remote.)"""
    sc = start_sidecar(cfg(backend, storage, mode="none", rate_limit={"maxAttempts": 2}, trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)
    for auth in (WRONG, WRONG, WRONG, None, "x", WRONG):
        assert_ok(caller.invoke(auth))
    assert len(tools_calls(backend)) == 6


# --------------------------------------------------------------------------- other routes


def test_lockout_applies_to_every_authenticated_route(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """One limiter for the client, whatever route: a client locked on /tools/invoke gets 429 on
    GET /v1/models even with the good token, and failures on /v1/models count towards the lock
    on /tools/invoke."""
    sc = start_sidecar(cfg(backend, storage, rate_limit={"maxAttempts": 3}, trusted_proxies=["127.0.0.1"]).build())
    locked_via_tools = LoopbackCaller(client, sc, xff=CLIENT)
    for _ in range(3):
        assert_unauthorized(locked_via_tools.invoke(WRONG))
    assert_locked(locked_via_tools.request("GET", "/v1/models", token=TOKEN))
    assert_locked(locked_via_tools.invoke(TOKEN))
    assert_backend_saw_nothing(backend)

    locked_via_models = LoopbackCaller(client, sc, xff=OTHER_CLIENT)
    for _ in range(3):
        assert_unauthorized(locked_via_models.request("GET", "/v1/models", token=WRONG))
    assert_locked(locked_via_models.invoke(TOKEN))
    assert_locked(locked_via_models.request("GET", "/v1/models", token=TOKEN))
    assert_backend_saw_nothing(backend)

    ok = LoopbackCaller(client, sc, xff="198.51.100.20").request("GET", "/v1/models", token=TOKEN)
    assert ok.status == 200 and ok.json()["path"] == "/v1/models", ok


# --------------------------------------------------------------------------- Redis: shared budget


def test_two_sidecars_sharing_redis_share_one_failure_budget(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], testnet: NetNamespace, redis_url: str,
) -> None:
    """Two replicas on one Redis: maxAttempts 4, 2 failures on each → the client is locked on
    BOTH replicas (one budget per client, not per replica)."""
    config = cfg(backend, redis_url, rate_limit={"maxAttempts": 4}, sidecar={"listen": "203.0.113.1:0"})
    a = start_sidecar(config.build())
    b = start_sidecar(config.build())
    on_a, on_b = TestnetCaller(testnet, CLIENT, a), TestnetCaller(testnet, CLIENT, b)

    assert_unauthorized(on_a.invoke(WRONG))
    assert_unauthorized(on_a.invoke(WRONG))
    assert_unauthorized(on_b.invoke(WRONG))
    assert_unauthorized(on_b.invoke(WRONG))
    assert_locked(on_a.invoke(TOKEN), lambda s: s in (299, 300))
    assert_locked(on_b.invoke(TOKEN), lambda s: s in (299, 300))
    assert_backend_saw_nothing(backend)

    assert_ok(TestnetCaller(testnet, OTHER_CLIENT, b).invoke(TOKEN))


def test_a_redis_that_requires_a_password_gets_it_from_the_password_file(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, tmp_path: Path,
) -> None:
    """requirepass on a real redis-server, the password in `storagePasswordFile` (characters a URI
    would have to escape): two replicas share one budget through it; a replica with the wrong
    password finds the store out (failClosed: 503) and neither password reaches a log line."""
    password, wrong_password = "p@ss:w/rd#%?-1", "not-the-p@ss"
    (tmp_path / "right").write_text(password + "\n")
    (tmp_path / "wrong").write_text(wrong_password)
    with RedisServer(password=password) as server:
        def config(password_file: str, **rate_limit: Any) -> dict[str, Any]:
            return cfg(backend, server.url, rate_limit={"maxAttempts": 2}, trusted_proxies=["127.0.0.1"],
                       sidecar_rate_limit={"storagePasswordFile": str(tmp_path / password_file), **rate_limit}).build()
        a, b = start_sidecar(config("right")), start_sidecar(config("right"))
        wrong = start_sidecar(config("wrong", failClosed=True))
        assert_unauthorized(LoopbackCaller(client, a, xff=CLIENT).invoke(WRONG))
        assert_unauthorized(LoopbackCaller(client, b, xff=CLIENT).invoke(WRONG))
        assert_locked(LoopbackCaller(client, a, xff=CLIENT).invoke(TOKEN))
        assert_locked(LoopbackCaller(client, b, xff=CLIENT).invoke(TOKEN))
        assert server.command("KEYS", "*").count(b"shared-secret") >= 1  # the count lives in Redis
        assert_ok(LoopbackCaller(client, b, xff=OTHER_CLIENT).invoke(TOKEN))

        backend.clear_requests()
        reply = LoopbackCaller(client, wrong, xff=OTHER_CLIENT).invoke(TOKEN)
        assert reply.status == 503 and reply.json() == LIMITER_UNAVAILABLE_BODY, reply
        assert_logged(wrong, FALLBACK_WARNING, 1)
        assert_backend_saw_nothing(backend)
        for sidecar in (a, b, wrong):
            assert password not in sidecar.logs() and wrong_password not in sidecar.logs()


def test_a_reload_never_rereads_the_redis_password_file(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, tmp_path: Path,
) -> None:
    """The password file is read once, when the storage is built: with it gone (a Secret being
    replaced), a rotated token still takes effect and the limiter keeps its store."""
    password = "redis-pw"
    (tmp_path / "redis-password").write_text(password)
    (tmp_path / "token").write_text(TOKEN)
    with RedisServer(password=password) as server:
        config = cfg(backend, server.url, rate_limit={"maxAttempts": 2}, trusted_proxies=["127.0.0.1"],
                     sidecar_rate_limit={"storagePasswordFile": str(tmp_path / "redis-password")}).build()
        del config["gateway"]["auth"]["token"]
        config["gateway"]["auth"]["tokenFile"] = str(tmp_path / "token")
        sc = start_sidecar(config)
        assert_ok(LoopbackCaller(client, sc, xff=CLIENT).invoke(TOKEN))
        (tmp_path / "redis-password").unlink()
        (tmp_path / "token").write_text("T-rotated")
        assert wait_until(lambda: "config reloaded (file change)" in sc.logs(), timeout=8.0), sc.logs()
        assert_ok(LoopbackCaller(client, sc, xff=OTHER_CLIENT).invoke("T-rotated"))
        assert "storagePasswordFile" not in sc.logs(), sc.logs()
        for _ in range(2):
            assert_unauthorized(LoopbackCaller(client, sc, xff=CLIENT).invoke(TOKEN))
        assert_locked(LoopbackCaller(client, sc, xff=CLIENT).invoke("T-rotated"))
        assert server.command("KEYS", "*").count(b"shared-secret") >= 1  # still counting in Redis


# --------------------------------------------------------------------------- Redis outage


def _wait_recovered(sc: SidecarProcess, nudge: Callable[[], Any]) -> None:
    """Nudge the replica with harmless requests until it logs the storage recovery (probe ≈1 s)."""
    recovered = wait_until(lambda: RECOVERED_TAIL in sc.logs(), timeout=4.0, nudge=nudge, interval=0.15)
    assert recovered, f"no recovery logged; logs:\n{sc.logs()}"


def test_redis_outage_falls_back_per_replica_then_recovers_to_one_budget(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    redis_server: Any, redis_url: str,
) -> None:
    """Redis stops mid-test: both replicas keep serving (200 / 401, never 500) from a
    per-replica in-memory fallback that still locks after maxAttempts, and each logs ONE
    warning. A lockout survives the outage both ways. Redis back: after the recovery probe they
    share one budget again."""
    config = cfg(backend, redis_url, rate_limit={"maxAttempts": 4}, trusted_proxies=["127.0.0.1"])
    a = start_sidecar(config.build())
    b = start_sidecar(config.build())
    assert_ok(LoopbackCaller(client, a, xff=CLIENT).invoke(TOKEN))
    assert_ok(LoopbackCaller(client, b, xff=CLIENT).invoke(TOKEN))
    locked_before = LoopbackCaller(client, a, xff="198.51.100.30")
    for _ in range(4):
        assert_unauthorized(locked_before.invoke(WRONG))

    redis_server.stop()
    try:
        assert_locked(locked_before.invoke(TOKEN))  # no fresh run of guesses on the fallback
        x_on_a = LoopbackCaller(client, a, xff="198.51.100.31")
        x_on_b = LoopbackCaller(client, b, xff="198.51.100.31")
        assert_ok(x_on_a.invoke(TOKEN))
        for _ in range(4):
            assert_unauthorized(x_on_a.invoke(WRONG))
        backend.clear_requests()
        assert_locked(x_on_a.invoke(TOKEN), lambda s: s in (299, 300))  # the fallback still locks
        assert_backend_saw_nothing(backend)
        # per replica: b's fallback has not seen those failures
        assert_ok(x_on_b.invoke(TOKEN))
        assert_unauthorized(x_on_b.invoke(WRONG))
        assert_unauthorized(x_on_b.invoke(None))
        other_on_a = LoopbackCaller(client, a, xff="198.51.100.32")
        assert_ok(other_on_a.invoke(TOKEN))
        assert_unauthorized(other_on_a.invoke(WRONG))
        for sc in (a, b):
            assert_logged(sc, FALLBACK_WARNING, 1)
            assert "Traceback" not in sc.logs(), sc.logs()
    finally:
        redis_server.start()

    _wait_recovered(a, lambda: LoopbackCaller(client, a, xff="198.51.100.40").invoke(TOKEN))
    _wait_recovered(b, lambda: LoopbackCaller(client, b, xff="198.51.100.40").invoke(TOKEN))
    assert_locked(x_on_b.invoke(TOKEN))  # a wrote its fallback's lockout back to Redis
    assert_locked(LoopbackCaller(client, b, xff="198.51.100.30").invoke(TOKEN))  # and the one from before

    y_on_a = LoopbackCaller(client, a, xff="198.51.100.33")
    y_on_b = LoopbackCaller(client, b, xff="198.51.100.33")
    assert_unauthorized(y_on_a.invoke(WRONG))
    assert_unauthorized(y_on_a.invoke(WRONG))
    assert_unauthorized(y_on_b.invoke(WRONG))
    assert_unauthorized(y_on_b.invoke(WRONG))
    backend.clear_requests()
    assert_locked(y_on_a.invoke(TOKEN))
    assert_locked(y_on_b.invoke(TOKEN))
    assert_backend_saw_nothing(backend)
    for sc in (a, b):
        assert_logged(sc, FALLBACK_WARNING, 1)
        assert_logged(sc, re.escape(RECOVERED_TAIL), 1)


def _serving_on_redis(backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
                      redis_url: str, *, fail_closed: bool) -> tuple[SidecarProcess, LoopbackCaller]:
    """A sidecar limiting on Redis behind a trusted proxy, and a client it has already served."""
    config = cfg(backend, redis_url, trusted_proxies=["127.0.0.1"], sidecar_rate_limit={"failClosed": fail_closed})
    sc = start_sidecar(config.build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)
    assert_ok(caller.invoke(TOKEN))
    return sc, caller


def test_redis_outage_fail_closed_answers_503(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    redis_server: Any, redis_url: str,
) -> None:
    """failClosed: true: while Redis is down every limited request gets 503 `unavailable`
    (good token, bad token, no token) and nothing reaches the backend; back to normal after
    Redis returns."""
    sc, caller = _serving_on_redis(backend, start_sidecar, client, redis_url, fail_closed=True)

    redis_server.stop()
    try:
        backend.clear_requests()
        for auth in (TOKEN, WRONG, None):
            reply = caller.invoke(auth)
            assert reply.status == 503, reply
            assert reply.json() == LIMITER_UNAVAILABLE_BODY
            assert reply.header("content-type") == JSON_CT
        reply = caller.request("GET", "/v1/models", token=TOKEN)
        assert reply.status == 503 and reply.json() == LIMITER_UNAVAILABLE_BODY, reply
        assert_backend_saw_nothing(backend)
        assert_logged(sc, FALLBACK_WARNING, 1)
        assert "answering 503 (fail_closed)" in sc.logs()
    finally:
        redis_server.start()

    _wait_recovered(sc, lambda: caller.invoke(TOKEN))
    assert_ok(caller.invoke(TOKEN))


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail-closed", "fallback"])
def test_a_frozen_redis_times_out_and_every_request_is_answered(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    redis_server: Any, redis_url: str, fail_closed: bool,
) -> None:
    """A Redis that never answers: its client's read timeout cancelled the task it was entered in,
    the connection's (the proxy runs hooks inline in it), not the read. The first request was
    dropped unanswered and unaudited, and its client's next ones waited behind it for the whole
    stall (red team). Each is answered now, as the outage policy says."""
    sc, caller = _serving_on_redis(backend, start_sidecar, client, redis_url, fail_closed=fail_closed)
    redis_server.freeze()
    try:
        replies = [caller.invoke(TOKEN) for _ in range(3)]
    finally:
        redis_server.thaw()
    assert [reply.status for reply in replies] == [503 if fail_closed else 200] * 3, replies
    assert wait_until(lambda: len(sc.audit_lines()) == 4, 5), sc.audit_lines()


def test_a_redis_that_refuses_writes_stays_an_outage_until_it_takes_one(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    redis_server: Any, redis_url: str,
) -> None:
    """A replica left behind by a failover (or a full noeviction Redis) answers PING and reads and
    refuses every write. The recovery probe took PING for health: each second the limiter went
    back to Redis, dropped its fallback's count, and a guesser got maxAttempts more answers (red
    team: 24 in 8 s against a budget of 3 in 5 minutes). Now it stays locked out."""
    config = cfg(backend, redis_url, rate_limit={"maxAttempts": 3}, trusted_proxies=["127.0.0.1"])
    sc = start_sidecar(config.build())
    guesser = LoopbackCaller(client, sc, xff="198.51.100.41")
    redis_server.command("REPLICAOF", "127.0.0.1", "1")  # read-only, its master unreachable
    try:
        statuses = []
        for _ in range(40):  # past four probe intervals
            statuses.append(guesser.invoke(WRONG).status)
            time.sleep(0.1)
    finally:
        redis_server.command("REPLICAOF", "NO", "ONE")
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}, statuses
    assert_logged(sc, FALLBACK_WARNING, 1)


def test_storage_fallbacks_metric_counts_outages(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    redis_server: Any, redis_url: str,
) -> None:
    """openclaw_sidecar_ratelimit_storage_fallbacks_total on the admin port's /metrics: +1 per
    outage (not per failed operation): 0 → 1 after an outage with many requests → 2 after a
    second outage."""
    config = cfg(backend, redis_url, trusted_proxies=["127.0.0.1"])
    sc = start_sidecar(config.build())
    url = f"{sc.admin_url}/metrics"
    caller = LoopbackCaller(client, sc, xff=CLIENT)
    assert_ok(caller.invoke(TOKEN))
    assert scrape_metric(url, FALLBACKS_METRIC) == 0

    redis_server.stop()
    try:
        for auth in (TOKEN, WRONG, WRONG, TOKEN, None):
            assert caller.invoke(auth).status in (200, 401)
        assert scrape_metric(url, FALLBACKS_METRIC) == 1
    finally:
        redis_server.start()
    _wait_recovered(sc, lambda: caller.invoke(TOKEN))
    assert scrape_metric(url, FALLBACKS_METRIC) == 1

    redis_server.stop()
    try:
        for auth in (TOKEN, WRONG, TOKEN):
            assert caller.invoke(auth).status in (200, 401)
        assert scrape_metric(url, FALLBACKS_METRIC) == 2
    finally:
        redis_server.start()
    assert_logged(sc, FALLBACK_WARNING, 2)


# --------------------------------------------------------------------------- request rate limit


def assert_request_limited(reply: Reply) -> None:
    assert reply.status == 429, reply
    assert reply.json() == REQUEST_LIMITED_BODY
    assert reply.json()["error"]["type"] == "rate_limited"
    assert reply.header("content-type") == JSON_CT
    value = reply.header("retry-after")
    assert value is not None and value.isdigit() and int(value) > 0, reply.headers


@pytest.mark.parametrize("per_tool", [False, True], ids=["one-budget", "per-tool"])
def test_request_limit_refuses_the_call_over_the_limit(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    storage: str, per_tool: bool,
) -> None:
    """sidecar.rateLimit.requests {limit 3/minute}: 3 allowed calls pass, the 4th gets 429
    rate_limited with Retry-After > 0 and never reaches the backend. perTool: another tool
    still passes; without perTool the budget covers every tool."""
    limit = {"limit": "3/minute", "per": "ip", "perTool": per_tool}
    sc = start_sidecar(cfg(backend, storage, trusted_proxies=["127.0.0.1"],
                           sidecar_rate_limit={"requests": limit}).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)
    avoid_minute_boundary()
    for _ in range(3):
        assert_ok(caller.invoke(TOKEN))
    assert len(tools_calls(backend)) == 3
    backend.clear_requests()
    assert_request_limited(caller.invoke(TOKEN))
    assert_backend_saw_nothing(backend)

    other_tool = caller.invoke(TOKEN, tool="session_status")
    if per_tool:
        assert_ok(other_tool)
        assert [r["path"] for r in backend.requests()] == ["/tools/invoke"]
    else:
        assert_request_limited(other_tool)
        assert_backend_saw_nothing(backend)

    # an allowed-call limit is not an auth lockout: a different client is unaffected
    assert_ok(LoopbackCaller(client, sc, xff=OTHER_CLIENT).invoke(TOKEN))


@pytest.mark.parametrize("per", ["identity", "ip"])
def test_request_limit_keys_by_identity_or_ip(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client,
    storage: str, per: str,
) -> None:
    """requests.per identity: one budget per trusted-proxy user across client IPs; per ip: one
    budget per client IP across users."""
    config = cfg(
        backend, storage, mode="trusted-proxy", trusted_proxies=["127.0.0.1"],
        auth_extra={"trustedProxy": {"userHeader": "x-forwarded-user", "allowUsers": ["alice", "bob"],
                                     "allowLoopback": True}},
        sidecar_rate_limit={"requests": {"limit": "3/minute", "per": per}},
    )
    sc = start_sidecar(config.build())

    def as_user(user: str, ip: str) -> LoopbackCaller:
        return LoopbackCaller(client, sc, xff=ip,
                              extra_headers=[("x-forwarded-user", user), ("x-openclaw-scopes", "operator.write")])

    avoid_minute_boundary()
    for _ in range(3):
        assert_ok(as_user("alice", CLIENT).invoke(None))
    alice_elsewhere = as_user("alice", OTHER_CLIENT).invoke(None)
    bob_same_ip = as_user("bob", CLIENT).invoke(None)
    if per == "identity":
        assert_request_limited(alice_elsewhere)
        assert_ok(bob_same_ip)
    else:
        assert_ok(alice_elsewhere)
        assert_request_limited(bob_same_ip)
    assert len(tools_calls(backend)) == 4


def test_request_limit_is_off_by_default(
    backend: DemoBackend, start_sidecar: Callable[..., SidecarProcess], client: httpx.Client, storage: str,
) -> None:
    """Without sidecar.rateLimit.requests allowed calls are never limited."""
    sc = start_sidecar(cfg(backend, storage, trusted_proxies=["127.0.0.1"]).build())
    caller = LoopbackCaller(client, sc, xff=CLIENT)
    for _ in range(25):
        assert_ok(caller.invoke(TOKEN))
    assert len(tools_calls(backend)) == 25
