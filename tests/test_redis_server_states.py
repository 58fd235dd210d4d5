"""A real Redis server in the states that make it refuse work: loading its data, full, read-only.

Each state answers commands with an error reply instead of running them. litechan classifies every
error reply: a *transient* one (``LOADING``, ``BUSY``, ``MASTERDOWN``, ``TRYAGAIN``,
``CLUSTERDOWN``) is an outage, handled like a cut: calls wait up to ``retry``, nothing dies. A
*refusal* (``OOM``, ``NOPERM``, ``READONLY``) reaches the caller as its own error (``Overloaded``,
``ServerError``), at once. In every state no background task dies and closing a broker returns
within a bound.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import anyio
import pytest
import redis
from redis_support import RedisServer, delete_namespace, fresh_namespace, litechan_url
from test_redis_faults import publish_when_served, take, take_acking

import litechan

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

LEASE = 2.0
#: A server that loads 30,000 keys, pausing at least 50 µs after each: a LOADING phase of a few
#: seconds, during which it answers clients (events are processed every KiB of data loaded).
LOADING_ARGS = (
    "--appendfsync", "always",  # a SIGKILL loses nothing that was acknowledged
    "--key-load-delay", "50",
    "--loading-process-events-interval-bytes", "1024",
)  # fmt: skip
FILLER_KEYS = 30_000


def _fill(server: RedisServer) -> None:
    """Write filler keys (database 1) and fold them into the append-only file's base."""
    client = redis.Redis(port=server.port, db=1)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(FILLER_KEYS):
            pipe.set(f"filler:{i}", "x" * 16)
        pipe.execute()
        client.bgrewriteaof()
        while True:  # waiting for the server's own background job: nothing to await
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.05)
    finally:
        client.close()


def _loading(server: RedisServer) -> bool:
    """Whether *server* answers LOADING right now (a raw PING: redis-py would wait it out)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"-LOADING")


@pytest.fixture
def loading_server() -> Iterator[RedisServer]:
    """A private server with an append-only file and enough data to load for a few seconds."""
    with RedisServer(appendonly=True, extra_args=LOADING_ARGS) as server:
        _fill(server)
        yield server


def _closes_within(broker_exit: float, limit: float) -> None:
    assert time.monotonic() - broker_exit < limit, "leaving the broker took too long"


@asyncio_only
async def test_restart_with_a_loading_phase_is_an_outage_not_a_crash(
    loading_server: RedisServer,
) -> None:
    """A server restarted from its AOF answers LOADING for a while: calls wait it out within
    retry, no background task dies, nothing is lost, and the broker closes promptly."""
    url = litechan_url(loading_server.url, lease=LEASE, retry=20)
    with anyio.fail_after(90):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            audio = broker.ordered_topic("audio", partitions=2)
            async with (
                replies.subscriber(group="gateways", name="gw-1") as gateway,
                audio.consumer(group="asr", name="w-1") as worker,
            ):
                channel = aiter(await gateway.subscribe("sess-1"))
                requests = aiter(worker)
                await replies.publish("sess-1", b"r1")
                await audio.send("k", b"q1")
                await take_acking(channel, 1, "reply before the restart")  # type: ignore[arg-type]
                await take_acking(requests, 1, "request before the restart")

                loading_server.restart(loading_ok=True)
                assert _loading(loading_server), "the restarted server did not report LOADING"
                started = time.monotonic()
                assert await replies.publish("sess-1", b"r2") == 2  # waits out the loading
                waited = time.monotonic() - started
                assert (await audio.send("k", b"q2")).offset == 2
                (r2,) = await take(channel, 1, "reply after the restart")
                (q2,) = await take(requests, 1, "request after the restart")
                assert (r2.payload, r2.offset, q2.payload) == (b"r2", 2, b"q2")
                assert waited > 0.3, f"publish did not wait for the loading ({waited:.2f} s)"
                await r2.ack()
                await q2.ack()
            leaving = time.monotonic()
        _closes_within(leaving, 5.0)


@asyncio_only
async def test_loading_longer_than_retry_raises_then_recovers(
    loading_server: RedisServer,
) -> None:
    """With retry shorter than the loading, calls raise BrokerUnavailable naming LOADING; the
    broker lives on and works again once the data is loaded."""
    url = litechan_url(loading_server.url, lease=LEASE, retry=0.3)
    with anyio.fail_after(90):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                channel = aiter(await gateway.subscribe("sess-1"))
                await replies.publish("sess-1", b"r1")
                await take_acking(channel, 1, "reply before the restart")  # type: ignore[arg-type]

                loading_server.restart(loading_ok=True)
                with pytest.raises(litechan.BrokerUnavailable, match="LOADING"):
                    await replies.publish("sess-1", b"refused")
                offset, refusals = await publish_when_served(replies, b"r2", limit=30)
                assert all("LOADING" in refusal for refusal in refusals), refusals
                (r2,) = await take(channel, 1, "reply after the loading")
                assert (r2.payload, r2.offset) == (b"r2", offset)
                await r2.ack()
            leaving = time.monotonic()
        _closes_within(leaving, 5.0)


@asyncio_only
async def test_closing_while_the_server_loads_returns_within_retry(
    loading_server: RedisServer,
) -> None:
    """Leaving a broker, a consumer and a subscriber while the server still loads its data
    returns within about retry seconds, whatever is still queued."""
    url = litechan_url(loading_server.url, lease=LEASE, retry=0.5)
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=2)
            replies = broker.lite_topics("replies")
            async with (
                replies.subscriber(group="gateways", name="gw-1") as gateway,
                audio.consumer(group="asr", name="w-1"),
            ):
                await gateway.subscribe("sess-1")
                loading_server.restart(loading_ok=True)
                leaving = time.monotonic()
        _closes_within(leaving, 3.0)


# ---------------------------------------------------------------------------------------------
# maxmemory with noeviction: the server is full


@pytest.fixture
def full_server() -> Iterator[RedisServer]:
    """A private server with maxmemory 8 MiB and the noeviction policy (no data is evicted)."""
    with RedisServer(extra_args=("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")) as s:
        yield s


def _fill_up(server: RedisServer) -> redis.Redis:
    """Fill the server past maxmemory (database 1); return a client to free it again."""
    client = redis.Redis(port=server.port, db=1)
    # One script: only its first write is checked against maxmemory.
    fill = "for i = 1, 100000 do redis.call('SET', 'ballast:' .. i, ARGV[1]) end"
    client.eval(fill, 0, "x" * 100)
    assert client.info("memory")["used_memory"] > 8 << 20
    return client


@asyncio_only
@pytest.mark.parametrize("acks", ["sync", "async"])
async def test_full_server_refuses_new_data_and_keeps_consumers_going(
    full_server: RedisServer, acks: str
) -> None:
    """A full server (maxmemory, noeviction): publish and send raise Overloaded and store
    nothing; opening brokers, subscribing, consuming and acking go on, so the backlog drains."""
    namespace = fresh_namespace(f"full-{acks}")
    url = litechan_url(full_server.url, namespace=namespace, lease=LEASE, acks=acks, retry=2)
    try:
        with anyio.fail_after(60):
            async with litechan.connect(url) as setup:
                replies = setup.lite_topics("replies")
                audio = setup.ordered_topic("audio", partitions=2)
                for i in (1, 2, 3):
                    await replies.publish("sess-1", b"r%d" % i)
                    await audio.send("k", b"q%d" % i)
            ballast = _fill_up(full_server)
            try:
                async with litechan.connect(url) as broker:  # opening works
                    replies = broker.lite_topics("replies")
                    audio = broker.ordered_topic("audio", partitions=2)
                    with pytest.raises(litechan.Overloaded, match="maxmemory"):
                        await replies.publish("sess-1", b"refused")
                    with pytest.raises(litechan.Overloaded, match="maxmemory"):
                        await audio.send("k", b"refused")
                    with pytest.raises(litechan.Overloaded):
                        await replies.publish("sess-new", b"refused")  # creating one too
                    async with (
                        replies.subscriber(group="gateways", name="gw-1") as gateway,
                        audio.consumer(group="asr", name="w-1") as worker,
                    ):
                        channel = aiter(await gateway.subscribe("sess-1"))
                        got = await take_acking(channel, 3, "replies while full")  # type: ignore[arg-type]
                        assert [m.payload for m in got] == [b"r1", b"r2", b"r3"]
                        asked = await take_acking(aiter(worker), 3, "requests while full")
                        assert [m.payload for m in asked] == [b"q1", b"q2", b"q3"]
                    assert (await replies.stats()).backlog == 0
                    assert (await audio.stats()).lag("asr") == 0
                    assert (await audio.stats()).length == 3  # nothing refused was stored
                    ballast.flushdb()
                    assert await replies.publish("sess-1", b"r4") == 4  # room again
            finally:
                ballast.close()
    finally:
        delete_namespace(full_server.url, namespace)


# ---------------------------------------------------------------------------------------------
# busy with another client's script, read-only, no permission, hung


#: A script another program runs, keeping the server busy for one to two seconds.
SPIN = (
    "local t = tonumber(redis.call('TIME')[1]) + 2 while tonumber(redis.call('TIME')[1]) < t do end"
)


@pytest.fixture
def quickly_busy_server(own_redis_server: RedisServer) -> RedisServer:
    """A private server that answers BUSY after a script ran for 100 ms (not 5 s)."""
    with redis.Redis(port=own_redis_server.port) as admin:
        admin.config_set("busy-reply-threshold", 100)
    return own_redis_server


@asyncio_only
async def test_busy_server_is_waited_out(quickly_busy_server: RedisServer) -> None:
    """While another client's script keeps the server BUSY, calls wait (within retry) and then
    go on; nothing is lost or raised."""
    server = quickly_busy_server
    url = litechan_url(server.url, retry=10)
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                channel = aiter(await gateway.subscribe("sess-1"))
                await replies.publish("sess-1", b"r1")
                await take_acking(channel, 1, "before")  # type: ignore[arg-type]
                async with anyio.create_task_group() as tg:
                    # Another program's slow script holds the server for one to two seconds.
                    tg.start_soon(anyio.to_thread.run_sync, lambda: _eval(server, SPIN))
                    await anyio.to_thread.run_sync(_until_busy, server)
                    started = time.monotonic()
                    assert await replies.publish("sess-1", b"r2") == 2
                    waited = time.monotonic() - started
                (r2,) = await take(channel, 1, "after")
                assert r2.payload == b"r2"
                await r2.ack()
    assert waited > 0.3, f"the publish did not wait for the busy server ({waited:.2f} s)"


def _until_busy(server: RedisServer) -> None:
    """Return once *server* answers BUSY (polled: its state has no event to wait on)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"-BUSY"):
                return
        time.sleep(0.01)
    raise AssertionError("the server never answered BUSY")


def _eval(server: RedisServer, script: str) -> None:
    with redis.Redis(port=server.port, socket_timeout=30) as client:
        client.eval(script, 0)


@asyncio_only
async def test_read_only_replica_refuses_writes_with_server_error(
    own_redis_server: RedisServer,
) -> None:
    """A server turned into a read-only replica refuses publish and send with ServerError
    naming READONLY; opening a broker, reading and stats go on, and writes work again once it
    is a primary."""
    url = litechan_url(own_redis_server.url, retry=2)
    with RedisServer() as primary, anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            audio = broker.ordered_topic("audio", partitions=1)
            await replies.publish("sess-1", b"r1")
            await audio.send("k", b"q1")
            admin = redis.Redis(port=own_redis_server.port)
            try:
                admin.replicaof(primary.host, primary.port)
                with pytest.raises(litechan.ServerError, match="READONLY"):
                    await replies.publish("sess-1", b"refused")
                with pytest.raises(litechan.ServerError, match="READONLY"):
                    await audio.send("k", b"refused")
                admin.replicaof("NO", "ONE")
            finally:
                admin.close()
            # The replica took the primary's (empty) data set: the topics start again.
            assert await replies.publish("sess-1", b"r2") >= 1
            assert (await audio.send("k", b"q2")).offset >= 1


@asyncio_only
async def test_user_without_permission_gets_server_error(own_redis_server: RedisServer) -> None:
    """An ACL user that may not touch litechan's keys gets ServerError naming NOPERM at its first
    call, not a hang and not BrokerUnavailable."""
    admin = redis.Redis(port=own_redis_server.port)
    try:
        # Every command, but only keys of another namespace.
        admin.execute_command("ACL", "SETUSER", "narrow", "on", ">pw", "+@all", "~other:*", "&*")
    finally:
        admin.close()
    url = litechan_url(
        f"redis://narrow:pw@{own_redis_server.host}:{own_redis_server.port}/0", namespace="mine"
    )
    with anyio.fail_after(30):
        with pytest.raises(litechan.ServerError, match="NOPERM") as info:
            async with litechan.connect(url):
                pass
        assert "pw@" not in str(info.value)


@asyncio_only
async def test_hung_server_is_an_outage(own_redis_server: RedisServer) -> None:
    """A server that stops answering (SIGSTOP) is noticed after socket_timeout; calls made during
    it raise BrokerUnavailable after retry, and everything goes on once it answers again."""
    url = litechan_url(own_redis_server.url, socket_timeout=0.5, retry=1)
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                channel = aiter(await gateway.subscribe("sess-1"))
                await replies.publish("sess-1", b"r1")
                await take_acking(channel, 1, "before")  # type: ignore[arg-type]
                own_redis_server.pause()
                try:
                    started = time.monotonic()
                    with pytest.raises(litechan.BrokerUnavailable):
                        await replies.publish("sess-1", b"lost?")
                    assert time.monotonic() - started < 5
                finally:
                    own_redis_server.resume()
                offset, _ = await publish_when_served(replies, b"r2")
                got = await take(channel, offset - 1, "after the server answered again")
                assert got[-1].payload == b"r2"
                for msg in got:
                    await msg.ack()
            leaving = time.monotonic()
        _closes_within(leaving, 3.0)


@asyncio_only
async def test_busy_longer_than_retry_raises_then_serves_again(
    quickly_busy_server: RedisServer,
) -> None:
    """A server BUSY for longer than retry on a link that stays up: calls raise meanwhile, and
    once the script ends the broker serves again on its own (it keeps asking the server)."""
    server = quickly_busy_server
    url = litechan_url(server.url, retry=0.3)
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            assert await replies.publish("sess-1", b"r1") == 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, lambda: _eval(server, SPIN))
                await anyio.to_thread.run_sync(_until_busy, server)
                with pytest.raises(litechan.BrokerUnavailable, match="BUSY"):
                    await replies.publish("sess-1", b"refused")
            # The script is over. Calls made since failed at once (the outage is older than
            # retry) and queued nothing: the broker must find out by itself, within about one
            # reconnection pause (0.5 s at most), that the server serves again.
            script_over = time.monotonic()
            offset, _ = await publish_when_served(replies, b"r2", limit=10)
            assert offset == 2
            assert time.monotonic() - script_over < 2.0
