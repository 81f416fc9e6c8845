"""Reports rendered from a recorded run: one self-contained HTML page with its charts, and the
summary in JSON, Markdown and JUnit; `dropsim report` re-renders them."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

from typer.testing import CliRunner

from dropsim.cli import app
from dropsim.sim.report import render_report
from dropsim.sim.summary import build_summary, write_summary
from tests.simrun import audit_report, buyer_recorder, scenario, write_run

CHARTS = ("throughput", "latency", "stock", "outcomes", "cpu")


class _Page(HTMLParser):
    """Collects what a browser would fetch and which chart containers exist."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.ids: set[str] = set()
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img", "iframe") and found.get("src"):
            self.external.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.external.append(str(found["href"]))
        if tag == "script" and not found.get("src"):
            self.inline_scripts += 1
        if found.get("id"):
            self.ids.add(str(found["id"]))


def recorded(tmp_path: Path) -> Path:
    recorder = buyer_recorder()
    for lag in range(50):
        recorder.fanout_lag("drop.went_live", 0.01 + lag / 1000)
    return write_run(tmp_path / "run", scenario(), [recorder], audit_report())


def test_report_is_one_self_contained_page_with_the_charts(tmp_path: Path) -> None:
    run_dir = recorded(tmp_path)
    summary = build_summary(run_dir)
    page_text = render_report(run_dir, summary).read_text()
    page = _Page()
    page.feed(page_text)
    assert page.external == []  # opens offline: nothing to fetch
    assert "Plotly.newPlot" in page_text
    assert "plotly.js v" in page_text  # the library itself is inlined, once
    assert len(re.findall(r"plotly\.js v\d", page_text)) == 1
    for chart in (*CHARTS, "fanout"):
        assert chart in page.ids, chart
    # go-live is marked on the time charts; the budget table and the audit are there
    assert "go-live" in page_text
    assert "order p99" in page_text
    assert "never_oversold" in page_text
    assert "abc123" in page_text  # git revision from the run's metadata


def test_missing_phases_are_said_not_drawn_empty(tmp_path: Path) -> None:
    recorder = buyer_recorder()
    recorder.note("watchers: /v1/stream is not available on this server")
    run_dir = write_run(tmp_path / "run", scenario(), [recorder], audit_report())
    page = render_report(run_dir, build_summary(run_dir)).read_text()
    assert "not measured: watchers: /v1/stream is not available on this server" in page


def test_summary_files_are_written_and_parse(tmp_path: Path) -> None:
    run_dir = recorded(tmp_path)
    summary = build_summary(run_dir)
    write_summary(run_dir, summary)
    data = json.loads((run_dir / "summary.json").read_text())
    assert data["verdict"] == "pass"
    assert data["fanout"]["available"] is True
    markdown = (run_dir / "summary.md").read_text()
    assert markdown.startswith("# recorded (default) — PASS")
    assert "| order |" in markdown
    suite = ElementTree.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", "0")) == len(summary["budgets"]) + 1
    assert suite.get("failures") == "0"


def test_junit_marks_breached_budgets_as_failures(tmp_path: Path) -> None:
    run_dir = write_run(
        tmp_path / "run", scenario(), [buyer_recorder(latency_s=0.8)], audit_report()
    )
    write_summary(run_dir, build_summary(run_dir))
    suite = ElementTree.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    failed = [
        case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None
    ]
    assert failed == ["order p50", "order p99"]


def test_dropsim_report_rerenders_and_exits_with_the_verdict(tmp_path: Path) -> None:
    run_dir = write_run(
        tmp_path / "run", scenario(), [buyer_recorder(latency_s=0.8)], audit_report()
    )
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 3, result.output
    assert "BREACH" in result.output
    for name in ("report.html", "summary.json", "summary.md", "junit.xml"):
        assert (run_dir / name).is_file()


def test_dropsim_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert "not a run directory" in str(result.exception)
