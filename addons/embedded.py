"""Runs the sidecar on an embedded mitmproxy Master carrying only the addons it needs.

Measured ~1.8x the throughput of mitmdump's ~35-addon chain (perf-baseline.md). Reverse mode,
lazy upstream connections (a refused request never opens one), no flow retention (no view
addon), no implicit ~/.mitmproxy config, inbound header validation left on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from prometheus_client import start_http_server

from sidecar.config import Config, split_host_port
from sidecar.logging_limits import limit_library_logs
from sidecar.metrics import REGISTRY
from sidecar.runtime import build_runtime

from .tools_invoke import REQUIRED_OPTIONS, ToolsInvokeGuard

log = logging.getLogger("sidecar")


def build_master(config: Config, guard: ToolsInvokeGuard) -> Master:
    settings = config.sidecar
    settings.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    confdir = settings.runtime_dir / "mitmproxy"
    confdir.mkdir(exist_ok=True, mode=0o700)
    host, port = split_host_port(settings.listen)
    opts = options.Options()
    master = Master(opts, with_termlog=False)
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(), guard)
    opts.update(
        confdir=str(confdir),
        mode=[f"reverse:{settings.upstream}"],
        listen_host=host,
        listen_port=port,
        validate_inbound_headers=True,
        **REQUIRED_OPTIONS,  # also applied by the guard itself, but set before the first flow
        http2=False,  # the gateway speaks HTTP/1.1; one parser, one set of rules
        tcp_timeout=max(600, int(settings.timeouts.upstream_read_seconds) + 60),
    )
    return master


def _listening_url(master: Master) -> str | None:
    server = master.addons.get("proxyserver")
    addrs = server.listen_addrs() if server else []
    if not addrs:
        return None
    host, port = addrs[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _ignore_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def _run(config: Config, on_ready: Callable[[str], None] | None) -> int:
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no per-connection chatter
    limit_library_logs()
    runtime = build_runtime(config)
    guard = ToolsInvokeGuard(runtime)
    master = build_master(config, guard)
    loop = asyncio.get_running_loop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    task = asyncio.create_task(master.run())
    url = None
    for _ in range(500):
        if task.done():
            break
        url = _listening_url(master)
        if url:
            break
        await asyncio.sleep(0.01)
    if url is None:
        master.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        log.error("sidecar failed to listen on %s", config.sidecar.listen)
        return 1
    if config.sidecar.metrics_listen:
        metrics_host, metrics_port = split_host_port(config.sidecar.metrics_listen)
        metrics_server, _ = start_http_server(metrics_port, metrics_host, registry=REGISTRY)
        print(f"openclaw-sidecar metrics on http://{metrics_host}:{metrics_server.server_port}/metrics", flush=True)
    log.info("sidecar listening on %s, forwarding to %s (auth mode %s)", url, config.sidecar.upstream, config.secrets.mode)
    print(f"openclaw-sidecar listening on {url}", flush=True)
    if on_ready is not None:
        on_ready(url)
    try:
        await task
    finally:
        # Connections still open at shutdown are cancelled while asyncio.run winds down (after
        # the master restored its own handler); asyncio would log a traceback for each one.
        loop.set_exception_handler(_ignore_cancellations)
        await runtime.aclose()
    log.info("sidecar stopped")
    return 0


def serve(config: Config, on_ready: Callable[[str], None] | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    return asyncio.run(_run(config, on_ready))
