"""Observability: structured logs with request ids, health checks (tracing and metrics later)."""
