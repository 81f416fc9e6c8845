"""Payments housekeeping: the callback replay guard is pruned past the provider's redelivery
window, so `payment_callbacks` does not grow without bound."""

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
