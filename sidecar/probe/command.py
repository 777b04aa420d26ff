"""`openclaw-sidecar probe`: options in, report out, exit status.

Exit status: 0 when no case failed, 1 when any case failed (or, with --baseline, let through
what the baseline refused), 2 when the probe could not run as asked (or write its report), was cut
short or judged no case but the controls, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from .corpus import CorpusError, load_corpus
from .engine import CaseResult, Options, Probe, Report
from .report import LABELS, render_junit, render_table, to_json
from .wire import ProbeSetupError

WRITERS = {
    "table": render_table,
    "json": lambda report: json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n",
    "junit": render_junit,
}


MAX_TIMEOUT_SECONDS = 3600  # a deadline past what the clock can represent crashed the run (1e300)
MAX_RUN_SECONDS = 7 * 24 * 3600


def options_from(args: argparse.Namespace) -> Options:
    identity = []
    for item in args.identity_header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ProbeSetupError(f"--identity-header {item!r}: expected NAME=VALUE")
        identity.append((name.strip(), value))
    if not args.ws_path.startswith("/"):
        raise ProbeSetupError(f"--ws-path {args.ws_path!r} must start with /")
    _check_seconds("--timeout", args.timeout, MAX_TIMEOUT_SECONDS)
    if args.max_seconds is not None:
        _check_seconds("--max-seconds", args.max_seconds, MAX_RUN_SECONDS)
    return Options(target=args.url, baseline=args.baseline, backend_record=args.backend_record,
                   secret=args.token or args.password, secret_field="password" if args.password else "token",
                   identity=tuple(identity), cases=args.cases, safe_tool=args.safe_tool, unsafe=args.unsafe,
                   ws_path=args.ws_path, timeout=args.timeout, max_seconds=args.max_seconds)


def _check_seconds(option: str, seconds: float, most: float) -> None:
    if not 0 < seconds <= most:  # also refuses nan, which every comparison fails
        raise ProbeSetupError(f"{option} {seconds!r} must be more than 0 and at most {most} seconds")


class Progress:
    """A bar redrawn in place on a terminal; one plain line per case otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, index: int, total: int, result: CaseResult) -> None:
        if self.tty:
            done = self.WIDTH * index // total
            self.stream.write(f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] {index}/{total} {result.case.id[:40]:<40}")
            if index == total:
                self.stream.write("\r" + " " * (self.WIDTH + 56) + "\r")
        else:
            self.stream.write(f"[{index:>3}/{total}] {LABELS[result.verdict]:<14} {result.case.id}\n")
        self.stream.flush()


def run_probe(args: argparse.Namespace, version: str) -> int:
    try:
        report: Report = Probe(load_corpus(), options_from(args), version).run(Progress(sys.stderr))
        text = WRITERS[args.format](report)
        if args.out:
            args.out.write_text(text, encoding="utf-8")
            print(f"report written to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    except (ProbeSetupError, CorpusError, OSError) as exc:
        print(f"openclaw-sidecar probe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nopenclaw-sidecar probe: interrupted, no report written", file=sys.stderr)
        return 130
    return report.exit_code()
