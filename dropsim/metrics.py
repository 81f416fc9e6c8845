"""Metrics, declared once: every service increments these and `/metrics` exposes them (the
request series are written by `gateway/request_metrics.py`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by `dropsim serve --workers N`) before any worker imports prometheus-client: values then
go to per-process files in that directory, and `/metrics` sums them across workers."""


class LiveDropGauge(Collector):
    """A per-drop gauge whose series are replaced all at once, so drops no longer live vanish.

    Not a `Gauge`: prometheus-client cannot remove a label set in multiprocess mode, and these
    values are shared facts (the inventory in the KV store) that every worker reads alike, so
    each process reports its latest snapshot instead of adding up per-process files.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._values: Mapping[str, float] = {}

    def replace(self, values: Mapping[str, float]) -> None:
        """Make `values` (drop id -> value) the whole set of series (one reference swap)."""
        self._values = dict(values)

    def value(self, drop_id: str) -> float | None:
        return self._values.get(drop_id)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=["drop_id"])
        for drop_id, value in self._values.items():
            family.add_metric([drop_id], value)
        yield family


ORDERS = Counter(
    "dropsim_orders_total",
    "Orders by outcome: reserved, confirmed, failed, expired, refused (sold out, limit, not live).",
    ["outcome"],
)
RESERVATIONS_LIVE = LiveDropGauge(
    "dropsim_reservations_live",
    "Units held by reservations awaiting payment, per live drop.",
)
STOCK_AVAILABLE = LiveDropGauge(
    "dropsim_stock_available",
    "Units still available, per live drop.",
)
LIVE_DROP_GAUGES = (RESERVATIONS_LIVE, STOCK_AVAILABLE)
for _gauge in LIVE_DROP_GAUGES:
    REGISTRY.register(_gauge)
IDEMPOTENT_REPLAYS = Counter(
    "dropsim_idempotent_replays_total",
    "Requests answered from a stored idempotency record instead of running again.",
)
RATE_LIMITED = Counter(
    "dropsim_rate_limited_total",
    "Requests refused with 429, by route class and by what was limited (user or ip).",
    ["route_class", "scope"],
)
SSE_CONNECTIONS = Gauge(
    "dropsim_sse_connections",
    "Server-Sent Events streams open on this process.",
    multiprocess_mode="livesum",  # with several workers: open streams of the live workers
)
EVENTS_PUBLISHED = Counter(
    "dropsim_events_published_total",
    "Events appended to the event log, by type.",
    ["type"],
)
EVENTS_DELIVERED = Counter(
    "dropsim_events_delivered_total",
    "Events written to SSE streams, by type (one per stream that received it).",
    ["type"],
)
FANOUT_LAG = Histogram(
    "dropsim_fanout_lag_seconds",
    "Time from an event's publication to its hand-off to the last local stream that gets it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


REQUEST_LABELS = ["method", "path", "status_code", "app_name"]
"""`path` is the route's template (`/v1/drops/{drop_id}/orders`), never the path itself."""
REQUESTS = Counter("dropsim_requests_total", "Total requests", REQUEST_LABELS)
REQUEST_ERRORS = Counter("dropsim_requests_error_total", "Total errors in requests", REQUEST_LABELS)
REQUEST_SECONDS = Histogram(
    "dropsim_request_duration_seconds", "Request duration, in seconds", REQUEST_LABELS
)
REQUESTS_IN_PROGRESS = Gauge(
    "dropsim_requests_in_progress",
    "Requests being answered now",
    ["method", "path", "app_name"],
    multiprocess_mode="livesum",
)


def multiprocess_dir() -> str | None:
    """The directory where workers share their values, when several processes serve."""
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None
