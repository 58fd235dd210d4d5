"""The backend interface (public as :mod:`litechan.backends`): what a storage engine does.

The core (``litechan/_broker.py``, ``_ordered.py``, ``_lite.py``) owns validation, handles, the
key-ordered dispatch of ordered topics and the per-topic buffers of lite-topic subscribers. A
backend owns storage, ownership (who holds a partition or a lite topic, and the generation that
fences stale acks), offsets, TTL and notification. The split is drawn so that every per-message
decision that is the same on every backend lives once, in the core.

Notification is push, data is pull: a backend calls a listener's ``wake``/``on_data`` when
something may be readable (cheap, may be spurious), and the core pulls batches with ``fetch``.
That keeps a consumer's cost per message O(1) whatever number of lite topics it owns, and lets
a lagging subscriber read straight from retained storage (so trimming is seen as a gap, G9).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, NamedTuple, Protocol

import anyio.abc
import attrs

from .._clock import Clock
from .._types import DeadLetter, EndReason, Entry, LiteTopicsStats, OrderedTopicStats, Receipt

__all__ = [
    "ALWAYS_FRESH",
    "Backend",
    "BackendOptions",
    "Entry",
    "Fence",
    "GroupMember",
    "LiteBatch",
    "LiteBody",
    "LiteListener",
    "LiteMember",
    "LiteRecord",
    "LiteSpec",
    "OrderedBatch",
    "OrderedListener",
    "OrderedSpec",
    "Start",
    "Subscription",
]

#: Where a lite-topic subscription starts: after the group's committed offset, at the earliest
#: retained message, after the last message, or at an explicit offset.
Start = Literal["committed", "earliest", "latest"] | int

#: One stored lite-topic message: ``(offset, payload, headers, published_at, expires_at)``,
#: headers ``None`` when empty, ``expires_at`` ``None`` without a deadline. A tuple of immutable
#: values because the memory backend keeps millions of them: the garbage collector stops
#: tracking such tuples, so retained messages cost it nothing.
LiteRecord = tuple[int, bytes, dict[str, str] | None, float, float | None]

#: A lite-topic message as a backend pushes it to a subscriber (its offset given apart):
#: ``(payload, headers, published_at, expires_at)``.
LiteBody = tuple[bytes, dict[str, str] | None, float, float | None]


@attrs.frozen
class BackendOptions:
    """Options of :func:`litechan.connect` that every backend receives.

    .. versionadded:: 0.2.0
    """

    clock: Clock
    max_payload: int


@attrs.frozen
class OrderedSpec:
    """The declared settings of an ordered topic (compared on re-declaration).

    .. versionadded:: 0.2.0
    """

    name: str
    partitions: int
    max_len: int
    dedupe_window: float


@attrs.frozen
class LiteSpec:
    """The declared settings of a lite-topic parent (compared on re-declaration).

    .. versionadded:: 0.2.0
    """

    parent: str
    ttl: float
    max_len: int


@attrs.frozen
class OrderedBatch:
    """What :meth:`GroupMember.fetch` returns: entries in partition order, partitions to give up.

    A partition in ``revoked`` must be released with :meth:`GroupMember.release` once the
    messages of it that are in flight have been settled (G1 across a rebalance).

    .. versionadded:: 0.2.0
    """

    entries: Sequence[Entry]
    revoked: Sequence[int]


@attrs.frozen
class Subscription:
    """The result of :meth:`LiteMember.subscribe`: the ownership token and where reading starts.

    ``backlog`` is False only when the member knows that nothing is there to read from
    ``next_offset`` on yet (and holds nothing of it): the subscriber then waits for the member's
    news instead of fetching once, which matters to a gateway that subscribes to thousands of
    new sessions at once.

    .. versionadded:: 0.2.0
    """

    generation: int
    next_offset: int
    backlog: bool = True


class LiteBatch(NamedTuple):
    """What :meth:`LiteMember.fetch` returns (a NamedTuple: one is made per fetch, and with
    round-robin traffic over many sessions that is one per message).

    ``records`` skips messages the group already acked (an ack above the committed offset,
    made by a previous owner), so they are not delivered twice (G3). ``next_offset`` is where
    the next fetch starts and ``more`` whether records may be waiting there. ``gap`` counts
    messages trimmed before they could be read (G9). ``ended`` is set when the member no longer
    owns the lite topic (the listener is told too).

    .. versionadded:: 0.2.0
    """

    epoch: str
    records: Sequence[LiteRecord]
    next_offset: int
    more: bool = False
    gap: int = 0
    ended: EndReason | None = None


@attrs.frozen
class OrderedListener:
    """How a backend tells a consumer that its partitions changed or have new entries.

    ``wake()`` may be called spuriously; it never suspends.

    .. versionadded:: 0.2.0
    """

    wake: Callable[[], None]


@attrs.frozen
class LiteListener:
    """How a backend tells a subscriber about its lite topics (never suspends).

    ``on_data(lite_topic)``: records past the ones fetched so far may exist (may be spurious).
    ``on_end(lite_topic, reason)``: the member no longer owns it (``REVOKED`` or ``EXPIRED``).
    ``on_records(lite_topic, generation, epoch, first, bodies)``: the records ``first``,
    ``first + 1``... of a topic the member owns, offered as they are published. The subscriber
    takes them (True) only if they are exactly what it would fetch next and it has room;
    otherwise (False) nothing changed, and the backend keeps them to be fetched (and calls
    ``on_data``). Pushing is optional: a backend may always rely on ``on_data`` and fetch.

    .. versionadded:: 0.2.0
    """

    on_data: Callable[[str], None]
    on_end: Callable[[str, EndReason], None]
    on_records: Callable[[str, int, str, int, Sequence[LiteBody]], bool] = (
        lambda *_: False  # a listener that takes nothing pushed
    )


class Fence(Protocol):
    """How long a subscriber may hand out lite-topic messages it already holds without proving
    that it still owns their topics.

    A process that stalled (paused, swapped out, its loop blocked) may have been taken over
    meanwhile without having read the news yet. The core hands out a held message only while
    ``until`` is ahead of ``time.monotonic()``, and otherwise awaits :meth:`confirm` first (and
    then looks again whether the topic is still its own).

    .. versionadded:: 0.2.0
    """

    #: ``time.monotonic()`` until which held messages may be handed out.
    until: float

    async def confirm(self) -> None:
        """Return once every ownership change made before the call is known here."""


class _AlwaysFresh:
    """The fence of a backend whose owners cannot miss a takeover (one process)."""

    until = math.inf

    async def confirm(self) -> None:
        return None


#: The :class:`Fence` of in-process backends.
ALWAYS_FRESH: Final[Fence] = _AlwaysFresh()


class GroupMember(Protocol):
    """One consumer's membership of a consumer group of an ordered topic.

    .. versionadded:: 0.2.0
    """

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this member owns now."""
        ...

    #: ``time.monotonic()`` until which every owned partition's lease is proven (``math.inf``
    #: for a backend without leases). At or past it the core calls :meth:`lapse` before it
    #: hands anything out.
    valid_until: float

    def lapse(self, now: float) -> Sequence[int]:
        """Give up, here only, the partitions whose lease cannot be proven at *now* (a
        ``time.monotonic()``); return them. The core drops their held messages without handing
        them out: another consumer may own them already (G1, G4). The member may claim them
        again later, as any partition."""
        ...

    async def fetch(self, max_entries: int) -> OrderedBatch:
        """Hand out up to *max_entries* entries of owned partitions, without waiting.

        Redeliveries of a partition (un-acked entries of a previous owner) come first, in offset
        order, then new entries.
        """
        ...

    async def ack(self, entry: Entry) -> None:
        """Settle *entry*; a no-op when its generation is stale."""

    async def nack(self, entry: Entry) -> None:
        """Count one more delivery of *entry*, which the member will redeliver itself."""

    async def reject(self, entry: Entry, reason: str) -> None:
        """Move *entry* to the group's dead letters and settle it."""

    async def expire(self, entry: Entry) -> None:
        """Settle *entry* unread, its deadline passed, and count it in the group's ``expired``;
        a no-op when its generation is stale."""

    async def release(self, partition: int, undelivered: Sequence[Entry]) -> None:
        """Give up *partition*; *undelivered* were fetched but never reached the application."""

    async def aclose(self, undelivered: Sequence[Entry]) -> None:
        """Leave the group; un-acked entries are redelivered to the next owners (G3)."""


class LiteMember(Protocol):
    """One subscriber's attachment to a lite-topic parent, for one group.

    .. versionadded:: 0.2.0
    """

    #: When held messages may be handed out without proving ownership first.
    fence: Fence

    async def subscribe(self, lite_topic: str, start: Start) -> Subscription:
        """Become the group's owner of *lite_topic*, revoking any previous owner (G7)."""
        ...

    async def unsubscribe(self, lite_topic: str) -> None:
        """Stop owning *lite_topic*; the group's committed offset stays."""

    async def fetch(
        self, lite_topic: str, generation: int, from_offset: int, max_records: int
    ) -> LiteBatch:
        """Read up to *max_records* records from *from_offset* on, without waiting."""
        ...

    def ack(
        self, lite_topic: str, epoch: str, offset: int, generation: int
    ) -> Awaitable[None] | None:
        """Settle one record for the group; a no-op when epoch or generation is stale (G4).

        Returns what to await before the ack counts as done, or None when queueing it was all
        (a coroutine function does too: its coroutine is awaited)."""

    def expire(
        self, lite_topic: str, epoch: str, offset: int, generation: int
    ) -> Awaitable[None] | None:
        """Settle one record unread, its deadline passed, and count it in the group's
        ``expired``; fenced and awaited as :meth:`ack`."""

    async def aclose(self) -> None:
        """Give up every lite topic this member owns."""


class Backend(Protocol):
    """A storage engine reached through one :class:`litechan.Broker`.

    .. versionadded:: 0.2.0
    """

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect, and start background work (timers, readers) in the broker's task group."""

    def closing(self) -> None:
        """The broker starts closing: what its consumers and subscribers still have to tell the
        server must not hold the close up for long (the backend documents its bound)."""

    async def aclose(self) -> None:
        """Disconnect; the broker cancels its task group afterwards."""

    def declare_ordered(self, spec: OrderedSpec) -> None:
        """Record *spec*, or raise ``ConfigMismatch`` if the name is known with other settings."""

    def declare_lite(self, spec: LiteSpec) -> None:
        """Record *spec*, or raise ``ConfigMismatch`` if the parent is known with other settings."""

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
        """Append one message to *partition* (or return the receipt of its duplicate); keep
        *expires_at* with it, to be handed back in its :class:`Entry`."""
        ...

    async def join_group(
        self,
        spec: OrderedSpec,
        group: str,
        name: str,
        max_deliveries: int,
        listener: OrderedListener,
    ) -> GroupMember:
        """Join a consumer group; partitions are (re)balanced over its members."""
        ...

    async def dead_letters(self, spec: OrderedSpec, group: str) -> list[DeadLetter]:
        """Return the group's dead letters, oldest first."""
        ...

    async def ordered_stats(self, spec: OrderedSpec) -> OrderedTopicStats:
        """Return per-partition lengths and per-group lag and owners."""
        ...

    def publish(
        self,
        spec: LiteSpec,
        lite_topic: str,
        payload: bytes,
        headers: dict[str, str],
        expires_at: float | None,
    ) -> Awaitable[int]:
        """Append to *lite_topic*, creating it if needed (G5); refresh its TTL; the awaitable
        gives its offset. *expires_at* is kept with the record. A coroutine function does; so
        does a plain function returning a future (one coroutine less per message, on a hot
        path)."""
        ...

    async def attach(
        self, spec: LiteSpec, group: str, name: str, listener: LiteListener
    ) -> LiteMember:
        """Attach a subscriber to a parent for a group."""
        ...

    async def lite_stats(self, spec: LiteSpec, top: int) -> LiteTopicsStats:
        """Return topic and subscription counts, total backlog and the *top* congested pairs."""
        ...
