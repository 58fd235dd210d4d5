"""A model of litechan's guarantees, and a Hypothesis state machine that holds a backend to it.

This module imports `Hypothesis <https://hypothesis.readthedocs.io>`_, a test-only dependency
(``pip install litechan[test]``): it is meant for test suites, which is why
:mod:`litechan.testing` does not import it. It has two parts.

* A **pure reference model** (plain Python: no I/O, no event loop, no clock of its own):
  :class:`OrderedModel` (one ordered topic consumed by one group: partitions, per-key order,
  un-acked messages, redelivery after a consumer crash, nack delays, dead letters, dedupe,
  deadlines) and
  :class:`LiteModel` (the lite topics of one parent for one group: offsets from 1, the committed
  offset, one owner, takeover, TTL with a new epoch and offsets restarting at 1, ``max_len``
  trimming with ``gap_before``). They are fed what happened and raise :class:`ModelViolation`
  when an observation breaks a guarantee, so they can be unit-tested on their own.
* :func:`make_state_machine`, which returns a
  :class:`hypothesis.stateful.RuleBasedStateMachine` that drives a real world of any backend
  (through a :data:`~litechan.testing.BackendFactory`) with random sequences of sends, deliveries,
  acks, nacks, rejects, consumer crashes, publishes, subscribes, takeovers, unsubscribes,
  subscriber crashes, process restarts (a broker closed under its consumers and subscribers)
  and clock advances, and checks every observation against the model.

How the machine observes the broker: every consumer and every channel is read by a background
task that only *records* what it receives; each rule first lets the world settle, feeds the
model every recorded delivery (which checks safety: order, ownership, no loss, no crosstalk,
visible gaps), acts, and then waits — event-driven, bounded by :func:`anyio.fail_after`, never
by sleeping — for what the model says *must* happen (a channel catching up with its lite topic,
a revoked or expired channel ending, an idle group delivering its next message).

Model choices where the contract leaves room (each is what the memory backend does):

* the committed offset of a lite topic is the highest offset below which every message was acked
  (or trimmed away after the subscriber was told, by ``gap_before``); acks may come out of order,
  and a message acked above the committed offset is never delivered again (G3: duplicates only
  of messages not acked) — a channel skips it silently;
* an explicit ``start`` (``"earliest"``, ``"latest"`` or an offset) repositions the group: what
  lies before it counts as done;
* a group with no committed offset (committed offset 0) that resumes a trimmed lite topic may
  start at the earliest retained message without a gap; once it has committed, any message
  trimmed before it was read must be reported by ``gap_before``;
* a subscription to a lite topic that does not exist does not expire; it sees the topic once a
  publish creates it;
* a message delivered ``max_deliveries`` times that is nacked, or whose consumer crashes, is
  dead-lettered instead of delivered again;
* a nack delay binds the consumer that nacked: when a crash or a rebalance moves the partition,
  the next owner may redeliver the message at once (no session waits for another's retry, G2);
* a lite topic's backlog in stats is ``last - committed``, or that with trimmed messages, or
  trimmed and acked ones, taken off.

* a message whose deadline (``expires_in``) has passed while no consumer held it can never be
  delivered; the group may count it in ``expired`` only once a consumer reached it, so stats
  may count fewer than the model (never more).

Not covered here (the conformance checks do it): the merged ``async for msg in subscriber``
view, more than one group, trimming of ordered topics, deadlines of lite-topic messages,
payload limits, names, corrupt entries.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import anyio
import anyio.abc
import anyio.from_thread
from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import litechan

from ._harness import BackendFactory, Harness

__all__ = [
    "LiteChannelState",
    "LiteModel",
    "ModelViolation",
    "OrderedModel",
    "Ordering",
    "SendOutcome",
    "SentMessage",
    "Start",
    "SubscribeOutcome",
    "make_state_machine",
]

#: How an ordered topic's consumers order deliveries (``ordering=`` of ``consumer()``).
Ordering: TypeAlias = Literal["key", "partition"]
#: Where a lite-topic subscription starts (as :meth:`litechan.Subscriber.subscribe` takes it).
Start: TypeAlias = Literal["committed", "earliest", "latest"] | int


class ModelViolation(AssertionError):
    """An observation of a real broker that the model of the guarantees forbids.

    .. versionadded:: 0.1.0
    """


def _fail(guarantee: str, message: str) -> ModelViolation:
    return ModelViolation(f"[{guarantee}] {message}")


# =============================================================================================
# ordered topics


@dataclass
class SentMessage:
    """One message the model knows was stored in an ordered topic.

    ``state`` is ``"pending"`` until it is acked, dead-lettered or expired (its ``expires_at``
    passed while no consumer held it); ``holder`` is the consumer it is delivered to (not yet
    settled); ``deliveries`` the ``delivery_count`` of its last observed delivery. It may not
    be delivered again before ``not_before`` by ``nacked_by`` (the consumer that nacked it: a
    delay binds that consumer only) and must be deliverable from ``due`` on (a nack delay).

    .. versionadded:: 0.1.0
    """

    key: str
    partition: int
    offset: int
    payload: bytes
    headers: dict[str, str]
    published_at: float
    state: Literal["pending", "acked", "dead", "expired"] = "pending"
    holder: str | None = None
    deliveries: int = 0
    not_before: float = -math.inf
    nacked_by: str | None = None
    due: float = -math.inf
    #: dead-lettered by the model when its consumer crashed; the backend may record it only
    #: when the partition's next owner reads it
    lazy_dead: bool = False
    #: its deadline (``published_at + expires_in``), or None
    expires_at: float | None = None


@dataclass(frozen=True)
class SendOutcome:
    """What :meth:`OrderedModel.send` expects the receipt to say.

    .. versionadded:: 0.1.0
    """

    partition: int
    offset: int
    duplicate: bool


class OrderedModel:
    """One ordered topic and one consumer group, as the guarantees describe them.

    Call :meth:`send` for every send and :meth:`deliver` for every message a consumer yields,
    :meth:`ack` / :meth:`nack` / :meth:`reject` for every settlement, :meth:`open` and
    :meth:`crash` when consumers come and go, and :meth:`advance` when time passes. A call that
    observes something the guarantees forbid raises :class:`ModelViolation`.

    Checked: partitions and offsets of receipts, dedupe (G11), per-key (or per-partition) order
    with one message in flight per key and redelivery of un-acked messages after a crash (G1,
    G3), no redelivery of acked messages (G3), one consumer holding messages of a partition at a
    time (G4), ``max_in_flight``, ``delivery_count``, nack delays and dead-lettering.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        partitions: int,
        *,
        ordering: Ordering = "key",
        max_in_flight: int = 64,
        max_deliveries: int = 10,
        dedupe_window: float = 300.0,
        now: float = 0.0,
    ) -> None:
        self.partitions = partitions
        self.ordering: Ordering = ordering
        self.max_in_flight = max_in_flight
        self.max_deliveries = max_deliveries
        self.dedupe_window = dedupe_window
        self.now = now
        self.logs: list[list[SentMessage]] = [[] for _ in range(partitions)]
        self.consumers: dict[str, list[SentMessage]] = {}
        self._dedupe: dict[str, tuple[SentMessage, float]] = {}

    # -- time and membership ------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let *seconds* pass: messages no consumer holds expire when their deadline passed."""
        self.now += seconds
        for log in self.logs:
            for message in log:
                if message.holder is None:
                    self._expire_if_due(message)

    def _expire_if_due(self, message: SentMessage) -> None:
        expires_at = message.expires_at
        if message.state == "pending" and expires_at is not None and expires_at <= self.now:
            message.state = "expired"

    def expired(self, partition: int) -> int:
        """Messages of *partition* that expired (settled unread, their deadline passed)."""
        return sum(1 for m in self.logs[partition] if m.state == "expired")

    def open(self, consumer: str) -> None:
        """A consumer joined the group."""
        if consumer in self.consumers:
            raise ValueError(f"consumer {consumer!r} is already open")
        self.consumers[consumer] = []

    def crash(self, consumer: str) -> list[SentMessage]:
        """*consumer* left without settling what it holds; return those messages.

        They are redelivered to the next owner, with ``delivery_count + 1``, unless they reached
        ``max_deliveries`` (then they are dead-lettered). Nack delays may be dropped.
        """
        held = self.consumers.pop(consumer)
        for message in held:
            message.holder = None
            if message.deliveries >= self.max_deliveries:
                message.state = "dead"
                message.lazy_dead = True
            else:
                self._expire_if_due(message)
        for log in self.logs:
            for message in log:
                if message.state == "pending":
                    message.not_before = -math.inf
        return held

    # -- sending --------------------------------------------------------------------------------

    def partition_of(self, key: str) -> int:
        """The partition of *key* (:func:`litechan.partition_for`)."""
        return litechan.partition_for(key, self.partitions)

    def send(
        self,
        key: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        dedupe_id: str | None = None,
        expires_in: float | None = None,
    ) -> SendOutcome:
        """Record a send; return the receipt it must get."""
        if dedupe_id is not None:
            known = self._dedupe.get(dedupe_id)
            if known is not None and self.now < known[1] + self.dedupe_window:
                return SendOutcome(known[0].partition, known[0].offset, duplicate=True)
        partition = self.partition_of(key)
        log = self.logs[partition]
        message = SentMessage(key, partition, len(log) + 1, payload, dict(headers or {}), self.now)
        if expires_in is not None:
            message.expires_at = self.now + expires_in
        log.append(message)
        if dedupe_id is not None:
            self._dedupe[dedupe_id] = (message, self.now)
        return SendOutcome(partition, message.offset, duplicate=False)

    def check_receipt(self, expected: SendOutcome, receipt: litechan.Receipt) -> None:
        """Raise if *receipt* is not the one :meth:`send` predicted."""
        got = (receipt.partition, receipt.offset, receipt.duplicate)
        want = (expected.partition, expected.offset, expected.duplicate)
        if got != want:
            raise _fail(
                "G11" if expected.duplicate else "offsets", f"receipt {got}, expected {want}"
            )

    # -- the order rules ------------------------------------------------------------------------

    def unit_of(self, message: SentMessage) -> Hashable:
        """What is delivered in order: the key, or the partition with ``ordering="partition"``."""
        return ("key", message.key) if self.ordering == "key" else ("partition", message.partition)

    def _pending_of_unit(self, unit: Hashable) -> Iterable[SentMessage]:
        for log in self.logs:
            for message in log:
                if message.state == "pending" and self.unit_of(message) == unit:
                    yield message

    def head(self, unit: Hashable) -> SentMessage | None:
        """The oldest message of *unit* not acked or dead-lettered."""
        return next(iter(self._pending_of_unit(unit)), None)

    def heads(self) -> list[SentMessage]:
        """The oldest pending message of every ordering unit."""
        seen: set[Hashable] = set()
        heads: list[SentMessage] = []
        for log in self.logs:
            for message in log:
                unit = self.unit_of(message)
                if message.state == "pending" and unit not in seen:
                    seen.add(unit)
                    heads.append(message)
        return heads

    def deliverable(self) -> list[SentMessage]:
        """Messages that must be delivered next: heads not held and not waiting on a nack delay."""
        return [m for m in self.heads() if m.holder is None and m.due <= self.now]

    def held(self) -> list[SentMessage]:
        """Every message delivered and not yet settled, over all consumers."""
        return [m for held in self.consumers.values() for m in held]

    def must_deliver(self) -> bool:
        """True when the group is idle but has work: some consumer is open, none holds anything
        and some message is deliverable — then the backend must deliver something."""
        return bool(self.consumers) and not self.held() and bool(self.deliverable())

    def message(self, partition: int, offset: int) -> SentMessage:
        """The message stored at *partition*, *offset* (raises if there is none)."""
        if not 0 <= partition < self.partitions:
            raise _fail(
                "offsets", f"delivered from partition {partition}, topic has {self.partitions}"
            )
        log = self.logs[partition]
        if not 1 <= offset <= len(log):
            raise _fail(
                "offsets", f"delivered offset {offset} of partition {partition}: never sent"
            )
        return log[offset - 1]

    def deliver(
        self,
        consumer: str,
        *,
        key: str,
        partition: int,
        offset: int,
        payload: bytes,
        headers: dict[str, str],
        delivery_count: int,
        published_at: float | None = None,
        expires_at: float | None = None,
    ) -> SentMessage:
        """Check and record that *consumer* yielded a message; return the model's message.

        *published_at* and *expires_at* are compared when *published_at* is given (a clock the
        model follows)."""
        where = f"p{partition}@{offset} (key {key!r}) to {consumer!r}"
        if consumer not in self.consumers:
            raise _fail("G4", f"{where}: that consumer is closed")
        m = self.message(partition, offset)
        if (m.key, m.payload, m.headers) != (key, payload, headers):
            raise _fail(
                "integrity",
                f"{where}: got {(key, payload, headers)}, sent {(m.key, m.payload, m.headers)}",
            )
        if published_at is not None and (published_at, expires_at) != (
            m.published_at,
            m.expires_at,
        ):
            raise _fail(
                "integrity",
                f"{where}: published_at, expires_at {published_at}, {expires_at}; sent "
                f"{m.published_at}, {m.expires_at}",
            )
        if m.state == "expired" or (m.expires_at is not None and m.expires_at <= self.now):
            raise _fail("deadline", f"{where}: delivered at {self.now}, after {m.expires_at}")
        if m.state == "acked":
            raise _fail("G3", f"{where}: redelivered after it was acked")
        if m.state == "dead":
            raise _fail("G3", f"{where}: delivered after it was dead-lettered")
        if m.holder is not None:
            raise _fail("G1", f"{where}: still held unsettled by {m.holder!r}")
        head = self.head(self.unit_of(m))
        if head is not m:
            assert head is not None
            raise _fail(
                "G1",
                f"{where}: out of order, p{head.partition}@{head.offset} (key {head.key!r}) "
                f"is older and not settled ({self.ordering} ordering)",
            )
        for other, held in self.consumers.items():
            if other != consumer and any(h.partition == partition for h in held):
                raise _fail("G4", f"{where}: {other!r} holds unsettled messages of that partition")
        if len(self.consumers[consumer]) >= self.max_in_flight:
            raise _fail("G2", f"{where}: exceeds max_in_flight={self.max_in_flight}")
        if self.now < m.not_before and consumer == m.nacked_by:
            # Another consumer may receive it early: a delay is held by the consumer that
            # nacked, and a rebalance or a crash hands the message on at once.
            raise _fail(
                "nack",
                f"{where}: redelivered at {self.now}, before its nack delay ({m.not_before})",
            )
        if delivery_count != m.deliveries + 1:
            raise _fail(
                "G3", f"{where}: delivery_count {delivery_count}, expected {m.deliveries + 1}"
            )
        m.deliveries = delivery_count
        m.holder = consumer
        self.consumers[consumer].append(m)
        return m

    # -- settlement -----------------------------------------------------------------------------

    def _take(self, consumer: str, partition: int, offset: int) -> SentMessage:
        m = self.message(partition, offset)
        if m.holder != consumer:
            raise ValueError(f"p{partition}@{offset} is not held by {consumer!r}")
        self.consumers[consumer].remove(m)
        m.holder = None
        return m

    def ack(self, consumer: str, partition: int, offset: int) -> None:
        """*consumer* acked a message it holds."""
        self._take(consumer, partition, offset).state = "acked"

    def nack(self, consumer: str, partition: int, offset: int, delay: float = 0.0) -> bool:
        """*consumer* nacked a message it holds; return True if it is dead-lettered instead."""
        m = self._take(consumer, partition, offset)
        if m.deliveries >= self.max_deliveries:
            m.state = "dead"
            return True
        m.not_before = m.due = self.now + delay
        m.nacked_by = consumer
        if m.expires_at is not None and m.expires_at <= m.due:
            m.state = "expired"  # its retry would come too late: never delivered again
        return False

    def reject(self, consumer: str, partition: int, offset: int) -> None:
        """*consumer* rejected a message it holds: dead-lettered now."""
        self._take(consumer, partition, offset).state = "dead"

    # -- positions ------------------------------------------------------------------------------

    def settled_prefix(self, partition: int) -> int:
        """The highest offset of *partition* below which every message is acked or dead.

        A group's committed offset may never be above it (that would lose a message, G3/G4).
        """
        prefix = 0
        for message in self.logs[partition]:
            if message.state == "pending":
                break
            prefix = message.offset
        return prefix

    def dead_letters(self, *, certain: bool = False) -> set[tuple[int, int]]:
        """``(partition, offset)`` of dead-lettered messages; with *certain*, only those the
        backend must already have recorded (rejected, or nacked past ``max_deliveries``)."""
        return {
            (m.partition, m.offset)
            for log in self.logs
            for m in log
            if m.state == "dead" and not (certain and m.lazy_dead)
        }


# =============================================================================================
# lite topics


@dataclass
class LiteChannelState:
    """The model of one lite topic of a parent, for one group, and of its owner's channel.

    ``epoch`` counts incarnations (0: never created); ``last`` is the last offset of the current
    one. ``committed`` is the group's committed offset, ``acked`` the acks above it. The owner's
    channel (``channel``, an id never reused) reads from ``cursor``; ``held`` are the offsets it
    delivered and that were not acked.

    .. versionadded:: 0.1.0
    """

    name: str
    epoch: int = 0
    exists: bool = False
    last: int = 0
    last_publish: float = -math.inf
    published_at: dict[int, float] = field(default_factory=dict)
    committed: int = 0
    acked: set[int] = field(default_factory=set)
    #: every offset the group acked in this incarnation since it was last positioned
    acked_ever: set[int] = field(default_factory=set)
    owner: str | None = None
    channel: int = 0
    cursor: int = 1
    #: a second acceptable cursor for the first delivery (a group without commit resuming a
    #: trimmed topic may start at the earliest message retained at subscribe time)
    alt_cursor: int | None = None
    held: list[int] = field(default_factory=list)

    def first(self, max_len: int) -> int:
        """The first retained offset (``last + 1`` when nothing is retained)."""
        return max(1, self.last - max_len + 1)

    def next(self) -> int:
        """The next offset the owner's channel must deliver: its cursor, past acked offsets."""
        offset = self.cursor
        while offset in self.acked_ever:
            offset += 1
        return offset


@dataclass(frozen=True)
class SubscribeOutcome:
    """What a subscribe did: the channel id, whether it is the already open channel, and the
    channel it revoked (0 if none).

    .. versionadded:: 0.1.0
    """

    channel: int
    same: bool
    revoked: int


class LiteModel:
    """The lite topics of one parent, for one consumer group, as the guarantees describe them.

    Checked: offsets from 1 and +1 per publish (G5), order and completeness of what a channel
    delivers (G6), one owner per lite topic and takeover (G4, G7), TTL expiry with a new epoch
    and offsets from 1 (G8), ``gap_before`` equal to the messages trimmed before they were read
    (G9), no message of another lite topic (G10), fenced acks (G4).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, topics: Sequence[str], *, ttl: float, max_len: int, now: float = 0.0
    ) -> None:
        self.ttl = ttl
        self.max_len = max_len
        self.now = now
        self.topics: dict[str, LiteChannelState] = {t: LiteChannelState(t) for t in topics}
        #: channel id -> (lite topic, subscriber) of every channel ever opened
        self.channels: dict[int, tuple[str, str]] = {}
        #: channel id -> why it ended ("REVOKED", "EXPIRED", "UNSUBSCRIBED", "CLOSED")
        self.ended: dict[int, str] = {}
        self._ids = itertools.count(1)

    # -- queries --------------------------------------------------------------------------------

    def owned_by(self, subscriber: str) -> frozenset[str]:
        """The lite topics *subscriber* owns."""
        return frozenset(t for t, s in self.topics.items() if s.owner == subscriber)

    def live_topics(self) -> int:
        """How many lite topics exist."""
        return sum(1 for s in self.topics.values() if s.exists)

    def lagging(self) -> list[LiteChannelState]:
        """Owned lite topics whose owner's channel has not delivered everything yet."""
        return [s for s in self.topics.values() if s.owner and s.exists and s.next() <= s.last]

    def backlogs(self, lite_topic: str) -> frozenset[int]:
        """Acceptable backlogs of *lite_topic* in stats.

        ``last - committed``; the same with trimmed messages counted as done; and the messages
        not acked (acks above the committed offset subtracted), never below 0.
        """
        s = self.topics[lite_topic]
        base = max(s.committed, s.first(self.max_len) - 1)
        behind = max(0, s.last - base)
        acked = sum(1 for o in s.acked if o > base)
        return frozenset({s.last - s.committed, behind, max(0, behind - acked)})

    # -- events ---------------------------------------------------------------------------------

    def advance(self, seconds: float) -> list[int]:
        """Let *seconds* pass; return the channels that must end with ``EXPIRED``."""
        self.now += seconds
        expired: list[int] = []
        for s in self.topics.values():
            if s.exists and s.last_publish + self.ttl <= self.now:
                if s.owner is not None:
                    expired.append(self._end(s, "EXPIRED"))
                s.exists = False
                s.last = 0
                s.published_at.clear()
                s.committed = 0
                s.acked.clear()
                s.acked_ever.clear()
        return expired

    def publish(self, lite_topic: str) -> tuple[int, int]:
        """Record a publish; return ``(offset, epoch)`` it must get."""
        s = self.topics[lite_topic]
        if not s.exists:
            s.exists = True
            s.epoch += 1
        s.last += 1
        s.last_publish = self.now
        s.published_at[s.last] = self.now
        return s.last, s.epoch

    def _end(self, s: LiteChannelState, reason: str) -> int:
        channel = s.channel
        self.ended[channel] = reason
        s.owner = None
        s.channel = 0
        s.held.clear()
        s.alt_cursor = None
        return channel

    def subscribe(
        self, subscriber: str, lite_topic: str, start: Start = "committed"
    ) -> SubscribeOutcome:
        """Record a subscribe; say which channel it returns and which one it revokes."""
        s = self.topics[lite_topic]
        if s.owner == subscriber:
            return SubscribeOutcome(s.channel, same=True, revoked=0)
        revoked = self._end(s, "REVOKED") if s.owner is not None else 0
        channel = next(self._ids)
        self.channels[channel] = (lite_topic, subscriber)
        s.owner = subscriber
        s.channel = channel
        first = s.first(self.max_len)
        if not s.exists:
            s.cursor = start if isinstance(start, int) else 1
        elif start == "committed":
            s.cursor = s.committed + 1
            if s.committed == 0 and first > 1:
                s.alt_cursor = first
        else:
            if start == "earliest":
                s.cursor = first
            elif start == "latest":
                s.cursor = s.last + 1
            else:
                s.cursor = start
            s.committed = s.cursor - 1
            s.acked.clear()
            s.acked_ever.clear()
        return SubscribeOutcome(channel, same=False, revoked=revoked)

    def unsubscribe(self, subscriber: str, lite_topic: str) -> int:
        """Record an unsubscribe; return the channel that must end ``UNSUBSCRIBED`` (or 0)."""
        s = self.topics[lite_topic]
        return self._end(s, "UNSUBSCRIBED") if s.owner == subscriber else 0

    def close(self, subscriber: str) -> list[int]:
        """A subscriber closed; return its channels, which must end ``CLOSED``."""
        return [self._end(s, "CLOSED") for s in self.topics.values() if s.owner == subscriber]

    def deliver(
        self,
        channel: int,
        lite_topic: str,
        *,
        offset: int,
        epoch: int,
        gap_before: int,
        published_at: float | None = None,
    ) -> None:
        """Check and record that *channel* yielded message *offset* of incarnation *epoch*."""
        where = f"{lite_topic}@{offset} (epoch {epoch}) on channel {channel}"
        if channel not in self.channels:
            raise ValueError(f"unknown channel {channel}")
        topic, owner = self.channels[channel]
        where += f" of {owner!r}"
        if topic != lite_topic:
            raise _fail("G10", f"{where}: the channel reads {topic!r}")
        s = self.topics[lite_topic]
        if s.channel != channel:
            raise _fail(
                "G7", f"{where}: the channel ended ({self.ended.get(channel)}) but still delivers"
            )
        if not s.exists or epoch != s.epoch:
            raise _fail("G8", f"{where}: the current incarnation is {s.epoch} (exists={s.exists})")
        if not 1 <= offset <= s.last:
            raise _fail("offsets", f"{where}: last published offset is {s.last}")
        if offset in s.acked_ever:
            raise _fail("G3", f"{where}: redelivered after the group acked it")
        self._check_skip(s, where, offset, gap_before)
        if published_at is not None and published_at != s.published_at.get(offset):
            raise _fail(
                "integrity",
                f"{where}: published_at {published_at}, expected {s.published_at.get(offset)} "
                f"(gap_before={gap_before}, channel at {s.cursor}, retained "
                f"{s.first(self.max_len)}..{s.last})",
            )
        s.cursor = offset + 1
        s.alt_cursor = None
        s.held.append(offset)

    def _check_skip(self, s: LiteChannelState, where: str, offset: int, gap_before: int) -> None:
        """Check what a channel skipped to reach *offset*: only messages trimmed before it read
        them, counted by *gap_before* (G9), and messages the group acked already (G3)."""
        first = s.first(self.max_len)
        problems: list[str] = []
        for start in (s.cursor, s.alt_cursor):
            if start is None:
                continue
            if offset < start:
                problems.append(f"it was at offset {start}")
                continue
            skipped = range(start, offset)
            missed = [o for o in skipped if o not in s.acked_ever]
            trimmed_acked = [o for o in skipped if o in s.acked_ever and o < first]
            retained = [o for o in missed if o >= first]
            if retained:
                problems.append(f"from offset {start} it skipped {retained}, still retained")
            elif not len(missed) <= gap_before <= len(missed) + len(trimmed_acked):
                problems.append(
                    f"from offset {start} it missed {len(missed)} (trimmed before read), "
                    f"but gap_before={gap_before}"
                )
            else:
                return
        raise _fail("G9" if offset > s.cursor else "G6", f"{where}: " + "; ".join(problems))

    def ack(self, channel: int, lite_topic: str, offset: int, epoch: int) -> bool:
        """Record an ack; return True if it counts (False: fenced, the channel or epoch is gone)."""
        s = self.topics[lite_topic]
        if s.channel != channel or not s.exists or s.epoch != epoch or offset not in s.held:
            return False
        s.held.remove(offset)
        s.acked.add(offset)
        s.acked_ever.add(offset)
        committed = max(s.committed, s.first(self.max_len) - 1)
        while committed + 1 in s.acked:
            committed += 1
        s.committed = committed
        s.acked = {o for o in s.acked if o > committed}
        return True


# =============================================================================================
# the state machine

_GROUP: Final = "model-workers"
_LITE_GROUP: Final = "model-gateways"
_TOPIC: Final = "model-audio"
_PARENT: Final = "model-replies"
_OTHER_PARENT: Final = "model-elsewhere"
_KEYS: Final = ("sess-a", "sess-b", "sess-c")
_LITE_TOPICS: Final = ("s-1", "s-2", "s-3")
_BROKERS: Final = 2
_MAX_CONSUMERS: Final = 3
_MAX_SUBSCRIBERS: Final = 3
#: seconds a nack delay lasts, and a short clock step (both avoid every TTL boundary)
_NACK_DELAY: Final = 2.0
_SHORT_STEP: Final = 3.0


@dataclass(frozen=True)
class _Config:
    partitions: int
    keys: int
    ordering: Ordering
    max_in_flight: int
    max_deliveries: int
    lite_topics: int
    max_len: int
    consumers: int = 0
    subscribers: int = 0


@dataclass(eq=False)
class _BrokerSlot:
    broker: litechan.Broker | None = None
    stop: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class _ConsumerSlot:
    name: str
    broker: int
    inbox: list[litechan.Message] = field(default_factory=list)
    held: list[litechan.Message] = field(default_factory=list)
    handle: litechan.Consumer | None = None
    scope: anyio.CancelScope | None = None
    closed: anyio.Event = field(default_factory=anyio.Event)
    open: bool = True
    #: its broker is being closed ("process killed"): iteration may stop
    dying: bool = False


@dataclass(eq=False)
class _SubscriberSlot:
    name: str
    broker: int
    handle: litechan.Subscriber | None = None
    stop: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    open: bool = True


@dataclass(eq=False)
class _ChannelPump:
    channel_id: int
    lite_topic: str
    channel: litechan.Channel
    inbox: list[litechan.LiteMessage] = field(default_factory=list)
    held: list[tuple[litechan.LiteMessage, int]] = field(default_factory=list)
    ended: anyio.Event = field(default_factory=anyio.Event)
    end_reason: litechan.EndReason | None = None
    end_checked: bool = False


def _observed(world: _World, present: bool) -> bool:
    """The precondition of a rule that acts on something delivered: *present* with a manual
    clock; always true in real time, where what has arrived when Hypothesis picks the next rule
    depends on timing: a precondition reading it would make Hypothesis see different choices on
    a replay (FlakyStrategyDefinition). The rule then does nothing when nothing arrived."""
    return present or not world.manual


def _pick(items: Sequence[Any], index: int) -> Any:
    return items[index % len(items)]


class _World:
    """The async side of the machine: brokers, consumers, subscribers and their readers.

    Every public coroutine is one rule: it lets the world settle and feeds the models what was
    delivered, acts, then waits for what the models say must happen and checks invariants.
    """

    def __init__(
        self,
        harness: Harness,
        task_group: anyio.abc.TaskGroup,
        *,
        timeout: float,
        real_ttl: float | None,
    ) -> None:
        self.h = harness
        self.brokers = [_BrokerSlot() for _ in range(_BROKERS)]
        self.tg = task_group
        self.timeout = timeout
        self.manual = harness.clock is not None
        self.ttl_rules = self.manual or real_ttl is not None
        self.ttl = 10.5 if self.manual else (real_ttl if real_ttl is not None else 3600.0)
        self.errors: list[str] = []
        #: what interesting happened during the current rule (reported with hypothesis.event)
        self.events: set[str] = set()
        self.activity = anyio.Event()
        self.consumers: list[_ConsumerSlot] = []
        self.subscribers: list[_SubscriberSlot] = []
        self.pumps: dict[int, _ChannelPump] = {}
        self.stale_messages: list[litechan.Message] = []
        self.dedupe_ids: list[tuple[str, str]] = []
        self.epochs: dict[tuple[str, int], str] = {}
        self.epoch_index: dict[tuple[str, str], int] = {}
        self.serial = itertools.count(1)
        self.names = itertools.count(1)
        self.config: _Config | None = None
        now = harness.clock.time() if harness.clock is not None else 0.0
        self.ordered = OrderedModel(1, now=now)
        self.lite = LiteModel((), ttl=self.ttl, max_len=1, now=now)
        self.audio: list[litechan.OrderedTopic] = []
        self.replies: list[litechan.LiteTopics] = []
        self.elsewhere: list[litechan.LiteTopics] = []

    # -- plumbing -------------------------------------------------------------------------------

    def _poke(self) -> None:
        event, self.activity = self.activity, anyio.Event()
        event.set()

    @property
    def cfg(self) -> _Config:
        assert self.config is not None, "setup() runs first"
        return self.config

    @property
    def keys(self) -> tuple[str, ...]:
        return _KEYS[: self.cfg.keys]

    @property
    def topics(self) -> tuple[str, ...]:
        return _LITE_TOPICS[: self.cfg.lite_topics]

    def open_consumers(self) -> list[_ConsumerSlot]:
        return [c for c in self.consumers if c.open]

    def open_subscribers(self) -> list[_SubscriberSlot]:
        return [s for s in self.subscribers if s.open]

    def held_messages(self) -> list[tuple[_ConsumerSlot, litechan.Message]]:
        return [(c, m) for c in self.open_consumers() for m in c.held]

    def live_lite_messages(self) -> list[tuple[_ChannelPump, litechan.LiteMessage, int]]:
        current = {s.channel for s in self.lite.topics.values() if s.owner is not None}
        return [(p, m, e) for cid, p in self.pumps.items() if cid in current for m, e in p.held]

    def stale_lite_messages(self) -> list[tuple[_ChannelPump, litechan.LiteMessage, int]]:
        current = {s.channel for s in self.lite.topics.values() if s.owner is not None}
        return [(p, m, e) for cid, p in self.pumps.items() if cid not in current for m, e in p.held]

    async def _begin(self) -> None:
        await self.h.settle()
        self._process()
        self._check_errors()

    async def _end(self) -> None:
        await self.h.settle()
        await self._wait_for(self._awaited)
        self._check_invariants()
        if self.config is not None:
            await self._check_ordered_stats()
            await self._check_lite_stats()
            self._process()  # stats calls may let deliveries happen: check them now

    async def _wait_for(self, awaited: Callable[[], str | None]) -> None:
        what: str | None = None
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    event = self.activity
                    self._process()
                    what = awaited()
                    if what is None:
                        return
                    await event.wait()
        except TimeoutError:
            raise _fail("liveness", f"waited {self.timeout}s for {what}") from None

    def _awaited(self) -> str | None:
        """What the models say must still happen, or None."""
        for cid, pump in self.pumps.items():
            if cid in self.lite.ended and not pump.ended.is_set():
                return f"channel {cid} ({pump.lite_topic}) to end with {self.lite.ended[cid]}"
        for s in self.lite.lagging():
            return (
                f"the channel {s.channel} of {s.name!r} (owner {s.owner!r}) to deliver offset "
                f"{s.next()}; last offset is {s.last}"
            )
        if self.config is not None and self.ordered.must_deliver():
            heads = [(m.key, m.partition, m.offset) for m in self.ordered.deliverable()]
            return f"a delivery to the idle group (deliverable heads {heads})"
        return None

    def _check_errors(self) -> None:
        if self.errors:
            raise _fail("no crash", "; ".join(self.errors))

    # -- feeding the models ---------------------------------------------------------------------

    def _process_consumer(self, slot: _ConsumerSlot) -> None:
        inbox, slot.inbox = slot.inbox, []
        for message in inbox:
            self.ordered.deliver(
                slot.name,
                key=message.key,
                partition=message.partition,
                offset=message.offset,
                payload=message.payload,
                headers=message.headers,
                delivery_count=message.delivery_count,
                published_at=message.published_at if self.manual else None,
                expires_at=message.expires_at,
            )
            slot.held.append(message)
            if message.delivery_count > 1:
                self.events.add("ordered: redelivery")

    def _process_pump(self, pump: _ChannelPump) -> None:
        inbox, pump.inbox = pump.inbox, []
        for lm in inbox:
            epoch = self._lite_epoch(pump, lm)
            self.lite.deliver(
                pump.channel_id,
                lm.lite_topic,
                offset=lm.offset,
                epoch=epoch,
                gap_before=lm.gap_before,
                published_at=lm.published_at if self.manual else None,
            )
            pump.held.append((lm, epoch))
            if lm.gap_before:
                self.events.add("lite: gap_before > 0")
            if epoch > 1:
                self.events.add("lite: delivery from a re-created topic")

    def _current_pump(self, lite_topic: str, owner: str | None = None) -> _ChannelPump | None:
        """The pump of the open channel of *lite_topic* (owned by *owner*, if given)."""
        s = self.lite.topics[lite_topic]
        if s.owner is None or (owner is not None and s.owner != owner):
            return None
        return self.pumps[s.channel]

    def _process(self) -> None:
        for slot in self.consumers:
            self._process_consumer(slot)
        for pump in self.pumps.values():
            self._process_pump(pump)
            if pump.ended.is_set() and not pump.end_checked:
                pump.end_checked = True
                got = pump.end_reason.name if pump.end_reason is not None else None
                expected = self.lite.ended.get(pump.channel_id)
                self.events.add(f"lite: channel ended {got}")
                if got != expected:
                    raise _fail(
                        "G7/G8",
                        f"channel {pump.channel_id} ({pump.lite_topic}) ended with {got}; "
                        f"expected {expected or 'it to stay open'}",
                    )

    def _lite_epoch(self, pump: _ChannelPump, lm: litechan.LiteMessage) -> int:
        """Check a lite message's payload and identity; return its model epoch."""
        try:
            tag, parent, topic, epoch_text, offset_text = lm.payload.decode().split("|")
            epoch, offset = int(epoch_text), int(offset_text)
        except ValueError:
            raise _fail("integrity", f"unexpected lite payload {lm.payload!r}") from None
        where = f"{lm.lite_topic}@{lm.offset} on channel {pump.channel_id} ({pump.lite_topic})"
        if tag != "l" or parent != _PARENT:
            raise _fail("G10", f"{where}: payload {lm.payload!r} was published under {parent!r}")
        if topic != lm.lite_topic or topic != pump.lite_topic:
            raise _fail("G10", f"{where}: payload {lm.payload!r} was published to {topic!r}")
        if offset != lm.offset:
            raise _fail("offsets", f"{where}: payload {lm.payload!r} was published at {offset}")
        if lm.headers != {"offset": offset_text}:
            raise _fail("integrity", f"{where}: headers {lm.headers!r}")
        known = self.epochs.setdefault((topic, epoch), lm.epoch)
        if known != lm.epoch:
            raise _fail("G8", f"{where}: epoch {lm.epoch!r}; this incarnation had {known!r}")
        index = self.epoch_index.setdefault((topic, lm.epoch), epoch)
        if index != epoch:
            raise _fail("G8", f"{where}: epoch {lm.epoch!r} reused by a new incarnation")
        return epoch

    def _check_invariants(self) -> None:
        self._check_errors()
        owners: dict[int, str] = {}
        for slot in self.open_consumers():
            assert slot.handle is not None
            partitions = slot.handle.partitions
            for p in partitions:
                if p in owners:
                    raise _fail("G4", f"partition {p} owned by {owners[p]!r} and {slot.name!r}")
                owners[p] = slot.name
            for m in slot.held:
                if m.partition not in partitions:
                    raise _fail(
                        "G4",
                        f"{slot.name!r} holds p{m.partition}@{m.offset} unsettled but owns "
                        f"only {sorted(partitions)}",
                    )
        for sub in self.open_subscribers():
            assert sub.handle is not None
            want = self.lite.owned_by(sub.name)
            if sub.handle.lite_topics != want:
                raise _fail(
                    "G4/G7",
                    f"{sub.name!r}.lite_topics is {sorted(sub.handle.lite_topics)}, expected "
                    f"{sorted(want)}",
                )

    # -- actors ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _supervised(
        self, closed: anyio.Event, what: str, task_status: anyio.abc.TaskStatus[None]
    ) -> Iterator[Callable[[], None]]:
        """Run an actor's body: it calls the yielded function once its resource is open. An
        error before that fails the rule; after it, it is recorded as a model error. The
        actor's *closed* event is set however the body ends."""
        started = False

        def mark_started() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            yield mark_started
        except Exception as exc:
            if not started:
                raise
            self.errors.append(f"{what} raised {exc!r}")
        finally:
            closed.set()
            self._poke()

    async def _run_consumer(
        self,
        slot: _ConsumerSlot,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        cfg = self.cfg
        with self._supervised(slot.closed, f"consumer {slot.name!r}", task_status) as started:
            async with self.audio[slot.broker].consumer(
                group=_GROUP,
                name=slot.name,
                ordering=cfg.ordering,
                max_in_flight=cfg.max_in_flight,
                max_deliveries=cfg.max_deliveries,
            ) as consumer:
                slot.handle = consumer
                with anyio.CancelScope() as scope:
                    slot.scope = scope
                    started()
                    async for message in consumer:
                        slot.inbox.append(message)
                        self._poke()
                    if not slot.dying:
                        self.errors.append(f"consumer {slot.name!r}: iteration stopped while open")

    async def _run_subscriber(
        self,
        slot: _SubscriberSlot,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._supervised(slot.closed, f"subscriber {slot.name!r}", task_status) as started:
            async with self.replies[slot.broker].subscriber(
                group=_LITE_GROUP, name=slot.name
            ) as subscriber:
                slot.handle = subscriber
                started()
                await slot.stop.wait()

    async def _pump(self, pump: _ChannelPump) -> None:
        try:
            async for message in pump.channel:
                pump.inbox.append(message)
                self._poke()
            pump.end_reason = pump.channel.end_reason
        except Exception as exc:
            self.errors.append(f"channel {pump.channel_id} ({pump.lite_topic}) raised {exc!r}")
        finally:
            pump.ended.set()
            self._poke()

    async def _await_event(self, event: anyio.Event, what: str) -> None:
        try:
            with anyio.fail_after(self.timeout):
                await event.wait()
        except TimeoutError:
            raise _fail("liveness", f"waited {self.timeout}s for {what}") from None

    async def _run_broker(
        self,
        slot: _BrokerSlot,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._supervised(slot.closed, "a broker", task_status) as started:
            async with self.h.connect() as broker:
                slot.broker = broker
                started()
                await slot.stop.wait()

    async def start(self) -> None:
        for slot in self.brokers:
            await self.tg.start(self._run_broker, slot)

    def _declare(self, index: int) -> None:
        """Declare the topics on broker *index* (again, after it was restarted)."""
        cfg = self.cfg
        broker = self.brokers[index].broker
        assert broker is not None
        audio = broker.ordered_topic(
            _TOPIC, partitions=cfg.partitions, dedupe_window=self.ordered.dedupe_window
        )
        replies = broker.lite_topics(_PARENT, ttl=self.ttl, max_len=cfg.max_len)
        elsewhere = broker.lite_topics(_OTHER_PARENT, ttl=self.ttl, max_len=cfg.max_len)
        if index < len(self.audio):
            self.audio[index], self.replies[index], self.elsewhere[index] = (
                audio,
                replies,
                elsewhere,
            )
        else:
            self.audio.append(audio)
            self.replies.append(replies)
            self.elsewhere.append(elsewhere)

    async def shutdown(self) -> None:
        with anyio.move_on_after(self.timeout):
            for slot in self.open_consumers():
                slot.open = False
                if slot.scope is not None:
                    slot.scope.cancel()
                await slot.closed.wait()
            for sub in self.open_subscribers():
                sub.open = False
                sub.stop.set()
                await sub.closed.wait()
            for pump in self.pumps.values():
                await pump.ended.wait()
            for broker in self.brokers:
                broker.stop.set()
                await broker.closed.wait()
        self.tg.cancel_scope.cancel()

    # -- rules: setup ---------------------------------------------------------------------------

    async def setup(self, cfg: _Config) -> None:
        self.config = cfg
        now = self.h.clock.time() if self.h.clock is not None else 0.0
        self.ordered = OrderedModel(
            cfg.partitions,
            ordering=cfg.ordering,
            max_in_flight=cfg.max_in_flight,
            max_deliveries=cfg.max_deliveries,
            dedupe_window=60.5 if self.manual else 3600.0,
            now=now,
        )
        self.lite = LiteModel(self.topics, ttl=self.ttl, max_len=cfg.max_len, now=now)
        for index in range(_BROKERS):
            self._declare(index)
        # A populated start, so that short runs reach the interesting interleavings.
        for i in range(cfg.consumers):
            await self.open_consumer(i)
        for i in range(cfg.subscribers):
            await self.open_subscriber(i)
        for i in range(cfg.lite_topics):
            if cfg.subscribers:
                await self.subscribe(i, i, "committed", 0)

    # -- rules: ordered topic -------------------------------------------------------------------

    async def send(
        self, key_index: int, count: int, dedupe: bool, expires_in: float | None = None
    ) -> None:
        await self._begin()
        for _ in range(count):
            key = _pick(self.keys, key_index)
            serial = next(self.serial)
            dedupe_id = f"req-{serial}" if dedupe else None
            await self._send(key, serial, dedupe_id, expires_in)
            key_index += 1
        await self._end()

    async def _send(
        self, key: str, serial: int, dedupe_id: str | None, expires_in: float | None = None
    ) -> None:
        payload = f"o|{key}|{serial}".encode()
        headers = {"serial": str(serial)}
        expected = self.ordered.send(
            key, payload, headers, dedupe_id=dedupe_id, expires_in=expires_in
        )
        receipt = await self.audio[serial % _BROKERS].send(
            key, payload, headers=headers, dedupe_id=dedupe_id, expires_in=expires_in
        )
        if expires_in is not None:
            self.events.add("ordered: send with a deadline")
        self.ordered.check_receipt(expected, receipt)
        if expected.duplicate:
            self.events.add("ordered: duplicate send")
        if dedupe_id is not None and not expected.duplicate:
            self.dedupe_ids.append((dedupe_id, key))

    async def resend(self, index: int) -> None:
        await self._begin()
        dedupe_id, key = _pick(self.dedupe_ids, index)
        await self._send(key, next(self.serial), dedupe_id)
        await self._end()

    async def open_consumer(self, broker: int) -> None:
        await self._begin()
        slot = _ConsumerSlot(f"worker-{next(self.names)}", broker % _BROKERS)
        self.ordered.open(slot.name)
        self.consumers.append(slot)
        await self.tg.start(self._run_consumer, slot)
        await self._end()

    async def crash_consumer(self, index: int) -> None:
        await self._begin()
        slot: _ConsumerSlot = _pick(self.open_consumers(), index)
        slot.open = False
        assert slot.scope is not None
        slot.scope.cancel()
        await self._await_event(slot.closed, f"consumer {slot.name!r} to close")
        # Only what the crashed consumer got before it closed: other consumers may already
        # have been handed its partitions, which the model allows only after the crash.
        self._process_consumer(slot)
        if self.ordered.crash(slot.name):
            self.events.add("ordered: crash with messages in flight")
        self.stale_messages.extend(slot.held)
        slot.held.clear()
        await self._end()

    async def settle(self, index: int, action: str, delayed: bool) -> None:
        await self._begin()
        held = self.held_messages()
        if not held:  # real time: the rule ran before anything arrived (see _observed)
            await self._end()
            return
        slot, message = _pick(held, index)
        slot.held.remove(message)
        p, o = message.partition, message.offset
        if action == "ack":
            self.ordered.ack(slot.name, p, o)
            await message.ack()
        elif action == "reject":
            self.ordered.reject(slot.name, p, o)
            await message.reject("model")
        else:
            delay = _NACK_DELAY if delayed and self.manual else 0.0
            if self.ordered.nack(slot.name, p, o, delay):
                self.events.add("ordered: dead-lettered after max_deliveries")
            await message.nack(delay=delay)
        await self._end()

    async def settle_stale(self, index: int, action: str) -> None:
        """Settle a message of a crashed consumer: fenced, it must change nothing."""
        await self._begin()
        if not self.stale_messages:
            await self._end()
            return
        message: litechan.Message = _pick(self.stale_messages, index)
        with contextlib.suppress(litechan.ResourceClosed):
            if action == "ack":
                await message.ack()
            elif action == "reject":
                await message.reject("stale")
            else:
                await message.nack()
        await self._end()

    async def consume_all(self) -> None:
        """Ack everything until the model says nothing more can be delivered (G1, G3 liveness)."""
        await self._begin()
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    event = self.activity
                    self._process()
                    held = self.held_messages()
                    for slot, message in held:
                        slot.held.remove(message)
                        self.ordered.ack(slot.name, message.partition, message.offset)
                        await message.ack()
                    if held:
                        continue
                    if not self.ordered.deliverable():
                        break
                    await event.wait()
        except TimeoutError:
            heads = [(m.key, m.partition, m.offset) for m in self.ordered.deliverable()]
            raise _fail(
                "liveness", f"waited {self.timeout}s for the group to deliver {heads}"
            ) from None
        await self._end()
        if self.held_messages():
            return  # something became deliverable meanwhile (a nack delay ran out)
        dead = {(d.partition, d.offset) for d in await self.audio[0].dead_letters(_GROUP)}
        certain, possible = self.ordered.dead_letters(certain=True), self.ordered.dead_letters()
        if not certain <= dead <= possible:
            raise _fail(
                "G3",
                f"dead letters {sorted(dead)}; expected {sorted(certain)} up to {sorted(possible)}",
            )

    # -- rules: lite topics ---------------------------------------------------------------------

    async def publish(self, topic_index: int, count: int, broker: int, elsewhere: bool) -> None:
        await self._begin()
        topic = _pick(self.topics, topic_index)
        for _ in range(count):
            offset, epoch = self.lite.publish(topic)
            payload = f"l|{_PARENT}|{topic}|{epoch}|{offset}".encode()
            got = await self.replies[broker % _BROKERS].publish(
                topic, payload, headers={"offset": str(offset)}
            )
            if got != offset:
                raise _fail("G5", f"publish to {topic!r} returned offset {got}, expected {offset}")
        if elsewhere:
            # Same lite topic name under another parent: must never reach this parent (G10).
            await self.elsewhere[broker % _BROKERS].publish(
                topic, f"l|{_OTHER_PARENT}|{topic}|0|1".encode(), headers={"offset": "1"}
            )
        await self._end()

    async def open_subscriber(self, broker: int) -> None:
        await self._begin()
        slot = _SubscriberSlot(f"gateway-{next(self.names)}", broker % _BROKERS)
        self.subscribers.append(slot)
        await self.tg.start(self._run_subscriber, slot)
        await self._end()

    async def restart_process(self, index: int) -> None:
        """Close broker *index* under its consumers and subscribers ("kill the process"), then
        connect it again: they are gone as if they had crashed (G3, G6)."""
        await self._begin()
        slot = self.brokers[index % _BROKERS]
        consumers = [c for c in self.open_consumers() if c.broker == index % _BROKERS]
        subscribers = [s for s in self.open_subscribers() if s.broker == index % _BROKERS]
        for c in consumers:
            c.open, c.dying = False, True
        for sub in subscribers:
            sub.open = False
        slot.stop.set()
        await self._await_event(slot.closed, "the broker to close")
        for c in consumers:
            await self._await_event(c.closed, f"consumer {c.name!r} to stop")
            self._process_consumer(c)
            self.ordered.crash(c.name)
            self.stale_messages.extend(c.held)
            c.held.clear()
        for sub in subscribers:
            sub.stop.set()
            await self._await_event(sub.closed, f"subscriber {sub.name!r} to stop")
            for topic in self.lite.owned_by(sub.name):
                pump = self._current_pump(topic)
                assert pump is not None
                self._process_pump(pump)
            self.lite.close(sub.name)
        fresh = self.brokers[index % _BROKERS] = _BrokerSlot()
        await self.tg.start(self._run_broker, fresh)
        self._declare(index % _BROKERS)
        await self._end()

    async def close_subscriber(self, index: int) -> None:
        await self._begin()
        slot: _SubscriberSlot = _pick(self.open_subscribers(), index)
        slot.open = False
        slot.stop.set()
        await self._await_event(slot.closed, f"subscriber {slot.name!r} to close")
        # What its channels got before they closed, then the model's view of the close.
        for topic in self.lite.owned_by(slot.name):
            pump = self._current_pump(topic)
            assert pump is not None
            self._process_pump(pump)
        self.lite.close(slot.name)
        await self._end()

    async def subscribe(self, index: int, topic_index: int, start_kind: str, k: int) -> None:
        await self._begin()
        slot: _SubscriberSlot = _pick(self.open_subscribers(), index)
        assert slot.handle is not None
        topic = _pick(self.topics, topic_index)
        start: Start
        if start_kind == "offset":
            start = 1 + k % (self.lite.topics[topic].last + 2)
        else:
            start = start_kind  # type: ignore[assignment]
        previous = self._current_pump(topic)
        channel = await slot.handle.subscribe(topic, start)
        if previous is not None:
            self._process_pump(previous)  # what the previous owner got before the takeover
        outcome = self.lite.subscribe(slot.name, topic, start)
        if outcome.same:
            if channel is not self.pumps[outcome.channel].channel:
                raise _fail("API", f"subscribing again to {topic!r} returned another channel")
        else:
            if channel.end_reason is not None or channel.lite_topic != topic:
                raise _fail("API", f"subscribe({topic!r}) returned {channel!r}")
            pump = _ChannelPump(outcome.channel, topic, channel)
            self.pumps[outcome.channel] = pump
            self.tg.start_soon(self._pump, pump)
        await self._end()

    async def unsubscribe(self, index: int, topic_index: int) -> None:
        await self._begin()
        slot: _SubscriberSlot = _pick(self.open_subscribers(), index)
        assert slot.handle is not None
        topic = _pick(self.topics, topic_index)
        await slot.handle.unsubscribe(topic)
        pump = self._current_pump(topic, slot.name)
        if pump is not None:
            self._process_pump(pump)
        self.lite.unsubscribe(slot.name, topic)
        await self._end()

    async def ack_lite(self, index: int, count: int) -> None:
        await self._begin()
        for _ in range(count):
            live = self.live_lite_messages()
            if not live:
                break
            pump, message, epoch = _pick(live, index)
            pump.held.remove((message, epoch))
            if not self.lite.ack(pump.channel_id, message.lite_topic, message.offset, epoch):
                raise AssertionError("the model says a live message is stale")  # machine bug
            await message.ack()
            index += 1
        await self._end()

    async def ack_lite_stale(self, index: int) -> None:
        """Ack a message of an ended channel: fenced, it must change nothing (G4)."""
        await self._begin()
        stale = self.stale_lite_messages()
        if not stale:
            await self._end()
            return
        pump, message, epoch = _pick(stale, index)
        pump.held.remove((message, epoch))
        if self.lite.ack(pump.channel_id, message.lite_topic, message.offset, epoch):
            raise AssertionError("the model says a stale message is live")  # machine bug
        with contextlib.suppress(litechan.ResourceClosed):
            await message.ack()
        await self._end()

    async def advance(self, long: bool) -> None:
        await self._begin()
        if self.manual:
            seconds = self.ttl + 1.0 if long else _SHORT_STEP
        else:
            seconds = 2 * self.ttl  # real time: only whole TTLs, so the model knows what expired
        self.ordered.advance(seconds)
        self.lite.advance(seconds)
        await self.h.advance(seconds)
        await self._end()

    async def _check_ordered_stats(self) -> None:
        stats = await self.audio[0].stats()
        if len(stats.partitions) != self.ordered.partitions:
            raise _fail("stats", f"{len(stats.partitions)} partitions in stats")
        names = {c.name for c in self.open_consumers()}
        for ps in stats.partitions:
            count = len(self.ordered.logs[ps.partition])
            if (ps.length, ps.last_offset) != (count, count) or (count and ps.first_offset != 1):
                raise _fail("stats", f"partition {ps.partition}: {ps}, {count} messages sent")
            lag = ps.groups.get(_GROUP)
            if lag is None:
                continue
            prefix = self.ordered.settled_prefix(ps.partition)
            held = sum(1 for m in self.ordered.held() if m.partition == ps.partition)
            if lag.committed > prefix:
                raise _fail(
                    "G3/G4",
                    f"partition {ps.partition}: committed {lag.committed} passes an unsettled "
                    f"message (everything is settled only up to {prefix})",
                )
            if lag.lag != count - lag.committed or lag.pending < held:
                raise _fail("stats", f"partition {ps.partition}: {lag}, {held} held")
            if lag.expired > self.ordered.expired(ps.partition):
                raise _fail(
                    "deadline",
                    f"partition {ps.partition}: {lag.expired} expired in stats, "
                    f"{self.ordered.expired(ps.partition)} may have",
                )
            if lag.expired:
                self.events.add("ordered: expired message settled")
            if lag.owner is not None and lag.owner not in names:
                raise _fail("G4", f"partition {ps.partition} owned by closed {lag.owner!r}")

    async def _check_lite_stats(self) -> None:
        stats = await self.replies[0].stats(top=10)
        model = self.lite
        owned = sum(1 for s in model.topics.values() if s.owner is not None)
        if stats.topics != model.live_topics() or stats.subscriptions != owned:
            raise _fail(
                "stats",
                f"{stats.topics} topics / {stats.subscriptions} subscriptions; expected "
                f"{model.live_topics()} / {owned}",
            )
        backlogs = [lag.backlog for lag in stats.top]
        if backlogs != sorted(backlogs, reverse=True):
            raise _fail("stats", f"top is not sorted by backlog: {stats.top}")
        seen: set[str] = set()
        for lag in stats.top:
            s = model.topics.get(lag.lite_topic)
            if lag.group != _LITE_GROUP or s is None or not s.exists:
                raise _fail("stats", f"unexpected entry {lag}")
            seen.add(lag.lite_topic)
            if lag.owner != s.owner or lag.backlog not in model.backlogs(lag.lite_topic):
                raise _fail(
                    "stats",
                    f"{lag}: expected owner {s.owner!r}, backlog one of "
                    f"{sorted(model.backlogs(lag.lite_topic))}",
                )
        missing = {s.name for s in model.topics.values() if s.exists and s.owner} - seen
        if missing:
            raise _fail("stats", f"owned lite topics {sorted(missing)} missing from {stats.top}")


@contextlib.asynccontextmanager
async def _open_world(
    backend: BackendFactory, *, wait_limit: float, real_ttl: float | None
) -> AsyncIterator[_World]:
    async with backend() as harness, anyio.create_task_group() as tg:
        world = _World(harness, tg, timeout=wait_limit, real_ttl=real_ttl)
        try:
            await world.start()
            yield world
        finally:
            with anyio.CancelScope(shield=True):
                await world.shutdown()


def make_state_machine(
    backend: BackendFactory,
    *,
    anyio_backend: str = "asyncio",
    real_ttl: float | None = None,
    timeout: float = 5.0,
) -> type[RuleBasedStateMachine]:
    """Return a Hypothesis state machine that checks a backend against the model.

    Each example opens a fresh world with *backend* inside an anyio blocking portal running
    *anyio_backend* (``"asyncio"`` or ``"trio"``), connects two brokers to it (two "processes")
    and runs random rules; every rule is checked against :class:`OrderedModel` and
    :class:`LiteModel`. Run it with :func:`hypothesis.stateful.run_state_machine_as_test` or
    through its ``TestCase`` attribute.

    Time passes only through :meth:`Harness.advance`. With a :class:`~litechan.ManualClock`
    (``harness.clock``) the machine uses a TTL of 10.5 s, nack delays and dedupe-window expiry;
    without one (a server keeping real time) it uses no nack delays, and TTL rules run only
    when *real_ttl* (seconds, several times longer than a rule takes) is given. *timeout*
    bounds every wait for something the model says must happen.

    .. versionadded:: 0.1.0
    """

    class LitechanModel(RuleBasedStateMachine):
        """Random sends, deliveries, settlements, subscriptions and clock steps, checked."""

        def __init__(self) -> None:
            super().__init__()
            self._stack = contextlib.ExitStack()
            try:
                portal = self._stack.enter_context(
                    anyio.from_thread.start_blocking_portal(anyio_backend)
                )
                self._portal = portal
                self._world: _World = self._stack.enter_context(
                    portal.wrap_async_context_manager(
                        _open_world(backend, wait_limit=timeout, real_ttl=real_ttl)
                    )
                )
            except BaseException:
                self._stack.close()
                raise

        def teardown(self) -> None:
            self._stack.close()

        def _run(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
            try:
                self._portal.call(func, *args)
            finally:
                if currently_in_test_context():
                    for name in sorted(self._world.events):
                        event(name)
                self._world.events.clear()

        @initialize(
            partitions=st.integers(2, 4),
            keys=st.integers(1, 3),
            ordering=st.sampled_from(["key", "key", "partition"]),
            max_in_flight=st.integers(1, 3),
            max_deliveries=st.integers(2, 4),
            lite_topics=st.integers(1, 3),
            max_len=st.integers(3, 5),
            consumers=st.integers(0, 2),
            subscribers=st.integers(0, 2),
        )
        def setup(
            self,
            partitions: int,
            keys: int,
            ordering: Ordering,
            max_in_flight: int,
            max_deliveries: int,
            lite_topics: int,
            max_len: int,
            consumers: int,
            subscribers: int,
        ) -> None:
            cfg = _Config(
                partitions,
                keys,
                ordering,
                max_in_flight,
                max_deliveries,
                lite_topics,
                max_len,
                consumers,
                subscribers,
            )
            self._run(self._world.setup, cfg)

        # Hypothesis prefers rules with fewer arguments: the frequent operations take few.

        # -- ordered topic ----------------------------------------------------------------------

        @rule(key=st.integers(0, 2), count=st.integers(1, 3))
        def send(self, key: int, count: int) -> None:
            self._run(self._world.send, key, count, False)

        @rule(key=st.integers(0, 2))
        def send_with_dedupe_id(self, key: int) -> None:
            self._run(self._world.send, key, 1, True)

        @precondition(lambda self: self._world.manual)
        @rule(
            key=st.integers(0, 2),
            count=st.integers(1, 3),
            steps=st.sampled_from([0.5, 1.5, 2.5]),
        )
        def send_with_deadline(self, key: int, count: int, steps: float) -> None:
            """Sends whose deadline falls between the clock's short steps (a manual clock)."""
            self._run(self._world.send, key, count, False, steps * _SHORT_STEP)

        @precondition(lambda self: bool(self._world.dedupe_ids))
        @rule(index=st.integers(0, 50))
        def resend_duplicate(self, index: int) -> None:
            self._run(self._world.resend, index)

        @precondition(lambda self: len(self._world.open_consumers()) < _MAX_CONSUMERS)
        @rule(broker=st.integers(0, _BROKERS - 1))
        def open_consumer(self, broker: int) -> None:
            self._run(self._world.open_consumer, broker)

        @precondition(lambda self: bool(self._world.open_consumers()))
        @rule(index=st.integers(0, 5))
        def crash_consumer(self, index: int) -> None:
            self._run(self._world.crash_consumer, index)

        @precondition(lambda self: _observed(self._world, bool(self._world.held_messages())))
        @rule(index=st.integers(0, 50))
        def ack(self, index: int) -> None:
            self._run(self._world.settle, index, "ack", False)

        @precondition(lambda self: _observed(self._world, bool(self._world.held_messages())))
        @rule(index=st.integers(0, 50), delayed=st.booleans())
        def nack(self, index: int, delayed: bool) -> None:
            self._run(self._world.settle, index, "nack", delayed)

        @precondition(lambda self: _observed(self._world, bool(self._world.held_messages())))
        @rule(index=st.integers(0, 50))
        def reject(self, index: int) -> None:
            self._run(self._world.settle, index, "reject", False)

        @precondition(lambda self: _observed(self._world, bool(self._world.stale_messages)))
        @rule(index=st.integers(0, 50), action=st.sampled_from(["ack", "nack", "reject"]))
        def settle_after_crash(self, index: int, action: str) -> None:
            self._run(self._world.settle_stale, index, action)

        @rule(broker=st.integers(0, _BROKERS - 1))
        def restart_process(self, broker: int) -> None:
            self._run(self._world.restart_process, broker)

        @precondition(lambda self: bool(self._world.open_consumers()))
        @rule()
        def consume_all(self) -> None:
            self._run(self._world.consume_all)

        # -- lite topics ------------------------------------------------------------------------

        @rule(topic=st.integers(0, 2))
        def publish(self, topic: int) -> None:
            self._run(self._world.publish, topic, 1, topic, False)

        @rule(topic=st.integers(0, 2), count=st.integers(2, 7))
        def publish_burst(self, topic: int, count: int) -> None:
            self._run(self._world.publish, topic, count, count, False)

        @rule(topic=st.integers(0, 2))
        def publish_under_other_parent(self, topic: int) -> None:
            self._run(self._world.publish, topic, 0, 1, True)

        @precondition(lambda self: len(self._world.open_subscribers()) < _MAX_SUBSCRIBERS)
        @rule(broker=st.integers(0, _BROKERS - 1))
        def open_subscriber(self, broker: int) -> None:
            self._run(self._world.open_subscriber, broker)

        @precondition(lambda self: bool(self._world.open_subscribers()))
        @rule(index=st.integers(0, 5))
        def close_subscriber(self, index: int) -> None:
            self._run(self._world.close_subscriber, index)

        @precondition(lambda self: bool(self._world.open_subscribers()))
        @rule(index=st.integers(0, 5), topic=st.integers(0, 2))
        def subscribe(self, index: int, topic: int) -> None:
            self._run(self._world.subscribe, index, topic, "committed", 0)

        @precondition(lambda self: bool(self._world.open_subscribers()))
        @rule(
            index=st.integers(0, 5),
            topic=st.integers(0, 2),
            start=st.sampled_from(["earliest", "latest", "offset"]),
            k=st.integers(0, 20),
        )
        def subscribe_at(self, index: int, topic: int, start: str, k: int) -> None:
            self._run(self._world.subscribe, index, topic, start, k)

        @precondition(lambda self: bool(self._world.open_subscribers()))
        @rule(index=st.integers(0, 5), topic=st.integers(0, 2))
        def unsubscribe(self, index: int, topic: int) -> None:
            self._run(self._world.unsubscribe, index, topic)

        @precondition(lambda self: _observed(self._world, bool(self._world.live_lite_messages())))
        @rule(index=st.integers(0, 50))
        def ack_lite(self, index: int) -> None:
            self._run(self._world.ack_lite, index, 1)

        @precondition(lambda self: _observed(self._world, bool(self._world.live_lite_messages())))
        @rule()
        def ack_lite_all(self) -> None:
            self._run(self._world.ack_lite, 0, 1_000)

        @precondition(lambda self: _observed(self._world, bool(self._world.stale_lite_messages())))
        @rule(index=st.integers(0, 50))
        def ack_lite_after_end(self, index: int) -> None:
            self._run(self._world.ack_lite_stale, index)

        @precondition(lambda self: self._world.ttl_rules)
        @rule()
        def advance_past_ttl(self) -> None:
            self._run(self._world.advance, True)

        @precondition(lambda self: self._world.manual)
        @rule()
        def advance_a_little(self) -> None:
            self._run(self._world.advance, False)

    LitechanModel.__name__ = LitechanModel.__qualname__ = "LitechanModel"
    return LitechanModel
