"""Reference (c): a proxy hop written in Python without mitmproxy.

Each client connection gets its own upstream connection, and asyncio Protocols on uvloop (the
sidecar's default loop) relay the bytes. It is correct only for what row 3 sends: one keep-alive
client per connection in a closed loop, each request a head and a Content-Length body. It exists
to tell the cost of a Python hop from the cost of mitmproxy's layers.

With `--judge CONFIG` each request is judged by the sidecar's own Pipeline, built from the
sidecar's config file, and the upstream gets the head and body the pipeline rebuilt. A refusal
closes the connection. Nothing is audited. That is the pipeline's cost on a hop without mitmproxy,
not a proxy anyone should deploy.

    .venv/bin/python -m bench.python_hop [--judge CONFIG] LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import cast

import uvloop

from sidecar.config import load_config
from sidecar.pipeline import Pipeline, Refuse
from sidecar.runtime import build_runtime
from sidecar.view import RequestView


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, pipeline: Pipeline | None) -> None:
        self.upstream_port = upstream_port
        self.pipeline = pipeline
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what was to go upstream before its connection was up
        self.received = b""  # judging: the request not yet complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.peer = self.transport.get_extra_info("peername")[0]
        self.connecting = asyncio.get_running_loop().create_task(self._connect())  # held: the loop keeps tasks weakly

    async def _connect(self) -> None:
        try:
            upstream, _ = await asyncio.get_running_loop().create_connection(
                lambda: _Upstream(self.transport), "127.0.0.1", self.upstream_port)
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        upstream.write(b"".join(self.early))
        self.early.clear()

    def _send(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def data_received(self, data: bytes) -> None:
        if self.pipeline is None:
            self._send(data)
            return
        self.received += data
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            return
        request_line, *lines = self.received[:end].split(b"\r\n")
        method, target, _ = request_line.decode("latin-1").split(" ")
        view = RequestView(method, target, tuple((name, value.strip(b" \t")) for name, _, value in
                                                 (line.partition(b":") for line in lines)), self.peer)
        length = view.declared_length() or 0
        if len(self.received) < end + 4 + length:
            return
        body, self.received = self.received[end + 4:end + 4 + length], self.received[end + 4 + length:]
        self.judging = asyncio.get_running_loop().create_task(self._judge(self.pipeline, view, body))

    async def _judge(self, pipeline: Pipeline, view: RequestView, body: bytes) -> None:
        head_decision = await pipeline.on_head(view)
        decision = head_decision if isinstance(head_decision, Refuse) else await pipeline.on_body(head_decision, body)
        if isinstance(decision, Refuse):
            self.transport.close()
            return
        admitted = decision.admitted
        forwarded = body if decision.body is None else decision.body
        lines = [f"{view.method} {admitted.target} HTTP/1.1",
                *(f"{name}: {value}" for name, value in admitted.headers if name.lower() != "content-length"),
                f"Content-Length: {len(forwarded)}"]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + forwarded)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve(listen_port: int, upstream_port: int, pipeline: Pipeline | None) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port, pipeline),
                                                            "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", metavar="CONFIG", type=Path, help="judge each request with the sidecar's pipeline")
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    judge = build_runtime(load_config(args.judge)).pipeline if args.judge else None
    uvloop.run(_serve(args.listen_port, args.upstream_port, judge))
