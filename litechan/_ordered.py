"""Request side: ordered topics, partitioned by key, consumed by groups.

A :class:`Consumer` pulls batches of entries from its backend membership and hands them to the
application through :class:`~litechan._dispatch.KeyOrderedDispatcher`, which enforces per-key
order with at most ``max_in_flight`` messages out (G1, G2). Revocation during a rebalance is
cooperative: the consumer stops handing out the partition's messages, waits until the ones the
application holds are settled, then releases the partition, so the next owner can never deliver
a key's next message before the previous one is settled.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Literal, Self, final

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from ._alarm import Alarm
from ._backends.base import Entry, GroupMember, OrderedListener, OrderedSpec
from ._background import Background
from ._dispatch import KeyOrderedDispatcher, by_key, by_partition
from ._errors import InvalidArgument, ResourceClosed
from ._hashing import partition_for
from ._log import logger
from ._names import (
    check_dedupe_id,
    check_headers,
    check_int,
    check_key,
    check_name,
    check_payload,
    check_reason,
    check_seconds,
)
from ._pacing import Pacer
from ._session import Session
from ._types import Buffer, DeadLetter, Message, OrderedTopicStats, Receipt

__all__ = ["Consumer", "OrderedTopic"]


@final
class OrderedTopic:
    """Handle of an ordered topic; made by :meth:`Broker.ordered_topic`.

    .. versionadded:: 0.1.0
    """

    def __init__(self, session: Session, spec: OrderedSpec) -> None:
        self._session = session
        self._spec = spec

    def __repr__(self) -> str:
        return f"<litechan.OrderedTopic {self._spec.name!r} partitions={self._spec.partitions}>"

    @property
    def name(self) -> str:
        """The topic's name."""
        return self._spec.name

    @property
    def partitions(self) -> int:
        """The number of partitions."""
        return self._spec.partitions

    async def send(
        self,
        key: str,
        payload: Buffer,
        *,
        headers: Mapping[str, str] | None = None,
        dedupe_id: str | None = None,
        expires_in: float | None = None,
    ) -> Receipt:
        """Append *payload* to the partition of *key* and return where it was stored.

        A second send with the same *dedupe_id* within the topic's dedupe window stores nothing
        and returns the first send's receipt with ``duplicate=True`` (G11).

        With *expires_in*, a message that no consumer of a group has handed out when that many
        seconds have passed since the send (on the broker's clock) is never handed out to the
        group: it is settled as expired (``stats()``, event
        ``litechan.ordered.message_expired``) and its key moves on. *expires_in* is new in 0.2.0.

        :raises InvalidName: *key* is not a str of 1 to 1024 characters that UTF-8 can encode.
        :raises InvalidArgument: *dedupe_id* is not ``None`` or such a str, or *expires_in*
            is not ``None`` or a finite number of seconds > 0.
        :raises PayloadTooLarge: *payload* exceeds the broker's ``max_payload``, or *headers*
            hold more than 64 KiB.
        :raises InvalidPayload: *payload* is not bytes or *headers* not ``dict[str, str]`` of
            strings UTF-8 can encode.
        :raises ResourceClosed: the broker is closed.
        """
        backend = self._session.backend
        check_key(key)
        body = check_payload(payload, self._session.options.max_payload)
        fields = check_headers(headers)
        dedupe_id = check_dedupe_id(dedupe_id)
        expires_at = None if expires_in is None else self._session.deadline(expires_in)
        partition = partition_for(key, self._spec.partitions)
        if self._session.pacer.due():
            await anyio.lowlevel.checkpoint()  # before the write: a cancel loses nothing
        return await backend.send(self._spec, partition, key, body, fields, dedupe_id, expires_at)

    def consumer(
        self,
        *,
        group: str,
        name: str,
        ordering: Literal["key", "partition"] = "key",
        max_in_flight: int = 64,
        max_deliveries: int = 10,
        max_buffered: int = 10_000,
    ) -> Consumer:
        """Return a consumer of *group*; open it with ``async with`` and iterate it.

        *ordering* ``"key"`` delivers each key in order with up to *max_in_flight* messages of
        different keys out at once; ``"partition"`` delivers each partition strictly in order.
        A message delivered *max_deliveries* times and nacked again is dead-lettered.
        *max_buffered* bounds the messages fetched and held for busy keys: a session may queue
        that many behind its message in flight before other sessions of its partitions wait.

        .. versionadded:: 0.1.0
        """
        check_name(group, "group name")
        check_name(name, "consumer name")
        if ordering not in ("key", "partition"):
            raise InvalidArgument(f"ordering must be 'key' or 'partition', got {ordering!r}")
        check_int(max_in_flight, "max_in_flight", 1)
        check_int(max_deliveries, "max_deliveries", 1)
        check_int(max_buffered, "max_buffered", 1)
        return Consumer(self, group, name, ordering, max_in_flight, max_deliveries, max_buffered)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        """Messages of *group* that were rejected or exceeded ``max_deliveries``, oldest first."""
        check_name(group, "group name")
        return await self._session.backend.dead_letters(self._spec, group)

    async def stats(self) -> OrderedTopicStats:
        """Per-partition length, and each group's committed offset, lag, pending and owner."""
        return await self._session.backend.ordered_stats(self._spec)


@final
class Consumer:
    """One consumer of a consumer group; made by :meth:`OrderedTopic.consumer`.

    An async context manager and an async iterator of :class:`Message`. Leaving the block
    without settling messages is what a crash looks like: they are redelivered, in order, to
    the group's next owner of their partition (G3).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        topic: OrderedTopic,
        group: str,
        name: str,
        ordering: Literal["key", "partition"],
        max_in_flight: int,
        max_deliveries: int,
        max_buffered: int,
    ) -> None:
        self._topic = topic
        self._session = topic._session
        self._group = group
        self._name = name
        self._ordering = ordering
        self._max_deliveries = max_deliveries
        self._dispatcher = KeyOrderedDispatcher(
            max_in_flight, by_key if ordering == "key" else by_partition
        )
        # Fetch more once fewer than this many are held, so a blocked key cannot hold the
        # buffer hostage for long, yet fetches stay batched.
        self._fetch_limit = max(256, 4 * max_in_flight)
        self._max_buffered = max(max_buffered, self._fetch_limit)
        self._warned_full = False
        self._member: GroupMember | None = None
        self._background = Background()
        self._alarm = Alarm(self._session.clock, self._on_alarm)
        self._woken = True
        self._event: anyio.Event | None = None
        self._revoking: dict[int, list[Entry]] = {}
        self._not_before: dict[tuple[int, int], float] = {}  # retries handed back, by position
        self._closed = False
        self._pacer = Pacer()

    def __repr__(self) -> str:
        return f"<litechan.Consumer {self._topic.name}/{self._group}/{self._name}>"

    @property
    def group(self) -> str:
        """The consumer group's name."""
        return self._group

    @property
    def name(self) -> str:
        """This consumer's name within the group."""
        return self._name

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this consumer owns now."""
        return self._member.partitions if self._member is not None else frozenset()

    @property
    def in_flight(self) -> int:
        """Messages delivered to the application and not yet settled."""
        return self._dispatcher.in_flight

    async def __aenter__(self) -> Self:
        if self._member is not None or self._closed:
            raise ResourceClosed("a Consumer can be opened only once")
        backend = self._session.backend
        task_group = await self._background.open()
        task_group.start_soon(self._alarm.run)
        try:
            self._member = await backend.join_group(
                self._topic._spec,
                self._group,
                self._name,
                self._max_deliveries,
                OrderedListener(wake=self._wake),
            )
        except BaseException as exc:
            await self._background.close(exc)  # raises a group only if the alarm failed too
            raise
        self._session.register(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return await self._background.close(exc)

    async def aclose(self) -> None:
        """Leave the group; messages not settled are redelivered to the next owners."""
        if self._closed:
            return
        self._closed = True
        self._session.unregister(self)
        undelivered = self._dispatcher.drain()
        for dropped in self._revoking.values():
            undelivered.extend(dropped)
        self._revoking.clear()
        if self._member is not None:
            with anyio.CancelScope(shield=True):
                await self._member.aclose(undelivered)
        # Stop background work without cancelling the task group's scope: that scope also wraps
        # the application's `async with` body, which must see iteration end, not a cancellation.
        self._alarm.stop()
        self._wake()

    # -- listener (called by the backend) ------------------------------------------------------

    def _wake(self) -> None:
        # Backend callback: entries or revocations may be waiting.
        self._woken = True
        self._set_event()

    def _set_event(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def _on_alarm(self) -> None:
        dispatcher = self._dispatcher
        dispatcher.release_due(self._session.clock.time())
        due = dispatcher.next_due()
        if due is not None:
            self._alarm.arm(due)
        self._set_event()

    # -- iteration -----------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        dispatcher = self._dispatcher
        if self._pacer.due():
            await anyio.lowlevel.checkpoint()  # before taking anything (see _pacing)
        while True:
            if self._closed:
                raise StopAsyncIteration
            member = self._member
            if member is None:
                raise ResourceClosed("open the consumer with `async with` before iterating it")
            if member.valid_until <= time.monotonic():
                # A lease this consumer cannot prove any more (it was paused, or cut off from
                # the server): another consumer may own the partition and hold its messages.
                # Drop what is held of it before anything else is handed out (G1, G4).
                with anyio.CancelScope(shield=True):
                    for partition in member.lapse(time.monotonic()):
                        await self._revoke(partition)
                continue
            entry = dispatcher.pop()
            if entry is not None:
                if entry.expires_at is not None and entry.expires_at <= self._session.clock.time():
                    with anyio.CancelScope(shield=True):  # popped: settle it, or its key stalls
                        await self._expire(entry)
                    continue
                return Message(entry, self)
            want = self._want(dispatcher)
            if self._woken or want:
                self._woken = False
                # Shielded: entries the backend handed out must reach the dispatcher, or they
                # would stay pending here while the key's next message went out (G1). A fetch
                # never waits, so the shield cannot hold a cancellation up for long.
                with anyio.CancelScope(shield=True):
                    batch = await member.fetch(want)
                    for partition in batch.revoked:
                        await self._revoke(partition)
                    for fetched in batch.entries:
                        self._push(fetched)
                if batch.entries or batch.revoked:
                    continue
            if self._woken:
                continue
            self._pacer.reset()
            event = self._event = anyio.Event()
            await event.wait()

    def _push(self, entry: Entry) -> None:
        due = (
            self._not_before.pop((entry.partition, entry.offset), None)
            if self._not_before
            else None
        )
        if due is not None and due > self._session.clock.time():
            # A retry this consumer handed back with its partition came back to it.
            self._dispatcher.push_delayed(entry, due)
            self._alarm.arm(due)
        else:
            self._dispatcher.push(entry)

    def _want(self, dispatcher: KeyOrderedDispatcher) -> int:
        """How many entries to fetch now (0: none; the consumer has enough to work with)."""
        if dispatcher.in_flight >= dispatcher.max_in_flight:
            return 0
        room = self._fetch_limit - dispatcher.buffered
        if room > 0:
            return room
        if dispatcher.has_ready():
            return 0
        # Everything held belongs to busy keys: keep fetching past the soft limit so that other
        # sessions are not blocked behind one session's backlog (G2), up to max_buffered.
        room = self._max_buffered - dispatcher.buffered
        if room <= 0 and not self._warned_full:
            self._warned_full = True
            logger.warning(
                "litechan.ordered.buffer_full",
                topic=self._topic.name,
                group=self._group,
                consumer=self._name,
                buffered=dispatcher.buffered,
                hint="busy keys hold max_buffered messages; ack faster or raise max_buffered",
            )
        return max(0, min(room, self._fetch_limit))

    # -- settlement ----------------------------------------------------------------------------

    async def _revoke(self, partition: int) -> None:
        # Retries waiting on a nack delay are handed back too: the next owner redelivers them
        # at once. Keeping them here would hold every other session of the partition until
        # the delay ran out (G2 matters more than the length of a retry delay).
        dispatcher = self._dispatcher
        now = self._session.clock.time()
        for due, entry in dispatcher.delayed_entries(partition):
            if due > now:
                self._remember_delay(entry, due)
        dropped = dispatcher.drop_partition(partition)
        if not dispatcher.holds(partition):
            await self._release(partition, dropped)
        else:
            self._revoking[partition] = dropped

    def _remember_delay(self, entry: Entry, due: float) -> None:
        # Should the partition come back to this consumer, the retry still waits for its due
        # time (a new owner delivers it at once). Forget what is past due now and then.
        if len(self._not_before) >= 1024:
            now = self._session.clock.time()
            self._not_before = {k: d for k, d in self._not_before.items() if d > now}
        self._not_before[(entry.partition, entry.offset)] = due

    async def _release(self, partition: int, undelivered: Sequence[Entry]) -> None:
        if self._member is not None and not self._closed:
            await self._member.release(partition, undelivered)

    async def _after_settle(self, entry: Entry) -> None:
        partition = entry.partition
        # A revoked partition is released once nothing of it is left here: not out with the
        # application, not waiting on a retry delay, not queued as a retry that came due.
        if partition in self._revoking and not self._dispatcher.holds(partition):
            await self._release(partition, self._revoking.pop(partition))
        self._set_event()

    def _take(self, message: Message) -> Entry | None:
        """Mark *message* settled; return its entry, or None if it was settled or we closed."""
        if message._settled:
            return None
        message._settled = True
        if self._closed:
            return None  # the membership is gone: the message will be redelivered elsewhere
        return message._entry

    async def _ack(self, message: Message) -> None:
        entry = self._take(message)
        if entry is None or self._member is None:
            return
        try:
            await self._member.ack(entry)  # with acks=sync: the server's answer
        except BaseException:
            message._settled = False  # nothing changed: still the application's, key busy
            raise
        self._dispatcher.settle(entry)
        await self._after_settle(entry)

    async def _expire(self, entry: Entry) -> None:
        """Settle *entry*, popped but never handed out: its deadline has passed."""
        member = self._member
        if member is not None and not self._closed:
            logger.info(
                "litechan.ordered.message_expired",
                topic=self._topic.name,
                group=self._group,
                consumer=self._name,
                partition=entry.partition,
                offset=entry.offset,
                key=entry.key,
                late=round(self._session.clock.time() - entry.expires_at, 3)
                if entry.expires_at is not None
                else 0.0,
            )
            try:
                await member.expire(entry)
            finally:
                # Refused or not, its key moves on here: a refused settlement leaves the entry
                # pending in the backend, which hands it out again (and it expires again).
                self._dispatcher.settle(entry)
                await self._after_settle(entry)
        else:
            self._dispatcher.settle(entry)

    async def _reject(self, message: Message, reason: str) -> None:
        reason = check_reason(reason)
        entry = self._take(message)
        if entry is None or self._member is None:
            return
        try:
            await self._member.reject(entry, reason)
        except BaseException:
            message._settled = False
            raise
        self._dispatcher.settle(entry)
        await self._after_settle(entry)

    async def _nack(self, message: Message, delay: float) -> None:
        seconds = check_seconds(delay, "delay", allow_zero=True)
        if message._settled:
            return
        entry = message._entry
        if entry.delivery_count >= self._max_deliveries:
            await self._reject(message, f"nacked after {entry.delivery_count} deliveries")
            return
        if self._take(message) is None or self._member is None:
            return
        due = self._session.clock.time() + seconds
        if entry.expires_at is not None and entry.expires_at <= due:
            # Its retry would come after its deadline: settle it now, or its key would wait
            # out the delay for a message that is never handed out again.
            with anyio.CancelScope(shield=True):
                await self._expire(entry)
            return
        await self._member.nack(entry)
        dispatcher = self._dispatcher
        # A fresh entry: the settled message keeps the delivery count it was delivered with.
        entry = attrs.evolve(entry, delivery_count=entry.delivery_count + 1)
        dispatcher.retry(entry, due)
        partition = entry.partition
        if partition in self._revoking:
            if seconds:
                self._remember_delay(entry, due)
            self._revoking[partition].extend(dispatcher.drop_partition(partition))
        elif seconds == 0:
            dispatcher.release_due(due)
        else:
            self._alarm.arm(due)
        await self._after_settle(entry)
