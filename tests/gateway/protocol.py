"""The real gateway's own WebSocket protocol validators, run in its Node: the oracle for how the
sidecar reads frames. Found through the import line of the gateway's message handler, so the
bundle's hashed file names and minified export names need not be written down here."""

from __future__ import annotations

import json
import subprocess

from tests.gateway.real_gateway import PACKAGE
from tests.node import gateway_node

_REQUEST_FRAME_SCRIPT = r"""
const fs = require("fs"), path = require("path");
const dist = process.argv[1];
const handler = fs.readdirSync(dist).find((name) => /^message-handler-.*\.mjs$/.test(name));
const line = fs.readFileSync(path.join(dist, handler), "utf8").split("\n").find((l) => l.includes(" as validateRequestFrame"));
const [, names, from] = line.match(/^import \{(.*)\} from "(.*)";$/);
const exported = (local) => names.split(",").map((pair) => pair.trim().split(" as ")).find(([, name]) => name === local)[0];
import(path.join(dist, from)).then((module) => {
  const validate = module[exported("validateRequestFrame")], format = module[exported("formatValidationErrors")];
  const texts = JSON.parse(fs.readFileSync(0, "utf8"));
  process.stdout.write(JSON.stringify(texts.map((text) => {
    const parsed = JSON.parse(text);
    return validate(parsed) ? null : { errors: format(validate.errors), id: parsed?.id ?? "invalid" };
  })));
});
"""


def gateway_request_frame_checks(texts: list[str]) -> list[dict | None]:
    """For each frame's JSON text, what the gateway answers once connected: None for a request
    frame, else the `errors` text of its INVALID_REQUEST answer and the `id` it echoes."""
    done = subprocess.run([gateway_node(), "-e", _REQUEST_FRAME_SCRIPT, str(PACKAGE / "dist")], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)
