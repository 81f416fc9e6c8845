"""Scenarios: TOML files in `scenarios/`, validated by pydantic, with profiles laid over the base.

A scenario names the world to seed, the drop, the load, the payment behaviour and its faults, the
server settings to run with, and the budgets a run must meet. Its base tables are the `default`
profile; `[profiles.NAME]` tables are deep-merged over them
(`[profiles.ci.world] followers = 2000`).
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dropsim.errors import ConfigurationError

DEFAULT_PROFILE = "default"
SCENARIO_DIR_NAME = "scenarios"


class ScenarioError(ConfigurationError):
    """A scenario file cannot be read or does not validate; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class World(_Strict):
    """What is seeded before the run: a celebrity and their followers; buyers are followers."""

    celebrity: str = Field(default="celeb", pattern=r"^[a-zA-Z0-9_.-]{2,29}$")
    """Handle of the celebrity creator (seeded idempotently: re-runs reuse it)."""
    followers: int = Field(default=10_000, ge=0, le=10_000_000)
    """How many fans follow the celebrity."""


class DropPlan(_Strict):
    """The drop the rush is about."""

    stock: int = Field(default=100, ge=1, le=10_000_000)
    price_cents: int = Field(default=4900, ge=0, le=100_000_000)
    per_user_limit: int = Field(default=1, ge=1, le=1000)
    go_live_after_seconds: float = Field(default=8.0, ge=2.0, le=600.0)
    """Seconds from starting the load (watchers connect, buyers wait) to the drop going live."""
    open_seconds: float = Field(default=3600.0, ge=10.0)
    """How long the drop stays on sale."""


class Arrival(StrEnum):
    """How the rush's arrivals are spread after go-live."""

    BURST = "burst"
    """All planned at go-live + a few milliseconds apart (a refresh-button crowd)."""
    UNIFORM = "uniform"
    """Evenly over `over_seconds`."""
    FRONT_LOADED = "front_loaded"
    """Exponentially decaying: most at once, a tail of late-comers over `over_seconds`."""


class Rush(_Strict):
    """Buyers who wait for go-live and order once each (an open model: arrivals are planned)."""

    buyers: int = Field(default=1000, ge=0, le=200_000)
    """Followers number 0 .. buyers-1 rush; must not exceed world.followers."""
    arrival: Arrival = Arrival.FRONT_LOADED
    over_seconds: float = Field(default=5.0, ge=0.0, le=600.0)
    quantity: int = Field(default=1, ge=1, le=100)
    replay_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    """Fraction of buyers who send their order again with the same key (a double click)."""


class Watchers(_Strict):
    """Followers holding an SSE stream, connected before go-live."""

    count: int = Field(default=0, ge=0, le=20_000)


class Viewers(_Strict):
    """Users refreshing the composed drop page."""

    count: int = Field(default=0, ge=0, le=10_000)
    interval_seconds: float = Field(default=1.0, gt=0.0)


class Followers(_Strict):
    """Users unfollowing and following the celebrity again (writes against the follow graph)."""

    count: int = Field(default=0, ge=0, le=10_000)
    interval_seconds: float = Field(default=2.0, gt=0.0)


class Bots(_Strict):
    """Scripted buyers hammering the order route in a closed loop, from before go-live."""

    count: int = Field(default=0, ge=0, le=10_000)
    interval_seconds: float = Field(default=0.05, ge=0.0)


class Load(_Strict):
    """Everything the load generator does, and for how long after go-live."""

    duration_seconds: float = Field(default=20.0, ge=1.0, le=3600.0)
    """How long the load keeps running after go-live."""
    rush: Rush = Rush()
    watchers: Watchers = Watchers()
    viewers: Viewers = Viewers()
    followers: Followers = Followers()
    bots: Bots = Bots()


class Payments(_Strict):
    """How the simulated payment provider behaves (see `dropsim provider`)."""

    latency_median_ms: float = Field(default=150.0, gt=0)
    latency_p99_ms: float = Field(default=1200.0, gt=0)
    failure_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    duplicate_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    callback_loss_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _latency_order(self) -> Payments:
        if self.latency_p99_ms < self.latency_median_ms:
            raise ValueError("latency_p99_ms must not be below latency_median_ms")
        return self


class PaymentFault(_Strict):
    """For a while, the provider behaves differently (an outage, a slowdown)."""

    kind: Literal["payments"] = "payments"
    at_seconds: float = Field(ge=0.0)
    """Seconds after go-live."""
    duration_seconds: float = Field(gt=0.0)
    failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    latency_median_ms: float | None = Field(default=None, gt=0)
    latency_p99_ms: float | None = Field(default=None, gt=0)
    callback_loss_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    def changes(self) -> dict[str, float]:
        """The provider settings this fault overrides while it lasts."""
        fields = ("failure_rate", "latency_median_ms", "latency_p99_ms", "callback_loss_rate")
        return {name: value for name in fields if (value := getattr(self, name)) is not None}


class EndpointBudget(_Strict):
    """Latency limits of one endpoint, in milliseconds (absent: not checked)."""

    p50_ms: float | None = Field(default=None, gt=0)
    p99_ms: float | None = Field(default=None, gt=0)
    p999_ms: float | None = Field(default=None, gt=0)


class Budgets(_Strict):
    """What a passing run must show. The audit is always checked, whatever is written here."""

    endpoints: dict[str, EndpointBudget] = {}
    error_rate: float | None = Field(default=0.01, ge=0.0, le=1.0)
    """Largest share of requests that failed (5xx, timeouts, resets; not 4xx refusals or 429)."""
    fanout_lag_p99_ms: float | None = Field(default=None, gt=0)
    min_orders_per_second: float | None = Field(default=None, ge=0)
    """Confirmed-or-refused order decisions per second during the rush."""
    audit_clean: Literal[True] = True
    """The audit must be clean; it cannot be switched off."""


class Measurement(_Strict):
    """When the load generator's numbers cannot be trusted (the run is then invalid)."""

    late_arrival_ms: float = Field(default=200.0, gt=0)
    """An arrival that starts later than this after its planned time is late."""
    max_late_fraction: float = Field(default=0.02, ge=0.0, le=1.0)
    cpu_saturation_percent: float = Field(default=90.0, gt=0, le=100)
    """A load process at or above this CPU share (of one core) ..."""
    saturation_seconds: int = Field(default=3, ge=1)
    """... for this many consecutive seconds after go-live saturated the generator."""


class Scenario(_Strict):
    """One validated scenario with one profile applied."""

    name: str
    profile: str = DEFAULT_PROFILE
    description: str = ""
    seed: int = 42
    world: World = World()
    drop: DropPlan = DropPlan()
    load: Load = Load()
    payments: Payments = Payments()
    faults: list[PaymentFault] = []
    server: dict[str, str | int | float | bool] = {}
    """Server settings for the server the orchestrator starts, passed as DROPSIM_<NAME>."""
    budgets: Budgets = Budgets()
    measurement: Measurement = Measurement()

    @model_validator(mode="after")
    def _buyers_are_followers(self) -> Scenario:
        needed = max(self.load.rush.buyers, self.load.watchers.count)
        if needed > self.world.followers:
            raise ValueError(
                f"load needs {needed} followers (rush.buyers, watchers.count) but "
                f"world.followers is {self.world.followers}"
            )
        return self

    def server_environment(self) -> dict[str, str]:
        """The [server] table as environment variables for the server process."""
        return {
            f"DROPSIM_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.server.items()
        }


class ScenarioFile(_Strict):
    """A scenario as written: its name, its profiles, and where it came from."""

    name: str
    path: Path
    description: str
    profiles: tuple[str, ...]


def scenario_dir() -> Path:
    """`scenarios/` of the source tree (next to the package), or of the working directory."""
    beside_package = Path(__file__).resolve().parents[2] / SCENARIO_DIR_NAME
    return beside_package if beside_package.is_dir() else Path.cwd() / SCENARIO_DIR_NAME


def list_scenarios(directory: Path | None = None) -> list[ScenarioFile]:
    """Every scenario file in `directory`, sorted by name (each checked under every profile)."""
    found = []
    for path in sorted((directory or scenario_dir()).glob("*.toml")):
        raw = _read(path)
        profiles = (DEFAULT_PROFILE, *sorted(raw.get("profiles", {})))
        for profile in profiles:
            _validate(path, raw, profile)
        found.append(
            ScenarioFile(
                name=path.stem,
                path=path,
                description=str(raw.get("description", "")),
                profiles=profiles,
            )
        )
    return found


def load_scenario(
    name_or_path: str | Path, profile: str = DEFAULT_PROFILE, directory: Path | None = None
) -> Scenario:
    """The scenario called `name_or_path` (in `directory`) or at that path, with `profile`."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = (directory or scenario_dir()) / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(file.stem for file in sorted(path.parent.glob("*.toml"))) or "none"
        raise ScenarioError(f"no scenario {str(name_or_path)!r} (known: {known})")
    return _validate(path, _read(path), profile)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None


def _validate(path: Path, raw: dict[str, Any], profile: str) -> Scenario:
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ScenarioError(f"{path}: profiles: must be a table of profiles")
    base = {key: value for key, value in raw.items() if key != "profiles"}
    base.setdefault("name", path.stem)
    if profile != DEFAULT_PROFILE:
        if profile not in profiles:
            known = ", ".join((DEFAULT_PROFILE, *sorted(profiles)))
            raise ScenarioError(f"{path}: no profile {profile!r} (known: {known})")
        base = deep_merge(base, profiles[profile])
    base["profile"] = profile
    try:
        return Scenario.model_validate(base)
    except ValidationError as exc:
        where = "" if profile == DEFAULT_PROFILE else f" (profile {profile})"
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'scenario'}: "
            f"{str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ScenarioError(f"{path}{where}: {problems}") from None


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` laid over it, tables merged key by key, everything else replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
