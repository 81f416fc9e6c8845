"""The simulated crowd as Locust users: buyers, watchers, viewers, followers and bots.

Imported only inside Locust processes (gevent). Every measurement goes to the process's
`Recorder`; Locust's own statistics still follow each request, for its web UI.
"""

from __future__ import annotations

import http.client
import random
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, constant, task
from locust.exception import StopUser

from dropsim.sim.recording import Outcome, Recorder, classify
from dropsim.sim.sse import EventParser
from dropsim.sim.world import World, claim_slot

ORDER_FINAL = frozenset({"confirmed", "failed", "expired"})
ORDER_POLL_S = 0.5
MAX_ATTEMPTS = 20


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _code(response: Any) -> str | None:
    try:
        body = response.json()
    except Exception:  # no body, HTML, a reset: there is no code
        return None
    return body.get("code") if isinstance(body, dict) else None


class SimUser(FastHttpUser):
    """Shared plumbing: the world, the recorder, one timed request."""

    abstract = True
    network_timeout = 10.0
    connection_timeout = 5.0
    world: ClassVar[World]
    recorder: ClassVar[Recorder]
    cast: ClassVar[str] = ""

    def claim(self, tokens: list[str]) -> tuple[int, str]:
        """This user's slot in its cast, unique across processes; stop if the cast is full."""
        slot = claim_slot_path(self.world, self.cast)
        if slot >= len(tokens):
            raise StopUser()
        return slot, tokens[slot]

    def call(
        self,
        method: str,
        path: str,
        endpoint: str,
        token: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        since: float | None = None,
        optional: bool = False,
    ) -> tuple[int, Any]:
        """One request, recorded under `endpoint`; latency counts from `since` when given (the
        planned start), else from when it was sent. An `optional` route answering 404 is absent
        from this server: not recorded (the caller says so in a note).

        Returns (status, response)."""
        sent = time.time()
        with self.client.request(
            method,
            path,
            json=json,
            headers={**bearer(token), **(headers or {})},
            name=endpoint,
            catch_response=True,
        ) as response:
            done = time.time()
            status = response.status_code or 0
            code = _code(response) if status >= 400 else None
            if optional and status == 404:
                response.success()
                return status, response
            outcome = classify(status, code)
            start = sent if since is None else since
            self.recorder.request(endpoint, start, done - start, outcome)
            if outcome is Outcome.FAILED:
                response.failure(f"{status} {code or ''}".strip())
            else:
                response.success()
            return status, response


def claim_slot_path(world: World, cast: str) -> int:
    return claim_slot(Path(world.claims_dir), cast)


class Buyer(SimUser):
    """Waits for go-live, orders once at its planned arrival (retrying a timeout with the same
    key), then follows the order until it is confirmed, failed or expired."""

    cast = "buyers"
    wait_time = constant(0)

    @task
    def rush(self) -> None:
        world = self.world
        slot, token = self.claim(world.buyers.tokens)
        planned = world.go_live_at + world.arrivals_s[slot]
        gevent.sleep(max(planned - time.time(), 0))
        self.recorder.arrival(time.time() - planned, world.late_arrival_s)
        key = str(uuid.uuid4())
        path = f"/v1/drops/{world.drop_id}/orders"
        body = {"quantity": world.quantity}
        status, response = self._order(path, token, key, body, planned)
        if status == 201 and random.random() < world.replay_rate:
            self.call(
                "POST", path, "order_replay", token, json=body, headers={"Idempotency-Key": key}
            )
        if status == 201:
            self._follow(response.json()["id"], token, planned)
        elif status == 429:
            self.recorder.order_outcome("rate_limited")
        elif status in (0,) or status >= 500:
            self.recorder.order_outcome("error")
        else:
            self.recorder.order_outcome(_code(response) or f"http_{status}")
        raise StopUser()

    def _order(
        self, path: str, token: str, key: str, body: dict[str, int], planned: float
    ) -> tuple[int, Any]:
        status, response = 0, None
        for _ in range(MAX_ATTEMPTS):
            # each attempt is timed from the planned start: a retry is what the buyer waits for
            status, response = self.call(
                "POST",
                path,
                "order",
                token,
                json=body,
                headers={"Idempotency-Key": key},
                since=planned,
            )
            if status == 0 or status >= 500:
                continue  # a timeout or reset: retry with the same key, it cannot buy twice
            if status == 409 and _code(response) == "idempotency_key_in_flight":
                gevent.sleep(0.2)
                continue
            break
        return status, response

    def _follow(self, order_id: str, token: str, planned: float) -> None:
        deadline = time.time() + self.world.order_timeout_s
        while time.time() < deadline:
            status, response = self.call("GET", f"/v1/orders/{order_id}", "order_status", token)
            if status == 200:
                state = response.json()["status"]
                if state in ORDER_FINAL:
                    self.recorder.order_outcome(state)
                    if state == "confirmed":
                        self.recorder.request(
                            "order_confirmed", planned, time.time() - planned, Outcome.OK
                        )
                    return
            gevent.sleep(ORDER_POLL_S)
        self.recorder.order_outcome("unresolved")


class Watcher(SimUser):
    """Holds an SSE stream (drop alerts, stock, its own orders) and records, for each event,
    receive time minus publish time."""

    cast = "watchers"
    wait_time = constant(0)

    @task
    def watch(self) -> None:
        world = self.world
        _, token = self.claim(world.watchers.tokens)
        status, response = self.call(
            "POST", "/v1/stream/tickets", "stream_ticket", token, optional=True
        )
        if status == 404:
            self.recorder.note("watchers: /v1/stream is not available on this server")
            raise StopUser()
        if status != 201:
            raise StopUser()
        ticket = response.json()["ticket"]
        self._listen(f"/v1/stream?ticket={ticket}&drops={world.drop_id}")
        raise StopUser()

    def _listen(self, path: str) -> None:
        target = urlsplit(self.world.url)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
        try:
            # "stream" times the connection: request sent -> response headers received
            opened = time.time()
            connection.request("GET", path, headers={"Accept": "text/event-stream"})
            response = connection.getresponse()
            outcome = Outcome.OK if response.status == 200 else classify(response.status)
            self.recorder.request("stream", opened, time.time() - opened, outcome)
            if response.status != 200:
                return
            parser = EventParser()
            while time.time() < self.world.ends_at:
                line = response.readline()
                if not line:
                    return
                event = parser.feed(line.decode().rstrip("\r\n"))
                if event is None:
                    continue
                published = event.published_at()
                if published is not None:
                    self.recorder.fanout_lag(event.type, time.time() - published)
        finally:
            connection.close()


class Viewer(SimUser):
    """Refreshes the composed drop page (the plain drop when the server has no composition)."""

    cast = "viewers"
    composed = True

    def wait_time(self) -> float:
        return self.world.viewers.interval_s

    def on_start(self) -> None:
        _, self.token = self.claim(self.world.viewers.tokens)

    @task
    def view(self) -> None:
        drop = self.world.drop_id
        if self.composed:
            status, _ = self.call(
                "GET", f"/v1/drops/{drop}/page", "drop_page", self.token, optional=True
            )
            if status != 404:
                return
            self.composed = False
            self.recorder.note(
                "viewers: /v1/drops/{id}/page is not available on this server; "
                "viewers read /v1/drops/{id} instead"
            )
        self.call("GET", f"/v1/drops/{drop}", "drop", self.token)


class Follower(SimUser):
    """Unfollows and follows the celebrity again."""

    cast = "followers"

    def wait_time(self) -> float:
        return self.world.followers.interval_s

    def on_start(self) -> None:
        _, self.token = self.claim(self.world.followers.tokens)

    @task
    def toggle(self) -> None:
        path = f"/v1/me/following/{self.world.creator_id}"
        self.call("DELETE", path, "unfollow", self.token)
        self.call("PUT", path, "follow", self.token)


class Bot(SimUser):
    """Hammers the order route with fresh keys from before go-live (a scripted scalper)."""

    cast = "bots"

    def wait_time(self) -> float:
        return self.world.bots.interval_s

    def on_start(self) -> None:
        _, self.token = self.claim(self.world.bots.tokens)

    @task
    def hammer(self) -> None:
        path = f"/v1/drops/{self.world.drop_id}/orders"
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        self.call("POST", path, "bot_order", self.token, json={"quantity": 1}, headers=headers)
