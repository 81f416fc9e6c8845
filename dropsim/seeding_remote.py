"""Seeding through a running server's admin routes, for when its backends live in its memory."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from dropsim.errors import ConfigurationError

CHUNK = 50_000


class RemoteSeeder:
    """The `Seeder` interface, over HTTP, in chunks so a progress bar can follow."""

    def __init__(self, url: str, admin_token: str, *, timeout: float = 300.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=timeout
        )

    async def __aenter__(self) -> RemoteSeeder:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ConfigurationError(f"cannot reach the server at {self._client.base_url}: {exc}")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ConfigurationError(f"server refused {path}: {response.status_code} {detail}")
        result: dict[str, object] = response.json()
        return result

    async def seed_creator(self, handle: str, display_name: str) -> str:
        body = await self._post(
            "/v1/admin/seed/creators", {"handle": handle, "display_name": display_name}
        )
        return str(body["creator_id"])

    async def seed_followers(
        self, creator_id: str, count: int, *, start: int = 0, batch: int = CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        added, done = 0, 0
        while done < count:
            size = min(batch, count - done)
            body = await self._post(
                "/v1/admin/seed/followers",
                {"creator_id": creator_id, "start": start + done, "count": size},
            )
            added += int(str(body["added"]))
            done += size
            if progress is not None:
                progress(done)
        return added
