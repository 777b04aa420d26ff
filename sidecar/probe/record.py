"""What actually reached the backend, read from the demo backend's request record.

`GET {url}/__demo/requests` lists every request the demo backend received (raw target, headers in
arrival order with duplicates kept); `DELETE` clears it (openclaw_demo/backend.py). Cleared before
each case and read after it, the record shows what the target forwarded for that case alone.
"""

from __future__ import annotations

from typing import Any

import httpx

from .wire import ProbeSetupError

RECORD_PATH = "/__demo/requests"


class BackendRecord:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/") + RECORD_PATH
        self.http = httpx.Client(trust_env=False, timeout=timeout)

    def clear(self) -> None:
        self._call("DELETE")

    def fetch(self) -> list[dict[str, Any]]:
        try:
            records = self._call("GET").json()["requests"]
        except (ValueError, TypeError, KeyError):
            records = None
        if not isinstance(records, list):
            raise ProbeSetupError(f"{self.url} did not answer with a request record: is it the demo backend?")
        return records

    def _call(self, method: str) -> httpx.Response:
        try:
            response = self.http.request(method, self.url)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ProbeSetupError(f"--backend-record {self.url}: {exc}") from None
        return response

    def close(self) -> None:
        self.http.close()
