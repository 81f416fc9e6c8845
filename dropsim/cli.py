"""The `dropsim` command line: serve the system, seed celebrities, mint tokens, simulate rushes."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dropsim import __version__
from dropsim.accounts.models import Role
from dropsim.errors import ConfigurationError, DropsimError
from dropsim.gateway.tokens import TokenIssuer
from dropsim.settings import Settings, load_settings

app = typer.Typer(
    name="dropsim",
    help="A creator-drop commerce system, run for real and proven under a celebrity-sized rush.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")

KvUrl = Annotated[
    str | None,
    typer.Option("--kv-url", help="memory:// (embedded) or redis://host:6379/0 [DROPSIM_KV_URL]"),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        help="sqlite:///dir/shard-{shard}.db (embedded) or postgresql://host/dropsim_{shard} "
        "[DROPSIM_DB_URL]",
    ),
]
Shards = Annotated[int | None, typer.Option("--shards", help="SQL shard count [DROPSIM_SHARDS]")]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="embedded data and secrets [DROPSIM_DATA_DIR]")
]


ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="act through this running server (found automatically when "
        "it serves the embedded backends of the same data dir)",
    ),
]


def _settings(
    kv_url: str | None = None,
    db_url: str | None = None,
    shards: int | None = None,
    data_dir: Path | None = None,
) -> Settings:
    return load_settings(kv_url=kv_url, db_url=db_url, shards=shards, data_dir=data_dir)


def _run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


def _rate_limits(settings: Settings) -> str:
    if not settings.rate_limit_enabled:
        return "off"
    return f"orders {settings.rate_limit_orders}, reads {settings.rate_limit_reads} (user,ip)"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes")] = 1,
    payment_workers: Annotated[
        int | None,
        typer.Option(
            "--payment-workers",
            min=0,
            max=64,
            help="processes that charge the orders the servers take; 0: each server charges "
            "its own (needs a shared KV store) [DROPSIM_PAYMENT_WORKERS]",
        ),
    ] = None,
    kv_url: KvUrl = None,
    db_url: DbUrl = None,
    shards: Shards = None,
    data_dir: DataDir = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
    rate_limit: Annotated[
        bool | None,
        typer.Option(
            "--rate-limit/--no-rate-limit",
            help="limit requests per user and per address [DROPSIM_RATE_LIMIT_ENABLED]",
        ),
    ] = None,
    trusted_proxies: Annotated[
        int | None,
        typer.Option(
            "--trusted-proxies",
            min=0,
            help="proxies in front that append to X-Forwarded-For; 0 ignores the header "
            "[DROPSIM_RATE_LIMIT_TRUSTED_PROXIES]",
        ),
    ] = None,
) -> None:
    """Serve the whole system: gateway, every service, the page, API docs and metrics."""
    from dropsim.backends import Backends
    from dropsim.payments.worker import (
        check_payment_workers,
        start_payment_workers,
        stop_payment_workers,
    )
    from dropsim.serving import check_workers, write_server_note
    from dropsim.serving import serve as run_server

    settings = load_settings(
        kv_url=kv_url,
        db_url=db_url,
        shards=shards,
        data_dir=data_dir,
        rate_limit_enabled=rate_limit,
        rate_limit_trusted_proxies=trusted_proxies,
        payment_workers=payment_workers,
    )
    check_workers(settings, workers)
    check_payment_workers(settings, settings.payment_workers)

    async def check_backends() -> None:
        backends = await Backends.open(settings)
        await backends.close()

    with console.status("checking backends..."):
        _run(check_backends)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if "public_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"public_url": url})
    provider_process = None
    if (workers > 1 or settings.payment_workers) and settings.payment_provider_url == "embedded":
        # one provider for all processes, so any of them can refund any charge
        from dropsim.serving import start_provider_process

        provider_process, provider_url = start_provider_process(settings)
        settings = settings.model_copy(update={"payment_provider_url": provider_url})
    if settings.embedded_kv:
        write_server_note(settings, url)
    console.print(
        Panel.fit(
            f"[bold]dropsim {__version__}[/] serving on [cyan]{url}[/]\n"
            f"  page        {url}/\n"
            f"  API docs    {url}/schema\n"
            f"  metrics     {url}/metrics\n"
            f"  health      {url}/health/ready\n"
            f"  KV          {settings.kv_url}\n"
            f"  SQL         {settings.db_url} x {settings.shards} shards\n"
            f"  payments    {settings.payment_provider_url} (simulated provider unless a URL)\n"
            f"  rate limit  {_rate_limits(settings)}\n"
            f"  workers     {workers} server, {settings.payment_workers} payment",
            title="dropsim serve",
        )
    )
    # uvicorn re-raises a SIGTERM once it has shut down: as SystemExit, so the `finally`
    # below still stops the processes started beside the server
    signal.signal(signal.SIGTERM, _exit_on_signal)
    payment_processes = start_payment_workers(settings, settings.payment_workers)
    try:
        run_server(settings, host=host, port=port, workers=workers, log_level=log_level)
    finally:
        stop_payment_workers(payment_processes)
        if provider_process is not None:
            provider_process.terminate()
            provider_process.wait(timeout=10)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@app.command("payments-worker")
def payments_worker(
    kv_url: KvUrl = None,
    db_url: DbUrl = None,
    shards: Shards = None,
    data_dir: DataDir = None,
) -> None:
    """Charge the orders servers hand off (run by `serve --payment-workers N`, or on its own
    with the servers' settings: a shared Redis, the SQL shards, the provider URL, and the
    servers' public URL for the provider's callbacks)."""
    import logging

    from dropsim.payments.worker import serve_payment_worker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    serve_payment_worker(_settings(kv_url, db_url, shards, data_dir))


@app.command()
def provider(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1")] = 8100,
    data_dir: DataDir = None,
) -> None:
    """Serve the simulated payment provider alone (behaviour from DROPSIM_PROVIDER_* settings)."""
    import uvicorn

    from dropsim.payments.provider import create_provider_app, provider_config
    from dropsim.serving import KEEP_ALIVE_SECONDS

    settings = _settings(data_dir=data_dir)
    console.print(f"simulated payment provider on [cyan]http://127.0.0.1:{port}[/]")
    uvicorn.run(
        create_provider_app(provider_config(settings)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


@app.command()
def seed(
    creators: Annotated[int, typer.Option(min=1, max=1000, help="celebrities to create")] = 1,
    followers: Annotated[
        int, typer.Option(min=0, max=10_000_000, help="followers of each celebrity")
    ] = 10_000,
    prefix: Annotated[str, typer.Option(help="handles are <prefix>1, <prefix>2, ...")] = "celeb",
    url: ServerUrl = None,
    batch: Annotated[int, typer.Option(min=100, max=200_000, help="edges per batch")] = 50_000,
    kv_url: KvUrl = None,
    db_url: DbUrl = None,
    shards: Shards = None,
    data_dir: DataDir = None,
) -> None:
    """Seed celebrity creators with followers (idempotent: re-running adds nothing twice)."""
    settings = _settings(kv_url, db_url, shards, data_dir)
    url = _server_url(settings, url)
    handles = [f"{prefix}{index}" for index in range(1, creators + 1)]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        results = _run(lambda: _seed(settings, url, handles, followers, batch, progress))
    for handle, (creator_id, added) in zip(handles, results, strict=True):
        console.print(f"@{handle}  creator_id={creator_id}  followers added={added:,}")


async def _seed(
    settings: Settings,
    url: str | None,
    handles: list[str],
    followers: int,
    batch: int,
    progress: Progress,
) -> list[tuple[str, int]]:
    import time

    from dropsim.admin import admin_session

    results = []
    async with admin_session(settings, url) as admin:
        for handle in handles:
            creator_id = await admin.seed_creator(handle, handle.capitalize())
            task = progress.add_task(f"@{handle} followers", total=followers, rate="")
            started = time.perf_counter()

            def advance(done: int, task: Any = task, started: float = started) -> None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(task, completed=done, rate=f"{rate:,.0f} edges/s")

            added = await admin.seed_followers(creator_id, followers, batch=batch, progress=advance)
            results.append((creator_id, added))
    return results


def _server_url(settings: Settings, url: str | None) -> str | None:
    """The URL given, or that of a live server holding this data dir's embedded KV store."""
    from dropsim.serving import running_server

    if url is not None or not settings.embedded_kv:
        return url
    found = running_server(settings)
    if found is None:
        return None
    errors.print(f"using the running server at [cyan]{found.url}[/] (pid {found.pid})")
    return found.url


@app.command()
def audit(
    drop_id: Annotated[str, typer.Argument(help="the drop to audit")],
    url: ServerUrl = None,
    kv_url: KvUrl = None,
    db_url: DbUrl = None,
    shards: Shards = None,
    data_dir: DataDir = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check every invariant of one drop; exit 1 when one is broken."""
    from dropsim.admin import admin_session

    settings = _settings(kv_url, db_url, shards, data_dir)
    target = _server_url(settings, url)

    async def work() -> dict[str, Any]:
        async with admin_session(settings, target) as admin:
            return await admin.audit(drop_id)

    report = _run(work)
    if json_output:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        table = Table(title=f"audit of {drop_id}", show_header=False)
        for name in (
            "stock",
            "available",
            "reserved",
            "sold",
            "confirmed_units_sql",
            "pending_orders_sql",
            "per_user_limit",
        ):
            table.add_row(name, str(report[name]))
        for name in (
            "users_over_limit",
            "duplicate_keys",
            "orphan_payments",
            "unpaid_confirmed_orders",
        ):
            table.add_row(name, ", ".join(report[name]) or "none")
        for check, ok in report["checks"].items():
            table.add_row(check, "[green]ok[/]" if ok else "[red]BROKEN[/]")
        console.print(table)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def reconcile(
    drop_ids: Annotated[
        list[str] | None, typer.Argument(help="drops to rebuild (all if none)")
    ] = None,
    only_missing: Annotated[
        bool, typer.Option(help="only rebuild counters missing from the KV store")
    ] = False,
    url: ServerUrl = None,
    kv_url: KvUrl = None,
    db_url: DbUrl = None,
    shards: Shards = None,
    data_dir: DataDir = None,
) -> None:
    """Rebuild inventory counters and reservations from the SQL ledger (SQL is the truth).

    A full rebuild replaces live counters: run it while the drops it touches take no orders.
    """
    from dropsim.admin import admin_session

    settings = _settings(kv_url, db_url, shards, data_dir)
    target = _server_url(settings, url)

    async def work() -> list[dict[str, Any]]:
        async with admin_session(settings, target) as admin:
            return await admin.reconcile(drop_ids, only_missing=only_missing)

    rebuilt = _run(work)
    table = Table("drop", "stock", "sold", "reserved", "expired now", title="rebuilt from SQL")
    for line in rebuilt:
        table.add_row(
            line["drop_id"],
            str(line["stock"]),
            str(line["sold"]),
            str(line["reserved"]),
            str(line["expired"]),
        )
    console.print(table)


@app.command()
def token(
    user_ids: Annotated[list[str] | None, typer.Argument(help="users to mint tokens for")] = None,
    role: Annotated[Role, typer.Option(help="role the tokens carry")] = Role.BUYER,
    fans_of: Annotated[
        str | None, typer.Option(help="mint for the seeded fans of this creator handle")
    ] = None,
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="how many fans")] = 1,
    ttl: Annotated[int, typer.Option(min=60, help="lifetime in seconds")] = 24 * 3600,
    data_dir: DataDir = None,
) -> None:
    """Mint access tokens offline with the server's secret (one per line; JSON for several)."""
    settings = _settings(data_dir=data_dir)
    issuer = TokenIssuer(settings.signing_secret(), ttl)
    ids = list(user_ids or [])
    if fans_of is not None:
        from dropsim.seeding import fan_id

        ids.extend(fan_id(fans_of, index) for index in range(count))
    if not ids:
        raise ConfigurationError("name at least one user id, or --fans-of HANDLE --count N")
    if len(ids) == 1:
        console.print(issuer.issue(ids[0], role), soft_wrap=True)
        return
    sys.stdout.write(json.dumps({user_id: issuer.issue(user_id, role) for user_id in ids}))
    sys.stdout.write("\n")


SIMULATE_HELP = """Run a scenario: start the payment provider, the server and Locust as separate
processes, seed, go live, rush, audit, and write reports/<scenario>/<run>/ (report.html,
summary.json, summary.md, junit.xml).

Exit codes: 0 pass; 2 usage or configuration error; 3 a budget breached (or a significant
regression against --baseline); 4 invalid measurement (the load generator saturated or could
not start arrivals on time); 5 the audit found a broken invariant (wins over everything)."""


@app.command(help=SIMULATE_HELP)
def simulate(
    scenario: Annotated[
        str, typer.Argument(help="scenario name (see `dropsim scenarios`) or path")
    ],
    profile: Annotated[str, typer.Option(help="profile of the scenario (default, ci, full)")] = (
        "default"
    ),
    url: Annotated[
        str | None, typer.Option("--url", help="load this running server instead of starting one")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="real Redis for the server we start")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="postgresql://host/dropsim_{shard} for the server we start"),
    ] = None,
    shards: Shards = None,
    data_dir: DataDir = None,
    load_workers: Annotated[
        int, typer.Option(min=1, max=64, help="Locust worker processes (master + N workers)")
    ] = 1,
    web: Annotated[bool, typer.Option(help="open Locust's web UI on this scenario")] = False,
    web_port: Annotated[int, typer.Option(help="port of Locust's web UI")] = 8089,
    baseline: Annotated[
        Path | None, typer.Option(help="an earlier summary.json to compare with")
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            min=1, max=20, help="run N times; --baseline then tests all their samples together"
        ),
    ] = 1,
    reports_dir: Annotated[Path, typer.Option(help="where run directories go")] = Path("reports"),
) -> None:
    from dropsim.sim.orchestrator import Options, Target
    from dropsim.sim.orchestrator import simulate as run_simulation
    from dropsim.sim.scenario import load_scenario

    chosen = load_scenario(scenario, profile)
    previous = _read_baseline(baseline)
    target = Target(url=url, kv_url=redis_url, db_url=db, shards=shards, data_dir=data_dir)
    options = Options(
        reports_dir=reports_dir, load_workers=load_workers, web=web, web_port=web_port
    )
    run_dirs = []
    for number in range(1, repeat + 1):
        of = f", run {number} of {repeat}" if repeat > 1 else ""
        console.print(f"[bold]dropsim simulate {chosen.name}[/] (profile {chosen.profile}{of})")
        run_dirs.append(run_simulation(chosen, target, options, console))
    raise typer.Exit(_finish_report(run_dirs, previous))


def _read_baseline(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        baseline: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the baseline {path}: {exc}") from None
    return baseline


def _finish_report(run_dirs: list[Path], baseline: dict[str, Any] | None) -> int:
    """Summarise and render each run, print the last (with every repeat's samples pooled into
    it); the exit code of the worst run, or of a significant regression against `baseline`."""
    from dropsim.sim.report import render_report
    from dropsim.sim.summary import (
        build_summary,
        compare_with_baseline,
        pool_repeats,
        write_summary,
    )

    summaries = [build_summary(run_dir) for run_dir in run_dirs]
    for run_dir, summary in zip(run_dirs[:-1], summaries, strict=False):
        write_summary(run_dir, summary)
        render_report(run_dir, summary)
    summary = pool_repeats(summaries) if len(summaries) > 1 else summaries[-1]
    if baseline is not None:
        compare_with_baseline(summary, baseline)
    write_summary(run_dirs[-1], summary)
    report = render_report(run_dirs[-1], summary)
    _print_summary(summary)
    console.print(f"report: [cyan]{report}[/]")
    code: int = summary["exit_code"]
    return code


def _print_summary(summary: dict[str, Any]) -> None:
    colour = {"pass": "green", "breach": "red", "audit_failed": "red"}.get(
        summary["verdict"], "yellow"
    )
    table = Table("budget", "limit", "actual", "status", title="budgets")
    for check in summary["budgets"]:
        style = {"pass": "green", "breach": "red"}.get(check["status"], "dim")
        table.add_row(
            escape(check["name"]),
            escape(check["limit"]),
            escape(check["actual"]),
            f"[{style}]{check['status']}[/]",
        )
    console.print(table)
    orders, fanout = summary["orders"], summary["fanout"]
    order_p99 = summary["endpoints"].get("order", {}).get("p99_ms")
    order_text = "-" if order_p99 is None else f"{order_p99:.0f} ms"
    fanout_text = f"{fanout['p99_ms']:.0f} ms" if fanout["available"] else "n/a"
    outcomes = ", ".join(f"{k} {v}" for k, v in orders["outcomes"].items())
    console.print(
        f"orders decided/s {orders['orders_per_second']:.1f}   order p99 {order_text}   "
        f"fan-out lag p99 {fanout_text}   outcomes {outcomes}"
    )
    for reason in summary["invalid_reasons"]:
        console.print(f"[yellow]invalid measurement:[/] {escape(reason)}")
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(
        f"[bold {colour}]{summary['verdict'].replace('_', ' ').upper()}[/] "
        f"(exit code {summary['exit_code']})"
    )


@app.command()
def scenarios() -> None:
    """List the scenarios in scenarios/ and their profiles (each one validated)."""
    from dropsim.sim.scenario import list_scenarios

    table = Table("scenario", "profiles", "what it simulates")
    for found in list_scenarios():
        table.add_row(found.name, ", ".join(found.profiles), found.description)
    console.print(table)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="a run directory: reports/<scenario>/<run-id>")],
    baseline: Annotated[
        Path | None, typer.Option(help="an earlier summary.json to compare with")
    ] = None,
) -> None:
    """Re-render a run's report and summaries, print the summary; exit code as `simulate`."""
    if not (run / "run.json").is_file():
        raise ConfigurationError(f"{run} is not a run directory (no run.json)")
    raise typer.Exit(_finish_report([run], _read_baseline(baseline)))


@app.command()
def version() -> None:
    """Print the dropsim version."""
    console.print(__version__)


def main() -> None:
    """Entry point: domain and configuration errors end in one line, not a traceback."""
    try:
        app()
    except DropsimError as exc:
        errors.print(f"[red]dropsim:[/] {exc}", soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
