"""Business metrics, declared once: every service increments these and `/metrics` exposes them
(request latency by route comes from Litestar's Prometheus middleware, wired in app.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS = Counter(
    "dropsim_orders_total",
    "Orders by outcome: reserved, confirmed, failed, expired, refused (sold out, limit, not live).",
    ["outcome"],
)
RESERVATIONS_LIVE = Gauge(
    "dropsim_reservations_live",
    "Units held by reservations awaiting payment, per live drop.",
    ["drop_id"],
)
STOCK_AVAILABLE = Gauge(
    "dropsim_stock_available",
    "Units still available, per live drop.",
    ["drop_id"],
)
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
