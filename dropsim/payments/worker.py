"""A payment worker process (`dropsim payments-worker`): takes the orders server processes hand
off (`payments/handoff.py`), records their payments and charges the provider until told to
stop. `dropsim serve --payment-workers N` starts N of them beside the server."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys

from dropsim.errors import ConfigurationError
from dropsim.settings import Settings

logger = logging.getLogger("dropsim.payments.worker")

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent ends."""


def check_payment_workers(settings: Settings, count: int) -> None:
    """Refuse `count` payment workers over an in-process KV store: the hand-off is a stream
    every process must share."""
    if count and settings.embedded_kv:
        raise ConfigurationError(
            "payment workers need a KV store every process shares, but memory:// (fakeredis) "
            "lives inside one process: pass --kv-url redis://127.0.0.1:6379/0, "
            "or --payment-workers 0"
        )


async def run_payment_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Work until `stop` is set, then stop taking hand-offs and close (payments still being
    pursued are left to the server processes' recovery, as a dead worker's would be)."""
    from dropsim.app import build_services, keep_collector_out_of_the_way
    from dropsim.backends import Backends
    from dropsim.payments.handoff import PaymentQueue, PaymentWorker, consumer_name

    check_payment_workers(settings, 1)
    if settings.payment_provider_url == "embedded":
        raise ConfigurationError(
            "a payment worker charges at the provider the servers use: set "
            "DROPSIM_PAYMENT_PROVIDER_URL (dropsim serve --payment-workers does so for you)"
        )
    backends = await Backends.open(settings)
    try:
        services = build_services(settings, backends)
        worker = PaymentWorker(
            PaymentQueue(backends.kv), services.payments.begin_payment, consumer=consumer_name()
        )
        keep_collector_out_of_the_way()
        worker.start()
        try:
            await stop.wait()
        finally:
            await worker.stop()
            await services.close()
    finally:
        await backends.close()


def serve_payment_worker(settings: Settings) -> None:
    """Run a worker in this process until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_payment_worker(settings, stop)

    asyncio.run(main())


def start_payment_workers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes with `settings` (as DROPSIM_* variables)."""
    from dropsim.serving import settings_environment

    env = {**os.environ, **settings_environment(settings)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "dropsim.cli", "payments-worker"],
            env=env,
            preexec_fn=_end_with_parent,  # runs in the child between fork and exec
        )
        for _ in range(count)
    ]


def _end_with_parent() -> None:
    """In the child, before it runs: on Linux, be sent SIGTERM when the process that started
    it ends, however it ends (killed too), so no worker outlives its server."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_payment_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM each worker and wait for it (killed if it does not end within `timeout`)."""
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.error("payment worker %d did not stop; killed", process.pid)
            process.kill()
            process.wait()
