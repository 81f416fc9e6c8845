"""A run's summary (summary.json), its Markdown (summary.md) and JUnit (junit.xml) forms, built
from what the orchestrator and the load processes recorded in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from hdrh.histogram import HdrHistogram

from dropsim.sim import budgets
from dropsim.sim.recording import LoadRecord, Outcome, new_histogram, percentile_ms
from dropsim.sim.scenario import Scenario

NOT_REQUESTS = frozenset({"order_confirmed"})
"""Histograms that time a journey (order placed -> confirmed), not one request."""
MIN_PER_SECOND = 5
"""Seconds with fewer requests than this give no per-second percentile sample."""
PERCENTILES = (("p50_ms", 50.0), ("p90_ms", 90.0), ("p99_ms", 99.0), ("p999_ms", 99.9))


def _stats(histogram: HdrHistogram) -> dict[str, float | None]:
    stats: dict[str, float | None] = {
        key: percentile_ms(histogram, percentile) for key, percentile in PERCENTILES
    }
    stats["max_ms"] = percentile_ms(histogram, 100.0)
    return stats


def _endpoints(record: LoadRecord) -> dict[str, dict[str, Any]]:
    endpoints = {}
    for name, histogram in sorted(record.totals.items()):
        counts = {outcome.value: record.count(name, outcome) for outcome in Outcome}
        total = histogram.get_total_count()
        endpoints[name] = {
            "count": total,
            **counts,
            "error_rate": counts["failed"] / total if total else 0.0,
            **_stats(histogram),
        }
    return endpoints


def _requests(record: LoadRecord) -> dict[str, Any]:
    names = [name for name in record.totals if name not in NOT_REQUESTS]
    counts = {
        outcome.value: sum(record.count(name, outcome) for name in names) for outcome in Outcome
    }
    total = sum(counts.values())
    return {"total": total, **counts, "error_rate": counts["failed"] / total if total else 0.0}


def _orders(record: LoadRecord, go_live_at: float) -> dict[str, Any]:
    decided: dict[int, int] = {}
    for outcome in (Outcome.OK, Outcome.REJECTED):
        for second, n in record.counts.get("order", {}).get(outcome.value, {}).items():
            decided[second] = decided.get(second, 0) + n
    active = [second for second, n in decided.items() if n > 0]
    window = (max(active) - min(active) + 1) if active else 0
    per_second = (
        [decided.get(second, 0) for second in range(min(active), max(active) + 1)]
        if (active)
        else []
    )
    return {
        "outcomes": dict(sorted(record.outcomes.items())),
        "decided": sum(decided.values()),
        "window_s": window,
        "orders_per_second": sum(decided.values()) / window if window else 0.0,
        "per_second": per_second,
        "first_decision_after_go_live_s": (min(active) - go_live_at) if active else None,
    }


def _fanout(record: LoadRecord) -> dict[str, Any]:
    total = new_histogram()
    by_type = {}
    for event_type, histogram in sorted(record.fanout.items()):
        total.add(histogram)
        by_type[event_type] = {"count": histogram.get_total_count(), **_stats(histogram)}
    stream_notes = [note for note in record.notes if note.startswith("watchers")]
    why_not = stream_notes[0] if stream_notes else "no watcher received an event"
    return {
        "available": total.get_total_count() > 0,
        "why_not": "" if total.get_total_count() else why_not,
        "count": total.get_total_count(),
        **_stats(total),
        "by_type": by_type,
    }


def _load(record: LoadRecord, scenario: Scenario, go_live_at: float) -> dict[str, Any]:
    threshold = scenario.measurement.cpu_saturation_percent
    saturated = max(
        (budgets.saturated_run(samples, go_live_at, threshold) for samples in record.cpu.values()),
        default=0,
    )
    after = [p for samples in record.cpu.values() for at, p in samples if at >= go_live_at]
    return {
        "processes": record.processes,
        "arrivals_planned": scenario.load.rush.buyers if record.processes else 0,
        "arrivals": record.arrivals,
        "late_arrivals": record.late_arrivals,
        "late_fraction": record.late_arrivals / record.arrivals if record.arrivals else 0.0,
        "max_lateness_ms": record.max_lateness_s * 1000,
        "cpu_max_percent": max(after, default=0.0),
        "cpu_mean_percent": sum(after) / len(after) if after else 0.0,
        "saturated_seconds": saturated,
    }


AUDIT_CHECKS = {
    "never_oversold": "oversold",
    "one_order_per_key": "duplicate orders",
    "balanced": "ledger unbalanced (available + reserved + sold != stock)",
    "sold_matches_ledger": "Redis sold differs from confirmed units in SQL",
    "per_user_limit_respected": "a buyer above the per-user limit",
    "payments_match_orders": "payments and confirmed orders disagree",
    "counters_present": "inventory counters missing",
}


def _audit(run: dict[str, Any], record: LoadRecord) -> dict[str, Any]:
    audit = run.get("audit")
    if audit is None:
        return {
            "ok": False,
            "violations": ["no audit: the run did not get that far"],
            "report": None,
        }
    violations = [text for check, text in AUDIT_CHECKS.items() if not audit["checks"].get(check)]
    seen_confirmed = record.outcomes.get("confirmed", 0)
    lost = max(seen_confirmed - int(audit["confirmed_orders_sql"]), 0)
    if lost:
        violations.append(f"{lost} orders buyers saw confirmed are not confirmed in SQL (lost)")
    return {
        "ok": not violations,
        "violations": violations,
        "at_rest": bool(run.get("audit_at_rest")),
        "confirmed_seen_by_buyers": seen_confirmed,
        "lost_confirmed_orders": lost,
        "report": audit,
    }


def _series(record: LoadRecord, run: dict[str, Any], go_live_at: float) -> dict[str, Any]:
    throughput: dict[str, dict[int, int]] = {outcome.value: {} for outcome in Outcome}
    for name, by_outcome in record.counts.items():
        if name in NOT_REQUESTS:
            continue
        for outcome, by_second in by_outcome.items():
            for second, n in by_second.items():
                throughput[outcome][second] = throughput[outcome].get(second, 0) + n
    seconds = sorted({s for per in throughput.values() for s in per})
    latency = {}
    for name, slots in sorted(record.per_second.items()):
        ordered = sorted(slots)
        latency[name] = {
            "t": [second - go_live_at for second in ordered],
            "p50": [percentile_ms(slots[s], 50) for s in ordered],
            "p99": [percentile_ms(slots[s], 99) for s in ordered],
            "count": [slots[s].get_total_count() for s in ordered],
        }
    fanout = new_histogram()
    for histogram in record.fanout.values():
        fanout.add(histogram)
    curve = [
        (p, percentile_ms(fanout, p))
        for p in (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100)
    ]
    return {
        "throughput": {
            "t": [second - go_live_at for second in seconds],
            **{outcome: [per.get(s, 0) for s in seconds] for outcome, per in throughput.items()},
        },
        "latency": latency,
        "stock": [
            {"t": at - go_live_at, "available": a, "reserved": r, "sold": s}
            for at, a, r, s in run.get("stock", [])
        ],
        "fanout_curve": [(p, v) for p, v in curve if v is not None],
        "load_cpu": {
            str(pid): [(at - go_live_at, p) for at, p in samples]
            for pid, samples in record.cpu.items()
        },
        "server_cpu": [(at - go_live_at, p) for at, p in run.get("server_cpu", [])],
        "faults": [(at - go_live_at, text) for at, text in run.get("faults", [])],
    }


def _samples(series: dict[str, Any], orders: dict[str, Any]) -> dict[str, Any]:
    """Per-second values of the rush (after go-live) that a later run is compared with."""
    p99 = {}
    for name, line in series["latency"].items():
        p99[name] = [
            value
            for t, value, count in zip(line["t"], line["p99"], line["count"], strict=True)
            if t >= 0 and count >= MIN_PER_SECOND and value is not None
        ]
    return {"p99_ms": p99, "orders_per_second": orders["per_second"]}


def build_summary(run_dir: Path, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a person or CI wants to know about the run in `run_dir`."""
    run = json.loads((run_dir / "run.json").read_text())
    scenario = Scenario.model_validate(run["scenario"])
    record = LoadRecord.read(run_dir / "load")
    go_live_at = float(run.get("go_live_at") or 0.0)
    orders = _orders(record, go_live_at)
    series = _series(record, run, go_live_at)
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "profile": scenario.profile,
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "metadata": run["metadata"],
        "drop_id": run.get("drop_id"),
        "duration_s": (run.get("load_ended_at") or go_live_at)
        - (run.get("load_started_at") or go_live_at),
        "interrupted": run.get("interrupted", False),
        "requests": _requests(record),
        "endpoints": _endpoints(record),
        "orders": orders,
        "fanout": _fanout(record),
        "load": _load(record, scenario, go_live_at),
        "audit": _audit(run, record),
        "notes": sorted({*run.get("notes", []), *record.notes}),
        "series": series,
        "samples": _samples(series, orders),
    }
    checks, invalid, verdict = budgets.evaluate(summary, scenario.budgets, scenario.measurement)
    if run.get("interrupted"):
        invalid = ["the run was interrupted", *invalid]
        # an audit that found something still fails the run; one that never ran says nothing
        broken = verdict == "audit_failed" and run.get("audit") is not None
        verdict = "audit_failed" if broken else "invalid"
    summary["budgets"] = [check.as_dict() for check in checks]
    summary["invalid_reasons"] = invalid
    summary["verdict"] = verdict
    summary["exit_code"] = budgets.EXIT_CODES[verdict]
    if baseline is not None:
        compare_with_baseline(summary, baseline)
    return summary


def compare_with_baseline(summary: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Add the regression checks against `baseline`; a significant regression makes a passing
    run a breach."""
    regressions = budgets.compare(summary, baseline)
    summary["budgets"] += [check.as_dict() for check in regressions]
    summary["baseline"] = baseline.get("run_id")
    if summary["verdict"] == "pass" and any(check.status == "breach" for check in regressions):
        summary["verdict"] = "breach"
        summary["exit_code"] = budgets.EXIT_CODES["breach"]


SEVERITY = ("pass", "breach", "invalid", "audit_failed")


def pool_repeats(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The last of several runs of one scenario, carrying every run's per-second samples (so a
    baseline comparison sees all repeats) and the worst verdict among them."""
    last = summaries[-1]
    last["samples"] = {
        "p99_ms": {
            name: [
                value
                for summary in summaries
                for value in summary["samples"]["p99_ms"].get(name, [])
            ]
            for name in {name for summary in summaries for name in summary["samples"]["p99_ms"]}
        },
        "orders_per_second": [
            value for summary in summaries for value in summary["samples"]["orders_per_second"]
        ],
    }
    last["repeats"] = [
        {"run_id": summary["run_id"], "verdict": summary["verdict"]} for summary in summaries
    ]
    worst = max((summary["verdict"] for summary in summaries), key=SEVERITY.index)
    last["verdict"] = worst
    last["exit_code"] = budgets.EXIT_CODES[worst]
    return last


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def markdown(summary: dict[str, Any]) -> str:
    meta = summary["metadata"]
    orders = summary["orders"]
    fanout = summary["fanout"]
    lines = [
        f"# {summary['scenario']} ({summary['profile']}) — {summary['verdict'].upper()}",
        "",
        f"run `{summary['run_id']}` · git `{meta['git_revision']}` · seed {meta['seed']} · "
        f"exit code {summary['exit_code']}",
        "",
        f"- orders decided per second: **{orders['orders_per_second']:.1f}** "
        f"({orders['decided']} in {orders['window_s']} s)",
        f"- order p99: **{_fmt(summary['endpoints'].get('order', {}).get('p99_ms'))} ms** "
        "(from each arrival's planned start)",
        "- fan-out lag p99: "
        + (f"**{_fmt(fanout['p99_ms'])} ms**" if fanout["available"] else fanout["why_not"]),
        f"- outcomes: {', '.join(f'{k} {v}' for k, v in orders['outcomes'].items()) or 'none'}",
        f"- audit: {'; '.join(summary['audit']['violations']) or 'clean'}",
        "",
        "| endpoint | count | ok | rejected | 429 | failed | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, stats in summary["endpoints"].items():
        lines.append(
            f"| {name} | {stats['count']} | {stats['ok']} | {stats['rejected']} | "
            f"{stats['rate_limited']} | {stats['failed']} | {_fmt(stats['p50_ms'])} | "
            f"{_fmt(stats['p99_ms'])} | {_fmt(stats['p999_ms'])} | {_fmt(stats['max_ms'])} |"
        )
    lines += ["", "| budget | limit | actual | status |", "|---|---|---|---|"]
    for check in summary["budgets"]:
        lines.append(
            f"| {check['name']} | {check['limit']} | {check['actual']} | {check['status']} |"
        )
    if summary["invalid_reasons"]:
        lines += ["", "**Invalid measurement:**", *(f"- {r}" for r in summary["invalid_reasons"])]
    if summary["notes"]:
        lines += ["", "Notes:", *(f"- {note}" for note in summary["notes"])]
    return "\n".join(lines) + "\n"


def junit(summary: dict[str, Any]) -> str:
    """One test case per budget check, plus the audit and the measurement's validity."""
    suite = ElementTree.Element(
        "testsuite", name=f"dropsim.simulate.{summary['scenario']}.{summary['profile']}"
    )
    cases: list[tuple[str, str | None, bool]] = []  # name, failure message, skipped
    for check in summary["budgets"]:
        message = None
        if check["status"] == "breach":
            message = f"{check['actual']} (limit {check['limit']})"
        cases.append((check["name"], message, check["status"] == "skipped"))
    invalid = "; ".join(summary["invalid_reasons"]) or None
    cases.append(("measurement valid", invalid, False))
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for _, message, _ in cases if message)))
    suite.set("skipped", str(sum(1 for *_, skipped in cases if skipped)))
    for name, message, skipped in cases:
        case = ElementTree.SubElement(suite, "testcase", classname=suite.get("name", ""), name=name)
        if skipped:
            ElementTree.SubElement(case, "skipped")
        elif message:
            ElementTree.SubElement(case, "failure", message=message)
    suites = ElementTree.Element("testsuites")
    suites.append(suite)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "summary.md").write_text(markdown(summary))
    (run_dir / "junit.xml").write_text(junit(summary))
