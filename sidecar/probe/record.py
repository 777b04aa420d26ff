"""What actually reached the backend, read from the demo backend's request record.

`GET {url}/__demo/requests` lists every request the demo backend received (raw target, headers in
arrival order with duplicates kept); `DELETE` clears it (openclaw_demo/backend.py). Cleared before
each case and read after it, the record shows what the target forwarded for that case alone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from .wire import ProbeSetupError

RECORD_PATH = "/__demo/requests"
# One case's record is the heads of a few requests, kilobytes: a URL that answers more is not the
# demo backend, and is not read into memory to find that out.
MAX_RECORD_BYTES = 16 * 1024 * 1024


class BackendRecord:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/") + RECORD_PATH
        self.timeout = timeout
        self.http = httpx.Client(trust_env=False, timeout=timeout, headers={"Accept-Encoding": "identity"})

    def clear(self) -> None:
        self._call("DELETE")

    def fetch(self) -> list[dict[str, Any]]:
        try:
            records = json.loads(self._call("GET"))["requests"]
        except (ValueError, TypeError, KeyError):
            records = None
        if not isinstance(records, list):
            raise ProbeSetupError(f"{self.url} did not answer with a request record: is it the demo backend?")
        return records

    def _call(self, method: str) -> bytes:
        """The answer's body as sent (never decompressed), whole within the timeout and at most
        MAX_RECORD_BYTES: a URL that streams or dribbles forever ends the run instead of holding it."""
        deadline = time.monotonic() + self.timeout
        body = bytearray()
        try:
            with self.http.stream(method, self.url) as response:
                response.raise_for_status()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) > MAX_RECORD_BYTES:
                        raise ProbeSetupError(f"--backend-record {self.url}: answered more than {MAX_RECORD_BYTES:,} "
                                              "bytes: is it the demo backend?")
                    if time.monotonic() > deadline:
                        raise ProbeSetupError(f"--backend-record {self.url}: no whole answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            raise ProbeSetupError(f"--backend-record {self.url}: {exc}") from None
        return bytes(body)

    def close(self) -> None:
        self.http.close()
