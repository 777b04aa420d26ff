"""Reference (c): a proxy hop written in Python without mitmproxy, judging nothing.

Each client connection gets its own upstream connection and bytes are relayed both ways by
asyncio Protocols on uvloop, the sidecar's default loop. It is correct only for what row 3 sends
(one keep-alive client per connection, in a closed loop) and exists to tell the cost of a Python
hop from the cost of mitmproxy's layers: it sits between 3b-bare (mitmproxy) and 3b-native (nginx).

    .venv/bin/python -m bench.python_hop LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
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

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve(listen_port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port), "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
