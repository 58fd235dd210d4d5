"""Values handed to application code: receipts, messages, end reasons, dead letters and stats.

Messages carry a private reference to the consumer or subscriber that delivered them, so that
``await msg.ack()`` reaches the right owner and can be fenced by its ownership generation.
"""

from __future__ import annotations

import enum
import sys
from typing import TYPE_CHECKING, Protocol, TypeAlias, final

import attrs

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
elif TYPE_CHECKING:  # what send() and publish() take: any object with the buffer protocol
    from typing_extensions import Buffer  # a stub every type checker has
else:
    Buffer: TypeAlias = bytes | bytearray | memoryview  # a name for 3.11 at run time

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = [
    "Buffer",
    "Entry",
    "DeadLetter",
    "EndReason",
    "GroupLag",
    "LiteMessage",
    "LiteTopicLag",
    "LiteTopicsStats",
    "Message",
    "OrderedTopicStats",
    "PartitionStats",
    "Receipt",
]


@final
class EndReason(enum.Enum):
    """Why a lite-topic channel ended.

    .. versionadded:: 0.1.0
    """

    #: The subscriber unsubscribed (or left the channel's ``async with`` block).
    UNSUBSCRIBED = "unsubscribed"
    #: Another consumer of the group subscribed to the lite topic and took it over (G7).
    REVOKED = "revoked"
    #: The lite topic had no publish for ``ttl`` seconds and was deleted (G8).
    EXPIRED = "expired"
    #: The subscriber or the broker was closed.
    CLOSED = "closed"


@final
@attrs.frozen
class Receipt:
    """Where :meth:`OrderedTopic.send` stored a message.

    ``duplicate`` is true when a message with the same ``dedupe_id`` was already stored within
    the dedupe window: the receipt is that message's, and nothing new was written (G11).

    .. versionadded:: 0.1.0
    """

    partition: int
    offset: int
    duplicate: bool = False


@attrs.define(slots=True)
class Entry:
    """One ordered-topic message handed to a group member.

    ``generation`` is the member's ownership generation of the partition when it was handed out;
    the backend ignores settlements whose generation is no longer current (fencing, G4).

    .. versionadded:: 0.2.0
    """

    partition: int
    offset: int
    key: str
    payload: bytes
    headers: dict[str, str]
    published_at: float
    delivery_count: int
    generation: int
    #: When the message stops being worth delivering (UNIX seconds, the sender's broker clock).
    expires_at: float | None = None


class _Settles(Protocol):
    """Where an ordered :class:`Message` settles: the consumer that delivered it."""

    async def _ack(self, message: Message) -> None: ...

    async def _nack(self, message: Message, delay: float) -> None: ...

    async def _reject(self, message: Message, reason: str) -> None: ...


class _Acks(Protocol):
    """Where a :class:`LiteMessage` is acked: the subscription that delivered it."""

    def ack(self, message: LiteMessage) -> Awaitable[None] | None: ...


@final
class Message:
    """One message of an ordered topic, delivered to a consumer.

    Settle it exactly once with :meth:`ack`, :meth:`nack` or :meth:`reject`; until then the next
    message of the same key is held back (G1). Settling a message whose partition has moved to
    another consumer is a no-op: the old owner cannot move the group's offset (G4). Made only by
    consumers; treat ``headers`` as read-only.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_consumer", "_entry", "_settled")

    def __init__(self, entry: Entry, consumer: _Settles) -> None:
        self._entry = entry
        self._consumer = consumer
        self._settled = False

    @property
    def key(self) -> str:
        """The ordering key the message was sent with (the session id)."""
        return self._entry.key

    @property
    def payload(self) -> bytes:
        """The message body."""
        return self._entry.payload

    @property
    def headers(self) -> dict[str, str]:
        """The headers the message was sent with."""
        return self._entry.headers

    @property
    def partition(self) -> int:
        """The partition the message is stored in."""
        return self._entry.partition

    @property
    def offset(self) -> int:
        """The message's offset in its partition (from 1, +1 per message)."""
        return self._entry.offset

    @property
    def delivery_count(self) -> int:
        """How many times the message has been delivered to the group, this time included."""
        return self._entry.delivery_count

    @property
    def published_at(self) -> float:
        """When the message was sent, in UNIX seconds (the broker's clock)."""
        return self._entry.published_at

    @property
    def expires_at(self) -> float | None:
        """The deadline the message was sent with (``published_at + expires_in``), or ``None``.

        .. versionadded:: 0.2.0
        """
        return self._entry.expires_at

    async def ack(self) -> None:
        """Mark the message processed: it is never delivered to this group again."""
        await self._consumer._ack(self)

    async def nack(self, delay: float = 0.0) -> None:
        """Hand the message back: it is delivered again after *delay* seconds, before any later
        message of its key. After the consumer's ``max_deliveries`` it is dead-lettered instead."""
        await self._consumer._nack(self, delay)

    async def reject(self, reason: str = "") -> None:
        """Dead-letter the message now (see :meth:`OrderedTopic.dead_letters`); the key moves on.

        *reason* is kept with the dead letter, cut to 1000 characters.

        :raises InvalidArgument: *reason* is not a str UTF-8 can encode (nothing is settled).
        """
        await self._consumer._reject(self, reason)

    def __repr__(self) -> str:
        e = self._entry
        return (
            f"Message(key={e.key!r}, partition={e.partition}, offset={e.offset}, "
            f"delivery_count={e.delivery_count}, payload={e.payload[:32]!r})"
        )


@final
@attrs.define(eq=False)
class LiteMessage:
    """One message of a lite topic, delivered to the subscriber that owns the topic.

    ``gap_before`` is the number of messages trimmed by ``max_len`` before this subscriber could
    read them (G9); it is 0 unless something was lost, and then a warning is logged too.
    ``expires_at`` is the deadline it was published with (``published_at + expires_in``), or
    ``None`` (new in 0.2.0).

    .. versionadded:: 0.1.0
    """

    lite_topic: str
    offset: int
    epoch: str
    payload: bytes
    headers: dict[str, str]
    published_at: float
    gap_before: int
    expires_at: float | None
    _sub: _Acks = attrs.field(repr=False, alias="sub")

    async def ack(self) -> None:
        """Commit the message for the group (fenced: a no-op once ownership or epoch changed)."""
        waiter = self._sub.ack(self)
        if waiter is not None:
            await waiter


@final
@attrs.frozen
class DeadLetter:
    """A message that was rejected, or nacked more than ``max_deliveries`` times, or unreadable.

    .. versionadded:: 0.1.0
    """

    key: str
    payload: bytes
    headers: dict[str, str]
    partition: int
    offset: int
    delivery_count: int
    reason: str


@final
@attrs.frozen
class GroupLag:
    """One consumer group's position in one partition.

    ``committed`` is the highest offset below which everything is settled; ``lag`` is
    ``last_offset - committed``; ``pending`` counts messages delivered and not yet settled;
    ``expired`` counts the messages the group settled unread because their ``expires_in`` had
    passed (new in 0.2.0).

    .. versionadded:: 0.1.0
    """

    group: str
    committed: int
    lag: int
    pending: int
    owner: str | None
    expired: int = 0


@final
@attrs.frozen
class PartitionStats:
    """One partition of an ordered topic: retained messages and each group's lag.

    .. versionadded:: 0.1.0
    """

    partition: int
    length: int
    first_offset: int
    last_offset: int
    groups: dict[str, GroupLag]


@final
@attrs.frozen
class OrderedTopicStats:
    """Per-partition view of an ordered topic, returned by :meth:`OrderedTopic.stats`.

    .. versionadded:: 0.1.0
    """

    topic: str
    partitions: tuple[PartitionStats, ...]

    @property
    def length(self) -> int:
        """Messages retained over all partitions."""
        return sum(p.length for p in self.partitions)

    def lag(self, group: str) -> int:
        """Messages of *group* not yet settled, over all partitions."""
        return sum(p.groups[group].lag for p in self.partitions if group in p.groups)

    def expired(self, group: str) -> int:
        """Messages *group* settled unread because their deadline had passed, over all
        partitions.

        .. versionadded:: 0.2.0
        """
        return sum(p.groups[group].expired for p in self.partitions if group in p.groups)


@final
@attrs.frozen
class LiteTopicLag:
    """The backlog of one group on one lite topic, and who owns it.

    ``oldest_unacked_age`` is the age in seconds of the oldest message not yet acked by the group
    (``None`` when it has none).

    .. versionadded:: 0.1.0
    """

    lite_topic: str
    group: str
    backlog: int
    owner: str | None
    oldest_unacked_age: float | None


@final
@attrs.frozen
class LiteTopicsStats:
    """Backlog of a lite-topic parent, returned by :meth:`LiteTopics.stats`.

    ``topics`` counts live lite topics, ``subscriptions`` the (lite topic, group) pairs that have
    an owner, ``backlog`` the un-acked messages over every (lite topic, group) pair, and ``top``
    the most congested pairs, largest backlog first. ``expired`` counts, per group, the
    messages settled unread because their ``expires_in`` had passed, since the parent was
    first used (it outlives the lite topics; new in 0.2.0).

    .. versionadded:: 0.1.0
    """

    topics: int
    subscriptions: int
    backlog: int
    top: list[LiteTopicLag]
    expired: dict[str, int] = attrs.field(factory=dict)
