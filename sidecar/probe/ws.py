"""The gateway's RPC WebSocket, spoken over a raw socket with wsproto.

One exchange per case: the RFC 6455 upgrade, the `connect` frame (the secret in it, as browsers
send it), then at most one request frame, which is judged (after an allowed lead-in frame, where
the case has one: a proxy that judges only a connection's first frame). The connect is sent at once: the
gateway's `connect.challenge` nonce only matters to device signatures, and an echoing backend
never sends one.
"""

from __future__ import annotations

import json
import platform
import socket
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection, RejectData, Request, TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .corpus import CONNECT_ID, FRAME_ID, LEAD_IN_ID, WsConnect, WsFrame, WsRequest
from .text import visible
from .verdict import Answer, Stage
from .wire import MAX_BODY_BYTES, Context, Deadline, Endpoint

WRONG_SECRET = "openclaw-probe-not-the-secret"  # the same wrong secret the HTTP cases use
PROTOCOL = 4  # the gateway's RPC protocol (2026.9.6)


def connect_frame(connect: WsConnect, ctx: Context, version: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "minProtocol": PROTOCOL, "maxProtocol": PROTOCOL, "role": connect.role, "scopes": list(connect.scopes),
        "client": {"id": connect.client_id, "version": version, "platform": platform.system().lower() or "linux",
                   "mode": connect.client_mode},
    }
    if connect.auth == "wrong":
        params["auth"] = {"token": WRONG_SECRET}
    elif connect.auth == "secret" and ctx.secret:
        params["auth"] = {ctx.secret_field: ctx.secret}
    return {"type": "req", "id": CONNECT_ID, "method": "connect", "params": params}


def frame_text(frame: WsFrame, ctx: Context, frame_id: str = FRAME_ID) -> str:
    if frame.raw is not None:
        return ctx.expand(frame.raw)
    return json.dumps({"type": "req", "id": frame_id, "method": frame.method, "params": ctx.expand_value(frame.params)},
                      separators=(",", ":"))


def went_through(answer: Answer) -> bool:
    """The connect or lead-in frame was accepted (or relayed to an echoing backend)."""
    return answer.kind == "ws-echo" or (answer.kind == "ws-res" and (answer.frame or {}).get("ok") is True)


class _Session:
    """A wsproto client connection over a blocking socket, event by event, within the case's deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    def send(self, event: Any) -> None:
        self.deadline.arm(self.sock).sendall(self.ws.send(event))

    def next_event(self) -> Any:
        while not self.pending:
            data = self.deadline.recv(self.sock)
            self.ws.receive_data(data or None)
            self.pending = list(self.ws.events())
            if not data and not self.pending:
                raise ConnectionError("connection closed")
        return self.pending.pop(0)

    def upgrade(self, host: str, path: str, headers: list[tuple[str, str]]) -> Answer | None:
        """None once upgraded; otherwise the refusal."""
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.send(Request(host=host, target=path, extra_headers=extra))
        status, body = 0, b""
        answered: tuple[tuple[str, str], ...] = ()
        while True:
            event = self.next_event()
            if isinstance(event, AcceptConnection):
                return None
            if isinstance(event, RejectConnection):
                # wsproto says nearly every refusal has a body, so its headers (WWW-Authenticate,
                # Location) are kept here for the answer the body completes
                status = event.status_code
                answered = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
                if not event.has_body:
                    return Answer("http", stage="upgrade", status=status, headers=answered)
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished or len(body) >= MAX_BODY_BYTES:
                    return Answer("http", stage="upgrade", status=status, headers=answered,
                                  body=body[:MAX_BODY_BYTES])

    def answer_to(self, sent: str, stage: Stage) -> Answer:
        """Read until the answer to the frame `sent`: its `res`, the frame echoed back, or a close.
        A message longer than MAX_BODY_BYTES is no RPC frame the probe judges: it ends the case
        unjudged rather than be read on (a target may send one that never ends)."""
        request = json.loads(sent)
        text: list[str] = []
        size = 0
        while True:
            event = self.next_event()
            if isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.OPEN:  # no close frame: wsproto could not parse the target's
                    return Answer("error", stage=stage, error=f"the probe cannot read the target's frames "
                                                              f"({visible(event.reason or str(event.code))}): no answer")
                return Answer("ws-closed", stage=stage, close_code=int(event.code), error=event.reason or "")
            elif isinstance(event, Message):
                text.append(event.data if isinstance(event, TextMessage) else event.data.decode("utf-8", "replace"))
                size += len(text[-1])
                if size > MAX_BODY_BYTES:
                    return Answer("error", stage=stage, error=f"a message over {MAX_BODY_BYTES // 2**20} MiB came back: "
                                                              "the probe reads no further")
                if not event.message_finished:
                    continue
                whole, text, size = "".join(text), [], 0
                try:
                    frame = json.loads(whole)
                except (ValueError, RecursionError):  # not JSON, or nested too deep to read
                    continue
                if isinstance(frame, dict) and frame.get("id") == request.get("id"):
                    if frame.get("type") == "res":
                        return Answer("ws-res", stage=stage, frame=frame, body=whole.encode())
                    return Answer("ws-echo", stage=stage, frame=frame, body=whole.encode(), rewritten=frame != request)

    def send_text(self, text: str, binary: bool, fragments: int) -> None:
        if binary:
            self.send(BytesMessage(text.encode()))
            return
        size = max(1, -(-len(text) // fragments))
        parts = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        for index, part in enumerate(parts):
            self.send(TextMessage(part, message_finished=index == len(parts) - 1))


def upgrade_headers(request: WsRequest, ctx: Context) -> list[tuple[str, str]]:
    """The case's headers, after the identity headers where it presents a credential, and the
    Bearer where the target authenticates upgrades and the case connects with the secret."""
    credential = list(ctx.identity) if request.credential else []
    if ctx.bearer_upgrade and ctx.secret and (request.connect is None or request.connect.auth == "secret"):
        credential.insert(0, ("Authorization", f"Bearer {ctx.secret}"))
    return credential + [(n, ctx.expand(v)) for n, v in request.headers]


def exchange_ws(endpoint: Endpoint, request: WsRequest, ctx: Context, path: str, timeout: float,
                version: str) -> tuple[Answer, str]:
    """Run one WebSocket case: the answer that decides it, and a transcript of what was sent
    (written with `<secret>`, like every request in a report)."""
    shown = ctx.shown()
    deadline = Deadline(timeout, 1 + (request.connect is not None) + (request.lead_in is not None) + (request.frame is not None))
    sent = [f"GET {path} HTTP/1.1 (WebSocket upgrade)" + "".join(f"\n{n}: {v}" for n, v in upgrade_headers(request, shown))]
    try:
        sock = endpoint.connect(timeout)
    except OSError as exc:
        return Answer("error", stage="upgrade", error=f"cannot connect: {exc}"), "\n".join(sent)
    session = _Session(sock, deadline)
    stage: Stage = "upgrade"
    try:
        refused = session.upgrade(ctx.host, path, upgrade_headers(request, ctx))
        if refused is not None:
            return refused, "\n".join(sent)
        answer: Answer | None = None
        if request.connect is not None:
            stage = "connect"
            connect = json.dumps(connect_frame(request.connect, ctx, version), separators=(",", ":"))
            sent.append("text frame: " + json.dumps(connect_frame(request.connect, shown, version), separators=(",", ":")))
            session.send(TextMessage(connect))
            answer = session.answer_to(connect, stage)
            if not went_through(answer):
                return answer, "\n".join(sent)
        if request.lead_in is not None:
            stage = "lead-in"
            lead = frame_text(request.lead_in, ctx, LEAD_IN_ID)
            sent.append(f"text frame (lead-in): {frame_text(request.lead_in, shown, LEAD_IN_ID)}")
            session.send(TextMessage(lead))
            answer = session.answer_to(lead, stage)
            if not went_through(answer):
                return answer, "\n".join(sent)
        if request.frame is not None:
            stage = "frame"
            frame = request.frame
            how = "binary frame" if frame.binary else (
                f"text frame in {frame.fragments} fragments" if frame.fragments > 1 else "text frame")
            sent.append(f"{how}: {frame_text(frame, shown)}")
            text = frame_text(frame, ctx)
            session.send_text(text, frame.binary, frame.fragments)
            answer = session.answer_to(text, stage)
        assert answer is not None  # the corpus guarantees a connect or a frame
        return answer, "\n".join(sent)
    except TimeoutError:
        return Answer("timeout", stage=stage, error=deadline.missed()), "\n".join(sent)
    except (ConnectionError, OSError, LocalProtocolError, RemoteProtocolError) as exc:
        # a peer that hangs up, or one whose handshake or frames wsproto refuses
        return Answer("closed", stage=stage, error=str(exc) or type(exc).__name__), "\n".join(sent)
    finally:
        sock.close()
