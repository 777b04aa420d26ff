"""A small blocking WebSocket client over a real socket, on wsproto (already a mitmproxy
dependency): enough to speak the gateway's RPC in tests, frames and close codes included."""

from __future__ import annotations

import json
import socket
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection, RejectData, Request, TextMessage,
)


class Rejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade refused with {status}: {body[:200]!r}")
        self.status, self.body = status, body


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code, self.reason = code, reason


class WsClient:
    def __init__(self, host: str, port: int, path: str = "/", headers: list[tuple[str, str]] | None = None,
                 timeout: float = 15.0, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers or []]
        self.sock.sendall(self.ws.send(Request(host="localhost", target=path, extra_headers=extra)))
        self._pending: list[Any] = []
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        reject_status, reject_body = None, b""
        while True:
            events = self._events()
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self._pending = events[index + 1:]  # frames that came in the same read
                    return
                if isinstance(event, RejectConnection):
                    reject_status = event.status_code
                    if not event.has_body:
                        raise Rejected(reject_status, b"")
                elif isinstance(event, RejectData):
                    reject_body += event.data
                    if event.body_finished:
                        raise Rejected(reject_status or 0, reject_body)

    def _events(self) -> list[Any]:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def send_json(self, payload: Any, *, binary: bool = False) -> None:
        text = json.dumps(payload)
        self.sock.sendall(self.ws.send(BytesMessage(text.encode()) if binary else TextMessage(text)))

    def send_fragments(self, parts: list[str]) -> None:
        for index, part in enumerate(parts):
            self.sock.sendall(self.ws.send(TextMessage(part, message_finished=index == len(parts) - 1)))

    def recv(self) -> str | bytes:
        """The next whole message; Closed when the server closes."""
        while True:
            while self._pending:
                event = self._pending.pop(0)
                if isinstance(event, Message):
                    buffer: list[Any] = self._text if isinstance(event, TextMessage) else self._bytes
                    buffer.append(event.data)
                    if event.message_finished:
                        whole = "".join(self._text) if isinstance(event, TextMessage) else b"".join(self._bytes)
                        buffer.clear()
                        return whole
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except Exception:
                        pass
                    raise Closed(event.code, event.reason)
            self._pending = self._events()
            if not self._pending and self.ws.state.name == "CLOSED":
                raise Closed(None, "connection closed")

    def recv_json(self) -> Any:
        return json.loads(self.recv())

    def response(self, request_id: str) -> dict[str, Any]:
        """Skip events until the `res` frame for `request_id`."""
        while True:
            frame = self.recv_json()
            if frame.get("type") == "res" and frame.get("id") == request_id:
                return frame

    def call(self, method: str, params: dict[str, Any] | None = None, request_id: str | None = None) -> dict[str, Any]:
        request_id = request_id or f"r-{method}"
        self.send_json({"type": "req", "id": request_id, "method": method, "params": params or {}})
        return self.response(request_id)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
