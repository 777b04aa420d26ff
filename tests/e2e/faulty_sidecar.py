"""`python -m tests.e2e.faulty_sidecar run --config FILE`: the sidecar with a fault in its body
judgment, to see what an internal error does in a live process (mitmproxy relays a request whose
hook raised unless the adapter itself stops it)."""

import sys

from sidecar import cli
from sidecar.pipeline import Pipeline


async def _fault(*args: object, **kwargs: object) -> None:
    raise RuntimeError("fault injected by tests.e2e.faulty_sidecar")


Pipeline.on_body = _fault  # type: ignore[method-assign, assignment]
sys.exit(cli.main())
