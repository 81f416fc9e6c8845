"""Script calls pipelined down one Redis connection (`backends/redis.py`, real Redis only):
each caller gets its own reply, however many are in flight, and a lost connection fails the
calls written on it, never anyone else's, and is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

import dropsim.backends.redis
from dropsim.backends.redis import ScriptedRedis, open_redis_kv
from tests.conftest import REDIS_ENV, real_url

ECHO = "return {ARGV[1], redis.call('INCR', KEYS[1])}"


@pytest.fixture
async def kv() -> AsyncIterator[ScriptedRedis]:
    client = await open_redis_kv(real_url(REDIS_ENV, "Redis"))
    assert isinstance(client, ScriptedRedis)
    await client.delete("pipe:count")
    try:
        yield client
    finally:
        await client.delete("pipe:count")
        await client.aclose()


async def test_every_caller_gets_its_own_reply(kv: ScriptedRedis) -> None:
    echo = kv.register_script(ECHO)
    replies = await asyncio.gather(*(echo(keys=["pipe:count"], args=[n]) for n in range(2_000)))
    assert [int(argument) for argument, _ in replies] == list(range(2_000))
    # written in call order, so Redis ran them in that order too
    assert [int(count) for _, count in replies] == list(range(1, 2_001))


async def test_a_script_error_is_the_callers_alone(kv: ScriptedRedis) -> None:
    echo = kv.register_script(ECHO)
    broken = kv.register_script("return redis.call('NOSUCHCOMMAND')")
    calls = [echo(keys=["pipe:count"], args=[1]), broken(), echo(keys=["pipe:count"], args=[3])]
    first, failed, last = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(failed, ResponseError)
    assert first == ["1", 1]
    assert last == ["3", 2]


async def test_a_flushed_script_is_loaded_again(kv: ScriptedRedis) -> None:
    echo = kv.register_script(ECHO)
    assert (await echo(keys=["pipe:count"], args=["a"]))[0] == "a"
    await kv.script_flush()
    assert (await echo(keys=["pipe:count"], args=["b"]))[0] == "b"


async def test_a_lost_connection_fails_its_calls_and_the_next_call_reconnects(
    kv: ScriptedRedis,
) -> None:
    slow = kv.register_script("redis.call('INCR', KEYS[1]); return ARGV[1]")
    assert await slow(keys=["pipe:count"], args=["before"]) == "before"
    clients = await kv.execute_command("CLIENT", "LIST")
    ours = [
        line.split(" ")[0].removeprefix("id=")
        for line in clients.splitlines()
        if "cmd=evalsha" in line
    ]
    assert ours, clients
    in_flight = [asyncio.ensure_future(kv.execute_command("CLIENT", "KILL", "ID", ours[0]))]
    in_flight += [asyncio.ensure_future(slow(keys=["pipe:count"], args=[n])) for n in range(50)]
    outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
    assert outcomes[0] == 1
    # each call either ran before the kill (its own reply) or failed: never another's reply
    for n, outcome in enumerate(outcomes[1:]):
        assert outcome == str(n) or isinstance(outcome, ConnectionError), outcome
    # a call written before the pipe saw the connection close fails too; the one after it
    # runs on a new connection
    try:
        after = await asyncio.wait_for(slow(keys=["pipe:count"], args=["after"]), 5)
    except ConnectionError:
        after = await asyncio.wait_for(slow(keys=["pipe:count"], args=["after"]), 5)
    assert after == "after"


async def test_a_reply_that_does_not_come_in_time_fails_its_call_and_the_pipe_recovers(
    kv: ScriptedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dropsim.backends.redis, "REPLY_TIMEOUT_SECONDS", 0.1)
    spin = kv.register_script(
        "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 300000 return 1"
    )
    with pytest.raises(RedisTimeoutError):
        await spin()
    await asyncio.sleep(0.4)  # (Redis finishes the script meanwhile)
    echo = kv.register_script(ECHO)
    assert (await echo(keys=["pipe:count"], args=["after"]))[0] == "after"
