"""Ordered topics on Redis: a stream per partition, leases per (partition, group).

A group's members register in a sorted set scored by lease expiry (``ORDERED_HEARTBEAT``); every
member computes the same assignment from the sorted live members (partition ``p`` goes to member
``p % n``). A member claims a partition assigned to it when the partition is free or its owner's
lease ran out, renews the leases of what it owns every ``lease / 3`` seconds, and gives up what is
no longer assigned to it cooperatively: the core releases a revoked partition once its messages
in flight are settled (G1). Joins, leaves and releases publish on the group's rebalance channel
so that the others act at once; a crashed member's partitions move when its lease runs out.

Each claim increments the partition's generation; every settlement carries the generation it was
handed out with and the scripts ignore stale ones (fencing, G4). What the previous owner did not
settle is redelivered first, in offset order (G3). Sends wake the partition's owner in every
group with a note on its broker's channel; a fetch only reads partitions that were woken, claimed
or left with more to read, so an idle consumer costs no round trips.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc
import msgspec

from ..._errors import LitechanError
from ..._log import logger
from ..._types import DeadLetter, GroupLag, OrderedTopicStats, PartitionStats, Receipt
from ..base import Entry, OrderedBatch, OrderedListener, OrderedSpec
from ._client import AckBatch, OnDone, entry_body
from ._cluster import Commands
from ._notes import Listening
from ._replies import reply_error
from ._scripts import (
    ORDERED_ACK,
    ORDERED_CLAIM,
    ORDERED_FETCH,
    ORDERED_HEARTBEAT,
    ORDERED_NACK,
    ORDERED_RECOVER,
    ORDERED_REJECT,
    ORDERED_RELEASE,
    ORDERED_RENEW,
    ORDERED_SEND,
)
from ._wire import ReplyError

__all__ = ["RedisGroupMember", "RedisOrderedTopic"]


#: Sends to one partition per script call, at most (a script runs alone on the server).
SEND_BATCH: Final = 512
#: Dead letters kept per group and partition (oldest dropped first).
MAX_DEAD_LETTERS: Final = 10_000
#: The part of a lease a member does not count on: it stops handing out a partition's messages
#: once 80 % of the lease has passed since the last renewal that succeeded was sent (its clock
#: and the server's may drift, and the renewal ran some time after it was sent).
LEASE_MARGIN: Final = 0.2


class OrderedBody(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A stored message: ``[key, payload, headers, published_at]``, and ``expires_at`` after
    them when it was sent with a deadline (bodies without one stay as they were)."""

    key: str
    payload: bytes
    headers: dict[str, str] | None
    published_at: float
    expires_at: float | None = None


DeadBody = tuple[str, bytes, dict[str, str], int, int, int, str]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(OrderedBody).decode
_decode_dead = msgspec.msgpack.Decoder(DeadBody).decode


class RedisOrderedTopic:
    """One ordered topic's keys on one server."""

    def __init__(self, client: Commands, namespace: str, spec: OrderedSpec) -> None:
        self.client = client
        self.spec = spec
        self.namespace = namespace
        self.prefix = f"{namespace}:o:{spec.name}"
        self.checked = False
        #: Per partition: the sends queued for the next batch, (window_ms, dedupe key, body,
        #: future) each.
        self._pending: dict[int, list[tuple[int, str, bytes, asyncio.Future[Receipt]]]] = {}
        self._flush_hook = self._flush  # one bound method: the client finds it again

    def tag(self, partition: int) -> str:
        return f"{{{self.prefix}:{partition}}}"

    def part_keys(self, partition: int, group: str) -> tuple[str, str, str, str, str]:
        """stream, meta, group hash, pending hash, redo list."""
        tag = self.tag(partition)
        return (tag + ":s", tag + ":m", f"{tag}:g:{group}", f"{tag}:p:{group}", f"{tag}:r:{group}")

    def release_keys(self, partition: int, group: str) -> tuple[str, str, str, str]:
        """group hash, pending hash, redo list, meta: the keys of ORDERED_RELEASE."""
        _, meta, gk, pending, redo = self.part_keys(partition, group)
        return gk, pending, redo, meta

    def dead_key(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:x:{group}"

    def members_key(self, group: str) -> str:
        return f"{self.prefix}:members:{group}"

    def rebalance_channel(self, group: str) -> str:
        return f"{self.prefix}:rebalance:{group}"

    def send(
        self,
        partition: int,
        key: str,
        payload: bytes,
        headers: dict[str, str],
        dedupe_id: str | None,
        now: float,
        expires_at: float | None,
    ) -> asyncio.Future[Receipt]:
        """Queue a message for the next batch; the future gets its receipt. The sends of one
        partition made between two batches travel in one ``ORDERED_SEND`` call."""
        self.client.admit()
        window = 0 if dedupe_id is None else round(self.spec.dedupe_window * 1000)
        dedupe_key = f"{self.tag(partition)}:d:{dedupe_id}" if window else ""
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        body = _encode(
            (key, payload, headers or None, now)
            if expires_at is None
            else (key, payload, headers or None, now, expires_at)
        )
        self.client.pending += 1  # until the call carrying it is answered (backpressure)
        queued = self._pending.get(partition)
        if queued is None:
            queued = self._pending[partition] = []
        queued.append((window, dedupe_key, body, future))
        self.client.before_flush(self._flush_hook)
        return future

    def _flush(self) -> None:
        """Send what was queued since the last batch: one call per partition (a hook)."""
        pending, self._pending = self._pending, {}
        for partition, queued in pending.items():
            for start in range(0, len(queued), SEND_BATCH):  # a script runs alone: keep it short
                self._send(partition, queued[start : start + SEND_BATCH])

    def _send(
        self, partition: int, queued: list[tuple[int, str, bytes, asyncio.Future[Receipt]]]
    ) -> None:
        tag = self.tag(partition)
        keys: list[str] = [tag + ":s", tag + ":m"]
        args: list[Any] = [self.spec.max_len, partition]
        for window, dedupe_key, body, _ in queued:
            if window:
                keys.append(dedupe_key)
            args += (window, body)

        client = self.client

        def done(outcome: Any) -> None:
            client.answered(len(queued))
            if isinstance(outcome, BaseException):
                for *_, future in queued:
                    if not future.done():
                        future.set_exception(outcome)
                return
            # Per message: (offset, 1 if a duplicate else 0), or (0, the error of a stream that
            # a foreign entry blocks).
            for (*_, future), (offset, detail) in zip(queued, outcome, strict=True):
                if future.done():
                    continue
                if offset:
                    future.set_result(Receipt(partition, offset, duplicate=detail == 1))
                else:
                    error = ReplyError(detail.decode())
                    future.set_exception(reply_error(error, "Redis (ordered_send)"))

        self.client.run_soon(ORDERED_SEND, keys, args, on_done=done)

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        replies = await self.client.many(
            ("XRANGE", self.dead_key(p, group), "-", "+") for p in range(self.spec.partitions)
        )
        found: list[tuple[bytes, DeadLetter]] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                continue
            for entry_id, fields in reply:
                try:
                    key, payload, headers, p, offset, count, reason = _decode_dead(fields[1])
                except (msgspec.DecodeError, IndexError):
                    continue
                letter = DeadLetter(
                    key=key,
                    payload=payload,
                    headers=headers,
                    partition=p,
                    offset=offset,
                    delivery_count=count,
                    reason=reason,
                )
                found.append((entry_id, letter))
        found.sort(key=lambda item: tuple(int(x) for x in item[0].split(b"-")))
        return [letter for _, letter in found[-MAX_DEAD_LETTERS:]]

    async def stats(self) -> OrderedTopicStats:
        partitions = range(self.spec.partitions)
        client = self.client
        metas = await client.many(
            cmd
            for p in partitions
            for cmd in (("HGETALL", self.tag(p) + ":m"), ("XLEN", self.tag(p) + ":s"))
        )
        # The groups: every group hash of the partition (SCAN is fine: stats are not hot).
        found = await client.scan(f"{{{self.prefix}:*}}:g:*")
        groups = {k.decode().rsplit(":g:", 1)[1] for k in found}
        ordered_groups = sorted(groups)
        details = await client.many(
            cmd
            for p in partitions
            for g in ordered_groups
            for cmd in (
                ("HMGET", self.part_keys(p, g)[2], "own", "cur", "expired"),
                ("HKEYS", self.part_keys(p, g)[3]),
            )
        )
        result = []
        per = 2 * len(ordered_groups)
        for p in partitions:
            fields, length = metas[2 * p], metas[2 * p + 1]
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            last = int(info.get(b"n", 0))
            first = last - int(length) + 1
            lags = {}
            for i, g in enumerate(ordered_groups):
                (own, cur, expired), pending = (
                    details[p * per + 2 * i],
                    details[p * per + 2 * i + 1],
                )
                if cur is None:
                    continue
                offsets = [int(o) for o in pending]
                committed = (min(offsets) - 1) if offsets else int(cur) - 1
                committed = max(committed, first - 1)
                owner = own.decode().split("|")[3] if own else None
                lags[g] = GroupLag(
                    group=g,
                    committed=committed,
                    lag=last - committed,
                    pending=len(offsets),
                    owner=owner,
                    expired=int(expired or 0),
                )
            result.append(PartitionStats(p, int(length), first, last, lags))
        return OrderedTopicStats(self.spec.name, tuple(result))


class RedisGroupMember:
    """A consumer's membership of a group on Redis (implements ``GroupMember``)."""

    def __init__(
        self,
        topic: RedisOrderedTopic,
        group: str,
        name: str,
        member_id: str,
        channel: str,
        max_deliveries: int,
        listener: OrderedListener,
        notes: Listening,
        members: dict[str, RedisGroupMember],
        lease: float,
    ) -> None:
        self._topic = topic
        self._client = topic.client
        self._group = group
        self._name = name
        self._id = member_id
        self._max_deliveries = max_deliveries
        self._listener = listener
        self._notes = notes
        self._members = members
        self._lease = lease
        self._lease_ms = round(lease * 1000)
        self._token = f"{channel}|{member_id}|0|{name}"
        self._owned: dict[int, int] = {}  # partition -> generation
        self._proven: dict[int, float] = {}  # partition -> monotonic time its lease is proven to
        self._held: dict[int, set[int]] = {}  # partition -> offsets handed out, not settled
        self._recover: set[int] = set()  # partitions a lost reply may have left entries in
        self._unsure: set[int] = set()  # partitions a claim without a reply may have taken
        self._revoking: set[int] = set()
        self._to_revoke: list[int] = []
        self._lost: list[int] = []  # taken by another member, not yet dropped by the core
        self._dirty: set[int] = set()
        self._acks: dict[int, AckBatch] = {}
        self._settling: dict[int, int] = {}  # partition -> acks and nacks not answered yet
        self._quiet: dict[int, asyncio.Future[None]] = {}  # waiters for _settling to reach 0
        self._flush_acks_hook = self._flush_all_acks
        self._rotation = 0
        self._closed = False
        self._rebalance = anyio.Event()
        self._scope = anyio.CancelScope()
        self._balancing = anyio.Lock()
        self._fetching = asyncio.Lock()
        self._forget_reconnect = self._client.on_reconnect(self._on_link_reset)
        self.valid_until = math.inf
        members[member_id] = self

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._owned)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        await self._notes.listen(self._topic.rebalance_channel(self._group), self._on_rebalance)
        await self._balance()
        task_group.start_soon(self._balance_loop)

    def _on_rebalance(self, _note: bytes) -> None:
        self._rebalance.set()

    def on_wake(self, partition: int) -> None:
        if partition in self._owned and partition not in self._revoking:
            self._dirty.add(partition)
            self._listener.wake()

    def on_reconnect(self) -> None:
        """The notes link came back: notes may have been lost."""
        self._dirty.update(self._owned)
        self._rebalance.set()
        self._listener.wake()

    def _on_link_reset(self) -> None:
        # The command link came back: replies of the lost one may be missing, fetches among
        # them. Before the next fetch of each partition, what the member does not hold goes
        # back to the head of the line (ORDERED_RECOVER).
        self._recover.update(self._owned)
        self.on_reconnect()

    # -- leases ----------------------------------------------------------------------------------

    def _prove(self, partition: int, sent_at: float) -> None:
        """The server renewed (or granted) *partition*'s lease at or after *sent_at*."""
        self._proven[partition] = sent_at + self._lease * (1 - LEASE_MARGIN)
        self._update_validity()

    def _update_validity(self) -> None:
        """``valid_until``: at once while a lost partition waits for the core to drop it, else
        when the first lease runs out of proof."""
        self.valid_until = -math.inf if self._lost else min(self._proven.values(), default=math.inf)

    def lapse(self, now: float) -> list[int]:
        lost, self._lost = self._lost, []
        lapsed = [p for p, until in self._proven.items() if until <= now]
        for p in lapsed:
            logger.warning(
                "litechan.ordered.lease_lapsed",
                topic=self._topic.spec.name,
                group=self._group,
                consumer=self._name,
                partition=p,
                hint="no renewal of the lease succeeded in time (the process was paused or "
                "cut off): the partition is given up before another consumer claims it",
            )
            self._forget(p)
            self._unsure.add(p)  # its lease may still be ours on the server: freed at close
        self._update_validity()
        return lost + lapsed

    def _forget(self, partition: int) -> None:
        """Stop owning *partition* here (its lease is lost or unproven)."""
        self._flush_acks(partition)  # fenced on the server if the partition moved
        self._owned.pop(partition, None)
        self._proven.pop(partition, None)
        self._held.pop(partition, None)
        self._recover.discard(partition)
        self._dirty.discard(partition)
        self._update_validity()

    async def _balance_loop(self) -> None:
        with self._scope:
            while not self._closed:
                with anyio.move_on_after(self._lease / 3):
                    await self._rebalance.wait()
                self._rebalance = anyio.Event()
                if self.closed:
                    return
                try:
                    await self._balance()
                except Exception as exc:  # an outage or a refusal: the next round tries again
                    logger.warning(
                        "litechan.ordered.rebalance_failed",
                        topic=self._topic.spec.name,
                        group=self._group,
                        consumer=self._name,
                        error=str(exc),
                    )

    async def _balance(self) -> None:
        # One round at a time, and none once closed: aclose() takes the lock, so a claim that
        # was on the wire when it began is recorded in _owned and released with the rest.
        async with self._balancing:
            if not self._closed:
                await self._balance_once()

    async def _balance_once(self) -> None:
        topic = self._topic
        live = await self._client.run(
            ORDERED_HEARTBEAT,
            (topic.members_key(self._group),),
            (self._token, self._lease_ms, 0, topic.rebalance_channel(self._group)),
        )
        members = [m.decode() for m in live]
        if self._closed:
            return
        me = members.index(self._token) if self._token in members else -1
        desired = (
            {p for p in range(topic.spec.partitions) if p % len(members) == me}
            if me >= 0
            else set()
        )
        changed = False
        # Renew what we own; a partition whose lease we lost is given up at once.
        owned = sorted(self._owned.items())
        sent_at = time.monotonic()
        renewals = await self._client.run_many(
            ORDERED_RENEW,
            (
                ((topic.part_keys(p, self._group)[2],), (self._token, generation, self._lease_ms))
                for p, generation in owned
            ),
        )
        for (p, generation), ok in zip(owned, renewals, strict=True):
            if self._owned.get(p) != generation:
                continue
            if ok == 1:
                self._prove(p, sent_at)
            elif ok == 0:
                logger.warning(
                    "litechan.ordered.lease_lost",
                    topic=topic.spec.name,
                    group=self._group,
                    consumer=self._name,
                    partition=p,
                )
                self._drop(p)
                changed = True
        for p in sorted(self._owned.keys() - desired - self._revoking):
            self._revoking.add(p)
            self._to_revoke.append(p)
            changed = True
        wanted = sorted(desired - self._owned.keys())
        sent_at = time.monotonic()
        claims = await self._client.run_many(
            ORDERED_CLAIM,
            (
                (topic.part_keys(p, self._group), (self._group, self._token, self._lease_ms))
                for p in wanted
            ),
        )
        for p, reply in zip(wanted, claims, strict=True):
            if isinstance(reply, list) and int(reply[0]) == 1:
                self._owned[p] = int(reply[1])
                self._held[p] = set()
                self._unsure.discard(p)
                self._prove(p, sent_at)
                self._dirty.add(p)
                changed = True
            elif isinstance(reply, BaseException):
                self._unsure.add(p)  # it may have run: released by token at close
        if changed:
            self._listener.wake()

    def _drop(self, partition: int) -> None:
        """*partition* is another member's now (a renewal or a fetch was fenced): the core
        drops what it holds of it before it hands out anything else (through :meth:`lapse`)."""
        self._forget(partition)
        self._lost.append(partition)
        self._update_validity()

    # -- fetching --------------------------------------------------------------------------------

    async def fetch(self, max_entries: int) -> OrderedBatch:
        # One fetch at a time (several tasks may iterate one consumer): a recovery computed
        # from what is held must not overtake a fetch whose entries are not held yet.
        async with self._fetching:
            revoked, self._to_revoke = self._to_revoke, []
            dirty = [p for p in sorted(self._dirty) if p in self._owned and p not in self._revoking]
            self._dirty.clear()
            if not dirty or max_entries <= 0:
                self._dirty.update(dirty)
                return OrderedBatch((), revoked)
            # Rotate the starting partition so that a busy partition cannot starve the others.
            self._rotation = (self._rotation + 1) % len(dirty)
            dirty = dirty[self._rotation :] + dirty[: self._rotation]
            try:
                entries = await self._fetch(dirty, max_entries)
            except LitechanError as exc:  # an outage older than retry: calls fail at once
                self._dirty.update(p for p in dirty if p in self._owned)
                logger.debug("litechan.ordered.fetch_deferred", error=str(exc))
                return OrderedBatch((), revoked)  # the end of the outage wakes the consumer
            return OrderedBatch(entries, revoked)

    async def _fetch(self, dirty: list[int], max_entries: int) -> list[Entry]:
        for p in dirty:
            self._flush_acks(p)
        topic = self._topic
        generations = [self._owned[p] for p in dirty]
        recovering = [(p, g) for p, g in zip(dirty, generations, strict=True) if p in self._recover]
        if recovering:
            # Before the fetch, not with it: a fetch that ran first would be undone.
            recovered = await self._client.run_many(
                ORDERED_RECOVER,
                (
                    (
                        topic.part_keys(p, self._group)[2:],
                        (self._token, g, *sorted(self._held.get(p, ()))),
                    )
                    for p, g in recovering
                ),
            )
            for (p, g), outcome in zip(recovering, recovered, strict=True):
                if isinstance(outcome, BaseException) or self._owned.get(p) != g:
                    continue  # still marked: tried again with the next fetch
                self._recover.discard(p)
                if int(outcome) > 0:
                    logger.info(
                        "litechan.ordered.recovered",
                        topic=topic.spec.name,
                        group=self._group,
                        partition=p,
                        pending=int(outcome),
                    )
        share = max(1, max_entries // len(dirty))
        replies = await self._client.run_many(
            ORDERED_FETCH,
            (
                (topic.part_keys(p, self._group), (self._token, g, share))
                for p, g in zip(dirty, generations, strict=True)
            ),
        )
        batch: list[Entry] = []
        for p, generation, reply in zip(dirty, generations, replies, strict=True):
            if isinstance(reply, BaseException):
                self._dirty.add(p)
                self._recover.add(p)  # it may have run and taken entries
                logger.warning("litechan.ordered.fetch_failed", partition=p, error=str(reply))
                continue
            if self._owned.get(p) != generation:
                continue  # lapsed or lost while the fetch was out: the entries stay pending
            if reply and reply[0] == b"F":
                self._drop(p)
                continue
            trimmed = int(reply[0])
            if trimmed:
                logger.warning(
                    "litechan.ordered.trimmed",
                    topic=topic.spec.name,
                    group=self._group,
                    partition=p,
                    lost=trimmed,
                    hint="the group fell more than max_len behind; raise max_len or add consumers",
                )
            held = self._held.setdefault(p, set())
            count = 0
            for i in range(1, len(reply), 3):
                offset, deliveries, fields = int(reply[i]), int(reply[i + 1]), reply[i + 2]
                count += 1
                entry = self._entry(p, generation, offset, deliveries, fields)
                if entry is None:
                    continue
                held.add(offset)
                if deliveries > self._max_deliveries:
                    await self._dead_letter(entry)
                    continue
                batch.append(entry)
            if count >= share:
                self._dirty.add(p)  # more may be waiting
        return batch

    async def _dead_letter(self, entry: Entry) -> None:
        """Dead-letter an entry fetched once too often; if the server refuses, it stays pending
        and the next fetch of its partition tries again (nothing of the batch is lost)."""
        try:
            await self.reject(entry, f"delivered {entry.delivery_count - 1} times without ack")
        except LitechanError as exc:
            p = entry.partition
            held = self._held.get(p)
            if held is not None and self._owned.get(p) == entry.generation:
                held.discard(entry.offset)
                self._recover.add(p)
                self._dirty.add(p)
            logger.warning(
                "litechan.ordered.dead_letter_failed",
                topic=self._topic.spec.name,
                group=self._group,
                partition=entry.partition,
                offset=entry.offset,
                error=str(exc),
            )

    def _entry(
        self, p: int, generation: int, offset: int, deliveries: int, fields: Any
    ) -> Entry | None:
        try:
            body = _decode(entry_body(fields))
        except msgspec.DecodeError as exc:
            raw = b"" if not fields else b"\x00".join(fields)
            logger.warning(
                "litechan.ordered.corrupt_entry",
                topic=self._topic.spec.name,
                group=self._group,
                partition=p,
                offset=offset,
                error=str(exc),
            )
            junk = Entry(p, offset, "", raw, {}, 0.0, deliveries, generation)
            self._client.run_soon(
                ORDERED_REJECT,
                (*self._topic.part_keys(p, self._group)[2:4], self._topic.dead_key(p, self._group)),
                (
                    self._token,
                    generation,
                    offset,
                    _dead_body(junk, f"corrupt entry: {exc}"),
                    MAX_DEAD_LETTERS,
                ),
            )
            return None
        return Entry(
            p,
            offset,
            body.key,
            body.payload,
            body.headers or {},
            body.published_at,
            deliveries,
            generation,
            body.expires_at,
        )

    # -- settlement --------------------------------------------------------------------------------

    async def ack(self, entry: Entry) -> None:
        await self._settle_entry(entry, expired=False)

    async def expire(self, entry: Entry) -> None:
        await self._settle_entry(entry, expired=True)

    async def _settle_entry(self, entry: Entry, *, expired: bool) -> None:
        p = entry.partition
        if self._owned.get(p) != entry.generation:
            return
        sync = self._client.options.acks == "sync"
        held = self._held.get(p)
        if held is not None and not sync:
            held.discard(entry.offset)  # the application is done with it, whatever comes
        batch = self._acks.get(p)
        if batch is None or batch.generation != entry.generation:
            self._flush_acks(p)
            batch = self._acks[p] = AckBatch(entry.generation)
            self._client.before_flush(self._flush_acks_hook)
        (batch.expired if expired else batch.offsets).append(entry.offset)
        if sync:
            await batch.wait()  # raises a refusal: the message is still the application's
            if held is not None and self._held.get(p) is held:
                held.discard(entry.offset)

    def _flush_acks(self, p: int) -> None:
        batch = self._acks.pop(p, None)
        if batch is None:
            return
        track = self._tracker(p, batch.generation)

        def done(outcome: Any) -> None:
            batch.done(outcome)
            track(outcome)

        self._client.run_soon(
            ORDERED_ACK,
            self._topic.part_keys(p, self._group)[2:4],
            (self._token, batch.generation, len(batch.expired), *batch.expired, *batch.offsets),
            on_done=done,
        )

    def _tracker(self, p: int, generation: int) -> OnDone:
        """Count a settlement call (ack, nack) of *p* until it is answered: a release of *p*
        waits for the count to reach 0, so that it cannot overtake the member's own
        settlements. A failed one leaves its offsets pending: this member hands them out again
        (at-least-once)."""
        self._settling[p] = self._settling.get(p, 0) + 1

        def done(outcome: Any) -> None:
            left = self._settling[p] - 1
            if left:
                self._settling[p] = left
            else:
                del self._settling[p]
                waiter = self._quiet.pop(p, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            failed = isinstance(outcome, BaseException) and not self._closed
            if failed and self._owned.get(p) == generation:
                self._recover.add(p)
                self._dirty.add(p)
                self._listener.wake()

        return done

    async def _settle(self, *partitions: int) -> None:
        """Send the pending acks of *partitions* and wait (bounded) until their settlements
        are answered."""
        waiters = []
        for p in partitions:
            self._flush_acks(p)
            if self._settling.get(p):
                waiter = self._quiet.get(p)
                if waiter is None:
                    waiter = self._quiet[p] = asyncio.get_running_loop().create_future()
                waiters.append(asyncio.shield(waiter))
        if waiters:
            await self._client.bounded(asyncio.gather(*waiters))

    def _flush_all_acks(self) -> None:
        for p in list(self._acks):
            self._flush_acks(p)

    async def nack(self, entry: Entry) -> None:
        p = entry.partition
        if self._owned.get(p) != entry.generation:
            return
        self._flush_acks(p)
        self._client.run_soon(
            ORDERED_NACK,
            self._topic.part_keys(p, self._group)[2:4],
            (self._token, entry.generation, entry.offset, entry.delivery_count + 1),
            on_done=self._tracker(p, entry.generation),
        )

    async def reject(self, entry: Entry, reason: str) -> None:
        p = entry.partition
        if self._owned.get(p) != entry.generation:
            return
        self._flush_acks(p)
        logger.warning(
            "litechan.ordered.dead_lettered",
            topic=self._topic.spec.name,
            group=self._group,
            partition=p,
            offset=entry.offset,
            key=entry.key,
            reason=reason,
        )
        await self._client.run(  # raises a refusal: the message stays where it was
            ORDERED_REJECT,
            (*self._topic.part_keys(p, self._group)[2:4], self._topic.dead_key(p, self._group)),
            (
                self._token,
                entry.generation,
                entry.offset,
                _dead_body(entry, reason),
                MAX_DEAD_LETTERS,
            ),
        )
        held = self._held.get(p)
        if held is not None:
            held.discard(entry.offset)

    async def release(self, partition: int, undelivered: Sequence[Entry]) -> None:
        self._revoking.discard(partition)
        generation = self._owned.get(partition)
        if generation is None:
            return
        await self._settle(partition)
        self._forget(partition)
        await self._release(partition, str(generation), undelivered)
        self._rebalance.set()

    async def _release(self, p: int, generation: str, undelivered: Sequence[Entry]) -> None:
        await self._client.bounded(asyncio.shield(self._release_soon(p, generation, undelivered)))

    def _release_soon(
        self, p: int, generation: str, undelivered: Sequence[Entry]
    ) -> asyncio.Future[Any]:
        """Queue the release of *p* (persistent: sent whenever the server is back, so the next
        owner need not wait for the lease to run out)."""
        topic = self._topic
        return self._client.run_later(
            ORDERED_RELEASE,
            topic.release_keys(p, self._group),
            (
                self._group,
                self._token,
                generation,
                topic.rebalance_channel(self._group),
                *_counts(undelivered, p, generation),
            ),
            persistent=True,
        )

    async def aclose(self, undelivered: Sequence[Entry]) -> None:
        if self._closed:
            return
        self._closed = True
        self._forget_reconnect()
        await self._client.bounded(self._balancing.acquire())  # let a round record its claims
        self._scope.cancel()
        self._members.pop(self._id, None)
        owned = sorted(self._owned.items())
        await self._settle(*self._acks.keys() | self._settling.keys())
        self._owned.clear()
        self._proven.clear()
        self.valid_until = math.inf
        topic = self._topic
        try:
            releases = [*((p, str(g)) for p, g in owned), *((p, "") for p in self._unsure)]
            calls = [self._release_soon(p, generation, undelivered) for p, generation in releases]
            calls.append(
                self._client.run_later(
                    ORDERED_HEARTBEAT,
                    (topic.members_key(self._group),),
                    (self._token, self._lease_ms, 1, topic.rebalance_channel(self._group)),
                    persistent=True,
                )
            )
            await self._client.bounded(asyncio.gather(*calls, return_exceptions=True))
        except LitechanError as exc:  # the broker's connection is closed: the leases run out
            logger.warning(
                "litechan.ordered.leave_failed",
                topic=self._topic.spec.name,
                group=self._group,
                consumer=self._name,
                error=str(exc),
            )
        with anyio.move_on_after(1.0):
            await self._notes.forget(self._topic.rebalance_channel(self._group), self._on_rebalance)


def _counts(undelivered: Sequence[Entry], p: int, generation: str) -> list[int]:
    """(offset, deliveries) pairs of *undelivered* entries of *p* fetched under *generation*:
    they never reached the application, so their delivery is not counted."""
    counts: list[int] = []
    for e in undelivered:
        if e.partition == p and str(e.generation) == generation:
            counts += (e.offset, e.delivery_count - 1)
    return counts


def _dead_body(entry: Entry, reason: str) -> bytes:
    return _encode(
        (
            entry.key,
            entry.payload,
            entry.headers,
            entry.partition,
            entry.offset,
            entry.delivery_count,
            reason,
        )
    )
