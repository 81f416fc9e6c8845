"""The Locust entry point (`locust -f dropsim/sim/locustfile.py`): reads the world file named by
DROPSIM_SIM_WORLD, exposes the user classes the scenario needs, records CPU and writes the
process's measurements when the test stops."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust import events
from locust.runners import MasterRunner

from dropsim.sim.recording import Recorder
from dropsim.sim.users import Bot, Buyer, Follower, SimUser, Viewer, Watcher
from dropsim.sim.world import WORLD_ENV, World

world = World.read(Path(os.environ[WORLD_ENV]))
recorder = Recorder()
SimUser.world = world
SimUser.recorder = recorder


def _cast(namespace: dict[str, Any]) -> None:
    """Fixed counts make Locust spawn exactly the world's cast (watchers first, so streams are
    open before go-live); classes without users leave the module, where Locust looks for them."""
    for user_class, count in (
        (Watcher, len(world.watchers.tokens)),
        (Buyer, len(world.buyers.tokens)),
        (Viewer, len(world.viewers.tokens)),
        (Follower, len(world.followers.tokens)),
        (Bot, len(world.bots.tokens)),
    ):
        user_class.fixed_count = count
        if count == 0:
            namespace.pop(user_class.__name__, None)


_cast(globals())


def _sample_cpu() -> None:
    process = psutil.Process()
    process.cpu_percent(None)
    while True:
        gevent.sleep(1.0)
        recorder.cpu_sample(time.time(), process.cpu_percent(None))


def _started(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        gevent.spawn(_sample_cpu)


def _stopped(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        recorder.write(Path(world.record_dir))


# Locust's event hooks are not annotated
events.test_start.add_listener(_started)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_stopped)  # type: ignore[no-untyped-call]
