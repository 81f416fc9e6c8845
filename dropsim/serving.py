"""Running the server: uvicorn in this process (or N workers), and the note that tells other
commands (`dropsim seed`) where a running server on embedded backends can be reached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from dropsim.errors import ConfigurationError
from dropsim.metrics import MULTIPROCESS_DIR_ENV
from dropsim.settings import Settings

SERVER_NOTE = "server.json"
KEEP_ALIVE_SECONDS = 75
"""How long an idle keep-alive connection stays open: longer than clients keep theirs (httpx 5 s,
aiohttp 15 s, load balancers 60 s), so a client never reuses a connection in the instant the
server closes it (uvicorn's default is 5 s, httpx's too: the race surfaced as a ReadError in a
burst of test requests)."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    """Where a live server in this data dir listens, and which process it is."""

    url: str
    pid: int


def write_server_note(settings: Settings, url: str) -> Path:
    """Record that this process serves the data dir's embedded backends at `url`."""
    path = settings.data_dir / SERVER_NOTE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    return path


def running_server(settings: Settings) -> RunningServer | None:
    """The server noted in the data dir, if its process is still alive."""
    path = settings.data_dir / SERVER_NOTE
    try:
        note = json.loads(path.read_text())
        pid = int(note["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RunningServer(url=str(note["url"]), pid=pid)


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as DROPSIM_* variables, so worker processes build the same app."""
    return {f"DROPSIM_{name.upper()}": str(value) for name, value in settings.model_dump().items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_provider_process(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    """Run `dropsim provider` in a child process; return it and its URL once it listens."""
    port = free_port()
    env = {**os.environ, **settings_environment(settings)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dropsim.cli", "provider", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    raise ConfigurationError("the simulated payment provider did not start")


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse several workers on embedded backends: each process would hold its own fakeredis
    and its own SQLite connections, several systems behind one port instead of one."""
    if workers == 1:
        return
    embedded = [
        what
        for what, is_embedded in (
            ("the KV store is memory:// (fakeredis, inside one process)", settings.embedded_kv),
            ("the SQL shards are SQLite files", settings.embedded_db),
        )
        if is_embedded
    ]
    if embedded:
        raise ConfigurationError(
            f"--workers {workers} needs backends that every worker shares, but "
            + " and ".join(embedded)
            + ": pass --kv-url redis://127.0.0.1:6379/0 --db-url "
            "postgresql://127.0.0.1/dropsim_{shard}, or serve with --workers 1"
        )


def serve(settings: Settings, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve until interrupted. One worker runs in this process; more run as uvicorn workers."""
    common = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "proxy_headers": False,
    }
    if workers == 1:
        from dropsim.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    check_workers(settings, workers)
    os.environ.update(settings_environment(settings))
    # a fresh directory per start: counters restart at zero, and no stale worker files linger
    with tempfile.TemporaryDirectory(prefix="dropsim-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir  # workers inherit it when they spawn
        try:
            uvicorn.run(
                "dropsim.app:app_from_environment",
                factory=True,
                workers=workers,
                **common,  # type: ignore[arg-type]
            )
        finally:
            del os.environ[MULTIPROCESS_DIR_ENV]
