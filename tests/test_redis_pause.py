"""Owners paused (SIGSTOP) past their lease, or during a takeover, hand out nothing they lost.

A worker or gateway that the OS stops (a long GC pause, a VM migration, a debugger; here SIGSTOP)
wakes up with messages in its buffers that another process owns by now. The rule each owner keeps:
it fences itself, and never hands out a message whose ownership it cannot prove. A worker proves
it with its partition lease (the last renewal it sent that succeeded, on its own monotonic clock);
a gateway, which has no lease, by having read its notes channel since it last stalled.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import Context

import anyio
import pytest
import redis.asyncio
from redis_procs.children import Event, spawn
from redis_support import litechan_url, logged, namespace_of, plain_redis_url
from test_redis_faults import take

import litechan

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

LEASE = 2.0


def first_after(events: list[Event], since: float, *names: str) -> Event | None:
    """The first event named one of *names* stamped after *since*."""
    return next((e for e in events if e["t"] > since and e["ev"] in names), None)


@asyncio_only
async def test_paused_worker_hands_out_nothing_of_a_partition_it_lost(redis_url: str) -> None:
    """A worker paused past its lease never hands a key's next message out while the new owner
    holds the previous one; the key then goes on in order (G1 G4)."""
    url = litechan_url(redis_url, lease=LEASE, acks="sync")
    cfg = {
        "url": url,
        "topic": "audio",
        "partitions": 1,
        "group": "asr",
        "name": "paused",
        "ack_first": None,
        "hold": 1.0,  # z1 is being processed when the pause comes
    }
    with anyio.fail_after(90):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            for i in (1, 2, 3):  # sent first: the worker's first fetch buffers z2 and z3
                await audio.send("z", b"z%d" % i)
            async with spawn("ordered_worker", cfg, name="paused") as worker:
                await worker.wait_for("got", lambda e: e["payload"] == "z1", limit=30)
                worker.pause()
                async with audio.consumer(group="asr", name="taker") as taker:
                    messages = aiter(taker)
                    (z1,) = await take(messages, 1, "z1 on the new owner", limit=30)
                    assert (z1.payload, z1.delivery_count) == (b"z1", 2)
                    resumed_at = worker.resume()
                    # The paused worker acks its z1 (fenced) and asks for the next message. It
                    # must give the partition up, not hand out z2 while z1 is with the taker.
                    await worker.wait_for(
                        "partitions",
                        lambda e: e["t"] > resumed_at and e["partitions"] == [],
                        limit=LEASE + 10,
                    )
                    early = first_after(worker.events, resumed_at, "got")
                    assert early is None, f"the paused worker handed out {early} after resuming"
                    assert (await audio.stats()).partitions[0].groups["asr"].owner == "taker"
                    await z1.ack()
                # The taker left: the worker gets the partition back and z2, z3 in order.
                await worker.wait_for("acked", lambda e: e["payload"] == "z3", limit=LEASE + 20)
            after = [e["payload"] for e in worker.of("got") if e["t"] > resumed_at]
            print(worker.events)
            assert after == ["z2", "z3"], after
            stats = await audio.stats()
            assert (stats.partitions[0].groups["asr"].committed, stats.lag("asr")) == (3, 0)


@asyncio_only
async def test_paused_gateway_hands_out_nothing_after_a_takeover(redis_url: str) -> None:
    """A gateway paused while another takes its session over hands nothing more out once it
    runs again: its channel ends REVOKED and its late ack moves nothing (G4 G7)."""
    url = litechan_url(redis_url)  # acks=async: the late ack costs no round trip
    cfg = {
        "url": url,
        "parent": "replies",
        "ttl": 600.0,
        "max_len": 10_000,
        "group": "gateways",
        "name": "paused",
        "topic": "sess-p",
        "ack_upto": 100,
        "hold": 1.0,  # reply 1 is being written to the client when the pause comes
    }
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies", ttl=600.0, max_len=10_000)
            for i in (1, 2, 3):  # published first: the gateway's first read buffers 2 and 3
                await replies.publish("sess-p", b"r%d" % i)
            async with spawn("lite_subscriber", cfg, name="paused") as gateway:
                await gateway.wait_for("got", lambda e: e["offset"] == 1, limit=30)
                gateway.pause()
                async with replies.subscriber(group="gateways", name="taker") as taker:
                    channel = await taker.subscribe("sess-p")
                    messages = aiter(channel)
                    taken = await take(messages, 3, "the session on the new gateway")
                    assert [m.offset for m in taken] == [1, 2, 3]
                    await replies.publish("sess-p", b"r4")
                    taken += await take(messages, 1, "a reply after the takeover")
                    await anyio.sleep(1.0)  # the pause itself: longer than a scheduling hiccup
                    resumed_at = gateway.resume()
                    ended = await gateway.wait_for("ended", limit=20)
                    assert ended["reason"] == str(litechan.EndReason.REVOKED)
                    early = first_after(gateway.events, resumed_at, "got")
                    assert early is None, f"the paused gateway handed out {early} after resuming"
                    (lag,) = (await replies.stats(top=1)).top
                    assert (lag.owner, lag.backlog) == ("taker", 4), lag  # its ack moved nothing
                    for msg in taken:
                        await msg.ack()
                    assert (await replies.stats(top=1)).backlog == 0
                    assert channel.end_reason is None


def _key_in(partition: int, partitions: int) -> str:
    return next(
        f"k{i}" for i in range(1000) if litechan.partition_for(f"k{i}", partitions) == partition
    )


@asyncio_only
async def test_partition_taken_while_another_is_renewed_is_dropped_at_once(
    redis_url: str,
) -> None:
    """When one partition is taken from a consumer in the same round in which its other one is
    renewed, the consumer still drops what it holds of the lost one before handing anything else
    out (G1, G4)."""
    url = litechan_url(redis_url, lease=LEASE)
    lost, kept = _key_in(0, 2), _key_in(1, 2)
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            audio = broker.ordered_topic("audio", partitions=2)
            await audio.send(lost, b"first")
            await audio.send(lost, b"second")  # buffered behind "first": same key
            async with audio.consumer(group="asr", name="w-1") as worker:
                requests = aiter(worker)
                (first,) = await take(requests, 1, "the first request")
                assert first.payload == b"first"
                # Another consumer takes partition 0 over, as one whose claim found the lease
                # run out would: the group's state names it the owner, a generation later.
                group_key = f"{{{namespace_of(url)}:o:audio:0}}:g:asr"
                admin = redis.asyncio.Redis.from_url(plain_redis_url(url))
                with logged("litechan.ordered.lease_lost") as lease_lost:
                    try:
                        generation = int(await admin.hget(group_key, "gen") or 0)
                        await admin.hset(
                            group_key, mapping={"own": "n|other|0|other", "gen": generation + 1}
                        )
                    finally:
                        await admin.aclose()
                    await lease_lost.wait()  # its next renewal round finds out (within lease / 3)
                assert worker.partitions == {1}
                await first.ack()  # fenced on the server
                await audio.send(kept, b"kept")
                (after,) = await take(requests, 1, "the next request")
                assert after.payload == b"kept", f"handed out {after.payload!r} of a lost partition"


@asyncio_only
async def test_stalled_loop_proves_its_notes_again_by_itself(redis_url: str) -> None:
    """After the event loop stalls, the fence's timer starts a notes round trip on its own, and
    the fence is ahead again without any reader asking for it."""

    async def stall_and_recover() -> None:
        async with litechan.connect(litechan_url(redis_url)) as broker:
            backend = broker._backend
            fence, notes = backend._fence, backend._notes  # type: ignore[attr-defined]
            synced = anyio.Event()
            sync = notes.sync

            async def watched_sync() -> None:
                synced.set()
                await sync()

            notes.sync = watched_sync
            time.sleep(0.7)  # noqa: ASYNC251  # the stall itself: the loop blocked past the fence
            stalled_at = time.monotonic()
            assert fence.until < stalled_at, "the fence still covers a stalled loop"
            with anyio.fail_after(10):
                await synced.wait()  # a round started, and no reader asked for one
                await fence.confirm()  # (joins it, or one after it)
            assert fence.until > stalled_at

    # As under asyncio.run(): no context variable tells anyio which event loop a timer
    # callback runs on (the test runner sets one).
    task = asyncio.get_running_loop().create_task(stall_and_recover(), context=Context())
    await task
