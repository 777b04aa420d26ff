"""`openclaw-sidecar probe`: fires a corpus of header-injection, route-confusion, smuggling and
side-door cases at any OpenClaw deployment and reports, per case, whether it was refused.

Modules: `corpus` (the cases as data, validated), `wire` (exact bytes over a raw socket), `ws` (the
RPC WebSocket over wsproto), `record` (what reached the demo backend), `verdict` (pure judging),
`engine` (running cases against a target and a baseline), `report` (table, JSON, JUnit), `text`
(bytes made readable), `arguments` and `command` (the CLI). The corpus and report formats are
documented in SCHEMA.md beside this file.
Like the rest of `sidecar`, nothing here imports mitmproxy.
"""
