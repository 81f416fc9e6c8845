"""create_app(settings) -> Litestar: the one place that opens backends and wires every service."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.datastructures import ResponseHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from dropsim import __version__
from dropsim.accounts import store as account_tables
from dropsim.accounts.api import accounts_router
from dropsim.accounts.service import AccountService
from dropsim.accounts.store import AccountStore
from dropsim.backends import Backends
from dropsim.background import BackgroundTask
from dropsim.cache import Cache
from dropsim.creators import store as catalog_tables
from dropsim.creators.api import creators_router
from dropsim.creators.clock import DropClock
from dropsim.creators.service import CreatorService
from dropsim.creators.store import CatalogStore
from dropsim.eventlog import EventLog
from dropsim.follows import store as follow_tables
from dropsim.follows.api import follows_router
from dropsim.follows.service import FollowService
from dropsim.gateway.auth import jwt_auth
from dropsim.gateway.composition import DropPageComposer
from dropsim.gateway.composition_api import composition_router
from dropsim.gateway.order_lane import OrderLane
from dropsim.gateway.problems import EXCEPTION_HANDLERS
from dropsim.gateway.ratelimit import RateLimitMiddleware, rate_limit_config
from dropsim.gateway.request_metrics import RequestMetricsMiddleware
from dropsim.gateway.tokens import TokenIssuer
from dropsim.health import live, ready
from dropsim.metrics_api import forget_this_worker, metrics
from dropsim.notifications.api import notifications_router
from dropsim.notifications.feed import EventFeed
from dropsim.notifications.heartbeat import Heartbeat
from dropsim.notifications.hub import Hub
from dropsim.notifications.service import NotificationService, StreamLimits
from dropsim.notifications.stock import StockUpdates
from dropsim.notifications.tickets import StreamTickets
from dropsim.orders import store as order_tables
from dropsim.orders.api import orders_router
from dropsim.orders.audit import Auditor
from dropsim.orders.idempotency import IdempotencyRecords
from dropsim.orders.inventory import Inventory
from dropsim.orders.reaper import Reaper
from dropsim.orders.reconcile import Reconciler
from dropsim.orders.service import OrderService
from dropsim.orders.stock_gauges import StockGauges
from dropsim.orders.store import OrderStore
from dropsim.payments import store as payment_tables
from dropsim.payments.api import payments_router
from dropsim.payments.handoff import PaymentQueue
from dropsim.payments.housekeeping import CallbackPruner, PaymentRecovery
from dropsim.payments.provider import EmbeddedProvider, provider_config
from dropsim.payments.service import PaymentService
from dropsim.payments.store import PaymentStore
from dropsim.ports import Migration
from dropsim.seeding import Seeder
from dropsim.seeding_api import seeding_router
from dropsim.settings import Settings, load_settings
from dropsim.web import web_router

logger = logging.getLogger("dropsim")

CALLBACK_PRUNE_INTERVAL_SECONDS = 3600.0
PAYMENT_RESETTLE_SECONDS = 3600.0
"""At start-up, payments that succeeded this recently are settled again: a refund cut short by
a crash concerns a success from just before it, and a restart comes well within the hour."""

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young-generation collections in a server process (CPython's is 700)."""
PROCESS_HEADER = "X-Dropsim-Process"

MIGRATIONS: tuple[Migration, ...] = (
    *account_tables.MIGRATIONS,
    *catalog_tables.MIGRATIONS,
    *follow_tables.MIGRATIONS,
    *order_tables.MIGRATIONS,
    *payment_tables.MIGRATIONS,
)


@dataclass(slots=True)
class Services:
    """Every service of one process, built once at start-up over the opened backends."""

    accounts: AccountService
    creators: CreatorService
    events: EventLog
    tokens: TokenIssuer
    follows: FollowService
    seeder: Seeder
    orders: OrderService
    reconciler: Reconciler
    auditor: Auditor
    payments: PaymentService
    notifications: NotificationService
    hub: Hub
    stock_updates: StockUpdates
    drop_pages: DropPageComposer

    async def close(self) -> None:
        await self.payments.close()


def build_services(
    settings: Settings, backends: Backends, *, provider_url: str | None = None
) -> Services:
    """Every service over `backends`; `provider_url` is where the payment provider listens
    (default: the settings' URL, for processes that take no orders)."""
    cache = Cache(backends.kv, ttl_seconds=settings.cache_ttl_seconds)
    events = EventLog(backends.kv, max_len=settings.event_log_max_len)
    accounts = AccountService(AccountStore(backends.db))
    creators = CreatorService(CatalogStore(backends.db), accounts, cache, events)
    tokens = TokenIssuer(settings.signing_secret(), settings.token_ttl_seconds)
    follows = FollowService(backends.db, backends.kv, creators, events)
    seeder = Seeder(accounts, creators, follows)
    order_store, inventory = OrderStore(backends.db), Inventory(backends.kv)
    reconciler = Reconciler(order_store, inventory, creators)
    orders = OrderService(
        order_store,
        inventory,
        IdempotencyRecords(backends.kv),
        creators,
        reconciler,
        events,
        hold_seconds=settings.reservation_hold_seconds,
    )
    creators.add_listener(orders)
    payments = PaymentService(
        PaymentStore(backends.db),
        events,
        provider_url=provider_url or settings.payment_provider_url,
        callback_url=f"{settings.public_url.rstrip('/')}/v1/payments/callback",
        signing_secret=settings.payment_secret(),
        timeout_seconds=settings.payment_timeout_seconds,
    )
    payments.connect_orders(orders.settle)
    # with payment workers, this process queues the orders it takes for them to charge
    orders.connect_payments(PaymentQueue(backends.kv) if settings.payment_workers else payments)
    reconciler.connect_payments(payments)
    auditor = Auditor(order_store, inventory, creators, payments)
    hub = Hub()
    stock_updates = StockUpdates(
        hub, orders.live_stock, interval_seconds=settings.stock_update_seconds
    )
    notifications = NotificationService(
        hub,
        StreamTickets(backends.kv),
        events,
        stock_updates,
        follows,
        creators,
        StreamLimits(max_connections=settings.sse_max_connections, retry_ms=settings.sse_retry_ms),
    )
    return Services(
        accounts=accounts,
        creators=creators,
        events=events,
        tokens=tokens,
        follows=follows,
        seeder=seeder,
        orders=orders,
        reconciler=reconciler,
        auditor=auditor,
        payments=payments,
        notifications=notifications,
        hub=hub,
        stock_updates=stock_updates,
        drop_pages=DropPageComposer(creators, follows, orders),
    )


def _lifespan(settings: Settings, rate_limit: RateLimitMiddleware, lane: OrderLane) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.payment_timeout_seconds > settings.reservation_hold_seconds:
            logger.warning(
                "payment_timeout_seconds (%s) exceeds reservation_hold_seconds (%s): a payment "
                "still pending when its hold lapses loses the unit, and its success is refunded",
                settings.payment_timeout_seconds,
                settings.reservation_hold_seconds,
            )
        backends = await Backends.open(settings)
        rate_limit.connect(backends.kv)
        provider: EmbeddedProvider | None = None
        try:
            await backends.db.migrate(MIGRATIONS)
            provider_url = settings.payment_provider_url
            if provider_url == "embedded":
                provider = EmbeddedProvider(provider_config(settings))
                await provider.start()
                provider_url = provider.url
            services = build_services(settings, backends, provider_url=provider_url)
            # counters missing from the KV store (always, for the embedded one after a restart)
            # are rebuilt from the SQL ledger before the first order is taken
            await services.reconciler.reconcile(only_missing=True)
            lane.connect(services.tokens, services.orders)
            clock = DropClock(services.creators, poll_seconds=settings.scheduler_poll_seconds)
            reaper = Reaper(services.orders, interval_seconds=settings.reaper_interval_seconds)
            # streams get what is published from now on; earlier events are replayed on request
            services.hub.position = await services.events.last_id()
            feed = EventFeed(services.events, services.hub, services.stock_updates)
            heartbeat = Heartbeat(services.hub, interval_seconds=settings.sse_heartbeat_seconds)
            pruner = CallbackPruner(
                services.payments,
                retention_seconds=settings.payment_callback_retention_seconds,
                interval_seconds=CALLBACK_PRUNE_INTERVAL_SECONDS,
            )
            recovery = PaymentRecovery(
                services.payments,
                resettle_seconds=PAYMENT_RESETTLE_SECONDS,
                interval_seconds=max(1.0, settings.payment_timeout_seconds / 2),
            )
            gauges = StockGauges(services.creators, services.orders)
            app.state.backends = backends
            app.state.services = services
            background: tuple[BackgroundTask, ...] = (
                clock,
                reaper,
                gauges,
                feed,
                services.stock_updates,
                heartbeat,
                pruner,
                recovery,
            )
            for task in background:
                task.start()
            try:
                yield
            finally:
                for task in reversed(background):
                    await task.stop()
                await services.close()
        finally:
            if provider is not None:
                await provider.stop()
            await backends.close()
            forget_this_worker()

    return lifespan


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def _provide_accounts(state: State) -> AccountService:
    return _services(state).accounts


def _provide_creators(state: State) -> CreatorService:
    return _services(state).creators


def _provide_follows(state: State) -> FollowService:
    return _services(state).follows


def _provide_seeder(state: State) -> Seeder:
    return _services(state).seeder


def _provide_orders(state: State) -> OrderService:
    return _services(state).orders


def _provide_reconciler(state: State) -> Reconciler:
    return _services(state).reconciler


def _provide_auditor(state: State) -> Auditor:
    return _services(state).auditor


def _provide_payments(state: State) -> PaymentService:
    return _services(state).payments


def _provide_notifications(state: State) -> NotificationService:
    return _services(state).notifications


def _provide_tokens(state: State) -> TokenIssuer:
    return _services(state).tokens


def _provide_drop_pages(state: State) -> DropPageComposer:
    return _services(state).drop_pages


DEPENDENCIES = {
    "account_service": Provide(_provide_accounts, sync_to_thread=False),
    "creator_service": Provide(_provide_creators, sync_to_thread=False),
    "token_issuer": Provide(_provide_tokens, sync_to_thread=False),
    "follow_service": Provide(_provide_follows, sync_to_thread=False),
    "seeder": Provide(_provide_seeder, sync_to_thread=False),
    "order_service": Provide(_provide_orders, sync_to_thread=False),
    "reconciler": Provide(_provide_reconciler, sync_to_thread=False),
    "auditor": Provide(_provide_auditor, sync_to_thread=False),
    "payment_service": Provide(_provide_payments, sync_to_thread=False),
    "notification_service": Provide(_provide_notifications, sync_to_thread=False),
    "drop_pages": Provide(_provide_drop_pages, sync_to_thread=False),
}


def create_app(settings: Settings | None = None) -> Litestar:
    """The whole system as one ASGI app; backends open in its lifespan."""
    settings = settings or load_settings()
    auth = jwt_auth(settings.signing_secret())
    rate_limit = RateLimitMiddleware(rate_limit_config(settings))
    process = str(os.getpid())
    lane = OrderLane(rate_limit, [(PROCESS_HEADER.lower().encode(), process.encode())])
    app = Litestar(
        route_handlers=[
            live,
            ready,
            metrics,
            accounts_router(),
            creators_router(),
            follows_router(),
            seeding_router(),
            orders_router(),
            payments_router(),
            notifications_router(),
            composition_router(),
            web_router(),
        ],
        # order: JWT auth (inserted first by on_app_init), metrics, then the rate limiter, which
        # finds the verified principal in the scope and whose 429s the metrics still count
        middleware=[RequestMetricsMiddleware(), rate_limit],
        # which server process answered (several serve one port with --workers N)
        response_headers=[ResponseHeader(name=PROCESS_HEADER, value=process)],
        dependencies=DEPENDENCIES,
        lifespan=[_lifespan(settings, rate_limit, lane)],
        exception_handlers=EXCEPTION_HANDLERS,
        on_app_init=[auth.on_app_init],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="dropsim",
            version=__version__,
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        debug=False,
    )
    if settings.order_lane:
        # orders skip the router when they can (gateway/order_lane.py); all else goes through it
        app.asgi_handler = lane.in_front_of(app.asgi_handler)
    return app


def app_from_environment() -> Litestar:
    """Factory for `uvicorn --factory` (and `dropsim serve` workers): settings from DROPSIM_*."""
    keep_collector_out_of_the_way()
    return create_app(load_settings())


def keep_collector_out_of_the_way() -> None:
    """GC settings for a server process: a full collection walks every live object, and with
    thousands of open streams that is a pause of hundreds of milliseconds in the middle of a
    broadcast. Objects made at start-up are frozen out of collection, and collections of the
    young generation run less often (request garbage is mostly freed by reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
