"""What a load process measured, as mergeable files: HDR histograms per endpoint (microseconds),
counts and histograms per second, fan-out lag, order outcomes, late arrivals and its own CPU.

Each Locust process writes one `load/<pid>.json`; the orchestrator merges them. No Locust here.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
"""One hour: anything slower is clamped (and is a failure long before)."""
SIGNIFICANT_FIGURES = 3
PER_SECOND_FIGURES = 2
"""Per-second histograms keep 1 % precision: there are hundreds of them."""


class Outcome(StrEnum):
    """How a request ended, for throughput and error rate."""

    OK = "ok"
    REJECTED = "rejected"
    """A business refusal the scenario expects (sold out, limit reached, not live yet): 4xx."""
    RATE_LIMITED = "rate_limited"
    """429: the gateway shed load as designed; not an error."""
    FAILED = "failed"
    """5xx, timeouts, resets, unexpected statuses: errors."""


EXPECTED_REFUSALS = frozenset(
    {"sold_out", "limit_reached", "drop_not_live", "idempotency_key_in_flight"}
)
"""Answers the protocol promises: business refusals, and "still running" to a retried key (the
timeout that caused the retry was already counted as a failure)."""


def classify(status: int, code: str | None = None) -> Outcome:
    """The outcome of an HTTP answer (status 0 means no answer: a timeout or a reset)."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (409, 410, 422) and code in EXPECTED_REFUSALS:
        return Outcome.REJECTED
    return Outcome.FAILED


def new_histogram(figures: int = SIGNIFICANT_FIGURES) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, figures)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration in seconds at microsecond resolution (clamped to the histogram)."""
    histogram.record_value(min(max(int(seconds * 1_000_000), LOWEST_US), HIGHEST_US))


@dataclass
class Recorder:
    """One load process's measurements, written to a JSON file at the end of the run."""

    totals: dict[str, HdrHistogram] = field(default_factory=dict)
    per_second: dict[str, dict[int, HdrHistogram]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    counts: dict[str, dict[str, dict[int, int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    )
    """endpoint -> outcome -> epoch second -> requests."""
    fanout: dict[str, HdrHistogram] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    arrivals: int = 0
    late_arrivals: int = 0
    max_lateness_s: float = 0.0
    cpu: list[tuple[float, float]] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)

    def request(self, endpoint: str, started: float, seconds: float, outcome: Outcome) -> None:
        """One answered (or failed) request that began at epoch `started` and took `seconds`."""
        histogram = self.totals.get(endpoint)
        if histogram is None:
            histogram = self.totals[endpoint] = new_histogram()
        record_seconds(histogram, seconds)
        second = int(started + seconds)
        slot = self.per_second[endpoint].get(second)
        if slot is None:
            slot = self.per_second[endpoint][second] = new_histogram(PER_SECOND_FIGURES)
        record_seconds(slot, seconds)
        self.counts[endpoint][outcome.value][second] += 1

    def fanout_lag(self, event_type: str, seconds: float) -> None:
        """An SSE event received `seconds` after it was published."""
        histogram = self.fanout.get(event_type)
        if histogram is None:
            histogram = self.fanout[event_type] = new_histogram()
        record_seconds(histogram, max(seconds, 0.0))

    def order_outcome(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def arrival(self, lateness_s: float, late_after_s: float) -> None:
        """A planned arrival started `lateness_s` after its plan."""
        self.arrivals += 1
        self.max_lateness_s = max(self.max_lateness_s, lateness_s)
        if lateness_s > late_after_s:
            self.late_arrivals += 1

    def cpu_sample(self, at: float, percent: float) -> None:
        self.cpu.append((at, percent))

    def note(self, text: str) -> None:
        """Something a person reading the report must know (a phase that could not run)."""
        self.notes.add(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "totals": {name: _encode(h) for name, h in self.totals.items()},
            "per_second": {
                name: {str(second): _encode(h) for second, h in seconds.items()}
                for name, seconds in self.per_second.items()
            },
            "counts": {
                name: {
                    outcome: {str(second): n for second, n in seconds.items()}
                    for outcome, seconds in by_outcome.items()
                }
                for name, by_outcome in self.counts.items()
            },
            "fanout": {name: _encode(h) for name, h in self.fanout.items()},
            "outcomes": dict(self.outcomes),
            "arrivals": self.arrivals,
            "late_arrivals": self.late_arrivals,
            "max_lateness_s": self.max_lateness_s,
            "cpu": self.cpu,
            "notes": sorted(self.notes),
        }

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{os.getpid()}.json"
        draft = path.with_suffix(".tmp")
        draft.write_text(json.dumps(self.to_json()))
        draft.replace(path)  # a reader never sees half a file
        return path


def _encode(histogram: HdrHistogram) -> str:
    encoded: bytes = histogram.encode()
    return encoded.decode()


def _decode(text: str) -> HdrHistogram:
    histogram: HdrHistogram = HdrHistogram.decode(text.encode())
    return histogram


@dataclass
class LoadRecord:
    """Every load process's measurements merged into one."""

    totals: dict[str, HdrHistogram] = field(default_factory=dict)
    per_second: dict[str, dict[int, HdrHistogram]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    fanout: dict[str, HdrHistogram] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    arrivals: int = 0
    late_arrivals: int = 0
    max_lateness_s: float = 0.0
    cpu: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    """pid -> (epoch, percent of one core) samples."""
    notes: list[str] = field(default_factory=list)
    processes: int = 0

    @classmethod
    def merge(cls, files: Iterable[dict[str, Any]]) -> LoadRecord:
        record = cls()
        notes: set[str] = set()
        for data in files:
            record.processes += 1
            _merge_histograms(record.totals, data["totals"])
            _merge_histograms(record.fanout, data["fanout"])
            for name, seconds in data["per_second"].items():
                slots = record.per_second.setdefault(name, {})
                _merge_histograms(slots, {int(s): text for s, text in seconds.items()})
            for name, by_outcome in data["counts"].items():
                into = record.counts.setdefault(name, {})
                for outcome, seconds in by_outcome.items():
                    per = into.setdefault(outcome, {})
                    for second, n in seconds.items():
                        per[int(second)] = per.get(int(second), 0) + int(n)
            for outcome, n in data["outcomes"].items():
                record.outcomes[outcome] = record.outcomes.get(outcome, 0) + int(n)
            record.arrivals += int(data["arrivals"])
            record.late_arrivals += int(data["late_arrivals"])
            record.max_lateness_s = max(record.max_lateness_s, float(data["max_lateness_s"]))
            record.cpu[int(data["pid"])] = [(float(t), float(p)) for t, p in data["cpu"]]
            notes.update(data["notes"])
        record.notes = sorted(notes)
        return record

    @classmethod
    def read(cls, directory: Path) -> LoadRecord:
        """Merge every `*.json` a load process wrote into `directory`."""
        return cls.merge(json.loads(path.read_text()) for path in sorted(directory.glob("*.json")))

    def count(self, endpoint: str, outcome: Outcome) -> int:
        return sum(self.counts.get(endpoint, {}).get(outcome.value, {}).values())


def _merge_histograms(into: dict[Any, HdrHistogram], encoded: dict[Any, str]) -> None:
    for key, text in encoded.items():
        histogram = _decode(text)
        if key in into:
            into[key].add(histogram)
        else:
            into[key] = histogram


def percentile_ms(histogram: HdrHistogram | None, percentile: float) -> float | None:
    """The value at `percentile` in milliseconds, or None for an empty histogram."""
    if histogram is None or histogram.get_total_count() == 0:
        return None
    value: int = histogram.get_value_at_percentile(percentile)
    return value / 1000.0
