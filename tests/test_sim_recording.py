"""The pieces load processes use: outcome classes, HDR recording and merging, planned arrivals,
slot claims shared between processes, and the SSE frame parser."""

from __future__ import annotations

import json
import multiprocessing
import statistics
from pathlib import Path

import pytest

from dropsim.sim.recording import LoadRecord, Outcome, Recorder, classify, percentile_ms
from dropsim.sim.scenario import Arrival
from dropsim.sim.sse import EventParser
from dropsim.sim.world import claim_slot, plan_arrivals


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (201, None, Outcome.OK),
        (409, "sold_out", Outcome.REJECTED),
        (409, "limit_reached", Outcome.REJECTED),
        (409, "drop_not_live", Outcome.REJECTED),
        (409, "idempotency_key_in_flight", Outcome.REJECTED),
        (422, "idempotency_key_reused", Outcome.FAILED),
        (429, "rate_limited", Outcome.RATE_LIMITED),
        (500, None, Outcome.FAILED),
        (0, None, Outcome.FAILED),
        (404, "not_found", Outcome.FAILED),
    ],
)
def test_outcomes(status: int, code: str | None, outcome: Outcome) -> None:
    assert classify(status, code) is outcome


def test_histograms_keep_microseconds_and_merge_across_processes() -> None:
    first, second = Recorder(), Recorder()
    for index in range(1000):
        first.request("order", 100.0, 0.001 + index / 1_000_000, Outcome.OK)  # 1.000..1.999 ms
        second.request("order", 101.5, 0.5, Outcome.REJECTED)
    merged = LoadRecord.merge(
        [json.loads(json.dumps(r.to_json() | {"pid": n})) for n, r in enumerate((first, second))]
    )
    total = merged.totals["order"]
    assert total.get_total_count() == 2000
    assert percentile_ms(total, 10) == pytest.approx(1.2, abs=0.002)  # microseconds kept
    assert percentile_ms(total, 99) == pytest.approx(500, rel=0.01)
    assert merged.count("order", Outcome.OK) == 1000
    assert merged.count("order", Outcome.REJECTED) == 1000
    # bucketed by the second each request ended in
    assert set(merged.per_second["order"]) == {100, 102}


def test_front_loaded_arrivals_come_mostly_early_and_are_seeded() -> None:
    offsets = plan_arrivals(1000, Arrival.FRONT_LOADED, 10.0, seed=1)
    assert len(offsets) == 1000
    assert max(offsets) <= 10.0
    assert statistics.median(offsets) < 2.0  # half within the first fifth
    assert offsets == plan_arrivals(1000, Arrival.FRONT_LOADED, 10.0, seed=1)
    assert offsets != plan_arrivals(1000, Arrival.FRONT_LOADED, 10.0, seed=2)
    uniform = sorted(plan_arrivals(100, Arrival.UNIFORM, 10.0, seed=1))
    assert uniform[0] == pytest.approx(0.05)
    assert uniform[-1] == pytest.approx(9.95)
    assert max(plan_arrivals(100, Arrival.BURST, 10.0, seed=1)) < 0.1


def _claim_many(claims: str, count: int, out: multiprocessing.Queue[list[int]]) -> None:
    out.put([claim_slot(Path(claims), "buyers") for _ in range(count)])


def test_slots_are_unique_across_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[list[int]] = context.Queue()
    workers = [
        context.Process(target=_claim_many, args=(str(tmp_path), 200, out)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    claimed = [slot for _ in workers for slot in out.get(timeout=60)]
    for worker in workers:
        worker.join()
    assert sorted(claimed) == list(range(800))


def test_sse_parser_reads_frames_comments_and_the_publish_time() -> None:
    parser = EventParser()
    lines = [
        ": heartbeat",
        "",
        "retry: 3000",
        "id: 17-0",
        "event: drop.stock",
        'data: {"id": "17-0", "type": "drop.stock", "at": 1800000000.25,',
        'data:  "data": {"available": 3}}',
        "",
    ]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert len(events) == 1
    event = events[0]
    assert (event.id, event.type) == ("17-0", "drop.stock")
    assert event.published_at() == 1800000000.25
    assert parser.feed("data: not json") is None
    plain = parser.feed("")
    assert plain is not None
    assert plain.type == "message"
    assert plain.published_at() is None
