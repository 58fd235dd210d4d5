"""The Redis Streams backend (``redis://``, ``rediss://``, ``unix://``).

Several gateway and worker processes on several machines share one Redis server; every
guarantee of the memory backend holds across them (the same conformance kit and state machine
run against both). The layout, the scripts and the measurements behind them are described in
docs/design.md; in short:

* ``_client``: one auto-batching connection per broker (commands of all tasks coalesced into
  pipelines, acks coalesced per topic), redis-py errors translated, outages retried.
* ``_replies``: what each error reply of the server means (an outage, a refusal, a bug).
* ``_notes``: one pub/sub connection per broker carrying the notes scripts publish to it, and the
  fence that keeps a stalled gateway from handing out what it may have lost.
* ``_lite`` and ``_ordered``: lite topics and ordered topics.

redis-py's asyncio client runs on asyncio only: under trio, opening a broker raises
:class:`~litechan.InvalidArgument` saying so.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from typing import Final, TypeVar
from urllib.parse import SplitResult

import anyio.abc

from ..._errors import ConfigMismatch, InvalidArgument, LitechanError
from ..._log import logger
from ..._types import DeadLetter, LiteTopicsStats, OrderedTopicStats, Receipt
from ..base import (
    BackendOptions,
    LiteListener,
    LiteSpec,
    OrderedListener,
    OrderedSpec,
)
from ._client import Client, translate
from ._cluster import ClusterClient, ClusterNotes, Commands
from ._lite import NoteData, RedisLiteMember, RedisLiteTopics, decode_note, encode_lite
from ._notes import Fence, Notes
from ._options import RedisOptions, parse_url
from ._ordered import RedisGroupMember, RedisOrderedTopic
from ._scripts import NAMESPACE, SCRIPTS, SPEC

__all__ = ["RedisBackend"]


#: The layout of keys and scripts this version reads and writes (see docs/design.md).
LAYOUT: Final = "2"

_NOT_ASYNCIO: Final = (
    "the Redis backend runs on asyncio only (it uses redis-py's asyncio client), but this "
    "broker was opened under another event loop (trio?); run it under asyncio "
    "(anyio.run(..., backend='asyncio')) or use memory:// there"
)


class RedisBackend:
    """The Redis backend (implements ``Backend``)."""

    def __init__(self, url: SplitResult, options: BackendOptions) -> None:
        self._options: RedisOptions = parse_url(url)
        self._backend_options = options
        self._clock = options.clock.time
        self._ns = self._options.namespace
        #: The settings topics were first declared with (field ``o:NAME`` / ``l:PARENT``).
        self._specs_key = f"{{{self._ns}}}:specs"
        self._specs: dict[str, str] = {}
        self._id = secrets.token_hex(6)
        self._channel = f"{self._ns}:n:{self._id}"
        self._client: Commands | None = None
        self._notes: Notes | ClusterNotes | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ordered: dict[str, RedisOrderedTopic] = {}
        self._parents: dict[str, RedisLiteTopics] = {}
        self._lite_members: dict[str, RedisLiteMember] = {}
        self._group_members: dict[str, RedisGroupMember] = {}
        self._serial = 0
        self._world = b""
        self._fence: Fence | None = None
        self._listening: set[str] = set()  # parents whose partition channels notes listen to

    @property
    def client(self) -> Commands:
        assert self._client is not None, "backend used before start()"  # the broker ensures it
        return self._client

    def _next_id(self) -> str:
        self._serial += 1
        return f"{self._id}.{self._serial}"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise InvalidArgument(_NOT_ASYNCIO) from None
        client: Commands = (
            ClusterClient(self._options) if self._options.seeds else Client(self._options)
        )
        for script in SCRIPTS:
            client.register(script)
        self._client = client
        self._task_group = task_group
        try:
            await client.start(task_group)
            self._world = await self._world_marker()
            self._specs = await self._stored_specs()
            if isinstance(client, ClusterClient):
                self._notes = ClusterNotes(client, self._channel, self._on_note, self._on_connect)
            else:
                self._notes = Notes(client, self._channel, self._on_note, self._on_connect)
            await self._notes.start(task_group)
        except LitechanError:
            await client.aclose()
            raise
        except Exception as exc:
            await client.aclose()
            raise translate(exc, "starting the Redis backend") from None
        self._fence = Fence(self._notes, task_group)

    def closing(self) -> None:
        if self._client is not None:
            self._client.closing()

    async def aclose(self) -> None:
        self.closing()
        for group_member in list(self._group_members.values()):
            await group_member.aclose(())
        for lite_member in list(self._lite_members.values()):
            await lite_member.aclose()
        if self._fence is not None:
            self._fence.close()
        if self._notes is not None:
            await self._notes.aclose()
        if self._client is not None:
            await self._client.drain()
            await self._client.aclose()

    async def _world_marker(self) -> bytes:
        """The id of the data this server holds for the namespace (new after a data loss),
        after checking that the namespace is laid out as this version reads it."""
        ns = self._ns
        old_layout, (layout, marker) = await asyncio.gather(
            self.client.call("EXISTS", f"{ns}:world"),  # the marker of layout 1
            self.client.run(
                NAMESPACE, (f"{{{ns}}}:world", f"{{{ns}}}:layout"), (secrets.token_hex(8), LAYOUT)
            ),
        )
        if layout.decode() != LAYOUT or old_layout:
            found = "1" if old_layout else layout.decode()
            raise ConfigMismatch(
                f"namespace {ns!r} holds data of litechan's Redis layout {found}; this version "
                f"reads layout {LAYOUT}. Use another namespace, or delete the keys of this one "
                f"(they start with {ns!r} or {{{ns}:)"
            )
        return bytes(marker)

    async def _stored_specs(self) -> dict[str, str]:
        """The settings every topic of the namespace was first declared with."""
        fields = await self.client.call("HGETALL", self._specs_key)
        return {
            field.decode(): value.decode()
            for field, value in zip(fields[::2], fields[1::2], strict=True)
        }

    async def _on_connect(self, first: bool) -> None:
        if first:
            return
        world = await self._world_marker()
        if world != self._world:
            self._world = world
            logger.warning(
                "litechan.redis.data_lost",
                namespace=self._ns,
                hint="the server came back without litechan's data (restarted without "
                "persistence?): lite topics start again with new epochs",
            )
            self._specs = await self._stored_specs()
            for parent in self._parents.values():
                parent.checked = False
            for topic in self._ordered.values():
                topic.checked = False
            for member in list(self._lite_members.values()):
                member.lost_everything()
        for member in list(self._lite_members.values()):
            await member.reconcile()
        for group_member in list(self._group_members.values()):
            group_member.on_reconnect()

    def _on_note(self, note: bytes) -> None:
        """A note on the broker's own channel: a partition of an ordered topic got entries."""
        if note[:1] == b"W":
            _, member_id, _, partition, _ = note.split(b"|", 4)
            group_member = self._group_members.get(member_id.decode())
            if group_member is not None:
                group_member.on_wake(int(partition))

    def _on_lite_note(self, note: bytes) -> None:
        """A note on one of the broker's channels of a lite-topic partition: messages of lite
        topics its subscribers own, or a takeover."""
        members = self._lite_members
        for record in decode_note(note):
            member = members.get(record.member)
            if member is None:
                continue
            if type(record) is NoteData:
                member.on_records(record.generation, record.epoch, record.first, record.bodies)
            else:
                member.on_revoked(record.generation)

    # -- declarations ------------------------------------------------------------------------------

    # Settings are checked against what the server holds when a topic is declared (the
    # namespace's settings were read when the broker opened), and once more at its first use
    # (another process may have declared it since).

    def declare_ordered(self, spec: OrderedSpec) -> None:
        described = _describe_ordered(spec)
        self._check_declared("ordered topic", spec.name, f"o:{spec.name}", described)
        known = self._ordered.get(spec.name)
        if known is None:
            self._ordered[spec.name] = RedisOrderedTopic(self.client, self._ns, spec)
        elif known.spec != spec:
            known_described = _describe_ordered(known.spec)
            raise ConfigMismatch(_mismatch("ordered topic", spec.name, known_described, described))

    def declare_lite(self, spec: LiteSpec) -> None:
        partitions = self._options.lite_partitions
        described = _describe_lite(spec, partitions)
        self._check_declared("lite-topic parent", spec.parent, f"l:{spec.parent}", described)
        known = self._parents.get(spec.parent)
        if known is None:
            self._parents[spec.parent] = RedisLiteTopics(
                self.client, self._ns, spec, self._id, partitions
            )
        elif known.spec != spec:
            known_described = _describe_lite(known.spec, partitions)
            raise ConfigMismatch(
                _mismatch("lite-topic parent", spec.parent, known_described, described)
            )

    def _check_declared(self, what: str, name: str, field: str, described: str) -> None:
        stored = self._specs.get(field)
        if stored is not None and stored != described:
            raise ConfigMismatch(_mismatch(what, name, stored, described))

    async def _check_spec(self, field: str, described: str, what: str, name: str) -> None:
        stored = (await self.client.run(SPEC, (self._specs_key,), (field, described))).decode()
        self._specs[field] = stored
        if stored != described:
            raise ConfigMismatch(_mismatch(what, name, stored, described))

    async def _ordered_topic(self, spec: OrderedSpec) -> RedisOrderedTopic:
        topic = self._ordered[spec.name]
        if not topic.checked:
            await self._check_spec(
                f"o:{spec.name}", _describe_ordered(spec), "ordered topic", spec.name
            )
            topic.checked = True
        return topic

    async def _parent(self, spec: LiteSpec) -> RedisLiteTopics:
        parent = self._parents[spec.parent]
        if not parent.checked:
            await self._check_spec(
                f"l:{spec.parent}",
                _describe_lite(spec, parent.partitions),
                "lite-topic parent",
                spec.parent,
            )
            parent.checked = True
        return parent

    # -- ordered topics ----------------------------------------------------------------------------

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
        topic = await self._ordered_topic(spec)
        client = self.client
        if client.full:
            await client.wait_for_room(time.monotonic() + client.options.pending_wait)
        now = self._backend_options.clock.time()
        return await topic.send(partition, key, payload, headers, dedupe_id, now, expires_at)

    async def join_group(
        self,
        spec: OrderedSpec,
        group: str,
        name: str,
        max_deliveries: int,
        listener: OrderedListener,
    ) -> RedisGroupMember:
        topic = await self._ordered_topic(spec)
        assert self._notes is not None
        assert self._task_group is not None
        member = RedisGroupMember(
            topic,
            group,
            name,
            self._next_id(),
            self._channel,
            max_deliveries,
            listener,
            self._notes,
            self._group_members,
            self._options.lease,
        )
        try:
            await member.start(self._task_group)
        except BaseException:
            await member.aclose(())
            raise
        return member

    async def dead_letters(self, spec: OrderedSpec, group: str) -> list[DeadLetter]:
        topic = await self._ordered_topic(spec)
        return await _translated(topic.dead_letters(group))

    async def ordered_stats(self, spec: OrderedSpec) -> OrderedTopicStats:
        topic = await self._ordered_topic(spec)
        return await _translated(topic.stats())

    # -- lite topics -------------------------------------------------------------------------------

    def publish(
        self,
        spec: LiteSpec,
        lite_topic: str,
        payload: bytes,
        headers: dict[str, str],
        expires_at: float | None,
    ) -> Awaitable[int]:
        # Not a coroutine: once the parent is checked, the future of the queued message is all
        # there is to await (the client translates Redis errors).
        parent = self._parents[spec.parent]
        if not parent.checked or self.client.full:
            return self._publish_checked(spec, lite_topic, payload, headers, expires_at)
        return parent.publish(lite_topic, encode_lite(payload, headers, self._clock(), expires_at))

    async def _publish_checked(
        self,
        spec: LiteSpec,
        lite_topic: str,
        payload: bytes,
        headers: dict[str, str],
        expires_at: float | None,
    ) -> int:
        parent = await self._parent(spec)
        client = self.client
        if client.full:  # backpressure: wait for room, or shed the publish (Overloaded)
            await client.wait_for_room(time.monotonic() + client.options.pending_wait)
        body = encode_lite(payload, headers, self._clock(), expires_at)
        return await parent.publish(lite_topic, body)

    async def attach(
        self, spec: LiteSpec, group: str, name: str, listener: LiteListener
    ) -> RedisLiteMember:
        parent = await self._parent(spec)
        assert self._task_group is not None
        assert self._fence is not None
        assert self._notes is not None
        if spec.parent not in self._listening:
            self._listening.add(spec.parent)
            for channel in parent.channels:
                await self._notes.listen(channel, self._on_lite_note, sharded=True)
        return RedisLiteMember(
            parent,
            group,
            name,
            self._next_id(),
            listener,
            self._lite_members,
            self._task_group,
            self._fence,
        )

    async def lite_stats(self, spec: LiteSpec, top: int) -> LiteTopicsStats:
        parent = await self._parent(spec)
        return await _translated(parent.stats(self._backend_options.clock.time(), top))


T = TypeVar("T")


async def _translated(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except LitechanError:
        raise
    except Exception as exc:
        raise translate(exc, "Redis") from None


def _describe_ordered(spec: OrderedSpec) -> str:
    return (
        f"partitions={spec.partitions}, max_len={spec.max_len}, "
        f"dedupe_window={spec.dedupe_window!r}"
    )


def _describe_lite(spec: LiteSpec, partitions: int) -> str:
    return f"ttl={spec.ttl!r}, max_len={spec.max_len}, lite_partitions={partitions}"


def _mismatch(what: str, name: str, known: str, asked: str) -> str:
    """Say which settings differ, as the memory backend does: ``max_len=8 (asked 16)``."""
    known_settings = dict(item.split("=", 1) for item in known.split(", ") if "=" in item)
    asked_settings = dict(item.split("=", 1) for item in asked.split(", ") if "=" in item)
    diffs = ", ".join(
        f"{field}={value} (asked {asked_settings.get(field, '?')})"
        for field, value in known_settings.items()
        if asked_settings.get(field) != value
    )
    return (
        f"{what} {name!r} is already declared with {diffs or known}; declare it with the same "
        "settings everywhere, or use another name"
    )
