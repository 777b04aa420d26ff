"""Thin mitmproxy adapter."""
