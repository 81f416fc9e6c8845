"""One-time stream tickets: EventSource cannot send headers, so a browser trades its bearer token
for a ticket that lives a minute, works once, and is the only secret that appears in a URL."""

from __future__ import annotations

import secrets

from dropsim.ports import KeyValueStore

TICKET_SECONDS = 60


def _key(ticket: str) -> str:
    return f"stream-ticket:{ticket}"


class StreamTickets:
    """Tickets in the KV store, so a ticket issued by one process is redeemed by any other."""

    def __init__(self, kv: KeyValueStore, ttl_seconds: int = TICKET_SECONDS) -> None:
        self._kv = kv
        self.ttl_seconds = ttl_seconds

    async def issue(self, user_id: str) -> str:
        ticket = secrets.token_urlsafe(24)
        await self._kv.set(_key(ticket), user_id, ex=self.ttl_seconds)
        return ticket

    async def redeem(self, ticket: str) -> str | None:
        """The user the ticket was issued to, once; None if unknown, used or expired."""
        if not ticket or len(ticket) > 64:
            return None
        user_id = await self._kv.getdel(_key(ticket))
        return None if user_id is None else str(user_id)
