"""Once connected, a frame the gateway's RequestFrameSchema refuses is answered by the gateway
with its own INVALID_REQUEST text and the connection kept; the sidecar answers it the same, in
the same words, without relaying it. This runs a corpus of frames through the gateway's own
validator (TypeBox, in its Node) and through sidecar.rpc.request_frame_errors."""

from __future__ import annotations

import json
import random
import subprocess
from typing import Any

import pytest

from sidecar.rpc import TOOLS_INVOKE_SCHEMA, BrowserOrigin, request_frame_errors, schema_errors
from tests.gateway.oracle import call_gateway, gateway_request_frame_checks
from tests.gateway.real_gateway import unavailable_reason
from tests.node import gateway_node

_reason = unavailable_reason()
if _reason is not None:
    pytest.skip(f"REAL GATEWAY TESTS SKIPPED: {_reason}", allow_module_level=True)

SCHEMA_KEYS = ["type", "id", "method", "params", "traceparent", "expectedProfileId"]
EXTRA_KEYS = ["extra", "event", "ok", "__proto__", "constructor", "Type", "", " ", "\u3000", "a/b", "a~1", "k1", "k2", "k3"]
FAMILY, FLAG = "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1FA\U0001F1F8"
# Strings on both sides of the length bounds, counted in code points, UTF-16 units and the
# schema's own characters (marks, variation selectors, joiners and flags) alike.
VALUES: list[Any] = [
    "req", "REQ", "req ", "res", "", " ", "a", "health", "a" * 128, "a" * 129, "\U0001F600" * 64, "\U0001F600" * 129,
    "e\u0301" * 65, "e\u0301" * 129, FAMILY * 128, FAMILY * 129, FLAG * 128, FLAG * 129, FLAG * 64 + "\U0001F1FA",
    "\u2764\ufe0f" * 128, "\u2764\ufe0f" * 129, "a\u200d" * 128, "a\u200d" * 65, "\u200d" * 129, "\ud800" * 128,
    "\ud800" * 129, "\udc00a" * 65, "x" * 127 + "\u0301" * 3, None, 0, 1.5, True, False, [], ["req"], {}, {"id": "x"},
]


def corpus(size: int = 3000) -> list[str]:
    """Request frames with none to a dozen changes each: a key dropped, a value swapped, a key added."""
    rng = random.Random(6455)
    texts = [json.dumps(v) for v in VALUES]  # no object at all
    for extra in range(6, 11):  # around the eight errors the gateway's answer stops at
        keys = rng.sample(EXTRA_KEYS, extra)
        texts += [json.dumps({"id": "r1", **dict.fromkeys(keys, 1)}), json.dumps({"type": "req", "id": "r1", "method": "health", **dict.fromkeys(keys, 1)})]
    for _ in range(size):
        frame = mutated(rng, {"type": "req", "id": "r1", "method": "health", "params": {}}, [0, 1, 1, 2, 3, 5, 12],
                        SCHEMA_KEYS, EXTRA_KEYS, VALUES, schema_share=0.8)
        items = list(frame.items())
        if rng.random() < 0.5:
            rng.shuffle(items)
        texts.append(json.dumps(dict(items)))
    return texts


def mutated(rng: random.Random, start: dict[str, Any], steps: list[int], keys: list[str], extra_keys: list[str],
            values: list[Any], *, schema_share: float) -> dict[str, Any]:
    """`start` with a few changes: a key dropped (a fifth of them), a schema key set, or an extra
    key added, each to one of `values`."""
    changed = dict(start)
    for _ in range(rng.choice(steps)):
        change = rng.random()
        if change < 0.2 and changed:
            del changed[rng.choice(list(changed))]
        elif change < schema_share:
            changed[rng.choice(keys)] = rng.choice(values)
        else:
            changed[rng.choice(extra_keys)] = rng.choice(values)
    return changed


def sidecar_check(text: str) -> dict[str, Any] | None:
    frame = json.loads(text)
    errors = request_frame_errors(frame)
    if not errors:
        return None
    request_id = frame.get("id") if isinstance(frame, dict) else None
    return {"errors": "; ".join(errors), "id": "invalid" if request_id is None else request_id}


def test_request_frames_are_checked_in_the_gateways_words() -> None:
    texts = corpus()
    gateway = gateway_request_frame_checks(texts)
    differ = [(text, mine, theirs) for text, theirs in zip(texts, gateway) if (mine := sidecar_check(text)) != theirs]
    assert differ == [], f"{len(differ)} of {len(texts)} differ, first: {differ[:3]}"
    assert 500 < sum(answer is None for answer in gateway) < len(texts) - 1500  # both kinds well represented
    assert any("schema is false" in answer["errors"] for answer in gateway if answer)  # past the eighth error


# The first and last code point of each range the schema's character count joins onto the one
# before (combining marks, variation selectors) or pairs (regional indicators), and their neighbours.
_RANGES = [(0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0xFE20, 0xFE2F), (0xFE00, 0xFE0F)]
_FLAGS = (0x1F1E6, 0x1F1FF)


def test_string_bounds_count_characters_as_the_gateways_schema_at_every_range_edge() -> None:
    """A traceparent (at most 128) of a letter and a mark, and of a pair of regional indicators,
    for each edge of TypeBox's ranges: within the bound exactly where the gateway counts it so
    (mutation testing: U+1F1FF, the last regional indicator, counted alone survived the corpus)."""
    edges = [point for low, high in _RANGES for point in (low - 1, low, high, high + 1)]
    texts = [json.dumps({"type": "req", "id": "r1", "method": "health", "traceparent": ("a" + chr(point)) * count})
             for point in edges for count in (64, 65, 128, 129)]
    flags = [chr(first) + chr(second) for first in (_FLAGS[0] - 1, *_FLAGS, _FLAGS[1] + 1)
             for second in (_FLAGS[0] - 1, *_FLAGS, _FLAGS[1] + 1)]
    texts += [json.dumps({"type": "req", "id": "r1", "method": "health", "traceparent": flag * count})
              for flag in flags for count in (64, 65, 128, 129)]
    gateway = gateway_request_frame_checks(texts)
    differ = [(json.loads(text)["traceparent"][:4], mine, theirs) for text, theirs in zip(texts, gateway)
              if (mine := sidecar_check(text)) != theirs]
    assert differ == [], f"{len(differ)} of {len(texts)} differ, first: {differ[:3]}"
    assert 50 < sum(answer is None for answer in gateway) < len(texts) - 50


def test_a_binary_frame_decodes_as_the_gateways_buffer_to_string() -> None:
    """A binary frame is judged on its text with every byte that is not UTF-8 replaced and relayed
    as sent: the gateway's Buffer.toString must make the same text of it."""
    rng = random.Random(6455)
    bytes_ = [0x41, 0x22, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0xF5, 0xFF]
    samples = [bytes(rng.choice(bytes_) for _ in range(rng.randint(1, 9))) for _ in range(20_000)]
    decoded = json.loads(subprocess.run(
        [gateway_node(), "-e", "const xs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
                               "process.stdout.write(JSON.stringify(xs.map((h) => Buffer.from(h, 'hex').toString('utf8'))));"],
        input=json.dumps([sample.hex() for sample in samples]), capture_output=True, text=True, timeout=120, check=True).stdout)
    assert [s for s, theirs in zip(samples, decoded) if s.decode("utf-8", errors="replace") != theirs] == []


TOOLS_INVOKE_KEYS = ["name", "args", "sessionKey", "agentId", "confirm", "idempotencyKey", "conversationReadOrigin"]
TOOLS_INVOKE_VALUES: list[Any] = ["sessions_list", "", " ", "direct-operator", "x" * 300, None, 0, True, False, [], {}, {"a": 1}, ["a"]]


def test_tools_invoke_params_are_checked_in_the_gateways_words() -> None:
    """`tools.invoke` params through the gateway's own validateToolsInvokeParams and the sidecar's
    TOOLS_INVOKE_SCHEMA: the same verdict and the same words."""
    rng = random.Random(6455)
    texts = [json.dumps(v) for v in TOOLS_INVOKE_VALUES]
    for _ in range(2000):
        texts.append(json.dumps(mutated(rng, {"name": "sessions_list"}, [0, 1, 1, 2, 3, 6], TOOLS_INVOKE_KEYS,
                                        ["tool", "extra", "__proto__", ""], TOOLS_INVOKE_VALUES, schema_share=0.85)))
    theirs = call_gateway(["validateToolsInvokeParams", "formatValidationErrors"], """
        const { validateToolsInvokeParams: validate, formatValidationErrors: format } = gateway;
        answer(input.map((text) => validate(JSON.parse(text)) ? null : format(validate.errors)));""", texts)
    mine = ["; ".join(errors) or None for errors in (schema_errors(json.loads(text), TOOLS_INVOKE_SCHEMA) for text in texts)]
    differ = [(text, m, t) for text, m, t in zip(texts, mine, theirs) if m != t]
    assert differ == [], f"{len(differ)} of {len(texts)} differ, first: {differ[:3]}"
    assert 300 < sum(answer is None for answer in theirs) < len(texts) - 300



ORIGINS = ["HTTP://LocalHost:5173/", "https://a.example:443", "http://a.example:80", "https://A.Example.", "ws://h:1",
           "chrome-extension://" + "a" * 32, "not an origin", "null", "http://[::1]:8080", " http://x ", "http://x:99999"]


def test_a_loopback_browsers_failures_count_against_the_origin_the_gateway_keys_them_by() -> None:
    """resolveBrowserOriginRateLimitKey: the URL's origin, lower-cased, or a stand-in address. An
    Origin the sidecar cannot parse where URL can (a path, say) shares the stand-in: stricter."""
    theirs = call_gateway([], """
        answer(input.map((o) => { try { return "browser-origin:" + new URL(o.trim()).origin.toLowerCase(); }
                                  catch { return "198.18.0.1"; } }));""", ORIGINS)
    mine = [BrowserOrigin.of(origin, None).limit_key for origin in ORIGINS]
    assert mine == theirs


EXTENSION_ID = "abcdefghijklmnopabcdefghijklmnop"
EXTENSION_ORIGINS = [f"chrome-extension://{EXTENSION_ID}", f"chrome-extension://{EXTENSION_ID}/", f"CHROME-EXTENSION://{EXTENSION_ID}",
                     f"chrome-extension://{EXTENSION_ID.upper()}", f" chrome-extension://{EXTENSION_ID}/\t",
                     "chrome-extension://" + "z" * 32, "chrome-extension://" + "q" * 32, "chrome-extension://" + "a" * 31,
                     "chrome-extension://" + "a" * 33, f"chrome-extension://{EXTENSION_ID}/x", f"chrome-extension://{EXTENSION_ID}.evil.example",
                     f"chrome-extension://{EXTENSION_ID}:443", f"chrome-extension://u@{EXTENSION_ID}", f"moz-extension://{EXTENSION_ID}",
                     f"https://{EXTENSION_ID}", "null", ""]
COPILOT_IDS: list[Any] = ["openclaw-browser-copilot", "OpenClaw-Browser-Copilot", " openclaw-browser-copilot\u00a0",
                          "x-openclaw-browser-copilot", "openclaw-browser-copilot-2", "openclaw-control-ui", "", None, 7]


def test_only_the_gateways_browser_copilot_from_its_extension_skips_the_origin_check() -> None:
    """resolveGatewayWsBrowserOrigin lets a browser copilot client through from a canonical Chrome
    extension origin: the sidecar exempts no other (mutation testing: an id of any letters, an
    origin only starting like one, and a client id only containing the copilot's, each survived).
    Stricter in two spellings URL would canonicalise (an upper-case id, a port): those browsers
    get the ordinary origin check."""
    cases = [(origin, client_id) for origin in EXTENSION_ORIGINS for client_id in COPILOT_IDS]
    theirs = call_gateway(["message-channel:isBrowserCopilotClient", "origin-check:normalizeChromeExtensionOrigin"], """
        answer(input.map(([origin, id]) =>
          gateway.isBrowserCopilotClient({ id }) && gateway.normalizeChromeExtensionOrigin(origin) !== undefined));""", cases)
    mine = [BrowserOrigin.of(origin, "origin not allowed").refuses({"id": client_id}) is None for origin, client_id in cases]
    looser = [case for case, m, t in zip(cases, mine, theirs, strict=True) if m and not t]
    assert looser == [], looser
    assert sum(mine) >= 6 and sum(theirs) < len(cases) // 2
