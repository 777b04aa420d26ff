"""Runs the sidecar on an embedded mitmproxy Master carrying only the addons it needs.

Measured ~1.8x the throughput of mitmdump's ~35-addon chain (perf-baseline.md). Reverse mode,
lazy upstream connections (a refused request never opens one), no flow retention (no view
addon), no implicit ~/.mitmproxy config, inbound header validation left on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from mitmproxy import options, tls
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from OpenSSL import SSL, crypto

from sidecar import audit
from sidecar.admin import AdminServer, Health
from sidecar.config import Config, SidecarSettings, http_url, split_host_port
from sidecar.logging_limits import limit_library_logs
from sidecar.reload import IdentityHeaderMemory, Reloader
from sidecar.runtime import Runtime, build_runtime
from sidecar.upstream_tls import certificate_matches

from . import compat
from .tools_invoke import REQUIRED_OPTIONS, ToolsInvokeGuard

log = logging.getLogger("sidecar")
# Under the gateway's own delay before it applies a change to its file (a 200 ms settle, then a
# 300 ms debounce), so a new identity header name is stripped before the gateway reads it.
RELOAD_CHECK_SECONDS = 0.25


class UpstreamTls(tlsconfig.TlsConfig):
    """TLS towards an https:// upstream, and nothing else. The listening side never speaks TLS
    (compat.plain_http_listener), so mitmproxy's CRL route has nothing to serve: its `request`
    hook answered 200 with the CA's revocation list for any admitted path ending in
    /mitmproxy-<CA serial>.crl, on the gateway's behalf, and looked at every request to find it.

    With a pinned fingerprint (`sidecar.upstreamTls.fingerprint`) the upstream's certificate is
    trusted when it is that one certificate, whatever its chain or names, and refused during the
    handshake otherwise: no byte of a request reaches a server that is not the gateway."""

    request = None  # type: ignore[assignment]

    def __init__(self, pin: str | None) -> None:
        super().__init__()
        self.pin = pin

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        super().tls_start_server(tls_start)
        pin = self.pin
        if pin is None or tls_start.ssl_conn is None:
            return

        def pinned(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
            return depth > 0 or certificate_matches(cert.to_cryptography().public_bytes(Encoding.DER), pin)

        tls_start.ssl_conn.set_verify(SSL.VERIFY_PEER, pinned)


def build_master(config: Config, guard: ToolsInvokeGuard) -> Master:
    settings = config.sidecar
    settings.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    confdir = settings.runtime_dir / "mitmproxy"
    confdir.mkdir(exist_ok=True, mode=0o700)
    host, port = split_host_port(settings.listen)
    opts = options.Options()
    master = Master(opts, with_termlog=False)
    upstream_tls = [UpstreamTls(settings.upstream_tls.fingerprint)] if settings.upstream.startswith("https://") else []
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), *upstream_tls, guard)
    opts.update(
        confdir=str(confdir),
        mode=[f"reverse:{settings.upstream}"],
        listen_host=host,
        listen_port=port,
        validate_inbound_headers=True,
        **REQUIRED_OPTIONS,  # also applied by the guard itself, but set before the first flow
        http2=False,  # the gateway speaks HTTP/1.1; one parser, one set of rules
        ssl_verify_upstream_trusted_ca=str(settings.upstream_tls.ca_file) if settings.upstream_tls.ca_file else None,
        tcp_timeout=connection_watchdog_seconds(settings),
    )
    return master


def take_over(master: Master, guard: ToolsInvokeGuard, new: Runtime) -> None:
    """A reloaded runtime, in whole: the guard's, and beyond it new connections' watchdog (a raised
    upstream timeout was cut at the old one's 600 s, with no answer) and the log level (review)."""
    guard.use_runtime(new)
    master.options.update(tcp_timeout=connection_watchdog_seconds(new.config.sidecar))
    logging.getLogger().setLevel(new.config.sidecar.log_level)


def connection_watchdog_seconds(settings: SidecarSettings) -> int:
    """mitmproxy's tcp_timeout, its idle watchdog over a whole connection: past the upstream read
    timeout, so a slow answer gets the sidecar's 504 rather than a connection cut without one."""
    return max(600, int(settings.timeouts.upstream_read_seconds) + 60)


def _listening_url(master: Master) -> str | None:
    server = master.addons.get("proxyserver")
    addrs = server.listen_addrs() if server else []
    if not addrs:
        return None
    host, port = addrs[0][:2]
    return http_url(host, port)


def _listen_error(master: Master) -> OSError | None:
    """Why the proxy listener could not start (e.g. the port is taken), once mitmproxy knows."""
    server = master.addons.get("proxyserver")
    for instance in server.servers if server else ():
        if isinstance(instance.last_exception, OSError):
            return instance.last_exception
    return None


class _OwnListenErrors(logging.Filter):
    """mitmproxy's bind error suggests its own `--mode` flag; we say it in our terms instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to listen" not in record.getMessage()


def _ignore_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def _watch_files(reloader: Reloader, memory: IdentityHeaderMemory) -> None:
    while True:
        await asyncio.sleep(RELOAD_CHECK_SECONDS)
        try:
            reloader.check()
            memory.keep(reloader.runtime.pipeline.identity_headers)
        except Exception:  # the watcher must outlive any one bad look at the files
            log.exception("internal error while checking the config files for changes")


def settle_heap() -> None:
    """Objects alive once serving (imports, the runtime, route and tool tables: ~100k) live as
    long as the process or the runtime: frozen out of the collector's reach, so the full
    collections per-request garbage triggers stop walking them. Redone after a reload, so the
    replaced runtime can be freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _stop_now(master: Master, guard: ToolsInvokeGuard, why: str) -> None:
    """Stop with calls in flight: those forwarded are audited first, and the stop happens whatever that does."""
    try:
        log.warning("%s: stopping with forwarded call(s) in flight, %d cut off (audited with outcome shutdown)",
                    why, guard.abandon_in_flight())
    finally:
        master.shutdown()


async def _drain(master: Master, guard: ToolsInvokeGuard, health: Health, seconds: float) -> None:
    """Not ready, no new connections, WebSockets closed with 1001, in-flight requests finished
    (up to `seconds`), then stop."""
    health.draining = True
    log.warning("draining: finishing in-flight requests for up to %ss", seconds)
    guard.begin_drain()
    await master.addons.get("proxyserver").servers.update([])
    if not await guard.wait_idle(seconds):
        _stop_now(master, guard, "drain deadline passed")
        return
    master.shutdown()


async def _run(config: Config, config_path: Path | None, overrides: Mapping[str, Any],
               on_ready: Callable[[str], None] | None) -> int:
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no per-connection chatter
    logging.getLogger("mitmproxy.addons.proxyserver").addFilter(_OwnListenErrors())
    limit_library_logs()
    runtime = build_runtime(config)  # a ConfigError (storage, its password file) reaches the CLI
    audit.configure(config.sidecar.audit_log)
    guard = ToolsInvokeGuard(runtime)
    master = build_master(config, guard)
    compat.dispatch_hooks_directly(master.addons)  # the chain is final from here on
    compat.skip_request_stages_of_head_answers()
    health = Health(config.sidecar.upstream, config.sidecar.upstream_tls)
    try:
        admin = AdminServer(*split_host_port(config.sidecar.admin_listen), health)
    except OSError as exc:
        log.error("cannot listen on sidecar.adminListen %s: %s", config.sidecar.admin_listen, exc.strerror)
        await runtime.aclose()
        return 1
    admin.start()
    loop = asyncio.get_running_loop()
    def use_runtime(new: Runtime) -> None:
        take_over(master, guard, new)
        settle_heap()

    memory = IdentityHeaderMemory(config.sidecar.runtime_dir)
    runtime.pipeline.strip_identity_headers(memory.recall())
    memory.keep(runtime.pipeline.identity_headers)
    reloader = Reloader(config_path, overrides, runtime, apply=use_runtime)
    draining: list[asyncio.Task] = []

    def on_stop_signal() -> None:
        if draining:  # a second signal
            _stop_now(master, guard, "second stop signal")
            return
        draining.append(asyncio.create_task(_drain(master, guard, health, reloader.runtime.config.sidecar.drain_seconds)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, reloader.ask, "SIGHUP")
    task = asyncio.create_task(master.run())
    url, error = None, None
    for _ in range(500):
        if task.done():
            break
        url, error = _listening_url(master), _listen_error(master)
        if url or error:
            break
        await asyncio.sleep(0.01)
    if url is None:
        master.shutdown()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        admin.stop()
        if isinstance(outcome, Exception):
            log.error("the proxy failed to start", exc_info=outcome)
            return 1
        why = os.strerror(error.errno) if error is not None and error.errno else "no listener came up"
        log.error("cannot listen on sidecar.listen %s: %s (choose a free HOST:PORT with --listen or sidecar.listen)",
                  config.sidecar.listen, why)
        return 1
    health.listening = True
    settle_heap()
    watcher = asyncio.create_task(_watch_files(reloader, memory))
    # On stderr with the diagnostic log: stdout may be the audit log, one JSON object per line.
    print(f"openclaw-sidecar admin on {admin.url} (/healthz, /readyz, /metrics)", file=sys.stderr, flush=True)
    log.info("sidecar listening on %s, forwarding to %s (auth mode %s, %s event loop)", url, config.sidecar.upstream,
             config.secrets.mode, config.sidecar.event_loop)
    print(f"openclaw-sidecar listening on {url}", file=sys.stderr, flush=True)
    if on_ready is not None:
        on_ready(url)
    try:
        await task
    finally:
        # Connections still open at shutdown are cancelled while asyncio.run winds down (after
        # the master restored its own handler); asyncio would log a traceback for each one.
        loop.set_exception_handler(_ignore_cancellations)
        watcher.cancel()
        admin.stop()
        await reloader.runtime.aclose()
    log.info("sidecar stopped")
    return 0


def _eager_task_factory(loop: asyncio.AbstractEventLoop, coro: Any, *, eager_start: bool | None = None,
                        **kwargs: Any) -> asyncio.Task:
    """asyncio's eager task factory, also when called as uvloop >= 0.23 calls it on Python 3.13+:
    with `eager_start=None`, which 3.13's own factory refuses (TypeError: the master never starts)
    and 3.14's reads as "not eager" (mitmproxy's hooks would no longer run at once)."""
    return asyncio.Task(coro, loop=loop, eager_start=eager_start is not False, **kwargs)


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """`sidecar.eventLoop`: uvloop's libuv loop, or the standard library's. mitmproxy's master
    installs asyncio's eager task factory; on uvloop it gets one that takes uvloop's call."""
    if name != "uvloop":
        return asyncio.new_event_loop
    import uvloop

    class Loop(uvloop.Loop):  # type: ignore[misc]
        def set_task_factory(self, factory: Any) -> None:
            super().set_task_factory(_eager_task_factory if factory is asyncio.eager_task_factory else factory)

    return Loop


def serve(config: Config, on_ready: Callable[[str], None] | None = None, config_path: Path | None = None,
          overrides: Mapping[str, Any] | None = None) -> int:
    """Run until SIGINT/SIGTERM (then drain); SIGHUP or a changed file reloads `config_path`.
    Returns the process exit code."""
    try:
        return asyncio.run(_run(config, config_path, overrides or {}, on_ready),
                           loop_factory=event_loop_factory(config.sidecar.event_loop))
    finally:  # after asyncio.run: connections it cancels as it ends are still decided and audited
        audit.close()
