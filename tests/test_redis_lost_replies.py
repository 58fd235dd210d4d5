"""Replies lost on the wire, error replies of every kind, and calls that fail half-way.

A :class:`~fault_proxy.FaultProxy` between litechan and a real redis-server aims each fault at
one command: the command runs on the server and its reply is lost (the connection is reset), or
the command never runs and the client gets an error reply instead. The rules proven here, for
every script the backend has, not one case at a time:

* a script whose reply can be lost is idempotent or recovered by the live client: no message is
  stranded, duplicated past at-least-once, or handed out of order (G1, G3);
* a transient error reply is an outage: the work goes on once the server serves again;
* a refusal reaches the caller that made the call (``acks=sync`` included), nothing else dies;
* a call that raised leaves no state behind, here or on the server (G4).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import anyio
import pytest
from fault_proxy import FaultProxy, Match, command, evalsha
from redis_support import RedisServer, delete_namespace, fresh_namespace, litechan_url
from structlog.testing import capture_logs
from test_redis_faults import take, without_adjacent_duplicates

import litechan
from litechan._backends.redis._scripts import SCRIPTS

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

LEASE = 2.0


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the suite's redis-server."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def proxied_url(redis_server: RedisServer, proxy: FaultProxy) -> Iterator[str]:
    """A litechan URL through the proxy, in a namespace of its own (deleted afterwards)."""
    namespace = fresh_namespace("lost")
    yield litechan_url(proxy.url, namespace=namespace, lease=LEASE, socket_timeout=1, retry=5)
    delete_namespace(redis_server.url, namespace)


def script(name: str) -> Match:
    """Match calls of the backend's script *name* (flagged: the server is Redis 7)."""
    (found,) = [s for s in SCRIPTS if s.name == name]
    return evalsha(found.sha)


# ---------------------------------------------------------------------------------------------
# the workload every fault is aimed at


class Workload:
    """Requests and replies through one broker, each checked end to end.

    Requests: 3 keys x 6 messages on 2 partitions, one consumer acking each (one nacked once,
    one rejected). Replies: 2 sessions x 6 messages, one gateway acking each; one session is
    unsubscribed half-way and subscribed again. At the end every request was handed out in key
    order and is acked (or a dead letter), every reply was received in publish order, and
    nothing is left un-acked or owned. A publish or send whose reply was lost may be stored
    twice (at-least-once; sends carry dedupe ids); a message may come again only right after
    itself (a redelivery of what was not acked yet).
    """

    KEYS = ("ka", "kb", "kc")
    SESSIONS = ("s1", "s2")
    PER = 6

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: dict[str, list[str]] = defaultdict(list)
        self.replies: dict[str, list[str]] = defaultdict(list)
        self.all_requests = anyio.Event()
        self.halfway = anyio.Event()

    async def run(self) -> None:
        async with litechan.connect(self.url) as broker:
            audio = broker.ordered_topic("audio", partitions=2)
            replies = broker.lite_topics("replies", ttl=600.0)
            async with (
                audio.consumer(group="asr", name="w-1") as worker,
                replies.subscriber(group="gateways", name="gw-1") as gateway,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._consume, worker)
                channels = {s: await gateway.subscribe(s) for s in self.SESSIONS}
                for i in range(self.PER):
                    for key in self.KEYS:
                        await audio.send(key, f"{key}:{i}".encode(), dedupe_id=f"{key}/{i}")
                    for session in self.SESSIONS:
                        await replies.publish(session, f"{session}:{i}".encode())
                half = self.PER // 2
                for session, channel in channels.items():
                    await self._read(channel, session, half - 1)
                self.halfway.set()
                await gateway.unsubscribe("s2")
                channels["s2"] = await gateway.subscribe("s2")
                for session, channel in channels.items():
                    await self._read(channel, session, self.PER - 1)
                await self._all_requests()
                tg.cancel_scope.cancel()
            stats = await audio.stats()
            assert stats.lag("asr") == 0, stats
            lite = await replies.stats()
            assert (lite.backlog, lite.subscriptions) == (0, 0), lite
            assert await audio.dead_letters("asr"), "the rejected request is a dead letter"
        self._check()

    async def _consume(self, worker: litechan.Consumer) -> None:
        nacked = False
        async for msg in worker:
            payload = msg.payload.decode()
            self.requests[msg.key].append(payload)
            if all(f"{key}:{self.PER - 1}" in self.requests[key] for key in self.KEYS):
                self.all_requests.set()
            if payload == "kb:2" and not nacked:
                nacked = True
                await msg.nack()
            elif payload == "kc:4":
                await msg.reject("the test rejects kc:4")
            else:
                await msg.ack()

    async def _read(self, channel: litechan.Channel, session: str, last: int) -> None:
        """Read and ack *session*'s replies until the one numbered *last*."""
        with anyio.fail_after(20):
            async for msg in channel:
                payload = msg.payload.decode()
                self.replies[session].append(payload)
                await msg.ack()
                if payload == f"{session}:{last}":
                    return

    async def _all_requests(self) -> None:
        with anyio.fail_after(20):
            await self.all_requests.wait()

    def _check(self) -> None:
        for key in self.KEYS:
            got = without_adjacent_duplicates(self.requests[key])
            assert got == [f"{key}:{i}" for i in range(self.PER)], (key, self.requests[key])
        for session in self.SESSIONS:
            got = without_adjacent_duplicates(self.replies[session])
            assert got == [f"{session}:{i}" for i in range(self.PER)], (session, got)


#: Scripts the workload calls, each of which has its reply lost once in its own run.
LOSABLE = sorted(s.name for s in SCRIPTS if s.name not in ("lite_keep", "ordered_recover"))


@asyncio_only
@pytest.mark.parametrize("name", LOSABLE)
async def test_any_script_may_lose_its_reply(
    proxy: FaultProxy, proxied_url: str, name: str
) -> None:
    """Whichever script's reply is lost in a cut (after it ran), requests and replies all arrive
    in order, are acked, and nothing stays owned or pending (G1 G3 G4)."""
    rule = proxy.lose_reply(script(name))
    with anyio.fail_after(60):
        await Workload(proxied_url).run()
    assert rule.fired == 1, f"the workload never called {name}"


@asyncio_only
@pytest.mark.parametrize("code", ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS"])
async def test_transient_error_replies_are_outages(
    proxy: FaultProxy, proxied_url: str, code: str
) -> None:
    """A transient error reply (the command did not run) to publishes, sends, fetches and acks
    is waited out like a cut: the workload completes, nothing is lost or raised."""
    reply = f"-{code} injected by the test\r\n".encode()
    rules = [
        proxy.answer(match, reply, times=2)
        for match in (
            script("lite_publish"),
            script("ordered_send"),
            script("ordered_fetch"),
            script("lite_commit"),
            command("PING"),
        )
    ]
    with anyio.fail_after(60):
        await Workload(proxied_url).run()
    assert all(rule.fired == 2 for rule in rules), [rule.fired for rule in rules]


@asyncio_only
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("OOM", litechan.Overloaded),
        ("NOPERM", litechan.ServerError),
        ("READONLY", litechan.ServerError),
        ("ERR", litechan.ServerError),
    ],
)
async def test_sync_ack_raises_what_the_server_answered_it(
    proxy: FaultProxy, proxied_url: str, code: str, error: type[Exception]
) -> None:
    """With acks=sync, an ack the server refused raises that refusal in the acking task and
    changes nothing: the message is still the application's and its key's next message waits
    (G1); acked again, it is settled. The same holds for a reply on a lite topic (G3)."""
    url = litechan_url(proxied_url, acks="sync")
    reply = f"-{code} injected by the test\r\n".encode()
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            replies = broker.lite_topics("replies")
            await audio.send("k", b"q1")
            await audio.send("k", b"q2")
            await replies.publish("s1", b"r1")
            async with audio.consumer(group="asr", name="w-1") as worker:
                requests = aiter(worker)
                (q1,) = await take(requests, 1, "the request")
                proxy.answer(script("ordered_ack"), reply)
                with pytest.raises(error, match=code):
                    await q1.ack()
                assert worker.in_flight == 1  # q1 is still out: q2 waits behind it
                await q1.ack()
                (q2,) = await take(requests, 1, "the next request")
                assert (q2.payload, q2.delivery_count) == (b"q2", 1)
                await q2.ack()
                await audio.send("k", b"q3")  # a fetch runs: nothing of q1 may come back
                (q3,) = await take(requests, 1, "the request after")
                assert (q3.payload, q3.delivery_count) == (b"q3", 1)
                await q3.ack()
            assert (await audio.stats()).lag("asr") == 0
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                (r1,) = await take(aiter(await gateway.subscribe("s1")), 1, "the reply")
                proxy.answer(script("lite_commit"), reply)
                with pytest.raises(error, match=code):
                    await r1.ack()
                assert (await replies.stats()).backlog == 1  # not acked: still owed
            async with replies.subscriber(group="gateways", name="gw-2") as gateway:
                (again,) = await take(aiter(await gateway.subscribe("s1")), 1, "again")
                assert again.offset == 1
                await again.ack()
            assert (await replies.stats()).backlog == 0


@asyncio_only
async def test_sync_ack_during_a_long_outage_raises_at_once(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """With acks=sync, an ack made once an outage has outlasted retry raises BrokerUnavailable
    at once (it never waits forever), and acking again once the server is back works."""
    url = litechan_url(proxied_url, acks="sync", retry=0.3)
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            await audio.send("k", b"q1")
            async with audio.consumer(group="asr", name="w-1") as worker:
                (q1,) = await take(aiter(worker), 1, "the request")
                proxy.refuse()
                with pytest.raises(litechan.BrokerUnavailable):
                    await audio.send("k", b"refused")  # the outage is noticed, and outlasts retry
                with anyio.fail_after(2), pytest.raises(litechan.BrokerUnavailable):
                    await q1.ack()
                proxy.restore()
                with anyio.fail_after(10):
                    while True:
                        try:
                            await q1.ack()
                            break
                        except litechan.BrokerUnavailable:
                            await anyio.sleep(0.05)  # an application's pace of retrying
            assert (await audio.stats()).lag("asr") == 0


@asyncio_only
async def test_async_ack_refused_is_logged_and_delivered_again(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """With acks=async, an ack the server refused is logged, and its request is handed out
    again by the same consumer (at-least-once), not left pending behind a live owner. The
    application, told nothing at the time, may see it after the key's next message."""
    with anyio.fail_after(30), capture_logs() as logs:
        async with litechan.connect(proxied_url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            await audio.send("k", b"q1")
            await audio.send("k", b"q2")
            async with audio.consumer(group="asr", name="w-1") as worker:
                requests = aiter(worker)
                (q1,) = await take(requests, 1, "the request")
                rule = proxy.answer(script("ordered_ack"), b"-NOPERM injected by the test\r\n")
                await q1.ack()  # returns at once: the refusal comes later
                await rule.wait()
                (q2,) = await take(requests, 1, "the key's next request")
                assert (q2.payload, q2.delivery_count) == (b"q2", 1)
                await q2.ack()
                (again,) = await take(requests, 1, "the request whose ack was refused")
                assert (again.payload, again.delivery_count) == (b"q1", 2)
                await again.ack()
            assert (await audio.stats()).lag("asr") == 0
    assert any(
        log["event"] == "litechan.redis.command_failed" and "NOPERM" in log["error"] for log in logs
    ), logs


@asyncio_only
async def test_replies_delayed_past_socket_timeout(proxy: FaultProxy, proxied_url: str) -> None:
    """Replies held longer than socket_timeout half-way through the work (the client gives up on
    them, connects again, and they come too late) lose nothing either, and break no order."""
    workload = Workload(proxied_url)  # socket_timeout=1

    async def slow_link_for_a_while() -> None:
        await workload.halfway.wait()
        proxy.delay(1.5)
        await anyio.sleep(2.5)  # how long the link stays slow: the fault itself
        proxy.delay(0)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_link_for_a_while)
            await workload.run()


@asyncio_only
async def test_dead_letter_refused_inside_a_fetch_raises_nothing(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """A message fetched once too often is dead-lettered by the fetch itself; when the server
    refuses that, the application is told nothing, other messages go on, and the message is
    dead-lettered at a later fetch (nothing stranded)."""
    with anyio.fail_after(30):
        async with litechan.connect(proxied_url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            await audio.send("k", b"once too often")
            async with audio.consumer(group="asr", name="w-1", max_deliveries=1) as worker:
                await take(aiter(worker), 1, "the first delivery")  # left without an ack
            refused = proxy.answer(script("ordered_reject"), b"-NOPERM injected\r\n")
            async with audio.consumer(group="asr", name="w-2", max_deliveries=1) as worker:
                requests = aiter(worker)
                await audio.send("j", b"other")
                (other,) = await take(requests, 1, "the other request")
                assert other.payload == b"other"
                assert refused.fired == 1
                await other.ack()
                await audio.send("j", b"later")  # the next fetch dead-letters it again
                (later,) = await take(requests, 1, "a later request")
                assert later.payload == b"later"
                await later.ack()
            (letter,) = await audio.dead_letters("asr")
            assert letter.payload == b"once too often"
            assert (await audio.stats()).lag("asr") == 0


# ---------------------------------------------------------------------------------------------
# the cases the fault reports name


@asyncio_only
async def test_lost_fetch_reply_strands_nothing(proxy: FaultProxy, proxied_url: str) -> None:
    """A fetch whose reply is lost (it ran: the group's position moved and the entries are
    pending) strands nothing: the consumer, still the owner, hands them out (G3)."""
    rule = proxy.lose_reply(script("ordered_fetch"))
    with anyio.fail_after(30):
        async with litechan.connect(proxied_url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            for key in ("a", "b", "c"):
                await audio.send(key, key.encode())
            async with audio.consumer(group="asr", name="w-1") as worker:
                got = await take(aiter(worker), 3, "the three requests", limit=15)
                assert sorted(m.payload for m in got) == [b"a", b"b", b"c"]
                for msg in got:
                    await msg.ack()
            assert (await audio.stats()).lag("asr") == 0
    assert rule.fired == 1


@asyncio_only
async def test_half_open_link_strands_nothing(proxy: FaultProxy, proxied_url: str) -> None:
    """Replies dropped while requests still reach Redis (a half-open link), then silence: once
    the link heals the same consumer, still the owner, gets every message (G3)."""
    received, inbox = anyio.create_memory_object_stream[litechan.Message](100)
    # A long lease: no lease renewal is written in the window, the fetch is the first command.
    url = litechan_url(proxied_url, lease=30)

    async def consume(worker: litechan.Consumer) -> None:
        async for msg in worker:
            await received.send(msg)

    with anyio.fail_after(40), received, inbox:
        async with (
            litechan.connect(url) as broker,
            litechan.connect(url) as sender_broker,
        ):
            audio = broker.ordered_topic("audio", partitions=1)
            sender = sender_broker.ordered_topic("audio", partitions=1)
            async with (
                audio.consumer(group="asr", name="w-1") as worker,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(consume, worker)
                await sender.send("a", b"a")  # the sender has checked the topic's settings
                a = await inbox.receive()
                await a.ack()
                await audio.stats()  # answered after the ack (FIFO): no reply is owed now
                fetch = proxy.counter(script("ordered_fetch"))
                proxy.drop_replies(pubsub=False)  # notes still wake the consumer: it fetches
                for key in ("b", "c", "d"):
                    # The sender's replies are dropped too: sent again, found by dedupe id.
                    with anyio.move_on_after(0.2):
                        await sender.send(key, key.encode(), dedupe_id=key)
                assert fetch() > 0, "no fetch ran while the replies were dropped"
                proxy.silence()
                proxy.restore()
                got = [await inbox.receive() for _ in range(3)]
                assert sorted(m.payload for m in got) == [b"b", b"c", b"d"]
                for msg in got:
                    await msg.ack()
                tg.cancel_scope.cancel()
            assert (await audio.stats()).lag("asr") == 0


@asyncio_only
async def test_subscribe_that_raised_leaves_nothing_behind(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """A subscribe that raised BrokerUnavailable (it reached Redis, its reply did not) leaves no
    ownership: after the link heals the server holds no owner and nothing is renewed (G4)."""
    url = litechan_url(proxied_url, retry=0.5, socket_timeout=0.3, connect_timeout=0.3)
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            await replies.publish("s1", b"r1")
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                ran = proxy.counter(script("lite_subscribe"))
                proxy.drop_replies()
                with pytest.raises(litechan.BrokerUnavailable):
                    await gateway.subscribe("s1")
                assert ran() >= 1, "the subscribe never reached the server"
                proxy.restore()
                assert gateway.lite_topics == frozenset()
                stats = await _stats_when_back(replies)
                assert stats.subscriptions == 0, stats
                assert [lag.owner for lag in stats.top] == [None]
                channel = await gateway.subscribe("s1")  # and it works now
                (r1,) = await take(aiter(channel), 1, "the reply")
                await r1.ack()


@asyncio_only
async def test_unsubscribe_during_a_cut_takes_effect_when_back(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """An unsubscribe made while the server is unreachable ends the channel at once and gives
    the topic up on the server once it is back: no ghost owner is left (G4)."""
    url = litechan_url(proxied_url, retry=0.5)
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            await replies.publish("s1", b"r1")
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                channel = await gateway.subscribe("s1")
                gone = proxy.counter(script("lite_unsubscribe"))
                proxy.refuse()
                await gateway.unsubscribe("s1")  # returns within retry, raises nothing
                assert channel.end_reason == litechan.EndReason.UNSUBSCRIBED
                assert gateway.lite_topics == frozenset()
                proxy.restore()
                stats = await _stats_when_back(replies)
                assert gone() >= 1
                assert stats.subscriptions == 0, stats


async def _stats_when_back(replies: litechan.LiteTopics) -> litechan.LiteTopicsStats:
    """Stats once the broker is back (what was queued before them has run: FIFO)."""
    with anyio.fail_after(10):
        while True:
            try:
                return await replies.stats()
            except litechan.BrokerUnavailable:
                await anyio.sleep(0.05)  # the client reconnects with its own backoff


@asyncio_only
async def test_lost_replies_of_keep_and_recover_are_harmless(
    proxy: FaultProxy, proxied_url: str
) -> None:
    """The scripts the workload does not call by itself (the check of a subscription that waits
    for its topic, the recovery after a lost fetch) may lose their replies too."""
    keep = proxy.lose_reply(script("lite_keep"))
    url = litechan_url(proxied_url)
    with anyio.fail_after(40):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies", ttl=1.0)
            async with replies.subscriber(group="gateways", name="gw-1") as gateway:
                channel = await gateway.subscribe("later")  # waits for its first publish
                await keep.wait(limit=10)  # renewed at half the TTL: that reply was lost
                await replies.publish("later", b"r1")
                (r1,) = await take(aiter(channel), 1, "the first reply")
                await r1.ack()
                assert channel.end_reason is None
        recover = proxy.lose_reply(script("ordered_recover"))
        proxy.lose_reply(script("ordered_fetch"))  # a lost fetch makes the next one recover
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            for key in ("a", "b"):
                await audio.send(key, key.encode())
            async with audio.consumer(group="asr", name="w-1") as worker:
                got = await take(aiter(worker), 2, "both requests", limit=20)
                assert sorted(m.payload for m in got) == [b"a", b"b"]
                for msg in got:
                    await msg.ack()
            assert (await audio.stats()).lag("asr") == 0
        assert recover.fired == 1
