"""Budget evaluation on recorded runs: pass, breach, invalid measurement, broken audit; and the
baseline comparison that ignores noise."""

from __future__ import annotations

import random
from pathlib import Path

from dropsim.sim import budgets
from dropsim.sim.summary import build_summary, pool_repeats
from tests.simrun import audit_report, buyer_recorder, scenario, write_run


def test_a_clean_fast_run_passes(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder()], audit_report())
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "pass", summary["budgets"]
    assert summary["exit_code"] == budgets.EXIT_PASS == 0
    names = {check["name"]: check["status"] for check in summary["budgets"]}
    assert names["order p99"] == "pass"
    assert names["audit clean"] == "pass"
    assert summary["endpoints"]["order"]["count"] == 50
    assert summary["orders"]["outcomes"] == {"confirmed": 10, "sold_out": 40}


def test_slow_orders_breach_the_latency_budget(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder(latency_s=0.8)], audit_report())
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "breach"
    assert summary["exit_code"] == budgets.EXIT_BREACH
    breached = [check["name"] for check in summary["budgets"] if check["status"] == "breach"]
    assert breached == ["order p50", "order p99"]


def test_failed_requests_breach_the_error_budget_but_refusals_do_not(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder(failed=5)], audit_report())
    summary = build_summary(tmp_path)
    assert summary["requests"]["failed"] == 5
    assert summary["requests"]["rejected"] == 35  # sold out is an answer, not an error
    error = next(check for check in summary["budgets"] if check["name"] == "error rate")
    assert error["status"] == "breach"
    assert summary["verdict"] == "breach"


def test_late_arrivals_make_the_measurement_invalid_not_a_pass(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder(late=10)], audit_report())
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "invalid"
    assert summary["exit_code"] == budgets.EXIT_INVALID
    assert "10 of 50 arrivals started more than 200 ms late" in summary["invalid_reasons"][0]


def test_a_saturated_load_generator_makes_the_measurement_invalid(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder(cpu_percent=97.0)], audit_report())
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "invalid"
    assert any("CPU" in reason for reason in summary["invalid_reasons"])


def test_no_load_recorded_is_invalid(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [], audit_report())
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "invalid"
    assert "no load process" in summary["invalid_reasons"][0]


def test_a_broken_audit_fails_whatever_the_budgets_say(tmp_path: Path) -> None:
    oversold = audit_report(stock=10, sold=11, confirmed=11, never_oversold=False)
    # an invalid measurement too: the audit still wins
    write_run(tmp_path, scenario(), [buyer_recorder(late=10)], oversold)
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "audit_failed"
    assert summary["exit_code"] == budgets.EXIT_AUDIT
    assert "oversold" in summary["audit"]["violations"]


def test_orders_buyers_saw_confirmed_but_sql_lost_fail_the_audit(tmp_path: Path) -> None:
    # buyers saw 10 confirmations; SQL holds 8 confirmed orders although its own checks pass
    write_run(tmp_path, scenario(), [buyer_recorder()], audit_report(sold=8, confirmed=8))
    summary = build_summary(tmp_path)
    assert summary["audit"]["lost_confirmed_orders"] == 2
    assert summary["verdict"] == "audit_failed"


def test_fanout_budget_is_skipped_visibly_when_streams_were_not_available(tmp_path: Path) -> None:
    recorder = buyer_recorder()
    recorder.note("watchers: /v1/stream is not available on this server")
    chosen = scenario(budgets={"fanout_lag_p99_ms": 500})
    write_run(tmp_path, chosen, [recorder], audit_report())
    summary = build_summary(tmp_path)
    check = next(check for check in summary["budgets"] if check["name"] == "fan-out lag p99")
    assert check["status"] == "skipped"
    assert "not available" in check["actual"]


def test_fanout_lag_is_checked_when_events_arrived(tmp_path: Path) -> None:
    recorder = buyer_recorder()
    for lag in range(100):
        recorder.fanout_lag("drop.stock", lag / 100)  # up to 990 ms
    write_run(tmp_path, scenario(budgets={"fanout_lag_p99_ms": 500}), [recorder], audit_report())
    summary = build_summary(tmp_path)
    check = next(check for check in summary["budgets"] if check["name"] == "fan-out lag p99")
    assert check["status"] == "breach"
    assert 970 <= summary["fanout"]["p99_ms"] <= 1000


def test_two_load_processes_are_merged(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder(), buyer_recorder()], audit_report())
    summary = build_summary(tmp_path)
    assert summary["load"]["processes"] == 2
    assert summary["endpoints"]["order"]["count"] == 100


def test_mann_whitney_separates_shifted_samples_from_noise() -> None:
    rng = random.Random(3)
    before = [rng.gauss(100, 10) for _ in range(30)]
    same = [rng.gauss(100, 10) for _ in range(30)]
    slower = [rng.gauss(150, 10) for _ in range(30)]
    assert budgets.mann_whitney_greater(slower, before) < 1e-6
    assert budgets.mann_whitney_greater(same, before) > 0.01
    assert budgets.mann_whitney_greater(before, slower) > 0.99


def _with_samples(p99: list[float], orders: list[float]) -> dict[str, object]:
    return {"samples": {"p99_ms": {"order": p99}, "orders_per_second": orders}, "run_id": "b"}


def test_baseline_flags_a_regression_only_beyond_tolerance_and_noise() -> None:
    rng = random.Random(5)
    baseline = _with_samples([rng.gauss(100, 15) for _ in range(20)], [50.0] * 20)
    noisy = _with_samples([rng.gauss(108, 15) for _ in range(20)], [49.0] * 20)
    slower = _with_samples([rng.gauss(160, 15) for _ in range(20)], [50.0] * 20)
    fewer = _with_samples([rng.gauss(100, 15) for _ in range(20)], [30.0] * 20)
    assert all(c.status == "pass" for c in budgets.compare(noisy, baseline))
    by_name = {c.name: c.status for c in budgets.compare(slower, baseline)}
    assert by_name["regression: order p99 per second"] == "breach"
    by_name = {c.name: c.status for c in budgets.compare(fewer, baseline)}
    assert by_name["regression: orders per second"] == "breach"
    too_few = _with_samples([500.0, 600.0], [1.0])
    assert {c.status for c in budgets.compare(too_few, baseline)} == {"skipped"}


def test_a_regression_against_the_baseline_breaches_a_passing_run(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    # 200 arrivals over 10 s: enough seconds with enough requests to test
    chosen = scenario(world={"followers": 200}, load={"rush": {"buyers": 200}})
    write_run(fast, chosen, [buyer_recorder(buyers=200, over_s=10, latency_s=0.01)], audit_report())
    write_run(slow, chosen, [buyer_recorder(buyers=200, over_s=10, latency_s=0.05)], audit_report())
    baseline = build_summary(fast)
    assert build_summary(slow)["verdict"] == "pass"
    compared = build_summary(slow, baseline)
    regressions = [c for c in compared["budgets"] if c["name"].startswith("regression")]
    assert regressions
    assert compared["verdict"] == "breach"
    assert compared["exit_code"] == budgets.EXIT_BREACH


def test_an_interrupted_run_is_invalid_not_an_audit_failure(tmp_path: Path) -> None:
    write_run(tmp_path, scenario(), [buyer_recorder()], None, interrupted=True)
    summary = build_summary(tmp_path)
    assert summary["verdict"] == "invalid"
    assert summary["invalid_reasons"][0] == "the run was interrupted"


def test_repeats_pool_their_samples_and_keep_the_worst_verdict(tmp_path: Path) -> None:
    chosen = scenario(world={"followers": 200}, load={"rush": {"buyers": 200}})
    first = write_run(
        tmp_path / "1", chosen, [buyer_recorder(buyers=200, over_s=10)], audit_report()
    )
    second = write_run(
        tmp_path / "2", chosen, [buyer_recorder(buyers=200, over_s=10, late=50)], audit_report()
    )
    summaries = [build_summary(first), build_summary(second)]
    alone = len(summaries[1]["samples"]["p99_ms"]["order"])
    pooled = pool_repeats(summaries)
    assert len(pooled["samples"]["p99_ms"]["order"]) == 2 * alone
    assert [repeat["verdict"] for repeat in pooled["repeats"]] == ["pass", "invalid"]
    assert pooled["verdict"] == "invalid"
    assert pooled["exit_code"] == budgets.EXIT_INVALID
