"""Rows of the report: a measured figure, the target it is held to, PASS/FAIL; printed as a
Markdown table and written as JSON with every raw number behind it."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .plumbing import REPO


def paired_ratio(numerators: list[dict[str, Any]], denominators: list[dict[str, Any]], key: str) -> float:
    """The median of `key`'s per-round ratios: each pair was measured in the same round, so a drift
    of the machine between rounds cancels out (single windows moved ±20% here)."""
    return statistics.median(n[key] / d[key] for n, d in zip(numerators, denominators, strict=True))


@dataclass
class Row:
    id: str
    name: str
    measured: str  # the figure(s) as a person reads them
    target: str = ""  # e.g. "cpu_a/cpu_c >= 0.90"; empty for a reference row
    ratio: float | None = None
    threshold: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None  # why the row could not be measured here (e.g. no gateway installed)
    passed: bool | None = None  # for targets that are not a ratio to reach (soak: within 10%, back to baseline)

    @property
    def result(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.error:
            return "ERROR"
        if self.passed is not None:
            return "PASS" if self.passed else "FAIL"
        if self.threshold is None:
            return "ref"
        if self.ratio is None:
            return "n/a"
        return "PASS" if self.ratio >= self.threshold else "FAIL"


class Report:
    def __init__(self, args: dict[str, Any]) -> None:
        self.rows: list[Row] = []
        self.started = time.time()
        self.meta = {"args": args, "git_head": _git_head(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "machine": platform.machine(), "kernel": platform.release(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.id:<4} {row.result:<5} {row.name}: {row.measured}"
              + (f"  [{row.target}: {row.ratio:.2f}]" if row.ratio is not None else "")
              + (f"  ({row.error or row.skipped})" if row.error or row.skipped else ""), flush=True)
        return row

    def table(self) -> str:
        lines = ["| # | row | measured | target | ratio | result |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
            measured = r.measured + (f" — {r.error}" if r.error else "") + (f"skipped: {r.skipped}" if r.skipped else "")
            lines.append(f"| {r.id} | {r.name} | {measured} | {r.target} | {ratio} | {r.result} |")
        return "\n".join(lines)

    def noise_note(self) -> str | None:
        """The machine is shared: say so when another user's load overlapped the windows."""
        foreign = [r.data["foreign_cores"] for r in self.rows if isinstance(r.data.get("foreign_cores"), (int, float))]
        if not foreign or max(foreign) < 0.25:
            return None
        return (f"NOTE: foreign CPU load during the windows: median {sorted(foreign)[len(foreign) // 2]:.2f}, "
                f"max {max(foreign):.2f} of {self.meta['cpus']} cores (not this bench's processes): absolute figures "
                "are inflated; compare ratios, and re-run on a quiet machine for absolute numbers.")

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"meta": {**self.meta, "seconds": round(time.time() - self.started), "noise": self.noise_note()},
                    "rows": [{**asdict(r), "result": r.result} for r in self.rows]}
        path.write_text(json.dumps(document, indent=1) + "\n")


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "log", "--oneline", "-1"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
