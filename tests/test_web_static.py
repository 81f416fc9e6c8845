"""The web client is served from the package at `/` with the right content types, needs nothing
from the internet, and its offline shell lists every module the page imports."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dropsim.testing import embedded_app
from dropsim.web import WEB_ROOT

CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "javascript"}
IMPORT = re.compile(r"""^import\s[^;]*?from\s+"\./([\w-]+\.js)";""", re.MULTILINE)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(embedded_app(tmp_path)) as test_client:
        yield test_client


def static_files() -> list[Path]:
    return sorted(path for path in WEB_ROOT.iterdir() if path.is_file())


async def test_the_page_and_every_file_are_served_with_their_content_type(
    client: AsyncTestClient[Any],
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/app.js"' in page.text
    for path in static_files():
        response = await client.get(f"/{path.name}")
        assert response.status_code == 200, path.name
        assert CONTENT_TYPES[path.suffix] in response.headers["content-type"], path.name
        assert response.content == path.read_bytes()


async def test_an_unknown_file_is_a_404(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/no-such-file.js")).status_code == 404


def test_the_client_loads_nothing_from_the_internet() -> None:
    for path in static_files():
        text = path.read_text()
        # links to the API docs are same-origin; any absolute URL would be a CDN or a font
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name
        assert not re.search(r"""(import|fetch|url)\s*\(?\s*["'](https?:)?//""", text), path.name


def test_the_offline_shell_holds_every_module_the_page_imports() -> None:
    shell = (WEB_ROOT / "sw.js").read_text()
    listed = set(re.findall(r'"/([\w-]+\.(?:js|css))"', shell.split("];")[0]))
    imported = {"app.js", "styles.css"}
    for path in WEB_ROOT.glob("*.js"):
        imported |= set(IMPORT.findall(path.read_text()))
    assert imported, "no imports found: the pattern no longer matches the modules"
    assert imported <= listed, f"not cached for offline use: {sorted(imported - listed)}"
    assert "sw.js" not in listed


class _Markup(HTMLParser):
    """Inputs, the labels that point at them, and buttons with their text."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()
        self.live_regions: list[dict[str, str | None]] = []
        self.lang: str | None = None
        self.viewport = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "html":
            self.lang = attributes.get("lang")
        if tag == "meta" and attributes.get("name") == "viewport":
            self.viewport = "width=device-width" in (attributes.get("content") or "")
        if tag == "input":
            self.inputs.append(attributes)
        if tag == "label" and attributes.get("for"):
            self.labelled.add(attributes["for"] or "")
        if attributes.get("aria-live") or attributes.get("role") in {"status", "alert"}:
            self.live_regions.append(attributes)


def test_the_page_is_labelled_for_screen_readers_and_phones() -> None:
    markup = _Markup()
    markup.feed((WEB_ROOT / "index.html").read_text())
    assert markup.lang == "en"
    assert markup.viewport
    assert markup.inputs
    unlabelled = [field for field in markup.inputs if field.get("id") not in markup.labelled]
    assert unlabelled == []
    roles = {region.get("role") for region in markup.live_regions}
    assert {"status", "alert"} <= roles
