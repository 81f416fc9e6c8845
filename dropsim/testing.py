"""Helpers for tests (ours and yours): an app on embedded backends in one call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from litestar import Litestar

from dropsim.app import create_app
from dropsim.serving import KEEP_ALIVE_SECONDS, free_port, settings_environment
from dropsim.settings import Settings

LOOPBACK_LIMITS = "100000/s:100000,100000/s:100000"
"""Rate limits for tests and benchmarks: every request comes from 127.0.0.1, thousands a second,
so the limiter stays on (each request still pays its check) but never refuses."""


def embedded_settings(directory: Path, **overrides: object) -> Settings:
    """Settings for fakeredis + SQLite shards under `directory`, with a fixed JWT secret and
    rate limits that load from one address never reaches (`LOOPBACK_LIMITS`)."""
    values: dict[str, object] = {
        "kv_url": "memory://",
        "db_url": f"sqlite:///{directory}/shard-{{shard}}.db",
        "shards": 2,
        "data_dir": directory,
        "jwt_secret": "test-secret-" + "x" * 32,
        "scheduler_poll_seconds": 0.2,
        "rate_limit_orders": LOOPBACK_LIMITS,
        "rate_limit_writes": LOOPBACK_LIMITS,
        "rate_limit_reads": LOOPBACK_LIMITS,
        "rate_limit_stream": LOOPBACK_LIMITS,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def embedded_app(directory: Path, **overrides: object) -> Litestar:
    """The whole dropsim app on embedded backends under `directory`."""
    return create_app(embedded_settings(directory, **overrides))


class ServerProcess:
    """A real dropsim server (uvicorn) in a child process on 127.0.0.1, for tests over HTTP.

    Use as a context manager: it starts, waits until `/health/ready` answers 200, and on exit it
    stops the process (SIGTERM, then SIGKILL). `kill()` ends it abruptly, as a crash would.
    `via_cli` starts it as `dropsim serve` (worker set-up included) rather than bare uvicorn;
    `env` adds environment variables on top of the settings'.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        workers: int = 1,
        via_cli: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the payment provider calls back to wherever this server listens
        self.settings = settings.model_copy(update={"public_url": self.url})
        self._workers = workers
        self._via_cli = via_cli
        self._env = env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, **settings_environment(self.settings), **self._env}
        self._process = subprocess.Popen(
            self._command(), env=env, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self._process.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    @property
    def pid(self) -> int:
        """The server's process id (with one worker, the process that serves requests)."""
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU the server process (all its threads) has used so far:
        CPU per request is a steadier figure than requests per second on a shared machine."""
        used = psutil.Process(self.pid).cpu_times()
        return float(used.user + used.system)

    def _command(self) -> list[str]:
        where = ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self._workers)]
        if self._via_cli:
            return [sys.executable, "-m", "dropsim.cli", "serve", *where]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "dropsim.app:app_from_environment",
            "--factory",
            *where,
            "--no-access-log",
            # as `dropsim serve`: X-Forwarded-For is the app's business (trusted proxies setting)
            "--no-proxy-headers",
            "--timeout-graceful-shutdown",
            "3",
            "--timeout-keep-alive",
            str(KEEP_ALIVE_SECONDS),
        ]

    def output(self) -> str:
        """What the server printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def kill(self) -> None:
        """End the server at once (SIGKILL): nothing is flushed, as in a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
        self._log.close()
