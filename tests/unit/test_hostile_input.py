"""Hostile input found by adversarial review: each must end in a decision, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.auth import OriginPolicy, read_identity
from sidecar.body import BodyError, read_invoke_body
from sidecar.config import load_config
from sidecar.pipeline import Admitted, Pipeline, Refuse
from sidecar.ratelimit import AuthFailureLimiter
from sidecar.toolpolicy import normalize_tool_name
from sidecar.view import RequestView


@pytest.mark.parametrize("origin", ["http://[", "http://[zz]", "http://[::1", "https://a:99999999"])
def test_unparseable_origin_is_refused_not_raised(origin: str) -> None:
    view = RequestView("POST", "/tools/invoke", ((b"Origin", origin.encode()), (b"Host", b"x")), "127.0.0.1")
    assert OriginPolicy(()).permits(view, local_client=True) is False


@pytest.mark.parametrize("value", ["=?utf-8?b?a?=", "=?bogus-charset?q?x?=", "=?\xc3\xa9?q?alice?=", "=?utf-8?q?=ZZ?=",
                                   "=?utf-8?q?a=0Db?=", "=?utf-8?b?YQ==?==?utf-8?b?"])
def test_encoded_identities_never_raise_and_are_read_as_spelled(value: str) -> None:
    """One identity for every decision and for what is forwarded: the raw spelling."""
    assert read_identity(value) == value


def test_deeply_nested_body_needing_a_rewrite_is_a_body_error() -> None:
    depth = 990
    raw = b'{"tool":"AGENTS_LIST","a":' + b"[" * depth + b"1e400" + b"]" * depth + b"}"
    try:
        result = read_invoke_body(raw)
    except BodyError as exc:
        assert exc.kind == "invalid_json"
    else:
        assert result.tool.name == "agents_list"


@pytest.mark.parametrize("name", ["\u212aill", "\u0130nfo", "ex\u0435c"])  # Kelvin sign, dotted I, Cyrillic e
def test_non_ascii_names_are_never_acceptable_even_if_lower_makes_them_ascii(name: str) -> None:
    assert normalize_tool_name(name).acceptable is False


@pytest.fixture
async def pipeline(tmp_path: Path) -> Pipeline:
    config_file = tmp_path / "c.yaml"
    config_file.write_text('{"gateway": {"auth": {"mode": "token", "token": "T"}}}')
    return Pipeline(load_config(config_file, environ={}), AuthFailureLimiter())


@pytest.mark.parametrize("method", ["Post", "post", "P0ST", "GET /x", ""])
async def test_methods_node_would_refuse_get_400(pipeline: Pipeline, method: str) -> None:
    view = RequestView(method, "/tools/invoke", ((b"Host", b"x"), (b"Authorization", b"Bearer T")), "127.0.0.1")
    decision = await pipeline.on_head(view)
    assert isinstance(decision, Refuse) and decision.envelope.status == 400


@pytest.mark.parametrize("headers, status", [
    (((b"Content-Length", b"5"),), 401),
    # an upgrade on any path is the gateway's RPC WebSocket: this one is not even RFC 6455
    (((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")), 400),
    (((b"Transfer-Encoding", b"chunked"),), 401),
])
async def test_unauthenticated_routes_admit_only_plain_reads(pipeline: Pipeline, headers: tuple, status: int) -> None:
    view = RequestView("GET", "/healthz", ((b"Host", b"x"), *headers), "127.0.0.1")
    decision = await pipeline.on_head(view)
    assert isinstance(decision, Refuse) and decision.envelope.status == status


async def test_unauthenticated_route_never_carries_the_upstream_credential(pipeline: Pipeline) -> None:
    decision = await pipeline.on_head(RequestView("GET", "/healthz", ((b"Host", b"x"),), "127.0.0.1"))
    assert isinstance(decision, Admitted)
    assert all(name.lower() != "authorization" for name, _ in decision.headers)
