"""Lite topics on Redis: a list and a hash per lite topic, in slot partitions, notes to owners.

Layout 2 (see ``_scripts``): a parent's lite topics are spread over slot partitions (the
``lite_partitions`` URL option), each with a hash tag of its own (``_slots``). A lite topic is a
list of messages and a small hash, under its partition's tag: a list holding one small message
takes a few hundred bytes where a stream's first node takes 4 KB.

Publishes are coalesced per partition: ``publish()`` queues the message, and right before the
client writes its next batch one ``LITE_PUBLISH`` call per partition carries every message
queued for it, appends them, refreshes their topics' TTLs and sends each owner *one* note with
all of its messages. The note carries the messages themselves, so a subscriber owning any number
of lite topics costs O(1) per message: the member keeps what notes pushed in a small cache per
topic, and the core's fetch is served from it. A fetch reads Redis only when the cache cannot
answer (after subscribing, after lost notes, or when the reader lags more than the cache holds),
which also keeps trimming visible as a gap (G9). Acks are coalesced per partition the same way.

TTL is the server's: a publish sets PEXPIRE on both keys to 1.1 x ttl, and refreshes it only once
ttl/10 has passed (so a topic is deleted between ttl and 1.1 x ttl after its last publish, and a
burst of publishes costs one PEXPIRE per key). A member learns that a topic it
owns expired by checking, in one pipelined round trip, the topics whose TTL should have run out
by now (a heap of deadlines, each pushed back lazily when a note showed the topic alive); and
every reconnection of the notes channel reconciles every owned topic the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import secrets
import zlib
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final

import anyio
import anyio.abc
import msgspec

from ..._errors import LitechanError
from ..._log import logger
from ..._types import EndReason, LiteTopicLag, LiteTopicsStats
from ..base import (
    Fence,
    LiteBatch,
    LiteBody,
    LiteListener,
    LiteRecord,
    LiteSpec,
    Start,
    Subscription,
)
from ._client import AckBatch, Arg
from ._cluster import Commands
from ._scripts import (
    LITE_COMMIT,
    LITE_FETCH,
    LITE_KEEP,
    LITE_PUBLISH,
    LITE_SUBSCRIBE,
    LITE_UNSUBSCRIBE,
)
from ._slots import partition_tags

__all__ = [
    "NoteData",
    "NoteRevoked",
    "RedisLiteMember",
    "RedisLiteTopics",
    "decode_body",
    "decode_note",
    "encode_lite",
]


#: Records kept per owned topic from notes, at most (and never more than the parent's max_len).
CACHE_MAX: Final = 256
#: Topics checked per round trip when reconciling.
CHECK_BATCH: Final = 1000
#: Messages one publish call carries at most (a script runs alone on the server: keep it short).
PUBLISH_BATCH: Final = 512
#: Lite topics whose keys a parent keeps computed.
ROUTES_CACHED: Final = 65_536

_encode = msgspec.msgpack.Encoder().encode


class _Body(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A stored message, as the client encodes it: ``[payload, headers, published_at]``, and
    ``expires_at`` after them when it has a deadline (bodies without one stay as they were)."""

    payload: bytes
    headers: dict[str, str] | None
    published_at: float
    expires_at: float | None = None


decode_body: Final = msgspec.msgpack.Decoder(_Body).decode


class NoteData(msgspec.Struct, array_like=True, tag="D", frozen=True):
    """Messages of a lite topic the member owns, in a note: ``['D', member, generation, epoch,
    first offset, [body, ...]]`` (one record per topic and script call; the generation says
    which of the member's subscriptions)."""

    member: str
    generation: int
    epoch: str
    first: int
    bodies: list[_Body]


class NoteRevoked(msgspec.Struct, array_like=True, tag="R", frozen=True):
    """A lite topic the member owned was taken over: ``['R', member, generation]``."""

    member: str
    generation: int


#: A note on a partition channel: a msgpack array of records, decoded in one call.
decode_note: Final = msgspec.msgpack.Decoder(list[NoteData | NoteRevoked]).decode


def encode_lite(
    payload: bytes, headers: dict[str, str], published_at: float, expires_at: float | None
) -> bytes:
    """A message as it is stored: the msgpack encoding of ``(payload, headers, published_at)``,
    with ``expires_at`` after them when it has one (its offset is its place in the list)."""
    if expires_at is None:
        return _encode((payload, headers or None, published_at))
    return _encode((payload, headers or None, published_at, expires_at))


def partition_of(lite_topic: str, partitions: int) -> int:
    """The slot partition of *lite_topic* in a parent of *partitions* partitions."""
    return zlib.crc32(lite_topic.encode()) % partitions


#: A lite topic's partition, meta key and list key. A plain tuple, not a NamedTuple: CPython's
#: collector stops tracking a tuple of ints and bytes, so a publisher's route cache (tens of
#: thousands of sessions) does not lengthen its full collections.
_Route = tuple[int, bytes, bytes]


class RedisLiteTopics:
    """One parent's keys on one server; what the backend's lite-topic calls delegate to."""

    def __init__(
        self, client: Commands, namespace: str, spec: LiteSpec, broker_id: str, partitions: int
    ) -> None:
        self.client = client
        self.spec = spec
        self.partitions = partitions
        self.tags = partition_tags(f"{namespace}:l:{spec.parent}", partitions)
        self.broker_id = broker_id
        #: This broker's note channel in each partition (written in its owner tokens).
        self.channels = tuple(f"{tag}:n:{broker_id}" for tag in self.tags)
        self.ttl_ms = max(1, round(spec.ttl * 1000))
        self.cache_max = min(CACHE_MAX, spec.max_len)
        self.checked = False
        #: Per partition, per topic: its route, then body, future, body, future...
        self._pending: list[dict[str, list[Any]]] = [{} for _ in range(partitions)]
        self._routes: dict[str, _Route] = {}
        self._flush_hook = self._flush  # one bound method: the client finds it again
        #: Epoch seeds: unpredictable enough to tell incarnations apart, without a syscall each.
        self._random = random.Random(secrets.randbits(64))

    def expired_key(self, partition: int) -> str:
        """The hash of *partition*'s records settled unread (deadline passed), per group."""
        return f"{self.tags[partition]}:expired"

    def route(self, lite_topic: str) -> _Route:
        """Where *lite_topic* lives (cached: sessions publish again and again)."""
        route = self._routes.get(lite_topic)
        if route is None:
            if len(self._routes) >= ROUTES_CACHED:
                self._routes.clear()
            partition = partition_of(lite_topic, self.partitions)
            tag = self.tags[partition]
            route = self._routes[lite_topic] = (
                partition,
                f"{tag}:m:{lite_topic}".encode(),
                f"{tag}:d:{lite_topic}".encode(),
            )
        return route

    def keys(self, lite_topic: str) -> tuple[bytes, bytes]:
        """meta hash, message list."""
        route = self.route(lite_topic)
        return route[1], route[2]

    def publish(self, lite_topic: str, body: bytes) -> asyncio.Future[int]:
        """Queue *body* for the next batch; the future gets its offset."""
        client = self.client
        client.admit()
        route = self._routes.get(lite_topic) or self.route(lite_topic)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        client.pending += 1  # until the call carrying it is answered (backpressure)
        pending = self._pending[route[0]]
        queued = pending.get(lite_topic)
        if queued is None:
            pending[lite_topic] = [route, body, future]
        else:
            queued += (body, future)
        self.client.before_flush(self._flush_hook)
        return future

    def _flush(self) -> None:
        """Send what was published since the last batch: one call per partition (a hook)."""
        for index, pending in enumerate(self._pending):
            if pending:
                self._pending[index] = {}
                self._send(pending)

    def _send(self, pending: dict[str, list[Any]]) -> None:
        keys: list[Arg] = []
        args: list[Arg] = [self.ttl_ms, self.spec.max_len, f"{self._random.getrandbits(48):012x}"]
        futures: list[asyncio.Future[int]] = []
        size = 0
        for queued in pending.values():
            # queued: route, body, future, body, future...
            route = queued[0]
            count = len(queued) // 2
            if size and size + count > PUBLISH_BATCH:  # keep a script short: it runs alone
                self._call(keys, args, futures)
                keys, futures, size = [], [], 0
                args = [self.ttl_ms, self.spec.max_len, f"{self._random.getrandbits(48):012x}"]
            keys += route[1:]
            args.append(count)
            args += queued[1::2]
            futures += queued[2::2]
            size += count
        self._call(keys, args, futures)

    def _call(self, keys: list[Arg], args: list[Arg], futures: list[asyncio.Future[int]]) -> None:
        client = self.client

        def done(outcome: Any) -> None:
            client.answered(len(futures))
            if isinstance(outcome, BaseException):
                for future in futures:
                    if not future.done():
                        future.set_exception(outcome)
                return
            for future, offset in zip(futures, outcome, strict=True):
                if not future.done():
                    future.set_result(offset)

        self.client.run_soon(LITE_PUBLISH, keys, args, on_done=done)

    async def stats(self, now: float, top: int) -> LiteTopicsStats:
        client = self.client
        metas: list[bytes] = []
        for tag in self.tags:
            metas.extend(await client.scan(f"{tag}:m:*"))
        topics = 0
        subscriptions = 0
        backlog = 0
        lags: list[LiteTopicLag] = []
        oldest_queries: list[tuple[int, bytes, int]] = []  # (lag index, list key, index)
        replies = await client.many(
            cmd for meta in metas for cmd in (("HGETALL", meta), ("LLEN", _list_key(meta)))
        )
        infos: list[dict[bytes, bytes] | None] = []
        owned: list[tuple[int, bytes, bytes]] = []  # (meta index, group, its owner's commit key)
        for i, meta in enumerate(metas):
            fields, length = replies[2 * i], replies[2 * i + 1]
            if isinstance(fields, BaseException) or isinstance(length, BaseException):
                infos.append(None)
                continue
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            infos.append(info)
            for k, v in info.items():
                if k[:2] == b"o:":
                    member, generation, _ = v.split(b"|", 2)
                    key = meta.replace(b"}:m:", b"}:c:", 1) + b":" + member + b":" + generation
                    owned.append((i, k[2:], key))
        # An owner commits into its own key: its value is the group's position meanwhile.
        values = await client.many(("GET", key) for _, _, key in owned)
        for (i, group_field, _), value in zip(owned, values, strict=True):
            folded = infos[i]
            if folded is not None and isinstance(value, bytes):
                committed, _, acked_csv = value.partition(b"|")
                folded[b"c:" + group_field] = committed
                folded[b"a:" + group_field] = acked_csv
        for i, meta in enumerate(metas):
            known = infos[i]
            if known is None:
                continue
            info = known
            length = replies[2 * i + 1]
            name = meta.split(b"}:m:", 1)[1].decode()
            owners = {
                k[2:].decode(): v.split(b"|", 2)[2].decode()
                for k, v in info.items()
                if k[:2] == b"o:"
            }
            subscriptions += len(owners)
            if b"e" not in info:
                continue
            topics += 1
            first = int(info.get(b"f", 1))
            last = first + int(length) - 1
            groups = {k[2:].decode() for k in info if k[:2] == b"c:"} | owners.keys()
            for group in sorted(groups):
                committed = info.get(b"c:" + group.encode(), b"")
                base = max(int(committed) if committed else 0, first - 1)
                acked = {int(o) for o in info.get(b"a:" + group.encode(), b"").split(b",") if o}
                behind = max(0, last - base) - sum(1 for o in acked if o > base)
                oldest = base + 1
                while oldest in acked:
                    oldest += 1
                backlog += behind
                if behind:
                    oldest_queries.append((len(lags), _list_key(meta), oldest - first))
                lags.append(LiteTopicLag(name, group, behind, owners.get(group), None))
        expired: dict[str, int] = {}
        counters = await client.many(
            ("HGETALL", self.expired_key(p)) for p in range(len(self.tags))
        )
        for counter in counters:
            if isinstance(counter, BaseException):
                raise counter
            for group, count in zip(counter[::2], counter[1::2], strict=True):
                expired[group.decode()] = expired.get(group.decode(), 0) + int(count)
        if top <= 0:
            return LiteTopicsStats(topics, subscriptions, backlog, [], expired)
        ranked = sorted(range(len(lags)), key=lambda i: -lags[i].backlog)[:top]
        wanted = set(ranked)
        queries = [q for q in oldest_queries if q[0] in wanted]
        found = await client.many(("LINDEX", key, index) for _, key, index in queries)
        for (index, _, _), element in zip(queries, found, strict=True):
            if isinstance(element, bytes):
                try:
                    published_at = decode_body(element).published_at
                except msgspec.DecodeError:
                    continue
                lag = lags[index]
                lags[index] = LiteTopicLag(
                    lag.lite_topic, lag.group, lag.backlog, lag.owner, now - published_at
                )
        return LiteTopicsStats(topics, subscriptions, backlog, [lags[i] for i in ranked], expired)


def _list_key(meta: bytes) -> bytes:
    tag, name = meta.split(b"}:m:", 1)
    return tag + b"}:d:" + name


#: The acks above the watermark of every owner that has none (most of them): one shared empty
#: set, never changed (an owner gets a set of its own at its first such ack), so that tens of
#: thousands of owned topics do not each hold an object for CPython's collector to walk.
_NO_ACKS: Final[set[int]] = set()


class _Own:
    """What a member knows of one lite topic it owns."""

    __slots__ = (
        "acked",
        "cache",
        "commit_key",
        "committed",
        "epoch",
        "generation",
        "hi",
        "seen",
        "token",
    )

    def __init__(self, generation: int, token: str, commit_key: bytes) -> None:
        self.generation = generation
        self.token = token
        self.commit_key = commit_key
        self.epoch = ""  # "" until the topic exists
        self.hi = 0  # highest offset known to exist
        # Records pushed by notes, contiguous, up to hi; made when a note has to be kept.
        self.cache: deque[LiteRecord] | None = None
        self.seen = 0.0  # when a note last showed the topic alive (loop time)
        # The group's position as this owner makes it (it alone acks the topic): every offset
        # up to `committed` is settled, and so are those in `acked`.
        self.committed = 0
        self.acked: set[int] = _NO_ACKS  # replaced by a set of its own at the first ack above

    def settle(self, offset: int) -> bool:
        """Count *offset* as acked; False when it was settled already."""
        committed = self.committed
        if offset == committed + 1:
            committed = offset
            acked = self.acked
            if acked:
                while committed + 1 in acked:
                    committed += 1
                    acked.remove(committed)
            self.committed = committed
            return True
        if offset > committed and offset not in self.acked:
            if self.acked is _NO_ACKS:
                self.acked = {offset}
            else:
                self.acked.add(offset)
            return True
        return False

    def passed(self, first: int) -> None:
        """Offsets below *first* are gone (trimmed): they count as settled."""
        if self.committed < first - 1:
            self.committed = first - 1
            self.acked = {offset for offset in self.acked if offset >= first} or _NO_ACKS
            while self.committed + 1 in self.acked:
                self.committed += 1
                self.acked.remove(self.committed)

    def commit_value(self) -> bytes:
        """The commit key's value: ``COMMITTED`` or ``COMMITTED|ACKED,ACKED...``."""
        if not self.acked:
            return b"%d" % self.committed
        return b"%d|%s" % (self.committed, ",".join(map(str, sorted(self.acked))).encode())


class RedisLiteMember:
    """A subscriber's attachment to a parent on Redis (implements ``LiteMember``)."""

    def __init__(
        self,
        topics: RedisLiteTopics,
        group: str,
        name: str,
        member_id: str,
        listener: LiteListener,
        members: dict[str, RedisLiteMember],
        task_group: anyio.abc.TaskGroup,
        fence: Fence,
    ) -> None:
        # Note addresses rely on this shape: a short id that starts with the broker's.
        assert member_id.startswith(topics.broker_id + "."), member_id
        assert len(member_id) < 32, member_id
        self._topics = topics
        self._client = topics.client
        self._group = group
        self._name = name
        self._id = member_id
        self._listener = listener
        self._members = members
        self._owned: dict[str, _Own] = {}
        #: Which topic each generation owns: notes name a subscription by its generation.
        self._topic_of: dict[int, str] = {}
        self._generations = itertools.count(1)
        self._acks: dict[str, AckBatch] = {}
        self._flush_acks_hook = self._flush_all_acks
        self._deadlines: list[tuple[float, str]] = []
        self._timer = anyio.Event()
        self._closed = False
        self._ttl = topics.spec.ttl
        self._now = asyncio.get_running_loop().time  # anyio.current_time(), without its lookups
        self._sync_acks = self._client.options.acks == "sync"
        self.fence = fence
        members[member_id] = self
        task_group.start_soon(self._expiry_loop)

    def _token(self, generation: int) -> str:
        return f"{self._id}|{generation}|{self._name}"

    def _commit_key(self, lite_topic: str, generation: int) -> bytes:
        """``{TAG}:c:TOPIC:MEMBER:GENERATION``: where this subscription commits."""
        meta = self._topics.route(lite_topic)[1]
        return meta.replace(b"}:m:", b"}:c:", 1) + f":{self._id}:{generation}".encode()

    def _address(self, generation: int) -> bytes:
        """Where publishes send this subscription's messages: the msgpack start of its records,
        ``['D', member, generation`` (the member id starts with this broker's id, which names
        the broker's note channel in each partition)."""
        return b"\x96\xa1D" + _encode(self._id) + _encode(generation)

    # -- ownership -------------------------------------------------------------------------------

    async def subscribe(self, lite_topic: str, start: Start) -> Subscription:
        await self._settle(lite_topic)
        generation = next(self._generations)
        token = self._token(generation)
        own = _Own(generation, token, self._commit_key(lite_topic, generation))
        self._owned[lite_topic] = own  # before the reply: notes may overtake it
        self._topic_of[generation] = lite_topic
        try:
            reply = await self._client.run(
                LITE_SUBSCRIBE,
                (*self._topics.keys(lite_topic), own.commit_key),
                (
                    self._group,
                    token,
                    str(start),
                    self._topics.ttl_ms,
                    self._address(generation),
                ),
            )
        except BaseException:
            # It may have run (its reply lost in a cut) or run later (cancelled while queued):
            # nothing of it may stay, here or on the server.
            if self._owned.get(lite_topic) is own:
                self._forget(lite_topic)
            self._give_up(lite_topic, token, own.commit_key)
            raise
        epoch, start_at, last, pttl, acked = reply
        next_offset = int(start_at)
        if self._owned.get(lite_topic) is not own:
            return Subscription(generation, next_offset)
        own.committed = next_offset - 1
        own.acked = {int(offset) for offset in acked.split(b",") if offset} or _NO_ACKS
        if not own.epoch:
            own.epoch = epoch.decode()
        own.hi = max(own.hi, int(last))
        seconds = max(0, int(pttl)) / 1000
        self._track(lite_topic, seconds if own.epoch else seconds / 2)
        # Nothing to read yet (a new session, usually): the notes will say when there is.
        return Subscription(generation, next_offset, backlog=own.hi >= next_offset)

    def _give_up(
        self, lite_topic: str, token: str, commit_key: bytes
    ) -> asyncio.Future[Any] | None:
        """Queue the removal of *token*'s ownership of *lite_topic* (fenced by the token, so it
        never touches a later owner; persistent: it goes out whenever the server is back)."""
        with contextlib.suppress(LitechanError):  # the broker is closed: nothing to tell
            return self._client.run_later(
                LITE_UNSUBSCRIBE,
                (self._topics.keys(lite_topic)[0], commit_key),
                (self._group, token),
                persistent=True,
            )
        return None

    async def _settle(self, lite_topic: str) -> None:
        """Send *lite_topic*'s pending acks and wait for their answer: an ownership change of
        this member must not overtake its own acks, or they would be fenced (a commit refused
        with a transient error is sent again after the commands queued behind it ran)."""
        batch = self._flush_acks(lite_topic)
        if batch is not None:
            with contextlib.suppress(LitechanError):  # a failed ack is logged by the client
                await self._client.bounded(batch.wait())

    async def unsubscribe(self, lite_topic: str) -> None:
        await self._settle(lite_topic)
        # The release is not waited for: it is persistent, and fenced by its token, so it never
        # touches a later subscription even if it reaches the server after one.
        own = self._forget(lite_topic)
        if own is not None:
            self._give_up(lite_topic, own.token, own.commit_key)

    async def aclose(self) -> None:
        self._closed = True
        self._members.pop(self._id, None)
        self._timer.set()
        batches = list(self._acks.values())
        self._flush_all_acks()
        if batches:
            waits = [batch.wait() for batch in batches]
            await self._client.bounded(asyncio.gather(*waits, return_exceptions=True))
        owned, self._owned = self._owned, {}
        self._topic_of.clear()
        calls = [self._give_up(topic, own.token, own.commit_key) for topic, own in owned.items()]
        pending = [call for call in calls if call is not None]
        if pending:
            await self._client.bounded(asyncio.gather(*pending, return_exceptions=True))

    def _end(self, lite_topic: str, reason: EndReason) -> None:
        if self._forget(lite_topic) is not None:
            self._acks.pop(lite_topic, None)
            log = logger.info if reason is EndReason.REVOKED else logger.debug
            log(
                f"litechan.lite.{reason.value}",
                parent=self._topics.spec.parent,
                lite_topic=lite_topic,
                group=self._group,
                subscriber=self._name,
            )
            self._listener.on_end(lite_topic, reason)

    # -- notes (called by the backend's pub/sub reader) ------------------------------------------

    def _forget(self, lite_topic: str) -> _Own | None:
        """Stop owning *lite_topic* here; return what was known of it."""
        own = self._owned.pop(lite_topic, None)
        if own is not None:
            self._topic_of.pop(own.generation, None)
        return own

    def on_records(self, generation: int, epoch: str, first: int, stored: list[_Body]) -> None:
        """A note brought the messages *first*, *first* + 1, ... of the topic *generation*
        owns."""
        lite_topic = self._topic_of.get(generation)
        if lite_topic is None:
            return
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation:
            return
        if own.epoch and own.epoch != epoch:
            return  # a note of an incarnation we no longer own (cannot happen; be safe)
        own.epoch = epoch
        own.seen = self._now()
        last = first + len(stored) - 1
        if last <= own.hi:
            return  # known already (read remotely meanwhile)
        bodies: list[LiteBody] = [
            (body.payload, body.headers, body.published_at, body.expires_at) for body in stored
        ]
        cache = own.cache
        if first == own.hi + 1 and not cache:
            # The subscriber takes them at once when it reads right here: nothing to keep.
            if self._listener.on_records(lite_topic, generation, epoch, first, bodies):
                own.hi = last
                return
        elif first > own.hi + 1 and cache:
            cache.clear()  # notes were lost: what is missing is read from the list
        if cache is None:
            cache = own.cache = deque()
        offset = first
        for payload, headers, published_at, expires_at in bodies:
            if offset > own.hi:
                cache.append((offset, payload, headers, published_at, expires_at))
            offset += 1
        while len(cache) > self._topics.cache_max:
            cache.popleft()
        own.hi = last
        self._listener.on_data(lite_topic)

    def on_revoked(self, generation: int) -> None:
        lite_topic = self._topic_of.get(generation)
        if lite_topic is None:
            return
        own = self._owned.get(lite_topic)
        if own is not None and own.generation == generation:
            self._end(lite_topic, EndReason.REVOKED)

    # -- reading ---------------------------------------------------------------------------------

    async def fetch(
        self, lite_topic: str, generation: int, from_offset: int, max_records: int
    ) -> LiteBatch:
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation:
            return LiteBatch("", (), from_offset, ended=EndReason.REVOKED)
        cache = own.cache
        while cache and cache[0][0] < from_offset:
            cache.popleft()
        if cache and cache[0][0] == from_offset:
            if len(cache) <= max_records:
                records: list[LiteRecord] = list(cache)
                own.cache = None
            else:
                records = [cache.popleft() for _ in range(max_records)]
            next_offset = records[-1][0] + 1
            return LiteBatch(own.epoch, records, next_offset, next_offset <= own.hi)
        if from_offset > own.hi:
            return LiteBatch(own.epoch, (), from_offset)
        return await self._fetch_remote(lite_topic, own, from_offset, max_records)

    async def _fetch_remote(
        self, lite_topic: str, own: _Own, from_offset: int, max_records: int
    ) -> LiteBatch:
        self._flush_acks(lite_topic)
        reply = await self._client.run(
            LITE_FETCH,
            self._topics.keys(lite_topic),
            (self._group, own.token, from_offset, max_records),
        )
        if self._owned.get(lite_topic) is not own:
            return LiteBatch("", (), from_offset, ended=EndReason.REVOKED)
        if reply[0] == b"R":
            epoch = reply[1].decode()
            reason = EndReason.EXPIRED if own.epoch and epoch != own.epoch else EndReason.REVOKED
            self._forget(lite_topic)
            return LiteBatch("", (), from_offset, ended=reason)
        epoch, last, first, elements = reply
        epoch = epoch.decode()
        if not epoch:
            return LiteBatch("", (), from_offset)
        if own.epoch and epoch != own.epoch:
            self._forget(lite_topic)
            return LiteBatch("", (), from_offset, ended=EndReason.EXPIRED)
        own.epoch = epoch
        last, first = int(last), int(first)
        own.hi = max(own.hi, last)
        acked = own.acked  # acks of the group above its watermark are skipped
        gap = 0
        if from_offset < first:
            gap = first - from_offset - sum(1 for o in acked if from_offset <= o < first)
            from_offset = first
        own.passed(first)
        records: list[LiteRecord] = []
        for offset, element in enumerate(elements, from_offset):
            if offset in acked:
                continue
            record = self._decode(lite_topic, offset, element)
            if record is None:
                self._ack_owned(lite_topic, own, offset)
            else:
                records.append(record)
        next_offset = from_offset + len(elements)
        return LiteBatch(epoch, records, next_offset, next_offset <= last, gap)

    def _decode(self, lite_topic: str, offset: int, element: bytes) -> LiteRecord | None:
        try:
            body = decode_body(element)
        except msgspec.DecodeError as exc:
            problem = str(exc)
        else:
            return (offset, body.payload, body.headers, body.published_at, body.expires_at)
        logger.warning(
            "litechan.lite.corrupt_entry",
            parent=self._topics.spec.parent,
            lite_topic=lite_topic,
            offset=offset,
            error=problem,
            element=element[:64],
            hint="an element not written by litechan was skipped (and settled)",
        )
        return None

    # -- acks --------------------------------------------------------------------------------------

    def ack(
        self, lite_topic: str, epoch: str, offset: int, generation: int
    ) -> Awaitable[None] | None:
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation or (own.epoch and epoch != own.epoch):
            return None  # fenced locally; the commit key fences against other processes
        batch = self._ack_owned(lite_topic, own, offset)
        return batch.wait() if self._sync_acks and batch is not None else None

    def expire(
        self, lite_topic: str, epoch: str, offset: int, generation: int
    ) -> Awaitable[None] | None:
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation or (own.epoch and epoch != own.epoch):
            return None
        batch = self._ack_owned(lite_topic, own, offset)
        if batch is None:
            return None
        batch.expired.append(offset)  # counted with the commit, if it is still the owner's
        return batch.wait() if self._sync_acks else None

    def _ack_owned(self, lite_topic: str, own: _Own, offset: int) -> AckBatch | None:
        """Settle *offset* here and queue the new commit for the next batch (None: it was
        settled already)."""
        if not own.settle(offset):
            return None
        batch = self._acks.get(lite_topic)
        if batch is None or batch.generation != own.generation:
            self._flush_acks(lite_topic)
            batch = self._acks[lite_topic] = AckBatch(own.generation)
            self._client.before_flush(self._flush_acks_hook)
        return batch

    def _flush_acks(self, lite_topic: str) -> AckBatch | None:
        """Send *lite_topic*'s pending commit as one call; return its batch (None: nothing)."""
        batch = self._acks.pop(lite_topic, None)
        if batch is not None:
            self._send_acks([(lite_topic, batch)])
        return batch

    def _flush_all_acks(self) -> None:
        """Send every pending commit: one call per partition (a hook, right before a batch)."""
        if not self._acks:
            return
        acks, self._acks = self._acks, {}
        by_partition: dict[int, list[tuple[str, AckBatch]]] = {}
        for lite_topic, batch in acks.items():
            partition = self._topics.route(lite_topic)[0]
            by_partition.setdefault(partition, []).append((lite_topic, batch))
        for batches in by_partition.values():
            self._send_acks(batches)

    def _send_acks(self, batches: list[tuple[str, AckBatch]]) -> None:
        keys: list[Arg] = []
        values: list[Arg] = []
        sent: list[AckBatch] = []
        partition = -1
        for lite_topic, batch in batches:
            own = self._owned.get(lite_topic)
            if own is None or own.generation != batch.generation:
                batch.done(None)  # ownership ended here: the acks are no-ops (G4)
                continue
            keys.append(own.commit_key)
            values.append(own.commit_value())
            sent.append(batch)
            if batch.expired:
                partition = self._topics.route(lite_topic)[0]
        if not sent:
            return
        if partition >= 0:  # count the expired records with the commits (one slot)
            keys.append(self._topics.expired_key(partition))
            values.append(self._group)
            values.extend(len(batch.expired) for batch in sent)

        def done(outcome: Any) -> None:
            for batch in sent:
                batch.done(outcome if isinstance(outcome, BaseException) else None)

        self._client.run_soon(LITE_COMMIT, keys, values, on_done=done)

    # -- expiry and reconciliation -----------------------------------------------------------------

    def _track(self, lite_topic: str, seconds: float) -> None:
        deadline = anyio.current_time() + seconds
        deadlines = self._deadlines
        heapq.heappush(deadlines, (deadline, lite_topic))
        if deadlines[0][1] == lite_topic:
            self._timer.set()

    async def _expiry_loop(self) -> None:
        while not self._closed:
            deadlines = self._deadlines
            if deadlines:
                with anyio.move_on_after(max(0.0, deadlines[0][0] - anyio.current_time())):
                    await self._timer.wait()
            else:
                await self._timer.wait()
            self._timer = anyio.Event()
            now = anyio.current_time()
            due: list[str] = []
            while deadlines and deadlines[0][0] <= now and len(due) < CHECK_BATCH:
                _, topic = heapq.heappop(deadlines)
                own = self._owned.get(topic)
                if own is None:
                    continue
                if own.seen and own.seen + self._ttl > now:
                    heapq.heappush(deadlines, (own.seen + self._ttl, topic))
                    continue
                due.append(topic)
            if due:
                try:
                    await self._check(due)
                except Exception as exc:  # never die of a reply: check these again soon
                    logger.warning("litechan.lite.check_failed", error=str(exc))
                    for topic in due:
                        if topic in self._owned:
                            self._track(topic, 1.0)

    async def reconcile(self) -> None:
        """Check every owned topic against the server (after the notes channel reconnected)."""
        topics = list(self._owned)
        for i in range(0, len(topics), CHECK_BATCH):
            await self._check(topics[i : i + CHECK_BATCH])
        for topic in topics:
            if topic in self._owned:
                self._listener.on_data(topic)  # notes may have been lost: read what is there

    def lost_everything(self) -> None:
        """The server came back empty: every owned incarnation is gone."""
        for topic in list(self._owned):
            self._end(topic, EndReason.EXPIRED)

    async def _check(self, topics: list[str]) -> None:
        live = [(t, own) for t in topics if (own := self._owned.get(t)) is not None]
        replies = await self._client.run_many(
            LITE_KEEP,
            (
                (
                    (*self._topics.keys(t), own.commit_key),
                    (
                        self._group,
                        own.token,
                        self._topics.ttl_ms,
                        own.epoch,
                        self._address(own.generation),
                    ),
                )
                for t, own in live
            ),
        )
        for (topic, own), reply in zip(live, replies, strict=True):
            if self._owned.get(topic) is not own:
                continue
            if isinstance(reply, BaseException):
                self._track(topic, 1.0)  # try again soon
                continue
            owned, epoch, pttl, last = int(reply[0]), reply[1].decode(), int(reply[2]), reply[3]
            if not owned:
                gone = own.epoch and epoch != own.epoch
                self._end(topic, EndReason.EXPIRED if gone else EndReason.REVOKED)
            elif own.epoch and epoch != own.epoch:
                self._end(topic, EndReason.EXPIRED)
            else:
                if epoch and not own.epoch:
                    own.epoch = epoch
                if int(last) > own.hi:  # notes were lost: what they carried is read remotely
                    own.hi = int(last)
                    own.cache = None
                    self._listener.on_data(topic)
                if own.epoch:
                    self._track(topic, max(pttl, 1) / 1000 + 0.005)
                else:  # waiting for the first publish: renew well before the record lapses
                    self._track(topic, max(pttl, 2) / 2000)
