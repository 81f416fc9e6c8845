"""Script calls on connections the script keeps (`backends/redis.py`, real Redis only): each
caller gets its own reply, however many are in flight, a script error stays its caller's, and
a lost connection fails its call and is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError, ResponseError

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
    # each ran once: the counts are 1..2000, in whatever order the connections ran them
    assert sorted(int(count) for _, count in replies) == list(range(1, 2_001))


async def test_a_script_error_is_the_callers_alone(kv: ScriptedRedis) -> None:
    echo = kv.register_script(ECHO)
    broken = kv.register_script("return redis.call('NOSUCHCOMMAND')")
    first = await echo(keys=["pipe:count"], args=[1])
    with pytest.raises(ResponseError):
        await broken()
    last = await echo(keys=["pipe:count"], args=[3])  # (on the connection the error left)
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
    # the next call may still be sent down a killed connection and fail; the one after it
    # runs on a new connection
    try:
        after = await asyncio.wait_for(slow(keys=["pipe:count"], args=["after"]), 5)
    except ConnectionError:
        after = await asyncio.wait_for(slow(keys=["pipe:count"], args=["after"]), 5)
    assert after == "after"
