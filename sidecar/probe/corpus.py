"""The probe's corpus: attack and contract cases as data, loaded and checked before anything is sent.

The cases live in ``sidecar/data/probe-corpus-v1.json`` (format: ``SCHEMA.md`` beside this file).
Every field is validated here, so a typo in the data is a load error naming the case, never a
request that silently tests something else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any, Literal

CORPUS_SCHEMA = "openclaw-sidecar-probe-corpus/1"
CORPUS_RESOURCE = "data/probe-corpus-v1.json"

# What a case may need before it can run (engine.applicability explains each one to the user).
NEEDS = frozenset({"secret", "credential", "identity", "untrusted", "unsafe", "record", "websocket"})
OUTCOMES = ("refused", "stripped", "accepted", "answered")
PLACEHOLDERS = frozenset({"secret", "safe_tool", "marker", "host"})
WS_AUTH = ("secret", "none", "wrong")
# The judged WebSocket frame must answer to this id, so that a raw frame can be matched too.
FRAME_ID = "probe-frame"
CONNECT_ID = "probe-connect"
LEAD_IN_ID = "probe-lead-in"

PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")  # ${name}, filled by wire.Context
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_HEADER_NAME = re.compile(r"[^\s:]+ ?")  # a trailing space is allowed: "name : value" is a case


class CorpusError(ValueError):
    """The corpus file (or one case in it) is not what the probe can run."""


@dataclass(frozen=True)
class Chunk:
    data: str
    size_suffix: str = ""  # written after the hex size, e.g. " " (chunk-size whitespace)


@dataclass(frozen=True)
class Body:
    """A request body and the framing header the probe adds when the case sets none itself."""

    kind: Literal["json", "text", "chunked", "declared"]
    value: Any = None  # json: the value; text: the string; declared: the announced length
    chunks: tuple[Chunk, ...] = ()
    trailers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    credential: bool = False  # add the probe's credential headers (Bearer secret, identity headers)
    body: Body | None = None
    host: bool = True  # add `Host: ${host}` unless the case writes its own
    line_ending: str = "\r\n"
    version: str = "HTTP/1.1"

    @property
    def bends_framing(self) -> bool:
        """Where a request ends is for parsers to disagree on: the case writes its own Content-Length
        or Transfer-Encoding, sends chunks or a bare declared length, bare LF lines, or another version."""
        own = {n.strip().lower() for n, _ in self.headers} & {"content-length", "transfer-encoding"}
        framed = self.body is not None and self.body.kind in ("chunked", "declared")
        return bool(own) or framed or self.line_ending != "\r\n" or self.version != "HTTP/1.1"


@dataclass(frozen=True)
class WsConnect:
    auth: str = "secret"  # the connect frame's auth: the probe's secret, none, or a wrong one
    role: str = "operator"
    scopes: tuple[str, ...] = ("operator.read",)
    client_id: str = "gateway-client"
    client_mode: str = "backend"


@dataclass(frozen=True)
class WsFrame:
    method: str | None = None
    params: Any = None
    raw: str | None = None  # sent verbatim (duplicate keys, ...); must carry the id FRAME_ID
    binary: bool = False
    fragments: int = 1


@dataclass(frozen=True)
class WsRequest:
    headers: tuple[tuple[str, str], ...] = ()
    credential: bool = False  # identity headers on the upgrade (a secret goes in the connect frame)
    connect: WsConnect | None = WsConnect()
    frame: WsFrame | None = None  # judged when present; otherwise the connect is judged
    lead_in: WsFrame | None = None  # an allowed frame sent and answered first: the judged one is the second


@dataclass(frozen=True)
class Absent:
    """A header that must not reach the backend: by name ("*" = any), optionally only a value."""

    header: str
    contains: str | None = None

    def matches(self, name: str, value: str) -> bool:
        return self.header in ("*", name.lower()) and (self.contains is None or self.contains.lower() in value.lower())


@dataclass(frozen=True)
class Reached:
    """An answer that proves the route's own handler ran: its status and, when a proxy could give the
    same status, the handler's whole body (a part of it, such as `Unauthorized`, is in the gateway's
    and the sidecar's own refusals too)."""

    status: int
    body: str | None = None

    def matches(self, status: int, body: bytes) -> bool:
        return status == self.status and (self.body is None or body.strip() == self.body.encode())


@dataclass(frozen=True)
class Expectation:
    outcome: Literal["refused", "stripped", "accepted", "answered"]
    status: tuple[int, ...] = ()  # the reference answer, reported when a refusal differs
    reached: tuple[Reached, ...] = ()  # 4xx answers that prove the route's handler ran
    absent: tuple[Absent, ...] = ()
    single: tuple[str, ...] = ()  # headers that must arrive exactly once
    may_arrive: bool = False  # refused: reaching the backend is no failure (the backend refuses)
    leak: tuple[str, ...] = ()  # text the answer must never contain
    keeps: bool = False  # what the proxy sent upstream on control.credential must survive this request
    same_as_control: tuple[str, ...] = ()  # headers that must arrive just as they did on control.credential


@dataclass(frozen=True)
class Case:
    id: str
    klass: str
    source: str
    title: str
    needs: frozenset[str]
    request: HttpRequest | tuple[HttpRequest, ...] | WsRequest  # a tuple is a pipeline
    expect: Expectation
    fails_auth: bool = False  # a counted auth failure: the engine resets the limiter afterwards

    @property
    def unsafe(self) -> bool:
        return "unsafe" in self.needs

    @property
    def websocket(self) -> bool:
        return isinstance(self.request, WsRequest)

    @property
    def judges_frame(self) -> bool:
        """A WebSocket case about a request frame: a refused connect decides nothing about it."""
        return isinstance(self.request, WsRequest) and self.request.frame is not None

    @property
    def http_requests(self) -> tuple[HttpRequest, ...]:
        """The HTTP requests the case sends on one connection (several: a pipeline); none for a WebSocket case."""
        if isinstance(self.request, WsRequest):
            return ()
        return self.request if isinstance(self.request, tuple) else (self.request,)

    @property
    def may_smuggle(self) -> bool:
        """The bytes could hold one request more than the probe counts (a pipeline, or framing that
        bends): the connection is read a little longer, for an answer to that request."""
        members = self.http_requests
        return len(members) > 1 or any(m.bends_framing for m in members)

    @property
    def lead_ins(self) -> int:
        """Requests sent before the judged one (a pipeline's legitimate first requests)."""
        return max(len(self.http_requests) - 1, 0)


@dataclass(frozen=True)
class Corpus:
    schema: str
    gateway_version: str
    classes: Mapping[str, str]
    cases: tuple[Case, ...]

    def select(self, patterns: str | None) -> tuple[Case, ...]:
        """Cases whose id matches any comma-separated glob (case-sensitive); controls always run,
        because every other case is judged against them."""
        globs = [p.strip() for p in (patterns or "*").split(",") if p.strip()] or ["*"]
        return tuple(c for c in self.cases if c.klass == "control" or any(fnmatchcase(c.id, g) for g in globs))


# ---------------------------------------------------------------- loading


def load_corpus(text: str | None = None) -> Corpus:
    """The packaged corpus, or `text` (a corpus document) when given."""
    if text is None:
        text = resources.files("sidecar").joinpath(CORPUS_RESOURCE).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CorpusError(f"corpus is not JSON: {exc}") from None
    return parse_corpus(document)


def parse_corpus(document: Any) -> Corpus:
    doc = _mapping(document, "corpus")
    if doc.get("schema") != CORPUS_SCHEMA:
        raise CorpusError(f"corpus schema must be {CORPUS_SCHEMA!r}, not {doc.get('schema')!r}")
    classes = _mapping(doc.get("classes"), "classes")
    cases = tuple(_case(raw, classes) for raw in _sequence(doc.get("cases"), "cases"))
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise CorpusError(f"case {case.id}: duplicate id")
        seen.add(case.id)
    return Corpus(CORPUS_SCHEMA, str(doc.get("gatewayVersion", "")), dict(classes), cases)


_CASE_KEYS = frozenset({"id", "class", "source", "title", "needs", "http", "pipeline", "websocket", "expect", "failsAuth"})


def _case(raw: Any, classes: Mapping[str, str]) -> Case:
    data = _mapping(raw, "case")
    case_id = data.get("id")
    if not isinstance(case_id, str) or not _ID.fullmatch(case_id):
        raise CorpusError(f"case id {case_id!r} is not a plain identifier")
    where = f"case {case_id}"
    _known_keys(data, _CASE_KEYS, where)
    klass = data.get("class")
    if not isinstance(klass, str) or klass not in classes:
        raise CorpusError(f"{where}: class {klass!r} is not listed in the corpus classes")
    for field in ("source", "title"):
        if not isinstance(data.get(field), str) or not data[field].strip():
            raise CorpusError(f"{where}: {field} must be a non-empty string")
    needs = frozenset(_strings(data.get("needs", []), f"{where}: needs"))
    if needs - NEEDS:
        raise CorpusError(f"{where}: unknown needs {sorted(needs - NEEDS)}")
    kinds = [k for k in ("http", "pipeline", "websocket") if k in data]
    if len(kinds) != 1:
        raise CorpusError(f"{where}: exactly one of http, pipeline or websocket is required")
    request: HttpRequest | tuple[HttpRequest, ...] | WsRequest
    if kinds[0] == "http":
        request = _http(data["http"], where)
    elif kinds[0] == "pipeline":
        members = _sequence(data["pipeline"], f"{where}: pipeline")
        if len(members) < 2:
            raise CorpusError(f"{where}: a pipeline needs at least two requests")
        request = tuple(_http(m, f"{where}: pipeline[{i}]") for i, m in enumerate(members))
    else:
        request = _websocket(data["websocket"], where)
        needs |= {"websocket"}
    _check_placeholders(data, where)
    fails_auth = data.get("failsAuth", False)
    if not isinstance(fails_auth, bool):
        raise CorpusError(f"{where}: failsAuth must be true or false")
    return Case(case_id, klass, data["source"].strip(), data["title"].strip(), needs, request,
                _expectation(data.get("expect"), where), fails_auth)


_HTTP_KEYS = frozenset({"method", "target", "headers", "credential", "body", "call", "host", "lineEnding", "version"})


def _http(raw: Any, where: str) -> HttpRequest:
    data = _mapping(raw, f"{where}: http")
    _known_keys(data, _HTTP_KEYS, f"{where}: http")
    method, target = data.get("method"), data.get("target")
    if not isinstance(method, str) or not method or not isinstance(target, str) or not target:
        raise CorpusError(f"{where}: http needs a method and a target")
    if "body" in data and "call" in data:
        raise CorpusError(f"{where}: body and call are exclusive")
    body = _body(data["body"], where) if "body" in data else None
    if "call" in data:  # shorthand for the usual tool call
        if not isinstance(data["call"], str):
            raise CorpusError(f"{where}: call must name a tool")
        body = Body("json", {"name": data["call"], "args": {}})
    line_ending = data.get("lineEnding", "\r\n")
    if line_ending not in ("\r\n", "\n"):
        raise CorpusError(f"{where}: lineEnding must be CRLF or LF")
    return HttpRequest(method, target, _headers(data.get("headers", []), where), _flag(data, "credential", False, where),
                       body, _flag(data, "host", True, where), line_ending, str(data.get("version", "HTTP/1.1")))


def _body(raw: Any, where: str) -> Body:
    data = _mapping(raw, f"{where}: body")
    kinds = [k for k in ("json", "text", "chunks", "declared") if k in data]
    if len(kinds) != 1:
        raise CorpusError(f"{where}: a body is exactly one of json, text, chunks or declared")
    kind = kinds[0]
    if kind == "json":
        return Body("json", data["json"])
    if kind == "text":
        if not isinstance(data["text"], str):
            raise CorpusError(f"{where}: body.text must be a string")
        return Body("text", data["text"])
    if kind == "declared":
        if not isinstance(data["declared"], int) or data["declared"] < 0:
            raise CorpusError(f"{where}: body.declared must be a length")
        return Body("declared", data["declared"])
    chunks = tuple(_chunk(c, where) for c in _sequence(data["chunks"], f"{where}: body.chunks"))
    return Body("chunked", chunks=chunks, trailers=_headers(data.get("trailers", []), where))


def _chunk(raw: Any, where: str) -> Chunk:
    if isinstance(raw, str):
        return Chunk(raw)
    data = _mapping(raw, f"{where}: chunk")
    if not isinstance(data.get("data"), str) or not isinstance(data.get("sizeSuffix", ""), str):
        raise CorpusError(f"{where}: a chunk is a string or {{data, sizeSuffix}}")
    return Chunk(data["data"], data.get("sizeSuffix", ""))


_WS_KEYS = frozenset({"headers", "credential", "connect", "frame", "leadIn"})
_CONNECT_KEYS = frozenset({"auth", "role", "scopes", "clientId", "clientMode"})
_FRAME_KEYS = frozenset({"method", "params", "raw", "binary", "fragments"})


def _websocket(raw: Any, where: str) -> WsRequest:
    data = _mapping(raw, f"{where}: websocket")
    _known_keys(data, _WS_KEYS, f"{where}: websocket")
    connect = None
    if data.get("connect", {}) is not None:
        c = _mapping(data.get("connect", {}), f"{where}: connect")
        _known_keys(c, _CONNECT_KEYS, f"{where}: connect")
        if c.get("auth", "secret") not in WS_AUTH:
            raise CorpusError(f"{where}: connect.auth must be one of {WS_AUTH}")
        connect = WsConnect(c.get("auth", "secret"), str(c.get("role", "operator")),
                            tuple(_strings(c.get("scopes", ["operator.read"]), f"{where}: connect.scopes")),
                            str(c.get("clientId", "gateway-client")), str(c.get("clientMode", "backend")))
    frame = None
    if "frame" in data:
        f = _mapping(data["frame"], f"{where}: frame")
        _known_keys(f, _FRAME_KEYS, f"{where}: frame")
        if ("method" in f) == ("raw" in f):
            raise CorpusError(f"{where}: a frame has a method or raw text, not both")
        if "raw" in f and _json_id(f["raw"]) != FRAME_ID:
            raise CorpusError(f"{where}: a raw frame must be a JSON object with \"id\": \"{FRAME_ID}\"")
        fragments = f.get("fragments", 1)
        if not isinstance(fragments, int) or fragments < 1:
            raise CorpusError(f"{where}: frame.fragments must be a positive count")
        frame = WsFrame(f.get("method"), f.get("params", {}), f.get("raw"), _flag(f, "binary", False, where), fragments)
    if connect is None and frame is None:
        raise CorpusError(f"{where}: a websocket case sends a connect, a frame, or both")
    lead_in = None
    if "leadIn" in data:
        lead = _mapping(data["leadIn"], f"{where}: leadIn")
        _known_keys(lead, frozenset({"method", "params"}), f"{where}: leadIn")
        if not isinstance(lead.get("method"), str) or not isinstance(lead.get("params", {}), dict) or connect is None \
                or frame is None:
            raise CorpusError(f"{where}: a leadIn is a {{method, params?}} (params an object) sent between a connect "
                              "and a frame")
        lead_in = WsFrame(lead["method"], lead.get("params", {}))
    return WsRequest(_headers(data.get("headers", []), where), _flag(data, "credential", False, where), connect, frame,
                     lead_in)


_EXPECT_KEYS = frozenset({"outcome", "status", "reached", "absent", "single", "mayArrive", "leak", "keeps",
                          "sameAsControl"})


def _expectation(raw: Any, where: str) -> Expectation:
    data = _mapping(raw, f"{where}: expect")
    _known_keys(data, _EXPECT_KEYS, f"{where}: expect")
    outcome = data.get("outcome")
    if outcome not in OUTCOMES:
        raise CorpusError(f"{where}: expect.outcome must be one of {OUTCOMES}")
    absent = []
    for entry in _sequence(data.get("absent", []), f"{where}: expect.absent"):
        item = _mapping(entry, f"{where}: expect.absent")
        if not isinstance(item.get("header"), str) or not isinstance(item.get("contains", ""), str):
            raise CorpusError(f"{where}: expect.absent entries are {{header, contains?}}")
        absent.append(Absent(item["header"].lower(), item.get("contains")))
    return Expectation(outcome, _statuses(data.get("status", []), where), _reached(data.get("reached", []), where),
                       tuple(absent), tuple(h.lower() for h in _strings(data.get("single", []), where)),
                       _flag(data, "mayArrive", False, where), tuple(_strings(data.get("leak", []), where)),
                       _flag(data, "keeps", False, where),
                       tuple(h.lower() for h in _strings(data.get("sameAsControl", []), where)))


# ---------------------------------------------------------------- small validators


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CorpusError(f"{what} must be an object")
    return value


def _sequence(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise CorpusError(f"{what} must be a list")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorpusError(f"{what} must be a list of strings")
    return value


def _statuses(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and 100 <= v <= 599 for v in value):
        raise CorpusError(f"{where}: statuses must be a list of HTTP status codes")
    return tuple(value)


def _reached(value: Any, where: str) -> tuple[Reached, ...]:
    """`reached` entries: a status, or {status, body} when the status alone could be a proxy's."""
    found = []
    for entry in _sequence(value, f"{where}: expect.reached"):
        item: Mapping[str, Any] = {"status": entry} if isinstance(entry, int) else _mapping(entry, f"{where}: expect.reached")
        body = item.get("body")
        if not isinstance(body, (str, type(None))) or set(item) - {"status", "body"}:
            raise CorpusError(f"{where}: expect.reached entries are a status or {{status, body}}")
        found.append(Reached(_statuses([item.get("status")], where)[0], body))
    return tuple(found)


def _flag(data: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise CorpusError(f"{where}: {key} must be true or false")
    return value


def _known_keys(data: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(data) - known
    if unknown:
        raise CorpusError(f"{where}: unknown keys {sorted(unknown)}")


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for entry in _sequence(value, f"{where}: headers"):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(p, str) for p in entry)):
            raise CorpusError(f"{where}: a header is a [name, value] pair of strings")
        name, header_value = entry
        if not _HEADER_NAME.fullmatch(name):
            raise CorpusError(f"{where}: header name {name!r} cannot be written on the wire")
        try:
            (name + header_value).encode("latin-1")
        except UnicodeEncodeError:
            raise CorpusError(f"{where}: header {name!r} is not latin-1 (write raw bytes as \\u00XX)") from None
        pairs.append((name, header_value))
    return tuple(pairs)


def _json_id(text: Any) -> Any:
    try:
        frame = json.loads(text)
    except (TypeError, ValueError):
        return None
    return frame.get("id") if isinstance(frame, dict) else None


def _strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)


def _check_placeholders(data: Mapping[str, Any], where: str) -> None:
    for text in _strings_in({k: v for k, v in data.items() if k in ("http", "pipeline", "websocket")}):
        unknown = set(PLACEHOLDER.findall(text)) - PLACEHOLDERS
        if unknown:
            raise CorpusError(f"{where}: unknown placeholders {sorted(unknown)}")
