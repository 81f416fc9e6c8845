"""`dropsim simulate`: start the provider, the server and Locust as separate processes, seed the
world, schedule the drop, run the load, apply faults, sample stock, audit, and stop everything
it started (also on Ctrl-C). Never imports Locust or gevent."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.settings import Settings, load_settings
from dropsim.sim.faults import apply_fault, fault_steps
from dropsim.sim.metadata import run_metadata
from dropsim.sim.processes import (
    Child,
    Children,
    child_environment,
    locust_command,
    start_provider,
    start_server,
)
from dropsim.sim.scenario import Scenario
from dropsim.sim.staging import TOKEN_TTL_S, bearer, schedule_drop, seed_world
from dropsim.sim.world import WORLD_ENV, World

SAMPLE_EVERY_S = 0.5
SETTLE_WITHIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """Which server to load: one we start (embedded or real backends) or one already running."""

    url: str | None = None
    kv_url: str | None = None
    db_url: str | None = None
    shards: int | None = None
    data_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class Options:
    reports_dir: Path = Path("reports")
    load_workers: int = 1
    web: bool = False
    web_port: int = 8089
    keep_data: bool = False


@dataclass
class RunLog:
    """What the orchestrator saw, written to `run.json` (the report is rendered from it)."""

    stock: list[tuple[float, int, int, int]] = field(default_factory=list)
    server_cpu: list[tuple[float, float]] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def new_run_dir(reports_dir: Path, scenario: str) -> Path:
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
    path = reports_dir / scenario / run_id
    path.mkdir(parents=True)
    return path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def simulate(scenario: Scenario, target: Target, options: Options, console: Console) -> Path:
    """Run `scenario` once; return its run directory (with run.json and the load records).

    Ctrl-C or SIGTERM stop every process the run started before the error propagates.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _simulate(scenario, target, options, console)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _simulate(scenario: Scenario, target: Target, options: Options, console: Console) -> Path:
    run_dir = new_run_dir(options.reports_dir, scenario.name)
    children = Children()
    log = RunLog()
    run: dict[str, Any] = {
        "scenario": scenario.model_dump(mode="json"),
        "metadata": run_metadata(scenario, options.load_workers),
        "interrupted": False,
    }
    owns_data = target.url is None and target.data_dir is None
    if target.url is not None:  # tokens must be signed with that server's secret
        data_dir = target.data_dir or load_settings().data_dir
    else:
        data_dir = target.data_dir or Path(tempfile.mkdtemp(prefix="dropsim-sim-"))
    try:
        settings = _settings(scenario, target, data_dir)
        run["metadata"]["backends"] = {"kv": settings.kv_url, "db": settings.db_url}
        url, server, provider_url = _start(scenario, target, settings, children, run_dir, log)
        run["metadata"]["server_url"] = url
        admin = TokenIssuer(settings.signing_secret(), TOKEN_TTL_S).issue("sim-admin", Role.ADMIN)
        with httpx.Client(base_url=url, timeout=120, headers=bearer(admin)) as api:
            creator_id = seed_world(api, scenario, console)
            world = schedule_drop(api, scenario, settings, creator_id, url, run_dir)
            run.update(drop_id=world.drop_id, go_live_at=world.go_live_at, ends_at=world.ends_at)
            locust = _start_locust(scenario, world, options, children, run_dir, url, console)
            run["load_started_at"] = time.time()
            _watch(api, scenario, world, locust, server, provider_url, log, console, options)
            run["load_ended_at"] = time.time()
            run["locust_exit_code"] = locust.stop()
            audit, at_rest = _settle(api, world.drop_id, console)
            run["audit"], run["audit_at_rest"] = audit, at_rest
    except KeyboardInterrupt:
        run["interrupted"] = True
        console.print("[yellow]interrupted: stopping everything this run started[/]")
    finally:
        children.stop_all()
        run.update(stock=log.stock, server_cpu=log.server_cpu, faults=log.faults, notes=log.notes)
        (run_dir / "run.json").write_text(json.dumps(run, indent=1))
        (run_dir / "world.json").unlink(missing_ok=True)  # holds tokens; not a result
        shutil.rmtree(run_dir / "claims", ignore_errors=True)
        if owns_data and not options.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    if run["interrupted"]:
        raise KeyboardInterrupt
    return run_dir


def _settings(scenario: Scenario, target: Target, data_dir: Path) -> Settings:
    payments = scenario.payments
    embedded_db = None if target.url else f"sqlite:///{data_dir}/shard-{{shard}}.db"
    overrides: dict[str, Any] = {
        "kv_url": target.kv_url,
        "db_url": target.db_url or embedded_db,
        "shards": target.shards,
        "data_dir": data_dir,
        "provider_latency_median_ms": payments.latency_median_ms,
        "provider_latency_p99_ms": payments.latency_p99_ms,
        "provider_failure_rate": payments.failure_rate,
        "provider_duplicate_rate": payments.duplicate_rate,
        "provider_callback_loss_rate": payments.callback_loss_rate,
    }
    return load_settings(**overrides)


def _start(
    scenario: Scenario,
    target: Target,
    settings: Settings,
    children: Children,
    run_dir: Path,
    log: RunLog,
) -> tuple[str, Child | None, str | None]:
    """The server URL, the server process (None for --url) and the provider URL we control."""
    if target.url is not None:
        if scenario.faults:
            log.notes.append(
                "faults were not applied: with --url the run does not control the payment provider"
            )
        if scenario.server:
            log.notes.append("[server] settings were not applied: with --url the server is yours")
        return target.url.rstrip("/"), None, None
    unknown = sorted(set(scenario.server) - set(Settings.model_fields))
    if unknown:
        log.notes.append(
            f"[server] settings unknown to this server's settings (it ignores them): "
            f"{', '.join(unknown)}"
        )
    provider_url = start_provider(children, settings, run_dir)
    settings = settings.model_copy(update={"payment_provider_url": provider_url})
    server, url = start_server(children, settings, scenario.server_environment(), run_dir)
    return url, server, provider_url


def _start_locust(
    scenario: Scenario,
    world: World,
    options: Options,
    children: Children,
    run_dir: Path,
    url: str,
    console: Console,
) -> Child:
    load = scenario.load
    users = (
        load.rush.buyers
        + load.watchers.count
        + load.viewers.count
        + load.followers.count
        + load.bots.count
    )
    # every user should be up well before go-live: buyers sleep until their arrival
    spawn_rate = max(users / max(scenario.drop.go_live_after_seconds / 3, 1), 50)
    run_time = math.ceil(world.ends_at - time.time())
    command = locust_command(
        url=url,
        users=max(users, 1),
        spawn_rate=spawn_rate,
        run_time_s=None if options.web else run_time,
        workers=options.load_workers,
        web_port=options.web_port if options.web else None,
    )
    env = child_environment({WORLD_ENV: str(run_dir / "world.json")})
    locust = children.start("locust", command, env, run_dir)
    if options.web:
        console.print(
            f"Locust web UI: [cyan]http://127.0.0.1:{options.web_port}[/] "
            "(the load started already; Ctrl-C ends the run)"
        )
    return locust


def _watch(
    api: httpx.Client,
    scenario: Scenario,
    world: World,
    locust: Child,
    server: Child | None,
    provider_url: str | None,
    log: RunLog,
    console: Console,
    options: Options,
) -> None:
    """Until the load ends: sample stock and server CPU, apply faults, show a live summary."""
    pending = sorted(fault_steps(scenario, world.go_live_at), key=lambda step: step[0])
    server_process = psutil.Process(server.process.pid) if server is not None else None
    if server_process is not None:
        server_process.cpu_percent(None)
    grace = world.ends_at + 15
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while locust.alive() and (options.web or time.time() < grace):
            now = time.time()
            while pending and pending[0][0] <= now:
                _, description, change = pending.pop(0)
                _apply(provider_url, change, description, log)
            audit = _audit(api, world.drop_id)
            if audit is not None:
                log.stock.append((now, audit["available"], audit["reserved"], audit["sold"]))
            if server_process is not None:
                with contextlib.suppress(psutil.Error):
                    log.server_cpu.append((now, server_process.cpu_percent(None)))
            live.update(_live_table(scenario, world, audit, log, now))
            time.sleep(SAMPLE_EVERY_S)
    for _, description, change in pending:  # the load ended first: leave the provider healthy
        if description.startswith("end"):
            _apply(provider_url, change, description, log)


def _apply(
    provider_url: str | None, change: dict[str, float], description: str, log: RunLog
) -> None:
    if provider_url is None:
        return
    failure = apply_fault(provider_url, change)
    if failure is None:
        log.faults.append((time.time(), description))
    else:
        log.notes.append(f"fault not applied ({description}): {failure}")


def _audit(api: httpx.Client, drop_id: str) -> dict[str, Any] | None:
    try:
        response = api.get(f"/v1/admin/drops/{drop_id}/audit", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _live_table(
    scenario: Scenario, world: World, audit: dict[str, Any] | None, log: RunLog, now: float
) -> Table:
    table = Table(title=f"dropsim simulate {scenario.name} ({scenario.profile})", show_header=False)
    to_live = world.go_live_at - now
    phase = f"go-live in {to_live:.1f}s" if to_live > 0 else f"live for {-to_live:.1f}s"
    table.add_row("phase", phase)
    table.add_row("load ends in", f"{max(world.ends_at - now, 0):.1f}s")
    if audit is not None:
        table.add_row(
            "stock",
            f"available {audit['available']}  reserved {audit['reserved']}  sold {audit['sold']}"
            f"  of {audit['stock']}",
        )
        table.add_row("confirmed orders", str(audit["confirmed_orders_sql"]))
    if log.server_cpu:
        table.add_row("server CPU", f"{log.server_cpu[-1][1]:.0f} %")
    if log.faults:
        table.add_row("last fault", log.faults[-1][1])
    return table


def _settle(
    api: httpx.Client, drop_id: str, console: Console
) -> tuple[dict[str, Any] | None, bool]:
    """The audit once nothing is reserved or pending (or the last one after SETTLE_WITHIN_S)."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    audit = None
    with console.status("waiting for payments to settle, then auditing..."):
        while time.monotonic() < deadline:
            audit = _audit(api, drop_id)
            if (
                audit is not None
                and audit["reserved"] == 0
                and audit["pending_orders_sql"] == 0
                and not audit["orphan_payments"]
            ):
                return audit, True
            time.sleep(0.5)
    return audit, False
