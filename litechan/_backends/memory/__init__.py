"""The in-process backend (``memory://``): every guarantee, no server.

It is the embedded default (single-process apps, tests, the demo), not a test double: it keeps
the same ownership, fencing, offset and TTL rules as a distributed backend, within one process.

``memory://`` opens a private world; ``memory://NAME`` joins the world called NAME that other
brokers of this process opened (that is how several "gateways" share lite topics in one process).
A world lives while a broker has it open and takes its clock from the first broker.

Storage is a list per partition / lite topic with an offset base (:class:`Log`), so reading a
batch from any offset is a slice and trimming to ``max_len`` is amortised O(1). TTL expiry keeps
each parent's lite topics in least-recently-published order (an ``OrderedDict`` moved on every
publish), so the topic to expire next is always the first one: no scan, no heap churn.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any
from urllib.parse import SplitResult

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from ..._alarm import Alarm
from ..._clock import Clock
from ..._errors import ConfigMismatch, InvalidArgument
from ..._types import (
    DeadLetter,
    GroupLag,
    LiteTopicLag,
    LiteTopicsStats,
    OrderedTopicStats,
    PartitionStats,
    Receipt,
)
from ..._urls import redact
from ..base import BackendOptions, LiteListener, LiteSpec, OrderedListener, OrderedSpec
from ._lite import MemoryLiteMember, MemoryLiteTopic, MemoryParent, new_epoch
from ._ordered import MemoryGroup, MemoryGroupMember, MemoryOrderedTopic

__all__ = ["MemoryBackend"]


class _World:
    """Everything one memory world stores, shared by the brokers that opened it."""

    def __init__(self, name: str | None, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.refs = 0
        # The event loop of the brokers that have it open: its wake-ups are that loop's events.
        self.loop = anyio.lowlevel.current_token()
        self.ordered: dict[str, MemoryOrderedTopic] = {}
        self.parents: dict[str, MemoryParent] = {}
        self.alarms: set[Alarm] = set()

    def arm(self, deadline: float) -> None:
        for alarm in self.alarms:
            alarm.arm(deadline)

    def expire_due(self) -> None:
        now = self.clock.time()
        deadlines = []
        for parent in self.parents.values():
            parent.expire_due(now)
            deadline = parent.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        if deadlines:
            self.arm(min(deadlines))


_worlds: dict[str, _World] = {}


class MemoryBackend:
    """The ``memory://`` backend (implements ``Backend``)."""

    def __init__(self, url: SplitResult, options: BackendOptions) -> None:
        if url.path not in ("", "/") or url.query or url.fragment:
            raise InvalidArgument(
                "memory URLs take only a world name (memory:// or memory://NAME), "
                f"got {redact(url)!r}"
            )
        self._name = url.netloc or None
        self._options = options
        self._world: _World | None = None
        self._alarm = Alarm(options.clock, self._on_alarm)

    @property
    def world(self) -> _World:
        assert self._world is not None, "backend used before start()"  # the broker ensures it
        return self._world

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        name = self._name
        world = _worlds.get(name) if name is not None else None
        if world is None:
            world = _World(name, self._options.clock)
            if name is not None:
                _worlds[name] = world
        elif world.loop != anyio.lowlevel.current_token():
            raise InvalidArgument(
                f"memory://{name} is open in another event loop (another thread: each of two "
                "Starlette TestClients, say, runs its own); a memory world wakes its readers "
                "through its loop's events, so every broker of it must run in one event loop. "
                "Share one loop, or connect to Redis"
            )
        world.refs += 1
        world.alarms.add(self._alarm)
        self._world = world
        task_group.start_soon(self._alarm.run)
        world.expire_due()

    def closing(self) -> None:
        return None  # closing touches nothing but this process

    async def aclose(self) -> None:
        world = self._world
        if world is None:
            return
        world.alarms.discard(self._alarm)
        self._alarm.stop()
        world.refs -= 1
        if world.refs == 0 and world.name is not None and _worlds.get(world.name) is world:
            del _worlds[world.name]

    def _on_alarm(self) -> None:
        if self._world is not None:
            self._world.expire_due()

    # -- declarations -------------------------------------------------------------------------

    def declare_ordered(self, spec: OrderedSpec) -> None:
        known = self.world.ordered.get(spec.name)
        if known is None:
            self.world.ordered[spec.name] = MemoryOrderedTopic(spec)
        elif known.spec != spec:
            raise ConfigMismatch(_mismatch("ordered topic", spec.name, known.spec, spec))

    def declare_lite(self, spec: LiteSpec) -> None:
        known = self.world.parents.get(spec.parent)
        if known is None:
            self.world.parents[spec.parent] = MemoryParent(spec)
        elif known.spec != spec:
            raise ConfigMismatch(_mismatch("lite-topic parent", spec.parent, known.spec, spec))

    # -- ordered topics -------------------------------------------------------------------------

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
        topic = self.world.ordered[spec.name]
        now = self.world.clock.time()
        if dedupe_id is not None:
            order = topic.dedupe_order
            while order and order[0][0] <= now:
                _, old = order.popleft()
                known = topic.dedupe.get(old)
                if known is not None and known[1] <= now:
                    del topic.dedupe[old]
            known = topic.dedupe.get(dedupe_id)
            if known is not None:
                return Receipt(known[0].partition, known[0].offset, duplicate=True)
        log = topic.logs[partition]
        offset = log.next
        log.append((key, payload, headers or None, now, expires_at))
        log.trim(spec.max_len)
        receipt = Receipt(partition, offset)
        if dedupe_id is not None:
            expires = now + spec.dedupe_window
            topic.dedupe[dedupe_id] = (receipt, expires)
            topic.dedupe_order.append((expires, dedupe_id))
        for group in topic.groups.values():
            gp = group.parts[partition]
            if gp.owner is not None and not gp.revoking:
                gp.owner.listener.wake()
        return receipt

    async def join_group(
        self,
        spec: OrderedSpec,
        group: str,
        name: str,
        max_deliveries: int,
        listener: OrderedListener,
    ) -> MemoryGroupMember:
        topic = self.world.ordered[spec.name]
        state = topic.groups.get(group)
        if state is None:
            state = topic.groups[group] = MemoryGroup(topic, group)
        member = MemoryGroupMember(state, name, max_deliveries, listener)
        state.members.append(member)
        state.rebalance()
        return member

    async def dead_letters(self, spec: OrderedSpec, group: str) -> list[DeadLetter]:
        state = self.world.ordered[spec.name].groups.get(group)
        return list(state.dead) if state is not None else []

    async def ordered_stats(self, spec: OrderedSpec) -> OrderedTopicStats:
        topic = self.world.ordered[spec.name]
        partitions = []
        for p, log in enumerate(topic.logs):
            last = log.next - 1
            groups = {}
            for name, group in topic.groups.items():
                gp = group.parts[p]
                committed = max(gp.committed(), log.first - 1)
                groups[name] = GroupLag(
                    group=name,
                    committed=committed,
                    lag=last - committed,
                    pending=len(gp.pending),
                    owner=gp.owner.name if gp.owner is not None else None,
                    expired=gp.expired,
                )
            partitions.append(PartitionStats(p, len(log), log.first, last, groups))
        return OrderedTopicStats(spec.name, tuple(partitions))

    # -- lite topics ----------------------------------------------------------------------------

    async def publish(
        self,
        spec: LiteSpec,
        lite_topic: str,
        payload: bytes,
        headers: dict[str, str],
        expires_at: float | None,
    ) -> int:
        world = self.world
        parent = world.parents[spec.parent]
        now = world.clock.time()
        topics = parent.topics
        topic = topics.get(lite_topic)
        if topic is not None and topic.last_publish + spec.ttl <= now:
            parent.expire_due(now)
            topic = None
        if topic is None:
            topic = MemoryLiteTopic(lite_topic, new_epoch(), now)
            topics[lite_topic] = topic
            if len(topics) == 1:
                world.arm(now + spec.ttl)
        else:
            topics.move_to_end(lite_topic)
            topic.last_publish = now
        log = topic.log
        items = log.items
        offset = log.first + len(items) - log.start
        stored = headers or None
        items.append((offset, payload, stored, now, expires_at))
        if offset - log.first >= spec.max_len:
            log.trim(spec.max_len)
        owners = parent.owners.get(lite_topic)
        if owners:
            for owner in owners.values():
                # Handed over as it is published when the owner reads right here; else it is
                # fetched from the log.
                listener = owner.member.listener
                if not listener.on_records(
                    lite_topic,
                    owner.generation,
                    topic.epoch,
                    offset,
                    ((payload, stored, now, expires_at),),
                ):
                    listener.on_data(lite_topic)
        return offset

    async def attach(
        self, spec: LiteSpec, group: str, name: str, listener: LiteListener
    ) -> MemoryLiteMember:
        return MemoryLiteMember(
            self.world.clock, self.world.parents[spec.parent], group, name, listener
        )

    async def lite_stats(self, spec: LiteSpec, top: int) -> LiteTopicsStats:
        parent = self.world.parents[spec.parent]
        now = self.world.clock.time()
        parent.expire_due(now)
        backlog = 0
        lags: list[LiteTopicLag] = []
        for name, topic in parent.topics.items():
            owners = parent.owners.get(name, {})
            for group in topic.groups.keys() | owners.keys():
                cursor = topic.groups.get(group)
                base = topic.base(cursor)
                # An explicit start past the end leaves the base above the last offset.
                behind = max(0, topic.log.next - 1 - base)
                oldest = base + 1
                if cursor is not None and cursor.acked:
                    acked = cursor.acked
                    behind -= sum(1 for o in acked if o > base)
                    while oldest in acked:
                        oldest += 1
                backlog += behind
                owner = owners.get(group)
                age = now - topic.log.get(oldest)[3] if behind else None
                lags.append(
                    LiteTopicLag(
                        lite_topic=name,
                        group=group,
                        backlog=behind,
                        owner=owner.member.name if owner is not None else None,
                        oldest_unacked_age=age,
                    )
                )
        subscriptions = sum(len(groups) for groups in parent.owners.values())
        ranked = heapq.nlargest(top, lags, key=lambda lag: lag.backlog) if top > 0 else []
        return LiteTopicsStats(
            len(parent.topics), subscriptions, backlog, ranked, dict(parent.expired)
        )


def _mismatch(what: str, name: str, known: Any, asked: Any) -> str:
    diffs = ", ".join(
        f"{field}={getattr(known, field)!r} (asked {getattr(asked, field)!r})"
        for field in _fields(known)
        if getattr(known, field) != getattr(asked, field)
    )
    return (
        f"{what} {name!r} is already declared with {diffs}; declare it with the same settings "
        "everywhere, or use another name"
    )


def _fields(spec: Any) -> Iterator[str]:
    yield from (field.name for field in attrs.fields(type(spec)))
