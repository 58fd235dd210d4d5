"""Reply side: lite topics, one small log per session, owned by one subscriber per group.

A :class:`Subscriber` keeps one :class:`_TopicSub` per lite topic it owns: the ownership
generation (which fences its acks, G4), the next offset to read and a buffer. The backend only
*notifies* (``on_data``) and the subscriber pulls batches when a reader needs them, so an idle
lite topic costs nothing and a busy one is read in batches. Per-topic channels and the merged
iteration read the same buffers, so each message is yielded once, by whichever view reads it.

The merged view walks a FIFO of topics that have something to read; a topic enters it when
notified and leaves it when drained, so the work per message is O(1) whatever number of lite
topics the subscriber owns.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Final, Self, final

import anyio
import anyio.abc
import anyio.lowlevel

from ._backends.base import (
    ALWAYS_FRESH,
    Fence,
    LiteBody,
    LiteListener,
    LiteMember,
    LiteSpec,
    Start,
)
from ._errors import InvalidArgument, ResourceClosed
from ._log import logger
from ._names import check_headers, check_int, check_name, check_payload
from ._pacing import Pacer
from ._session import Session
from ._types import Buffer, EndReason, LiteMessage, LiteTopicsStats

__all__ = ["Channel", "LiteTopics", "Subscriber"]


#: Records pulled from the backend per fetch of one lite topic.
_FETCH: Final = 256
_STARTS: Final = frozenset({"committed", "earliest", "latest"})


@final
class LiteTopics:
    """Handle of a lite-topic parent; made by :meth:`Broker.lite_topics`.

    .. versionadded:: 0.1.0
    """

    def __init__(self, session: Session, spec: LiteSpec) -> None:
        self._session = session
        self._spec = spec

    def __repr__(self) -> str:
        spec = self._spec
        return f"<litechan.LiteTopics {spec.parent!r} ttl={spec.ttl} max_len={spec.max_len}>"

    @property
    def parent(self) -> str:
        """The parent's name."""
        return self._spec.parent

    @property
    def ttl(self) -> float:
        """Seconds without a publish after which a lite topic is deleted."""
        return self._spec.ttl

    @property
    def max_len(self) -> int:
        """Messages retained per lite topic."""
        return self._spec.max_len

    async def publish(
        self,
        lite_topic: str,
        payload: Buffer,
        *,
        headers: Mapping[str, str] | None = None,
        expires_in: float | None = None,
    ) -> int:
        """Append *payload* to *lite_topic*, creating it if needed (G5); return its offset.

        Every publish restarts the lite topic's TTL. With *expires_in*, a message that a
        group's subscriber has not handed out when that many seconds have passed since the
        publish (on the broker's clock) is never handed out: it is acked as expired
        (``stats()``, event ``litechan.lite.message_expired``). *expires_in* is new in 0.2.0.

        :raises InvalidName: *lite_topic* breaks the naming rules.
        :raises PayloadTooLarge: *payload* exceeds the broker's ``max_payload``, or *headers*
            hold more than 64 KiB.
        :raises InvalidPayload: *payload* is not bytes or *headers* not ``dict[str, str]`` of
            strings UTF-8 can encode.
        :raises InvalidArgument: *expires_in* is not ``None`` or a finite number of seconds
            > 0.
        :raises ResourceClosed: the broker is closed.
        """
        backend = self._session.backend
        check_name(lite_topic, "lite topic name")
        body = check_payload(payload, self._session.options.max_payload)
        fields = check_headers(headers)
        expires_at = None if expires_in is None else self._session.deadline(expires_in)
        if self._session.pacer.due():
            await anyio.lowlevel.checkpoint()  # before the write: a cancel loses nothing
        return await backend.publish(self._spec, lite_topic, body, fields, expires_at)

    def subscriber(self, *, group: str, name: str) -> Subscriber:
        """Return a subscriber named *name* of *group*; open it with ``async with``.

        .. versionadded:: 0.1.0
        """
        check_name(group, "group name")
        check_name(name, "subscriber name")
        return Subscriber(self, group, name)

    async def stats(self, top: int = 10) -> LiteTopicsStats:
        """Live topics, subscriptions, total backlog and the *top* most congested lite topics."""
        check_int(top, "top", 0)
        return await self._session.backend.lite_stats(self._spec, top)


class _TopicSub:
    """A subscriber's state for one owned lite topic (one per subscription, never reused)."""

    __slots__ = (
        "buffer",
        "channel",
        "end_reason",
        "event",
        "fetching",
        "generation",
        "in_ready",
        "lite_topic",
        "next_offset",
        "notified",
        "pending_gap",
        "sub",
    )

    def __init__(self, sub: Subscriber, lite_topic: str, generation: int, next_offset: int) -> None:
        self.sub = sub
        self.lite_topic = lite_topic
        self.generation = generation
        self.next_offset = next_offset
        self.buffer: deque[LiteMessage] = deque()
        # True when the backend may hold records past next_offset; starts True so that what
        # was retained before the subscribe is read.
        self.notified = True
        self.fetching = False  # a fetch is on its way: records pushed meanwhile are refused
        self.in_ready = False
        self.end_reason: EndReason | None = None
        self.event: anyio.Event | None = None
        self.pending_gap = 0  # missed messages not yet reported on a delivered message
        self.channel = Channel(self)

    def ack(self, message: LiteMessage) -> Awaitable[None] | None:
        """Queue the ack; return what to await before it counts (None: nothing)."""
        member = self.sub._member
        if member is None:
            return None
        return member.ack(self.lite_topic, message.epoch, message.offset, self.generation)

    def stale(self, message: LiteMessage) -> bool:
        """Whether *message*, taken from the buffer, is past its deadline."""
        expires_at = message.expires_at
        return expires_at is not None and expires_at <= self.sub._session.clock.time()

    async def expire(self, message: LiteMessage) -> None:
        """Settle *message*, taken from the buffer but never handed out: it is too late."""
        sub = self.sub
        member = sub._member
        expires_at = message.expires_at or 0.0
        logger.info(
            "litechan.lite.message_expired",
            parent=sub._topics.parent,
            lite_topic=self.lite_topic,
            group=sub._group,
            subscriber=sub._name,
            offset=message.offset,
            late=round(sub._session.clock.time() - expires_at, 3),
        )
        if member is not None:
            waiter = member.expire(self.lite_topic, message.epoch, message.offset, self.generation)
            if waiter is not None:
                with anyio.CancelScope(shield=True):  # taken from the buffer: see it through
                    await waiter

    def wake(self) -> None:
        event, self.event = self.event, None
        if event is not None:
            event.set()


@final
class Channel:
    """The messages of one lite topic for the subscriber that owns it, in offset order.

    Made by :meth:`Subscriber.subscribe`. Iteration ends when the channel ends;
    :attr:`end_reason` then says why. Leaving ``async with channel:`` unsubscribes.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_pacer", "_ts")

    def __init__(self, ts: _TopicSub) -> None:
        self._ts = ts
        self._pacer: Pacer | None = None  # made when the channel is iterated on its own

    def __repr__(self) -> str:
        return f"<litechan.Channel {self._ts.lite_topic!r} end_reason={self._ts.end_reason}>"

    @property
    def lite_topic(self) -> str:
        """The lite topic this channel reads."""
        return self._ts.lite_topic

    @property
    def end_reason(self) -> EndReason | None:
        """``None`` while the channel is open, then why it ended."""
        return self._ts.end_reason

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe, if the channel is still open."""
        ts = self._ts
        if ts.end_reason is None:
            await ts.sub._unsubscribe(ts)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LiteMessage:
        ts = self._ts
        pacer = self._pacer
        if pacer is None:
            pacer = self._pacer = Pacer()
        while True:
            if ts.buffer:
                if pacer.due():
                    await anyio.lowlevel.checkpoint()  # before taking anything (see _pacing)
                    continue
                fence = ts.sub._fence
                if fence.until <= time.monotonic():
                    await fence.confirm()  # the topic may have been taken over meanwhile
                    continue
                message = ts.buffer.popleft()
                if message.expires_at is not None and ts.stale(message):
                    await ts.expire(message)
                    continue
                return message
            if ts.end_reason is not None:
                raise StopAsyncIteration
            if ts.notified:
                await ts.sub._fill(ts)
                continue
            pacer.reset()
            event = ts.event = anyio.Event()
            await event.wait()


@final
class Subscriber:
    """A consumer of lite topics for one group; made by :meth:`LiteTopics.subscriber`.

    An async context manager; :meth:`subscribe` takes ownership of a lite topic for the group
    and returns its :class:`Channel`. Iterating the subscriber itself yields the messages of
    every owned lite topic, merged. Leaving the block ends every channel with ``CLOSED``;
    messages not acked stay for the group's next subscriber (G6).

    .. versionadded:: 0.1.0
    """

    def __init__(self, topics: LiteTopics, group: str, name: str) -> None:
        self._topics = topics
        self._session = topics._session
        self._group = group
        self._name = name
        self._member: LiteMember | None = None
        self._fence: Fence = ALWAYS_FRESH
        self._subs: dict[str, _TopicSub] = {}
        self._ready: deque[_TopicSub] = deque()
        self._dead_ready = 0  # ended topics still in _ready
        self._event: anyio.Event | None = None
        self._closed = False
        self._pacer = Pacer()

    def __repr__(self) -> str:
        return f"<litechan.Subscriber {self._topics.parent}/{self._group}/{self._name}>"

    @property
    def group(self) -> str:
        """The group this subscriber consumes for."""
        return self._group

    @property
    def name(self) -> str:
        """This subscriber's name (reported as the owner in stats)."""
        return self._name

    @property
    def lite_topics(self) -> frozenset[str]:
        """The lite topics this subscriber owns now."""
        return frozenset(self._subs)

    async def __aenter__(self) -> Self:
        if self._member is not None or self._closed:
            raise ResourceClosed("a Subscriber can be opened only once")
        backend = self._session.backend
        listener = LiteListener(
            on_data=self._on_data, on_end=self._on_end, on_records=self._on_records
        )
        self._member = await backend.attach(self._topics._spec, self._group, self._name, listener)
        self._fence = self._member.fence
        self._session.register(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every channel with ``CLOSED`` and give up every owned lite topic."""
        if self._closed:
            return
        self._closed = True
        self._session.unregister(self)
        for ts in list(self._subs.values()):
            self._end(ts, EndReason.CLOSED)
        if self._member is not None:
            with anyio.CancelScope(shield=True):
                await self._member.aclose()
        self._wake_merged()

    # -- subscriptions -------------------------------------------------------------------------

    async def subscribe(self, lite_topic: str, start: Start = "committed") -> Channel:
        """Own *lite_topic* for the group and return its channel.

        *start* is ``"committed"`` (after the group's committed offset, or the earliest
        retained message when it has none), ``"earliest"``, ``"latest"`` (only what is
        published from now on) or an offset. A previous owner in the group is revoked (G7).
        Subscribing again to a topic this subscriber owns returns its open channel.

        :raises InvalidName: *lite_topic* breaks the naming rules.
        :raises InvalidArgument: *start* is none of the above.
        :raises ResourceClosed: the subscriber is not open.
        """
        check_name(lite_topic, "lite topic name")
        if not (start in _STARTS if type(start) is str else type(start) is int and start >= 1):
            raise InvalidArgument(
                f"start must be 'committed', 'earliest', 'latest' or an offset >= 1, got {start!r}"
            )
        member = self._open_member()
        known = self._subs.get(lite_topic)
        if known is not None:
            return known.channel
        subscription = await member.subscribe(lite_topic, start)
        if self._closed:
            raise ResourceClosed(f"subscriber {self._name!r} was closed during subscribe")
        known = self._subs.get(lite_topic)
        if known is not None:
            # A concurrent subscribe of ours won the race: ownership never left this
            # subscriber, so keep that channel and carry the newest generation.
            known.generation = subscription.generation
            return known.channel
        ts = _TopicSub(self, lite_topic, subscription.generation, subscription.next_offset)
        self._subs[lite_topic] = ts
        if subscription.backlog:
            self._mark_ready(ts)
        else:
            ts.notified = False  # the member tells when records come (a new session, usually)
        return ts.channel

    async def unsubscribe(self, lite_topic: str) -> None:
        """Give up *lite_topic*; its channel ends with ``UNSUBSCRIBED``. Idempotent."""
        check_name(lite_topic, "lite topic name")
        ts = self._subs.get(lite_topic)
        if ts is not None:
            await self._unsubscribe(ts)

    async def _unsubscribe(self, ts: _TopicSub) -> None:
        self._end(ts, EndReason.UNSUBSCRIBED)
        if self._member is not None and not self._closed:
            await self._member.unsubscribe(ts.lite_topic)

    def _open_member(self) -> LiteMember:
        if self._closed:
            raise ResourceClosed(f"subscriber {self._name!r} is closed")
        if self._member is None:
            raise ResourceClosed("open the subscriber with `async with` first")
        return self._member

    def _end(self, ts: _TopicSub, reason: EndReason) -> None:
        if ts.end_reason is not None:
            return
        ts.end_reason = reason
        ts.buffer.clear()
        if self._subs.get(ts.lite_topic) is ts:
            del self._subs[ts.lite_topic]
        ts.wake()
        if ts.in_ready:
            # Only the merged view drops ended topics from the ready FIFO; a subscriber read
            # through channels alone must not accumulate them: compact once half are dead.
            self._dead_ready += 1
            if self._dead_ready > 64 and 2 * self._dead_ready > len(self._ready):
                for dead in self._ready:
                    if dead.end_reason is not None:
                        dead.in_ready = False
                self._ready = deque(t for t in self._ready if t.end_reason is None)
                self._dead_ready = 0

    # -- listener (called by the backend) ------------------------------------------------------

    def _on_data(self, lite_topic: str) -> None:
        # Backend callback: *lite_topic* has records past what was fetched.
        ts = self._subs.get(lite_topic)
        if ts is not None:
            ts.notified = True
            if not ts.in_ready:
                self._mark_ready(ts)
            if ts.event is not None:
                ts.wake()

    def _on_records(
        self, lite_topic: str, generation: int, epoch: str, first: int, bodies: Sequence[LiteBody]
    ) -> bool:
        # Backend callback: records offered as they are published. Taken only when they are
        # exactly the next ones to read (nothing held back by the backend, no fetch on its way)
        # and the buffer has room (bounded, G14); else the backend keeps them for a fetch.
        ts = self._subs.get(lite_topic)
        if (
            ts is None
            or ts.generation != generation
            or ts.notified
            or ts.fetching
            or ts.next_offset != first
            or len(ts.buffer) + len(bodies) > _FETCH
        ):
            return False
        buffer = ts.buffer
        gap = ts.pending_gap
        ts.pending_gap = 0
        offset = first
        for payload, headers, published_at, expires_at in bodies:
            buffer.append(
                LiteMessage(
                    lite_topic,
                    offset,
                    epoch,
                    payload,
                    dict(headers) if headers else {},
                    published_at,
                    gap,
                    expires_at,
                    ts,
                )
            )
            gap = 0
            offset += 1
        ts.next_offset = offset
        if not ts.in_ready:
            self._mark_ready(ts)
        if ts.event is not None:
            ts.wake()
        return True

    def _on_end(self, lite_topic: str, reason: EndReason) -> None:
        # Backend callback: ownership of *lite_topic* ended (revoked or expired).
        ts = self._subs.get(lite_topic)
        if ts is not None:
            self._end(ts, reason)

    def _mark_ready(self, ts: _TopicSub) -> None:
        if not ts.in_ready:
            ts.in_ready = True
            self._ready.append(ts)
            self._wake_merged()

    def _wake_merged(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    # -- reading -------------------------------------------------------------------------------

    async def _fill(self, ts: _TopicSub) -> None:
        """Pull the next batch of *ts* from the backend into its buffer."""
        member = self._member
        if member is None or ts.end_reason is not None:
            return
        ts.notified = False  # cleared first: a notification during the fetch sets it again
        ts.fetching = True
        try:
            batch = await member.fetch(ts.lite_topic, ts.generation, ts.next_offset, _FETCH)
        except BaseException:
            ts.notified = True  # cancelled or failed: the records are still to be read
            raise
        finally:
            ts.fetching = False
        if batch.ended is not None or ts.end_reason is not None:  # ended during the fetch
            if batch.ended is not None:
                self._end(ts, batch.ended)
            return
        records = batch.records
        ts.next_offset = batch.next_offset
        if batch.more:
            ts.notified = True
        gap = batch.gap
        if gap:
            logger.warning(
                "litechan.lite.gap",
                parent=self._topics.parent,
                lite_topic=ts.lite_topic,
                group=self._group,
                missed=gap,
                hint="the subscriber fell more than max_len behind",
            )
        gap += ts.pending_gap
        if not records:
            ts.pending_gap = gap  # reported on the next message delivered
            return
        ts.pending_gap = 0
        lite_topic = ts.lite_topic
        epoch = batch.epoch
        buffer = ts.buffer
        for offset, payload, headers, published_at, expires_at in records:
            buffer.append(
                LiteMessage(
                    lite_topic,
                    offset,
                    epoch,
                    payload,
                    dict(headers) if headers else {},
                    published_at,
                    gap,
                    expires_at,
                    ts,
                )
            )
            gap = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LiteMessage:
        if self._pacer.due():
            await anyio.lowlevel.checkpoint()  # before taking anything (see _pacing)
        while True:
            if self._closed:
                raise StopAsyncIteration
            ready = self._ready  # rebuilt by _end's compaction
            while ready:
                ts = ready[0]
                if ts.end_reason is not None:
                    ready.popleft()
                    ts.in_ready = False
                    self._dead_ready -= 1
                elif ts.buffer:
                    fence = self._fence
                    if fence.until <= time.monotonic():
                        await fence.confirm()  # its topics may have been taken over meanwhile
                        ready = self._ready
                        continue
                    message = ts.buffer.popleft()
                    if ts.buffer or ts.notified:
                        ready.rotate(-1)  # round-robin: one busy session cannot starve others
                    else:
                        ready.popleft()
                        ts.in_ready = False
                    if message.expires_at is not None and ts.stale(message):
                        await ts.expire(message)
                        ready = self._ready
                        continue
                    return message
                elif ts.notified:
                    await self._fill(ts)
                    ready = self._ready
                else:
                    ready.popleft()
                    ts.in_ready = False
            self._pacer.reset()
            event = self._event = anyio.Event()
            await event.wait()
