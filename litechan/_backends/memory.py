"""The in-process backend (``memory://``): every guarantee, no server.

It is the embedded default (single-process apps, tests, the demo), not a test double: it keeps
the same ownership, fencing, offset and TTL rules as a distributed backend, within one process.

``memory://`` opens a private world; ``memory://NAME`` joins the world called NAME that other
brokers of this process opened (that is how several "gateways" share lite topics in one process).
A world lives while a broker has it open and takes its clock from the first broker.

Storage is a list per partition / lite topic with an offset base (:class:`_Log`), so reading a
batch from any offset is a slice and trimming to ``max_len`` is amortised O(1). TTL expiry keeps
each parent's lite topics in least-recently-published order (an ``OrderedDict`` moved on every
publish), so the topic to expire next is always the first one: no scan, no heap churn.
"""

from __future__ import annotations

import heapq
import itertools
import math
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import SplitResult

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .._alarm import Alarm
from .._clock import Clock
from .._errors import ConfigMismatch, InvalidArgument
from .._log import logger
from .._types import (
    DeadLetter,
    EndReason,
    GroupLag,
    LiteTopicLag,
    LiteTopicsStats,
    OrderedTopicStats,
    PartitionStats,
    Receipt,
)
from .._urls import redact
from .base import (
    ALWAYS_FRESH,
    BackendOptions,
    Entry,
    LiteBatch,
    LiteListener,
    LiteRecord,
    LiteSpec,
    OrderedBatch,
    OrderedListener,
    OrderedSpec,
    Start,
    Subscription,
)

__all__ = ["MemoryBackend"]


T = TypeVar("T")

#: One stored ordered-topic message: ``(key, payload, headers, published_at, expires_at)``,
#: headers ``None`` when empty so that the garbage collector can stop tracking the tuple (see
#: ``LiteRecord``).
_OrderedRecord = tuple[str, bytes, dict[str, str] | None, float, float | None]


class _Log(Generic[T]):
    """An append-only log with integer offsets from 1 and front trimming.

    ``items[start]`` holds offset ``first``; hot paths read the three fields directly.
    """

    __slots__ = ("first", "items", "start")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.start = 0  # index in items of the first retained item
        self.first = 1  # offset of the first retained item

    @property
    def next(self) -> int:
        return self.first + len(self.items) - self.start

    def __len__(self) -> int:
        return len(self.items) - self.start

    def append(self, item: T) -> None:
        self.items.append(item)

    def get(self, offset: int) -> T:
        return self.items[self.start + offset - self.first]

    def slice(self, offset: int, count: int) -> list[T]:
        i = self.start + offset - self.first
        return self.items[i : i + count]

    def trim(self, max_len: int) -> int:
        """Drop the oldest items beyond *max_len*; return how many were dropped."""
        excess = len(self.items) - self.start - max_len
        if excess <= 0:
            return 0
        self.start += excess
        self.first += excess
        if self.start > 1024 and self.start * 2 > len(self.items):
            del self.items[: self.start]
            self.start = 0
        return excess


# ---------------------------------------------------------------------------------------------
# ordered topics


class _GroupPartition:
    """One group's state in one partition.

    Invariant: every offset below ``cursor`` that is not in ``pending`` is settled, so the
    committed offset is ``min(pending) - 1`` (or ``cursor - 1``) and never needs its own field.
    """

    __slots__ = ("cursor", "expired", "generation", "owner", "pending", "redeliver", "revoking")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.expired = 0  # settled unread, past their deadline
        self.pending: dict[int, int] = {}  # offset -> deliveries so far
        self.redeliver: deque[int] = deque()  # pending offsets to hand the new owner first
        self.owner: _GroupMember | None = None
        self.generation = 0
        self.revoking = False

    def committed(self) -> int:
        return min(self.pending) - 1 if self.pending else self.cursor - 1


class _Group:
    __slots__ = ("dead", "members", "name", "parts", "topic")

    def __init__(self, topic: _OrderedTopic, name: str) -> None:
        self.topic = topic
        self.name = name
        self.members: list[_GroupMember] = []
        self.parts = [_GroupPartition(log.first) for log in topic.logs]
        self.dead: deque[DeadLetter] = deque(maxlen=MAX_DEAD_LETTERS)

    def rebalance(self) -> None:
        """Move every partition towards ``members[p % n]``; a partition held by a live member is
        revoked first and moves when that member releases it (after settling its in-flight)."""
        members = self.members
        for p, gp in enumerate(self.parts):
            desired = members[p % len(members)] if members else None
            if gp.owner is desired or gp.revoking:
                continue
            if gp.owner is None:
                if desired is not None:
                    self._assign(p, gp, desired)
            else:
                gp.revoking = True
                gp.owner.to_revoke.append(p)
                gp.owner.listener.wake()

    def _assign(self, p: int, gp: _GroupPartition, member: _GroupMember) -> None:
        gp.owner = member
        gp.generation += 1
        gp.revoking = False
        gp.redeliver = deque(sorted(gp.pending))
        member.owned.add(p)
        member.listener.wake()

    def give_up(self, member: _GroupMember, p: int, undelivered: Sequence[Entry]) -> None:
        gp = self.parts[p]
        if gp.owner is not member:
            return
        for e in undelivered:
            if e.partition == p and e.offset in gp.pending:
                # Fetched but never handed to the application: that delivery did not happen.
                gp.pending[e.offset] = e.delivery_count - 1
        gp.owner = None
        gp.revoking = False
        gp.redeliver.clear()
        member.owned.discard(p)


class _OrderedTopic:
    __slots__ = ("dedupe", "dedupe_order", "groups", "logs", "spec")

    def __init__(self, spec: OrderedSpec) -> None:
        self.spec = spec
        self.logs: list[_Log[_OrderedRecord]] = [_Log() for _ in range(spec.partitions)]
        self.groups: dict[str, _Group] = {}
        self.dedupe: dict[str, tuple[Receipt, float]] = {}
        self.dedupe_order: deque[tuple[float, str]] = deque()


class _GroupMember:
    """A consumer's membership (implements ``GroupMember``)."""

    __slots__ = (
        "_rotation",
        "closed",
        "group",
        "listener",
        "max_deliveries",
        "name",
        "owned",
        "to_revoke",
    )

    def __init__(
        self,
        group: _Group,
        name: str,
        max_deliveries: int,
        listener: OrderedListener,
    ) -> None:
        self.group = group
        self.name = name
        self.max_deliveries = max_deliveries
        self.listener = listener
        self.owned: set[int] = set()
        self.to_revoke: list[int] = []
        self.closed = False
        self._rotation = 0

    #: Ownership lives in this process: it is never in doubt.
    valid_until = math.inf

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self.owned)

    def lapse(self, now: float) -> Sequence[int]:
        return ()

    async def fetch(self, max_entries: int) -> OrderedBatch:
        revoked, self.to_revoke = self.to_revoke, []
        batch: list[Entry] = []
        owned = sorted(self.owned)
        if owned:
            # Rotate the starting partition so that a busy partition cannot starve the others.
            self._rotation = (self._rotation + 1) % len(owned)
            owned = owned[self._rotation :] + owned[: self._rotation]
        topic = self.group.topic
        for p in owned:
            if len(batch) >= max_entries:
                break
            gp = self.group.parts[p]
            if gp.revoking:
                continue
            self._fetch_partition(p, gp, topic.logs[p], batch, max_entries)
        return OrderedBatch(batch, revoked)

    def _fetch_partition(
        self,
        p: int,
        gp: _GroupPartition,
        log: _Log[_OrderedRecord],
        batch: list[Entry],
        max_entries: int,
    ) -> None:
        while gp.redeliver and len(batch) < max_entries:
            offset = gp.redeliver.popleft()
            if offset not in gp.pending:
                continue
            if offset < log.first:
                del gp.pending[offset]
                self._warn_trimmed(p, offset, offset + 1)
                continue
            count = gp.pending[offset] + 1
            key, payload, headers, published_at, expires_at = log.get(offset)
            entry = Entry(
                p,
                offset,
                key,
                payload,
                dict(headers or {}),
                published_at,
                count,
                gp.generation,
                expires_at,
            )
            if count > self.max_deliveries:
                self._dead_letter(gp, entry, f"delivered {count - 1} times without ack")
                continue
            gp.pending[offset] = count
            batch.append(entry)
        if gp.cursor < log.first:
            self._warn_trimmed(p, gp.cursor, log.first)
            gp.cursor = log.first
        end = min(log.next, gp.cursor + max_entries - len(batch))
        if gp.cursor >= end:
            return
        generation = gp.generation
        for offset, (key, payload, headers, published_at, expires_at) in enumerate(
            log.slice(gp.cursor, end - gp.cursor), start=gp.cursor
        ):
            gp.pending[offset] = 1
            batch.append(
                Entry(
                    p,
                    offset,
                    key,
                    payload,
                    dict(headers or {}),
                    published_at,
                    1,
                    generation,
                    expires_at,
                )
            )
        gp.cursor = end

    def _warn_trimmed(self, p: int, start: int, stop: int) -> None:
        logger.warning(
            "litechan.ordered.trimmed",
            topic=self.group.topic.spec.name,
            group=self.group.name,
            partition=p,
            lost=stop - start,
            hint="the group fell more than max_len behind; raise max_len or add consumers",
        )

    def _owns(self, entry: Entry) -> _GroupPartition | None:
        gp = self.group.parts[entry.partition]
        if gp.owner is self and gp.generation == entry.generation and not self.closed:
            return gp
        return None  # fenced: the partition moved on, or this member left

    async def ack(self, entry: Entry) -> None:
        gp = self._owns(entry)
        if gp is not None:
            gp.pending.pop(entry.offset, None)

    async def expire(self, entry: Entry) -> None:
        gp = self._owns(entry)
        if gp is not None and gp.pending.pop(entry.offset, None) is not None:
            gp.expired += 1

    async def nack(self, entry: Entry) -> None:
        gp = self._owns(entry)
        if gp is not None and entry.offset in gp.pending:
            gp.pending[entry.offset] = entry.delivery_count + 1

    async def reject(self, entry: Entry, reason: str) -> None:
        gp = self._owns(entry)
        if gp is not None and entry.offset in gp.pending:
            self._dead_letter(gp, entry, reason)

    def _dead_letter(self, gp: _GroupPartition, entry: Entry, reason: str) -> None:
        gp.pending.pop(entry.offset, None)
        dead = self.group.dead
        if len(dead) == dead.maxlen:
            oldest = dead[0]
            logger.warning(
                "litechan.ordered.dead_letter_dropped",
                topic=self.group.topic.spec.name,
                group=self.group.name,
                partition=oldest.partition,
                offset=oldest.offset,
                hint=f"a group keeps its last {MAX_DEAD_LETTERS} dead letters",
            )
        dead.append(
            DeadLetter(
                key=entry.key,
                payload=entry.payload,
                headers=entry.headers,
                partition=entry.partition,
                offset=entry.offset,
                delivery_count=entry.delivery_count,
                reason=reason,
            )
        )
        logger.warning(
            "litechan.ordered.dead_lettered",
            topic=self.group.topic.spec.name,
            group=self.group.name,
            partition=entry.partition,
            offset=entry.offset,
            key=entry.key,
            reason=reason,
        )

    async def release(self, partition: int, undelivered: Sequence[Entry]) -> None:
        self.group.give_up(self, partition, undelivered)
        self.group.rebalance()

    async def aclose(self, undelivered: Sequence[Entry]) -> None:
        if self.closed:
            return
        self.closed = True
        for p in sorted(self.owned):
            self.group.give_up(self, p, undelivered)
        self.group.members.remove(self)
        self.group.rebalance()


# ---------------------------------------------------------------------------------------------
# lite topics


class _GroupCursor:
    """A group's committed position on one incarnation of a lite topic.

    ``committed`` is ``None`` until the group acks or positions itself; ``acked`` holds acks
    above the committed offset that arrived out of order.
    """

    __slots__ = ("acked", "committed")

    def __init__(self, committed: int | None = None) -> None:
        self.committed = committed
        self.acked: set[int] = set()


class _LiteTopic:
    __slots__ = ("epoch", "groups", "last_publish", "log", "name")

    def __init__(self, name: str, epoch: str, now: float) -> None:
        self.name = name
        self.epoch = epoch
        self.log: _Log[LiteRecord] = _Log()
        self.last_publish = now
        self.groups: dict[str, _GroupCursor] = {}

    def base(self, cursor: _GroupCursor | None) -> int:
        """The offset below which the group has nothing more to read (acked or trimmed)."""
        floor = self.log.first - 1
        if cursor is None or cursor.committed is None:
            return floor
        return max(cursor.committed, floor)


class _Owner:
    __slots__ = ("generation", "member")

    def __init__(self, member: _LiteMember, generation: int) -> None:
        self.member = member
        self.generation = generation


class _Parent:
    __slots__ = ("expired", "generations", "owners", "spec", "topics")

    def __init__(self, spec: LiteSpec) -> None:
        self.spec = spec
        self.expired: dict[str, int] = {}  # group -> records settled unread, past deadline
        # Least recently published first: the next topic to expire is always the first one.
        self.topics: OrderedDict[str, _LiteTopic] = OrderedDict()
        # lite topic -> group -> owner; a subscription may exist before its topic does.
        self.owners: dict[str, dict[str, _Owner]] = {}
        self.generations = itertools.count(1)

    def next_deadline(self) -> float | None:
        for topic in self.topics.values():
            return topic.last_publish + self.spec.ttl
        return None

    def expire_due(self, now: float) -> None:
        ttl = self.spec.ttl
        topics = self.topics
        while topics:
            topic = next(iter(topics.values()))
            if topic.last_publish + ttl > now:
                return
            del topics[topic.name]
            for owner in self.owners.pop(topic.name, {}).values():
                owner.member.owned.pop(topic.name, None)
                owner.member.listener.on_end(topic.name, EndReason.EXPIRED)


class _LiteMember:
    """A subscriber's attachment to a parent (implements ``LiteMember``)."""

    __slots__ = ("group", "listener", "name", "owned", "parent", "world")

    #: A takeover ends the old owner's channel at once, in this process.
    fence = ALWAYS_FRESH

    def __init__(
        self, world: _World, parent: _Parent, group: str, name: str, listener: LiteListener
    ) -> None:
        self.world = world
        self.parent = parent
        self.group = group
        self.name = name
        self.listener = listener
        self.owned: dict[str, int] = {}  # lite topic -> generation

    async def subscribe(self, lite_topic: str, start: Start) -> Subscription:
        parent = self.parent
        parent.expire_due(self.world.clock.time())
        owners = parent.owners.setdefault(lite_topic, {})
        previous = owners.get(self.group)
        if previous is not None and previous.member is not self:
            previous.member.owned.pop(lite_topic, None)
            logger.info(  # the same fields as every backend's: who lost the topic
                "litechan.lite.revoked",
                parent=parent.spec.parent,
                lite_topic=lite_topic,
                group=self.group,
                subscriber=previous.member.name,
            )
            previous.member.listener.on_end(lite_topic, EndReason.REVOKED)
        generation = next(parent.generations)
        owners[self.group] = _Owner(self, generation)
        self.owned[lite_topic] = generation
        topic = parent.topics.get(lite_topic)
        if topic is None:
            return Subscription(generation, start if isinstance(start, int) else 1, backlog=False)
        cursor = topic.groups.get(self.group)
        if start == "committed":
            if cursor is None:
                # The group's first look at this incarnation: record its interest (it shows
                # in stats from now on) and start at the earliest retained message.
                topic.groups[self.group] = _GroupCursor()
                next_offset = topic.log.first
            elif cursor.committed is None:
                next_offset = topic.log.first
            else:
                # Not clamped to what is retained: if trimming passed the committed offset,
                # the first fetch reports the distance as a gap (G9).
                next_offset = cursor.committed + 1
        else:
            if start == "earliest":
                next_offset = topic.log.first
            elif start == "latest":
                next_offset = topic.log.next
            else:
                next_offset = start
            # An explicit start repositions the group: what lies before it counts as done.
            topic.groups[self.group] = _GroupCursor(next_offset - 1)
        return Subscription(generation, next_offset, backlog=next_offset < topic.log.next)

    def _drop(self, lite_topic: str) -> None:
        if self.owned.pop(lite_topic, None) is None:
            return
        owners = self.parent.owners.get(lite_topic)
        if owners is not None:
            owner = owners.get(self.group)
            if owner is not None and owner.member is self:
                del owners[self.group]
                if not owners:
                    del self.parent.owners[lite_topic]

    async def unsubscribe(self, lite_topic: str) -> None:
        self._drop(lite_topic)

    async def fetch(
        self, lite_topic: str, generation: int, from_offset: int, max_records: int
    ) -> LiteBatch:
        parent = self.parent
        parent.expire_due(self.world.clock.time())
        if self.owned.get(lite_topic) != generation:
            return LiteBatch("", (), from_offset, ended=EndReason.REVOKED)
        topic = parent.topics.get(lite_topic)
        if topic is None:
            return LiteBatch("", (), from_offset)
        log = topic.log
        cursor = topic.groups.get(self.group)
        acked = cursor.acked if cursor is not None else None
        gap = 0
        if from_offset < log.first:
            # Trimmed before this read; those the group had acked (out of order) are no loss.
            gap = log.first - from_offset
            if acked:
                gap -= sum(1 for o in acked if from_offset <= o < log.first)
            from_offset = log.first
        records = log.slice(from_offset, max_records)
        next_offset = from_offset + len(records)
        if acked:
            records = [record for record in records if record[0] not in acked]
        return LiteBatch(topic.epoch, records, next_offset, next_offset < log.next, gap)

    def ack(self, lite_topic: str, epoch: str, offset: int, generation: int) -> None:
        self._settle(lite_topic, epoch, offset, generation)

    def expire(self, lite_topic: str, epoch: str, offset: int, generation: int) -> None:
        if self._settle(lite_topic, epoch, offset, generation):
            expired = self.parent.expired
            expired[self.group] = expired.get(self.group, 0) + 1

    def _settle(self, lite_topic: str, epoch: str, offset: int, generation: int) -> bool:
        """Settle *offset* for the group; False when fenced or settled already."""
        if self.owned.get(lite_topic) != generation:
            return False  # fenced: revoked, expired or unsubscribed since delivery
        topic = self.parent.topics.get(lite_topic)
        if topic is None or topic.epoch != epoch:
            return False
        cursor = topic.groups.get(self.group)
        if cursor is None:
            cursor = topic.groups[self.group] = _GroupCursor()
        elif cursor.committed == offset - 1 and not cursor.acked and offset >= topic.log.first:
            cursor.committed = offset  # the common case: acks in order, nothing trimmed between
            return True
        committed = topic.base(cursor)  # may jump forward over trimmed offsets
        acked = cursor.acked
        if offset <= committed or offset in acked:
            return False
        if offset == committed + 1:
            committed += 1
        else:
            acked.add(offset)
        while acked and committed + 1 in acked:
            committed += 1
            acked.remove(committed)
        if acked and min(acked) <= committed:
            cursor.acked = {o for o in acked if o > committed}
        cursor.committed = committed
        return True

    async def aclose(self) -> None:
        for lite_topic in list(self.owned):
            self._drop(lite_topic)


# ---------------------------------------------------------------------------------------------
# worlds and the backend


class _World:
    """Everything one memory world stores, shared by the brokers that opened it."""

    def __init__(self, name: str | None, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.refs = 0
        # The event loop of the brokers that have it open: its wake-ups are that loop's events.
        self.loop = anyio.lowlevel.current_token()
        self.ordered: dict[str, _OrderedTopic] = {}
        self.parents: dict[str, _Parent] = {}
        self.alarms: set[Alarm] = set()

    def arm(self, deadline: float) -> None:
        for alarm in self.alarms:
            alarm.arm(deadline)

    def expire_due(self) -> None:
        now = self.clock.time()
        deadlines = []
        for parent in self.parents.values():
            parent.expire_due(now)
            deadline = parent.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        if deadlines:
            self.arm(min(deadlines))


_worlds: dict[str, _World] = {}

#: Dead letters kept per group (oldest dropped first, with a warning).
MAX_DEAD_LETTERS = 10_000


def _new_epoch() -> str:
    return secrets.token_hex(8)


class MemoryBackend:
    """The ``memory://`` backend (implements ``Backend``)."""

    def __init__(self, url: SplitResult, options: BackendOptions) -> None:
        if url.path not in ("", "/") or url.query or url.fragment:
            raise InvalidArgument(
                "memory URLs take only a world name (memory:// or memory://NAME), "
                f"got {redact(url)!r}"
            )
        self._name = url.netloc or None
        self._options = options
        self._world: _World | None = None
        self._alarm = Alarm(options.clock, self._on_alarm)

    @property
    def world(self) -> _World:
        assert self._world is not None, "backend used before start()"  # the broker ensures it
        return self._world

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        name = self._name
        world = _worlds.get(name) if name is not None else None
        if world is None:
            world = _World(name, self._options.clock)
            if name is not None:
                _worlds[name] = world
        elif world.loop != anyio.lowlevel.current_token():
            raise InvalidArgument(
                f"memory://{name} is open in another event loop (another thread: each of two "
                "Starlette TestClients, say, runs its own); a memory world wakes its readers "
                "through its loop's events, so every broker of it must run in one event loop. "
                "Share one loop, or connect to Redis"
            )
        world.refs += 1
        world.alarms.add(self._alarm)
        self._world = world
        task_group.start_soon(self._alarm.run)
        world.expire_due()

    def closing(self) -> None:
        return None  # closing touches nothing but this process

    async def aclose(self) -> None:
        world = self._world
        if world is None:
            return
        world.alarms.discard(self._alarm)
        self._alarm.stop()
        world.refs -= 1
        if world.refs == 0 and world.name is not None and _worlds.get(world.name) is world:
            del _worlds[world.name]

    def _on_alarm(self) -> None:
        if self._world is not None:
            self._world.expire_due()

    # -- declarations -------------------------------------------------------------------------

    def declare_ordered(self, spec: OrderedSpec) -> None:
        known = self.world.ordered.get(spec.name)
        if known is None:
            self.world.ordered[spec.name] = _OrderedTopic(spec)
        elif known.spec != spec:
            raise ConfigMismatch(_mismatch("ordered topic", spec.name, known.spec, spec))

    def declare_lite(self, spec: LiteSpec) -> None:
        known = self.world.parents.get(spec.parent)
        if known is None:
            self.world.parents[spec.parent] = _Parent(spec)
        elif known.spec != spec:
            raise ConfigMismatch(_mismatch("lite-topic parent", spec.parent, known.spec, spec))

    # -- ordered topics -------------------------------------------------------------------------

    async def send(
        self,
        spec: OrderedSpec,
        partition: int,
        key: str,
        payload: bytes,
        headers: dict[str, str],
        dedupe_id: str | None,
        expires_at: float | None,
    ) -> Receipt:
        topic = self.world.ordered[spec.name]
        now = self.world.clock.time()
        if dedupe_id is not None:
            order = topic.dedupe_order
            while order and order[0][0] <= now:
                _, old = order.popleft()
                known = topic.dedupe.get(old)
                if known is not None and known[1] <= now:
                    del topic.dedupe[old]
            known = topic.dedupe.get(dedupe_id)
            if known is not None:
                return Receipt(known[0].partition, known[0].offset, duplicate=True)
        log = topic.logs[partition]
        offset = log.next
        log.append((key, payload, headers or None, now, expires_at))
        log.trim(spec.max_len)
        receipt = Receipt(partition, offset)
        if dedupe_id is not None:
            expires = now + spec.dedupe_window
            topic.dedupe[dedupe_id] = (receipt, expires)
            topic.dedupe_order.append((expires, dedupe_id))
        for group in topic.groups.values():
            gp = group.parts[partition]
            if gp.owner is not None and not gp.revoking:
                gp.owner.listener.wake()
        return receipt

    async def join_group(
        self,
        spec: OrderedSpec,
        group: str,
        name: str,
        max_deliveries: int,
        listener: OrderedListener,
    ) -> _GroupMember:
        topic = self.world.ordered[spec.name]
        state = topic.groups.get(group)
        if state is None:
            state = topic.groups[group] = _Group(topic, group)
        member = _GroupMember(state, name, max_deliveries, listener)
        state.members.append(member)
        state.rebalance()
        return member

    async def dead_letters(self, spec: OrderedSpec, group: str) -> list[DeadLetter]:
        state = self.world.ordered[spec.name].groups.get(group)
        return list(state.dead) if state is not None else []

    async def ordered_stats(self, spec: OrderedSpec) -> OrderedTopicStats:
        topic = self.world.ordered[spec.name]
        partitions = []
        for p, log in enumerate(topic.logs):
            last = log.next - 1
            groups = {}
            for name, group in topic.groups.items():
                gp = group.parts[p]
                committed = max(gp.committed(), log.first - 1)
                groups[name] = GroupLag(
                    group=name,
                    committed=committed,
                    lag=last - committed,
                    pending=len(gp.pending),
                    owner=gp.owner.name if gp.owner is not None else None,
                    expired=gp.expired,
                )
            partitions.append(PartitionStats(p, len(log), log.first, last, groups))
        return OrderedTopicStats(spec.name, tuple(partitions))

    # -- lite topics ----------------------------------------------------------------------------

    async def publish(
        self,
        spec: LiteSpec,
        lite_topic: str,
        payload: bytes,
        headers: dict[str, str],
        expires_at: float | None,
    ) -> int:
        world = self.world
        parent = world.parents[spec.parent]
        now = world.clock.time()
        topics = parent.topics
        topic = topics.get(lite_topic)
        if topic is not None and topic.last_publish + spec.ttl <= now:
            parent.expire_due(now)
            topic = None
        if topic is None:
            topic = _LiteTopic(lite_topic, _new_epoch(), now)
            topics[lite_topic] = topic
            if len(topics) == 1:
                world.arm(now + spec.ttl)
        else:
            topics.move_to_end(lite_topic)
            topic.last_publish = now
        log = topic.log
        items = log.items
        offset = log.first + len(items) - log.start
        stored = headers or None
        items.append((offset, payload, stored, now, expires_at))
        if offset - log.first >= spec.max_len:
            log.trim(spec.max_len)
        owners = parent.owners.get(lite_topic)
        if owners:
            for owner in owners.values():
                # Handed over as it is published when the owner reads right here; else it is
                # fetched from the log.
                listener = owner.member.listener
                if not listener.on_records(
                    lite_topic,
                    owner.generation,
                    topic.epoch,
                    offset,
                    ((payload, stored, now, expires_at),),
                ):
                    listener.on_data(lite_topic)
        return offset

    async def attach(
        self, spec: LiteSpec, group: str, name: str, listener: LiteListener
    ) -> _LiteMember:
        return _LiteMember(self.world, self.world.parents[spec.parent], group, name, listener)

    async def lite_stats(self, spec: LiteSpec, top: int) -> LiteTopicsStats:
        parent = self.world.parents[spec.parent]
        now = self.world.clock.time()
        parent.expire_due(now)
        backlog = 0
        lags: list[LiteTopicLag] = []
        for name, topic in parent.topics.items():
            owners = parent.owners.get(name, {})
            for group in topic.groups.keys() | owners.keys():
                cursor = topic.groups.get(group)
                base = topic.base(cursor)
                # An explicit start past the end leaves the base above the last offset.
                behind = max(0, topic.log.next - 1 - base)
                oldest = base + 1
                if cursor is not None and cursor.acked:
                    acked = cursor.acked
                    behind -= sum(1 for o in acked if o > base)
                    while oldest in acked:
                        oldest += 1
                backlog += behind
                owner = owners.get(group)
                age = now - topic.log.get(oldest)[3] if behind else None
                lags.append(
                    LiteTopicLag(
                        lite_topic=name,
                        group=group,
                        backlog=behind,
                        owner=owner.member.name if owner is not None else None,
                        oldest_unacked_age=age,
                    )
                )
        subscriptions = sum(len(groups) for groups in parent.owners.values())
        ranked = heapq.nlargest(top, lags, key=lambda lag: lag.backlog) if top > 0 else []
        return LiteTopicsStats(
            len(parent.topics), subscriptions, backlog, ranked, dict(parent.expired)
        )


def _mismatch(what: str, name: str, known: Any, asked: Any) -> str:
    diffs = ", ".join(
        f"{field}={getattr(known, field)!r} (asked {getattr(asked, field)!r})"
        for field in _fields(known)
        if getattr(known, field) != getattr(asked, field)
    )
    return (
        f"{what} {name!r} is already declared with {diffs}; declare it with the same settings "
        "everywhere, or use another name"
    )


def _fields(spec: Any) -> Iterator[str]:
    yield from (field.name for field in attrs.fields(type(spec)))
