"""A WebSocket RPC load client cheap enough not to be the limit: frames are pre-encoded (a zero
mask leaves the payload as is, so one batch of bytes is sent again and again), sent in windows
of `window` frames per connection and counted back by their headers only.

    python -m bench.ws_load --port P --method health [--connections 4] [--seconds 5]

prints one JSON line: frames answered and seconds. Also used in-process by the soak.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from typing import Any

from .plumbing import TOKEN

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SCOPES = ["operator.read", "operator.write"]


def client_frame(payload: dict[str, Any]) -> bytes:
    """A masked text frame with a zero mask key (RFC 6455 §5.3: any key is valid)."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    length = len(data)
    if length < 126:
        head = bytes([0x81, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + data


def request_frame(method: str, request_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "agents_list", "args": {}} if method == "tools.invoke" else {}
    return {"type": "req", "id": request_id, "method": method, "params": params}


CONNECT = client_frame({"type": "req", "id": "c1", "method": "connect", "params": {
    "minProtocol": 4, "maxProtocol": 4, "role": "operator", "scopes": SCOPES, "auth": {"token": TOKEN},
    "client": {"id": "gateway-client", "version": "1.0.0", "platform": "linux", "mode": "backend"}}})


class RpcConnection:
    """Upgrade, connect frame, then windows of request frames; counts server frames."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(UPGRADE)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:200]!r}")
        self.sock.sendall(CONNECT)
        self.read_frames(1)  # the echoed (rewritten) connect, or the gateway's answer

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def read_frames(self, count: int) -> None:
        seen = 0
        while seen < count:
            while len(self.buf) < 2:
                self._fill()
            opcode, length, offset = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if length == 126:
                while len(self.buf) < 4:
                    self._fill()
                length, offset = int.from_bytes(self.buf[2:4], "big"), 4
            elif length == 127:
                while len(self.buf) < 10:
                    self._fill()
                length, offset = int.from_bytes(self.buf[2:10], "big"), 10
            while len(self.buf) < offset + length:
                self._fill()
            if opcode == 0x8:
                raise ConnectionError(f"closed by the server: {self.buf[offset:offset + length]!r}")
            self.buf = self.buf[offset + length:]
            seen += opcode in (0x1, 0x2, 0x0)

    def exchange(self, batch: bytes, count: int) -> None:
        self.sock.sendall(batch)
        self.read_frames(count)

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x88\x82\0\0\0\0\x03\xe8")  # close 1000
        except OSError:
            pass
        self.sock.close()


def load(port: int, method: str, connections: int, seconds: float, window: int = 50) -> dict[str, Any]:
    """Frames answered by `connections` connections sending windows of `method` frames."""
    batch = b"".join(client_frame(request_frame(method, f"r{i}")) for i in range(window))
    counts: list[int] = []
    errors: list[str] = []
    opened = [RpcConnection(port) for _ in range(connections)]
    deadline = time.monotonic() + seconds

    def worker(conn: RpcConnection) -> None:
        frames = 0
        try:
            while time.monotonic() < deadline:
                conn.exchange(batch, window)
                frames += window
        except (OSError, ConnectionError) as exc:
            errors.append(str(exc))
        finally:
            conn.close()
            counts.append(frames)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(c,)) for c in opened]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"frames": sum(counts), "seconds": time.monotonic() - started, "errors": errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    print(json.dumps(load(args.port, args.method, args.connections, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
