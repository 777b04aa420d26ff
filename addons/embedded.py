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
from mitmproxy.proxy.layers.http import HttpStream

from prometheus_client import start_http_server

from sidecar.body import MAX_BODY_BYTES
from sidecar.metrics import REGISTRY
from sidecar.config import Config, split_host_port
from sidecar.runtime import build_runtime

from .tools_invoke import ToolsInvokeGuard

log = logging.getLogger("sidecar")


def limit_request_bodies_only() -> None:
    """Apply mitmproxy's body_size_limit to request bodies only.

    The 2 MiB cap is the gateway's request rule; a tool result larger than that must still
    reach the client. mitmproxy applies one limit to both directions, so its size check is
    narrowed to requests here (mitmproxy is pinned < 13; tests cover both directions).
    """
    original = HttpStream.check_body_size
    if getattr(original, "_sidecar_requests_only", False):
        return

    def check_body_size(self: HttpStream, request: bool):  # type: ignore[no-untyped-def]
        if not request:
            return (yield from ())
        return (yield from original(self, request))

    check_body_size._sidecar_requests_only = True  # type: ignore[attr-defined]
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


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
        connection_strategy="lazy",
        keep_host_header=True,  # decide on the client's Host, as the gateway would
        # mitmproxy reads no body beyond this; the guard turns the overflow into the gateway's
        # JSON 413, and answers head refusals before this limit applies.
        body_size_limit=str(MAX_BODY_BYTES),
        validate_inbound_headers=True,
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


async def _run(config: Config, on_ready: Callable[[str], None] | None) -> int:
    limit_request_bodies_only()
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no per-connection chatter
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
        await runtime.aclose()
    log.info("sidecar stopped")
    return 0


def serve(config: Config, on_ready: Callable[[str], None] | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    return asyncio.run(_run(config, on_ready))
