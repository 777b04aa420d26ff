"""The real gateway's own functions, called in its Node: the oracle of the differential tests.
A function is found by the name its bundle exports it under (`export { name as alias }`), so the
hashed file names and minified aliases of a release need not be written down here."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from typing import Any

import pytest

from tests.gateway.real_gateway import PACKAGE, unavailable_reason
from tests.node import gateway_node

# For tests that ask the gateway's own functions: skipped, with the installer's reason, without it.
needs_gateway = pytest.mark.skipif(unavailable_reason() is not None, reason=f"REAL GATEWAY TESTS SKIPPED: {unavailable_reason()}")

_EXPORTS = re.compile(r"^export \{(.*)\};?$", re.MULTILINE)

# `gateway` holds the named functions; `input` the JSON sent; what `answer` is given is returned.
_RUNNER = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));  // before any import: stdin stays blocking
const [modules, script] = JSON.parse(process.argv[1]);
Promise.all(modules.map(([name, file, alias]) => import(file).then((m) => [name, m[alias]]))).then((found) => {
  const gateway = Object.fromEntries(found);
  const answer = (value) => process.stdout.write(JSON.stringify(value));
  new Function("gateway", "input", "answer", script)(gateway, input, answer);
});
"""


@cache
def _exported(name: str, module: str = "") -> tuple[str, str]:
    """(file, alias) of the bundle module exporting `name` (the first, or the one whose file name
    starts with `module` where several modules have a function of that name)."""
    pattern = re.compile(rf"(?:^|,)\s*{re.escape(name)} as ([\w$]+)\s*(?:,|$)")
    for file in sorted((PACKAGE / "dist").glob(f"{module}*.mjs")):
        for exports in _EXPORTS.findall(file.read_text(encoding="utf-8", errors="replace")):
            if match := pattern.search(exports):
                return str(file), match.group(1)
    raise LookupError(f"the gateway's bundle exports no {name!r}")


def call_gateway(names: list[str], script: str, payload: Any) -> Any:
    """Run `script` (a function body) in the gateway's Node with its functions `names`, each a
    name or `module-prefix:name`."""
    modules = [(name.rpartition(":")[2], *_exported(name.rpartition(":")[2], name.rpartition(":")[0])) for name in names]
    done = subprocess.run([gateway_node(), "-e", _RUNNER, json.dumps([modules, script])], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def gateway_request_frame_checks(texts: list[str]) -> list[dict | None]:
    """For each frame's JSON text, what the gateway answers once connected: None for a request
    frame, else the `errors` text of its INVALID_REQUEST answer and the `id` it echoes."""
    return call_gateway(["validateRequestFrame", "formatValidationErrors"], """
        const { validateRequestFrame: validate, formatValidationErrors: format } = gateway;
        answer(input.map((text) => {
          const parsed = JSON.parse(text);
          return validate(parsed) ? null : { errors: format(validate.errors), id: parsed?.id ?? "invalid" };
        }));""", texts)
