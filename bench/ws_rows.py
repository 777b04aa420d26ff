"""Rows 2: WebSocket RPC frames the sidecar judges per second of its own CPU.

The backend is the demo backend's WebSocket echo (each forwarded frame comes back once), run on
the load CPU with the client; the sidecar alone on CPU0. Frames refused by the sidecar (a method
on the deny list) never reach the backend: those measure the judge alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .http_rows import NEVER_LOCKS
from .plumbing import LOAD_CPU, VENV_BIN, LoadWindow, Service, free_port, start_sidecar
from .report import Report, Row

TARGET_FRAMES_PER_CORE = 10_000
CASES = [
    ("2a", "health", "allowed `health` frames, forwarded (echoed back by the backend)"),
    ("2b", "tools.invoke", "allowed `tools.invoke` agents_list frames: tool policy, rewritten, forwarded"),
    ("2c", "terminal.open", "refused `terminal.open` frames (deny list), answered by the sidecar"),
]


def start_echo_backend(workdir: Path) -> Service:
    port = free_port()
    return Service("ws-backend", [str(VENV_BIN / "openclaw-sidecar"), "demo-backend", "--listen", f"127.0.0.1:{port}"],
                   workdir, cpus=LOAD_CPU, port=port)


def client(port: int, method: str, seconds: float, connections: int = 4) -> dict:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, str(VENV_BIN / "python"), "-m", "bench.ws_load", "--port", str(port),
                          "--method", method, "--connections", str(connections), "--seconds", str(seconds)],
                         capture_output=True, text=True, check=True, timeout=seconds + 60, cwd=Path(__file__).parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(report: Report, workdir: Path, seconds: float) -> None:
    backend = start_echo_backend(workdir)
    sidecar = None
    try:
        # Row 2c measures judging refused frames, not the budget that closes a flood of them.
        sidecar = start_sidecar("ws", workdir, backend_url(backend), rules=NEVER_LOCKS,
                                settings={"websocket": {"refusedFrames": {"burst": 10**9, "perSecond": 10**9}}})
        for row_id, method, name in CASES:
            client(sidecar.port, method, 1)  # warm-up
            load = LoadWindow()
            before = sidecar.cpu()
            result = client(sidecar.port, method, seconds)
            cpu = sidecar.cpu() - before
            per_core = result["frames"] / cpu if cpu else 0.0
            data = {**result, "sidecar_cpu_s": cpu, "us_per_frame": cpu / max(result["frames"], 1) * 1e6,
                    "frames_per_s": result["frames"] / result["seconds"], "frames_per_core_s": per_core, **load.end()}
            measured = (f"{per_core:,.0f} frames/s/core · {data['us_per_frame']:.0f} µs/frame · "
                        f"{data['frames_per_s']:,.0f} frames/s · foreign {data['foreign_cores']:.2f} cores")
            report.add(Row(row_id, name, measured, f"frames/s/core ≥ {TARGET_FRAMES_PER_CORE:,} (ratio to it)",
                           per_core / TARGET_FRAMES_PER_CORE, 1.0, data,
                           f"client errors: {result['errors']}" if result["errors"] or not result["frames"] else None))
    finally:
        for service in (sidecar, backend):
            if service is not None:
                service.stop()


def backend_url(backend: Service) -> str:
    return f"http://127.0.0.1:{backend.port}"
