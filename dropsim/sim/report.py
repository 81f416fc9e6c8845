"""report.html: one self-contained page (plotly.js inlined once, no network needed) with the
charts of a run, its budget table, its audit and its metadata."""

from __future__ import annotations

import html
import json
from pathlib import Path
from string import Template
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
COLOURS = {"ok": "#1b8a3a", "rejected": "#5b7fd6", "rate_limited": "#b26a00", "failed": "#c62828"}


def _figure_html(figure: go.Figure, chart_id: str) -> str:
    figure.update_layout(margin={"l": 60, "r": 20, "t": 30, "b": 50}, height=380)
    fragment: str = figure.to_html(full_html=False, include_plotlyjs=False, div_id=chart_id)
    return f'<div class="chart">{fragment}</div>'


def _mark_go_live(figure: go.Figure, series: dict[str, Any]) -> None:
    figure.add_vline(x=0, line_dash="dash", line_color="#444", annotation_text="go-live")
    for at, text in series["faults"]:
        figure.add_vline(x=at, line_dash="dot", line_color="#b26a00", annotation_text=text[:40])


def _empty(message: str) -> str:
    return f'<p class="note">{html.escape(message)}</p>'


def throughput_chart(series: dict[str, Any]) -> str:
    line = series["throughput"]
    if not line["t"]:
        return _empty("no request was recorded")
    figure = go.Figure()
    for outcome, colour in COLOURS.items():
        figure.add_trace(
            go.Scatter(
                x=line["t"], y=line[outcome], name=outcome, stackgroup="one", line_color=colour
            )
        )
    _mark_go_live(figure, series)
    figure.update_layout(xaxis_title="seconds from go-live", yaxis_title="requests / s")
    return _figure_html(figure, "throughput")


def latency_chart(series: dict[str, Any]) -> str:
    if not series["latency"]:
        return _empty("no request was recorded")
    figure = go.Figure()
    for name, line in series["latency"].items():
        figure.add_trace(go.Scatter(x=line["t"], y=line["p50"], name=f"{name} p50", mode="lines"))
        figure.add_trace(
            go.Scatter(
                x=line["t"], y=line["p99"], name=f"{name} p99", mode="lines", line_dash="dash"
            )
        )
    _mark_go_live(figure, series)
    figure.update_layout(
        xaxis_title="seconds from go-live", yaxis_title="milliseconds", yaxis_type="log"
    )
    return _figure_html(figure, "latency")


def stock_chart(series: dict[str, Any]) -> str:
    samples = series["stock"]
    if not samples:
        return _empty("stock was not sampled")
    figure = go.Figure()
    t = [sample["t"] for sample in samples]
    for key, colour in (("available", "#5b7fd6"), ("reserved", "#b26a00"), ("sold", "#1b8a3a")):
        figure.add_trace(go.Scatter(x=t, y=[s[key] for s in samples], name=key, line_color=colour))
    _mark_go_live(figure, series)
    figure.update_layout(xaxis_title="seconds from go-live", yaxis_title="units")
    return _figure_html(figure, "stock")


def fanout_chart(summary: dict[str, Any]) -> str:
    fanout = summary["fanout"]
    if not fanout["available"]:
        return _empty(f"not measured: {fanout['why_not']}")
    curve = summary["series"]["fanout_curve"]
    figure = go.Figure(
        go.Scatter(x=[p for p, _ in curve], y=[v for _, v in curve], mode="lines+markers")
    )
    figure.update_layout(
        xaxis_title="percentile of events", yaxis_title="receive - publish (ms)", yaxis_type="log"
    )
    return _figure_html(figure, "fanout")


def outcomes_chart(summary: dict[str, Any]) -> str:
    outcomes = summary["orders"]["outcomes"]
    if not outcomes:
        return _empty("no buyer finished an order")
    figure = go.Figure(go.Bar(x=list(outcomes), y=list(outcomes.values())))
    figure.update_layout(yaxis_title="buyers")
    return _figure_html(figure, "outcomes")


def cpu_chart(series: dict[str, Any]) -> str:
    figure = go.Figure()
    for pid, samples in series["load_cpu"].items():
        figure.add_trace(
            go.Scatter(x=[t for t, _ in samples], y=[p for _, p in samples], name=f"locust {pid}")
        )
    server = series["server_cpu"]
    if server:
        figure.add_trace(
            go.Scatter(x=[t for t, _ in server], y=[p for _, p in server], name="server")
        )
    if not figure.data:
        return _empty("CPU was not sampled")
    _mark_go_live(figure, series)
    figure.update_layout(xaxis_title="seconds from go-live", yaxis_title="% of one core")
    return _figure_html(figure, "cpu")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{value:,.1f}</td>'
            if isinstance(value, float)
            else f"<td>{html.escape(str(value))}</td>"
            for value in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _headline(summary: dict[str, Any]) -> str:
    order = summary["endpoints"].get("order", {})
    fanout = summary["fanout"]
    items = [
        ("orders decided / s", f"{summary['orders']['orders_per_second']:.1f}"),
        ("order p99", f"{order['p99_ms']:.0f} ms" if order.get("p99_ms") else "-"),
        ("fan-out lag p99", f"{fanout['p99_ms']:.0f} ms" if fanout["available"] else "n/a"),
        ("error rate", f"{summary['requests']['error_rate']:.2%}"),
        ("audit", "clean" if summary["audit"]["ok"] else "BROKEN"),
    ]
    return "".join(f"<div>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in items)


def _budgets(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['limit'])}</td>"
        f"<td>{html.escape(c['actual'])}</td>"
        f'<td><span class="verdict {c["status"]}">{c["status"]}</span></td></tr>'
        for c in summary["budgets"]
    )
    reasons = "".join(
        f'<p class="note">invalid measurement: {html.escape(r)}</p>'
        for r in summary["invalid_reasons"]
    )
    head = "<tr><th>budget</th><th>limit</th><th>actual</th><th></th></tr>"
    return f"<table>{head}{rows}</table>{reasons}"


def _endpoints(summary: dict[str, Any]) -> str:
    keys = [
        "count",
        "ok",
        "rejected",
        "rate_limited",
        "failed",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ]
    rows = [[name, *(stats[key] for key in keys)] for name, stats in summary["endpoints"].items()]
    return _table(["endpoint", *keys], rows)


def _audit(summary: dict[str, Any]) -> str:
    audit = summary["audit"]
    parts = [
        f"<p><b>{'clean' if audit['ok'] else 'VIOLATED'}</b>"
        f"{' (settled: nothing reserved or pending)' if audit.get('at_rest') else ''}</p>"
    ]
    parts += [f'<p class="note">{html.escape(v)}</p>' for v in audit["violations"]]
    report = audit.get("report")
    if report:
        rows = [[key, json.dumps(value)] for key, value in report.items()]
        rows.append(["confirmed orders seen by buyers", audit["confirmed_seen_by_buyers"]])
        parts.append(_table(["", "value"], rows))
    return "".join(parts)


def _load(summary: dict[str, Any]) -> str:
    return _table(["", "value"], [[key, value] for key, value in summary["load"].items()])


def _metadata(summary: dict[str, Any]) -> str:
    meta = summary["metadata"]
    rows = [
        [key, value if isinstance(value, str | int) else json.dumps(value)]
        for key, value in meta.items()
    ]
    return _table(["", "value"], rows)


def render_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write `report.html` into `run_dir` and return its path."""
    series = summary["series"]
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in summary["notes"])
    page = Template(TEMPLATE.read_text()).substitute(
        title=html.escape(f"dropsim {summary['scenario']} {summary['run_id']}"),
        plotly_js=get_plotlyjs(),
        scenario=html.escape(summary["scenario"]),
        profile=html.escape(summary["profile"]),
        verdict=summary["verdict"],
        verdict_text=summary["verdict"].replace("_", " ").upper(),
        exit_code=summary["exit_code"],
        run_id=html.escape(summary["run_id"]),
        headline=_headline(summary),
        notes=notes,
        chart_throughput=throughput_chart(series),
        chart_latency=latency_chart(series),
        chart_stock=stock_chart(series),
        chart_fanout=fanout_chart(summary),
        chart_outcomes=outcomes_chart(summary),
        chart_cpu=cpu_chart(series),
        budgets=_budgets(summary),
        endpoints=_endpoints(summary),
        audit=_audit(summary),
        load=_load(summary),
        metadata=_metadata(summary),
    )
    path = run_dir / "report.html"
    path.write_text(page)
    return path
