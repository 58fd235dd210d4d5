"""Lite topics on Redis: one stream and one meta hash per lite topic, notes to the owner.

Per message a subscriber costs O(1) whatever number of lite topics it owns: the publish script
sends the message itself to the owner's broker channel (one PUBLISH per owning group), and the
member keeps the messages pushed that way in a small per-topic cache, so a fetch that follows
the notes is served without a round trip. A fetch reads Redis only when the cache cannot answer
(after subscribing, or when notes were lost or the subscriber fell behind), which also keeps
trimming visible as a gap (G9).

TTL is the server's: each publish sets PEXPIRE on both keys. A member learns that a topic it
owns expired by checking, in one pipelined round trip, the topics whose TTL should have run out
by now (a heap of deadlines, each pushed back lazily when a note showed the topic alive); and
every reconnection of the notes channel reconciles every owned topic the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc
import msgspec
import structlog

from ..._errors import LitechanError
from ..._types import EndReason, LiteTopicLag, LiteTopicsStats
from ..base import Fence, LiteBatch, LiteListener, LiteRecord, LiteSpec, Start, Subscription
from ._client import AckBatch, Client, entry_body
from ._scripts import (
    LITE_ACK,
    LITE_FETCH,
    LITE_KEEP,
    LITE_PUBLISH,
    LITE_SUBSCRIBE,
    LITE_UNSUBSCRIBE,
)

__all__ = ["LiteBody", "RedisLiteMember", "RedisLiteTopics", "decode_lite", "encode_lite"]

logger = structlog.get_logger("litechan")

#: The body of a lite-topic message in its stream entry: payload, headers (None if empty) and
#: published_at.
LiteBody = tuple[bytes, dict[str, str] | None, float]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(LiteBody).decode

#: Records kept per owned topic from notes, at most (and never more than the parent's max_len).
CACHE_MAX: Final = 256
#: Topics checked per round trip when reconciling.
CHECK_BATCH: Final = 1000


def encode_lite(payload: bytes, headers: dict[str, str], published_at: float) -> bytes:
    return _encode((payload, headers or None, published_at))


def decode_lite(body: bytes) -> LiteBody:
    decoded: LiteBody = _decode(body)
    return decoded


class RedisLiteTopics:
    """One parent's keys on one server; what the backend's lite-topic calls delegate to."""

    def __init__(self, client: Client, namespace: str, spec: LiteSpec, channel: str) -> None:
        self.client = client
        self.spec = spec
        self.channel = channel
        self.prefix = f"{namespace}:l:{spec.parent}:"
        self.ttl_ms = max(1, round(spec.ttl * 1000))
        self.cache_max = min(CACHE_MAX, spec.max_len)
        self.checked = False

    def keys(self, lite_topic: str) -> tuple[str, str]:
        tag = f"{{{self.prefix}{lite_topic}}}"
        return tag + ":s", tag + ":m"

    async def publish(self, lite_topic: str, body: bytes) -> int:
        reply = await self.client.run(
            LITE_PUBLISH,
            self.keys(lite_topic),
            (body, self.ttl_ms, self.spec.max_len, secrets.token_hex(8), lite_topic),
        )
        return int(reply[0])

    async def stats(self, now: float, top: int) -> LiteTopicsStats:
        client = self.client
        metas: list[bytes] = []
        cursor: Any = 0
        pattern = f"{{{self.prefix}*}}:m"
        while True:
            cursor, found = await client.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            metas.extend(found)
            if int(cursor) == 0:
                break
        topics = 0
        subscriptions = 0
        backlog = 0
        lags: list[LiteTopicLag] = []
        oldest_queries: list[tuple[int, str, int]] = []  # (lag index, stream key, offset)
        cut = len(self.prefix) + 1
        replies = await client.many(
            cmd for meta in metas for cmd in (("HGETALL", meta), ("XLEN", meta[:-1] + b"s"))
        )
        for i, meta in enumerate(metas):
            fields, length = replies[2 * i], replies[2 * i + 1]
            if isinstance(fields, BaseException) or isinstance(length, BaseException):
                continue
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            name = meta[cut:-3].decode()
            owners = {
                k[2:].decode(): v.split(b"|")[3].decode() for k, v in info.items() if k[:2] == b"o:"
            }
            subscriptions += len(owners)
            if b"e" not in info:
                continue
            topics += 1
            last = int(info.get(b"n", 0))
            first = last - int(length) + 1
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
                    oldest_queries.append((len(lags), meta[:-1].decode() + "s", oldest))
                lags.append(LiteTopicLag(name, group, behind, owners.get(group), None))
        if top <= 0:
            return LiteTopicsStats(topics, subscriptions, backlog, [])
        ranked = sorted(range(len(lags)), key=lambda i: -lags[i].backlog)[:top]
        wanted = set(ranked)
        queries = [q for q in oldest_queries if q[0] in wanted]
        entries = await client.many(("XRANGE", key, f"0-{o}", f"0-{o}") for _, key, o in queries)
        for (index, _, _), found in zip(queries, entries, strict=True):
            if isinstance(found, list) and found:
                try:
                    published_at = decode_lite(dict(_pairs(found[0][1]))[b"b"])[2]
                except (msgspec.DecodeError, KeyError):
                    continue
                lag = lags[index]
                lags[index] = LiteTopicLag(
                    lag.lite_topic, lag.group, lag.backlog, lag.owner, now - published_at
                )
        return LiteTopicsStats(topics, subscriptions, backlog, [lags[i] for i in ranked])


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


class _Own:
    """What a member knows of one lite topic it owns."""

    __slots__ = ("cache", "epoch", "generation", "hi", "seen", "token")

    def __init__(self, generation: int, token: str) -> None:
        self.generation = generation
        self.token = token
        self.epoch = ""  # "" until the topic exists
        self.hi = 0  # highest offset known to exist
        self.cache: deque[LiteRecord] = deque()  # records pushed by notes, contiguous, up to hi
        self.seen = 0.0  # when a note last showed the topic alive (loop time)


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
        self._topics = topics
        self._client = topics.client
        self._group = group
        self._name = name
        self._id = member_id
        self._listener = listener
        self._members = members
        self._owned: dict[str, _Own] = {}
        self._generations = itertools.count(1)
        self._acks: dict[str, AckBatch] = {}
        self._hooked = False
        self._deadlines: list[tuple[float, str]] = []
        self._timer = anyio.Event()
        self._closed = False
        self._ttl = topics.spec.ttl
        self.fence = fence
        members[member_id] = self
        task_group.start_soon(self._expiry_loop)

    def _token(self, generation: int) -> str:
        return f"{self._topics.channel}|{self._id}|{generation}|{self._name}"

    # -- ownership -------------------------------------------------------------------------------

    async def subscribe(self, lite_topic: str, start: Start) -> Subscription:
        await self._settle(lite_topic)
        generation = next(self._generations)
        token = self._token(generation)
        own = _Own(generation, token)
        self._owned[lite_topic] = own  # before the reply: notes may overtake it
        try:
            reply = await self._client.run(
                LITE_SUBSCRIBE,
                self._topics.keys(lite_topic),
                (self._group, token, str(start), self._topics.ttl_ms, lite_topic),
            )
        except BaseException:
            # It may have run (its reply lost in a cut) or run later (cancelled while queued):
            # nothing of it may stay, here or on the server.
            if self._owned.get(lite_topic) is own:
                del self._owned[lite_topic]
            self._give_up(lite_topic, token)
            raise
        epoch, next_offset, last, pttl = reply
        if self._owned.get(lite_topic) is own:
            if not own.epoch:
                own.epoch = epoch.decode()
            own.hi = max(own.hi, int(last))
            seconds = max(0, int(pttl)) / 1000
            self._track(lite_topic, seconds if own.epoch else seconds / 2)
        return Subscription(generation, int(next_offset))

    def _give_up(self, lite_topic: str, token: str) -> asyncio.Future[Any] | None:
        """Queue the removal of *token*'s ownership of *lite_topic* (fenced by the token, so it
        never touches a later owner; persistent: it goes out whenever the server is back)."""
        with contextlib.suppress(LitechanError):  # the broker is closed: nothing to tell
            return self._client.run_later(
                LITE_UNSUBSCRIBE,
                self._topics.keys(lite_topic)[1:],
                (self._group, token),
                persistent=True,
            )
        return None

    async def _settle(self, lite_topic: str) -> None:
        """Send *lite_topic*'s pending acks and wait for their answer: an ownership change of
        this member must not overtake its own acks, or they would be fenced."""
        batch = self._flush_acks(lite_topic)
        if batch is not None:
            with contextlib.suppress(LitechanError):  # a failed ack is logged by the client
                await self._client.bounded(batch.wait())

    async def unsubscribe(self, lite_topic: str) -> None:
        await self._settle(lite_topic)
        own = self._owned.pop(lite_topic, None)
        if own is not None:
            call = self._give_up(lite_topic, own.token)
            if call is not None:
                await self._client.bounded(asyncio.shield(call))

    async def aclose(self) -> None:
        self._closed = True
        self._members.pop(self._id, None)
        self._timer.set()
        acks = [batch.wait() for topic in list(self._acks) if (batch := self._flush_acks(topic))]
        if acks:
            await self._client.bounded(asyncio.gather(*acks, return_exceptions=True))
        owned, self._owned = self._owned, {}
        calls = [self._give_up(topic, own.token) for topic, own in owned.items()]
        pending = [call for call in calls if call is not None]
        if pending:
            await self._client.bounded(asyncio.gather(*pending, return_exceptions=True))

    def _end(self, lite_topic: str, reason: EndReason) -> None:
        if self._owned.pop(lite_topic, None) is not None:
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

    def on_data(
        self, lite_topic: str, generation: int, epoch: str, offset: int, body: bytes
    ) -> None:
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation:
            return
        if own.epoch and own.epoch != epoch:
            return  # a note of an incarnation we no longer own (cannot happen; be safe)
        own.epoch = epoch
        own.seen = anyio.current_time()
        cache = own.cache
        if offset == own.hi + 1:
            try:
                payload, headers, published_at = decode_lite(body)
            except msgspec.DecodeError:
                cache.clear()  # let the fetch read it from the stream and dead-letter it
            else:
                cache.append((offset, payload, headers, published_at))
                if len(cache) > self._topics.cache_max:
                    cache.popleft()
        elif offset > own.hi + 1:
            cache.clear()  # notes were lost: what is missing is read from the stream
        own.hi = max(own.hi, offset)
        self._listener.on_data(lite_topic)

    def on_revoked(self, lite_topic: str, generation: int) -> None:
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
                cache.clear()
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
            self._owned.pop(lite_topic, None)
            return LiteBatch("", (), from_offset, ended=reason)
        epoch, last, first, acked_csv, entries = reply
        epoch = epoch.decode()
        if not epoch:
            return LiteBatch("", (), from_offset)
        if own.epoch and epoch != own.epoch:
            self._owned.pop(lite_topic, None)
            return LiteBatch("", (), from_offset, ended=EndReason.EXPIRED)
        own.epoch = epoch
        last, first = int(last), int(first)
        own.hi = max(own.hi, last)
        acked = {int(o) for o in acked_csv.split(b",") if o} if acked_csv else set()
        gap = 0
        if from_offset < first:
            gap = first - from_offset - sum(1 for o in acked if from_offset <= o < first)
            from_offset = first
        records: list[LiteRecord] = []
        next_offset = from_offset
        for entry_id, fields in entries:
            offset = int(entry_id.split(b"-")[1])
            next_offset = offset + 1
            if offset in acked:
                continue
            record = self._decode(lite_topic, offset, fields)
            if record is None:
                self._queue_ack(lite_topic, epoch, own.generation, offset)
            else:
                records.append(record)
        return LiteBatch(epoch, records, next_offset, next_offset <= last, gap)

    def _decode(self, lite_topic: str, offset: int, fields: list[bytes]) -> LiteRecord | None:
        try:
            payload, headers, published_at = decode_lite(entry_body(fields))
        except msgspec.DecodeError as exc:
            logger.warning(
                "litechan.lite.corrupt_entry",
                parent=self._topics.spec.parent,
                lite_topic=lite_topic,
                offset=offset,
                error=str(exc),
                fields=[f[:64] for f in fields[:8]],
                hint="an entry not written by litechan was skipped (and settled)",
            )
            return None
        return (offset, payload, headers, published_at)

    # -- acks --------------------------------------------------------------------------------------

    async def ack(self, lite_topic: str, epoch: str, offset: int, generation: int) -> None:
        own = self._owned.get(lite_topic)
        if own is None or own.generation != generation:
            return  # fenced locally; the script fences against other processes
        batch = self._queue_ack(lite_topic, epoch, generation, offset)
        if self._client.options.acks == "sync":
            await batch.wait()

    def _queue_ack(self, lite_topic: str, epoch: str, generation: int, offset: int) -> AckBatch:
        batch = self._acks.get(lite_topic)
        if batch is None or batch.tag != epoch or batch.generation != generation:
            self._flush_acks(lite_topic)
            batch = self._acks[lite_topic] = AckBatch(generation, epoch)
            if not self._hooked:
                self._hooked = True
                self._client.before_flush(self._flush_all_acks)
        batch.offsets.append(offset)
        return batch

    def _flush_acks(self, lite_topic: str) -> AckBatch | None:
        """Send *lite_topic*'s pending acks as one call; return their batch (None: nothing)."""
        batch = self._acks.pop(lite_topic, None)
        if batch is None:
            return None
        own = self._owned.get(lite_topic)
        token = own.token if own is not None and own.generation == batch.generation else None
        if token is None:
            batch.done(None)  # ownership ended here: the acks are no-ops (G4)
            return batch
        self._client.run_soon(
            LITE_ACK,
            self._topics.keys(lite_topic),
            (self._group, token, batch.tag, *batch.offsets),
            on_done=batch.done,
        )
        return batch

    def _flush_all_acks(self) -> None:
        self._hooked = False
        for topic in list(self._acks):
            self._flush_acks(topic)

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
                    self._topics.keys(t)[1:],
                    (self._group, own.token, self._topics.ttl_ms, own.epoch),
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
                    own.cache.clear()
                    self._listener.on_data(topic)
                if own.epoch:
                    self._track(topic, max(pttl, 1) / 1000 + 0.005)
                else:  # waiting for the first publish: renew well before the record lapses
                    self._track(topic, max(pttl, 2) / 2000)
