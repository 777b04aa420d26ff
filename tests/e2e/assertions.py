"""Assertions shared by end-to-end tests, for httpx responses and raw-socket ones alike."""

from __future__ import annotations

import json
from typing import Any

import httpx

from openclaw_demo.backend import DemoBackend
from sidecar.envelopes import SECURITY_HEADERS

from .conftest import UPSTREAM_TOKEN
from .harness import RawResponse

JSON_CT = "application/json; charset=utf-8"
BACKEND_SERVER = "openclaw-demo-backend"


def compact(payload: Any) -> bytes:
    """JSON as the gateway writes it (compact separators, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def header_values(record: dict[str, Any], name: str) -> list[str]:
    """Every value the backend received for one header name, in order."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def header_names(record: dict[str, Any]) -> set[str]:
    return {k.lower() for k, _ in record["headers"]}


def only_forwarded(backend: DemoBackend, response: httpx.Response | RawResponse | None = None) -> dict[str, Any]:
    """The one request the backend received (after `response`, when given, was a 200)."""
    if response is not None:
        assert status_of(response) == 200, (status_of(response), body_of(response))
    records = backend.requests()
    assert len(records) == 1, records
    return records[0]


def assert_refused_raw(response: RawResponse, backend: DemoBackend, status: int, body: dict | None = None) -> None:
    """A sidecar refusal read off a raw socket: the status, the exact gateway body when given,
    and nothing reached or came from upstream."""
    assert response.status == status, (response.status, response.body)
    if body is not None:
        assert response.body == compact(body), response.body
    assert backend.requests() == [], backend.requests()
    assert BACKEND_SERVER not in (response.header("server") or "")
    assert UPSTREAM_TOKEN.encode() not in response.body


def assert_not_found_raw(response: RawResponse, backend: DemoBackend) -> None:
    """The gateway's own 404 (plain text), answered by the sidecar: nothing went upstream."""
    assert_refused_raw(response, backend, 404)
    assert response.body == b"Not Found", response.body
    assert response.header("content-type") == "text/plain; charset=utf-8"


def status_of(resp: httpx.Response | RawResponse) -> int:
    return resp.status_code if isinstance(resp, httpx.Response) else resp.status


def header_of(resp: httpx.Response | RawResponse, name: str) -> str | None:
    return resp.headers.get(name) if isinstance(resp, httpx.Response) else resp.header(name)


def body_of(resp: httpx.Response | RawResponse) -> bytes:
    return resp.content if isinstance(resp, httpx.Response) else resp.body


def assert_refused(resp: httpx.Response | RawResponse, status: int, body: dict[str, Any],
                   backend: DemoBackend) -> None:
    """A sidecar refusal: exact status, exact JSON body, JSON content type and the gateway's security
    headers, nothing upstream."""
    assert status_of(resp) == status, body_of(resp)
    assert json.loads(body_of(resp)) == body
    assert header_of(resp, "content-type") == JSON_CT
    assert [(name, header_of(resp, name)) for name, _ in SECURITY_HEADERS] == list(SECURITY_HEADERS)
    assert BACKEND_SERVER not in (header_of(resp, "server") or "")
    assert backend.requests() == []
