"""The real KV store: a Redis server over the network (redis-py's asyncio client).

Lua scripts, the hot path of every order, are pipelined down one connection (`ScriptPipe`)
rather than sent through redis-py's `execute_command`: its retry wrapper, pool checkout under a
lock, timeouts and observability hooks cost ~125 us of CPU per call here, and each call waits
for a connection of its own.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as redis_asyncio
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT, ScriptTextT

from dropsim.errors import BackendUnavailable
from dropsim.ports import KeyValueStore

REPLY_TIMEOUT_SECONDS = 10.0
"""How long a script call waits for its reply (redis-py's socket timeout is not used here)."""


class _Line:
    """One connection of a pipe, with the calls written on it and waiting for their replies."""

    __slots__ = ("closed", "connection", "reader", "waiting")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.reader: asyncio.Task[None] | None = None
        self.closed = False


class ScriptPipe:
    """One connection on which script calls are written the moment they are made and answered
    in the order they were written (Redis answers a connection's commands in order), so calls
    from concurrent requests share writes, reads and wake-ups instead of taking turns on
    connections from the pool.

    If the connection fails, every call written on it gets the error (a script that may have
    run is not sent again) and the next call opens a new connection; a reply can only ever
    reach a call written on the same connection.
    """

    def __init__(self, pool: redis_asyncio.ConnectionPool) -> None:
        self._pool = pool
        self._line: _Line | None = None
        self._opening: asyncio.Future[_Line] | None = None

    async def call(self, *args: EncodableT) -> Any:
        """The reply to one command (a `ResponseError` reply is raised)."""
        line = self._line if self._line is not None else await self._open()
        if line.closed:  # (lost while this call waited for it to open)
            raise ConnectionError("the connection to Redis was lost")
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        line.waiting.append(answer)
        # hiredis packs in C what redis-py's asyncio connection packs in Python (its stub types
        # the argument as a 1-tuple); with no socket timeout the write happens before the first
        # await, so the writes keep the order of `waiting`
        command = hiredis.pack_command(args)  # type: ignore[arg-type]
        try:
            await line.connection.send_packed_command(command, check_health=False)
        except BaseException as exc:
            self._fail(line, exc)
            if isinstance(exc, asyncio.CancelledError):
                answer.exception()  # (retrieved: the caller is gone)
                raise
        try:
            return await asyncio.wait_for(answer, REPLY_TIMEOUT_SECONDS)
        except TimeoutError:
            # Redis took too long: this line's state is unknown, so every call on it fails
            error = RedisTimeoutError(f"no reply from Redis within {REPLY_TIMEOUT_SECONDS:g} s")
            self._fail(line, error)
            raise error from None

    async def _open(self) -> _Line:
        if self._opening is not None:
            return await asyncio.shield(self._opening)
        opening = self._opening = asyncio.get_running_loop().create_future()
        try:
            # its own connection, made as the pool makes one but with no socket timeout: then
            # a write happens before the first await, and an idle read waits for as long as it
            # takes
            options = {**self._pool.connection_kwargs, "socket_timeout": None}
            connection: AbstractConnection = self._pool.connection_class(**options)
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException as exc:
            self._opening = None
            opening.set_exception(exc)
            opening.exception()
            raise
        line = self._line = _Line(connection)
        line.reader = asyncio.create_task(self._read(line))
        self._opening = None
        opening.set_result(line)
        return line

    async def _read(self, line: _Line) -> None:
        try:
            while True:
                try:
                    reply = await line.connection.read_response(timeout=math.inf)
                except ResponseError as error:
                    reply = error
                answer = line.waiting.popleft()
                if answer.done():  # its caller was cancelled meanwhile
                    continue
                if isinstance(reply, ResponseError):
                    answer.set_exception(reply)
                else:
                    answer.set_result(reply)
        except BaseException as exc:
            self._fail(line, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _fail(self, line: _Line, cause: BaseException) -> None:
        """Give up `line`: every call written on it fails; the next call opens another."""
        if line.closed:
            return
        line.closed = True
        if self._line is line:
            self._line = None
        error = cause if isinstance(cause, RedisError) else ConnectionError(f"{cause!r}")
        for answer in line.waiting:
            if not answer.done():
                answer.set_exception(error)
                answer.exception()  # (a cancelled caller would never retrieve it)
        line.waiting.clear()
        if line.reader is not None and line.reader is not asyncio.current_task():
            line.reader.cancel()
        asyncio.get_running_loop().create_task(line.connection.disconnect(nowait=True))

    async def close(self) -> None:
        line = self._line
        if line is not None:
            self._fail(line, ConnectionError("the client is closing"))
            await line.connection.disconnect(nowait=True)


class ConnectionScript(AsyncScript):
    """A Lua script called with EVALSHA down its client's `ScriptPipe` (SCRIPT LOAD on
    NOSCRIPT). A failed connection's error reaches the caller as from redis-py, but without
    its retries: a script that may have run must not run twice."""

    def __init__(self, client: ScriptedRedis, script: ScriptTextT) -> None:
        super().__init__(client, script)
        self._pipe = client.script_pipe

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> Any:
        if client is not None:  # a pipeline or another client: redis-py's own way
            return await super().__call__(keys, args, client)
        keys = keys or ()
        arguments = (*keys, *(args or ()))
        try:
            return await self._pipe.call("EVALSHA", self.sha, len(keys), *arguments)
        except NoScriptError:
            self.sha = await self._pipe.call("SCRIPT", "LOAD", self.script)
            return await self._pipe.call("EVALSHA", self.sha, len(keys), *arguments)


class ScriptedRedis(redis_asyncio.Redis):
    """redis-py's client whose registered scripts are `ConnectionScript`s, all on one pipe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_pipe = ScriptPipe(self.connection_pool)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.script_pipe.close()
        await super().aclose(close_connection_pool)

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        return ConnectionScript(self, script)


async def open_redis_kv(url: str, *, max_connections: int = 64) -> KeyValueStore:
    """A client for `url`, checked with a PING so a wrong URL fails at start-up, not mid-rush.

    Its pool holds at most `max_connections` and makes a burst wait for a free connection
    (up to 10 s) rather than fail, as redis-py's default pool does past 100.
    """
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=3,
        max_connections=max_connections,
        timeout=10,
    )
    client = ScriptedRedis(connection_pool=pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise BackendUnavailable(f"cannot reach Redis at {url}: {exc}") from None
    return client
