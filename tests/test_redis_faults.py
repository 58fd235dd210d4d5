"""Faults across real processes on real Redis servers, through litechan's public API only.

SIGKILLed gateways and workers (child processes), a network cut through a TCP proxy, a server
restarted empty, and garbage written into litechan's streams by another program. Children report
progress as JSON lines (:mod:`redis_procs`); the tests wait on those events and on received
messages, never on sleeps. Everything runs on asyncio: redis-py's client is asyncio-only.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec
import pytest
import redis.asyncio
from redis_procs.children import Child, Event, spawn
from redis_support import (
    RedisServer,
    TcpProxy,
    delete_namespace,
    fresh_namespace,
    litechan_url,
    namespace_of,
    plain_redis_url,
    xadd_after_last,
)
from structlog.testing import capture_logs

import litechan

# Async tests run on asyncio only (redis-py's client is asyncio-only); sync ones ignore this.
pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

T = TypeVar("T")

PARENT = "replies"
TTL = 600.0
MAX_LEN = 10_000
LEASE = 2.0
#: How much longer than the lease a dead worker's partitions may take to move.
TAKEOVER_MARGIN = 4.0


# ---------------------------------------------------------------------------------------------
# helpers


async def take(messages: AsyncIterator[T], count: int, what: str, *, limit: float = 20) -> list[T]:
    """The next *count* items of *messages*, failing clearly if they do not all come in time."""
    out: list[T] = []
    with anyio.move_on_after(limit):
        while len(out) < count:
            try:
                out.append(await anext(messages))
            except StopAsyncIteration:
                raise AssertionError(f"{what}: ended after {len(out)} of {count}") from None
        return out
    raise AssertionError(f"{what}: got {len(out)} of {count} within {limit} s")


async def take_acking(
    messages: AsyncIterator[litechan.Message], count: int, what: str, *, limit: float = 20
) -> list[litechan.Message]:
    """The next *count* requests, each acked as it comes (a key's next one waits for that)."""
    out: list[litechan.Message] = []
    with anyio.fail_after(limit):
        while len(out) < count:
            (msg,) = await take(messages, 1, f"{what} ({len(out)} of {count} so far)", limit=limit)
            await msg.ack()
            out.append(msg)
    return out


def latest(child: Child, ev: str) -> Event | None:
    """The most recent event named *ev* the child reported, if any."""
    found = child.of(ev)
    return found[-1] if found else None


async def until(
    condition: Callable[[], bool], children: list[Child], what: str, limit: float
) -> None:
    """Wait until *condition* holds, re-checking whenever one of *children* reports an event."""
    with anyio.move_on_after(limit):
        while not condition():
            waits = [child.changed() for child in children]
            if any(child.eof for child in children):
                dead = next(child for child in children if child.eof)
                raise dead.failure(f"exited while waiting for {what}")
            async with anyio.create_task_group() as tg:

                async def first(event: anyio.Event, scope: anyio.CancelScope) -> None:
                    await event.wait()
                    scope.cancel()

                for event in waits:
                    tg.start_soon(first, event, tg.cancel_scope)
        return
    details = "; ".join(f"{c.name}: {c.events[-3:]}" for c in children)
    raise AssertionError(f"not {what} within {limit} s ({details})")


def keys_by_partition(partitions: int, per_partition: int) -> list[str]:
    """Session ids such that every partition holds exactly *per_partition* of them."""
    found: dict[int, list[str]] = defaultdict(list)
    index = 0
    while any(len(found[p]) < per_partition for p in range(partitions)):
        key = f"sess-{index:05d}"
        partition = litechan.partition_for(key, partitions)
        if len(found[partition]) < per_partition:
            found[partition].append(key)
        index += 1
    return [key for p in range(partitions) for key in found[p]]


def without_adjacent_duplicates(values: list[T]) -> list[T]:
    """*values* with every run of equal neighbours collapsed to one (at-least-once retries)."""
    return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]


async def stream_keys(admin: redis.asyncio.Redis, namespace: str) -> list[bytes]:
    """Every key of type stream whose name contains *namespace*."""
    return sorted(
        [key async for key in admin.scan_iter(match=f"*{namespace}*", count=1000, _type="STREAM")]
    )


def litechan_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The captured log events of litechan at warning level or above."""
    return [
        entry
        for entry in logs
        if str(entry.get("event", "")).startswith("litechan.")
        and entry.get("log_level") in ("warning", "error", "critical", "exception")
    ]


#: Entries another program might write into a stream: undecodable body, no body, wrong shape.
GARBAGE: list[dict[str | bytes, str | bytes | int]] = [
    {"b": b"\xc1\xc1 not msgpack \xff"},
    {"junk": "no body field at all"},
    {
        "b": msgspec.msgpack.encode(
            {"what": ["a", "valid", "msgpack", "of", "the", "wrong", "shape"]}
        )
    },
]


# ---------------------------------------------------------------------------------------------
# 1. a gateway process SIGKILLed mid-stream


@asyncio_only
async def test_killed_subscriber_unacked_replies_resume_in_order(redis_url: str) -> None:
    """A SIGKILLed gateway loses nothing: the next one resumes after its last ack (G3 G6 G7)."""
    # acks=sync: the child reports "acked" once the ack is on the server, so the kill can
    # follow that event (with acks=async a crash may redeliver what was acked just before).
    url = litechan_url(redis_url, lease=LEASE, acks="sync")
    ack_upto = 12
    with anyio.fail_after(90):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
            for i in range(1, 31):
                assert await replies.publish("sess-a", b"sess-a:%d" % i) == i
            for i in range(1, 11):
                assert await replies.publish("sess-b", b"sess-b:%d" % i) == i
            cfg = {
                "url": url,
                "parent": PARENT,
                "ttl": TTL,
                "max_len": MAX_LEN,
                "group": "gateways",
                "name": "gw-a",
                "topic": "sess-a",
                "ack_upto": ack_upto,
            }
            async with spawn("lite_subscriber", cfg, name="gw-a") as gw_a:
                await gw_a.wait_for("acked", lambda e: e["offset"] == ack_upto, limit=30)
                await gw_a.wait_for("got", lambda e: e["offset"] == 30, limit=30)

                for i in range(31, 36):  # while gw-a is alive, holding un-acked replies
                    assert await replies.publish("sess-a", b"sess-a:%d" % i) == i
                gw_a.kill()
                await gw_a.process.wait()
            seen_by_a = gw_a.of("got")
            assert [e["offset"] for e in seen_by_a][:30] == list(range(1, 31))
            assert {e["lite_topic"] for e in seen_by_a} == {"sess-a"}
            assert [e["offset"] for e in gw_a.of("acked")] == list(range(1, ack_upto + 1))
            epoch = seen_by_a[0]["epoch"]

            for i in range(36, 41):  # while no gateway of the group is alive
                assert await replies.publish("sess-a", b"sess-a:%d" % i) == i

            async with replies.subscriber(group="gateways", name="gw-b") as gw_b:
                channel = await gw_b.subscribe("sess-a")
                messages = aiter(channel)
                resumed = await take(messages, 40 - ack_upto, "sess-a on gw-b")
                assert [m.offset for m in resumed] == list(range(ack_upto + 1, 41))
                assert [m.payload for m in resumed] == [
                    b"sess-a:%d" % i for i in range(ack_upto + 1, 41)
                ]
                assert {m.lite_topic for m in resumed} == {"sess-a"}
                assert {m.epoch for m in resumed} == {epoch}
                assert all(m.gap_before == 0 for m in resumed)
                for msg in resumed:
                    await msg.ack()
                # Nothing else is queued before the next publish: no duplicate, no stray.
                assert await replies.publish("sess-a", b"sentinel") == 41
                (sentinel,) = await take(messages, 1, "sentinel")
                assert (sentinel.offset, sentinel.payload) == (41, b"sentinel")
                assert channel.end_reason is None

                # The other lite topic was untouched by gw-a: all of it, only it.
                other = aiter(await gw_b.subscribe("sess-b"))
                b_messages = await take(other, 10, "sess-b on gw-b")
                assert [m.payload for m in b_messages] == [b"sess-b:%d" % i for i in range(1, 11)]
                assert {m.lite_topic for m in b_messages} == {"sess-b"}


@asyncio_only
async def test_ack_returned_before_a_crash_is_not_redelivered(redis_url: str) -> None:
    """With acks=sync, a reply whose ack() returned is never redelivered after a crash (G3)."""
    url = litechan_url(redis_url, lease=LEASE, acks="sync")
    ack_upto = 5
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
            for i in range(1, 11):
                await replies.publish("sess-a", b"sess-a:%d" % i)
            cfg = {
                "url": url,
                "parent": PARENT,
                "ttl": TTL,
                "max_len": MAX_LEN,
                "group": "gateways",
                "name": "gw-a",
                "topic": "sess-a",
                "ack_upto": ack_upto,
                "die_after_ack": True,  # SIGKILL itself as soon as ack(ack_upto) returned
            }
            async with spawn("lite_subscriber", cfg, name="gw-a") as gw_a:
                await gw_a.process.wait()
            assert gw_a.process.returncode == -signal.SIGKILL, gw_a.stderr_tail()
            assert [e["offset"] for e in gw_a.of("acked")] == list(range(1, ack_upto + 1))
            async with replies.subscriber(group="gateways", name="gw-b") as gw_b:
                resumed = aiter(await gw_b.subscribe("sess-a"))
                (first,) = await take(resumed, 1, "sess-a on gw-b")
                assert first.offset == ack_upto + 1, (
                    f"gw-b resumed at offset {first.offset}: acks whose ack() had returned "
                    f"in the dead gateway were lost (want {ack_upto + 1})"
                )


# ---------------------------------------------------------------------------------------------
# 2. a worker process SIGKILLed while owning partitions


@asyncio_only
async def test_killed_worker_partitions_move_and_nothing_is_lost(redis_url: str) -> None:
    """A SIGKILLed worker's partitions move within the lease; all acked once, in key order."""
    url = litechan_url(redis_url, lease=LEASE, acks="sync")  # "acked" events: on the server
    partitions = 8
    keys = keys_by_partition(partitions, per_partition=3)
    per_key = 16
    half = per_key // 2
    everything = {f"{key}:{seq}" for key in keys for seq in range(per_key)}
    base = {"url": url, "topic": "audio", "partitions": partitions, "group": "asr"}
    all_partitions = list(range(partitions))

    def owned(child: Child) -> set[int]:
        event = latest(child, "partitions")
        return set(event["partitions"]) if event else set()

    with anyio.fail_after(100):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=partitions)
            async with (
                spawn("ordered_worker", {**base, "name": "victim", "ack_first": 15}) as victim,
                spawn(
                    "ordered_worker", {**base, "name": "survivor", "ack_first": None}
                ) as survivor,
            ):
                await victim.wait_for("ready", limit=30)
                await survivor.wait_for("ready", limit=30)
                await until(
                    lambda: (
                        bool(owned(victim))
                        and bool(owned(survivor))
                        and not owned(victim) & owned(survivor)
                        and sorted(owned(victim) | owned(survivor)) == all_partitions
                    ),
                    [victim, survivor],
                    "partitions split between both workers",
                    limit=30,
                )
                victim_partitions = owned(victim)

                for seq in range(half):
                    for key in keys:
                        await audio.send(key, f"{key}:{seq}".encode())
                await victim.wait_for("holding", limit=30)
                assert len(victim.of("acked")) == 15

                killed_at = victim.kill()
                await victim.process.wait()

                for seq in range(half, per_key):
                    for key in keys:
                        await audio.send(key, f"{key}:{seq}".encode())

                took_over = await survivor.wait_for(
                    "partitions",
                    lambda e: e["t"] > killed_at and e["partitions"] == all_partitions,
                    limit=LEASE + TAKEOVER_MARGIN + 5,
                )
                takeover_seconds = took_over["t"] - killed_at

                def all_acked() -> bool:
                    acked = {e["payload"] for e in victim.of("acked") + survivor.of("acked")}
                    return acked >= everything

                await until(all_acked, [survivor], "every message acked", limit=60)
                assert await survivor.stop() == 0

        assert takeover_seconds <= LEASE + TAKEOVER_MARGIN, (
            f"the survivor took {takeover_seconds:.2f} s to own every partition (lease {LEASE} s)"
        )
        acks = victim.of("acked") + survivor.of("acked")
        counts = Counter(e["payload"] for e in acks)
        assert set(counts) == everything
        twice = sorted(p for p, n in counts.items() if n > 1)
        assert not twice, f"acked messages delivered and acked again: {twice}"

        # Per key, the acked deliveries in the order they were received (stamps are taken
        # before ack() is called, and the next message of a key is delivered only after that
        # ack) are exactly the send order, whichever process acked them.
        by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for e in acks:
            key, seq = e["payload"].rsplit(":", 1)
            by_key[key].append((e["got_t"], int(seq)))
        for key in keys:
            assert [seq for _, seq in sorted(by_key[key])] == list(range(per_key)), key

        # What the victim held un-acked went to the survivor, redelivered (count raised).
        held = {e["payload"] for e in victim.of("holding")}
        assert held
        first_to_survivor: dict[str, Event] = {}
        for e in survivor.of("got"):
            first_to_survivor.setdefault(e["payload"], e)
        for payload in held:
            assert first_to_survivor[payload]["delivery_count"] >= 2, payload
            assert first_to_survivor[payload]["t"] > killed_at
        # Nothing of the victim's partitions reached the survivor while the victim was alive.
        for e in survivor.of("got"):
            if e["partition"] in victim_partitions:
                assert e["t"] > killed_at, e
        print(f"takeover after SIGKILL: {takeover_seconds:.2f} s (lease {LEASE} s)")


# ---------------------------------------------------------------------------------------------
# 3. the network to Redis cut for 2 s


@asyncio_only
async def test_two_second_cut_is_survived_within_retry(redis_server: RedisServer) -> None:
    """With retry=5 a 2 s cut raises nothing; every message is then delivered, in order."""
    namespace = fresh_namespace("cut-retry")
    with TcpProxy.for_server(redis_server) as proxy:
        url = litechan_url(proxy.url, namespace=namespace, lease=LEASE, retry=5)
        try:
            with anyio.fail_after(60):
                stats = await _publish_through_a_cut(proxy, url)
        finally:
            delete_namespace(redis_server.url, namespace)
    assert stats["slowest"] >= 1.0, f"no publish was held up by the cut: {stats}"
    print(f"cut survived: {stats}")


async def _publish_through_a_cut(proxy: TcpProxy, url: str) -> dict[str, Any]:
    keys = ["k0", "k1", "k2", "k3"]
    published = 0
    slowest = 0.0
    lite_received: list[tuple[int, int]] = []  # (offset, payload index)
    ordered_received: list[tuple[str, int, int]] = []  # (key, payload index, delivery count)
    warmed_up, enough_after, all_in = anyio.Event(), anyio.Event(), anyio.Event()
    stop_publishing = anyio.Event()
    restored_at: int | None = None
    final: int | None = None

    def check_done() -> None:
        if (
            final is not None
            and lite_received
            and lite_received[-1][1] == final
            and {index for _, index, _ in ordered_received} >= set(range(final + 1))
        ):
            all_in.set()

    async with litechan.connect(url) as producer, litechan.connect(url) as reader:
        replies_out = producer.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
        audio_out = producer.ordered_topic("audio", partitions=4)
        replies_in = reader.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
        audio_in = reader.ordered_topic("audio", partitions=4)

        async def publisher() -> None:
            nonlocal published, slowest, final
            index = 0
            while not stop_publishing.is_set():
                started = time.monotonic()
                await replies_out.publish("sess-1", b"%d" % index)
                await audio_out.send(keys[index % 4], b"%d" % index, dedupe_id=f"m{index}")
                slowest = max(slowest, time.monotonic() - started)
                published = index + 1
                if restored_at is not None and published >= restored_at + 20:
                    enough_after.set()
                index += 1
                await anyio.sleep(0.01)  # pacing of the workload, not synchronisation
            final = published - 1
            check_done()

        async def lite_reader(channel: litechan.Channel) -> None:
            async for msg in channel:
                lite_received.append((msg.offset, int(msg.payload)))
                await msg.ack()
                if len(lite_received) >= 20:
                    warmed_up.set()
                check_done()

        async def ordered_reader(consumer: litechan.Consumer) -> None:
            async for msg in consumer:
                ordered_received.append((msg.key, int(msg.payload), msg.delivery_count))
                await msg.ack()
                check_done()

        async with (
            replies_in.subscriber(group="gateways", name="gw-1") as subscriber,
            audio_in.consumer(group="asr", name="w-1") as consumer,
        ):
            channel = await subscriber.subscribe("sess-1")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lite_reader, channel)
                tg.start_soon(ordered_reader, consumer)
                tg.start_soon(publisher)
                await warmed_up.wait()
                proxy.cut(2.0)  # the proxy restores the network itself after 2 s
                assert await anyio.to_thread.run_sync(proxy.wait_restored, 10.0)
                restored_at = published
                await enough_after.wait()
                stop_publishing.set()
                await all_in.wait()
                tg.cancel_scope.cancel()
            assert channel.end_reason is None

    lite_indexes = [index for _, index in lite_received]
    assert without_adjacent_duplicates(lite_indexes) == list(range(published))
    offsets = [offset for offset, _ in lite_received]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), "offsets skip or repeat"
    for key_number, key in enumerate(keys):
        seen = [index for k, index, _ in ordered_received if k == key]
        expected = list(range(key_number, published, 4))
        assert without_adjacent_duplicates(seen) == expected, key
    return {
        "published": published,
        "slowest": round(slowest, 2),
        "lite_duplicates": len(lite_indexes) - len(set(lite_indexes)),
        "ordered_redeliveries": sum(1 for *_, count in ordered_received if count > 1),
    }


@asyncio_only
async def test_two_second_cut_raises_broker_unavailable_past_retry(
    redis_server: RedisServer,
) -> None:
    """With retry=0.5 a 2 s cut makes publish raise BrokerUnavailable after retry, and a send
    made when the outage had lasted longer than retry raise at once; then it recovers."""
    namespace = fresh_namespace("cut-raise")
    with TcpProxy.for_server(redis_server) as proxy:
        url = litechan_url(proxy.url, namespace=namespace, lease=LEASE, retry=0.5)
        try:
            with anyio.fail_after(60):
                async with litechan.connect(url) as producer, litechan.connect(url) as reader:
                    replies = producer.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
                    audio = producer.ordered_topic("audio", partitions=4)
                    async with reader.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN).subscriber(
                        group="gateways", name="gw-1"
                    ) as subscriber:
                        channel = await subscriber.subscribe("sess-1")
                        messages = aiter(channel)
                        await replies.publish("sess-1", b"before")
                        (first,) = await take(messages, 1, "before the cut")
                        assert first.payload == b"before"
                        await first.ack()
                        await audio.send("k1", b"before")

                        proxy.cut(2.0)  # restored by the proxy itself after 2 s
                        cut_at = time.monotonic()
                        with pytest.raises(litechan.BrokerUnavailable):
                            await replies.publish("sess-1", b"refused")
                        publish_failed_after = time.monotonic() - cut_at
                        started = time.monotonic()
                        with pytest.raises(litechan.BrokerUnavailable):
                            await audio.send("k1", b"refused")
                        send_failed_after = time.monotonic() - started
                        assert time.monotonic() - cut_at < 2.0
                        assert await anyio.to_thread.run_sync(proxy.wait_restored, 10.0)

                        offset, _ = await publish_when_served(replies, b"after")
                        assert (await audio.send("k1", b"after")).offset >= 2
                        rest = await take(messages, 1, "after the cut")
                        while rest[-1].payload == b"refused":  # a raised publish may still land
                            rest += await take(messages, 1, "after the cut")
                        assert (rest[-1].payload, rest[-1].offset) == (b"after", offset)
                        assert channel.end_reason is None
        finally:
            delete_namespace(redis_server.url, namespace)
    assert 0.25 <= publish_failed_after <= 1.9, publish_failed_after
    assert send_failed_after < 0.25, send_failed_after  # the outage was older than retry
    print(f"BrokerUnavailable after {publish_failed_after:.2f} s / {send_failed_after:.2f} s")


async def publish_when_served(
    replies: litechan.LiteTopics, payload: bytes, *, topic: str = "sess-1", limit: float = 10
) -> tuple[int, list[str]]:
    """Publish as an application would while the server comes back: retry on BrokerUnavailable
    (a call made when an outage is older than ``retry`` raises at once) at a steady pace, for at
    most *limit* seconds. Returns the offset and the messages of the refusals."""
    refusals: list[str] = []
    with anyio.fail_after(limit):
        while True:
            try:
                return await replies.publish(topic, payload), refusals
            except litechan.BrokerUnavailable as exc:
                refusals.append(str(exc))
            await anyio.sleep(0.05)  # an application's pace of retrying


# ---------------------------------------------------------------------------------------------
# 4. Redis restarted empty


@asyncio_only
async def test_server_restarted_empty(own_redis_server: RedisServer) -> None:
    """Redis restarted empty: channels end EXPIRED, topics restart at 1, consumers go on."""
    url = litechan_url(own_redis_server.url, lease=LEASE)
    with anyio.fail_after(60):
        async with litechan.connect(url) as producer, litechan.connect(url) as reader:
            replies_out = producer.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
            audio_out = producer.ordered_topic("audio", partitions=4)
            replies_in = reader.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
            audio_in = reader.ordered_topic("audio", partitions=4)
            async with (
                replies_in.subscriber(group="gateways", name="gw-1") as subscriber,
                audio_in.consumer(group="asr", name="w-1") as consumer,
            ):
                channel = await subscriber.subscribe("sess-1")
                lite = aiter(channel)
                work = aiter(consumer)
                for i in range(1, 4):
                    assert await replies_out.publish("sess-1", b"old-%d" % i) == i
                    await audio_out.send("k1", b"old-%d" % i)
                old = await take(lite, 3, "replies before the restart")
                assert [m.offset for m in old] == [1, 2, 3]
                for msg in old:
                    await msg.ack()
                old_epoch = old[0].epoch
                requests = await take_acking(work, 3, "requests before the restart")
                assert [m.payload for m in requests] == [b"old-1", b"old-2", b"old-3"]

                own_redis_server.restart()
                restarted_at = time.monotonic()

                leftovers: list[litechan.LiteMessage] = []
                with anyio.move_on_after(20):
                    leftovers.extend([msg async for msg in lite])
                ended_after = time.monotonic() - restarted_at
                assert channel.end_reason is litechan.EndReason.EXPIRED, (
                    f"the channel of a lite topic wiped by a restart is {channel.end_reason} "
                    f"after {ended_after:.1f} s (want EXPIRED)"
                )
                assert not leftovers

                assert await replies_out.publish("sess-1", b"new-1") == 1
                again = aiter(await subscriber.subscribe("sess-1"))
                (new,) = await take(again, 1, "the reply after the restart")
                assert (new.offset, new.payload) == (1, b"new-1")
                assert new.epoch != old_epoch
                await new.ack()

                for i in range(1, 4):
                    await audio_out.send("k1", b"new-%d" % i)
                fresh = await take_acking(work, 3, "requests after the restart")
                assert [m.payload for m in fresh] == [b"new-1", b"new-2", b"new-3"]
    print(f"channel ended EXPIRED {ended_after:.2f} s after the restart")


# ---------------------------------------------------------------------------------------------
# 5. garbage written into litechan's streams


#: Elements another program might push onto a lite topic's list: not msgpack, msgpack of the
#: wrong shape, and a well-formed record claiming an offset that is not its own.
LIST_GARBAGE: list[bytes] = [
    b"\xc1\xc1 not msgpack \xff",
    msgspec.msgpack.encode({"what": "the wrong shape"}),
    msgspec.msgpack.encode((999, b"a forged record", None, 0.0)),
]


async def list_keys(admin: redis.asyncio.Redis, namespace: str) -> list[bytes]:
    """Every key of type list whose name contains *namespace*."""
    return sorted(
        [key async for key in admin.scan_iter(match=f"*{namespace}*", count=1000, _type="LIST")]
    )


@asyncio_only
async def test_garbage_in_a_lite_topic_list(redis_url: str) -> None:
    """Garbage pushed onto a lite topic's list takes offsets and is skipped with a warning when
    read, live or catching up; valid replies flow on, in order (G12)."""
    namespace = namespace_of(redis_url)
    admin = redis.asyncio.Redis.from_url(plain_redis_url(redis_url))
    try:
        with capture_logs() as logs, anyio.fail_after(30):
            async with litechan.connect(redis_url) as broker:
                replies = broker.lite_topics(PARENT, ttl=TTL, max_len=MAX_LEN)
                async with replies.subscriber(group="gateways", name="gw-1") as live:
                    channel = await live.subscribe("sess-1")
                    messages = aiter(channel)
                    await replies.publish("sess-1", b"valid-1")
                    lists = await list_keys(admin, namespace)
                    assert len(lists) == 1, f"one lite topic, one list: {lists}"
                    await admin.rpush(lists[0], *LIST_GARBAGE)
                    await replies.publish("sess-1", b"valid-2")
                    await replies.publish("sess-1", b"valid-3")
                    got = await take(messages, 3, "valid replies around garbage")
                    assert [m.payload for m in got] == [b"valid-1", b"valid-2", b"valid-3"]
                    assert [m.offset for m in got] == [1, 5, 6]  # the garbage took 2..4
                    for msg in got:
                        await msg.ack()
                    last = await replies.publish("sess-1", b"valid-4")
                    (fourth,) = await take(messages, 1, "a reply after the garbage")
                    assert (fourth.payload, fourth.offset) == (b"valid-4", last)
                    await fourth.ack()
                    assert channel.end_reason is None

                # A group reading it all from the start (the catch-up path) skips it too.
                async with replies.subscriber(group="audit", name="audit-1") as audit:
                    from_start = aiter(await audit.subscribe("sess-1", start="earliest"))
                    replay = await take(from_start, 4, "catch-up past garbage")
                    assert [m.payload for m in replay] == [b"valid-%d" % i for i in range(1, 5)]
                    for msg in replay:
                        await msg.ack()
                    after = await replies.publish("sess-1", b"valid-5")
                    (fifth,) = await take(from_start, 1, "catch-up then live")
                    assert (fifth.payload, fifth.offset) == (b"valid-5", after)
                    await fifth.ack()
                # The garbage counts for no group: only valid-5, which gw-1 never read, is owed.
                stats = await replies.stats(top=2)
                assert stats.backlog == 1, stats
                assert [(lag.group, lag.backlog) for lag in stats.top] == [
                    ("gateways", 1),
                    ("audit", 0),
                ]
    finally:
        await admin.aclose()
    corrupt = [e for e in litechan_warnings(logs) if e["event"] == "litechan.lite.corrupt_entry"]
    assert corrupt, f"no litechan warning logged for garbage: {logs}"


@asyncio_only
async def test_garbage_in_a_partition_stream(redis_url: str) -> None:
    """Garbage in a partition stream is dead-lettered with a warning, blocks no key (G12)."""
    namespace = namespace_of(redis_url)
    partitions = 4
    key = "sess-1"
    partition = litechan.partition_for(key, partitions)
    neighbour = next(
        f"sess-{i}"
        for i in range(2, 10_000)
        if litechan.partition_for(f"sess-{i}", partitions) == partition
    )
    admin = redis.asyncio.Redis.from_url(plain_redis_url(redis_url))
    try:
        with capture_logs() as logs, anyio.fail_after(30):
            async with litechan.connect(redis_url) as broker:
                audio = broker.ordered_topic("audio", partitions=partitions)
                async with audio.consumer(group="asr", name="w-1") as consumer:
                    work = aiter(consumer)
                    first = await audio.send(key, b"valid-1")
                    assert first.partition == partition
                    (msg,) = await take(work, 1, "the first request")
                    await msg.ack()
                    streams = await stream_keys(admin, namespace)
                    assert len(streams) == 1, f"one partition written, one stream: {streams}"
                    for fields in GARBAGE:
                        await anyio.to_thread.run_sync(_xadd_sync, redis_url, streams[0], fields)
                    await audio.send(key, b"valid-2")
                    await audio.send(neighbour, b"valid-3")
                    await audio.send(key, b"valid-4")
                    got = await take_acking(work, 3, "valid requests around garbage")
                    assert sorted(m.payload for m in got) == [b"valid-2", b"valid-3", b"valid-4"]
                    mine = [m.payload for m in got if m.key == key]
                    assert mine == [b"valid-2", b"valid-4"]

                    # The consumer dead-letters garbage as it fetches it, on its broker's one
                    # connection (FIFO): valid-4 was fetched after it, so this read sees it.
                    dead = await audio.dead_letters("asr")
                    assert len(dead) == len(GARBAGE), dead
                    assert all(letter.partition == partition for letter in dead)
                    assert all(letter.reason for letter in dead)
                    assert not {letter.payload for letter in dead} & {b"valid-2", b"valid-4"}

                    await audio.send(key, b"valid-5")
                    (fifth,) = await take(work, 1, "a request after the garbage")
                    assert fifth.payload == b"valid-5"
                    await fifth.ack()
                    assert (await audio.stats()).lag("asr") == 0
    finally:
        await admin.aclose()
    assert litechan_warnings(logs), f"no litechan warning logged for garbage: {logs}"


def _xadd_sync(url: str, key: bytes, fields: dict[str | bytes, str | bytes | int]) -> str:
    client = redis.Redis.from_url(plain_redis_url(url))
    try:
        return xadd_after_last(client, key, fields)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# 6. a deadline passing around an open broker


#: Opens a broker (and a consumer holding a message, or a subscriber) inside a 0.3 s deadline,
#: then reports how long leaving took. Run in a child so that a hang cannot hang the suite.
_DEADLINE_SCRIPT = """
import sys, time, anyio, litechan

async def main(url, what):
    started = time.monotonic()
    with anyio.move_on_after(0.3):
        async with litechan.connect(url) as broker:
            if what == "consumer":
                topic = broker.ordered_topic("audio", partitions=4)
                await topic.send("k", b"x")
                async with topic.consumer(group="asr", name="w-1") as consumer:
                    async for msg in consumer:
                        await anyio.sleep_forever()  # holding a message when the deadline passes
            elif what == "subscriber":
                replies = broker.lite_topics("replies")
                await replies.publish("sess-1", b"x")
                async with replies.subscriber(group="gateways", name="gw-1") as subscriber:
                    async for msg in await subscriber.subscribe("sess-1"):
                        await anyio.sleep_forever()
            else:
                await anyio.sleep_forever()
    print(f"left after {time.monotonic() - started:.2f} s", flush=True)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("what", ["broker", "consumer", "subscriber"])
def test_deadline_around_an_open_broker_does_not_hang(redis_url: str, what: str) -> None:
    """A deadline (cancel scope) passing around an open broker ends it promptly, never hangs."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _DEADLINE_SCRIPT, redis_url, what],
            capture_output=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"leaving `async with connect()` ({what} open) after its deadline passed hangs: "
            "still there 15 s later (killed)"
        ) from None
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    left_after = float(output.split("left after ")[1].split()[0])
    assert left_after < 3.0, output


@asyncio_only
async def test_foreign_entry_past_every_offset_refuses_sends_until_deleted(redis_url: str) -> None:
    """An entry another program added with a time-based id makes every send to its partition
    raise CorruptEntry naming it (sends batched with it included), and sends work again once it
    is deleted and the stream's last id set back (G12)."""
    namespace = namespace_of(redis_url)
    admin = redis.asyncio.Redis.from_url(plain_redis_url(redis_url))
    try:
        with anyio.fail_after(30):
            async with litechan.connect(redis_url) as broker:
                audio = broker.ordered_topic("audio", partitions=1)
                assert (await audio.send("k", b"one")).offset == 1
                (stream,) = await stream_keys(admin, namespace)
                foreign = (await admin.xadd(stream, {"x": "1"})).decode()  # id "<ms>-0"
                outcomes = await gather_outcomes(
                    *(audio.send("k", b"refused-%d" % i) for i in range(3))
                )
                for outcome in outcomes:
                    assert isinstance(outcome, litechan.CorruptEntry), outcome
                    assert foreign in str(outcome), outcome
                await admin.xdel(stream, foreign)
                await admin.execute_command("XSETID", stream, "0-1")  # what an operator does
                assert (await audio.send("k", b"two")).offset == 2
    finally:
        await admin.aclose()


async def gather_outcomes(*calls: Awaitable[object]) -> list[object]:
    """Each call's result, or the exception it raised."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


@asyncio_only
async def test_a_lite_topic_key_of_another_type_makes_publish_raise_corrupt_entry(
    redis_url: str,
) -> None:
    """A value of another type stored under a lite topic's list makes publish raise
    CorruptEntry (nothing hangs, the other topics go on), and publishing works again once the
    key is deleted (G12)."""
    namespace = namespace_of(redis_url)
    admin = redis.asyncio.Redis.from_url(plain_redis_url(redis_url))
    try:
        with anyio.fail_after(30):
            async with litechan.connect(redis_url) as broker:
                replies = broker.lite_topics("replies")
                await replies.publish("sess-w", b"one")
                (key,) = [k async for k in admin.scan_iter(match=f"{{{namespace}:l:*:d:sess-w")]
                await admin.delete(key)
                await admin.set(key, "not a list")
                with pytest.raises(litechan.CorruptEntry, match="WRONGTYPE"):
                    await replies.publish("sess-w", b"two")
                assert await replies.publish("sess-other", b"fine") == 1
                await admin.delete(key)
                assert await replies.publish("sess-w", b"three") >= 1
    finally:
        await admin.aclose()
