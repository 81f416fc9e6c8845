"""Budgets: is a run a pass, a breach, or not a valid measurement at all? Plus the comparison
with an earlier run that calls a regression only when it is beyond the noise.

Exit codes of `dropsim simulate` (also in the README and `--help`):
    0  pass: the audit is clean, the measurement is valid and every budget holds
    2  usage or configuration error (bad scenario, unreachable backend)
    3  a budget is breached (or a significant regression against --baseline)
    4  invalid measurement: the load generator saturated or could not start arrivals on time
    5  the audit found a broken invariant (oversold, duplicate, lost order, unbalanced ledger);
       this wins over everything else
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from dropsim.sim.scenario import Budgets, Measurement

EXIT_PASS = 0
EXIT_BREACH = 3
EXIT_INVALID = 4
EXIT_AUDIT = 5

Verdict = Literal["pass", "breach", "invalid", "audit_failed"]
EXIT_CODES: dict[Verdict, int] = {
    "pass": EXIT_PASS,
    "breach": EXIT_BREACH,
    "invalid": EXIT_INVALID,
    "audit_failed": EXIT_AUDIT,
}

DEFAULT_TOLERANCE = 0.2
"""A change smaller than 20 % of the baseline's median is noise on these machines."""
DEFAULT_ALPHA = 0.01
MIN_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    limit: str
    actual: str
    status: Literal["pass", "breach", "skipped"]

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "limit": self.limit,
            "actual": self.actual,
            "status": self.status,
        }


def _ms(value: float | None) -> str:
    return "no data" if value is None else f"{value:.1f} ms"


def _latency_checks(summary: dict[str, Any], budgets: Budgets) -> list[Check]:
    checks = []
    for endpoint, budget in sorted(budgets.endpoints.items()):
        stats = summary["endpoints"].get(endpoint)
        for label, key, limit in (
            ("p50", "p50_ms", budget.p50_ms),
            ("p99", "p99_ms", budget.p99_ms),
            ("p99.9", "p999_ms", budget.p999_ms),
        ):
            if limit is None:
                continue
            actual = None if stats is None else stats[key]
            ok = actual is not None and actual <= limit
            checks.append(
                Check(
                    f"{endpoint} {label}",
                    f"<= {limit:g} ms",
                    _ms(actual),
                    "pass" if ok else "breach",
                )
            )
    return checks


def evaluate(
    summary: dict[str, Any], budgets: Budgets, measurement: Measurement
) -> tuple[list[Check], list[str], Verdict]:
    """The budget checks, why the measurement is invalid (if it is), and the verdict."""
    checks = _latency_checks(summary, budgets)
    requests = summary["requests"]
    if budgets.error_rate is not None:
        rate = requests["error_rate"]
        checks.append(
            Check(
                "error rate",
                f"<= {budgets.error_rate:.2%}",
                f"{rate:.2%} ({requests['failed']} of {requests['total']})",
                "pass" if rate <= budgets.error_rate else "breach",
            )
        )
    if budgets.fanout_lag_p99_ms is not None:
        fanout = summary["fanout"]
        if not fanout["available"]:
            checks.append(
                Check(
                    "fan-out lag p99",
                    f"<= {budgets.fanout_lag_p99_ms:g} ms",
                    "not measured: " + fanout["why_not"],
                    "skipped",
                )
            )
        else:
            ok = fanout["p99_ms"] <= budgets.fanout_lag_p99_ms
            checks.append(
                Check(
                    "fan-out lag p99",
                    f"<= {budgets.fanout_lag_p99_ms:g} ms",
                    _ms(fanout["p99_ms"]),
                    "pass" if ok else "breach",
                )
            )
    if budgets.min_orders_per_second is not None:
        rate = summary["orders"]["orders_per_second"]
        checks.append(
            Check(
                "orders decided per second",
                f">= {budgets.min_orders_per_second:g}",
                f"{rate:.1f}",
                "pass" if rate >= budgets.min_orders_per_second else "breach",
            )
        )
    audit = summary["audit"]
    checks.append(
        Check(
            "audit clean",
            "no violation",
            "clean" if audit["ok"] else "; ".join(audit["violations"]),
            "pass" if audit["ok"] else "breach",
        )
    )
    invalid = invalid_reasons(summary, measurement)
    if not audit["ok"]:
        verdict: Verdict = "audit_failed"
    elif invalid:
        verdict = "invalid"
    elif any(check.status == "breach" for check in checks):
        verdict = "breach"
    else:
        verdict = "pass"
    return checks, invalid, verdict


def invalid_reasons(summary: dict[str, Any], measurement: Measurement) -> list[str]:
    """Why the load generator's numbers cannot be trusted (empty when they can)."""
    load = summary["load"]
    reasons = []
    if load["processes"] == 0:
        reasons.append("no load process wrote its measurements (Locust failed or was killed)")
    if load["arrivals_planned"] and load["arrivals"] < load["arrivals_planned"]:
        missing = load["arrivals_planned"] - load["arrivals"]
        reasons.append(f"{missing} planned arrivals never started")
    if load["arrivals"] and load["late_fraction"] > measurement.max_late_fraction:
        reasons.append(
            f"{load['late_arrivals']} of {load['arrivals']} arrivals started more than "
            f"{measurement.late_arrival_ms:g} ms late ({load['late_fraction']:.1%} > "
            f"{measurement.max_late_fraction:.1%}); worst {load['max_lateness_ms']:.0f} ms"
        )
    if load["saturated_seconds"] >= measurement.saturation_seconds:
        reasons.append(
            f"a load process ran at >= {measurement.cpu_saturation_percent:g} % CPU for "
            f"{load['saturated_seconds']} s in a row after go-live: it measured itself"
        )
    return reasons


def saturated_run(cpu: list[tuple[float, float]], since: float, threshold: float) -> int:
    """The longest run of consecutive samples at or above `threshold` taken after `since`."""
    longest = current = 0
    for at, percent in cpu:
        if at < since:
            continue
        current = current + 1 if percent >= threshold else 0
        longest = max(longest, current)
    return longest


def mann_whitney_greater(sample: list[float], reference: list[float]) -> float:
    """One-sided p-value that `sample` tends to be larger than `reference` (Mann-Whitney U,
    normal approximation with tie correction; fine from about 5 values a side)."""
    n1, n2 = len(sample), len(reference)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranked = sorted([(value, 0) for value in sample] + [(value, 1) for value in reference])
    ranks = [0.0] * len(ranked)
    ties = 0.0
    index = 0
    while index < len(ranked):
        end = index
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[index][0]:
            end += 1
        rank = (index + end) / 2 + 1
        for position in range(index, end + 1):
            ranks[position] = rank
        size = end - index + 1
        ties += size**3 - size
        index = end + 1
    rank_sum = sum(rank for rank, (_, side) in zip(ranks, ranked, strict=True) if side == 0)
    u = rank_sum - n1 * (n1 + 1) / 2
    total = n1 + n2
    variance = n1 * n2 / 12 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare(
    summary: dict[str, Any],
    baseline: dict[str, Any],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
) -> list[Check]:
    """Regressions against `baseline`: a metric is worse only when its median moved beyond
    `tolerance` AND a Mann-Whitney test on the per-second samples says p < `alpha`."""
    checks = []
    now, before = summary["samples"], baseline.get("samples", {})
    for metric, higher_is_worse in [(name, True) for name in sorted(now["p99_ms"])] + [
        ("orders_per_second", False)
    ]:
        if metric == "orders_per_second":
            current, reference = now["orders_per_second"], before.get("orders_per_second", [])
            label = "orders per second"
        else:
            current = now["p99_ms"][metric]
            reference = before.get("p99_ms", {}).get(metric, [])
            label = f"{metric} p99 per second"
        if len(current) < MIN_SAMPLES or len(reference) < MIN_SAMPLES:
            checks.append(
                Check(f"regression: {label}", "vs baseline", "too few samples", "skipped")
            )
            continue
        median_now, median_before = statistics.median(current), statistics.median(reference)
        if higher_is_worse:
            moved = median_now > median_before * (1 + tolerance)
            p = mann_whitney_greater(current, reference)
        else:
            moved = median_now < median_before * (1 - tolerance)
            p = mann_whitney_greater(reference, current)
        regressed = moved and p < alpha
        checks.append(
            Check(
                f"regression: {label}",
                f"median within {tolerance:.0%} of {median_before:.1f} or p >= {alpha:g}",
                f"median {median_now:.1f}, p = {p:.3g}",
                "breach" if regressed else "pass",
            )
        )
    return checks
