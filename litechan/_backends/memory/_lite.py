"""Lite topics in memory: per-session logs, their owners per group, and TTL expiry."""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict

from ..._clock import Clock
from ..._log import logger
from ..._types import EndReason
from ..base import ALWAYS_FRESH, LiteBatch, LiteListener, LiteRecord, LiteSpec, Start, Subscription
from ._log import Log

__all__ = ["MemoryLiteMember", "MemoryLiteTopic", "MemoryParent", "new_epoch"]


def new_epoch() -> str:
    """The epoch of a new incarnation of a lite topic (unpredictable: a recreated topic never
    reuses one)."""
    return secrets.token_hex(8)


class _GroupCursor:
    """A group's committed position on one incarnation of a lite topic.

    ``committed`` is ``None`` until the group acks or positions itself; ``acked`` holds acks
    above the committed offset that arrived out of order.
    """

    __slots__ = ("acked", "committed")

    def __init__(self, committed: int | None = None) -> None:
        self.committed = committed
        self.acked: set[int] = set()


class MemoryLiteTopic:
    __slots__ = ("epoch", "groups", "last_publish", "log", "name")

    def __init__(self, name: str, epoch: str, now: float) -> None:
        self.name = name
        self.epoch = epoch
        self.log: Log[LiteRecord] = Log()
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

    def __init__(self, member: MemoryLiteMember, generation: int) -> None:
        self.member = member
        self.generation = generation


class MemoryParent:
    __slots__ = ("expired", "generations", "owners", "spec", "topics")

    def __init__(self, spec: LiteSpec) -> None:
        self.spec = spec
        self.expired: dict[str, int] = {}  # group -> records settled unread, past deadline
        # Least recently published first: the next topic to expire is always the first one.
        self.topics: OrderedDict[str, MemoryLiteTopic] = OrderedDict()
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


class MemoryLiteMember:
    """A subscriber's attachment to a parent (implements ``LiteMember``)."""

    __slots__ = ("clock", "group", "listener", "name", "owned", "parent")

    #: A takeover ends the old owner's channel at once, in this process.
    fence = ALWAYS_FRESH

    def __init__(
        self, clock: Clock, parent: MemoryParent, group: str, name: str, listener: LiteListener
    ) -> None:
        self.clock = clock
        self.parent = parent
        self.group = group
        self.name = name
        self.listener = listener
        self.owned: dict[str, int] = {}  # lite topic -> generation

    async def subscribe(self, lite_topic: str, start: Start) -> Subscription:
        parent = self.parent
        parent.expire_due(self.clock.time())
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
        parent.expire_due(self.clock.time())
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
        settled = False
        if offset == committed + 1:
            committed += 1
            settled = True
        elif offset > committed and offset not in acked:
            acked.add(offset)
            settled = True
        while acked and committed + 1 in acked:
            committed += 1
            acked.remove(committed)
        if acked and min(acked) <= committed:
            cursor.acked = {o for o in acked if o > committed}
        cursor.committed = committed
        return settled

    async def aclose(self) -> None:
        for lite_topic in list(self.owned):
            self._drop(lite_topic)


# ---------------------------------------------------------------------------------------------
