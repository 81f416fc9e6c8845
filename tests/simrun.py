"""Recorded simulation runs for tests: a run directory written as the orchestrator and the load
processes write it, from data the test chooses (no server, no Locust)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dropsim.sim.recording import Outcome, Recorder
from dropsim.sim.scenario import Arrival, Scenario, deep_merge
from dropsim.sim.world import plan_arrivals

GO_LIVE = 1_800_000_000.0


def scenario(**overrides: Any) -> Scenario:
    base: dict[str, Any] = {
        "name": "recorded",
        "world": {"followers": 100},
        "drop": {"stock": 10},
        "load": {"rush": {"buyers": 50}},
        "budgets": {
            "error_rate": 0.01,
            "min_orders_per_second": 5,
            "endpoints": {"order": {"p50_ms": 100, "p99_ms": 500}},
        },
    }
    return Scenario.model_validate(deep_merge(base, overrides))


def audit_report(
    *, stock: int = 10, sold: int = 10, confirmed: int = 10, **checks: bool
) -> dict[str, Any]:
    names = (
        "counters_present",
        "balanced",
        "sold_matches_ledger",
        "never_oversold",
        "per_user_limit_respected",
        "one_order_per_key",
        "payments_match_orders",
    )
    verdicts = {name: checks.get(name, True) for name in names}
    return {
        "drop_id": "drp_recorded",
        "stock": stock,
        "available": stock - sold,
        "reserved": 0,
        "sold": sold,
        "confirmed_units_sql": confirmed,
        "confirmed_orders_sql": confirmed,
        "pending_orders_sql": 0,
        "per_user_limit": 1,
        "users_over_limit": [],
        "duplicate_keys": [],
        "orphan_payments": [],
        "unpaid_confirmed_orders": [],
        "checks": verdicts,
        "ok": all(verdicts.values()),
    }


def buyer_recorder(
    *,
    buyers: int = 50,
    stock: int = 10,
    latency_s: float = 0.02,
    failed: int = 0,
    late: int = 0,
    cpu_percent: float = 20.0,
    over_s: float = 5.0,
) -> Recorder:
    """A load process that saw `buyers` planned arrivals: `stock` confirmed, the rest sold out."""
    recorder = Recorder()
    offsets = plan_arrivals(buyers, Arrival.UNIFORM, over_s, seed=1)
    for index, offset in enumerate(offsets):
        planned = GO_LIVE + offset
        recorder.arrival(0.5 if index < late else 0.001, late_after_s=0.2)
        if index < failed:
            recorder.request("order", planned, 10.0, Outcome.FAILED)
            recorder.order_outcome("error")
            continue
        won = index < failed + stock
        recorder.request("order", planned, latency_s, Outcome.OK if won else Outcome.REJECTED)
        recorder.order_outcome("confirmed" if won else "sold_out")
        if won:
            recorder.request("order_confirmed", planned, latency_s + 0.3, Outcome.OK)
    for second in range(-3, 12):
        recorder.cpu_sample(GO_LIVE + second, cpu_percent)
    return recorder


def write_run(
    run_dir: Path,
    chosen: Scenario,
    recorders: list[Recorder],
    audit: dict[str, Any] | None,
    **extra: Any,
) -> Path:
    """A run directory with run.json and one load file per recorder."""
    load = run_dir / "load"
    load.mkdir(parents=True)
    for index, recorder in enumerate(recorders):
        (load / f"{index}.json").write_text(json.dumps(recorder.to_json() | {"pid": index}))
    run = {
        "scenario": chosen.model_dump(mode="json"),
        "metadata": {"git_revision": "abc123", "seed": chosen.seed, "scenario": chosen.name},
        "drop_id": "drp_recorded",
        "go_live_at": GO_LIVE,
        "ends_at": GO_LIVE + 10,
        "load_started_at": GO_LIVE - 5,
        "load_ended_at": GO_LIVE + 10,
        "audit": audit,
        "audit_at_rest": True,
        "stock": [(GO_LIVE + t, max(10 - 2 * t, 0), 0, min(2 * t, 10)) for t in range(-2, 10)],
        "server_cpu": [(GO_LIVE + t, 80.0) for t in range(-2, 10)],
        "faults": [],
        "notes": [],
        "interrupted": False,
    } | extra
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir
