"""Audit lines escape client-supplied values (corpus D8) and count every decision."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar import audit
from sidecar.metrics import DECISIONS


def test_client_values_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.audit")
    audit.record(route="tools-invoke", outcome="refused", reason="tool_denied", status=404, method="POST",
                 target="/tools/invoke\r\n{\"event\":\"forged\"}", client_ip="203.0.113.7", peer_ip="203.0.113.7",
                 user="eve\nadmin", tool="exec\u2028\x00")
    (record,) = caplog.records
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["target"] == "/tools/invoke\r\n{\"event\":\"forged\"}"
    assert entry["user"] == "eve\nadmin" and entry["tool"] == "exec\u2028\x00"


def test_every_decision_is_counted() -> None:
    counter = DECISIONS.labels(route="other", outcome="forwarded", reason="allowed")
    before = counter._value.get()
    audit.record(route="other", outcome="forwarded", reason="allowed", status=None, method="GET",
                 target="/v1/models", client_ip=None, peer_ip="127.0.0.1")
    assert counter._value.get() == before + 1
