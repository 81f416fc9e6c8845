"""Operator actions (seed, audit, reconcile) on this process's backends or through a running
server's admin routes: a server on embedded backends holds its KV store in its own memory, so
the CLI must go through it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
import msgspec

from dropsim.accounts.models import Role
from dropsim.errors import ConfigurationError
from dropsim.gateway.tokens import TokenIssuer
from dropsim.settings import Settings

CHUNK = 50_000


class Admin(Protocol):
    async def seed_creator(self, handle: str, display_name: str) -> str: ...

    async def seed_followers(
        self,
        creator_id: str,
        count: int,
        *,
        start: int = 0,
        batch: int = CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int: ...

    async def audit(self, drop_id: str) -> dict[str, Any]: ...

    async def reconcile(
        self, drop_ids: list[str] | None, *, only_missing: bool
    ) -> list[dict[str, Any]]: ...


class LocalAdmin:
    """Acts on backends this process opened."""

    def __init__(self, services: Any) -> None:
        self._services = services

    async def seed_creator(self, handle: str, display_name: str) -> str:
        creator_id: str = await self._services.seeder.seed_creator(handle, display_name)
        return creator_id

    async def seed_followers(
        self,
        creator_id: str,
        count: int,
        *,
        start: int = 0,
        batch: int = CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        added: int = await self._services.seeder.seed_followers(
            creator_id, count, start=start, batch=batch, progress=progress
        )
        return added

    async def audit(self, drop_id: str) -> dict[str, Any]:
        report: dict[str, Any] = msgspec.to_builtins(await self._services.auditor.audit(drop_id))
        return report

    async def reconcile(
        self, drop_ids: list[str] | None, *, only_missing: bool
    ) -> list[dict[str, Any]]:
        rebuilt = await self._services.reconciler.reconcile(
            only_missing=only_missing, drop_ids=drop_ids
        )
        result: list[dict[str, Any]] = msgspec.to_builtins(rebuilt)
        return result


class RemoteAdmin:
    """The same actions over HTTP, in chunks so a progress bar can follow."""

    def __init__(self, url: str, admin_token: str, *, timeout: float = 300.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=timeout
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ConfigurationError(
                f"cannot reach the server at {self._client.base_url}: {exc}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ConfigurationError(f"server refused {path}: {response.status_code} {detail}")
        return response.json()

    async def seed_creator(self, handle: str, display_name: str) -> str:
        body = await self._call(
            "POST", "/v1/admin/seed/creators", {"handle": handle, "display_name": display_name}
        )
        return str(body["creator_id"])

    async def seed_followers(
        self,
        creator_id: str,
        count: int,
        *,
        start: int = 0,
        batch: int = CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        added, done = 0, 0
        while done < count:
            size = min(batch, count - done)
            body = await self._call(
                "POST",
                "/v1/admin/seed/followers",
                {"creator_id": creator_id, "start": start + done, "count": size},
            )
            added += int(body["added"])
            done += size
            if progress is not None:
                progress(done)
        return added

    async def audit(self, drop_id: str) -> dict[str, Any]:
        report: dict[str, Any] = await self._call("GET", f"/v1/admin/drops/{drop_id}/audit")
        return report

    async def reconcile(
        self, drop_ids: list[str] | None, *, only_missing: bool
    ) -> list[dict[str, Any]]:
        rebuilt: list[dict[str, Any]] = await self._call(
            "POST", "/v1/admin/reconcile", {"drop_ids": drop_ids, "only_missing": only_missing}
        )
        return rebuilt


@asynccontextmanager
async def admin_session(settings: Settings, url: str | None) -> AsyncIterator[Admin]:
    """A RemoteAdmin when a server URL is known, else a LocalAdmin on freshly opened backends."""
    if url is not None:
        token = TokenIssuer(settings.signing_secret(), 3600).issue("cli-admin", Role.ADMIN)
        remote = RemoteAdmin(url, token)
        try:
            yield remote
        finally:
            await remote.close()
        return
    from dropsim.app import MIGRATIONS, build_services
    from dropsim.backends import Backends

    backends = await Backends.open(settings)
    try:
        await backends.db.migrate(MIGRATIONS)
        yield LocalAdmin(build_services(settings, backends))
    finally:
        await backends.close()
