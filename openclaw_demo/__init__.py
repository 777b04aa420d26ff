"""The demo gateway behind `openclaw-sidecar demo` and the end-to-end tests (`openclaw_demo.backend`).

Not part of the product: `sidecar` imports it only inside the `demo` and `demo-backend` commands.
"""
