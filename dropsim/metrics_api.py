"""The `/metrics` route: this process's registry, or every worker's values summed when several
processes serve (prometheus-client's multiprocess mode, set up by `dropsim serve --workers N`)."""

from __future__ import annotations

import os
from functools import cache

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dropsim.metrics import LIVE_DROP_GAUGES, multiprocess_dir


@cache
def _workers_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every worker's files at each scrape, plus this process's snapshot
    of the live-drop gauges (the same in every worker, so it is not summed)."""
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    for gauge in LIVE_DROP_GAUGES:
        registry.register(gauge)
    return registry


def scrape_registry() -> CollectorRegistry:
    """What `/metrics` exposes in this process."""
    directory = multiprocess_dir()
    return REGISTRY if directory is None else _workers_registry(directory)


def forget_this_worker() -> None:
    """Drop this process's live gauges from the shared directory (on a clean shutdown), so the
    `live*` gauges stop counting a worker that is gone."""
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


@get("/metrics", exclude_from_auth=True, include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    """Prometheus text exposition of every dropsim metric and the request histograms."""
    return Response(
        generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST, status_code=200
    )
