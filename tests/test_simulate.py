"""One real end-to-end run of `dropsim simulate celebrity-drop --profile ci`: the provider, the
server and Locust as processes, on embedded backends and on real Redis + PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ENV, REDIS_ENV, real_url, reset_postgres, reset_redis

REPORT_FILES = ("report.html", "summary.json", "summary.md", "junit.xml", "run.json")


def simulate(reports: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DROPSIM_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dropsim.cli",
            "simulate",
            "celebrity-drop",
            "--profile",
            "ci",
            "--reports-dir",
            str(reports),
            *extra,
        ],
        env=env | {"COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def backend_flags(kind: str) -> list[str]:
    if kind == "embedded":
        return []
    redis_url = real_url(REDIS_ENV, "Redis")
    postgres_url = real_url(POSTGRES_ENV, "PostgreSQL")
    reset_redis(redis_url)
    reset_postgres(postgres_url, 2)
    return ["--redis-url", redis_url, "--db", postgres_url, "--shards", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embedded", "real"])
def test_celebrity_drop_ci_profile_passes_with_a_clean_audit(tmp_path: Path, kind: str) -> None:
    flags = backend_flags(kind)
    result = simulate(tmp_path, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    [run_dir] = list((tmp_path / "celebrity-drop").iterdir())
    for name in REPORT_FILES:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "world.json").exists()  # tokens are not left behind
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    assert summary["audit"]["ok"]
    assert summary["audit"]["at_rest"]
    audit = summary["audit"]["report"]
    assert audit["sold"] <= audit["stock"] == 100
    # far more buyers than stock: every unit went, the rest were told "sold out"
    outcomes = summary["orders"]["outcomes"]
    assert outcomes.get("sold_out", 0) > 0
    assert outcomes.get("confirmed", 0) == audit["confirmed_orders_sql"]
    assert summary["load"]["arrivals"] == summary["load"]["arrivals_planned"] == 400
    assert summary["endpoints"]["order"]["count"] >= 400
    html = (run_dir / "report.html").read_text()
    assert 'id="throughput"' in html
    assert 'id="stock"' in html
