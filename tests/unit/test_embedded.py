"""addons/embedded.py: the heap settling (what lives on is frozen, what a reload replaced is
freed), the hook stages the embedded Master skips, and `serve` itself: where it listens, the
drain on SIGTERM, and a refusal to start (exit 1) when a port it needs is taken."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import signal
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import certifi
import httpx
import pytest
import uvloop
from mitmproxy import http, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.utils import asyncio_utils

from addons import compat
from addons.embedded import (UpstreamTls, _ignore_cancellations, _OwnListenErrors, build_master, event_loop_factory, serve,
                             settle_heap, take_over)
from addons.tools_invoke import REQUIRED_OPTIONS
from sidecar.config import Config, load_config
from sidecar.metrics import AUDIT_LINES_DROPPED
from tests.builders import write_config
from tests.ports import free_port


class Runtime:
    """Stands in for a runtime: a cycle, as real object graphs have, so only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_settling_freezes_what_is_alive_and_a_replaced_runtime_is_freed() -> None:
    current = Runtime()
    settle_heap()
    try:
        # Out of every generation the collector walks (the freeze count alone proves nothing:
        # this Python reports a few hundred frozen objects after any full collection).
        assert not any(obj is current for generation in range(3) for obj in gc.get_objects(generation))
        replaced = weakref.ref(current)
        current = Runtime()  # a reload swapped it in; the old one is garbage now
        settle_heap()
        assert replaced() is None  # not frozen for good with the rest
    finally:
        gc.unfreeze()


class HookRecorder:
    """Stands where the guard stands: answers /early in requestheaders and /late in request,
    and records each request hook it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.seen.append("requestheaders")
        if flow.request.path == "/early":
            flow.response = http.Response.make(403, b'{"answered":"early"}', {"content-type": "application/json"})

    def request(self, flow: http.HTTPFlow) -> None:
        self.seen.append("request")
        if flow.request.path == "/late":
            flow.response = http.Response.make(404, b'{"answered":"late"}', {"content-type": "application/json"})

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.seen.append("responseheaders")

    def response(self, flow: http.HTTPFlow) -> None:
        self.seen.append("response")


async def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request in turn on one kept-alive connection, and each whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
            answers.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return answers


async def test_an_answer_set_at_the_head_skips_the_request_stages_and_keeps_the_connection(tmp_path: Path) -> None:
    """skip_request_stages_of_head_answers: a response set in requestheaders is sent after the
    body is read, with only the response hook after it; one set in request takes upstream's
    path. Real sockets, mitmproxy's own HTTP/1 layers, the embedded Master's chain."""
    compat.skip_request_stages_of_head_answers()
    recorder = HookRecorder()
    master = Master(options.Options(), with_termlog=False)
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(), recorder)
    master.options.update(confdir=str(tmp_path), mode=["reverse:http://127.0.0.1:9"], listen_host="127.0.0.1",
                          listen_port=0, http2=False, connection_strategy="lazy")
    running = asyncio.create_task(master.run())
    try:
        while not (addrs := master.addons.get("proxyserver").listen_addrs()):
            await asyncio.sleep(0.01)
        body = b'{"tool":"exec"}'
        post = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        early, late, again = await _exchange(addrs[0][1], [post % (b"/early", len(body), body),
                                                           post % (b"/late", len(body), body),
                                                           post % (b"/early", 0, b"")])
        assert early.startswith(b"HTTP/1.1 403 ") and early.endswith(b'{"answered":"early"}')
        assert late.startswith(b"HTTP/1.1 404 ") and late.endswith(b'{"answered":"late"}')
        assert again.startswith(b"HTTP/1.1 403 ")
        assert recorder.seen == ["requestheaders", "response",
                                 "requestheaders", "request", "responseheaders", "response",
                                 "requestheaders", "response"]
    finally:
        master.shutdown()
        await running


class Guard:
    """Stands where the guard stands in the chain."""


@pytest.mark.parametrize("upstream, tls", [("http://127.0.0.1:9", []), ("https://127.0.0.1:9", [UpstreamTls])])
async def test_in_the_embedded_chain_only_the_guard_has_the_skipped_hooks(tmp_path: Path, upstream: str, tls: list) -> None:
    """What makes skipping `request` and `responseheaders` for head answers safe: no other addon
    of build_master's chain acts there (tests/unit/test_adapter.py pins the guard's early return).
    TLS settings are there only for an https:// upstream, and without mitmproxy's CRL route."""
    config = load_config(write_config(tmp_path / "sidecar.json", {
        "sidecar": {"listen": "127.0.0.1:0", "upstream": upstream, "runtimeDir": str(tmp_path / "run")},
        "gateway": {"auth": {"mode": "token", "token": "t"}}}), environ={})
    guard = Guard()
    master = build_master(config, guard)  # type: ignore[arg-type]
    acting = [addon for addon in master.addons.chain
              if getattr(addon, "request", None) or getattr(addon, "responseheaders", None)]
    assert acting == []  # and the guard, which here has none
    assert [type(addon) for addon in master.addons.chain if isinstance(addon, tlsconfig.TlsConfig)] == tls
    assert guard in master.addons.chain


@pytest.mark.parametrize("upstream, ca_file", [("http://127.0.0.1:9", None), ("https://gateway.internal:8443", certifi.where())])
async def test_the_master_serves_the_listen_address_in_reverse_to_the_upstream_with_the_sidecars_rules(
        tmp_path: Path, upstream: str, ca_file: str | None) -> None:
    """The options that make the embedded Master this proxy: mitmproxy's own state in a private
    directory under the runtime dir, one reverse mode, inbound header validation kept on, HTTP/2
    off (one parser and one set of rules, as the gateway speaks HTTP/1.1), the guard's required
    options set before the first flow, the upstream CA file, and the watchdog past the read timeout."""
    config = load_config(write_config(tmp_path / "sidecar.json", {
        "sidecar": {"listen": "127.0.0.2:18790", "upstream": upstream, "runtimeDir": str(tmp_path / "state" / "run"),
                    "timeouts": {"upstreamReadSeconds": 900}, **({"upstreamTls": {"caFile": ca_file}} if ca_file else {})},
        "gateway": {"auth": {"mode": "token", "token": "t"}}}), environ={})
    build_master(config, Guard())  # type: ignore[arg-type]
    opts = build_master(config, Guard()).options  # type: ignore[arg-type]  # a restart finds its directories there
    confdir = tmp_path / "state" / "run" / "mitmproxy"
    assert opts.confdir == str(confdir)
    assert [stat.S_IMODE(path.stat().st_mode) for path in (confdir.parent, confdir)] == [0o700, 0o700]
    assert (opts.mode, opts.listen_host, opts.listen_port) == ([f"reverse:{upstream}"], "127.0.0.2", 18790)
    assert (opts.validate_inbound_headers, opts.http2, opts.tcp_timeout) == (True, False, 960)
    assert {name: getattr(opts, name) for name in REQUIRED_OPTIONS} == REQUIRED_OPTIONS
    assert opts.ssl_verify_upstream_trusted_ca == ca_file


def test_only_mitmproxys_own_bind_error_is_kept_out_of_the_log() -> None:
    """The sidecar says why it cannot listen in its own terms; anything else mitmproxy's proxy
    server says is still logged."""
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("mitmproxy.addons.proxyserver", logging.ERROR, __file__, 1, message, None, None)

    own = _OwnListenErrors()
    assert not own.filter(record("Reverse proxy failed to listen on 127.0.0.1:8080 with [Errno 98]"))
    assert own.filter(record("Warning: Running proxyserver without nextlayer addon!"))


def test_at_shutdown_only_cancelled_connections_go_unreported(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            _ignore_cancellations(loop, {"message": "a connection cancelled", "exception": asyncio.CancelledError()})
            _ignore_cancellations(loop, {"message": "a real failure", "exception": ValueError("x")})
    finally:
        loop.close()
    assert caplog.messages == ["a real failure"]


class ReloadedGuard(Guard):
    def __init__(self) -> None:
        self.runtimes: list[object] = []

    def use_runtime(self, runtime: object) -> None:
        self.runtimes.append(runtime)


async def test_a_reload_takes_over_the_watchdog_and_the_log_level(tmp_path: Path) -> None:
    """Both were set once at start-up: a reload raising the upstream timeout past 540 s still cut
    slow answers at 600 s with no answer, and a new log level was reported applied and ignored (review)."""
    def config(**sidecar: object) -> Config:
        return load_config(write_config(tmp_path / "sidecar.json", {
            "sidecar": {"listen": "127.0.0.1:0", "runtimeDir": str(tmp_path / "run"), **sidecar},
            "gateway": {"auth": {"mode": "token", "token": "t"}}}), environ={})

    guard = ReloadedGuard()
    master = build_master(config(), guard)  # type: ignore[arg-type]
    assert master.options.tcp_timeout == 600
    root = logging.getLogger()
    level = root.level
    try:
        new = SimpleNamespace(config=config(timeouts={"upstreamReadSeconds": 900}, logLevel="ERROR"))
        take_over(master, guard, new)  # type: ignore[arg-type]
        assert (master.options.tcp_timeout, root.level, guard.runtimes) == (960, logging.ERROR, [new])
    finally:
        root.setLevel(level)


def test_on_uvloop_the_masters_eager_task_factory_takes_the_loops_call() -> None:
    """uvloop >= 0.23 on Python 3.13+ calls the task factory with `eager_start=None`: asyncio's
    factory refused it on 3.13 (the master's first task raised TypeError and the sidecar never
    listened) and on 3.14 reads it as "not eager"."""
    loop = event_loop_factory("uvloop")()
    ran: list[str] = []

    async def hook(name: str) -> None:
        ran.append(name)

    async def main() -> None:
        with asyncio_utils.set_eager_task_factory():  # as the master runs
            factory = loop.get_task_factory()
            assert factory is not None
            for name, keywords in (("3.12", {"context": None}), ("3.13", {"context": None, "eager_start": None})):
                task = factory(loop, hook(name), **keywords)
                assert task.done(), name  # ran at once, as mitmproxy's hook dispatch expects
            lazy = factory(loop, hook("asked not to be eager"), eager_start=False)
            assert not lazy.done()
            await lazy
            task = asyncio.create_task(hook("asyncio.create_task"))
            assert task.done()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert ran == ["3.12", "3.13", "asked not to be eager", "asyncio.create_task"]


def test_the_standard_librarys_loop_is_had_by_naming_it() -> None:
    assert event_loop_factory("asyncio") is asyncio.new_event_loop
    assert event_loop_factory("uvloop") is not asyncio.new_event_loop


def test_a_master_that_fails_to_start_is_logged_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """It was reported as "no listener came up", its exception dropped."""
    async def failing_run(self: Master) -> None:
        raise RuntimeError("the master's own fault")

    monkeypatch.setattr(Master, "run", failing_run)
    config = load_config(write_config(tmp_path / "sidecar.json", {
        "sidecar": {"listen": "127.0.0.1:0", "adminListen": "127.0.0.1:0", "runtimeDir": str(tmp_path / "run")},
        "gateway": {"auth": {"mode": "token", "token": "t"}}}), environ={})
    with caplog.at_level(logging.ERROR):
        assert serve(config) == 1
    failures = [r for r in caplog.records if r.getMessage() == "the proxy failed to start"]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "the master's own fault"
    assert not any("cannot listen" in r.getMessage() for r in caplog.records)


class HeldUpstream(ThreadingHTTPServer):
    """An upstream that answers GETs (the readiness check) at once and holds each POST until
    `release` is set: a call in flight for as long as a test needs, with no clock involved."""

    def __init__(self) -> None:
        self.received, self.release = threading.Event(), threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                upstream.received.set()
                upstream.release.wait()
                self._answer()

            def _answer(self) -> None:
                body = b'{"ok":true,"result":{}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """The sidecar may have cut the call this upstream held: nothing to write it to."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    server = HeldUpstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


class Sidecar:
    """`serve` in this process, as `openclaw-sidecar run` calls it: a scenario runs in a thread once
    it announces its address, and signals are real signals to this process."""

    def __init__(self, tmp_path: Path, upstream: HeldUpstream, gateway: dict | None = None, **sidecar: object) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.config_path = write_config(tmp_path / "sidecar.json", {
            "sidecar": {"listen": f"127.0.0.1:{self.port}", "adminListen": f"127.0.0.1:{self.admin_port}",
                        "upstream": upstream.url, "runtimeDir": str(tmp_path / "run"), **sidecar},
            "gateway": gateway or {"auth": {"mode": "token", "token": "t"}}})
        self.upstream = upstream
        self.announced: list[str] = []
        self.loops: list[asyncio.AbstractEventLoop] = []  # the loop it served on

    def serve(self, scenario: Callable[[], None]) -> int:
        failure: list[BaseException] = []

        def run() -> None:
            try:
                scenario()
            except BaseException as exc:  # stop, so that serve returns and the failure is raised
                failure.append(exc)
                self.upstream.release.set()
                os.kill(os.getpid(), signal.SIGTERM)

        def on_ready(url: str) -> None:
            self.announced.append(url)
            self.loops.append(asyncio.get_running_loop())
            threading.Thread(target=run, daemon=True).start()

        code = serve(load_config(self.config_path, environ={}), on_ready=on_ready, config_path=self.config_path)
        if failure:
            raise failure[0]
        return code

    def invoke(self, timeout: float = 10) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.port}/tools/invoke", json={"tool": "agents_list"},
                          headers={"Authorization": "Bearer t"}, timeout=timeout)

    def readyz(self) -> tuple[int, str]:
        response = httpx.get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=5)
        return response.status_code, response.json()["reason"]


def _until(predicate: Callable[[], object]) -> None:
    while not predicate():
        time.sleep(0.02)


def test_sigterm_drains_the_call_in_flight_then_returns_zero(tmp_path: Path, upstream: HeldUpstream,
                                                           caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Kubernetes stops a pod with SIGTERM: the sidecar reports itself not ready, takes no new
    connection, and finishes the call it forwarded before it stops; it listened where it was told,
    said so, audited the call where it was told, and kept mitmproxy's per-connection chatter out."""
    sidecar = Sidecar(tmp_path, upstream, drainSeconds=30, auditLog=str(tmp_path / "audit.jsonl"))
    answers: list[httpx.Response] = []

    def scenario() -> None:
        call = threading.Thread(target=lambda: answers.append(sidecar.invoke()))
        call.start()
        upstream.received.wait()
        assert sidecar.readyz() == (200, "ok")
        os.kill(os.getpid(), signal.SIGTERM)
        _until(lambda: sidecar.readyz() == (503, "draining"))
        with pytest.raises(httpx.ConnectError):
            sidecar.invoke()
        upstream.release.set()
        call.join()

    with caplog.at_level(logging.DEBUG):
        assert sidecar.serve(scenario) == 0
    url = f"http://127.0.0.1:{sidecar.port}"
    assert sidecar.announced == [url] and isinstance(sidecar.loops[0], uvloop.Loop)  # sidecar.eventLoop's default
    (answer,) = answers
    assert answer.status_code == 200 and answer.json() == {"ok": True, "result": {}}
    assert answer.headers["connection"] == "close"
    out, err = capsys.readouterr()
    assert out == ""  # stdout is the audit log's default: mitmproxy's terminal log stays off it
    assert err.splitlines() == [
        f"openclaw-sidecar admin on http://127.0.0.1:{sidecar.admin_port} (/healthz, /readyz, /metrics)",
        f"openclaw-sidecar listening on {url}"]
    assert f"sidecar listening on {url}, forwarding to {upstream.url} (auth mode token, uvloop event loop)" in caplog.messages
    assert "draining: finishing in-flight requests for up to 30.0s" in caplog.messages
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("mitmproxy") and r.levelno < logging.WARNING]
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert (json.loads(line)["tool"], json.loads(line)["status"]) == ("agents_list", 200)


@pytest.mark.parametrize("second_signal", [False, True], ids=["deadline", "second-signal"])
def test_a_drain_ends_at_its_deadline_or_a_second_signal_and_says_what_it_cut(
        tmp_path: Path, upstream: HeldUpstream, caplog: pytest.LogCaptureFixture, second_signal: bool) -> None:
    """The call held upstream is never finished here: only the deadline (0 s) or the second signal
    stops the drain. The call is audited once, as cut off: its client's 502 as the stop cancels
    its connection is no second decision (it was logged as an upstream failure, or lost unsaid)."""
    audit_log = tmp_path / "audit.jsonl"
    sidecar = Sidecar(tmp_path, upstream, drainSeconds=3600 if second_signal else 0, auditLog=str(audit_log))
    dropped = AUDIT_LINES_DROPPED._value.get()

    def scenario() -> None:
        threading.Thread(target=lambda: _quietly(sidecar.invoke), daemon=True).start()
        upstream.received.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        if second_signal:
            _until(lambda: sidecar.readyz() == (503, "draining"))
            os.kill(os.getpid(), signal.SIGTERM)

    with caplog.at_level(logging.INFO):
        assert sidecar.serve(scenario) == 0
    why = "second stop signal" if second_signal else "drain deadline passed"
    assert f"{why}: stopping with forwarded call(s) in flight, 1 cut off (audited with outcome shutdown)" in caplog.messages
    assert "sidecar stopped" in caplog.messages
    (line,) = map(json.loads, audit_log.read_text().splitlines())
    assert (line["decision"], line["tool"], line["status"], line["outcome"]) == ("forwarded", "agents_list", None, "shutdown")
    assert AUDIT_LINES_DROPPED._value.get() == dropped


def _never() -> None:
    raise AssertionError("it served")


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass


@pytest.mark.parametrize("busy", ["listen", "adminListen"])
def test_a_taken_port_fails_closed_with_exit_1_and_frees_the_other(tmp_path: Path, upstream: HeldUpstream,
                                                                    caplog: pytest.LogCaptureFixture, busy: str) -> None:
    """Nothing is served, the reason is said in the sidecar's own terms, and the port it did take is
    given back (the admin listener was left bound)."""
    sidecar = Sidecar(tmp_path, upstream)
    ports = {"listen": sidecar.port, "adminListen": sidecar.admin_port}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[busy]))
        taken.listen()
        with caplog.at_level(logging.ERROR):
            assert sidecar.serve(_never) == 1
    assert sidecar.announced == []
    assert caplog.messages == [f"cannot listen on sidecar.{busy} 127.0.0.1:{ports[busy]}: Address already in use"
                               + (" (choose a free HOST:PORT with --listen or sidecar.listen)" if busy == "listen" else "")]
    for port in ports.values():
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))


def test_the_identity_header_names_are_kept_in_the_runtime_dir_from_the_start(tmp_path: Path, upstream: HeldUpstream) -> None:
    """Those recalled from an earlier run and the config's own, written once serving: a restarted
    sidecar strips both, whichever the gateway beside it still reads."""
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "run" / "identity-headers.json").write_text('["x-earlier-user"]')
    sidecar = Sidecar(tmp_path, upstream, gateway={"trustedProxies": ["127.0.0.1"], "auth": {
        "mode": "trusted-proxy", "trustedProxy": {"userHeader": "x-user"}}})
    assert sidecar.serve(lambda: os.kill(os.getpid(), signal.SIGTERM)) == 0
    assert json.loads((tmp_path / "run" / "identity-headers.json").read_text()) == ["x-earlier-user", "x-user"]
