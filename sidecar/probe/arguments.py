"""The `probe` subcommand's options, kept apart so that building the CLI parser stays cheap
(the engine, wsproto and httpx load only when a probe runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("table", "json", "junit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the gateway or the proxy in front of it, e.g. http://127.0.0.1:18790")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--token", help="the shared token (token mode)")
    secret.add_argument("--password", help="the shared password (password mode)")
    parser.add_argument("--identity-header", action="append", default=[], metavar="NAME=VALUE",
                        help="a header the trusted proxy adds (trusted-proxy mode); repeatable")
    parser.add_argument("--cases", metavar="GLOB", help="case ids to run, comma-separated globs (e.g. 'A*,E3.*')")
    parser.add_argument("--safe-tool", default="agents_list", metavar="NAME",
                        help="a read-only tool the credential may call (default %(default)s)")
    parser.add_argument("--baseline", metavar="URL", help="the gateway reached directly: every case is sent to both")
    parser.add_argument("--backend-record", metavar="URL",
                        help="the demo backend behind the target: check what actually reached it")
    parser.add_argument("--unsafe", action="store_true",
                        help="also run the cases that could change state on a vulnerable target")
    parser.add_argument("--ws-path", default="/", metavar="PATH",
                        help="path for the WebSocket cases (default %(default)s; the demo backend serves /ws)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for each answer (default %(default)s); a case ends at SECONDS per "
                             "answer it waits for (a pipeline's requests; a WebSocket's upgrade, connect and frame), "
                             "and an answer still trickling in then counts as timed out")
    parser.add_argument("--max-seconds", type=float, metavar="SECONDS",
                        help="send no further case once the run has taken this long (a case under way ends within "
                             "its --timeout): the cases not sent are inconclusive and the exit status is 2")
    parser.add_argument("--format", choices=FORMATS, default="table", help="report format (default table)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the report here instead of stdout")
