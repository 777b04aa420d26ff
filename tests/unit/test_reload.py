"""Reload decisions without a process: what is watched, what counts as a change, and that any
failure while reloading (a bad file, a setting that needs a restart, a fault while building)
leaves the serving runtime in place."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.metrics import CONFIG_RELOADS
from sidecar.ratelimit import LimitVerdict
from sidecar.reload import IdentityHeaderMemory, Reloader, fingerprint, watched_files
from sidecar.runtime import Runtime, build_runtime, restart_needed

from tests.redis_server import RedisServer


def write_config(path: Path, token_file: Path, **sidecar: object) -> Path:
    path.write_text(json.dumps({"sidecar": {"auth": {"previousTokenFiles": [str(token_file) + ".old"]}, **sidecar},
                                "gateway": {"auth": {"mode": "token", "tokenFile": str(token_file)}}}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    token = tmp_path / "token"
    token.write_text("T1\n")
    (tmp_path / "token.old").write_text("T0\n")
    return write_config(tmp_path / "sidecar.json", token), token


def reloader(config_path: Path, applied: list[Runtime], build=build_runtime) -> Reloader:
    return Reloader(config_path, {}, build_runtime(load_config(config_path, environ={})), applied.append, build)


def watching_gateway_file(tmp_path: Path, text: str, sidecar_extra: str = "") -> tuple[Path, Reloader, list[Runtime]]:
    """The gateway's file holding `text`, a sidecar config reading it, and that config's watcher
    with the runtimes it applied."""
    gateway_file = tmp_path / "openclaw.json5"
    gateway_file.write_text(text)
    config_path = tmp_path / "sidecar.yaml"
    config_path.write_text("sidecar:\n  openclawConfig: openclaw.json5\n" + sidecar_extra)
    applied: list[Runtime] = []
    return gateway_file, reloader(config_path, applied), applied


def counted(result: str) -> float:
    return CONFIG_RELOADS.labels(result=result)._value.get()


def test_every_file_the_config_came_from_is_watched(files: tuple[Path, Path]) -> None:
    config_path, token = files
    config = load_config(config_path, environ={})
    assert watched_files(config_path, config) == (config_path, token, Path(str(token) + ".old"))


def test_a_change_is_a_change_of_content(files: tuple[Path, Path]) -> None:
    config_path, token = files
    before = fingerprint((config_path, token))
    token.touch()
    assert fingerprint((config_path, token)) == before
    token.write_text("T2\n")
    assert fingerprint((config_path, token)) != before
    token.unlink()
    assert fingerprint((config_path, token))[1] == (str(token), None)


def test_a_rotated_secret_is_applied_and_nothing_else_is_reloaded(files: tuple[Path, Path]) -> None:
    config_path, token = files
    applied: list[Runtime] = []
    watcher = reloader(config_path, applied)
    assert watcher.check() is None
    token.write_text("T2\n")
    before = counted("applied")
    assert watcher.check() is True
    assert counted("applied") == before + 1
    (runtime,) = applied
    assert runtime.config.secrets.token == "T2" and runtime.config.secrets.previous_tokens == ("T0",)
    assert watcher.check() is None


def test_limiters_survive_a_reload(files: tuple[Path, Path]) -> None:
    config_path, token = files
    applied: list[Runtime] = []
    watcher = reloader(config_path, applied)
    old = watcher.runtime
    assert watcher.reload("SIGHUP") is True
    assert applied[0].failure_limiter is old.failure_limiter
    assert watcher.runtime is applied[0]  # the next reload builds on it and compares with it


def test_an_applied_reload_is_logged_with_its_cause(files: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    config_path, token = files
    watcher = reloader(config_path, [])
    token.write_text("T2\n")
    assert watcher.check() is True
    assert watcher.reload("SIGHUP") is True
    assert "config reloaded (file change)" in caplog.text and "config reloaded (SIGHUP)" in caplog.text


async def test_reloads_asked_for_before_one_runs_share_it(files: tuple[Path, Path]) -> None:
    config_path, _ = files
    applied: list[Runtime] = []
    watcher = reloader(config_path, applied)
    for _ in range(30):  # a burst of SIGHUPs
        watcher.ask("SIGHUP")
    await asyncio.sleep(0)
    assert len(applied) == 1
    watcher.ask("SIGHUP")  # one asked for after it ran gets its own
    await asyncio.sleep(0)
    assert len(applied) == 2


@pytest.mark.parametrize("fault", ["bad file", "restart setting", "missing secret file", "emptied secret file", "build raises"])
def test_any_failure_keeps_the_serving_runtime(files: tuple[Path, Path], fault: str, caplog: pytest.LogCaptureFixture) -> None:
    config_path, token = files
    applied: list[Runtime] = []

    def exploding_build(config, reuse=None):  # a bug while building must not take down the old runtime
        raise RuntimeError("injected")

    watcher = reloader(config_path, applied, exploding_build if fault == "build raises" else build_runtime)
    serving = watcher.runtime
    if fault == "bad file":
        config_path.write_text("{sidecar: {enforce: maybe}}")
    elif fault == "restart setting":
        write_config(config_path, token, listen="127.0.0.1:1")
    elif fault == "missing secret file":
        token.unlink()
    elif fault == "emptied secret file":  # a Secret caught mid-swap: no token, every caller 401 and locked out
        token.write_text("\n")
    else:
        token.write_text("T2\n")
    before = counted("rejected")
    assert watcher.check() is False
    assert counted("rejected") == before + 1
    assert applied == [] and watcher.runtime is serving
    assert "config reload (file change) rejected, the previous configuration keeps serving" in caplog.text
    assert {r.name for r in caplog.records if "keeps serving" in r.getMessage()} == {"sidecar.reload"}
    reason = {"restart setting": "sidecar.listen: changed; this setting needs a restart", "emptied secret file": "gateway.auth: ",
              "build raises": "config reload (file change) failed"}.get(fault, "")
    assert reason in caplog.text
    if fault == "build raises":  # the bug is logged with its traceback, the refusal names only its type
        assert "RuntimeError: injected" in caplog.text and "keeps serving: internal error (RuntimeError)" in caplog.text
    assert "T1" not in caplog.text and "T2" not in caplog.text
    assert watcher.check() is None  # not retried until the files change again


def test_settings_a_running_process_cannot_take_over(tmp_path: Path) -> None:
    def config(**sidecar: object):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"sidecar": sidecar}))
        return load_config(path, environ={})

    base = config()
    assert restart_needed(base, config(enforce=False)) is None
    assert restart_needed(base, config(listen="127.0.0.1:1")) == "sidecar.listen"
    assert restart_needed(base, config(adminListen="127.0.0.1:1")) == "sidecar.adminListen"
    assert restart_needed(base, config(rateLimit={"maxEntries": 5})) == "sidecar.rateLimit"
    assert restart_needed(base, config(eventLoop="asyncio")) == "sidecar.eventLoop"


def test_the_readme_names_every_setting_a_reload_refuses() -> None:
    """An operator rotating a pinned certificate read that a reload takes it (review)."""
    from pydantic.alias_generators import to_camel

    from sidecar.runtime import RESTART_SETTINGS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    listed = re.search(r"changes a setting a running process cannot take over \(([^)]*)\)", readme)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed[1])) == {to_camel(name) for name in RESTART_SETTINGS}


def test_a_change_to_a_file_the_gateways_config_includes_is_reloaded(tmp_path: Path) -> None:
    (tmp_path / "tools.json5").write_text("{deny: ['canvas']}")
    _, watcher, applied = watching_gateway_file(tmp_path, "{gateway: {auth: {token: 'T'}}, tools: {$include: './tools.json5'}}")
    (tmp_path / "tools.json5").write_text("{deny: ['browser']}")
    assert watcher.check() is True
    assert applied[0].config.rules.tools["deny"] == ["browser"]


async def test_a_change_of_the_gateways_auth_limits_applies_at_once_to_the_failures_on_record(tmp_path: Path) -> None:
    """The gateway applies gateway.auth.rateLimit live, to the failures it holds; the sidecar kept
    its start-up limits until a restart (live-state red team: the gateway locked a guesser out at
    its 4th failure, the sidecar at its 21st). The rest of the edit (a rotated token) applies too."""
    gateway_file, watcher, applied = watching_gateway_file(tmp_path, "{gateway: {auth: {token: 'T1', rateLimit: {maxAttempts: 20}}}}")
    limiter = watcher.runtime.failure_limiter
    for _ in range(4):
        await limiter.record_failure("203.0.113.7")
    assert (await limiter.check("203.0.113.7")).allowed
    gateway_file.write_text("{gateway: {auth: {token: 'T2', rateLimit: {maxAttempts: 3.5, lockoutMs: 60000.9}}}}")
    assert watcher.check() is True
    (runtime,) = applied
    assert runtime.config.secrets.token == "T2"
    assert runtime.failure_limiter is limiter  # counts and lockouts carry over
    assert (limiter.max_attempts, limiter.lockout_ms) == (4, 60_000)  # read as the gateway reads them
    assert await limiter.check("203.0.113.7") == LimitVerdict(False, retry_after_s=60)
    assert (await limiter.check("198.51.100.1")).allowed


def open_sockets() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


async def test_closing_a_runtime_hangs_up_on_the_shared_redis(tmp_path: Path, redis_url: str) -> None:
    """check-config builds the runtime to try its storage, then closes it, as a shutdown does:
    each limiter holds its own connections, and none is left open."""
    config_path = tmp_path / "sidecar.json"
    config_path.write_text(json.dumps({"gateway": {"auth": {"token": "T"}},
                                       "sidecar": {"rateLimit": {"storage": redis_url, "requests": {"limit": "10/minute"}}}}))
    before = open_sockets()
    runtime = build_runtime(load_config(config_path, environ={}))
    assert runtime.request_limiter is not None
    await runtime.failure_limiter.record_failure("203.0.113.7")
    failures_connected = open_sockets()
    assert (await runtime.request_limiter.hit("caller")).allowed
    assert open_sockets() > failures_connected > before
    await runtime.aclose()
    assert open_sockets() == before


async def test_the_rate_limit_settings_reach_the_limiters_on_the_runtimes_clock(tmp_path: Path) -> None:
    """Building the runtime is where each setting meets its limiter: every one below changes what
    a caller gets (loopback delays, the per-address and per-tool counts, the clock a lockout ends by)."""
    config_path = tmp_path / "sidecar.json"
    config_path.write_text(json.dumps({
        "gateway": {"auth": {"token": "T", "rateLimit": {"maxAttempts": 1, "windowMs": 60_000, "lockoutMs": 60_000}}},
        "sidecar": {"rateLimit": {"loopbackDelayBaseMs": 100, "loopbackDelayMaxMs": 150, "maxEntries": 1,
                                  "requests": {"limit": "1/minute", "per": "ip", "perTool": True}}}}))
    now = [1_000_000.0]
    runtime = build_runtime(load_config(config_path, environ={}), clock=lambda: now[0])
    failures, requests = runtime.failure_limiter, runtime.request_limiter
    assert requests is not None
    assert [await failures.record_failure("127.0.0.1") for _ in range(3)] == [0.1, 0.15, 0.15]
    await failures.record_failure("203.0.113.7")
    assert not (await failures.check("203.0.113.7")).allowed
    await failures.record_failure("203.0.113.8")  # no room beside a live lockout (maxEntries 1):
    assert not (await failures.check("198.51.100.9")).allowed  # every client not tracked is refused
    assert (await requests.hit("alice", "read", client_ip="203.0.113.7")).allowed
    assert not (await requests.hit("bob", "read", client_ip="203.0.113.7")).allowed  # one address, one count
    assert (await requests.hit("bob", "write", client_ip="203.0.113.7")).allowed  # another tool, another count
    now[0] += 61
    assert (await failures.check("203.0.113.7")).allowed
    assert (await failures.check("198.51.100.9")).allowed
    assert (await requests.hit("alice", "read", client_ip="203.0.113.7")).allowed
    await runtime.aclose()


async def test_the_storage_password_reaches_both_limiters(tmp_path: Path) -> None:
    """A Redis with requirepass and the password in `storagePasswordFile`, failClosed: each
    limiter counts in that Redis (a limiter without the password would answer `unavailable`)."""
    (tmp_path / "redis-password").write_text("redis-pw\n")
    with RedisServer(password="redis-pw") as server:
        config_path = tmp_path / "sidecar.json"
        config_path.write_text(json.dumps({"gateway": {"auth": {"token": "T", "rateLimit": {"maxAttempts": 1}}},
                                           "sidecar": {"rateLimit": {
                                               "storage": server.url, "storagePasswordFile": str(tmp_path / "redis-password"),
                                               "failClosed": True, "requests": {"limit": "1/minute", "per": "ip"}}}}))
        runtime = build_runtime(load_config(config_path, environ={}))
        assert runtime.request_limiter is not None
        await runtime.failure_limiter.record_failure("203.0.113.7")
        locked = await runtime.failure_limiter.check("203.0.113.7")
        assert not locked.allowed and not locked.unavailable
        first, second = [await runtime.request_limiter.hit("alice", "read", client_ip="203.0.113.7") for _ in range(2)]
        assert first.allowed and not second.allowed and not second.unavailable
        await runtime.aclose()


async def test_fail_closed_reaches_both_limiters(tmp_path: Path) -> None:
    """Nothing listens on the storage's port: with failClosed each limiter answers `unavailable`
    (503) rather than counting on a memory of its own."""
    config_path = tmp_path / "sidecar.json"
    config_path.write_text(json.dumps({"gateway": {"auth": {"token": "T"}}, "sidecar": {"rateLimit": {
        "storage": "redis://127.0.0.1:1", "failClosed": True, "requests": {"limit": "10/minute"}}}}))
    runtime = build_runtime(load_config(config_path, environ={}))
    assert runtime.request_limiter is not None
    assert (await runtime.failure_limiter.check("203.0.113.7")).unavailable
    assert (await runtime.request_limiter.hit("alice", "read", client_ip="203.0.113.7")).unavailable
    await runtime.aclose()


def test_every_identity_header_any_version_named_stays_stripped(tmp_path: Path) -> None:
    """The gateway applies its file on its own schedule, or not at all, and may apply one the
    sidecar refuses: a header either side was ever told carries an identity never comes from the
    client (red team: a caller named any allowed user through the header the sidecar forgot)."""
    base = "{gateway: {trustedProxies: ['127.0.0.1'%s], auth: {mode: 'trusted-proxy', trustedProxy: {userHeader: '%s'}}}}"
    gateway_file, watcher, applied = watching_gateway_file(tmp_path, base % ("", "X-Auth-User"),
                                                           "  upstreamAuth: {userHeader: x-upstream-user}\n")
    assert watcher.runtime.pipeline.identity_headers == {"x-auth-user", "x-upstream-user"}
    gateway_file.write_text(base % ("", " x-forwarded-user "))
    assert watcher.check() is True
    assert applied[-1].pipeline.identity_headers == {"x-auth-user", "x-forwarded-user", "x-upstream-user"}
    gateway_file.write_text(base % (", 'fe80::1%eth0'", "x-remote-user"))  # a zone index: the gateway matches nothing by it, the sidecar refuses
    assert watcher.check() is False
    assert watcher.runtime.pipeline.identity_headers == {"x-auth-user", "x-forwarded-user", "x-remote-user", "x-upstream-user"}
    gateway_file.write_text("{gateway: {auth: {mode: 'trusted-proxy', trustedProxy: {userHeader: 'x-broken'")  # unparsable
    assert watcher.check() is False
    assert "x-broken" not in watcher.runtime.pipeline.identity_headers


def test_a_half_written_file_is_refused_and_the_watch_goes_on(tmp_path: Path) -> None:
    """A split multi-byte character, read between two writes: the lenient read of the identity
    header names raised out of check(), and the file watcher died with it (review)."""
    gateway_file, watcher, applied = watching_gateway_file(tmp_path, "{gateway: {auth: {token: 'T1'}}}")
    gateway_file.write_bytes("{gateway: {auth: {token: 'T2é".encode()[:-1])
    assert watcher.check() is False
    gateway_file.write_text("{gateway: {auth: {token: 'T2'}}}")
    assert watcher.check() is True and applied[-1].config.secrets.token == "T2"


def test_a_header_the_sidecar_writes_itself_is_never_taken_for_an_identity_header(tmp_path: Path) -> None:
    """An edit naming Host as the identity is refused; had its name been kept, every forwarded
    request would have lost its Host until a restart (review)."""
    base = "{gateway: {trustedProxies: ['127.0.0.1'], auth: {mode: 'trusted-proxy', trustedProxy: {userHeader: '%s'}}}}"
    gateway_file, watcher, _ = watching_gateway_file(tmp_path, base % "x-auth-user")
    gateway_file.write_text(base % "Host")
    assert watcher.check() is False
    assert watcher.runtime.pipeline.identity_headers == {"x-auth-user"}


def test_identity_header_names_are_kept_across_restarts_in_the_runtime_directory(tmp_path: Path) -> None:
    memory = IdentityHeaderMemory(tmp_path / "run")
    assert memory.recall() == frozenset()
    memory.keep(frozenset({"x-auth-user", "x-forwarded-user"}))
    assert IdentityHeaderMemory(tmp_path / "run").recall() == {"x-auth-user", "x-forwarded-user"}
    memory.path.write_text(json.dumps(["X-Remote-User", "host", 5, "no spaces allowed", ""]))
    assert IdentityHeaderMemory(tmp_path / "run").recall() == {"x-remote-user"}  # only what a config could name


def test_a_refused_edit_naming_another_file_is_not_refused_again_until_a_file_changes(files: tuple[Path, Path]) -> None:
    """Watching the serving config's files, an edit refused that named another token file differed
    from them at every check: refused, logged and counted again at every poll (mutation testing)."""
    config_path, token = files
    applied: list[Runtime] = []
    watcher = reloader(config_path, applied)
    rotated = token.with_name("token.new")
    rotated.write_text("T2\n")
    rotated.with_name("token.new.old").write_text("T1\n")
    write_config(config_path, rotated, listen="127.0.0.1:1")
    before = counted("rejected")
    assert [watcher.check() for _ in range(3)] == [False, None, None]
    assert counted("rejected") == before + 1
    rotated.write_text("T3\n")  # a file of the refused edit is watched: it is tried again
    assert watcher.check() is False
    write_config(config_path, rotated)
    assert watcher.check() is True and applied[-1].config.secrets.token == "T3"
    assert watcher.check() is None


def test_identity_header_names_are_written_once_per_change_into_a_private_directory(tmp_path: Path) -> None:
    """Kept at every reload: the same names are not written again; a runtime directory not there
    yet is made, readable by the sidecar alone, and the file is found there after a restart."""
    memory = IdentityHeaderMemory(tmp_path / "var" / "run")
    memory.keep(frozenset({"x-auth-user"}))
    assert json.loads((tmp_path / "var" / "run" / "identity-headers.json").read_text()) == ["x-auth-user"]
    assert (tmp_path / "var" / "run").stat().st_mode & 0o777 == 0o700
    memory.path.unlink()
    memory.keep(frozenset({"x-auth-user"}))
    assert not memory.path.exists()
    memory.keep(frozenset({"x-auth-user", "x-remote-user"}))  # the directory is there now
    assert IdentityHeaderMemory(tmp_path / "var" / "run").recall() == {"x-auth-user", "x-remote-user"}


def test_identity_header_names_that_cannot_be_kept_are_said_and_tried_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "run").write_text("a file where the directory should be")
    memory = IdentityHeaderMemory(tmp_path / "run")
    memory.keep(frozenset({"x-auth-user"}))
    assert "cannot keep the identity header names in" in caplog.text
    (tmp_path / "run").unlink()
    memory.keep(frozenset({"x-auth-user"}))
    assert memory.recall() == {"x-auth-user"}


@pytest.mark.parametrize("kept", ['"x-remote-user"', '{"x-remote-user": 1}', "null"])
def test_identity_header_names_are_recalled_only_from_a_list(tmp_path: Path, kept: str) -> None:
    """A string would have been read as one-letter header names, an object as its keys."""
    memory = IdentityHeaderMemory(tmp_path)
    memory.path.write_text(kept)
    assert memory.recall() == frozenset()


def test_a_refusal_for_several_reasons_names_each_apart(files: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """An operator reading the log finds every key the edit got wrong, one after another."""
    config_path, _ = files
    watcher = reloader(config_path, [])
    config_path.write_text(json.dumps({"sidecar": {"enforce": "maybe", "shadowLines": "many"}}))
    assert watcher.check() is False
    refusal = next(r.getMessage() for r in caplog.records if "keeps serving" in r.getMessage())
    assert re.search(r"keeps serving: sidecar\.enforce: [^;]+; sidecar\.shadowLines: ", refusal), refusal
