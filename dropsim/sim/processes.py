"""The processes a simulation starts (payment provider, server, Locust) and their clean stop.

Locust runs as its own process: gevent's monkey patching must never meet the asyncio server or
this orchestrator, so nothing here imports Locust.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dropsim.errors import ConfigurationError
from dropsim.serving import free_port, settings_environment
from dropsim.settings import Settings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class Child:
    """A started process, its log file, and how to stop it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (then SIGKILL after `timeout`); the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Children:
    """Every process this run started, stopped in reverse order whatever happens."""

    started: list[Child] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Child:
        log = log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop()


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without DROPSIM_* settings (a run states its own), plus
    `extra`."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("DROPSIM_")}
    return {**base, **extra}


def start_provider(children: Children, settings: Settings, log_dir: Path) -> str:
    """The simulated payment provider in its own process (so faults can be changed mid-run)."""
    port = free_port()
    env = child_environment(settings_environment(settings))
    child = children.start(
        "provider",
        [sys.executable, "-m", "dropsim.cli", "provider", "--port", str(port)],
        env,
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(child, f"{url}/v1/charges/ch_none", within=30, ok_statuses=(404,))
    return url


def start_server(
    children: Children, settings: Settings, server_env: dict[str, str], log_dir: Path
) -> tuple[Child, str]:
    """`dropsim serve` on a free port with the run's settings; returns once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"public_url": url})
    env = child_environment({**settings_environment(settings), **server_env})
    child = children.start(
        "server",
        [sys.executable, "-m", "dropsim.cli", "serve", "--port", str(port)],
        env,
        log_dir,
    )
    wait_until_answers(child, f"{url}/health/ready", within=60)
    return child, url


def wait_until_answers(
    child: Child | None, url: str, *, within: float, ok_statuses: tuple[int, ...] = (200,)
) -> None:
    """Poll `url` until it answers one of `ok_statuses`; fail with the child's last output."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise ConfigurationError(
                f"{child.name} exited with {child.process.returncode}:\n{child.tail()}"
            )
        try:
            if httpx.get(url, timeout=2).status_code in ok_statuses:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ConfigurationError(f"{url} did not answer within {within:.0f}s")


def locust_command(
    *,
    url: str,
    users: int,
    spawn_rate: float,
    run_time_s: int | None,
    workers: int,
    web_port: int | None,
) -> list[str]:
    """The Locust command line: headless for a measured run, the web UI for `--web`."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        f"{spawn_rate:g}",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "0",
    ]
    if web_port is None:
        command += ["--headless", "--only-summary"]
    else:
        command += ["--web-host", "127.0.0.1", "--web-port", str(web_port), "--autostart"]
    if run_time_s is not None:
        command += ["--run-time", f"{run_time_s}s"]
    if workers > 1:
        command += ["--processes", str(workers)]
    return command
