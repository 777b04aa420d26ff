"""openclaw-sidecar: the enforcement pipeline for the OpenClaw Gateway's POST /tools/invoke.

Pure and engine-agnostic: nothing under `sidecar` imports mitmproxy (the adapter in `addons`
does). The public surface is the few names below.
"""

from .config import Config, ConfigError, load_config
from .pipeline import Admitted, Forward, Pipeline, Refuse
from .runtime import Runtime, build_runtime
from .view import RequestView

__all__ = [
    "Admitted", "Config", "ConfigError", "Forward", "Pipeline", "Refuse", "RequestView", "Runtime",
    "build_runtime", "load_config",
]
