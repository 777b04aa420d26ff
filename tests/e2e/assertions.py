"""Assertions shared by end-to-end tests, for httpx responses and raw-socket ones alike."""

from __future__ import annotations

import json
from typing import Any

import httpx

from sidecar.demo_backend import DemoBackend

from .harness import RawResponse

JSON_CT = "application/json; charset=utf-8"
BACKEND_SERVER = "openclaw-demo-backend"


def status_of(resp: httpx.Response | RawResponse) -> int:
    return resp.status_code if isinstance(resp, httpx.Response) else resp.status


def header_of(resp: httpx.Response | RawResponse, name: str) -> str | None:
    return resp.headers.get(name) if isinstance(resp, httpx.Response) else resp.header(name)


def body_of(resp: httpx.Response | RawResponse) -> bytes:
    return resp.content if isinstance(resp, httpx.Response) else resp.body


def assert_refused(resp: httpx.Response | RawResponse, status: int, body: dict[str, Any],
                   backend: DemoBackend) -> None:
    """A sidecar refusal: exact status, exact JSON body, JSON content type, nothing upstream."""
    assert status_of(resp) == status, body_of(resp)
    assert json.loads(body_of(resp)) == body
    assert header_of(resp, "content-type") == JSON_CT
    assert BACKEND_SERVER not in (header_of(resp, "server") or "")
    assert backend.requests() == []
