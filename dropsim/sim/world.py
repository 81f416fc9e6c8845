"""The world file: everything a Locust process needs to play its part (drop, go-live, tokens,
planned arrivals), written by the orchestrator; and how processes share out the users in it."""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dropsim.sim.scenario import Arrival

WORLD_ENV = "DROPSIM_SIM_WORLD"
"""Environment variable that tells the locustfile where the world file is."""
BURST_SPACING_S = 0.001


@dataclass(frozen=True, slots=True)
class Cast:
    """One kind of simulated user: the tokens they sign in with and how often they act."""

    tokens: list[str] = field(default_factory=list)
    interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class World:
    url: str
    drop_id: str
    creator_id: str
    go_live_at: float
    """Epoch seconds at which the drop goes live."""
    ends_at: float
    """Epoch seconds at which the load stops."""
    record_dir: str
    claims_dir: str
    buyers: Cast
    arrivals_s: list[float]
    """Planned arrival of buyer i, in seconds after go-live."""
    quantity: int
    replay_rate: float
    late_arrival_s: float
    order_timeout_s: float
    """How long a buyer follows an order before calling it unresolved."""
    watchers: Cast = Cast()
    viewers: Cast = Cast()
    followers: Cast = Cast()
    bots: Cast = Cast()
    seed: int = 42

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> World:
        data: dict[str, Any] = json.loads(path.read_text())
        for cast in ("buyers", "watchers", "viewers", "followers", "bots"):
            data[cast] = Cast(**data[cast])
        return cls(**data)


def plan_arrivals(count: int, arrival: Arrival, over_s: float, seed: int) -> list[float]:
    """Planned start of each of `count` arrivals, seconds after go-live, in a seeded order."""
    if count == 0:
        return []
    if arrival is Arrival.BURST or over_s == 0:
        offsets = [index * BURST_SPACING_S for index in range(count)]
    elif arrival is Arrival.UNIFORM:
        offsets = [over_s * (index + 0.5) / count for index in range(count)]
    else:
        # exponential decay whose 99th percentile is `over_s`: quantiles at evenly spaced ranks
        scale = over_s / math.log(100)
        offsets = [-scale * math.log(1 - (index + 0.5) / count) for index in range(count)]
        offsets = [min(offset, over_s) for offset in offsets]
    random.Random(seed).shuffle(offsets)
    return offsets


def claim_slot(claims_dir: Path, cast: str) -> int:
    """The next unclaimed index of `cast`, unique across every load process on this machine."""
    claims_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(claims_dir / cast, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 32)
        slot = int(raw) if raw else 0
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(slot + 1).encode())
        return slot
    finally:
        os.close(fd)  # closing releases the lock
