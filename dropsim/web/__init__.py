"""The static web client, served at `/` (plain HTML and JavaScript modules, no build step)."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.static_files import create_static_files_router

WEB_ROOT = Path(__file__).parent / "static"


def web_router() -> Router:
    return create_static_files_router(
        path="/",
        directories=[WEB_ROOT],
        html_mode=True,
        include_in_schema=False,
        opt={"exclude_from_auth": True},
        name="web",
    )
