"""Operator metrics: OpenTelemetry instruments exported in Prometheus's text format.

One `Metrics` per process (`apex serve` serves it at `/metrics`, `apex worker` on
`APEX_WORKER_METRICS_PORT`), each with its own MeterProvider and registry: nothing global,
so several apps in one test process do not mix their counts. Counters are cumulative from
the process's start, as Prometheus expects (`rate()` and `increase()` handle restarts).

Labels stay bounded: HTTP metrics are labelled with the route template
(`/api/v1/findings/{finding_id}`), never the raw path; a path no route matched is
`unmatched`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import Scope

from apex import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST
log = structlog.get_logger(__name__)
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Metrics:
    """Every instrument of Apex; components record through the one their process holds."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        resource = Resource.create(
            {"service.name": service, "service.instance.id": instance_name(),
             "service.version": __version__}
        )  # fmt: skip
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.provider.get_meter("apex")
        self._meter = meter
        self.http_requests = meter.create_counter(
            "apex_http_requests", description="HTTP requests answered, by route and status."
        )
        self.http_duration = meter.create_histogram(
            "apex_http_request_duration", unit="s", description="HTTP request latency.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )  # fmt: skip
        self.records = meter.create_counter(
            "apex_usage_records", description="Usage records received, by verdict."
        )
        self.rate_limited = meter.create_counter(
            "apex_rate_limit_rejections", description="Requests refused by a rate limit."
        )
        self.websocket_connections = meter.create_up_down_counter(
            "apex_websocket_connections", description="WebSocket connections open."
        )
        self.websocket_messages = meter.create_counter(
            "apex_websocket_messages", description="WebSocket frames, by direction."
        )
        self.jobs = meter.create_counter(
            "apex_queue_jobs", description="Jobs a worker finished, by task and outcome."
        )
        self.job_duration = meter.create_histogram(
            "apex_queue_job_duration", unit="s", description="Job run time.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )  # fmt: skip
        self.llm_calls = meter.create_counter(
            "apex_llm_calls", description="LLM requests sent, by provider and outcome."
        )
        self.llm_tokens = meter.create_counter(
            "apex_llm_tokens", description="LLM tokens, by provider and kind (input, output)."
        )
        self.llm_cost = meter.create_counter(
            "apex_llm_cost_usd", description="What the agents' LLM calls cost, by provider."
        )
        self.llm_latency = meter.create_histogram(
            "apex_llm_request_duration", unit="s", description="LLM request latency.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )  # fmt: skip
        self.points_written = meter.create_counter(
            "apex_telemetry_points_written", description="Product points stored."
        )
        self.points_dropped = meter.create_counter(
            "apex_telemetry_points_dropped",
            description="Product points dropped because the buffer was full.",
        )

    def gauge(
        self,
        name: str,
        description: str,
        read: Callable[[], float | Iterable[tuple[float, dict[str, str]]]],
    ) -> None:
        """A value read at each scrape: one number, or (value, labels) pairs."""
        self._meter.create_observable_gauge(
            name, callbacks=[_observing(read)], description=description
        )

    def counted(
        self,
        name: str,
        description: str,
        read: Callable[[], Iterable[tuple[float, dict[str, str]]]],
    ) -> None:
        """A cumulative count kept elsewhere, read at each scrape (a counter, `_total`)."""
        self._meter.create_observable_counter(
            name, callbacks=[_observing(read)], description=description
        )

    def record_request(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        labels = {
            "method": scope.get("method", "WS"),
            "route": getattr(route, "path", "unmatched"),
            "status": str(status),
        }
        self.http_requests.add(1, labels)
        self.http_duration.record(seconds, labels)
        if status == 429:
            self.rate_limited.add(1, {"route": labels["route"]})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()


def observe_pool(metrics: Metrics, pool_status: Callable[[], Any]) -> None:
    """Gauges of the database pool (`pool_status()` as `Database.pool_status` answers)."""
    metrics.gauge(
        "apex_db_pool_in_use",
        "Database connections checked out.",
        lambda: pool_status().checked_out,
    )
    metrics.gauge("apex_db_pool_waiting", "Requests waiting for a database connection.",
                  lambda: pool_status().waiting)  # fmt: skip


def serve_metrics(metrics: Metrics, database: Any, host: str, port: int) -> None:
    """`apex worker`'s /metrics on its own port (0: none). A port already taken is logged,
    not fatal: the worker's jobs matter more than its metrics."""
    if port == 0:
        return
    observe_pool(metrics, database.pool_status)
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.error("metrics_port_unavailable", port=port, error=str(exc))
        return
    log.info("metrics_serving", port=port)


def observe_worker(metrics: Metrics, registry: Any, llm: Any) -> None:
    """`apex worker`'s gauges: the job stream's length at the last heartbeat, and which LLM
    providers' circuit breakers are open (1) or not (0)."""
    metrics.gauge("apex_queue_backlog", "Jobs in the queue's stream.", lambda: registry.backlog)
    metrics.gauge(
        "apex_llm_breaker_open", "1 while the provider's circuit breaker is open.",
        lambda: [(1.0 if breaker.state == "open" else 0.0, {"provider": name})
                 for name, breaker in llm.breakers.items()],
    )  # fmt: skip


def observe_replicas(metrics: Metrics, replicas: Any) -> None:
    """Replication lag per replica, as `apex serve` measures it."""
    if replicas is None:
        return
    metrics.gauge(
        "apex_db_replica_lag_seconds", "How far each replica is behind the primary.",
        lambda: [(replica.lag_seconds, {"replica": replica.name})
                 for replica in replicas.replicas],
    )  # fmt: skip


def observe_cache(metrics: Metrics, stats: dict[str, int]) -> None:
    """The two-level cache's lookups by result (`TwoLevelCache.stats`); the hit ratio is
    `sum(rate(...{result=~".*_hits"}))` over `sum(rate(...))`."""
    metrics.counted(
        "apex_cache_lookups", "Cache lookups by result (l1_hits, l2_hits, misses, bypassed).",
        lambda: [(float(count), {"result": result}) for result, count in stats.items()],
    )  # fmt: skip


def _observing(
    read: Callable[[], float | Iterable[tuple[float, dict[str, str]]]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An OpenTelemetry callback over `read`: one number, or (value, labels) pairs."""

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        value = read()
        if isinstance(value, int | float):
            yield Observation(value)
            return
        for each, labels in value:
            yield Observation(each, labels)

    return observe
