"""Command line: the only reader of argv.

`run` and `demo` need the proxy engine; it is imported lazily from `addons.embedded`, so
importing any `sidecar` module never imports mitmproxy. `demo` and `demo-backend` likewise import
the demo gateway from its own package, `openclaw_demo`, only when they run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, Config, camel_keys, load_config, redacted_view, split_host_port, unknown_environment
from .errors import ConfigError
from .probe.arguments import add_arguments as add_probe_arguments

log = logging.getLogger("sidecar")


def _version() -> str:
    try:
        return version("openclaw-sidecar")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openclaw-sidecar",
        description="Enforcing reverse proxy for the OpenClaw Gateway: POST /tools/invoke, its other routes and its RPC WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the sidecar in front of a gateway",
        description="Run the sidecar. Every setting has a default; precedence: flags > environment "
                    f"({ENV_PREFIX}<KEY>, nested with __, e.g. {ENV_PREFIX}RATE_LIMIT__STORAGE) > file > defaults.",
    )
    run.add_argument("--config", type=Path, help="YAML or JSON5 config file (default: none, every setting at its default)")
    run.add_argument("--listen", help=f"HOST:PORT to listen on (default 127.0.0.1:18790; env {ENV_PREFIX}LISTEN)")
    run.add_argument("--upstream", help=f"gateway URL (default http://127.0.0.1:18789; env {ENV_PREFIX}UPSTREAM)")

    demo = commands.add_parser("demo", help="demo backend plus sidecar with a fresh token")
    demo.add_argument("--listen", default="127.0.0.1:18790", help="sidecar HOST:PORT (default %(default)s)")

    backend = commands.add_parser("demo-backend", help="run only the demo tool backend")
    backend.add_argument("--listen", default="127.0.0.1:18789", help="HOST:PORT (default %(default)s)")
    backend.add_argument("--token", help="require this bearer token (default: none)")

    check = commands.add_parser(
        "check-config", help="validate a config file and print it, secrets redacted",
        description="Print the effective configuration (camelCase, secrets masked) and exit 0; exit 1 naming each "
                    "bad key, or when the config can never authenticate anyone.",
    )
    check.add_argument("file", type=Path, help="YAML or JSON5 config file")

    explain = commands.add_parser("explain", help="show how the tool policy decides one tool call, layer by layer")
    explain.add_argument("--config", required=True, type=Path, help="YAML or JSON5 config file")
    explain.add_argument("--tool", help="the tool name as the caller sends it (for POST /tools/invoke and tools.invoke)")
    explain.add_argument("--scopes", help="the caller's x-openclaw-scopes (default: the gateway's default set)")
    explain.add_argument("--user", help="the caller's identity (scope ceilings and pinned headers)")
    explain.add_argument("--session-key", help="the body's sessionKey")
    explain.add_argument("--agent-id", help="the body's agentId")
    explain.add_argument("--channel", help="x-openclaw-message-channel as the caller sends it")
    explain.add_argument("--account", help="x-openclaw-account-id as the caller sends it")
    explain.add_argument("--websocket-method", help="explain an RPC frame of this method instead of POST /tools/invoke")
    explain.add_argument("--json", action="store_true", help="print JSON")

    probe = commands.add_parser("probe", help="fire the attack corpus at a gateway, or a proxy in front of one")
    add_probe_arguments(probe)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k in ("listen", "upstream") if (v := getattr(args, k, None)) is not None}


def _report_config_error(exc: ConfigError) -> int:
    print("configuration error:", file=sys.stderr)
    for key, why in exc.problems:
        print(f"  {key}: {why}", file=sys.stderr)
    return 1


def _serve(config: Config, config_path: Path, overrides: dict[str, Any] | None = None, on_ready: Any = None) -> int:
    from addons.embedded import serve  # the engine; see the module docstring

    return serve(config, on_ready=on_ready, config_path=config_path, overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        return _report_config_error(exc)
    _setup_logging(config.sidecar.log_level)
    _warn_unknown_environment()
    try:
        return _serve(config, args.config, overrides)
    except ConfigError as exc:  # found while building the runtime: the storage, its password file
        return _report_config_error(exc)


def _warn_unknown_environment() -> None:
    for name in unknown_environment(os.environ):
        log.warning("%s names no setting and is ignored (see `openclaw-sidecar run --help`)", name)


async def _build_and_close(config: Config) -> None:
    """Build the runtime `run` would start with (no connection is opened), then release it."""
    from .runtime import build_runtime

    await build_runtime(config, warn=False).aclose()


def cmd_check_config(args: argparse.Namespace) -> int:
    from .runtime import config_warnings

    try:
        config = load_config(args.file)
        asyncio.run(_build_and_close(config))  # as `run` starts: the storage and its password file
    except ConfigError as exc:
        return _report_config_error(exc)
    print(json.dumps(camel_keys(redacted_view(config)), indent=2, sort_keys=True))
    for name in unknown_environment(os.environ):
        print(f"warning: {name} names no setting and is ignored", file=sys.stderr)
    for message in config_warnings(config):
        print(f"warning: {message}", file=sys.stderr)
    return _report_auth_problems(config)


def _report_auth_problems(config: Config) -> int:
    """1, saying why, when every request would be refused (no credential resolved, no one trusted):
    not a usable config."""
    for problem in config.secrets.problems:
        print(f"configuration error: {problem}", file=sys.stderr)
    return 1 if config.secrets.problems else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain, render_text

    judges_a_tool = args.websocket_method in (None, "tools.invoke")
    if (args.tool is None) is judges_a_tool:
        why = ("--tool is required, unless --websocket-method names a method other than tools.invoke" if judges_a_tool
               else "--tool names the tool of POST /tools/invoke or of --websocket-method tools.invoke, and only there")
        print(f"openclaw-sidecar explain: {why}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _report_config_error(exc)
    if _report_auth_problems(config):  # the running sidecar answers every request 401
        return 1
    if args.user is not None and config.secrets.mode != "trusted-proxy":
        print(f"openclaw-sidecar explain: --user is a trusted-proxy identity; a {config.secrets.mode} caller has none",
              file=sys.stderr)
        return 2
    result = explain(config, args.tool, scopes=args.scopes, user=args.user, session_key=args.session_key,
                     agent_id=args.agent_id, channel=args.channel, account=args.account,
                     websocket_method=args.websocket_method)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else render_text(result), end="\n" if args.json else "")
    return 0


def cmd_demo_backend(args: argparse.Namespace) -> int:
    from openclaw_demo.backend import serve_forever  # the demo is no part of `sidecar`: loaded only here

    host, port = split_host_port(args.listen)
    serve_forever(host, port, args.token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from openclaw_demo.backend import DemoBackend  # the demo is no part of `sidecar`: loaded only here

    _setup_logging("WARNING")
    token = secrets.token_urlsafe(24)
    with DemoBackend(token=token) as backend, tempfile.TemporaryDirectory(prefix="openclaw-sidecar-demo-") as tmp:
        # Given as flags are, so that no OPENCLAW_SIDECAR_* the shell exports moves the demo off
        # --listen or points it at another upstream (`environ` governs the gateway's keys only).
        wiring = {"listen": args.listen, "upstream": backend.url, "runtime_dir": str(Path(tmp) / "run"),
                  "admin_listen": "127.0.0.1:0"}
        config_file = Path(tmp) / "demo.yaml"
        config_file.write_text(json.dumps({"gateway": {"auth": {"mode": "token", "token": token}}}))
        try:
            config = load_config(config_file, wiring, environ={})
        except ConfigError as exc:
            return _report_config_error(exc)

        def announce(url: str) -> None:
            print(f"openclaw-sidecar demo: sidecar {url} -> demo backend {backend.url}", flush=True)
            print(f"token: {token}", flush=True)
            print("try:", flush=True)
            print(
                f"  curl -sS -X POST {url}/tools/invoke -H 'Authorization: Bearer {token}' "
                "-H 'Content-Type: application/json' -d '{\"tool\":\"agents_list\"}'",
                flush=True,
            )
            print("press Ctrl-C to stop", flush=True)

        return _serve(config, config_file, wiring, on_ready=announce)


def cmd_probe(args: argparse.Namespace) -> int:
    from .probe.command import run_probe  # the engine, wsproto and httpx load only for a probe

    return run_probe(args, _version())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "demo": cmd_demo, "demo-backend": cmd_demo_backend, "check-config": cmd_check_config,
                "probe": cmd_probe, "explain": cmd_explain}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
