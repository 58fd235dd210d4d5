"""Ordered topics in memory: partitions, consumer groups and their members."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ..._log import logger
from ..._types import DeadLetter, Receipt
from ..base import Entry, OrderedBatch, OrderedListener, OrderedSpec
from ._log import Log

__all__ = [
    "MAX_DEAD_LETTERS",
    "MemoryGroup",
    "MemoryGroupMember",
    "MemoryOrderedTopic",
    "OrderedRecord",
]

#: Dead letters kept per group (oldest dropped first, with a warning).
MAX_DEAD_LETTERS = 10_000

#: One stored ordered-topic message: ``(key, payload, headers, published_at, expires_at)``,
#: headers ``None`` when empty so that the garbage collector can stop tracking the tuple (see
#: ``LiteRecord``).
OrderedRecord = tuple[str, bytes, dict[str, str] | None, float, float | None]


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
        self.owner: MemoryGroupMember | None = None
        self.generation = 0
        self.revoking = False

    def committed(self) -> int:
        return min(self.pending) - 1 if self.pending else self.cursor - 1


class MemoryGroup:
    __slots__ = ("dead", "members", "name", "parts", "topic")

    def __init__(self, topic: MemoryOrderedTopic, name: str) -> None:
        self.topic = topic
        self.name = name
        self.members: list[MemoryGroupMember] = []
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

    def _assign(self, p: int, gp: _GroupPartition, member: MemoryGroupMember) -> None:
        gp.owner = member
        gp.generation += 1
        gp.revoking = False
        gp.redeliver = deque(sorted(gp.pending))
        member.owned.add(p)
        member.listener.wake()

    def give_up(self, member: MemoryGroupMember, p: int, undelivered: Sequence[Entry]) -> None:
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


class MemoryOrderedTopic:
    __slots__ = ("dedupe", "dedupe_order", "groups", "logs", "spec")

    def __init__(self, spec: OrderedSpec) -> None:
        self.spec = spec
        self.logs: list[Log[OrderedRecord]] = [Log() for _ in range(spec.partitions)]
        self.groups: dict[str, MemoryGroup] = {}
        self.dedupe: dict[str, tuple[Receipt, float]] = {}
        self.dedupe_order: deque[tuple[float, str]] = deque()


class MemoryGroupMember:
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
        group: MemoryGroup,
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
        log: Log[OrderedRecord],
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
