"""The web client end to end in headless Chromium against a real server: log in, follow, the
go-live alert, buy and the confirmation; orders interrupted offline or by a lost answer are sent
again with the same Idempotency-Key and placed once; a reload with no network renders the drops
kept in IndexedDB; the stream reconnects with a fresh ticket and resumes after its last event."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_creator, make_drop, sign_up
from tests.browser import PHONE, chromium, console_errors, require_chromium

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page, Request, Response, Route

WEB_SETTINGS: dict[str, Any] = {
    "provider_latency_median_ms": 20,
    "provider_latency_p99_ms": 100,
    "provider_failure_rate": 0.0,
    "provider_duplicate_rate": 0.0,
    "provider_out_of_order_rate": 0.0,
    "stock_update_seconds": 0.25,
}
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def server(shared_backend_settings: Settings) -> Iterator[ServerProcess]:
    require_chromium()  # before starting a server for nothing
    with ServerProcess(shared_backend_settings.model_copy(update=WEB_SETTINGS)) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def context() -> AsyncIterator[BrowserContext]:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    async with chromium() as browser:
        browser_context = await browser.new_context(viewport=PHONE)
        browser_context.set_default_timeout(WAIT_MS)
        yield browser_context
        await browser_context.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def buyer(client: httpx.AsyncClient) -> tuple[str, str]:
    """A buyer signed up over the API: (handle, token); the browser logs in as them."""
    handle = unique("fan")
    _, token = await sign_up(client, handle)
    return handle, token


async def open_client(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(url)
    await page.wait_for_selector("body[data-ready=true]")
    return page, errors


async def log_in(page: Page, handle: str) -> None:
    form = page.locator("#log-in-form")
    await form.get_by_label("Email").fill(f"{handle}@example.com")
    await form.get_by_label("Password").fill("correct horse")
    await form.get_by_role("button", name="Log in", exact=True).click()
    await page.wait_for_selector("#signed-in:not([hidden])")


async def my_orders(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/me/orders", headers=bearer(token))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def start_soon(
    client: httpx.AsyncClient, token: str, drop: dict[str, Any], seconds: float
) -> None:
    starts_at = datetime.now(UTC) + timedelta(seconds=seconds)
    response = await client.patch(
        f"/v1/drops/{drop['id']}",
        json={"starts_at": starts_at.isoformat()},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text


def order_requests(page: Page) -> list[str | None]:
    """The Idempotency-Key of every order the page sends (kept up to date)."""
    keys: list[str | None] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/orders"):
            keys.append(request.headers.get("idempotency-key"))

    page.on("request", record)
    return keys


async def test_a_fan_logs_in_follows_gets_the_go_live_alert_buys_and_sees_it_confirmed(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    creator_id, creator = await make_creator(client, unique("maker"))
    drop = await make_drop(client, creator, starts_in=3600, stock=3, product_name="Aurora Jacket")
    handle, token = await buyer(client)
    page, errors = await open_client(context, server.url)
    await log_in(page, handle)

    card = page.locator(f"#drops li[data-drop-id='{drop['id']}']")
    await expect(card.locator(".product")).to_have_text("Aurora Jacket")
    await expect(card.locator(".countdown")).to_have_text(
        re.compile(r"^Starts in (59:\d\d|1:00:00)$")
    )
    await expect(card.get_by_role("button")).to_be_disabled()

    follow = page.locator(f"#creators li[data-creator-id='{creator_id}'] button")
    await follow.click()
    await expect(follow).to_have_attribute("aria-pressed", "true")
    await start_soon(client, creator, drop, 1.0)

    await expect(page.locator("#alert")).to_have_text(
        re.compile(r"Aurora Jacket by .+ is live now")
    )
    await expect(page.locator("#inbox li[data-type='drop.went_live']")).to_have_count(1)
    await expect(card.locator(".badge")).to_have_text("Live")

    await card.get_by_role("button", name=re.compile("^Buy")).click()
    placed = page.locator("#orders li[data-order-id]")
    await expect(placed).to_have_attribute("data-status", "confirmed")
    await expect(page.locator("#inbox li[data-type='order.confirmed']")).to_have_count(1)
    await expect(card.locator(".stock")).to_have_text("2 of 3 left")
    await expect(card.get_by_role("button")).to_have_text("Limit reached")

    [order] = await my_orders(client, token)
    assert order["status"] == "confirmed"
    assert order["id"] == await placed.get_attribute("data-order-id")

    # the crowd takes the rest: the page shows it sold out from the stream
    others = [(await buyer(client))[1] for _ in range(2)]
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/drops/{drop['id']}/orders",
                headers={**bearer(other), "Idempotency-Key": str(uuid.uuid4())},
            )
            for other in others
        )
    )
    assert [response.status_code for response in responses] == [201, 201]
    await expect(card.locator(".badge")).to_have_text("Sold out")
    await expect(card.locator(".stock")).to_have_text("0 of 3 left")

    await follow.click()
    await expect(follow).to_have_attribute("aria-pressed", "false")
    following = await client.get("/v1/me/following", headers=bearer(token))
    assert following.json()["items"] == []
    # readable on a phone: nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert errors == []


async def test_an_order_started_offline_is_sent_with_its_key_when_back_online_and_placed_once(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    _, creator = await make_creator(client, unique("maker"))
    # two per buyer: a resend under a new key would be a second, accepted order
    drop = await make_drop(client, creator, starts_in=0.5, stock=5, per_user_limit=2)
    handle, token = await buyer(client)
    page, errors = await open_client(context, server.url)
    await log_in(page, handle)
    card = page.locator(f"#drops li[data-drop-id='{drop['id']}']")
    await expect(card.locator(".badge")).to_have_text("Live")
    sent = order_requests(page)

    await context.set_offline(True)
    await card.get_by_role("button", name=re.compile("^Buy")).click()
    waiting = page.locator("#orders li[data-status=pending]")
    await expect(waiting.locator(".meta")).to_contain_text("will retry with the same key")
    key = await waiting.get_attribute("data-idempotency-key")
    assert key
    await expect(card.get_by_role("button")).to_be_disabled()  # no second order meanwhile
    assert await my_orders(client, token) == []

    await context.set_offline(False)
    placed = page.locator("#orders li[data-order-id]")
    await expect(placed).to_have_attribute("data-idempotency-key", key)
    await expect(waiting).to_have_count(0)
    orders = await my_orders(client, token)
    assert [order["idempotency_key"] for order in orders] == [key]
    assert sent
    assert set(sent) == {key}
    assert errors == []


async def test_an_order_whose_answer_was_lost_is_resent_by_a_new_tab_and_placed_once(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    _, creator = await make_creator(client, unique("maker"))
    drop = await make_drop(client, creator, starts_in=0.5, stock=5, per_user_limit=2)
    handle, token = await buyer(client)
    page, _ = await open_client(context, server.url)
    await log_in(page, handle)
    card = page.locator(f"#drops li[data-drop-id='{drop['id']}']")
    await expect(card.locator(".badge")).to_have_text("Live")

    answered: list[int] = []

    async def lose_the_answer(route: Route) -> None:
        if route.request.method != "POST" or answered:
            await route.continue_()
            return
        response = await route.fetch()  # the server takes the order ...
        answered.append(response.status)
        await route.abort("connectionreset")  # ... and its answer never reaches the page

    await page.route(lambda url: url.endswith("/orders"), lose_the_answer)
    await card.get_by_role("button", name=re.compile("^Buy")).click()
    waiting = page.locator("#orders li[data-status=pending]")
    await expect(waiting.locator(".meta")).to_contain_text("will retry with the same key")
    key = await waiting.get_attribute("data-idempotency-key")
    assert answered == [201]
    [taken] = await my_orders(client, token)
    assert taken["idempotency_key"] == key

    await page.close()  # the tab is closed with the order unanswered
    second = await context.new_page()
    errors = console_errors(second)
    sent = order_requests(second)
    replayed: list[str | None] = []

    def record(response: Response) -> None:
        if response.request.method == "POST" and response.url.endswith("/orders"):
            replayed.append(response.headers.get("idempotency-replayed"))

    second.on("response", record)
    await second.goto(server.url)
    placed = second.locator(f"#orders li[data-order-id='{taken['id']}']")
    await expect(placed).to_have_attribute("data-idempotency-key", key or "")
    await expect(second.locator("#orders li[data-status=pending]")).to_have_count(0)
    assert sent == [key]
    assert replayed == ["true"]
    assert [order["id"] for order in await my_orders(client, token)] == [taken["id"]]
    assert errors == []


async def test_a_reload_with_no_network_renders_the_drops_last_seen_marked_stale(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    _, creator = await make_creator(client, unique("maker"))
    drop = await make_drop(client, creator, starts_in=3600, product_name="Offline Tee")
    handle, _ = await buyer(client)
    page, errors = await open_client(context, server.url)
    await log_in(page, handle)
    card = page.locator(f"#drops li[data-drop-id='{drop['id']}']")
    await expect(card.locator(".product")).to_have_text("Offline Tee")
    await expect(page.locator("#drops")).to_have_attribute("data-stale", "false")
    # the service worker has the page's own files once it controls the page
    await page.wait_for_function("navigator.serviceWorker.controller !== null")

    await context.set_offline(True)
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await expect(card.locator(".product")).to_have_text("Offline Tee")
    await expect(card.locator(".countdown")).to_have_text(re.compile(r"^Starts in "))
    await expect(page.locator("#drops")).to_have_attribute("data-stale", "true")
    await expect(page.locator("#drops-note")).to_contain_text("Offline")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    await expect(page.locator("#who")).to_have_text(f"@{handle}")
    assert errors == []


async def test_the_stream_reconnects_with_a_new_ticket_and_resumes_after_its_last_event(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    creator_id, creator = await make_creator(client, unique("maker"))
    first = await make_drop(client, creator, starts_in=3600, product_name="First Cap")
    handle, _ = await buyer(client)
    page, errors = await open_client(context, server.url)
    await log_in(page, handle)
    follow = page.locator(f"#creators li[data-creator-id='{creator_id}'] button")
    await follow.click()
    await expect(follow).to_have_attribute("aria-pressed", "true")
    await start_soon(client, creator, first, 0.5)
    await expect(page.locator("#alert")).to_contain_text("First Cap")
    seen = await page.evaluate("import('/store.js').then((store) => store.meta('last_event_id'))")
    assert seen

    opened: list[str] = []

    async def refuse_twice(route: Route) -> None:
        opened.append(route.request.url)
        if len(opened) <= 2:
            await route.abort("connectionrefused")  # the server is away for two attempts
        else:
            await route.continue_()

    await page.route(lambda url: "/v1/stream?" in url, refuse_twice)
    await context.set_offline(True)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    second = await make_drop(client, creator, starts_in=0.5, product_name="Second Cap")
    # it goes live while the page is cut off
    await asyncio.sleep(datetime.fromisoformat(second["starts_at"]).timestamp() - time.time() + 0.3)
    await context.set_offline(False)

    await expect(page.locator("#alert")).to_contain_text("Second Cap")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert len(opened) >= 3
    queries = [httpx.URL(url).params for url in opened]
    tickets = [query["ticket"] for query in queries]
    assert len(set(tickets)) == len(tickets)  # a spent ticket is never offered again
    assert queries[0]["last_event_id"] == seen
    assert all(query.get("last_event_id") for query in queries)
    assert errors == []


async def test_a_rate_limited_order_waits_for_retry_after_and_keeps_its_key(
    client: httpx.AsyncClient, context: BrowserContext, server: ServerProcess
) -> None:
    from playwright.async_api import expect

    _, creator = await make_creator(client, unique("maker"))
    drop = await make_drop(client, creator, starts_in=0.5, stock=5, per_user_limit=2)
    handle, token = await buyer(client)
    page, errors = await open_client(context, server.url)
    await log_in(page, handle)
    card = page.locator(f"#drops li[data-drop-id='{drop['id']}']")
    await expect(card.locator(".badge")).to_have_text("Live")

    attempts: list[tuple[float, str | None]] = []

    async def limit_once(route: Route) -> None:
        attempts.append((time.monotonic(), route.request.headers.get("idempotency-key")))
        if route.request.method == "POST" and len(attempts) == 1:
            await route.fulfill(
                status=429,
                headers={"Retry-After": "1", "Content-Type": "application/problem+json"},
                body='{"status": 429, "code": "rate_limited", "detail": "slow down"}',
            )
        else:
            await route.continue_()

    await page.route(lambda url: url.endswith("/orders"), limit_once)
    await card.get_by_role("button", name=re.compile("^Buy")).click()
    await expect(page.locator("#orders li[data-order-id]")).to_have_count(1)
    (first_at, first_key), (second_at, second_key) = attempts
    assert first_key == second_key
    assert second_at - first_at >= 0.9  # it waited as asked, not less
    assert [order["idempotency_key"] for order in await my_orders(client, token)] == [first_key]
    assert errors == []


async def test_client_helpers_back_off_with_jitter_read_retry_after_and_count_down(
    context: BrowserContext, server: ServerProcess
) -> None:
    page, errors = await open_client(context, server.url)
    found = await page.evaluate(
        """async () => {
            const { backoffMs } = await import("/stream.js");
            const { retryAfterMs } = await import("/api.js");
            const { countdown, shownStatus } = await import("/ui.js");
            const headers = (value) => new Headers(value === null ? {} : { "Retry-After": value });
            return {
                lowest: [0, 1, 2, 3, 10].map((n) => backoffMs(n, () => 0)),
                highest: [0, 1, 2, 3, 10].map((n) => backoffMs(n, () => 0.999999)),
                retryAfter: [
                    retryAfterMs(headers("2"), 7),
                    retryAfterMs(headers(null), 7),
                    retryAfterMs(headers("soon"), 7),
                    retryAfterMs(headers("86400"), 7),
                    retryAfterMs(headers(new Date(Date.now() + 60_000).toUTCString()), 7),
                ],
                countdowns: [countdown(65_000, 0), countdown(3_723_000, 0), countdown(0, 5_000),
                             countdown(5 * 86_400_000, 0)],
                statuses: [
                    shownStatus({ status: "live" }, { available: 0 }),
                    shownStatus({ status: "sold_out" }, { available: 1 }),
                    shownStatus({ status: "scheduled" }, undefined),
                ],
            };
        }"""
    )
    assert found["lowest"] == [250, 500, 1000, 2000, 15000]
    assert found["highest"] == [750, 1500, 3000, 6000, 45000]
    assert found["retryAfter"] == [2000, 7, 7, 30000, 30000]
    assert found["countdowns"] == ["in 1:05", "in 1:02:03", "in 0:00", "in 5 days"]
    assert found["statuses"] == ["sold_out", "live", "scheduled"]
    assert errors == []
