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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dropsim.accounts.models import Role
from dropsim.errors import ConfigurationError
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.settings import Settings, load_settings
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
from dropsim.sim.world import WORLD_ENV, Cast, World, plan_arrivals

SAMPLE_EVERY_S = 0.5
SETTLE_WITHIN_S = 30.0
SEED_BATCH = 20_000
TOKEN_TTL_S = 6 * 3600


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
        with httpx.Client(base_url=url, timeout=120, headers=_bearer(admin)) as api:
            creator_id = _seed(api, scenario, console)
            world = _schedule(api, scenario, settings, creator_id, url, run_dir)
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


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _call(api: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = api.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise ConfigurationError(
            f"server refused {method} {path}: {response.status_code} {response.text[:300]}"
        )
    return response.json()


def _seed(api: httpx.Client, scenario: Scenario, console: Console) -> str:
    """The celebrity and their followers (idempotent: a real backend keeps them across runs)."""
    world = scenario.world
    creator_id = str(
        _call(
            api,
            "POST",
            "/v1/admin/seed/creators",
            json={"handle": world.celebrity, "display_name": world.celebrity.capitalize()},
        )["creator_id"]
    )
    with Progress(
        TextColumn("seeding @{task.fields[handle]} followers"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("seed", total=world.followers, handle=world.celebrity)
        for start in range(0, world.followers, SEED_BATCH):
            count = min(SEED_BATCH, world.followers - start)
            _call(
                api,
                "POST",
                "/v1/admin/seed/followers",
                json={"creator_id": creator_id, "start": start, "count": count},
            )
            progress.update(task, completed=start + count)
    console.print(f"seeded @{world.celebrity} with {world.followers:,} followers")
    return creator_id


def _schedule(
    api: httpx.Client,
    scenario: Scenario,
    settings: Settings,
    creator_id: str,
    url: str,
    run_dir: Path,
) -> World:
    """Schedule the drop and write the world file the load processes read."""
    issuer = TokenIssuer(settings.signing_secret(), TOKEN_TTL_S)
    creator = _bearer(issuer.issue(creator_id, Role.CREATOR))
    plan = scenario.drop
    product = _call(
        api, "POST", "/v1/products", json={"name": f"{scenario.name} drop"}, headers=creator
    )
    go_live_at = time.time() + plan.go_live_after_seconds
    starts = datetime.fromtimestamp(go_live_at, UTC)
    ends = datetime.fromtimestamp(go_live_at + plan.open_seconds, UTC)
    drop = _call(
        api,
        "POST",
        "/v1/drops",
        headers=creator,
        json={
            "product_id": product["id"],
            "stock": plan.stock,
            "price_cents": plan.price_cents,
            "per_user_limit": plan.per_user_limit,
            "starts_at": starts.isoformat(),
            "ends_at": ends.isoformat(),
        },
    )
    go_live_at = datetime.fromisoformat(drop["starts_at"]).timestamp()
    load = scenario.load
    handle, fans = scenario.world.celebrity, scenario.world.followers

    def tokens(user_ids: list[str]) -> list[str]:
        return [issuer.issue(user_id, Role.BUYER) for user_id in user_ids]

    # viewers and followers are taken from the end of the follower list, away from the buyers
    tail = [fan_id(handle, fans - 1 - index) for index in range(load.viewers.count)]
    togglers = [
        fan_id(handle, fans - 1 - load.viewers.count - index)
        for index in range(load.followers.count)
    ]
    world = World(
        url=url,
        drop_id=drop["id"],
        creator_id=creator_id,
        go_live_at=go_live_at,
        ends_at=go_live_at + load.duration_seconds,
        record_dir=str(run_dir / "load"),
        claims_dir=str(run_dir / "claims"),
        buyers=Cast(tokens([fan_id(handle, index) for index in range(load.rush.buyers)])),
        arrivals_s=plan_arrivals(
            load.rush.buyers, load.rush.arrival, load.rush.over_seconds, scenario.seed
        ),
        quantity=load.rush.quantity,
        replay_rate=load.rush.replay_rate,
        late_arrival_s=scenario.measurement.late_arrival_ms / 1000,
        order_timeout_s=load.duration_seconds,
        watchers=Cast(tokens([fan_id(handle, index) for index in range(load.watchers.count)])),
        viewers=Cast(tokens(tail), load.viewers.interval_seconds),
        followers=Cast(tokens(togglers), load.followers.interval_seconds),
        bots=Cast(
            tokens([f"usr_sim-bot{index}" for index in range(load.bots.count)]),
            load.bots.interval_seconds,
        ),
        seed=scenario.seed,
    )
    world.write(run_dir / "world.json")
    return world


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
    pending = sorted(_fault_steps(scenario, world.go_live_at), key=lambda step: step[0])
    server_process = psutil.Process(server.process.pid) if server is not None else None
    if server_process is not None:
        server_process.cpu_percent(None)
    grace = world.ends_at + 15
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while locust.alive() and (options.web or time.time() < grace):
            now = time.time()
            while pending and pending[0][0] <= now:
                _, description, change = pending.pop(0)
                _apply_fault(provider_url, change, description, log)
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
            _apply_fault(provider_url, change, description, log)


def _fault_steps(
    scenario: Scenario, go_live_at: float
) -> Iterator[tuple[float, str, dict[str, float]]]:
    baseline = scenario.payments
    for fault in scenario.faults:
        changes = fault.changes()
        restore = {name: float(getattr(baseline, name)) for name in changes}
        if "latency_median_ms" in changes or "latency_p99_ms" in changes:
            # the provider refuses p99 < median: always send both
            for name in ("latency_median_ms", "latency_p99_ms"):
                changes.setdefault(name, float(getattr(baseline, name)))
                restore[name] = float(getattr(baseline, name))
        start = go_live_at + fault.at_seconds
        text = ", ".join(f"{name}={value:g}" for name, value in changes.items())
        yield start, f"start payments fault: {text}", changes
        yield start + fault.duration_seconds, "end payments fault", restore


def _apply_fault(
    provider_url: str | None, change: dict[str, float], description: str, log: RunLog
) -> None:
    if provider_url is None:
        return
    response = httpx.put(f"{provider_url}/v1/simulation/behaviour", json=change, timeout=5)
    if response.status_code != 200:
        log.notes.append(f"fault not applied ({description}): {response.text[:200]}")
        return
    log.faults.append((time.time(), description))


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
