"""The guarantees of ``DESIGN.md`` (G1-G12) as async checks any backend runs against itself.

Each check is ``async def check_<what>(backend: BackendFactory) -> None``: it opens its own fresh
world(s) with ``async with backend() as h:``, uses only litechan's public API, is bounded by
:func:`anyio.fail_after` and raises :class:`AssertionError` saying what was expected when the
backend breaks the guarantee. Nothing here sleeps to synchronise: positive steps wait (bounded)
for the message they expect; negative steps ("nothing more is delivered") first let every task
run with :meth:`Harness.settle`; time passes only through :meth:`Harness.advance`.

Messages are read by small background "pumps" (see :class:`_Inbox`): a check can then both wait
for a message and assert that nothing else arrived, without racing the view it reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar

import anyio
import anyio.abc
import attrs
import structlog.testing

import litechan

from ._harness import BackendFactory, Harness

__all__ = [
    "CHECKS",
    "Check",
    "run_conformance",
    "check_bounded_retention",
    "check_gap_counts_only_unacked",
    "check_hostile_strings",
    "check_cancelled_receive_lite",
    "check_cancelled_receive_ordered",
    "check_channel_lifecycle",
    "check_body_errors_come_out_plain",
    "check_closed_resources",
    "check_config_mismatch",
    "check_dedupe",
    "check_lite_deadline",
    "check_ordered_deadline",
    "check_invalid_names",
    "check_key_order",
    "check_key_order_across_nack",
    "check_key_order_across_rebalance",
    "check_lazy_creation",
    "check_lite_isolation",
    "check_lite_message_fields",
    "check_lite_single_owner_and_fencing",
    "check_lite_stats",
    "check_max_deliveries_dead_letters",
    "check_max_in_flight",
    "check_merged_iteration",
    "check_nack_delay",
    "check_next_message_waits_for_ack",
    "check_no_head_of_line_blocking",
    "check_no_head_of_line_blocking_deep",
    "check_no_redelivery_after_ack",
    "check_ordered_fencing",
    "check_ordered_isolation",
    "check_ordered_message_fields",
    "check_ordered_stats",
    "check_partition_ordering",
    "check_partitions_single_owner",
    "check_payload_errors",
    "check_redelivery_after_crash",
    "check_reject_dead_letters",
    "check_resume_committed",
    "check_resume_skips_acked",
    "check_resume_start_positions",
    "check_takeover",
    "check_takeover_skips_acked",
    "check_ttl_expiry",
    "check_ttl_refreshed_by_publish",
    "check_unknown_backend",
]

M = TypeVar("M")

#: What one check is: a coroutine function taking the backend under test.
#:
#: .. versionadded:: 0.1.0
Check: TypeAlias = Callable[[BackendFactory], Awaitable[None]]

# Generous bounds: the memory backend finishes a check in milliseconds, a real server (which
# keeps real time, so advance() sleeps) in a few seconds. A step is one awaited expectation.
_CHECK_TIMEOUT = 60.0
_STEP_TIMEOUT = 10.0
# Durations kept short so that real-time backends stay fast; a ManualClock makes them instant.
_TTL = 2.0
_NACK_DELAY = 0.5
_DEDUPE_WINDOW = 1.0
_DEADLINE = 1.0  # an expires_in that runs out during a check
_FAR = 3600.0  # an expires_in that does not
# Slack allowed between the test's clock and a backend's published_at when time is real.
_REAL_CLOCK_SLACK = 30.0

_TOPIC = "audio"
_GROUP = "asr"
_PARENT = "replies"
_LITE_GROUP = "gateways"


# ---------------------------------------------------------------------------------------------
# assertions
# ---------------------------------------------------------------------------------------------


def _equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def _true(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _names(expected: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(e.__name__ for e in expected)
    return expected.__name__


@contextmanager
def _raises(
    expected: type[BaseException] | tuple[type[BaseException], ...], what: str
) -> Iterator[None]:
    """Fail unless the block raises *expected* (the exception is swallowed)."""
    try:
        yield
    except expected:
        return
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {_names(expected)}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: expected {_names(expected)}, but nothing was raised")


@contextmanager
def _plain_errors() -> Iterator[None]:
    """Re-raise a lone exception out of (nested) task groups' ExceptionGroups, for readable
    failures: a check's AssertionError should not reach the user wrapped in three groups."""
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
        raise error from None


@contextmanager
def _bounded() -> Iterator[None]:
    """The frame of every check: a deadline, and plain (unwrapped) errors."""
    with _plain_errors(), anyio.fail_after(_CHECK_TIMEOUT):
        yield


def _now(h: Harness) -> float:
    return h.clock.time() if h.clock is not None else time.time()


def _published_at_ok(h: Harness, published_at: float, before: float, after: float) -> bool:
    slack = 0.0 if h.clock is not None else _REAL_CLOCK_SLACK
    return before - slack <= published_at <= after + slack


def _payload(key: str, n: int) -> bytes:
    return f"{key}#{n}".encode()


def _keys_in(partition: int, partitions: int, count: int, prefix: str = "session") -> list[str]:
    """*count* keys that :func:`litechan.partition_for` puts in *partition*."""
    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"{prefix}-{i}"
        if litechan.partition_for(key, partitions) == partition:
            keys.append(key)
        i += 1
    return keys


async def _eventually(h: Harness, what: str, predicate: Callable[[], bool]) -> None:
    """Wait (bounded) until *predicate* holds, letting the brokers work between two tries."""
    with anyio.move_on_after(_STEP_TIMEOUT):
        while not predicate():
            await h.settle()
        return
    raise AssertionError(f"timed out after {_STEP_TIMEOUT}s waiting until {what}")


# ---------------------------------------------------------------------------------------------
# reading views in the background
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class _Got(Generic[M]):
    by: str
    msg: M


@attrs.frozen
class _Ended:
    by: str
    view: object


class _Inbox(Generic[M]):
    """What background pumps read from one or more views (consumer, channel, merged subscriber).

    ``log`` records every delivery, in the order the views yielded them; checks append their
    own ``("acked", ...)`` events to it to prove that a key's next message came after an ack.
    """

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._send, self._receive = anyio.create_memory_object_stream[_Got[M] | _Ended](math.inf)
        self._ended: dict[str, anyio.Event] = {}
        self._views: dict[str, object] = {}
        self.log: list[tuple[str, str, M]] = []

    def close(self) -> None:
        """Close both ends of the buffer (the pumps are cancelled first)."""
        self._send.close()
        self._receive.close()

    def watch(self, view: AsyncIterable[M], by: str) -> None:
        """Start reading *view*; its messages are labelled *by*."""
        self._ended[by] = anyio.Event()
        self._views[by] = view
        self._tg.start_soon(self._pump, view, by)

    async def _pump(self, view: AsyncIterable[M], by: str) -> None:
        try:
            async for msg in view:
                self.log.append(("delivered", by, msg))
                try:
                    self._send.send_nowait(_Got(by, msg))
                except anyio.ClosedResourceError:
                    # Torn down while messages were ready: a receive that finds a message
                    # ready returns it without a checkpoint, so cancellation lands later.
                    return
        finally:
            self._ended[by].set()
            with suppress(anyio.ClosedResourceError):
                self._send.send_nowait(_Ended(by, view))

    def _open_views(self) -> list[str]:
        return [by for by, ended in self._ended.items() if not ended.is_set()]

    async def get_from(self, what: str) -> _Got[M]:
        """The next message of any view, with the label of the view that yielded it."""
        with anyio.move_on_after(_STEP_TIMEOUT):
            while True:
                item = await self._receive.receive()
                if isinstance(item, _Got):
                    return item
                if not self._open_views():
                    reason = getattr(item.view, "end_reason", None)
                    raise AssertionError(
                        f"{item.by}: iteration ended (end_reason={reason!r}) while waiting "
                        f"for {what}"
                    )
        raise AssertionError(
            f"{', '.join(self._ended)}: nothing delivered within {_STEP_TIMEOUT}s while "
            f"waiting for {what}"
        )

    async def get(self, what: str) -> M:
        """The next message of any view."""
        return (await self.get_from(what)).msg

    async def take(self, count: int, what: str) -> list[M]:
        """The next *count* messages."""
        return [await self.get(f"{what} ({i + 1} of {count})") for i in range(count)]

    def assert_empty(self, why: str) -> None:
        """Fail if a message was delivered and not taken yet (call after ``Harness.settle``)."""
        while True:
            try:
                item = self._receive.receive_nowait()
            except anyio.WouldBlock:
                return
            if isinstance(item, _Ended):
                continue
            raise AssertionError(f"{item.by}: unexpected delivery of {item.msg!r}: {why}")

    async def wait_ended(self, by: str, what: str) -> None:
        """Wait (bounded) until the iteration of view *by* stops."""
        with anyio.move_on_after(_STEP_TIMEOUT):
            await self._ended[by].wait()
            return
        reason = getattr(self._views[by], "end_reason", None)
        raise AssertionError(
            f"{by}: iteration still running {_STEP_TIMEOUT}s after {what} (end_reason={reason!r})"
        )


@asynccontextmanager
async def _reading(view: AsyncIterable[M], by: str) -> AsyncIterator[_Inbox[M]]:
    """Pump *view* in the background for the duration of the block (more with ``watch``)."""
    with _plain_errors():
        async with anyio.create_task_group() as tg:
            inbox = _Inbox[M](tg)
            try:
                inbox.watch(view, by)
                yield inbox
            finally:
                tg.cancel_scope.cancel()
                inbox.close()


def _check_order_log(
    log: Sequence[tuple[str, str, litechan.Message]], sent: Mapping[str, Sequence[bytes]]
) -> None:
    """Each key was delivered exactly its sent payloads, in order, each after the previous ack."""
    delivered: dict[str, list[bytes]] = {key: [] for key in sent}
    last_ack_index: dict[str, int] = {}
    pending: dict[str, bytes] = {}
    for index, (event, by, msg) in enumerate(log):
        if event == "acked":
            pending.pop(msg.key, None)
            last_ack_index[msg.key] = index
            continue
        if msg.key in pending:
            raise AssertionError(
                f"{by} was given {msg.payload!r} while {pending[msg.key]!r} of the same key was "
                "still in flight (delivered, not acked)"
            )
        pending[msg.key] = msg.payload
        delivered.setdefault(msg.key, []).append(msg.payload)
    for key, payloads in sent.items():
        _equal(delivered[key], list(payloads), f"payloads delivered for key {key!r}, in order")


class _HasPartitions(Protocol):
    @property
    def partitions(self) -> frozenset[int]: ...


def _assert_disjoint(owned: Mapping[str, frozenset[int]]) -> None:
    names = sorted(owned)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = owned[a] & owned[b]
            if both:
                raise AssertionError(
                    f"partitions {sorted(both)} are owned by both {a} and {b} (G4): {owned}"
                )


async def _until_balanced(
    h: Harness, consumers: Mapping[str, _HasPartitions], partitions: int, what: str
) -> None:
    """Wait until every partition has exactly one owner and every consumer owns some."""
    everything = frozenset(range(partitions))

    def balanced() -> bool:
        owned = {name: c.partitions for name, c in consumers.items()}
        _assert_disjoint(owned)
        union = frozenset().union(*owned.values())
        return union == everything and all(owned.values())

    await _eventually(h, what, balanced)


# ---------------------------------------------------------------------------------------------
# messages as delivered
# ---------------------------------------------------------------------------------------------


async def check_ordered_message_fields(backend: BackendFactory) -> None:
    """An ordered message arrives with its key, payload, headers, partition (``partition_for``),
    offset, ``delivery_count`` 1 and ``published_at`` from the broker's clock; receipts match.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=4)
            key = "sessión-1/ü:{x} y"  # keys are any str: only names are restricted
            partition = litechan.partition_for(key, 4)
            before = _now(h)
            r1 = await topic.send(key, b"frame-1", headers={"codec": "opus"})
            r2 = await topic.send(key, bytearray(b"frame-2"))
            after = _now(h)
            _equal((r1.partition, r1.offset, r1.duplicate), (partition, 1, False), "first receipt")
            _equal((r2.partition, r2.offset, r2.duplicate), (partition, 2, False), "second receipt")
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                m1 = await inbox.get("the first message")
                _equal(m1.key, key, "key")
                _equal(m1.payload, b"frame-1", "payload")
                _equal(type(m1.payload), bytes, "payload type")
                _equal(m1.headers, {"codec": "opus"}, "headers")
                _equal(m1.partition, partition, "partition (partition_for(key, partitions))")
                _equal(m1.offset, 1, "offset of the first message of a partition")
                _equal(m1.delivery_count, 1, "delivery_count of a first delivery")
                _true(
                    _published_at_ok(h, m1.published_at, before, after),
                    f"published_at {m1.published_at} is not the broker's clock at send time "
                    f"({before}..{after})",
                )
                await m1.ack()
                m2 = await inbox.get("the second message")
                _equal((m2.payload, type(m2.payload)), (b"frame-2", bytes), "bytearray payload")
                _equal(m2.headers, {}, "headers of a message sent without headers")
                _equal(m2.offset, 2, "offset of the second message")
                await m2.ack()


async def check_lite_message_fields(backend: BackendFactory) -> None:
    """A lite message arrives with its lite topic, offset (from 1), one epoch per incarnation,
    payload, headers, ``published_at`` from the broker's clock and ``gap_before`` 0.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            before = _now(h)
            o1 = await replies.publish("s1", b"chunk-1", headers={"seq": "1"})
            o2 = await replies.publish("s1", bytearray(b"chunk-2"))
            after = _now(h)
            _equal((o1, o2), (1, 2), "offsets returned by publish")
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe("s1")
                _equal(channel.lite_topic, "s1", "channel.lite_topic")
                async with _reading(channel, "channel s1") as inbox:
                    m1, m2 = await inbox.take(2, "both messages")
                    _equal(
                        (m1.lite_topic, m1.offset, m1.payload, m1.headers, m1.gap_before),
                        ("s1", 1, b"chunk-1", {"seq": "1"}, 0),
                        "first message",
                    )
                    _equal(
                        (m2.lite_topic, m2.offset, m2.payload, m2.headers, m2.gap_before),
                        ("s1", 2, b"chunk-2", {}, 0),
                        "second message",
                    )
                    _equal(type(m2.payload), bytes, "payload type")
                    _equal(m1.epoch, m2.epoch, "epoch of two messages of one incarnation")
                    for m in (m1, m2):
                        _true(
                            _published_at_ok(h, m.published_at, before, after),
                            f"published_at {m.published_at} is not the broker's clock at "
                            f"publish time ({before}..{after})",
                        )
                        await m.ack()


# ---------------------------------------------------------------------------------------------
# G1 per-key order
# ---------------------------------------------------------------------------------------------


async def check_key_order(backend: BackendFactory) -> None:
    """G1: interleaved messages of several keys are delivered to a group in send order per key.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=2)
            keys = [*_keys_in(0, 2, 2), *_keys_in(1, 2, 2)]
            sent: dict[str, list[bytes]] = {key: [] for key in keys}
            for n in range(5):
                for key in keys:
                    await topic.send(key, _payload(key, n))
                    sent[key].append(_payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                for _ in range(len(keys) * 5):
                    msg = await inbox.get("the next message")
                    inbox.log.append(("acked", "w1", msg))
                    await msg.ack()
                await h.settle()
                inbox.assert_empty("every message was delivered once and acked")
            _check_order_log(inbox.log, sent)


async def check_next_message_waits_for_ack(backend: BackendFactory) -> None:
    """G1: a key's next message is not delivered while the previous one is still in flight.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for n in (1, 2):
                await topic.send("k", _payload("k", n))
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                first = await inbox.get("k#1")
                _equal(first.payload, b"k#1", "first message of the key")
                await h.settle()
                inbox.assert_empty("k#2 may not be delivered before k#1 is acked")
                await first.ack()
                second = await inbox.get("k#2 after k#1 was acked")
                _equal(second.payload, b"k#2", "second message of the key")
                await second.ack()


async def check_key_order_across_nack(backend: BackendFactory) -> None:
    """G1: a nacked message is redelivered (delivery_count + 1) before any later message of its
    key, while other keys are unaffected.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for key, n in (("k", 1), ("k", 2), ("k", 3), ("other", 1)):
                await topic.send(key, _payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each key")}
                _equal(set(got), {"k", "other"}, "keys delivered first")
                await got["other"].ack()
                k1 = got["k"]
                for attempt in (2, 3):
                    await k1.nack()
                    k1 = await inbox.get(f"redelivery {attempt} of k#1")
                    _equal((k1.payload, k1.delivery_count), (b"k#1", attempt), "nacked redelivery")
                await k1.ack()
                for n in (2, 3):
                    msg = await inbox.get(f"k#{n}")
                    _equal((msg.payload, msg.delivery_count), (_payload("k", n), 1), "next message")
                    await msg.ack()
                await h.settle()
                inbox.assert_empty("everything was acked")


async def check_key_order_across_rebalance(backend: BackendFactory) -> None:
    """G1/G4: when a second consumer joins, a partition moves only after the old owner acked its
    in-flight messages, per-key order holds across both, and messages then go to the owner.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker_1, h.connect() as broker_2:
            topic_1 = broker_1.ordered_topic(_TOPIC, partitions=2)
            topic_2 = broker_2.ordered_topic(_TOPIC, partitions=2)
            keys = [_keys_in(0, 2, 1)[0], _keys_in(1, 2, 1)[0]]
            sent: dict[str, list[bytes]] = {key: [] for key in keys}
            for n in (1, 2, 3):
                for key in keys:
                    await topic_1.send(key, _payload(key, n))
                    sent[key].append(_payload(key, n))
            async with (
                topic_1.consumer(group=_GROUP, name="w1") as c1,
                _reading(c1, "w1") as inbox,
            ):
                first = await inbox.take(2, "the first message of each key, at w1")
                _equal({m.payload for m in first}, {sent[k][0] for k in keys}, "first messages")
                async with topic_2.consumer(group=_GROUP, name="w2") as c2:
                    inbox.watch(c2, "w2")
                    await h.settle()
                    inbox.assert_empty(
                        "no key's next message may be delivered, to w1 or w2, while its first "
                        "is in flight at w1"
                    )
                    _assert_disjoint({"w1": c1.partitions, "w2": c2.partitions})
                    for msg in first:
                        inbox.log.append(("acked", "w1", msg))
                        await msg.ack()
                    # The rest, acked on receipt wherever they are delivered.
                    for _ in range(4):
                        got = await inbox.get_from("the rest of each key, at w1 or w2")
                        inbox.log.append(("acked", got.by, got.msg))
                        await got.msg.ack()
                    _check_order_log(inbox.log, sent)
                    consumers = {"w1": c1, "w2": c2}
                    await _until_balanced(h, consumers, 2, "w1 and w2 own one partition each")
                    # Once balanced, each key's messages go to the owner of its partition.
                    for key in keys:
                        await topic_1.send(key, _payload(key, 4))
                    for _ in keys:
                        got = await inbox.get_from("a message sent after the rebalance")
                        _true(
                            got.msg.partition in consumers[got.by].partitions,
                            f"{got.by} was given {got.msg.payload!r} of partition "
                            f"{got.msg.partition}, which it does not own "
                            f"({consumers[got.by].partitions})",
                        )
                        _equal(got.msg.payload, _payload(got.msg.key, 4), "after the rebalance")
                        await got.msg.ack()
                    await h.settle()
                    inbox.assert_empty("every message was acked once")


# ---------------------------------------------------------------------------------------------
# G2 no head-of-line blocking across keys
# ---------------------------------------------------------------------------------------------


async def check_no_head_of_line_blocking(backend: BackendFactory) -> None:
    """G2: with ordering="key", a held message of one key does not stop other keys of the same
    partition, while the held key's own next message still waits.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for key, n in (("slow", 1), ("fast", 1), ("fast", 2), ("fast", 3), ("slow", 2)):
                await topic.send(key, _payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1", ordering="key") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each key")}
                _equal(set(got), {"slow", "fast"}, "keys delivered first")
                slow = got["slow"]
                fast = got["fast"]
                for n in (2, 3):
                    await fast.ack()
                    fast = await inbox.get(f"fast#{n} while slow#1 is held")
                    _equal(fast.payload, _payload("fast", n), "the other key moves on")
                await fast.ack()
                await h.settle()
                inbox.assert_empty("slow#2 may not be delivered while slow#1 is held")
                await slow.ack()
                slow = await inbox.get("slow#2 after slow#1 was acked")
                _equal(slow.payload, b"slow#2", "the held key resumes")
                await slow.ack()


async def check_no_head_of_line_blocking_deep(backend: BackendFactory) -> None:
    """G2 under a deep backlog: a session that queued a thousand messages behind its held one
    does not stop another session of the same partition.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for n in range(1, 1001):
                await topic.send("chatty", _payload("chatty", n))
            await topic.send("quiet", _payload("quiet", 1))
            async with (
                topic.consumer(group=_GROUP, name="w1", max_in_flight=8) as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                held = await inbox.get("chatty#1")
                _equal(held.payload, _payload("chatty", 1), "first message")
                quiet = await inbox.get("quiet#1 behind chatty's backlog")
                _equal(quiet.payload, _payload("quiet", 1), "the other session is served")
                await quiet.ack()
                await held.ack()
                nxt = await inbox.get("chatty#2 after chatty#1 was acked")
                _equal(nxt.payload, _payload("chatty", 2), "the held session resumes in order")
                await nxt.ack()


async def check_partition_ordering(backend: BackendFactory) -> None:
    """G2: ordering="partition" holds every later message of a partition behind the one in
    flight, whatever its key, while other partitions progress.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=2)
            a, b = _keys_in(0, 2, 2)
            (c,) = _keys_in(1, 2, 1)
            for key, n in ((a, 1), (b, 1), (a, 2), (c, 1)):
                await topic.send(key, _payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1", ordering="partition") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each partition")}
                _equal(set(got), {a, c}, "one message in flight per partition")
                await h.settle()
                inbox.assert_empty(f"{b}#1 waits behind {a}#1 of the same partition")
                await got[c].ack()
                await got[a].ack()
                for key, n in ((b, 1), (a, 2)):
                    msg = await inbox.get(f"{key}#{n} in partition order")
                    _equal(msg.payload, _payload(key, n), "partition order")
                    await h.settle()
                    inbox.assert_empty("one message in flight per partition")
                    await msg.ack()


async def check_max_in_flight(backend: BackendFactory) -> None:
    """G2: a consumer never has more than ``max_in_flight`` messages in flight; settling one lets
    exactly one more through.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            keys = [f"session-{i}" for i in range(6)]
            for key in keys:
                await topic.send(key, _payload(key, 1))
            async with (
                topic.consumer(group=_GROUP, name="w1", max_in_flight=3) as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                held = await inbox.take(3, "max_in_flight messages")
                await h.settle()
                inbox.assert_empty("max_in_flight=3 messages are already in flight")
                seen = {m.key for m in held}
                while held:
                    await held.pop(0).ack()
                    if len(seen) < len(keys):
                        msg = await inbox.get("one more message after an ack")
                        seen.add(msg.key)
                        held.append(msg)
                    await h.settle()
                    inbox.assert_empty("an ack lets exactly one more message through")
                _equal(seen, set(keys), "keys delivered")


# ---------------------------------------------------------------------------------------------
# G3 at-least-once
# ---------------------------------------------------------------------------------------------


async def check_redelivery_after_crash(backend: BackendFactory) -> None:
    """G3: messages a consumer had not acked when its broker went away are redelivered, in offset
    order and with delivery_count 2, to the next consumer; acked ones are not.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h:
            async with h.connect() as producer:
                topic = producer.ordered_topic(_TOPIC, partitions=1)
                for key, n in (("k1", 1), ("k2", 1), ("k3", 1), ("k1", 2)):
                    await topic.send(key, _payload(key, n))
            async with h.connect() as broker_a:
                topic_a = broker_a.ordered_topic(_TOPIC, partitions=1)
                async with (
                    topic_a.consumer(group=_GROUP, name="w1") as consumer_a,
                    _reading(consumer_a, "w1") as inbox_a,
                ):
                    got = {m.key: m for m in await inbox_a.take(3, "the head of each key")}
                    _equal(set(got), {"k1", "k2", "k3"}, "keys delivered to w1")
                    await got["k2"].ack()
                # w1 leaves without acking k1#1 and k3#1, then its broker closes ("crash")
            async with h.connect() as broker_b:
                topic_b = broker_b.ordered_topic(_TOPIC, partitions=1)
                async with (
                    topic_b.consumer(group=_GROUP, name="w2") as consumer_b,
                    _reading(consumer_b, "w2") as inbox_b,
                ):
                    again = await inbox_b.take(2, "the messages w1 did not ack")
                    _equal(
                        [(m.payload, m.offset, m.delivery_count) for m in again],
                        [(b"k1#1", 1, 2), (b"k3#1", 3, 2)],
                        "redeliveries to w2, in offset order",
                    )
                    await again[0].ack()
                    k1_2 = await inbox_b.get("k1#2 after k1#1 was acked by w2")
                    _equal((k1_2.payload, k1_2.delivery_count), (b"k1#2", 1), "k1#2")
                    await k1_2.ack()
                    await again[1].ack()
                    await h.settle()
                    inbox_b.assert_empty("k2#1 was acked by w1: it must not be redelivered")


async def check_nack_delay(backend: BackendFactory) -> None:
    """G3: ``nack(delay=d)`` redelivers the message once d seconds have passed, not before; its
    key waits meanwhile but other keys keep flowing.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for key, n in (("k", 1), ("k", 2), ("other", 1)):
                await topic.send(key, _payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "consumer w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each key")}
                await got["k"].nack(delay=_NACK_DELAY)
                await h.settle()
                inbox.assert_empty(f"k#1 was nacked with delay={_NACK_DELAY}: nothing of k yet")
                await got["other"].ack()
                await topic.send("other", b"other#2")
                other = await inbox.get("other#2 while k#1 waits out its delay")
                _equal(other.payload, b"other#2", "another key flows during the delay")
                await other.ack()
                await h.advance(_NACK_DELAY * 1.5)
                k1 = await inbox.get("k#1 after its nack delay")
                _equal((k1.payload, k1.delivery_count), (b"k#1", 2), "redelivered message")
                await k1.ack()
                k2 = await inbox.get("k#2")
                _equal((k2.payload, k2.delivery_count), (b"k#2", 1), "next message of the key")
                await k2.ack()


async def check_no_redelivery_after_ack(backend: BackendFactory) -> None:
    """G3: acked messages are never delivered to the group again (a second ack is a no-op); a
    new consumer of the group gets only what was sent since.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h:
            async with h.connect() as broker_a:
                topic_a = broker_a.ordered_topic(_TOPIC, partitions=1)
                for n in (1, 2, 3):
                    await topic_a.send("k", _payload("k", n))
                async with (
                    topic_a.consumer(group=_GROUP, name="w1") as consumer_a,
                    _reading(consumer_a, "w1") as inbox_a,
                ):
                    for n in (1, 2, 3):
                        msg = await inbox_a.get(f"k#{n}")
                        _equal(msg.payload, _payload("k", n), "order")
                        await msg.ack()
                        await msg.ack()  # a second ack is a no-op
                    await h.settle()
                    inbox_a.assert_empty("everything was acked")
            async with h.connect() as broker_b:
                topic_b = broker_b.ordered_topic(_TOPIC, partitions=1)
                async with (
                    topic_b.consumer(group=_GROUP, name="w2") as consumer_b,
                    _reading(consumer_b, "w2") as inbox_b,
                ):
                    await h.settle()
                    inbox_b.assert_empty("messages acked by w1 must not reach w2")
                    await topic_b.send("k", b"k#4")
                    msg = await inbox_b.get("k#4")
                    _equal((msg.payload, msg.offset, msg.delivery_count), (b"k#4", 4, 1), "k#4")
                    await msg.ack()


async def check_reject_dead_letters(backend: BackendFactory) -> None:
    """G3/G12: ``reject(reason)`` dead-letters a message at once, with its reason; the key moves
    on and the message is never redelivered.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            await topic.send("k", b"poison", headers={"h": "1"})
            await topic.send("k", b"k#2")
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                poison = await inbox.get("the poison message")
                await poison.reject(reason="bad frame")
                nxt = await inbox.get("k#2 after k#1 was rejected")
                _equal((nxt.payload, nxt.delivery_count), (b"k#2", 1), "the key moves on")
                await nxt.ack()
            letters = await topic.dead_letters(_GROUP)
            _equal(len(letters), 1, "number of dead letters")
            (letter,) = letters
            _equal(
                (letter.key, letter.payload, letter.headers, letter.partition, letter.offset),
                ("k", b"poison", {"h": "1"}, 0, 1),
                "dead letter",
            )
            _equal(letter.delivery_count, 1, "dead letter delivery_count")
            _true("bad frame" in letter.reason, f"reason {letter.reason!r} lacks 'bad frame'")
            _equal(await topic.dead_letters("other-group"), [], "dead letters of another group")
            async with (
                topic.consumer(group=_GROUP, name="w2") as consumer,
                _reading(consumer, "w2") as inbox,
            ):
                await h.settle()
                inbox.assert_empty("a dead-lettered message is not redelivered")


async def check_max_deliveries_dead_letters(backend: BackendFactory) -> None:
    """G3/G12: a message nacked ``max_deliveries`` times is dead-lettered and its key moves on.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            await topic.send("k", b"k#1")
            await topic.send("k", b"k#2")
            async with (
                topic.consumer(group=_GROUP, name="w1", max_deliveries=2) as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                for attempt in (1, 2):
                    msg = await inbox.get(f"delivery {attempt} of k#1")
                    _equal((msg.payload, msg.delivery_count), (b"k#1", attempt), "delivery")
                    await msg.nack()
                nxt = await inbox.get("k#2 once k#1 was dead-lettered")
                _equal((nxt.payload, nxt.delivery_count), (b"k#2", 1), "the key moves on")
                await nxt.ack()
                await h.settle()
                inbox.assert_empty("k#1 is dead-lettered, not redelivered a third time")
            letters = await topic.dead_letters(_GROUP)
            _equal(
                [(d.key, d.payload, d.offset, d.delivery_count) for d in letters],
                [("k", b"k#1", 1, 2)],
                "dead letters after max_deliveries",
            )


# ---------------------------------------------------------------------------------------------
# G4 single owner
# ---------------------------------------------------------------------------------------------


async def check_partitions_single_owner(backend: BackendFactory) -> None:
    """G4: as consumers join and leave, every partition has exactly one owner among the group's
    open consumers (never two), and ``stats()`` names it.

    .. versionadded:: 0.1.0
    """
    partitions = 6
    with _bounded():
        async with backend() as h, AsyncExitStack() as stack:
            consumers: dict[str, _HasPartitions] = {}
            brokers = [await stack.enter_async_context(h.connect()) for _ in range(2)]
            topic = brokers[0].ordered_topic(_TOPIC, partitions=partitions)
            for name, broker in zip(("w1", "w2"), brokers, strict=True):
                consumer = await stack.enter_async_context(
                    broker.ordered_topic(_TOPIC, partitions=partitions).consumer(
                        group=_GROUP, name=name
                    )
                )
                await stack.enter_async_context(_reading(consumer, name))
                consumers[name] = consumer
                await _until_balanced(h, consumers, partitions, f"{sorted(consumers)} share all")
            async with h.connect() as broker_3:
                topic_3 = broker_3.ordered_topic(_TOPIC, partitions=partitions)
                async with (
                    topic_3.consumer(group=_GROUP, name="w3") as consumer_3,
                    _reading(consumer_3, "w3"),
                ):
                    consumers["w3"] = consumer_3
                    await _until_balanced(h, consumers, partitions, "w1, w2 and w3 share all")
                    stats = await topic.stats()
                    owners = {
                        p.partition: p.groups[_GROUP].owner
                        for p in stats.partitions
                        if _GROUP in p.groups
                    }
                    expected = {p: name for name, c in consumers.items() for p in c.partitions}
                    _equal(owners, expected, "stats() owner of each partition")
            del consumers["w3"]
            await _until_balanced(h, consumers, partitions, "w1 and w2 take over w3's partitions")


async def check_ordered_fencing(backend: BackendFactory) -> None:
    """G4: once a consumer is gone, its late ack of a message it held is fenced: the message is
    redelivered to the next owners and the committed offset does not move.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker_a, h.connect() as broker_b:
            topic_a = broker_a.ordered_topic(_TOPIC, partitions=1)
            topic_b = broker_b.ordered_topic(_TOPIC, partitions=1)
            await topic_a.send("k", b"k#1")
            async with (
                topic_a.consumer(group=_GROUP, name="w1") as consumer_a,
                _reading(consumer_a, "w1") as inbox_a,
            ):
                stale = await inbox_a.get("k#1 at w1")
            async with (
                topic_b.consumer(group=_GROUP, name="w2") as consumer_b,
                _reading(consumer_b, "w2") as inbox_b,
            ):
                again = await inbox_b.get("k#1 redelivered to w2")
                _equal((again.payload, again.delivery_count), (b"k#1", 2), "redelivery")
                # w1 is gone: its ack must not commit k#1 (a no-op, or ResourceClosed).
                with suppress(litechan.ResourceClosed):
                    await stale.ack()
                stats = await topic_b.stats()
                _equal(
                    stats.partitions[0].groups[_GROUP].committed,
                    0,
                    "committed offset after a late ack by a consumer that lost the partition",
                )
            async with (
                topic_b.consumer(group=_GROUP, name="w3") as consumer_c,
                _reading(consumer_c, "w3") as inbox_c,
            ):
                third = await inbox_c.get("k#1 redelivered to w3 (nobody acked it validly)")
                _equal((third.payload, third.delivery_count), (b"k#1", 3), "redelivery")
                await third.ack()


async def check_lite_single_owner_and_fencing(backend: BackendFactory) -> None:
    """G4: a lite topic has one owner in a group; a revoked subscriber's late acks are fenced, so
    a third subscriber still resumes at the offset the group really committed.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with (
            backend() as h,
            h.connect() as broker_a,
            h.connect() as broker_b,
            h.connect() as broker_c,
        ):
            replies_a = broker_a.lite_topics(_PARENT)
            replies_b = broker_b.lite_topics(_PARENT)
            replies_c = broker_c.lite_topics(_PARENT)
            for n in (1, 2):
                await replies_a.publish(topic, _payload(topic, n))
            async with replies_a.subscriber(group=_LITE_GROUP, name="gw-a") as sub_a:
                channel_a = await sub_a.subscribe(topic)
                async with _reading(channel_a, "gw-a") as inbox_a:
                    held = await inbox_a.take(2, "both messages at gw-a")
                    async with replies_b.subscriber(group=_LITE_GROUP, name="gw-b") as sub_b:
                        channel_b = await sub_b.subscribe(topic)
                        await inbox_a.wait_ended("gw-a", "gw-b subscribed to the same topic")
                        _equal(
                            (topic in sub_a.lite_topics, topic in sub_b.lite_topics),
                            (False, True),
                            "ownership (in gw-a, in gw-b) after the takeover",
                        )
                        for msg in held:
                            await msg.ack()  # fenced: gw-a no longer owns the topic
                        async with _reading(channel_b, "gw-b") as inbox_b:
                            first = await inbox_b.get("the first message at gw-b")
                            _equal(first.offset, 1, "gw-b resumes at the committed offset")
                        stats = await replies_b.stats()
                        backlog = {(t.lite_topic, t.group): t.backlog for t in stats.top}
                        _equal(
                            backlog.get((topic, _LITE_GROUP)),
                            2,
                            "backlog after gw-a's fenced acks",
                        )
                    # gw-b leaves without acking anything
            async with replies_c.subscriber(group=_LITE_GROUP, name="gw-c") as sub_c:
                channel_c = await sub_c.subscribe(topic)
                async with _reading(channel_c, "gw-c") as inbox_c:
                    msgs = await inbox_c.take(2, "both messages at gw-c")
                    _equal(
                        [m.offset for m in msgs],
                        [1, 2],
                        "gw-c resumes at offset 1: a revoked subscriber's acks move nothing",
                    )
                    for msg in msgs:
                        await msg.ack()


# ---------------------------------------------------------------------------------------------
# G5 lazy creation
# ---------------------------------------------------------------------------------------------


async def check_lazy_creation(backend: BackendFactory) -> None:
    """G5: publishing to an undeclared lite topic creates it (offsets from 1); subscribing before
    it exists works; a new ordered topic numbers each partition from 1.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            _equal((await replies.stats()).topics, 0, "lite topics in a fresh world")
            offsets = [await replies.publish("fresh", _payload("fresh", n)) for n in (1, 2, 3)]
            _equal(offsets, [1, 2, 3], "offsets of a lazily created lite topic")
            _equal((await replies.stats()).topics, 1, "lite topics after publishing to one")
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe("later")
                _equal(channel.end_reason, None, "end_reason of a channel on a missing topic")
                async with _reading(channel, "channel later") as inbox:
                    await h.settle()
                    inbox.assert_empty("the topic does not exist yet")
                    _equal(await replies.publish("later", b"hello"), 1, "first offset")
                    msg = await inbox.get("the first message of a topic created after subscribe")
                    _equal((msg.offset, msg.payload), (1, b"hello"), "message")
                    await msg.ack()
            topic = broker.ordered_topic(_TOPIC, partitions=2)
            for partition in (0, 1):
                (key,) = _keys_in(partition, 2, 1)
                receipt = await topic.send(key, b"x")
                _equal(
                    (receipt.partition, receipt.offset),
                    (partition, 1),
                    "first receipt of a partition",
                )


# ---------------------------------------------------------------------------------------------
# G6 resume
# ---------------------------------------------------------------------------------------------


async def check_resume_committed(backend: BackendFactory) -> None:
    """G6: a subscriber on another broker resumes at the group's committed offset and gets every
    message published while nobody was subscribed, in order.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as producer:
            replies = producer.lite_topics(_PARENT)
            for n in (1, 2, 3, 4):
                await replies.publish(topic, _payload(topic, n))
            async with h.connect() as gateway_1:
                replies_1 = gateway_1.lite_topics(_PARENT)
                async with replies_1.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                    channel = await sub.subscribe(topic)  # no committed offset: earliest
                    async with _reading(channel, "gw-1") as inbox:
                        msgs = await inbox.take(4, "the backlog at gw-1")
                        _equal([m.offset for m in msgs], [1, 2, 3, 4], "offsets at gw-1")
                        for msg in msgs[:2]:
                            await msg.ack()
                # gw-1 goes away with offsets 3 and 4 delivered but not acked
            await replies.publish(topic, _payload(topic, 5))  # while nobody is subscribed
            async with h.connect() as gateway_2:
                replies_2 = gateway_2.lite_topics(_PARENT)
                async with replies_2.subscriber(group=_LITE_GROUP, name="gw-2") as sub:
                    channel = await sub.subscribe(topic, start="committed")
                    async with _reading(channel, "gw-2") as inbox:
                        msgs = await inbox.take(3, "the rest at gw-2")
                        _equal(
                            [(m.offset, m.payload) for m in msgs],
                            [(n, _payload(topic, n)) for n in (3, 4, 5)],
                            "gw-2 resumes after the committed offset",
                        )
                        for msg in msgs:
                            await msg.ack()
                        await h.settle()
                        inbox.assert_empty("nothing after offset 5")


async def check_resume_skips_acked(backend: BackendFactory) -> None:
    """G6 with out-of-order acks: after an unsubscribe, resuming at the committed offset
    redelivers only what the group has not acked, whether acked below or above the gap.

    .. versionadded:: 0.2.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            for n in (1, 2, 3, 4):
                await replies.publish(topic, _payload(topic, n))
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                async with _reading(await sub.subscribe(topic), "gw-1") as inbox:
                    msgs = await inbox.take(4, "the backlog at gw-1")
                    _equal([m.offset for m in msgs], [1, 2, 3, 4], "offsets at gw-1")
                    await msgs[1].ack()  # out of order: m1 and m3 stay un-acked
                    await msgs[3].ack()
                    await sub.unsubscribe(topic)
                channel = await sub.subscribe(topic, start="committed")
                async with _reading(channel, "gw-1 again") as inbox:
                    again = await inbox.take(2, "the un-acked messages")
                    _equal([m.offset for m in again], [1, 3], "only m1 and m3 come back")
                    for msg in again:
                        await msg.ack()
                    await h.settle()
                    inbox.assert_empty("no acked message comes back")


async def check_resume_start_positions(backend: BackendFactory) -> None:
    """G6: ``start="earliest"`` re-reads from the first retained message, an int starts at that
    offset, and ``"latest"`` only delivers messages published after the subscribe.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            for n in (1, 2, 3, 4, 5):
                await replies.publish(topic, _payload(topic, n))
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                async with await sub.subscribe(topic) as channel, _reading(channel, "c") as inbox:
                    for msg in await inbox.take(3, "the first three"):
                        await msg.ack()
                starts: list[tuple[Literal["earliest", "committed"] | int, int]] = [
                    ("earliest", 1),
                    (4, 4),
                    ("committed", 4),
                ]
                for start, first in starts:
                    async with (
                        await sub.subscribe(topic, start=start) as channel,
                        _reading(channel, f"start={start!r}") as inbox,
                    ):
                        msg = await inbox.get(f"the first message with start={start!r}")
                        _equal(msg.offset, first, f"first offset with start={start!r}")
                async with (
                    await sub.subscribe(topic, start="latest") as channel,
                    _reading(channel, "start='latest'") as inbox,
                ):
                    await h.settle()
                    inbox.assert_empty("start='latest' skips what was published before")
                    await replies.publish(topic, _payload(topic, 6))
                    msg = await inbox.get("a message published after a 'latest' subscribe")
                    _equal(msg.offset, 6, "first offset with start='latest'")


# ---------------------------------------------------------------------------------------------
# G7 takeover
# ---------------------------------------------------------------------------------------------


async def check_takeover(backend: BackendFactory) -> None:
    """G7: when B subscribes to a lite topic A owns, A's channel ends REVOKED, B resumes at the
    committed offset (A's un-acked messages go to B) and later messages go to B only.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker_a, h.connect() as broker_b:
            replies_a = broker_a.lite_topics(_PARENT)
            replies_b = broker_b.lite_topics(_PARENT)
            async with (
                replies_a.subscriber(group=_LITE_GROUP, name="gw-a") as sub_a,
                replies_b.subscriber(group=_LITE_GROUP, name="gw-b") as sub_b,
            ):
                channel_a = await sub_a.subscribe(topic)
                async with _reading(channel_a, "gw-a") as inbox_a:
                    await replies_a.publish(topic, b"m1")
                    m1 = await inbox_a.get("m1 at gw-a")
                    await m1.ack()
                    await replies_a.publish(topic, b"m2")
                    m2 = await inbox_a.get("m2 at gw-a")
                    _equal(m2.offset, 2, "offset of m2")
                    _equal(channel_a.end_reason, None, "end_reason of an open channel")
                    channel_b = await sub_b.subscribe(topic)
                    await inbox_a.wait_ended("gw-a", "gw-b took the topic over")
                    _equal(channel_a.end_reason, litechan.EndReason.REVOKED, "gw-a end_reason")
                    _equal(sub_a.lite_topics, frozenset(), "gw-a's lite topics after takeover")
                    _equal(sub_b.lite_topics, frozenset({topic}), "gw-b's lite topics")
                    async with _reading(channel_b, "gw-b") as inbox_b:
                        got = await inbox_b.get("m2 (un-acked by gw-a) at gw-b")
                        _equal((got.offset, got.payload), (2, b"m2"), "gw-b resumes at m2")
                        await got.ack()
                        await replies_a.publish(topic, b"m3")
                        got = await inbox_b.get("m3 at gw-b")
                        _equal((got.offset, got.payload), (3, b"m3"), "m3 goes to gw-b")
                        await got.ack()
                        await h.settle()
                        inbox_a.assert_empty("nothing reaches a revoked channel")
                        inbox_b.assert_empty("nothing else")
                    stats = await replies_a.stats()
                    owners = {(t.lite_topic, t.group): t.owner for t in stats.top}
                    _equal(owners.get((topic, _LITE_GROUP)), "gw-b", "stats() owner")


async def check_takeover_skips_acked(backend: BackendFactory) -> None:
    """G3 with out-of-order acks: a new owner gets only what the group has not acked, and an
    ack made before the message under the committed offset was trimmed is not lost.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker_a, h.connect() as broker_b:
            replies_a = broker_a.lite_topics(_PARENT, max_len=3)
            replies_b = broker_b.lite_topics(_PARENT, max_len=3)
            for n in (1, 2, 3):
                await replies_a.publish(topic, b"m%d" % n)
            async with (
                replies_a.subscriber(group=_LITE_GROUP, name="gw-a") as sub_a,
                replies_b.subscriber(group=_LITE_GROUP, name="gw-b") as sub_b,
            ):
                async with _reading(await sub_a.subscribe(topic), "gw-a") as inbox_a:
                    first = await inbox_a.get("m1 at gw-a")
                    second = await inbox_a.get("m2 at gw-a")
                    _equal((first.offset, second.offset), (1, 2), "gw-a reads m1, m2")
                    await second.ack()  # out of order: m1 stays un-acked
                    channel_b = await sub_b.subscribe(topic)
                    await inbox_a.wait_ended("gw-a", "gw-b took the topic over")
                async with _reading(channel_b, "gw-b") as inbox_b:
                    got = [await inbox_b.get("un-acked m1 at gw-b")]
                    got.append(await inbox_b.get("m3 at gw-b"))
                    _equal([m.offset for m in got], [1, 3], "gw-b skips m2, acked by gw-a")
                    await got[1].ack()
                    await replies_b.publish(topic, b"m4")  # trims m1, still un-acked
                    fourth = await inbox_b.get("m4 at gw-b")
                    await got[
                        0
                    ].ack()  # m1 was trimmed meanwhile: the ack must not confuse the offset
                    await fourth.ack()
                    await h.settle()
                    inbox_b.assert_empty("no acked message comes back")
                stats = await replies_b.stats()
                lags = {(t.lite_topic, t.group): t.backlog for t in stats.top}
                _equal(lags.get((topic, _LITE_GROUP)), 0, "backlog once everything is acked")
                _equal(stats.backlog, 0, "total backlog")


class _BodyError(Exception):
    """What a check raises in the body of an ``async with``."""


async def _raise_inside(context: AbstractAsyncContextManager[object], what: str) -> None:
    async with context:
        raise _BodyError(f"in {what}")


async def check_body_errors_come_out_plain(backend: BackendFactory) -> None:
    """What the body of ``async with`` raises comes out of every context manager of the
    library as itself, never wrapped in an ExceptionGroup (``except KeyError`` around the block
    must match): broker, consumer, subscriber and channel; and so does a library error raised
    in a consumer's body (``nack(delay=-1)``).

    .. versionadded:: 0.2.0
    """
    with anyio.fail_after(_CHECK_TIMEOUT):  # no _bounded(): it would unwrap what is checked
        async with backend() as h:
            with _raises(_BodyError, "the body's error out of `async with broker`"):
                await _raise_inside(h.connect(), "a broker")
            async with h.connect() as broker:
                topic = broker.ordered_topic(_TOPIC, partitions=1)
                replies = broker.lite_topics(_PARENT)
                with _raises(_BodyError, "the body's error out of `async with consumer`"):
                    await _raise_inside(topic.consumer(group=_GROUP, name="w1"), "a consumer")
                with _raises(_BodyError, "the body's error out of `async with subscriber`"):
                    subscriber = replies.subscriber(group=_LITE_GROUP, name="gw-1")
                    await _raise_inside(subscriber, "a subscriber")
                async with replies.subscriber(group=_LITE_GROUP, name="gw-2") as sub:
                    channel = await sub.subscribe("s1")
                    with _raises(_BodyError, "the body's error out of `async with channel`"):
                        await _raise_inside(channel, "a channel")
                await topic.send("k", b"m1")
                with _raises(
                    litechan.InvalidArgument, "nack(delay=-1) out of `async with consumer`"
                ):
                    async with topic.consumer(group=_GROUP, name="w2") as consumer:
                        msg = await anext(aiter(consumer))
                        await msg.nack(delay=-1)


async def check_channel_lifecycle(backend: BackendFactory) -> None:
    """Channels end with UNSUBSCRIBED (unsubscribe, or leaving ``async with channel``) or CLOSED
    (subscriber or broker closed); subscribing twice returns the same channel.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe("s1")
                _equal(channel.end_reason, None, "end_reason while open")
                _true(await sub.subscribe("s1") is channel, "subscribing twice: same channel")
                _equal(sub.lite_topics, frozenset({"s1"}), "lite topics after subscribe")
                await replies.publish("s1", b"a")
                async with _reading(channel, "s1") as inbox:
                    msg = await inbox.get("a")
                    await msg.ack()
                    await sub.unsubscribe("s1")
                    await inbox.wait_ended("s1", "unsubscribe")
                _equal(channel.end_reason, litechan.EndReason.UNSUBSCRIBED, "after unsubscribe")
                _equal(sub.lite_topics, frozenset(), "lite topics after unsubscribe")
                await sub.unsubscribe("s1")  # idempotent
                await sub.unsubscribe("never-subscribed")
                await replies.publish("s1", b"b")
                again = await sub.subscribe("s1")
                _true(again is not channel, "a new channel after unsubscribe")
                async with again, _reading(again, "s1 again") as inbox:
                    msg = await inbox.get("b, after re-subscribing")
                    _equal((msg.offset, msg.payload), (2, b"b"), "resumed message")
                    await msg.ack()
                _equal(again.end_reason, litechan.EndReason.UNSUBSCRIBED, "after async with")
                _equal(sub.lite_topics, frozenset(), "lite topics after leaving async with")
                open_channel = await sub.subscribe("s2")
            _equal(open_channel.end_reason, litechan.EndReason.CLOSED, "after subscriber close")
            async for _ in open_channel:
                raise AssertionError("a closed channel yielded a message")
            with _raises(litechan.ResourceClosed, "subscribe() on a closed subscriber"):
                await sub.subscribe("s3")
            async with (
                h.connect() as other,
                other.lite_topics(_PARENT).subscriber(group=_LITE_GROUP, name="gw-2") as sub_2,
            ):
                channel_2 = await sub_2.subscribe("s4")
                await other.aclose()
                _equal(channel_2.end_reason, litechan.EndReason.CLOSED, "after broker close")


# ---------------------------------------------------------------------------------------------
# G8 TTL
# ---------------------------------------------------------------------------------------------


async def check_ttl_expiry(backend: BackendFactory) -> None:
    """G8: a lite topic without publish for ``ttl`` is deleted with its offsets and
    subscriptions (channels end EXPIRED); a later publish recreates it at offset 1, new epoch.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT, ttl=_TTL)
            await replies.publish(topic, b"before")
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe(topic)
                async with _reading(channel, "gw-1") as inbox:
                    old = await inbox.get("the message before expiry")
                    await old.ack()
                    await h.advance(_TTL * 1.5)
                    stats = await replies.stats()
                    _equal(
                        (stats.topics, stats.subscriptions, stats.backlog),
                        (0, 0, 0),
                        "stats (topics, subscriptions, backlog) after the TTL passed",
                    )
                    await inbox.wait_ended("gw-1", "the topic's TTL passed")
                _equal(channel.end_reason, litechan.EndReason.EXPIRED, "end_reason after TTL")
                _equal(sub.lite_topics, frozenset(), "lite topics after expiry")
                _equal(await replies.publish(topic, b"after"), 1, "offset after re-creation")
                channel = await sub.subscribe(topic)
                async with _reading(channel, "gw-1 again") as inbox:
                    new = await inbox.get("the first message of the new incarnation")
                    _equal((new.offset, new.payload), (1, b"after"), "committed offset was reset")
                    _true(new.epoch != old.epoch, f"epoch unchanged after expiry: {new.epoch!r}")
                    await new.ack()


async def check_ttl_refreshed_by_publish(backend: BackendFactory) -> None:
    """G8: each publish restarts the TTL: a topic published to more often than ``ttl`` lives on
    with its offsets, epoch and subscriptions.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT, ttl=_TTL)
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe(topic)
                async with _reading(channel, "gw-1") as inbox:
                    epochs = set()
                    for n in (1, 2, 3):
                        if n > 1:
                            await h.advance(_TTL * 0.6)
                        _equal(await replies.publish(topic, _payload(topic, n)), n, "offset")
                        msg = await inbox.get(f"message {n}")
                        _equal(msg.offset, n, "offset delivered")
                        epochs.add(msg.epoch)
                        await msg.ack()
                    _equal(len(epochs), 1, "epochs seen while the topic stayed alive")
                    _equal(channel.end_reason, None, "end_reason of a live topic")
                    _equal((await replies.stats()).topics, 1, "live topics")


# ---------------------------------------------------------------------------------------------
# G9 bounded retention, visible loss
# ---------------------------------------------------------------------------------------------


def _check_no_silent_loss(msgs: Sequence[litechan.LiteMessage], position: int, what: str) -> None:
    """After *position* (the group's last settled offset), every offset up to the last message
    is either delivered or counted in the next delivered message's ``gap_before`` (G9)."""
    expected = position + 1
    for msg in msgs:
        if msg.offset - msg.gap_before != expected:
            raise AssertionError(
                f"{what}: message at offset {msg.offset} has gap_before={msg.gap_before}, but "
                f"the previous position was {expected - 1}: "
                f"{msg.offset - expected - msg.gap_before} message(s) lost silently"
            )
        expected = msg.offset + 1


async def _read_through(
    channel: AsyncIterable[litechan.LiteMessage], last: int, what: str
) -> list[litechan.LiteMessage]:
    """Read *channel* directly (no pump) until the message at offset *last*."""
    msgs: list[litechan.LiteMessage] = []
    iterator = aiter(channel)
    with anyio.move_on_after(_STEP_TIMEOUT):
        while not msgs or msgs[-1].offset < last:
            msgs.append(await anext(iterator))
        return msgs
    raise AssertionError(f"{what}: offset {last} not reached within {_STEP_TIMEOUT}s: {msgs}")


async def check_bounded_retention(backend: BackendFactory) -> None:
    """G9: a lite topic keeps ``max_len`` messages; a group that falls further behind, whether
    subscribed or not, is told how many it missed with ``gap_before`` and a warning is logged.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT, max_len=5)
            for n in range(1, 9):
                await replies.publish(topic, _payload(topic, n))
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                # A group with no committed offset starts at the earliest retained message.
                async with await sub.subscribe(topic) as channel:
                    msgs = await _read_through(channel, 8, "a new group")
                    _equal(
                        [m.offset for m in msgs],
                        [4, 5, 6, 7, 8],
                        "offsets retained after 8 publishes with max_len=5",
                    )
                    _equal(msgs[0].payload, _payload(topic, 4), "payload")
                    _check_no_silent_loss(msgs[1:], 4, "a new group")
                    for msg in msgs:
                        await msg.ack()
                # Falling behind while subscribed: 12 publishes nobody reads, 5 retained.
                with structlog.testing.capture_logs() as live_logs:
                    async with await sub.subscribe(topic) as channel:
                        for n in range(9, 21):
                            await replies.publish(topic, _payload(topic, n))
                        msgs = await _read_through(channel, 20, "a subscriber left behind")
                        _check_no_silent_loss(msgs, 8, "a subscriber left behind")
                        _equal(
                            [m.offset for m in msgs[-5:]],
                            [16, 17, 18, 19, 20],
                            "the retained messages are delivered",
                        )
                        for msg in msgs:
                            await msg.ack()
                if any(m.gap_before for m in msgs):
                    _true(
                        any(e.get("log_level") in ("warning", "error") for e in live_logs),
                        f"a gap was reported without a warning log; logs: {live_logs}",
                    )
                # Falling behind while nobody is subscribed, then resuming (G6 + G9).
                for n in range(21, 29):
                    await replies.publish(topic, _payload(topic, n))
                with structlog.testing.capture_logs() as resume_logs:
                    async with await sub.subscribe(topic) as channel:
                        msgs = await _read_through(channel, 28, "a group resuming")
                        _equal(
                            [(m.offset, m.gap_before) for m in msgs],
                            [(24, 3), (25, 0), (26, 0), (27, 0), (28, 0)],
                            "(offset, gap_before) resuming after offset 20 with 24..28 retained",
                        )
                _true(
                    any(e.get("log_level") in ("warning", "error") for e in resume_logs),
                    f"no warning logged for a gap; logs: {resume_logs}",
                )


# ---------------------------------------------------------------------------------------------
# G10 isolation
# ---------------------------------------------------------------------------------------------


async def check_gap_counts_only_unacked(backend: BackendFactory) -> None:
    """G9 after a takeover: gap_before counts the trimmed messages the group had not acked,
    not those it acked out of order, and is reported even when nothing between was left.

    .. versionadded:: 0.1.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker_a, h.connect() as broker_b:
            replies_a = broker_a.lite_topics(_PARENT, max_len=4)
            replies_b = broker_b.lite_topics(_PARENT, max_len=4)
            for n in range(1, 5):
                await replies_a.publish(topic, b"m%d" % n)
            async with (
                replies_a.subscriber(group=_LITE_GROUP, name="gw-a") as sub_a,
                replies_b.subscriber(group=_LITE_GROUP, name="gw-b") as sub_b,
            ):
                async with _reading(await sub_a.subscribe(topic), "gw-a") as inbox_a:
                    got = await inbox_a.take(4, "m1..m4 at gw-a")
                    for message in got[1:]:
                        await message.ack()  # m1 stays un-acked
                for n in range(5, 9):
                    await replies_a.publish(topic, b"m%d" % n)  # m1..m4 are trimmed
                async with _reading(await sub_b.subscribe(topic), "gw-b") as inbox_b:
                    first = await inbox_b.get("the first retained message at gw-b")
                    _equal(first.offset, 5, "gw-b resumes at the first retained message")
                    _equal(first.gap_before, 1, "gap_before counts only un-acked m1")


async def check_lite_isolation(backend: BackendFactory) -> None:
    """G10: lite topics, parents and worlds never see each other's messages, and two groups each
    get every message with their own offsets.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, backend() as h_other, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            events = broker.lite_topics("events")
            names = ["s1", "s1.x", "s1-x", "s1_x", "S1"]
            for name in names:
                _equal(await replies.publish(name, name.encode()), 1, f"offset in {name!r}")
            _equal(await events.publish("s1", b"event"), 1, "offset of s1 under another parent")
            async with h_other.connect() as other_world:
                other_replies = other_world.lite_topics(_PARENT)
                _equal(await other_replies.publish("s1", b"world-2"), 1, "other world offset")
                async with (
                    other_replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub,
                    await sub.subscribe("s1") as channel,
                    _reading(channel, "other world") as inbox,
                ):
                    msg = await inbox.get("the other world's message")
                    _equal(msg.payload, b"world-2", "payload in the other world")
                    await h_other.settle()
                    inbox.assert_empty("another world's messages")
            async with (
                replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub,
                replies.subscriber(group="audit", name="gw-1") as audit,
                events.subscriber(group=_LITE_GROUP, name="gw-1") as sub_events,
            ):
                for name in names:
                    async with (
                        await sub.subscribe(name) as channel,
                        _reading(channel, name) as inbox,
                    ):
                        msg = await inbox.get(f"the message of {name!r}")
                        _equal((msg.lite_topic, msg.payload), (name, name.encode()), "message")
                        await msg.ack()
                        await h.settle()
                        inbox.assert_empty(f"only {name!r}'s message")
                async with (
                    await sub_events.subscribe("s1") as channel,
                    _reading(channel, "events/s1") as inbox,
                ):
                    msg = await inbox.get("the events parent's message")
                    _equal(msg.payload, b"event", "payload under the other parent")
                    await h.settle()
                    inbox.assert_empty("only the events parent's message")
                async with (
                    await audit.subscribe("s1") as channel,
                    _reading(channel, "audit") as inbox,
                ):
                    msg = await inbox.get("s1's message for a second group")
                    _equal((msg.offset, msg.payload), (1, b"s1"), "second group's delivery")
                    stats = await replies.stats(top=100)
                    backlog = {(t.lite_topic, t.group): t.backlog for t in stats.top}
                    _equal(backlog.get(("s1", _LITE_GROUP)), 0, "backlog of the group that acked")
                    _equal(backlog.get(("s1", "audit")), 1, "backlog of the group that did not")


async def check_ordered_isolation(backend: BackendFactory) -> None:
    """G10: two groups each get every message of an ordered topic; topics and worlds are
    separate logs.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, backend() as h_other, h.connect() as broker:
            audio = broker.ordered_topic(_TOPIC, partitions=1)
            video = broker.ordered_topic(f"{_TOPIC}.v2", partitions=1)
            await audio.send("k", b"audio")
            _equal((await video.send("k", b"video")).offset, 1, "offset in another topic")
            async with h_other.connect() as other_world:
                other = other_world.ordered_topic(_TOPIC, partitions=1)
                _equal((await other.send("k", b"other")).offset, 1, "offset in another world")
            for group in ("asr", "nlu"):
                async with (
                    audio.consumer(group=group, name="w1") as consumer,
                    _reading(consumer, group) as inbox,
                ):
                    msg = await inbox.get(f"the audio message for group {group}")
                    _equal(msg.payload, b"audio", f"payload for group {group}")
                    await msg.ack()
                    await h.settle()
                    inbox.assert_empty("only the audio topic's message")


# ---------------------------------------------------------------------------------------------
# G11 idempotent send
# ---------------------------------------------------------------------------------------------


async def check_dedupe(backend: BackendFactory) -> None:
    """G11: a second send with the same dedupe_id within the window (from any broker of the world)
    stores nothing and returns the first receipt with duplicate=True; after the window it is new.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker, h.connect() as retrying:
            topic = broker.ordered_topic(_TOPIC, partitions=4, dedupe_window=_DEDUPE_WINDOW)
            topic_2 = retrying.ordered_topic(_TOPIC, partitions=4, dedupe_window=_DEDUPE_WINDOW)
            first = await topic.send("k", b"request", dedupe_id="req-1")
            again = await topic.send("k", b"request", dedupe_id="req-1")
            other_broker = await topic_2.send("k", b"request", dedupe_id="req-1")
            _equal(first.duplicate, False, "duplicate flag of the first send")
            for receipt, what in ((again, "retry"), (other_broker, "retry from another broker")):
                _equal(
                    (receipt.partition, receipt.offset, receipt.duplicate),
                    (first.partition, first.offset, True),
                    f"receipt of a {what}",
                )
            second = await topic.send("k", b"request 2", dedupe_id="req-2")
            _equal((second.offset, second.duplicate), (2, False), "another dedupe_id")
            await h.advance(_DEDUPE_WINDOW * 1.5)
            late = await topic.send("k", b"request", dedupe_id="req-1")
            _equal((late.offset, late.duplicate), (3, False), "same dedupe_id after the window")
            _equal((await topic.stats()).length, 3, "messages stored")
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                for offset in (1, 2, 3):
                    msg = await inbox.get(f"offset {offset}")
                    _equal(msg.offset, offset, "offset delivered")
                    await msg.ack()
                await h.settle()
                inbox.assert_empty("duplicates are not delivered")


# ---------------------------------------------------------------------------------------------
# deadlines (expires_in)
# ---------------------------------------------------------------------------------------------


def _expires_at_ok(h: Harness, expires_at: float | None, published_at: float) -> bool:
    slack = 0.0 if h.clock is not None else 1.0
    return expires_at is not None and abs(expires_at - (published_at + _FAR)) <= slack


async def check_ordered_deadline(backend: BackendFactory) -> None:
    """Deadlines: a message sent with ``expires_in`` and not handed out in time is never
    delivered, is counted in the group's ``expired`` and does not hold its key back; one handed
    out in time carries its ``expires_at``; one nacked with a delay that ends past its deadline
    is settled as expired at once.

    .. versionadded:: 0.2.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            await topic.send("k", b"k#1")
            await topic.send("k", b"k#2", expires_in=_DEADLINE)
            await topic.send("k", b"k#3")
            await topic.send("other", b"other#1", expires_in=_FAR)
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each key")}
                k1, other = got["k"], got["other"]
                _equal(k1.expires_at, None, "expires_at of a message sent without expires_in")
                _true(
                    _expires_at_ok(h, other.expires_at, other.published_at),
                    f"expires_at {other.expires_at} is not published_at {other.published_at}"
                    f" + expires_in {_FAR}",
                )
                await other.ack()
                await h.advance(_DEADLINE * 1.5)  # k#2 expires while k#1 is out
                await k1.ack()
                k3 = await inbox.get("k#3, k#2 having expired behind k#1")
                _equal((k3.payload, k3.offset), (b"k#3", 3), "the message after the expired one")
                await k3.ack()
                await h.settle()
                inbox.assert_empty("k#2 was not handed out before its deadline: never")
                await topic.send("n", b"n#1", expires_in=_DEADLINE)
                await topic.send("n", b"n#2")
                n1 = await inbox.get("n#1, within its deadline")
                await n1.nack(delay=_DEADLINE * 2)  # the retry would come too late
                n2 = await inbox.get("n#2 at once: n#1's retry would pass its deadline")
                _equal(n2.payload, b"n#2", "the message after the one nacked past its deadline")
                await n2.ack()
                await h.advance(_DEADLINE * 2.5)
                inbox.assert_empty("n#1 expired when it was nacked: never delivered again")
            stats = await topic.stats()
            _equal(stats.expired(_GROUP), 2, "messages the group settled as expired")
            _equal(stats.lag(_GROUP), 0, "the group's lag, the expired message settled")


async def check_lite_deadline(backend: BackendFactory) -> None:
    """Deadlines: a lite-topic message published with ``expires_in`` that a group has not
    handed out in time is never delivered to it (channel and merged view), is counted in that
    group's ``expired`` and leaves no backlog; one delivered in time carries its ``expires_at``.

    .. versionadded:: 0.2.0
    """
    topic = "s1"
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT, ttl=_DEADLINE * 30)
            await replies.publish(topic, b"m1")
            await replies.publish(topic, b"m2", expires_in=_DEADLINE)
            await replies.publish(topic, b"m3", expires_in=_FAR)
            await h.advance(_DEADLINE * 1.5)
            await replies.publish(topic, b"m4")
            async with (
                replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub,
                replies.subscriber(group="audit", name="audit-1") as merged,
            ):
                channel = await sub.subscribe(topic)
                await merged.subscribe(topic)
                async with _reading(channel, "gw-1") as inbox:
                    inbox.watch(merged, "audit-1")
                    got: dict[str, list[litechan.LiteMessage]] = {"gw-1": [], "audit-1": []}
                    for _ in range(6):
                        item = await inbox.get_from("the messages still worth delivering")
                        got[item.by].append(item.msg)
                        await item.msg.ack()
                    for by, messages in got.items():
                        _equal(
                            [(m.offset, m.payload) for m in messages],
                            [(1, b"m1"), (3, b"m3"), (4, b"m4")],
                            f"messages {by} delivered (m2 expired before it was read)",
                        )
                        _equal(messages[0].expires_at, None, "expires_at without expires_in")
                        m3 = messages[1]
                        _true(
                            _expires_at_ok(h, m3.expires_at, m3.published_at),
                            f"expires_at {m3.expires_at} is not published_at {m3.published_at}"
                            f" + expires_in {_FAR}",
                        )
                    await replies.publish(topic, b"m5", expires_in=_FAR)  # as it is published
                    for _ in range(2):
                        m5 = await inbox.get("m5, published with expires_in while read")
                        _true(
                            _expires_at_ok(h, m5.expires_at, m5.published_at),
                            f"expires_at {m5.expires_at} of m5",
                        )
                        await m5.ack()
                    await h.settle()
                    inbox.assert_empty("m2 was not handed out before its deadline: never")
            stats = await replies.stats()
            _equal(stats.expired, {_LITE_GROUP: 1, "audit": 1}, "expired per group")
            _equal(stats.backlog, 0, "backlog, the expired message settled")


# ---------------------------------------------------------------------------------------------
# G12 clear errors
# ---------------------------------------------------------------------------------------------

# Names that must never be accepted: empty, hidden, separators a backend could use to build
# storage keys (path, Redis key and hash-tag syntax), whitespace, control and non-ASCII
# characters, and one character too many.
_BAD_NAMES = (
    "",
    ".",
    ".hidden",
    "../etc",
    "a/b",
    "a\\b",
    "a:b",
    "{tag}",
    "a*",
    "a b",
    "a\n",
    "a\x00",
    "é",
    "会话",
    "x" * 129,
)
_GOOD_NAMES = ("x" * 128, "A-z_0.9", "0")


async def check_invalid_names(backend: BackendFactory) -> None:
    """G10/G12: every kind of name rejects empty, path-like, separator, whitespace, non-ASCII and
    over-long values with InvalidName (a ValueError), creating nothing; keys are checked too.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            replies = broker.lite_topics(_PARENT)
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                for bad in _BAD_NAMES:
                    with _raises(litechan.InvalidName, f"ordered_topic({bad!r})"):
                        broker.ordered_topic(bad)
                    with _raises(litechan.InvalidName, f"lite_topics({bad!r})"):
                        broker.lite_topics(bad)
                    with _raises(litechan.InvalidName, f"consumer(group={bad!r})"):
                        async with topic.consumer(group=bad, name="w1"):
                            pass
                    with _raises(litechan.InvalidName, f"consumer(name={bad!r})"):
                        async with topic.consumer(group=_GROUP, name=bad):
                            pass
                    with _raises(litechan.InvalidName, f"subscriber(group={bad!r})"):
                        async with replies.subscriber(group=bad, name="gw-1"):
                            pass
                    with _raises(litechan.InvalidName, f"subscriber(name={bad!r})"):
                        async with replies.subscriber(group=_LITE_GROUP, name=bad):
                            pass
                    with _raises(litechan.InvalidName, f"publish({bad!r})"):
                        await replies.publish(bad, b"x")
                    with _raises(litechan.InvalidName, f"subscribe({bad!r})"):
                        await sub.subscribe(bad)
                with _raises(ValueError, "InvalidName is a ValueError"):
                    await replies.publish("a/b", b"x")
                with _raises(litechan.LitechanError, "InvalidName is a LitechanError"):
                    await replies.publish("a/b", b"x")
                _equal(sub.lite_topics, frozenset(), "lite topics after invalid subscribes")
                _equal((await replies.stats()).topics, 0, "lite topics after invalid publishes")
                for bad_key in ("", "k" * 1025):
                    with _raises(litechan.InvalidName, f"send() with a key of {len(bad_key)}"):
                        await topic.send(bad_key, b"x")
                _equal((await topic.stats()).length, 0, "messages after invalid sends")
                for good in _GOOD_NAMES:
                    broker.ordered_topic(good)
                    broker.lite_topics(good)
                    _equal(await replies.publish(good, b"x"), 1, f"publish({good!r})")
                for good_key in ("k" * 1024, "会话 / {x}:y"):
                    await topic.send(good_key, b"x")


async def check_payload_errors(backend: BackendFactory) -> None:
    """G12: oversized payloads raise PayloadTooLarge with nothing written (1 MiB by default);
    non-bytes payloads and non-``dict[str, str]`` headers raise InvalidPayload (a TypeError);
    an ``expires_in`` that is not a finite number of seconds > 0 raises InvalidArgument.

    .. versionadded:: 0.1.0
    """
    limit = 1024
    with _bounded():
        async with backend() as h, h.connect(max_payload=limit) as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            replies = broker.lite_topics(_PARENT)
            with _raises(litechan.PayloadTooLarge, f"send() of {limit + 1} bytes"):
                await topic.send("k", b"x" * (limit + 1))
            with _raises(litechan.PayloadTooLarge, f"publish() of {limit + 1} bytes"):
                await replies.publish("s1", b"x" * (limit + 1))
            with _raises(ValueError, "PayloadTooLarge is a ValueError"):
                await replies.publish("s1", b"x" * (limit + 1))
            _equal((await topic.stats()).length, 0, "messages after a refused send")
            _equal((await replies.stats()).topics, 0, "lite topics after a refused publish")
            _equal((await topic.send("k", b"x" * limit)).offset, 1, "send() at the limit")
            _equal(await replies.publish("s1", b"x" * limit), 1, "publish() at the limit")
            bad_payloads: tuple[object, ...] = ("text", 42, None, [1, 2])
            bad_headers: tuple[object, ...] = ({"a": 1}, {1: "a"}, {"a": b"b"}, ["a"], "a=b")
            for payload in bad_payloads:
                with _raises(litechan.InvalidPayload, f"send() of payload {payload!r}"):
                    await topic.send("k", payload)  # type: ignore[arg-type]
                with _raises(TypeError, f"publish() of payload {payload!r}"):
                    await replies.publish("s1", payload)  # type: ignore[arg-type]
            for headers in bad_headers:
                with _raises(litechan.InvalidPayload, f"send() with headers {headers!r}"):
                    await topic.send("k", b"x", headers=headers)  # type: ignore[arg-type]
                with _raises(litechan.InvalidPayload, f"publish() with headers {headers!r}"):
                    await replies.publish("s1", b"x", headers=headers)  # type: ignore[arg-type]
            bad_deadlines: tuple[object, ...] = (0, -1.0, math.nan, math.inf, "5", True)
            for expires_in in bad_deadlines:
                with _raises(litechan.InvalidArgument, f"send() with expires_in={expires_in!r}"):
                    await topic.send("k", b"x", expires_in=expires_in)  # type: ignore[arg-type]
                with _raises(litechan.InvalidArgument, f"publish() with expires_in={expires_in!r}"):
                    await replies.publish("s1", b"x", expires_in=expires_in)  # type: ignore[arg-type]
            _equal((await topic.stats()).length, 1, "messages after refused sends")
            _equal(await replies.publish("s1", b"ok"), 2, "next offset after refused publishes")
        async with h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            await topic.send("k", b"x" * (1 << 20))
            with _raises(litechan.PayloadTooLarge, "send() above the default 1 MiB"):
                await topic.send("k", b"x" * ((1 << 20) + 1))


#: A lone surrogate: a valid Python str that no UTF-8 encoder (nor any wire) can carry.
_SURROGATE = "s\ud800"
_LONG = "x" * 10_000


def _short_error(exc: BaseException, what: str) -> None:
    _true(len(str(exc)) < 400, f"{what}: the error message echoes {len(str(exc))} characters")


async def check_hostile_strings(backend: BackendFactory) -> None:
    """G12: lone surrogates, NUL characters and very long strings in every free-form field (key,
    ``dedupe_id``, header names and values, reject reasons, names) get a specific LitechanError
    with a short message and write nothing, or, where the field allows them, arrive intact.

    .. versionadded:: 0.2.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            replies = broker.lite_topics(_PARENT)
            refused: list[tuple[str, Callable[[], Awaitable[object]], type[Exception]]] = [
                ("a key with a lone surrogate", lambda: topic.send(_SURROGATE, b"x"),
                 litechan.InvalidName),
                ("a key of 10,000 characters", lambda: topic.send(_LONG, b"x"),
                 litechan.InvalidName),
                ("a dedupe_id with a lone surrogate",
                 lambda: topic.send("k", b"x", dedupe_id=_SURROGATE), litechan.InvalidArgument),
                ("a dedupe_id of 10,000 characters",
                 lambda: topic.send("k", b"x", dedupe_id=_LONG), litechan.InvalidArgument),
                ("a header value with a lone surrogate",
                 lambda: topic.send("k", b"x", headers={"h": _SURROGATE}),
                 litechan.InvalidPayload),
                ("a header name with a lone surrogate",
                 lambda: replies.publish("s1", b"x", headers={_SURROGATE: "v"}),
                 litechan.InvalidPayload),
                ("headers of 100,000 characters",
                 lambda: replies.publish("s1", b"x", headers={"h": "x" * 100_000}),
                 litechan.PayloadTooLarge),
                ("a lite topic with a lone surrogate", lambda: replies.publish(_SURROGATE, b"x"),
                 litechan.InvalidName),
                ("a lite topic of 10,000 characters", lambda: replies.publish(_LONG, b"x"),
                 litechan.InvalidName),
            ]  # fmt: skip
            for what, call, expected in refused:
                try:
                    await call()
                except expected as exc:
                    _short_error(exc, what)
                except Exception as exc:
                    raise AssertionError(
                        f"{what}: expected {expected.__name__}, got {type(exc).__name__}: "
                        f"{str(exc)[:200]}"
                    ) from exc
                else:
                    raise AssertionError(f"{what}: expected {expected.__name__}, nothing raised")
            for what, make in (
                ("topic name", lambda bad: broker.ordered_topic(bad)),
                ("parent name", lambda bad: broker.lite_topics(bad)),
                ("group name", lambda bad: topic.consumer(group=bad, name="w")),
                ("subscriber name", lambda bad: replies.subscriber(group="g", name=bad)),
            ):
                for bad in (_SURROGATE, _LONG):
                    try:
                        make(bad)
                    except litechan.InvalidName as exc:
                        _short_error(exc, f"a {what} of {len(bad)} characters")
                    else:
                        raise AssertionError(f"a {what} {bad[:20]!r}: no InvalidName raised")
            _equal((await topic.stats()).length, 0, "messages after refused sends")
            _equal((await replies.stats()).topics, 0, "lite topics after refused publishes")

            # NUL and the rest of Unicode are data: they arrive as sent.
            key, headers = "k\x00会话", {"n\x00ame": "v\x00a\U0001f600"}
            first = await topic.send(key, b"\x00", headers=headers, dedupe_id="d\x00")
            again = await topic.send(key, b"\x00", headers=headers, dedupe_id="d\x00")
            _equal((again.offset, again.duplicate), (first.offset, True), "dedupe_id with NUL")
            await topic.send(key, b"second")
            await replies.publish("s1", b"\x00", headers=headers)
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                msg = await inbox.get("the message with NUL characters")
                _equal((msg.key, msg.payload, msg.headers), (key, b"\x00", headers), "NUL data")
                for bad_reason in (_SURROGATE, 42):
                    with _raises(litechan.InvalidArgument, f"reject(reason={bad_reason!r})"):
                        await msg.reject(bad_reason)  # type: ignore[arg-type]
                await msg.reject("r\x00" + _LONG)  # still unsettled: this one settles it
                second = await inbox.get("the message after the rejected one")
                _equal(second.payload, b"second", "the key goes on after a reject")
                await second.ack()
                (letter,) = await topic.dead_letters(_GROUP)
                _true(letter.reason.startswith("r\x00x"), f"dead-letter reason {letter.reason!r}")
                _true(len(letter.reason) <= 1100, "a reason of 10,002 characters is cut")
            async with (
                replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub,
                _reading(await sub.subscribe("s1"), "gw-1") as lite_inbox,
            ):
                lite = await lite_inbox.get("the reply with NUL characters")
                _equal((lite.payload, lite.headers), (b"\x00", headers), "NUL in a reply")


async def check_config_mismatch(backend: BackendFactory) -> None:
    """G12: re-declaring an ordered topic or a lite-topic parent with other settings, from any
    broker of the world, raises ConfigMismatch (at declaration or first use; at declaration
    in a broker opened after the first declaration), naming the value asked for.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker, h.connect() as other:
            topic = broker.ordered_topic(_TOPIC, partitions=4)
            replies = broker.lite_topics(_PARENT, ttl=600.0, max_len=100)
            await topic.send("k", b"x")
            await replies.publish("s1", b"x")
            for b in (broker, other):
                same = b.ordered_topic(_TOPIC, partitions=4)
                await same.send("k", b"y")
                same_parent = b.lite_topics(_PARENT, ttl=600.0, max_len=100)
                await same_parent.publish("s1", b"y")
                with _raises(litechan.ConfigMismatch, "ordered_topic() with other partitions"):
                    await b.ordered_topic(_TOPIC, partitions=8).send("k", b"z")
                with _raises(litechan.ConfigMismatch, "lite_topics() with another ttl"):
                    await b.lite_topics(_PARENT, ttl=60.0, max_len=100).publish("s1", b"z")
                with _raises(litechan.ConfigMismatch, "lite_topics() with another max_len"):
                    await b.lite_topics(_PARENT, ttl=600.0, max_len=10).publish("s1", b"z")
            async with h.connect() as late:
                # A broker that opens after the declarations raises at declaration, and says
                # what was asked for.
                for declare, asked in (
                    (lambda: late.ordered_topic(_TOPIC, partitions=8), "(asked 8)"),
                    (lambda: late.lite_topics(_PARENT, ttl=600.0, max_len=10), "(asked 10)"),
                ):
                    try:
                        declare()
                    except litechan.ConfigMismatch as exc:
                        _true(asked in str(exc), f"the mismatch does not say {asked!r}: {exc}")
                    else:
                        raise AssertionError("a late broker's mismatching declaration passed")
            _equal((await topic.stats()).length, 3, "messages stored (none by a mismatch)")
            key = "session-1"
            receipt = await topic.send(key, b"x")
            _equal(receipt.partition, litechan.partition_for(key, 4), "partitioning unchanged")


async def check_unknown_backend(backend: BackendFactory) -> None:
    """G12: a URL with an unknown scheme raises UnknownBackend (a ValueError) naming the known
    schemes.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend():
            try:
                async with litechan.connect("nosuch://localhost/0"):
                    pass
            except litechan.UnknownBackend as exc:
                _true(isinstance(exc, ValueError), "UnknownBackend is a ValueError")
                _true("memory" in str(exc), f"message does not list known schemes: {exc}")
            else:
                raise AssertionError("connect('nosuch://...') did not raise UnknownBackend")


async def check_closed_resources(backend: BackendFactory) -> None:
    """G12: using a closed broker, consumer or subscriber raises ResourceClosed; closing twice
    is fine.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h:
            async with h.connect() as broker:
                topic = broker.ordered_topic(_TOPIC, partitions=1)
                replies = broker.lite_topics(_PARENT)
                async with topic.consumer(group=_GROUP, name="w1") as consumer:
                    pass
                # Iteration after close ends at once or raises; it never waits or yields.
                with _raises(
                    (litechan.ResourceClosed, StopAsyncIteration), "iterating a closed consumer"
                ):
                    await anext(aiter(consumer))
                async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                    pass
                with _raises(litechan.ResourceClosed, "subscribe() on a closed subscriber"):
                    await sub.subscribe("s1")
            with _raises(litechan.ResourceClosed, "send() through a closed broker"):
                await topic.send("k", b"x")
            with _raises(litechan.ResourceClosed, "publish() through a closed broker"):
                await replies.publish("s1", b"x")
            with _raises(litechan.ResourceClosed, "stats() through a closed broker"):
                await replies.stats()
            with _raises(litechan.ResourceClosed, "declaring a topic on a closed broker"):
                await broker.ordered_topic("other", partitions=1).send("k", b"x")
            await broker.aclose()  # idempotent


# ---------------------------------------------------------------------------------------------
# merged iteration and observability
# ---------------------------------------------------------------------------------------------


async def check_merged_iteration(backend: BackendFactory) -> None:
    """``async for msg in subscriber`` yields every owned lite topic's messages once, in order per
    topic, including topics subscribed after iteration began and none after unsubscribe.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                await sub.subscribe("t1")
                await sub.subscribe("t2")
                async with _reading(sub, "merged") as inbox:
                    for name, n in (("t1", 1), ("t2", 1), ("t1", 2), ("t2", 2)):
                        await replies.publish(name, _payload(name, n))
                    got: dict[str, list[int]] = {"t1": [], "t2": []}
                    for msg in await inbox.take(4, "messages of t1 and t2"):
                        got[msg.lite_topic].append(msg.offset)
                        await msg.ack()
                    _equal(got, {"t1": [1, 2], "t2": [1, 2]}, "offsets per topic")
                    await sub.subscribe("t3")
                    await replies.publish("t3", b"t3#1")
                    msg = await inbox.get("a message of a topic subscribed during iteration")
                    _equal((msg.lite_topic, msg.offset), ("t3", 1), "t3's message")
                    await msg.ack()
                    await sub.unsubscribe("t1")
                    await replies.publish("t1", b"t1#3")
                    await replies.publish("t2", b"t2#3")
                    msg = await inbox.get("t2's third message")
                    _equal((msg.lite_topic, msg.offset), ("t2", 3), "t2's message")
                    await msg.ack()
                    await h.settle()
                    inbox.assert_empty("t1 was unsubscribed")


async def check_lite_stats(backend: BackendFactory) -> None:
    """``LiteTopics.stats()`` counts topics and owned subscriptions, sums backlog, and lists the
    largest backlogs first with their owner and oldest un-acked age.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            for n in range(1, 6):
                await replies.publish("t1", _payload("t1", n))
            for n in (1, 2):
                await replies.publish("t2", _payload("t2", n))
            async with (
                replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub,
                replies.subscriber(group="audit", name="auditor") as audit,
            ):
                channel = await sub.subscribe("t1")
                async with _reading(channel, "t1") as inbox:
                    msgs = await inbox.take(5, "t1's messages")
                    await msgs[0].ack()
                    await audit.subscribe("t2")
                    await h.advance(1.0)
                    stats = await replies.stats(top=10)
                    _equal(
                        (stats.topics, stats.subscriptions, stats.backlog),
                        (2, 2, 6),
                        "(topics, subscriptions, backlog)",
                    )
                    _equal(
                        [(t.lite_topic, t.group, t.backlog, t.owner) for t in stats.top],
                        [("t1", _LITE_GROUP, 4, "gw-1"), ("t2", "audit", 2, "auditor")],
                        "top, largest backlog first",
                    )
                    age = stats.top[0].oldest_unacked_age
                    _true(
                        age is not None and age >= 1.0 - 1e-6,
                        f"oldest_unacked_age of t1 is {age!r}, expected >= 1.0",
                    )
                    top_1 = (await replies.stats(top=1)).top
                    _equal([t.lite_topic for t in top_1], ["t1"], "stats(top=1)")
                    await sub.unsubscribe("t1")
                stats = await replies.stats(top=10)
                _equal(stats.subscriptions, 1, "owned subscriptions after unsubscribe")
                lags = {(t.lite_topic, t.group): t for t in stats.top}
                lag = lags.get(("t1", _LITE_GROUP))
                if lag is None:
                    raise AssertionError("an unowned (topic, group) with backlog is not listed")
                _equal((lag.backlog, lag.owner), (4, None), "(backlog, owner) after unsubscribe")


async def check_ordered_stats(backend: BackendFactory) -> None:
    """``OrderedTopic.stats()`` reports per partition its length and offsets and, per group, the
    committed offset, lag, pending count and owner.

    .. versionadded:: 0.1.0
    """
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=2)
            (ka,) = _keys_in(0, 2, 1)
            (kb,) = _keys_in(1, 2, 1)
            for key, count in ((ka, 3), (kb, 2)):
                for n in range(1, count + 1):
                    await topic.send(key, _payload(key, n))
            async with (
                topic.consumer(group=_GROUP, name="w1") as consumer,
                _reading(consumer, "w1") as inbox,
            ):
                got = {m.key: m for m in await inbox.take(2, "the head of each key")}
                await got[ka].ack()
                await inbox.get(f"{ka}#2")
                await h.settle()
                stats = await topic.stats()
                _equal(stats.topic, _TOPIC, "stats.topic")
                _equal([p.partition for p in stats.partitions], [0, 1], "partitions, in order")
                _equal(stats.length, 5, "total length")
                rows = [
                    (p.length, p.first_offset, p.last_offset, p.groups[_GROUP])
                    for p in stats.partitions
                ]
                _equal(
                    [(length, first, last) for length, first, last, _ in rows],
                    [(3, 1, 3), (2, 1, 2)],
                    "(length, first_offset, last_offset) per partition",
                )
                _equal(
                    [(g.group, g.committed, g.lag, g.owner) for *_, g in rows],
                    [(_GROUP, 1, 2, "w1"), (_GROUP, 0, 2, "w1")],
                    "(group, committed, lag, owner) per partition",
                )
                # pending counts what was handed out and not settled: at least the message in
                # flight with the application, at most the lag (a backend may count prefetch).
                for p, (*_, g) in enumerate(rows):
                    _true(
                        1 <= g.pending <= g.lag,
                        f"partition {p}: pending={g.pending}, expected 1..{g.lag}",
                    )
            stats = await topic.stats()
            _equal(
                [p.groups[_GROUP].owner for p in stats.partitions],
                [None, None],
                "owners once the consumer left",
            )
            _equal(stats.lag(_GROUP), 4, "lag of the group over all partitions")


# ---------------------------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------------------------


async def _receive_under_cancellation(view: AsyncIterable[M], count: int, what: str) -> list[M]:
    """Receive *count* messages, every other attempt inside an already cancelled scope (what a
    timeout around a receive does when it fires at the wrong moment)."""
    iterator = aiter(view)
    got: list[M] = []
    with anyio.move_on_after(_STEP_TIMEOUT):
        while len(got) < count:
            with anyio.CancelScope() as scope:
                scope.cancel()
                got.append(await anext(iterator))
            if scope.cancelled_caught:
                got.append(await anext(iterator))
        return got
    raise AssertionError(
        f"{what}: {len(got)} of {count} messages received; a receive that was cancelled lost "
        "the others (taken from the buffer, never returned)"
    )


async def check_cancelled_receive_ordered(backend: BackendFactory) -> None:
    """A consumer receive cancelled by its caller (a timeout) never swallows a message: every
    message is still delivered, so no key stays blocked behind a message nobody got.

    .. versionadded:: 0.1.0
    """
    count = 150  # more than any reasonable batch or "checkpoint every N" constant
    with _bounded():
        async with backend() as h, h.connect() as broker:
            topic = broker.ordered_topic(_TOPIC, partitions=1)
            for i in range(count):
                await topic.send(f"session-{i}", b"x")
            async with topic.consumer(group=_GROUP, name="w1", max_in_flight=count) as consumer:
                msgs = await _receive_under_cancellation(consumer, count, "consumer")
                _equal(len({m.key for m in msgs}), count, "distinct keys received")
                for msg in msgs:
                    await msg.ack()
            await h.settle()


async def check_cancelled_receive_lite(backend: BackendFactory) -> None:
    """A channel or merged-subscriber receive cancelled by its caller (a timeout) never swallows
    a message: every message is still delivered, in order.

    .. versionadded:: 0.1.0
    """
    count = 150
    with _bounded():
        async with backend() as h, h.connect() as broker:
            replies = broker.lite_topics(_PARENT)
            for i in range(count):
                await replies.publish("s1", _payload("s1", i))
                await replies.publish(f"m{i % 3}", _payload("m", i))
            async with replies.subscriber(group=_LITE_GROUP, name="gw-1") as sub:
                channel = await sub.subscribe("s1")
                lite = await _receive_under_cancellation(channel, count, "channel")
                _equal([m.offset for m in lite], list(range(1, count + 1)), "channel offsets")
                await sub.unsubscribe("s1")
                for name in ("m0", "m1", "m2"):
                    await sub.subscribe(name)
                merged = await _receive_under_cancellation(sub, count, "merged subscriber")
                _equal(len({(m.lite_topic, m.offset) for m in merged}), count, "distinct messages")
            await h.settle()


#: Every check, in the order :func:`run_conformance` runs them.
#:
#: .. versionadded:: 0.1.0
CHECKS: tuple[Check, ...] = (
    check_ordered_message_fields,
    check_lite_message_fields,
    # G1 per-key order
    check_key_order,
    check_next_message_waits_for_ack,
    check_key_order_across_nack,
    check_key_order_across_rebalance,
    # G2 no head-of-line blocking
    check_no_head_of_line_blocking,
    check_no_head_of_line_blocking_deep,
    check_partition_ordering,
    check_max_in_flight,
    # G3 at-least-once
    check_redelivery_after_crash,
    check_nack_delay,
    check_no_redelivery_after_ack,
    check_reject_dead_letters,
    check_max_deliveries_dead_letters,
    # G4 single owner
    check_partitions_single_owner,
    check_ordered_fencing,
    check_lite_single_owner_and_fencing,
    # G5 lazy creation
    check_lazy_creation,
    # G6 resume
    check_resume_committed,
    check_resume_skips_acked,
    check_resume_start_positions,
    # G7 takeover
    check_takeover,
    check_takeover_skips_acked,
    check_channel_lifecycle,
    # G8 TTL
    check_ttl_expiry,
    check_ttl_refreshed_by_publish,
    # G9 bounded retention
    check_bounded_retention,
    check_gap_counts_only_unacked,
    # G10 isolation
    check_lite_isolation,
    check_ordered_isolation,
    # G11 idempotent send
    check_dedupe,
    # deadlines
    check_ordered_deadline,
    check_lite_deadline,
    # G12 clear errors
    check_invalid_names,
    check_payload_errors,
    check_hostile_strings,
    check_config_mismatch,
    check_unknown_backend,
    check_closed_resources,
    check_body_errors_come_out_plain,
    # observability and merged iteration
    check_merged_iteration,
    check_lite_stats,
    check_ordered_stats,
    # cancellation
    check_cancelled_receive_ordered,
    check_cancelled_receive_lite,
)


async def run_conformance(backend: BackendFactory, checks: Iterable[Check] = CHECKS) -> None:
    """Run *checks* (all of :data:`CHECKS` by default) one after another against *backend*.

    Every check runs even when an earlier one fails; failures are raised together as an
    :class:`ExceptionGroup`, each with a note naming its check::

        from litechan.testing import run_conformance

        async def test_my_backend() -> None:
            await run_conformance(my_backend_factory)

    .. versionadded:: 0.1.0
    """
    failures: list[Exception] = []
    ran = 0
    for check in checks:
        ran += 1
        try:
            await check(backend)
        except Exception as exc:
            exc.add_note(f"in litechan.testing.{getattr(check, '__name__', repr(check))}")
            failures.append(exc)
    if failures:
        raise ExceptionGroup(
            f"{len(failures)} of {ran} litechan conformance checks failed", failures
        )
