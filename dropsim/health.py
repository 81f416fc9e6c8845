"""Health routes: liveness (the process answers) and readiness (every backend answers)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from dropsim.backends import Backends

READY_TIMEOUT_SECONDS = 2.0


@get("/health/live", exclude_from_auth=True, tags=["health"])
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", exclude_from_auth=True, tags=["health"])
async def ready(state: State) -> Response[dict[str, Any]]:
    """200 when the KV store and every SQL shard answer within 2 s, else 503 naming the failures."""
    backends: Backends | None = getattr(state, "backends", None)
    if backends is None:
        return Response({"status": "starting", "checks": {}}, status_code=503)
    checks: dict[str, str] = {}
    for name, probe in (("kv", backends.kv.ping()), ("sql", backends.db.ping())):
        try:
            await asyncio.wait_for(probe, READY_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failing: {type(exc).__name__}: {exc}"[:300]
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "failing", "checks": checks}
    return Response(body, status_code=200 if healthy else 503)
