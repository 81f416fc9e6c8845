"""Payments housekeeping: payments a dead process left behind are concluded, and the callback
replay guard is pruned past the provider's redelivery window, so `payment_callbacks` does not
grow without bound."""

from __future__ import annotations

import asyncio
import logging

from dropsim.background import BackgroundTask
from dropsim.payments.service import PaymentService

logger = logging.getLogger("dropsim.payments")


class CallbackPruner(BackgroundTask):
    name = "payment-callback-pruner"

    def __init__(
        self, payments: PaymentService, *, retention_seconds: float, interval_seconds: float
    ) -> None:
        super().__init__()
        self._payments = payments
        self._retention = retention_seconds
        self._interval = interval_seconds

    async def _run(self) -> None:
        while True:
            try:
                pruned = await self._payments.prune_callbacks(self._retention)
                if pruned:
                    logger.info("pruned %d provider callback ids", pruned)
            except Exception:
                logger.exception("pruning provider callback ids failed; trying again later")
            await asyncio.sleep(self._interval)


class PaymentRecovery(BackgroundTask):
    """At start-up, conclude what a crashed process left (open payments past their timeout,
    refunds it had begun); then keep timing out abandoned open payments."""

    name = "payment-recovery"

    def __init__(
        self, payments: PaymentService, *, resettle_seconds: float, interval_seconds: float
    ) -> None:
        super().__init__()
        self._payments = payments
        self._resettle = resettle_seconds
        self._interval = interval_seconds

    async def _run(self) -> None:
        resettle = self._resettle  # the succeeded ones at start-up, until all are settled
        while True:
            try:
                done = await self._payments.recover(resettle_seconds=resettle)
                if done.timed_out or done.resettled or done.failed:
                    logger.info(
                        "payment recovery: %d abandoned timed out, %d succeeded settled again, "
                        "%d to try again",
                        done.timed_out,
                        done.resettled,
                        done.failed,
                    )
                if not done.failed:
                    resettle = 0.0
            except Exception:
                logger.exception("payment recovery failed; trying again later")
            await asyncio.sleep(self._interval)
