"""A simulated external payment provider: its own small Litestar app, served on loopback.

It speaks the API `PaymentService` expects from any provider:

    POST /v1/charges        Idempotency-Key required; 202 {id, status: "pending", ...}; the same
                            key again returns the same charge (never a second one)
    GET  /v1/charges/{id}
    POST /v1/refunds        {charge_id}; 200; refunding a refunded charge returns the same refund
    PUT  /v1/simulation/behaviour   simulator control, not a provider API: change the fault knobs
                            (failure rate, latency, lost callbacks) for charges made from now on

and later POSTs signed events (`Dropsim-Signature`, see `signing`) to each charge's callback_url:
`{id: "evt_...", type: "charge.succeeded" | "charge.failed" | "charge.pending" |
"charge.refunded", created, data: {charge_id, reference, amount_cents, currency, metadata,
failure_reason?}}`, retried with back-off on non-2xx like real webhooks. Faults (latency, declines,
duplicate, stale and lost callbacks, lost responses) are drawn from one seeded generator per
charge at creation, so a seed replays the same faults for the same sequence of charges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Self

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from dropsim.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from dropsim.gateway.problems import EXCEPTION_HANDLERS, problem
from dropsim.ids import new_id
from dropsim.payments.signing import SIGNATURE_HEADER, sign
from dropsim.payments.transport import HttpPoster, NoAnswer, PooledPoster
from dropsim.serving import KEEP_ALIVE_SECONDS

if TYPE_CHECKING:
    from litestar.types import ASGIApp

    from dropsim.settings import Settings

logger = logging.getLogger("dropsim.payments.provider")

_Z99 = 2.3263478740408408
"""The standard normal's 99th percentile: p99 = median * exp(z99 * sigma) for a lognormal."""
DECLINE_REASONS = ("card_declined", "insufficient_funds", "expired_card", "processing_error")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How the simulated provider behaves."""

    signing_secret: str = field(repr=False)
    """Secret its callbacks are signed with (the payment service verifies with the same)."""
    latency_median_ms: float = 150.0
    """Median time from charge request to its outcome callback."""
    latency_p99_ms: float = 1200.0
    """99th percentile of that time; latency is lognormal through median and p99."""
    failure_rate: float = 0.05
    """Fraction of charges declined (`charge.failed` with a `failure_reason`)."""
    duplicate_rate: float = 0.05
    """Fraction of outcome callbacks delivered twice (same event id, nearly at once)."""
    out_of_order_rate: float = 0.02
    """Fraction of charges followed, after their outcome, by a stale `charge.pending` event."""
    callback_loss_rate: float = 0.0
    """Fraction of charges never called back at all: this is what makes payment timeouts."""
    lost_response_rate: float = 0.0
    """Fraction of new charges answered 503 although the charge was made (a response lost on
    the way back): a retry with the same Idempotency-Key must get that charge, not a new one."""
    seed: int | None = None
    """Seed of the fault generator; None draws a fresh one."""
    callback_attempts: int = 5
    """Deliveries tried per event before giving up (a non-2xx answer or no answer fails one)."""
    callback_backoff_seconds: float = 0.25
    """Wait before the second delivery; doubled (with jitter) before each further one."""
    callback_timeout_seconds: float = 5.0
    """How long one delivery waits for the receiver's answer."""

    def __post_init__(self) -> None:
        for name in (
            "failure_rate",
            "duplicate_rate",
            "out_of_order_rate",
            "callback_loss_rate",
            "lost_response_rate",
        ):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if not 0 < self.latency_median_ms <= self.latency_p99_ms:
            raise ValueError("need 0 < latency_median_ms <= latency_p99_ms")
        if self.callback_attempts < 1:
            raise ValueError("callback_attempts must be at least 1")


def provider_config(settings: Settings, *, seed: int | None = None) -> ProviderConfig:
    """The provider configuration the settings describe (for `payment_provider_url=embedded`)."""
    return ProviderConfig(
        signing_secret=settings.payment_secret(),
        latency_median_ms=settings.provider_latency_median_ms,
        latency_p99_ms=settings.provider_latency_p99_ms,
        failure_rate=settings.provider_failure_rate,
        duplicate_rate=settings.provider_duplicate_rate,
        out_of_order_rate=settings.provider_out_of_order_rate,
        callback_loss_rate=settings.provider_callback_loss_rate,
        seed=seed,
    )


# wire formats
Cents = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{3}$")]
CallbackUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2000)]


class NewCharge(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: Cents
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    callback_url: CallbackUrl
    currency: Currency = "usd"
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class NewRefund(msgspec.Struct, forbid_unknown_fields=True):
    charge_id: str


Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Millis = Annotated[float, msgspec.Meta(gt=0)]


class BehaviourChange(msgspec.Struct, forbid_unknown_fields=True):
    """New values for some of the fault knobs (absent ones stay as they are)."""

    failure_rate: Rate | None = None
    latency_median_ms: Millis | None = None
    latency_p99_ms: Millis | None = None
    callback_loss_rate: Rate | None = None


class BehaviourView(msgspec.Struct):
    failure_rate: float
    latency_median_ms: float
    latency_p99_ms: float
    callback_loss_rate: float


class ChargeView(msgspec.Struct, omit_defaults=True):
    id: str
    status: str
    """`pending`, then `succeeded` or `failed`; `refunded` after a refund."""
    amount_cents: int
    currency: str
    reference: str
    metadata: dict[str, str]
    created: int
    failure_reason: str | None = None
    refund_id: str | None = None


class RefundView(msgspec.Struct):
    id: str
    charge_id: str
    status: str = "succeeded"


class EventData(msgspec.Struct, omit_defaults=True):
    charge_id: str
    reference: str
    amount_cents: int
    currency: str
    metadata: dict[str, str]
    failure_reason: str | None = None


class ProviderEvent(msgspec.Struct):
    """A callback body as the provider sends it."""

    id: str
    type: str
    created: int
    data: EventData


@dataclass(frozen=True, slots=True)
class _Plan:
    """The faults drawn for one charge when it is made."""

    latency: float
    declined: str | None
    lost: bool
    duplicate: bool
    stale_after: bool
    lose_response: bool


@dataclass(slots=True)
class _Charge:
    id: str
    idempotency_key: str
    request: bytes
    """The creating request, encoded: a reuse of the key with another body is refused."""
    body: NewCharge
    created: int
    plan: _Plan
    status: str = "pending"
    failure_reason: str | None = None
    refund_id: str | None = None

    def view(self) -> ChargeView:
        return ChargeView(
            id=self.id,
            status=self.status,
            amount_cents=self.body.amount_cents,
            currency=self.body.currency,
            reference=self.body.reference,
            metadata=self.body.metadata,
            created=self.created,
            failure_reason=self.failure_reason,
            refund_id=self.refund_id,
        )


@dataclass(slots=True)
class SimulatedProvider:
    """The provider's state and behaviour (in memory; one per provider app)."""

    config: ProviderConfig
    http: HttpPoster | None = None
    charges: dict[str, _Charge] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    deliveries: int = 0
    """Callback delivery attempts made so far (for tests and curiosity)."""
    _random: random.Random = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _owns_http: bool = False

    def __post_init__(self) -> None:
        self._random = random.Random(self.config.seed)

    async def open(self) -> None:
        if self.http is None:
            self.http = PooledPoster(self.config.callback_timeout_seconds)
            self._owns_http = True

    async def close(self) -> None:
        """Stop every pending callback, then release the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_http and self.http is not None:
            await self.http.close()
            self.http = None

    # charges
    def create_charge(self, key: str, body: NewCharge) -> tuple[_Charge, bool]:
        """The charge for `key`: (made now, True), or (the earlier one, False)."""
        request = msgspec.json.encode(body)
        existing = self.by_key.get(key)
        if existing is not None:
            charge = self.charges[existing]
            if charge.request != request:
                raise Unprocessable(
                    "this Idempotency-Key was used with a different request",
                    code="idempotency_key_reused",
                )
            return charge, False
        charge = _Charge(
            id=new_id("ch"),
            idempotency_key=key,
            request=request,
            body=body,
            created=int(time.time()),
            plan=self._draw_plan(),
        )
        self.charges[charge.id] = charge
        self.by_key[key] = charge.id
        self._spawn(self._conclude(charge))
        return charge, True

    def charge(self, charge_id: str) -> _Charge:
        found = self.charges.get(charge_id)
        if found is None:
            raise NotFound(f"no charge {charge_id}", code="charge_not_found")
        return found

    def refund(self, charge_id: str) -> RefundView:
        """Refund a succeeded charge (again: the same refund); a `charge.refunded` event follows."""
        charge = self.charge(charge_id)
        if charge.refund_id is not None:
            return RefundView(id=charge.refund_id, charge_id=charge.id)
        if charge.status != "succeeded":
            raise Conflict(
                f"charge {charge_id} is {charge.status}: only a succeeded charge can be refunded",
                code="charge_not_refundable",
            )
        charge.refund_id = new_id("re")
        charge.status = "refunded"
        self._spawn(self._announce_refund(charge))
        return RefundView(id=charge.refund_id, charge_id=charge.id)

    def change_behaviour(self, change: BehaviourChange) -> BehaviourView:
        """Apply new fault knobs to charges made from now on (a simulated outage or recovery)."""
        values = {
            name: value
            for name, value in msgspec.structs.asdict(change).items()
            if value is not None
        }
        try:
            self.config = replace(self.config, **values)
        except ValueError as exc:
            raise Unprocessable(str(exc), code="invalid_behaviour") from None
        return self.behaviour()

    def behaviour(self) -> BehaviourView:
        config = self.config
        return BehaviourView(
            failure_rate=config.failure_rate,
            latency_median_ms=config.latency_median_ms,
            latency_p99_ms=config.latency_p99_ms,
            callback_loss_rate=config.callback_loss_rate,
        )

    def sample_latency(self) -> float:
        """One draw of the latency distribution, in seconds."""
        median = self.config.latency_median_ms / 1000
        sigma = math.log(self.config.latency_p99_ms / self.config.latency_median_ms) / _Z99
        return self._random.lognormvariate(math.log(median), sigma)

    def _draw_plan(self) -> _Plan:
        chance = self._random.random
        config = self.config
        return _Plan(
            latency=self.sample_latency(),
            declined=(
                self._random.choice(DECLINE_REASONS) if chance() < config.failure_rate else None
            ),
            lost=chance() < config.callback_loss_rate,
            duplicate=chance() < config.duplicate_rate,
            stale_after=chance() < config.out_of_order_rate,
            lose_response=chance() < config.lost_response_rate,
        )

    # callbacks
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _conclude(self, charge: _Charge) -> None:
        plan = charge.plan
        await asyncio.sleep(plan.latency)
        if plan.declined is not None:
            charge.status, charge.failure_reason = "failed", plan.declined
        else:
            charge.status = "succeeded"
        if plan.lost:
            return
        url = charge.body.callback_url
        outcome = self._event(charge, f"charge.{charge.status}", failure=plan.declined)
        if plan.duplicate:
            # the copy races the original, as a redelivery after a lost acknowledgement would
            copy_delay = self._random.uniform(0.0, 0.02)
            await asyncio.gather(
                self._deliver(url, outcome), self._deliver(url, outcome, delay=copy_delay)
            )
        else:
            await self._deliver(url, outcome)
        if plan.stale_after:
            stale = self._event(charge, "charge.pending", created=charge.created)
            await self._deliver(url, stale)

    async def _announce_refund(self, charge: _Charge) -> None:
        await asyncio.sleep(self.sample_latency())
        await self._deliver(charge.body.callback_url, self._event(charge, "charge.refunded"))

    def _event(
        self,
        charge: _Charge,
        kind: str,
        *,
        failure: str | None = None,
        created: int | None = None,
    ) -> bytes:
        body = charge.body
        return msgspec.json.encode(
            ProviderEvent(
                id=new_id("evt"),
                type=kind,
                created=created or int(time.time()),
                data=EventData(
                    charge_id=charge.id,
                    reference=body.reference,
                    amount_cents=body.amount_cents,
                    currency=body.currency,
                    metadata=body.metadata,
                    failure_reason=failure,
                ),
            )
        )

    async def _deliver(self, url: str, event: bytes, *, delay: float = 0.0) -> bool:
        """POST `event` until the receiver answers 2xx or the attempts run out (each attempt
        signed afresh, so a late retry is not refused as stale)."""
        assert self.http is not None, "SimulatedProvider.open() was not awaited"
        if delay:
            await asyncio.sleep(delay)
        backoff = self.config.callback_backoff_seconds
        for attempt in range(self.config.callback_attempts):
            if attempt:
                await asyncio.sleep(backoff * (0.5 + self._random.random()))
                backoff *= 2
            self.deliveries += 1
            headers = {
                SIGNATURE_HEADER: sign(self.config.signing_secret, event, time.time()),
                "Content-Type": "application/json",
            }
            try:
                response = await self.http.post(url, event, headers)
            except NoAnswer as exc:
                logger.debug("callback to %s failed: %s", url, exc)
                continue
            if response.is_success:
                return True
            logger.debug("callback to %s answered %s", url, response.status)
        logger.warning(
            "gave up delivering an event to %s after %d attempts",
            url,
            self.config.callback_attempts,
        )
        return False


# routes
Provider = NamedDependency[SimulatedProvider]


@post("/v1/charges", status_code=202)
async def create_charge(
    request: Request[Any, Any, State], data: JSONBody[NewCharge], provider: Provider
) -> Response[Any]:
    key = request.headers.get("idempotency-key")
    if not key or len(key) > 255:
        raise InvalidRequest(
            "send an Idempotency-Key header (at most 255 characters)",
            code="idempotency_key_missing",
        )
    charge, made = provider.create_charge(key, data)
    if made and charge.plan.lose_response:
        return problem(503, "unavailable", "the response was lost (simulated)")
    headers = {} if made else {"Idempotent-Replayed": "true"}
    return Response(charge.view(), status_code=202, headers=headers)


@get("/v1/charges/{charge_id:str}")
async def show_charge(charge_id: FromPath[str], provider: Provider) -> ChargeView:
    return provider.charge(charge_id).view()


@post("/v1/refunds", status_code=200)
async def create_refund(data: JSONBody[NewRefund], provider: Provider) -> RefundView:
    return provider.refund(data.charge_id)


@put("/v1/simulation/behaviour")
async def change_behaviour(data: JSONBody[BehaviourChange], provider: Provider) -> BehaviourView:
    """Simulator control (not part of a real provider's API): faults for charges made from now."""
    return provider.change_behaviour(data)


def create_provider_app(config: ProviderConfig, *, http: HttpPoster | None = None) -> Litestar:
    """The provider as an ASGI app; its state is `app.state.provider` (a SimulatedProvider).

    `http` sends the callbacks (default: a client of its own, closed on shutdown).
    """
    provider = SimulatedProvider(config, http=http)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await provider.open()
        try:
            yield
        finally:
            await provider.close()

    return Litestar(
        route_handlers=[create_charge, show_charge, create_refund, change_behaviour],
        dependencies={"provider": Provide(lambda: provider, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State({"provider": provider}),
        openapi_config=None,
        debug=False,
    )


# serving on loopback inside the current event loop
class _HostedServer(uvicorn.Server):
    """uvicorn without signal handling: the host process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackServer:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in an asyncio task of the running loop.

    `await start()` returns once it listens (`url` is then set); `await stop()` shuts it down
    gracefully (lifespan shutdown included). Also an async context manager.
    """

    def __init__(self, app: ASGIApp | Litestar, *, port: int = 0) -> None:
        self.app = app
        self._server = _HostedServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_config=None,
                log_level=None,
                access_log=False,
                timeout_graceful_shutdown=2,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (after `start`)."""
        if self._url is None:
            raise RuntimeError("the server has not started")
        return self._url

    async def start(self, ready_within: float = 10.0) -> None:
        if self._task is not None:
            raise RuntimeError("the server was started already")
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        deadline = time.monotonic() + ready_within
        while not self._server.started:
            if self._task.done():
                error = self._task.exception()
                raise RuntimeError(f"the loopback server did not start: {error!r}")
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"the loopback server did not start within {ready_within} s")
            await asyncio.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self._url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Stop listening, finish open requests (at most a couple of seconds), run shutdown."""
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        try:
            await task
        except (Exception, SystemExit) as exc:  # uvicorn exits when its lifespan fails
            logger.warning("loopback server ended with %r", exc)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


class EmbeddedProvider(LoopbackServer):
    """The simulated provider on a free loopback port, for `payment_provider_url=embedded`.

    provider = EmbeddedProvider(provider_config(settings))
    await provider.start()      # provider.url is now http://127.0.0.1:<port>
    ...
    await provider.stop()
    """

    def __init__(self, config: ProviderConfig, *, port: int = 0) -> None:
        app = create_provider_app(config)
        super().__init__(app, port=port)
        self.provider: SimulatedProvider = app.state.provider
