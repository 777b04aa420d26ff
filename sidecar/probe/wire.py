"""HTTP/1.1 written and read over a raw socket, byte for byte.

An HTTP client library would normalise most of the corpus away (repeated headers, obs-fold,
underscores, absolute-form targets, CL+TE, bare LF, pipelining), so every case is rendered to the
exact bytes it describes and sent as they are. Rendering is pure; `exchange` does the I/O.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from ..envelopes import compact_json
from .corpus import PLACEHOLDER, Body, HttpRequest
from .verdict import Answer

MAX_HEAD_BYTES = 256 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024  # answers are evidence, not payloads: longer bodies are cut
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class ProbeSetupError(Exception):
    """The probe cannot run as asked (bad URL, unreachable target): exit status 2."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: the root of a gateway or of a proxy in front of one."""

    url: str
    host: str
    port: int
    tls: bool

    @property
    def authority(self) -> str:
        """What a client puts in Host: the URL's host and port as written."""
        return urlsplit(self.url).netloc

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProbeSetupError(f"{url!r} is not an http:// or https:// URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ProbeSetupError(f"{url!r}: give the root of the gateway or proxy (no path or query)")
        if "@" in parts.netloc:  # it would go out in Host and into the report: the secret has its own options
            raise ProbeSetupError("the URL takes no user or password: give the secret with --token or --password")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ProbeSetupError(f"{url!r}: {exc}") from None
        return cls(url.rstrip("/"), parts.hostname, port, parts.scheme == "https")

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(timeout)
        if self.tls:
            return ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock


@dataclass(frozen=True)
class Context:
    """The values a case's `${...}` placeholders and credential headers are filled from."""

    host: str
    safe_tool: str
    marker: str
    secret: str | None = None
    identity: tuple[tuple[str, str], ...] = ()
    secret_field: str = "token"  # how a connect frame names the secret: token or password
    bearer_upgrade: bool = False  # the target authenticates WebSocket upgrades: the secret goes on them too

    def expand(self, text: str) -> str:
        values = {"host": self.host, "safe_tool": self.safe_tool, "marker": self.marker, "secret": self.secret or ""}
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

    def expand_value(self, value: Any) -> Any:
        """Placeholders filled in every string of a JSON value (keys included)."""
        if isinstance(value, str):
            return self.expand(value)
        if isinstance(value, Mapping):
            return {self.expand(k): self.expand_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand_value(v) for v in value]
        return value

    def shown(self) -> Context:
        """The same context with the secret written as `<secret>`: how reports show a request,
        whatever the secret's length or wherever a case put it."""
        return replace(self, secret="<secret>") if self.secret else self

    def credential_headers(self) -> list[tuple[str, str]]:
        bearer = [("Authorization", f"Bearer {self.secret}")] if self.secret else []
        return bearer + list(self.identity)


# ---------------------------------------------------------------- rendering


def _body_bytes(body: Body, ctx: Context, eol: str) -> tuple[bytes, tuple[str, str] | None]:
    """The body as sent, and the framing header that goes with it."""
    if body.kind == "declared":
        return b"", ("Content-Length", str(body.value))
    if body.kind == "chunked":
        out = b""
        for chunk in body.chunks:
            data = ctx.expand(chunk.data).encode()
            out += f"{len(data):x}{chunk.size_suffix}{eol}".encode() + data + eol.encode()
        trailers = "".join(f"{n}: {ctx.expand(v)}{eol}" for n, v in body.trailers)
        return out + f"0{eol}{trailers}{eol}".encode("latin-1"), ("Transfer-Encoding", "chunked")
    data = compact_json(ctx.expand_value(body.value)) if body.kind == "json" else ctx.expand(body.value).encode()
    return data, ("Content-Length", str(len(data)))


def render_request(request: HttpRequest, ctx: Context) -> bytes:
    """The exact bytes of one request: Host and body framing are added only when the case does
    not write them itself, credential headers only when it asks for them."""
    eol = request.line_ending
    headers = [(n, ctx.expand(v)) for n, v in request.headers]
    if request.credential:
        headers = ctx.credential_headers() + headers
    names = {n.strip().lower() for n, _ in headers}
    if request.host and "host" not in names:
        headers.insert(0, ("Host", ctx.host))
    body = b""
    if request.body is not None:
        body, framing = _body_bytes(request.body, ctx, eol)
        if framing and not names & {"content-length", "transfer-encoding"}:
            headers.append(framing)
    lines = [f"{request.method} {ctx.expand(request.target)} {request.version}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return (eol.join(lines) + eol + eol).encode("latin-1") + body


# ---------------------------------------------------------------- reading


class Deadline:
    """One case's time: each read waits at most `timeout`, and the whole exchange at most `timeout`
    per answer it waits for. A per-read timeout alone never ends a target that trickles its answer
    (a byte a second, endless 1xx, chatter on a WebSocket); past the deadline a read times out."""

    def __init__(self, timeout: float, answers: int) -> None:
        self.timeout = timeout
        self.budget = timeout * answers
        self.ends = time.monotonic() + self.budget
        self.heard = False

    def arm(self, sock: socket.socket) -> socket.socket:
        """`sock`, set to give up on its next read or write when either limit is reached."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(min(self.timeout, left))
        return sock

    def recv(self, sock: socket.socket) -> bytes:
        """The next bytes from `sock` within both limits (b"" once the peer closed)."""
        data = self.arm(sock).recv(65536)
        self.heard = self.heard or bool(data)
        return data

    def missed(self) -> str:
        """Why the exchange timed out: a silent target, or one too slow to finish in time. A target
        that never sent a byte had one read's time, however many answers it owed."""
        if not self.heard:
            return f"no answer within {min(self.timeout, self.budget):g} s"
        if time.monotonic() >= self.ends:
            return f"no complete answer within {self.budget:g} s"
        return f"no answer within {self.timeout:g} s"


class _Stream:
    """Buffered reads from a socket; a closed peer or the case's deadline ends the stream."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.deadline.recv(self.sock)
        if not data:
            self.eof = True
        self.buffer += data
        return bool(data)

    def take(self, n: int) -> bytes:
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD_BYTES or not self.fill():
                raise ConnectionError("the answer ended inside a line")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r")

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n and self.fill():
            pass
        return self.take(n)


def _parse_head(head: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    lines = head.decode("latin-1").split("\n")
    status_line = lines[0].rstrip("\r").split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = tuple((k.strip(), v.strip()) for k, _, v in (ln.rstrip("\r").partition(":") for ln in lines[1:] if ln.strip()))
    return int(status_line[1]), headers


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def read_answer(stream: _Stream, method: str) -> Answer:
    """One HTTP answer: a 101 is final, other 1xx are skipped; the body by length, chunks or close.
    An answer whose status line came but whose head or body is broken (cut short, too long, badly
    framed) keeps its status: a 200 the target started is no refusal. Nothing after it is read."""
    while True:
        while b"\r\n\r\n" not in stream.buffer and b"\n\n" not in stream.buffer:
            if len(stream.buffer) > MAX_HEAD_BYTES or not stream.fill():
                if stream.buffer.strip():
                    status = _final_status(stream.buffer)
                    if status is not None:
                        stream.eof, stream.buffer = True, b""
                        return Answer("http", status=status)
                    raise ConnectionError(f"the answer ended inside its head: {stream.buffer[:80]!r}")
                return Answer("closed")
        cut = min(i for i in (stream.buffer.find(b"\r\n\r\n"), stream.buffer.find(b"\n\n")) if i >= 0)
        head = stream.take(cut)
        stream.take(4 if stream.buffer.startswith(b"\r\n\r\n") else 2)
        status, headers = _parse_head(head)
        if status == 101 or not 100 <= status < 200:
            break
    if status in (101, 204, 304) or method == "HEAD":
        return Answer("http", status=status, headers=headers)
    body = bytearray()
    try:
        _read_body(stream, headers, body)
    except (ConnectionError, ValueError):
        stream.eof, stream.buffer = True, b""
    return Answer("http", status=status, headers=headers, body=bytes(body))


def _final_status(head: bytes) -> int | None:
    """The status of a head cut short, when its status line came whole and is a final one."""
    if b"\n" not in head:
        return None
    try:
        status, _ = _parse_head(head.split(b"\n", 1)[0])
    except ConnectionError:
        return None
    return status if status == 101 or not 100 <= status < 200 else None


def _read_body(stream: _Stream, headers: tuple[tuple[str, str], ...], body: bytearray) -> None:
    """The body into `body`, by length, chunks or close: what came stays there if the rest is broken."""
    length = _header(headers, "content-length")
    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        while True:
            size_text = stream.line().split(b";")[0].strip() or b"0"
            if not _HEX.fullmatch(size_text):  # Python's int() takes "-1", "0x1f" and "1_0" too
                raise ValueError(f"a chunk size that is no hex number: {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while stream.line():  # trailers, then the blank line
                    pass
                return
            room = MAX_BODY_BYTES - len(body)
            body += stream.exactly(min(size, room))
            if size >= room:  # cut at the cap, whatever size the chunk claims
                return
            stream.line()
    elif length is not None and length.isdigit():
        body += stream.exactly(min(int(length), MAX_BODY_BYTES))
    else:
        while len(stream.buffer) < MAX_BODY_BYTES and stream.fill():
            pass
        body += stream.take(MAX_BODY_BYTES)


def sent_headers(request: bytes) -> frozenset[tuple[str, str]]:
    """The (lower-case name, value) pairs of a rendered request's head."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return frozenset((name.strip().lower(), value.strip()) for name, sep, value in (line.partition(":") for line in head) if sep)


def _unasked(stream: _Stream, linger: float) -> bytes:
    """An answer the target sends within `linger` seconds after the last one it owed: to a request
    it found inside the bytes (smuggled). Other bytes (a stray CRLF after a body) are no answer."""
    stream.deadline = Deadline(linger, 1)
    try:
        while len(stream.buffer) < MAX_HEAD_BYTES and stream.fill():
            pass
    except OSError:  # TimeoutError included: the target stayed quiet
        pass
    return stream.buffer if stream.buffer.lstrip().startswith(b"HTTP/") else b""


def exchange(endpoint: Endpoint, payload: bytes, methods: list[str], timeout: float,
             linger: float = 0.0) -> list[Answer]:
    """Send `payload` (one request, or several pipelined) and read one answer per method, in order.

    An answer that never comes, or is still incomplete at the deadline (`timeout` per answer), is
    `closed` (the peer hung up) or `timeout`; later ones are not read. With `linger`, the connection
    is read that much longer once every answer came: bytes then are the last answer's `unasked`.
    """
    deadline = Deadline(timeout, len(methods))
    try:
        sock = endpoint.connect(timeout)
    except OSError as exc:
        return [Answer("error", error=f"cannot connect: {exc}")]
    answers: list[Answer] = []
    try:
        deadline.arm(sock).sendall(payload)
        stream = _Stream(sock, deadline)
        for method in methods:
            answer = read_answer(stream, method)
            answers.append(answer)
            if answer.kind == "closed" or answer.status == 101:
                break
        else:
            # A body cut at the cap leaves its rest unread: that is no second answer.
            if linger > 0 and len(answers[-1].body) < MAX_BODY_BYTES:
                answers[-1] = replace(answers[-1], unasked=_unasked(stream, linger))
    except TimeoutError:
        answers.append(Answer("timeout", error=deadline.missed()))
    except (ConnectionError, OSError, ValueError) as exc:
        answers.append(Answer("closed", error=str(exc)))
    finally:
        sock.close()
    return answers
