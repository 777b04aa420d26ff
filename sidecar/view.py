"""What the pipeline sees of a request: plain data, no proxy library types."""

from __future__ import annotations

from dataclasses import dataclass, field

from .toolpolicy import js_trim


@dataclass(frozen=True)
class RequestView:
    """A request head as received: raw target, header lines in order with duplicates, peer."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    peer_ip: str
    request_id: str = ""  # the id the audit line and the upstream (X-Request-Id) both carry
    _index: dict[str, list[bytes]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[bytes]] = {}
        for name, value in self.headers:
            index.setdefault(name.decode("latin-1").lower(), []).append(value)
        object.__setattr__(self, "_index", index)

    def values(self, name: str) -> list[bytes]:
        return self._index.get(name.lower(), [])

    def has(self, name: str) -> bool:
        return name.lower() in self._index

    def first(self, name: str) -> str | None:
        """The first value as text (latin-1, as Node reads header bytes); None when absent."""
        values = self._index.get(name.lower())
        return None if not values else values[0].decode("latin-1")

    @property
    def host(self) -> str:
        """normalizeHostHeader: the Host header trimmed (JavaScript's trim) and lower-cased; ""
        when absent."""
        return js_trim(self.first("host") or "").lower()

    @property
    def names(self) -> list[str]:
        return list(self._index)

    def head_size(self) -> int:
        """Bytes of the head as sent on HTTP/1.1 (request line, `name: value` lines, blank line):
        what the proxy's reader bounds as it buffers (Node's own count, URL and header names and
        values only, is smaller: the sidecar is the stricter of the two)."""
        size = len(self.method) + 1 + len(self.target) + len(" HTTP/1.1\r\n") + 2
        return size + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def declared_length(self) -> int | None:
        """Body bytes still to come: Content-Length, 0 when absent, None for chunked or unusable."""
        if self.has("transfer-encoding"):
            return None
        value = self.first("content-length")
        if value is None:
            return 0
        value = value.strip()
        # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
        return int(value) if value.isascii() and value.isdigit() else None
