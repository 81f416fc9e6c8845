"""create_app(settings) -> Litestar: the one place that opens backends and wires every service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from dropsim import __version__
from dropsim.accounts import store as account_tables
from dropsim.accounts.api import accounts_router
from dropsim.accounts.service import AccountService
from dropsim.accounts.store import AccountStore
from dropsim.backends import Backends
from dropsim.cache import Cache
from dropsim.creators import store as catalog_tables
from dropsim.creators.api import creators_router
from dropsim.creators.clock import DropClock
from dropsim.creators.service import CreatorService
from dropsim.creators.store import CatalogStore
from dropsim.eventlog import EventLog
from dropsim.gateway.auth import jwt_auth
from dropsim.gateway.problems import EXCEPTION_HANDLERS
from dropsim.gateway.tokens import TokenIssuer
from dropsim.health import live, ready
from dropsim.ports import Migration
from dropsim.settings import Settings, load_settings
from dropsim.web import web_router

logger = logging.getLogger("dropsim")

MIGRATIONS: tuple[Migration, ...] = (
    *account_tables.MIGRATIONS,
    *catalog_tables.MIGRATIONS,
)


@dataclass(slots=True)
class Services:
    """Every service of one process, built once at start-up over the opened backends."""

    accounts: AccountService
    creators: CreatorService
    events: EventLog
    tokens: TokenIssuer


def build_services(settings: Settings, backends: Backends) -> Services:
    cache = Cache(backends.kv, ttl_seconds=settings.cache_ttl_seconds)
    events = EventLog(backends.kv, max_len=settings.event_log_max_len)
    accounts = AccountService(AccountStore(backends.db))
    creators = CreatorService(CatalogStore(backends.db), accounts, cache, events)
    tokens = TokenIssuer(settings.signing_secret(), settings.token_ttl_seconds)
    return Services(accounts=accounts, creators=creators, events=events, tokens=tokens)


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        backends = await Backends.open(settings)
        try:
            await backends.db.migrate(MIGRATIONS)
            services = build_services(settings, backends)
            clock = DropClock(services.creators, poll_seconds=settings.scheduler_poll_seconds)
            app.state.backends = backends
            app.state.services = services
            clock.start()
            try:
                yield
            finally:
                await clock.stop()
        finally:
            await backends.close()

    return lifespan


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def _provide_accounts(state: State) -> AccountService:
    return _services(state).accounts


def _provide_creators(state: State) -> CreatorService:
    return _services(state).creators


def _provide_tokens(state: State) -> TokenIssuer:
    return _services(state).tokens


DEPENDENCIES = {
    "account_service": Provide(_provide_accounts, sync_to_thread=False),
    "creator_service": Provide(_provide_creators, sync_to_thread=False),
    "token_issuer": Provide(_provide_tokens, sync_to_thread=False),
}


def create_app(settings: Settings | None = None) -> Litestar:
    """The whole system as one ASGI app; backends open in its lifespan."""
    settings = settings or load_settings()
    auth = jwt_auth(settings.signing_secret())
    metrics = PrometheusConfig(
        app_name="dropsim", prefix="dropsim", group_path=True, exclude=[r"^/metrics", r"^/health"]
    )
    return Litestar(
        route_handlers=[
            live,
            ready,
            PrometheusController,
            accounts_router(),
            creators_router(),
            web_router(),
        ],
        middleware=[metrics.middleware],
        dependencies=DEPENDENCIES,
        lifespan=[_lifespan(settings)],
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


def app_from_environment() -> Litestar:
    """Factory for `uvicorn --factory` (and `dropsim serve` workers): settings from DROPSIM_*."""
    return create_app(load_settings())
