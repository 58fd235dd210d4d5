"""Typed usage of the public API, checked by ``mypy --strict`` and never executed.

It pins the types users see (``assert_type``), so a change of a public signature or attribute type
shows up as a type-check failure. pytest does not collect it (its name has no ``test_`` prefix).
"""

from __future__ import annotations

import array
from typing import assert_type

import anyio

import litechan
import litechan.testing


async def gateway(sub: litechan.Subscriber, session_id: str) -> list[bytes]:
    """Receive one session's replies until its channel ends."""
    channel = await sub.subscribe(session_id, start="committed")
    assert_type(channel.end_reason, litechan.EndReason | None)
    assert_type(channel.lite_topic, str)
    chunks: list[bytes] = []
    async with channel:
        async for msg in channel:
            assert_type(msg, litechan.LiteMessage)
            assert_type(msg.lite_topic, str)
            assert_type(msg.offset, int)
            assert_type(msg.epoch, str)
            assert_type(msg.payload, bytes)
            assert_type(msg.headers, dict[str, str])
            assert_type(msg.published_at, float)
            assert_type(msg.gap_before, int)
            chunks.append(msg.payload)
            await msg.ack()
    if channel.end_reason is litechan.EndReason.REVOKED:
        chunks.clear()
    await sub.unsubscribe(session_id)
    await sub.subscribe(session_id, start="earliest")
    await sub.subscribe(session_id, start="latest")
    await sub.subscribe(session_id, start=1)
    assert_type(sub.lite_topics, frozenset[str])
    return chunks


async def merged(sub: litechan.Subscriber) -> int:
    """Read every owned lite topic through one loop (a worker without per-session tasks)."""
    count = 0
    async for msg in sub:
        assert_type(msg, litechan.LiteMessage)
        await msg.ack()
        count += 1
    return count


async def worker(audio: litechan.OrderedTopic, replies: litechan.LiteTopics) -> None:
    """Process requests in order per key and answer on the session's lite topic."""
    async with audio.consumer(
        group="asr", name="worker-1", ordering="key", max_in_flight=64, max_deliveries=10
    ) as consumer:
        assert_type(consumer, litechan.Consumer)
        assert_type(consumer.partitions, frozenset[int])
        async for msg in consumer:
            assert_type(msg, litechan.Message)
            assert_type(msg.key, str)
            assert_type(msg.payload, bytes)
            assert_type(msg.headers, dict[str, str])
            assert_type(msg.partition, int)
            assert_type(msg.offset, int)
            assert_type(msg.delivery_count, int)
            assert_type(msg.published_at, float)
            if not msg.payload:
                await msg.reject(reason="empty frame")
            elif msg.delivery_count > 3:
                await msg.nack(delay=1.0)
            else:
                offset = await replies.publish(msg.key, msg.payload, headers={"k": "v"})
                assert_type(offset, int)
                await msg.ack()


async def observe(audio: litechan.OrderedTopic, replies: litechan.LiteTopics) -> None:
    """Read the stats types."""
    lite = await replies.stats(top=10)
    assert_type(lite, litechan.LiteTopicsStats)
    assert_type(lite.topics, int)
    assert_type(lite.subscriptions, int)
    assert_type(lite.backlog, int)
    for lag in lite.top:
        assert_type(lag, litechan.LiteTopicLag)
        assert_type(lag.owner, str | None)
        assert_type(lag.oldest_unacked_age, float | None)
    ordered = await audio.stats()
    assert_type(ordered, litechan.OrderedTopicStats)
    for part in ordered.partitions:
        assert_type(part, litechan.PartitionStats)
        for group in part.groups.values():
            assert_type(group, litechan.GroupLag)
            assert_type(group.owner, str | None)
    dead = await audio.dead_letters("asr")
    assert_type(dead, list[litechan.DeadLetter])


async def main() -> None:
    """Open a broker with a manual clock and wire everything together."""
    clock = litechan.ManualClock(start=1_700_000_000.0)
    assert_type(clock.time(), float)
    async with litechan.connect("memory://", max_payload=1 << 20, clock=clock) as broker:
        assert_type(broker, litechan.Broker)
        audio = broker.ordered_topic("audio", partitions=16, max_len=100_000, dedupe_window=300.0)
        assert_type(audio, litechan.OrderedTopic)
        replies = broker.lite_topics("replies", ttl=600.0, max_len=10_000)
        assert_type(replies, litechan.LiteTopics)

        receipt = await audio.send("session-1", b"frame", headers={"k": "v"}, dedupe_id="r1")
        await audio.send("session-1", bytearray(b"frame"))  # any buffer is a payload
        await audio.send("session-1", memoryview(b"frame")[1:])
        await audio.send("session-1", array.array("h", [0, 1, -1]))
        await replies.publish("session-1", bytearray(b"chunk"))
        assert_type(receipt, litechan.Receipt)
        assert_type(receipt.partition, int)
        assert_type(receipt.offset, int)
        assert_type(receipt.duplicate, bool)
        assert_type(litechan.partition_for("session-1", 16), int)

        async with replies.subscriber(group="gateways", name="gw-1") as sub:
            assert_type(sub, litechan.Subscriber)
            async with anyio.create_task_group() as tg:
                tg.start_soon(gateway, sub, "session-1")
                tg.start_soon(worker, audio, replies)
                await observe(audio, replies)
                clock.advance(601.0)
                tg.cancel_scope.cancel()
    await broker.aclose()

    try:
        await audio.send("x" * 2000, b"")
    except litechan.InvalidName as exc:
        assert_type(exc, litechan.InvalidName)
    except (litechan.PayloadTooLarge, litechan.ConfigMismatch) as exc:
        assert_type(exc, litechan.PayloadTooLarge | litechan.ConfigMismatch)
    except (litechan.BrokerUnavailable, litechan.Overloaded, litechan.ResourceClosed):
        pass


async def kit(factory: litechan.testing.BackendFactory) -> None:
    """Open worlds through the conformance kit's harness."""
    async with factory() as harness:
        assert_type(harness, litechan.testing.Harness)
        async with harness.connect() as broker:
            assert_type(broker, litechan.Broker)
        await harness.advance(1.0)
    async with litechan.testing.memory_backend() as harness:
        assert_type(harness.clock, litechan.ManualClock | None)
