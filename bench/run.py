"""`make bench`: the issue-13 report in one run, every reference measured beside what it judges.

    .venv/bin/python -m bench [--quick] [--only http,ws,gateway,soak] [--json PATH]

Rows, in priority order (a partial run still reports what it finished):
  1  CPU per POST /tools/invoke: bare Master, mitmdump, the sidecar (memory, Redis), refusals
  2  WebSocket RPC frames judged per second per core (forwarded and refused)
  3  in front of the real OpenClaw gateway: allowed calls alone and under floods
  4  soak of mixed traffic: RSS, descriptors, internal errors
Prints a Markdown table and writes JSON (bench/results/latest.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from bench import gateway_rows, http_rows, soak, ws_rows  # noqa: E402
from bench.plumbing import REPO  # noqa: E402
from bench.report import Report, Row  # noqa: E402

SECTIONS = ("http", "ws", "gateway", "soak")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows, one round, 1-minute soak (~5 minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--seconds", type=float, help="seconds per HTTP/WebSocket window (default 6, quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds over the HTTP proxies, median taken (default 4, quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for rows 1 (default 16)")
    parser.add_argument("--gateway-seconds", type=float, help="seconds per real-gateway phase (default 10, quick 4)")
    parser.add_argument("--gateway-rounds", type=int, default=4,
                        help="rounds over the unloaded real-gateway arms, median taken (default 4)")
    parser.add_argument("--soak-seconds", type=float, help="soak length (default 600, quick 60)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (3 if quick else 6)
    args.rounds = args.rounds or (1 if quick else 4)
    args.gateway_seconds = args.gateway_seconds or (4 if quick else 10)
    args.soak_seconds = args.soak_seconds or (60 if quick else 600)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "nginx", "taskset", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (scripts/ensure-bench-tools installs them)", file=sys.stderr)
        return 2
    report = Report({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    print(f"bench at {report.meta['git_head']} ({report.meta['cpus']} CPUs)", flush=True)
    sections = {
        "http": lambda wd: http_rows.run(report, wd, args.seconds, args.rounds, args.connections),
        "ws": lambda wd: ws_rows.run(report, wd, args.seconds),
        "gateway": lambda wd: gateway_rows.run(report, wd, args.gateway_seconds, args.gateway_rounds),
        "soak": lambda wd: soak.run(report, wd, args.soak_seconds),
    }
    with tempfile.TemporaryDirectory(prefix="openclaw-bench-") as tmp:
        for name in args.only:
            print(f"== {name}", flush=True)
            started = time.monotonic()
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                sections[name](workdir)
            except Exception as exc:  # one broken section must not cost the others
                traceback.print_exc()
                report.add(Row(name, f"{name} section", "", error=f"{type(exc).__name__}: {exc}"))
            print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
            report.write(args.json)  # after every section: a partial run still leaves its rows
    print()
    print(report.table())
    if note := report.noise_note():
        print(f"\n{note}")
    print(f"\nJSON: {args.json}")
    return 1 if any(r.result == "ERROR" for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
