"""Behaviour specific to memory:// and to the core's resource handling."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

import litechan
from litechan._alarm import Alarm
from litechan._backends import memory
from litechan._backends.memory._ordered import MAX_DEAD_LETTERS

pytestmark = pytest.mark.anyio


async def test_named_worlds_are_shared_and_dropped_with_the_last_broker() -> None:
    """memory://NAME is one world for every broker that has it open, and goes away after."""
    with anyio.fail_after(5):
        async with litechan.connect("memory://shared-world") as one:
            replies = one.lite_topics("replies")
            await replies.publish("s1", b"a")
            async with litechan.connect("memory://shared-world") as two:
                stats = await two.lite_topics("replies").stats()
                assert stats.topics == 1
        assert "shared-world" not in memory._worlds
        async with litechan.connect("memory://shared-world") as fresh:
            assert (await fresh.lite_topics("replies").stats()).topics == 0


def test_a_named_world_refuses_a_second_event_loop() -> None:
    """A broker on memory://NAME in another event loop (another thread) gets a clear
    InvalidArgument instead of a world whose wake-ups it would never see; once the first loop
    has closed it, the name is free for the other loop."""
    opened, release = threading.Event(), threading.Event()
    refused: list[BaseException] = []

    async def hold() -> None:
        async with litechan.connect("memory://one-loop-world"):
            opened.set()
            await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)

    async def second() -> None:
        try:
            async with litechan.connect("memory://one-loop-world"):
                pass
        except litechan.InvalidArgument as exc:
            refused.append(exc)

    holder = threading.Thread(target=anyio.run, args=(hold,))
    holder.start()
    try:
        assert opened.wait(10)
        anyio.run(second)
    finally:
        release.set()
        holder.join(10)
    assert len(refused) == 1
    assert "another event loop" in str(refused[0])
    anyio.run(second)  # the world went away with its last broker: no refusal now
    assert len(refused) == 1


async def test_private_worlds_are_isolated() -> None:
    """Two memory:// brokers without a name never see each other's topics (G10)."""
    with anyio.fail_after(5):
        async with litechan.connect("memory://") as a, litechan.connect("memory://") as b:
            await a.lite_topics("replies").publish("s1", b"a")
            assert (await b.lite_topics("replies").stats()).topics == 0


@pytest.mark.parametrize("url", ["memory://name/path", "memory://name?x=1", "memory://n#frag"])
def test_memory_urls_take_only_a_name(url: str) -> None:
    """A memory URL with a path, query or fragment is refused with InvalidArgument."""
    with pytest.raises(litechan.InvalidArgument, match="world name"):
        litechan.connect(url)


def test_a_refused_memory_url_does_not_echo_a_password() -> None:
    """A memory URL refused for its path is shown in the error with its password as ***."""
    with pytest.raises(litechan.InvalidArgument, match=r"u:\*\*\*@x") as info:
        litechan.connect("memory://u:s3cret@x/path")
    assert "s3cret" not in str(info.value)


def test_unknown_scheme_lists_known_ones() -> None:
    """An unknown URL scheme raises UnknownBackend naming the schemes that exist."""
    with pytest.raises(litechan.UnknownBackend, match="memory://"):
        litechan.connect("kafka://localhost")


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_payload", 0), ("max_payload", True), ("clock", object())],
)
def test_connect_validates_options(option: str, value: object) -> None:
    """Malformed connect() options raise InvalidArgument before anything is opened."""
    with pytest.raises(litechan.InvalidArgument):
        litechan.connect("memory://", **{option: value})  # type: ignore[arg-type]


async def test_handles_refuse_use_outside_the_broker_block() -> None:
    """Declaring before the broker is open, or publishing after it closed, raises ResourceClosed."""
    broker = litechan.connect("memory://")
    with pytest.raises(litechan.ResourceClosed):
        broker.lite_topics("replies")
    with anyio.fail_after(5):
        async with broker:
            replies = broker.lite_topics("replies")
        with pytest.raises(litechan.ResourceClosed):
            await replies.publish("s1", b"x")


async def test_cancelled_wait_leaves_the_consumer_usable() -> None:
    """A consumer wait cancelled by a timeout loses nothing: the next wait gets the message."""
    with anyio.fail_after(5):
        async with litechan.connect("memory://") as broker:
            audio = broker.ordered_topic("audio", partitions=2)
            async with audio.consumer(group="g", name="c") as consumer:
                with anyio.move_on_after(0.01):
                    await consumer.__anext__()
                await audio.send("k", b"1")
                message = await consumer.__anext__()
                assert message.payload == b"1"
                await message.ack()


async def test_cancelled_channel_wait_leaves_the_channel_usable() -> None:
    """A channel wait cancelled by a timeout loses nothing: the next wait gets the message."""
    with anyio.fail_after(5):
        async with litechan.connect("memory://") as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="g", name="s") as sub:
                channel = await sub.subscribe("s1")
                with anyio.move_on_after(0.01):
                    await channel.__anext__()
                await replies.publish("s1", b"1")
                assert (await channel.__anext__()).payload == b"1"


async def test_broker_close_ends_channels_and_consumers() -> None:
    """Closing the broker ends open channels with CLOSED and ends consumer iteration."""
    seen: dict[str, object] = {}

    async def gateway(replies: litechan.LiteTopics, opened: anyio.Event) -> None:
        async with replies.subscriber(group="g", name="s") as sub:
            channel = await sub.subscribe("s1")
            opened.set()
            seen["messages"] = [m async for m in channel]
            seen["reason"] = channel.end_reason

    async def worker(audio: litechan.OrderedTopic, opened: anyio.Event) -> None:
        async with audio.consumer(group="g", name="c") as consumer:
            opened.set()
            seen["consumed"] = [m async for m in consumer]

    with anyio.fail_after(5):
        async with litechan.connect("memory://") as broker, anyio.create_task_group() as tg:
            ready = [anyio.Event(), anyio.Event()]
            tg.start_soon(gateway, broker.lite_topics("replies"), ready[0])
            tg.start_soon(worker, broker.ordered_topic("audio"), ready[1])
            for event in ready:
                await event.wait()
            await broker.aclose()
    assert seen == {"messages": [], "reason": litechan.EndReason.CLOSED, "consumed": []}


async def test_manual_clock_wakes_sleepers_whose_deadline_passed() -> None:
    """ManualClock.advance wakes exactly the sleepers whose deadline has passed."""
    clock = litechan.ManualClock(start=100.0)
    woken: list[float] = []

    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)
        woken.append(deadline)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for deadline in (103.0, 101.0, 102.0):
                tg.start_soon(sleeper, deadline)
            await anyio.wait_all_tasks_blocked()
            clock.advance(2.0)
            await anyio.wait_all_tasks_blocked()
            assert sorted(woken) == [101.0, 102.0]
            clock.advance(1.0)
    assert sorted(woken) == [101.0, 102.0, 103.0]
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_alarm_rearmed_earlier_fires_at_the_earlier_deadline() -> None:
    """Arming an earlier deadline interrupts the sleep; a later one does not postpone it."""
    clock = litechan.ManualClock(start=0.0)
    fired: list[float] = []
    alarm = Alarm(clock, lambda: fired.append(clock.time()))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(alarm.run)
            alarm.arm(10.0)
            await anyio.wait_all_tasks_blocked()
            alarm.arm(5.0)
            alarm.arm(7.0)
            await anyio.wait_all_tasks_blocked()
            clock.advance(5.0)
            await anyio.wait_all_tasks_blocked()
            assert fired == [5.0]
            tg.cancel_scope.cancel()


async def test_channel_only_subscribers_do_not_accumulate_ended_topics() -> None:
    """Subscribing and unsubscribing many lite topics through channels keeps memory bounded."""
    with anyio.fail_after(10):
        async with litechan.connect("memory://") as broker:
            replies = broker.lite_topics("replies")
            async with replies.subscriber(group="g", name="s") as sub:
                for n in range(5_000):
                    async with await sub.subscribe(f"s{n}"):
                        pass
                assert sub.lite_topics == frozenset()
                assert len(sub._ready) <= 130


async def test_dead_letters_are_bounded_per_group() -> None:
    """A group keeps its most recent dead letters only, and says so in a warning."""
    with anyio.fail_after(20), capture_logs() as logs:
        async with litechan.connect("memory://") as broker:
            audio = broker.ordered_topic("audio", partitions=1)
            total = MAX_DEAD_LETTERS + 5
            for n in range(total):
                await audio.send(f"k{n}", b"x")
            async with audio.consumer(group="g", name="c", max_in_flight=1024) as consumer:
                rejected = 0
                async for message in consumer:
                    await message.reject("bad")
                    rejected += 1
                    if rejected == total:
                        break
            dead = await audio.dead_letters("g")
    assert len(dead) == MAX_DEAD_LETTERS
    assert dead[0].offset == 6
    assert sum(e["event"] == "litechan.ordered.dead_letter_dropped" for e in logs) == 5


async def test_cancelled_publish_writes_nothing() -> None:
    """A publish cancelled at its checkpoint has not stored its message (no silent duplicate)."""
    with anyio.fail_after(5):
        async with litechan.connect("memory://") as broker:
            replies = broker.lite_topics("replies")
            results: list[int | None] = []
            for n in range(200):
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    results.append(await replies.publish("s1", b"%d" % n))
                if scope.cancelled_caught:
                    results.append(None)
            stored = (await replies.stats()).top
            assert None in results
    offsets = [r for r in results if r is not None]
    assert offsets == list(range(1, len(offsets) + 1))
    assert stored == [] or stored[0].backlog == len(offsets)


def test_malformed_url_raises_invalid_argument() -> None:
    """A URL urllib cannot parse raises InvalidArgument, not a raw ValueError (G12)."""
    with pytest.raises(litechan.InvalidArgument, match="malformed"):
        litechan.connect("memory://[::1")


async def test_manual_clock_forgets_cancelled_sleepers() -> None:
    """A cancelled ManualClock sleep is dropped at once rather than kept until its deadline."""
    clock = litechan.ManualClock(start=0.0)
    with anyio.fail_after(5):
        for n in range(100):
            with anyio.move_on_after(0):
                await clock.sleep_until(1_000.0 + n)
    assert clock._sleepers == []
