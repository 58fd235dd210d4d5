"""The Redis backend's connection edge: URLs, options, TLS, unix sockets, ACL users, errors.

The guarantees themselves are proven by the conformance kit and the state machine (run against
Redis in test_conformance.py and test_model.py) and the fault tests in test_redis_faults.py.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import anyio
import pytest
import redis
from redis_support import RedisServer, fresh_namespace, litechan_url, logged
from structlog.testing import capture_logs

import litechan
from litechan._backends.redis._options import parse_url
from litechan._backends.redis._wire import open_wire, pack

pytestmark = pytest.mark.anyio

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


async def _round_trip(url: str) -> None:
    with anyio.fail_after(20):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="gw", name="gw-1") as sub:
                channel = await sub.subscribe("s1")
                assert await replies.publish("s1", b"hello") == 1
                msg = await anext(aiter(channel))
                assert (msg.offset, msg.payload) == (1, b"hello")
                await msg.ack()


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("nosuch=1", "unknown option 'nosuch'"),
        ("lease=0", "lease"),
        ("retry=abc", "retry"),
        ("pool_size=0", "pool_size"),
        ("lite_partitions=0", "lite_partitions"),
        ("lite_partitions=1025", "lite_partitions"),
        ("max_pending=0", "max_pending"),
        ("pending_wait=-1", "pending_wait"),
        ("replicas=-1", "replicas"),
        ("replicas=101", "replicas"),
        ("replicas_wait=0", "replicas_wait"),
        ("replicas=1&replicas_wait=20", "shorter than socket_timeout"),
        ("acks=maybe", "acks"),
        ("namespace=a:b", "namespace"),
    ],
)
def test_bad_options_are_rejected_at_connect(query: str, complaint: str) -> None:
    """A malformed or unknown URL option raises InvalidArgument naming it, before any I/O."""
    with pytest.raises(litechan.InvalidArgument, match=complaint):
        litechan.connect(f"redis://127.0.0.1:1/0?{query}")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://127.0.0.1:6379/abc", "database"),
        ("redis://127.0.0.1:6379/-1", "database"),
        ("redis://127.0.0.1:6379/2?db=3", "database 2 in its path and 3"),
        ("redis://127.0.0.1:port/0", "port"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/x", "rediss://"),
        ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
        ("rediss://127.0.0.1:6379/0?ssl_ca_certs=/no/such/file.pem", "TLS"),
    ],
)
def test_bad_connection_settings_are_rejected_at_connect(url: str, complaint: str) -> None:
    """A database that is not a number, a bad port or bad TLS settings raise InvalidArgument
    at connect(), before any I/O (before, a bad database path silently meant database 0)."""
    with pytest.raises(litechan.InvalidArgument, match=complaint):
        litechan.connect(url)


def test_the_password_stays_out_of_parsed_options() -> None:
    """The parsed URL keeps the password out of its repr and out of error messages."""
    from urllib.parse import urlsplit

    from litechan._backends.redis._options import parse_url

    options = parse_url(urlsplit("redis://user:s3cret@127.0.0.1:6379/4?namespace=ns"))
    assert (options.endpoint.db, options.endpoint.password) == (4, "s3cret")
    assert "s3cret" not in repr(options)
    with pytest.raises(litechan.InvalidArgument) as info:
        litechan.connect("redis://user:s3cret@127.0.0.1:port/0")
    assert "s3cret" not in str(info.value)


@asyncio_only
async def test_pool_size_one_still_opens(redis_server: RedisServer) -> None:
    """?pool_size=1 (accepted, ignored: a broker opens its own two connections) opens and works;
    before, the notes connection waited forever for a second pooled connection."""
    url = litechan_url(redis_server.url, namespace=fresh_namespace("pool"), pool_size=1)
    await _round_trip(url)


def test_urls_need_a_host_or_a_path() -> None:
    """redis:// without a host and unix:// without a path are InvalidArgument."""
    with pytest.raises(litechan.InvalidArgument, match="host"):
        litechan.connect("redis:///0")
    with pytest.raises(litechan.InvalidArgument, match="path"):
        litechan.connect("unix://")


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly() -> None:
    """Opening a Redis broker under trio raises InvalidArgument saying asyncio is needed."""
    with anyio.fail_after(10), pytest.raises(litechan.InvalidArgument, match="asyncio only"):
        async with litechan.connect("redis://127.0.0.1:1/0"):
            pass


@asyncio_only
async def test_unreachable_server_is_broker_unavailable() -> None:
    """A server refusing connections gives BrokerUnavailable at connect, not a redis-py error."""
    with anyio.fail_after(20), pytest.raises(litechan.BrokerUnavailable, match="unreachable"):
        async with litechan.connect("redis://127.0.0.1:1/0?connect_timeout=1"):
            pass


@asyncio_only
async def test_unix_socket(redis_server: RedisServer) -> None:
    """unix:// URLs reach the server through its socket."""
    await _round_trip(litechan_url(redis_server.unix_url, namespace=fresh_namespace("unix")))


@asyncio_only
async def test_tls() -> None:
    """rediss:// URLs talk TLS, verifying the server against the CA given in the URL."""
    with RedisServer(tls=True) as server:
        await _round_trip(litechan_url(server.tls_url, namespace=fresh_namespace("tls")))


@asyncio_only
async def test_a_reader_behind_pauses_the_socket_and_loses_no_reply(
    redis_server: RedisServer,
) -> None:
    """Unread replies past a bound stop the socket being read (the rest waits in the kernel and
    the server) and every reply still arrives whole and in order once read."""
    endpoint = parse_url(urlsplit(redis_server.url)).endpoint
    value = bytes(range(256)) * 1_200  # 300 KiB: ten replies hold three times the bound
    key = f"{fresh_namespace('wire')}:big"
    with anyio.fail_after(20):
        wire = await open_wire(endpoint, 5)
        try:
            await wire.write(pack(("SET", key, value)))
            assert await wire.read() == b"OK"
            transport = wire._transport
            assert transport is not None
            paused = anyio.Event()
            pause_reading = transport.pause_reading

            def pause_and_tell() -> None:
                pause_reading()
                paused.set()

            transport.pause_reading = pause_and_tell  # type: ignore[method-assign]
            await wire.write(b"".join(pack(("GET", key)) for _ in range(10)))
            await paused.wait()  # nothing is read meanwhile, so the bound must trip
            assert not transport.is_reading()
            replies = [await wire.read() for _ in range(10)]
            assert replies == [value] * 10
            assert transport.is_reading()
        finally:
            wire.close()


@asyncio_only
async def test_acl_user_and_password_from_the_url(own_redis_server: RedisServer) -> None:
    """The user and password of the URL authenticate; wrong ones are BrokerUnavailable."""
    admin = redis.Redis(host=own_redis_server.host, port=own_redis_server.port)
    try:
        admin.acl_setuser(
            "gateway",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
    finally:
        admin.close()
    base = f"redis://gateway:s3cret@127.0.0.1:{own_redis_server.port}/0"
    await _round_trip(litechan_url(base, namespace=fresh_namespace("acl")))
    wrong = f"redis://gateway:nope@127.0.0.1:{own_redis_server.port}/0"
    with anyio.fail_after(20), pytest.raises(litechan.BrokerUnavailable):
        async with litechan.connect(wrong):
            pass


@asyncio_only
async def test_a_password_is_never_shown(own_redis_server: RedisServer) -> None:
    """The URL's password appears in no repr, Broker.url, error message or log event: not
    while open, not through a dropped connection, not once closed, not for a wrong one."""
    secret = "pw-1c0d3-s3cret"
    admin = redis.Redis(host=own_redis_server.host, port=own_redis_server.port)
    admin.acl_setuser(
        "gateway",
        enabled=True,
        passwords=[f"+{secret}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    shown: list[str] = []
    base = f"redis://gateway:{secret}@127.0.0.1:{own_redis_server.port}/0"
    url = litechan_url(base, namespace=fresh_namespace("secret"))
    try:
        with anyio.fail_after(20), capture_logs() as logs, logged("litechan.redis.back") as back:
            broker = litechan.connect(url)
            shown += [repr(broker), broker.url, repr(litechan.testing.Harness(url=url))]
            async with broker:
                replies = broker.lite_topics("replies")
                shown.append(repr(replies))
                admin.client_kill_filter(user="gateway")  # every connection of the broker
                await back.wait()
                assert await replies.publish("s1", b"after the cut") >= 1
            with pytest.raises(litechan.ResourceClosed) as closed:
                broker.lite_topics("replies")
            shown.append(str(closed.value))
            wrong = base.replace(secret, f"{secret}-not")
            with pytest.raises(litechan.BrokerUnavailable) as refused:
                async with litechan.connect(wrong):
                    pass
            shown.append(str(refused.value))
            with pytest.raises(litechan.InvalidArgument) as malformed:
                litechan.connect(f"redis://gateway:{secret}@[::1/0")
            shown.append(str(malformed.value))
    finally:
        admin.close()
    shown += [repr(event) for event in logs]
    assert any("litechan.redis.disconnected" in text for text in shown), "the cut was logged"
    assert [text for text in shown if secret in text] == []
    assert "gateway:***@127.0.0.1" in broker.url


@asyncio_only
async def test_lite_partitions_spread_a_parent_and_must_agree(redis_server: RedisServer) -> None:
    """With ?lite_partitions=4 a parent's topics spread over 4 hash tags, and a broker of the
    namespace asking for another count is refused with ConfigMismatch saying both."""
    namespace = fresh_namespace("parts")
    url = litechan_url(redis_server.url, namespace=namespace, lite_partitions=4)
    with anyio.fail_after(20):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="gw", name="gw-1") as sub:
                channels = [await sub.subscribe(f"s{i}") for i in range(40)]
                for i in range(40):
                    await replies.publish(f"s{i}", b"x%d" % i)
                for i, channel in enumerate(channels):
                    msg = await anext(aiter(channel))
                    assert msg.payload == b"x%d" % i
                    await msg.ack()
            other_url = litechan_url(redis_server.url, namespace=namespace, lite_partitions=2)
            async with litechan.connect(other_url) as other:
                with pytest.raises(litechan.ConfigMismatch, match=r"lite_partitions=4 \(asked 2\)"):
                    other.lite_topics("replies")
    client = redis.Redis.from_url(redis_server.url)
    try:
        lists = list(client.scan_iter(match=f"{{{namespace}:l:*", count=1000))
        tags = {key.split(b"}")[0] for key in lists}
        assert len(tags) == 4, tags
    finally:
        client.close()


@asyncio_only
async def test_sends_of_one_batch_keep_order_and_dedupe_among_themselves(
    redis_server: RedisServer,
) -> None:
    """Sends made together travel in one call per partition: they get consecutive offsets in
    call order, and a dedupe id repeated inside the batch is stored once (G11)."""
    url = litechan_url(redis_server.url, namespace=fresh_namespace("batch"))
    with anyio.fail_after(20):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            receipts = await asyncio.gather(
                audio.send("k", b"a", dedupe_id="same"),
                audio.send("k", b"b"),
                audio.send("k", b"a again", dedupe_id="same"),
                audio.send("k", b"c", dedupe_id="other"),
            )
            assert [(r.offset, r.duplicate) for r in receipts] == [
                (1, False),
                (2, False),
                (1, True),
                (3, False),
            ]
            async with audio.consumer(group="g", name="w") as consumer:
                got = []
                async for msg in consumer:
                    got.append(msg.payload)
                    await msg.ack()
                    if len(got) == 3:
                        break
            assert got == [b"a", b"b", b"c"]


@asyncio_only
@pytest.mark.parametrize("earlier", [0, 200, 300])
async def test_an_owners_commit_key_lives_as_long_as_its_topic(
    redis_server: RedisServer, earlier: int
) -> None:
    """The key an owner commits into expires with its lite topic: a topic's first publish and
    every TTL refresh after it extend the owner's commit key too, so acks are never lost to
    an expired commit key while the topic lives (G6); whatever the size of the subscription's
    generation (*earlier* subscriptions before it: 1, 2 and 3 bytes in its note address)."""
    namespace = fresh_namespace("commit-ttl")
    url = litechan_url(redis_server.url, namespace=namespace)
    admin = redis.Redis.from_url(redis_server.url)
    ttl = 2.0

    def keys() -> tuple[bytes, bytes]:
        (meta,) = admin.keys(f"{{{namespace}:l:*:m:s")
        (commit,) = admin.keys(f"{{{namespace}:l:*:c:s:*")
        return meta, commit

    def ttls() -> tuple[int, int]:
        meta, commit = keys()
        return int(admin.pttl(meta)), int(admin.pttl(commit))

    def age() -> None:
        """Make the topic look as if ttl / 10 had passed since its last refresh (its refresh
        stamp long ago, both keys closer to expiry), without waiting for the server's clock."""
        meta, commit = keys()
        admin.hset(meta, "x", 0)
        for key in (meta, commit):
            admin.pexpire(key, 1000)

    try:
        with anyio.fail_after(20):
            async with litechan.connect(url) as broker:
                replies = broker.lite_topics("replies", ttl=ttl)
                async with replies.subscriber(group="gw", name="gw-1") as sub:
                    for _ in range(earlier):
                        await sub.subscribe("other")
                        await sub.unsubscribe("other")
                    channel = await sub.subscribe("s")  # before the topic exists
                    for round_ in range(2):
                        await replies.publish("s", b"r%d" % round_)
                        meta_ttl, commit_ttl = ttls()
                        assert meta_ttl > ttl * 1000, meta_ttl  # 1.1 x ttl, just set
                        assert abs(meta_ttl - commit_ttl) < 100, (meta_ttl, commit_ttl)
                        msg = await anext(aiter(channel))
                        await msg.ack()
                        age()  # the next publish must refresh both keys
                    stats = await replies.stats(top=1)
                    assert stats.backlog == 0, stats
    finally:
        admin.close()


@asyncio_only
async def test_what_waits_for_the_next_batch_fails_when_the_connection_closes(
    redis_server: RedisServer,
) -> None:
    """A publish, send or ack still waiting to be put into the next batch when the broker's
    connection closes ends with BrokerUnavailable at once: nothing waits forever (G14)."""
    url = litechan_url(redis_server.url, namespace=fresh_namespace("close"))
    with anyio.fail_after(20):
        async with litechan.connect(url) as broker:
            broker.lite_topics("replies")
            broker.ordered_topic("audio", partitions=1)
            backend = broker._backend  # the Redis topics, below the core
            parent = backend._parents["replies"]  # type: ignore[attr-defined]
            audio = backend._ordered["audio"]  # type: ignore[attr-defined]
            published = parent.publish("s", b"body")
            sent = audio.send(0, "k", b"body", {}, None, 0.0, None)
            await backend.client.aclose()  # before the writer took them
            for future in (published, sent):
                assert isinstance(future.exception(), litechan.BrokerUnavailable), future


@asyncio_only
async def test_a_namespace_of_the_old_layout_is_refused(redis_server: RedisServer) -> None:
    """A namespace holding layout-1 data (its world marker) is refused at connect with a
    ConfigMismatch naming both layouts, and its keys are left alone."""
    namespace = fresh_namespace("old")
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(f"{namespace}:world", "0123456789abcdef")
        client.set(f"{namespace}:spec:l:replies", "ttl=600.0, max_len=10000")
        url = litechan_url(redis_server.url, namespace=namespace)
        with anyio.fail_after(20), pytest.raises(litechan.ConfigMismatch, match="layout 1") as info:
            async with litechan.connect(url):
                pass
        assert "reads layout 2" in str(info.value)
        assert client.get(f"{namespace}:spec:l:replies") == b"ttl=600.0, max_len=10000"
    finally:
        client.close()


@asyncio_only
async def test_namespaces_are_isolated(redis_base_url: str) -> None:
    """The same parent, lite topic and group in two namespaces never see each other (G10)."""
    url_a = litechan_url(redis_base_url, namespace=fresh_namespace("a"))
    url_b = litechan_url(redis_base_url, namespace=fresh_namespace("b"))
    with anyio.fail_after(20):
        async with litechan.connect(url_a) as a, litechan.connect(url_b) as b:
            assert await a.lite_topics("replies").publish("s1", b"in a") == 1
            assert await b.lite_topics("replies").publish("s1", b"in b") == 1
            audio_a = a.ordered_topic("audio", partitions=2)
            await audio_a.send("k", b"x")
            b.ordered_topic("audio", partitions=8)  # another spec is fine in another namespace
            async with b.lite_topics("replies").subscriber(group="gw", name="gw") as sub:
                channel = await sub.subscribe("s1", start="earliest")
                msg = await anext(aiter(channel))
                assert msg.payload == b"in b"
                await msg.ack()
            assert (await b.lite_topics("replies").stats()).topics == 1
            assert (await audio_a.stats()).length == 1
