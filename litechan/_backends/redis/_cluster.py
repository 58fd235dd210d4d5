"""Redis Cluster: one auto-batched :class:`Client` per primary, and a router in front of them.

A :class:`ClusterClient` has the interface of :class:`Client`, so the backend's topics and
members run on a cluster unchanged: every call is queued on the client of the primary that
serves the slot of its first key. The layout makes that enough: a script's keys share one hash
tag (a topic partition, a lite-topic slot partition, the namespace), so a call never spans
slots. Each primary's client batches, keeps several batches in flight, reconnects and retries
exactly as on a standalone server.

The slot map comes from ``CLUSTER SHARDS`` (Redis 7; ``CLUSTER SLOTS`` on 6.2), read from any
node that answers. A call answered ``MOVED`` goes to the node named (its slot is remembered at
once, and the whole map read again soon); one answered ``ASK`` goes there once, after
``ASKING``. ``TRYAGAIN`` and ``CLUSTERDOWN`` are outages of that node's client, retried within
``retry`` like a server still loading.

:class:`ClusterNotes` keeps one notes connection per primary: a slot partition's channel is
subscribed (``SSUBSCRIBE``) on the primary that serves its slot; the broker's own channel,
which scripts ``PUBLISH`` to (the cluster bus carries it to every node), on one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import anyio
import anyio.abc
import attrs

from ..._errors import BrokerUnavailable, InvalidArgument
from ..._log import logger
from ._client import Arg, Bounds, Client, OnDone, Script, _Call, gather_replies, translate
from ._notes import Notes
from ._options import Endpoint, RedisOptions
from ._slots import key_slot
from ._wire import ReplyError, open_wire, pack

__all__ = ["ClusterClient", "ClusterNotes", "Commands"]

T = TypeVar("T")

SLOTS: Final = 16384
#: MOVED / ASK replies one call may follow before it fails (a slot map in flux settles far
#: sooner than this).
MAX_REDIRECTS: Final = 16
#: Commands whose first argument is not a key: they go to any primary.
_KEYLESS: Final = frozenset({"PING", "INFO", "TIME"})


@attrs.frozen
class _Shard:
    """A primary and the slot ranges it serves."""

    host: str
    port: int
    ranges: tuple[tuple[int, int], ...]


def parse_shards(reply: Any) -> list[_Shard]:
    """The primaries of a ``CLUSTER SHARDS`` reply (a list of flat field lists)."""
    shards = []
    for shard in reply:
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        slots = [int(s) for s in fields[b"slots"]]
        ranges = tuple(zip(slots[::2], slots[1::2], strict=True))
        for node in fields[b"nodes"]:
            info = dict(zip(node[::2], node[1::2], strict=True))
            if info.get(b"role") == b"master" and ranges:
                host = (info.get(b"ip") or info.get(b"endpoint") or b"").decode()
                shards.append(_Shard(host, int(info[b"port"]), ranges))
    return shards


def parse_slots(reply: Any) -> list[_Shard]:
    """The primaries of a ``CLUSTER SLOTS`` reply (Redis 6.2)."""
    by_node: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        by_node.setdefault((primary[0].decode(), int(primary[1])), []).append((start, end))
    return [_Shard(host, port, tuple(ranges)) for (host, port), ranges in by_node.items()]


class ClusterClient(Bounds):
    """Calls routed by slot to one :class:`Client` per primary (the interface of Client)."""

    def __init__(self, options: RedisOptions) -> None:
        self._options = options
        self._seeds: tuple[Endpoint, ...] = options.seeds
        self._nodes: dict[tuple[str, int], Client] = {}
        self._slots: list[Client | None] = [None] * SLOTS
        self._scripts: dict[str, Script] = {}
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._node_callbacks: list[Callable[[Client], None]] = []
        self._map_callbacks: list[Callable[[], None]] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._refresh_due = False
        self._refreshing: asyncio.Task[None] | None = None
        self._closed = False
        self._close_by = math.inf
        #: Publishes and sends accepted and not answered yet (bounded by max_pending).
        self.pending = 0
        self._roomy: asyncio.Event | None = None

    # -- what Client has -------------------------------------------------------------------------

    @property
    def sharded(self) -> bool:
        """Whether notes use sharded pub/sub (``SSUBSCRIBE``: Redis 7)."""
        return all(node.sharded for node in self._nodes.values())

    @property
    def server(self) -> str:
        """The cluster's nodes, without credentials (for messages and logs)."""
        return "cluster " + ",".join(f"{host}:{port}" for host, port in self._nodes)

    @property
    def nodes(self) -> list[Client]:
        """The client of every primary known now."""
        return list(self._nodes.values())

    def register(self, script: Script) -> None:
        self._scripts[script.name] = script
        for node in self._nodes.values():
            node.register(script)

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._reconnect_callbacks.append(callback)
        for node in self._nodes.values():
            node.on_reconnect(callback)

        def remove() -> None:
            self._reconnect_callbacks.remove(callback)
            for node in self._nodes.values():  # those found since were given it too
                with contextlib.suppress(ValueError):
                    node.remove_reconnect(callback)

        return remove

    def on_node(self, callback: Callable[[Client], None]) -> None:
        """Call *callback* with the client of each primary found from now on."""
        self._node_callbacks.append(callback)

    def on_map(self, callback: Callable[[], None]) -> None:
        """Call *callback* each time primaries left the slot map (a failover)."""
        self._map_callbacks.append(callback)

    def primary_of(self, key: Arg) -> Client:
        """The client of the primary that serves *key*'s slot now."""
        return self._route(key)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Read the slot map from a seed and connect to every primary (raising what failed)."""
        self._task_group = task_group
        shards = await self._read_map()
        for shard in shards:
            node = self._node(shard.host, shard.port, start=False)
            try:
                await node.start(task_group)
            except Exception as exc:
                raise translate(exc, f"connecting to {node.server}") from None
        self._apply(shards)

    def closing(self) -> None:
        super().closing()
        for node in self._nodes.values():
            node.closing()

    async def aclose(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in list(self._nodes.values()):
            await node.aclose()

    async def drain(self) -> None:
        for node in list(self._nodes.values()):
            await node.drain()

    def admit(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the broker's Redis connections are closed")

    async def call(self, *args: Arg) -> Any:
        return await self._route_command(args).call(*args)

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self._route(keys[0]).run(script, keys, args)

    def run_soon(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        persistent: bool = False,
        on_done: OnDone | None = None,
    ) -> None:
        self._route(keys[0]).run_soon(script, keys, args, persistent=persistent, on_done=on_done)

    def run_later(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], *, persistent: bool = False
    ) -> asyncio.Future[Any]:
        return self._route(keys[0]).run_later(script, keys, args, persistent=persistent)

    async def run_many(
        self, script: Script, calls: Iterable[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        return await gather_replies(
            [self._route(keys[0]).run_later(script, keys, args) for keys, args in calls]
        )

    async def many(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        return await gather_replies(
            [self._route_command(command).call_later(*command) for command in commands]
        )

    def before_flush(self, hook: Callable[[], None]) -> None:
        # Run before the next batch of any primary: the first to write runs it (it queues
        # calls on whichever primaries they belong to); the others find nothing left to do.
        for node in self._nodes.values():
            node.before_flush(hook)

    async def scan(self, pattern: str) -> list[bytes]:
        """Every key matching *pattern*, over every primary."""
        found: set[bytes] = set()
        for node in list(self._nodes.values()):
            found.update(await node.scan(pattern))
        return sorted(found)

    # -- routing ---------------------------------------------------------------------------------

    def _route(self, key: Arg) -> Client:
        node = self._slots[key_slot(key if isinstance(key, (str, bytes)) else str(key))]
        if node is None:
            node = self._any()
            self._schedule_refresh()  # a slot nobody serves: the map is stale
        return node

    def _route_command(self, args: Sequence[Arg]) -> Client:
        name = str(args[0]).upper() if not isinstance(args[0], bytes) else args[0].decode()
        if len(args) < 2 or name.upper() in _KEYLESS:
            return self._any()
        return self._route(args[1])

    def _any(self) -> Client:
        if self._closed or not self._nodes:
            raise BrokerUnavailable("the broker's Redis connections are closed")
        return next(iter(self._nodes.values()))

    def _node(self, host: str, port: int, *, start: bool = True) -> Client:
        """The client of the primary at *host*:*port* (made, and started with *start*)."""
        node = self._nodes.get((host, port))
        if node is not None:
            return node
        node = Client(self._options, self._endpoint(host, port))
        for script in self._scripts.values():
            node.register(script)
        for callback in self._reconnect_callbacks:
            node.on_reconnect(callback)
        node.redirect = self._redirected
        node.on_down = self._schedule_refresh
        self._nodes[(host, port)] = node
        if start and self._task_group is not None:  # found by a redirect or a new map
            self._start_node(node)
        for found in self._node_callbacks:
            found(node)
        return node

    def _start_node(self, node: Client) -> None:
        assert self._task_group is not None
        node.run_in(self._task_group)  # it connects, retries and expires calls itself

    def _redirected(self, call: _Call, error: str) -> None:
        """A node answered *call* ``MOVED slot host:port`` or ``ASK slot host:port``."""
        if self._closed:
            call.end(BrokerUnavailable("the broker's Redis connections are closed"))
            return
        kind, slot, address = error.split(" ", 2)
        host, _, port = address.rpartition(":")
        call.redirects += 1
        if call.redirects > MAX_REDIRECTS:
            call.end(
                BrokerUnavailable(f"Redis cluster: a call was redirected {call.redirects} times")
            )
            self._schedule_refresh()
            return
        node = self._node(host, int(port))
        if kind == "MOVED":
            self._slots[int(slot)] = node
            self._schedule_refresh()
            node.adopt(call)
        else:
            node.adopt(call, asking=True)

    # -- the slot map ----------------------------------------------------------------------------

    def _endpoint(self, host: str, port: int) -> Endpoint:
        """How to reach the node at *host*:*port*: the first seed's credentials and TLS, the
        certificate checked against the node's own name."""
        seed = self._seeds[0]
        checked = seed.server_hostname is not None
        return attrs.evolve(seed, host=host, port=port, server_hostname=host if checked else None)

    async def _read_map(self) -> list[_Shard]:
        """The primaries and their slots, from the first node that answers."""
        candidates = [
            (node.server, self._endpoint(host, port)) for (host, port), node in self._nodes.items()
        ]
        candidates += [(seed.address, seed) for seed in self._seeds]
        errors = []
        for address, endpoint in candidates:
            try:
                wire = await open_wire(endpoint, self._options.connect_timeout)
            except Exception as exc:
                errors.append(f"{address}: {exc}")
                continue
            try:
                with anyio.fail_after(self._options.socket_timeout):
                    await wire.write(pack(("CLUSTER", "SHARDS")))
                    reply = await wire.read()
                    if isinstance(reply, ReplyError) and "unknown subcommand" in str(reply).lower():
                        await wire.write(pack(("CLUSTER", "SLOTS")))
                        reply = await wire.read()
                        shards = None if isinstance(reply, ReplyError) else parse_slots(reply)
                    else:
                        shards = None if isinstance(reply, ReplyError) else parse_shards(reply)
            except Exception as exc:
                errors.append(f"{address}: {exc}")
                continue
            finally:
                wire.close()
            if shards is None:
                if "cluster support disabled" in str(reply):
                    raise InvalidArgument(
                        f"{address} is a standalone Redis server, not a node of a cluster: "
                        "connect with redis:// (or rediss://)"
                    )
                errors.append(f"{address}: {reply}")
                continue
            if shards:
                return shards
            errors.append(f"{address}: no slot is served")
        raise BrokerUnavailable(
            "no node of the Redis cluster told its slot map: " + "; ".join(errors)
        )

    def _apply(self, shards: list[_Shard]) -> None:
        if self._closed:
            return
        slots: list[Client | None] = [None] * SLOTS
        for shard in shards:
            node = self._node(shard.host, shard.port)
            for start, end in shard.ranges:
                for slot in range(start, end + 1):
                    slots[slot] = node
        self._slots = slots
        serving = {(shard.host, shard.port) for shard in shards}
        gone = [address for address in self._nodes if address not in serving]
        if not gone:
            return
        # Primaries that serve no slot any more (failed over, or removed): what they still
        # had to send goes to the nodes that serve its slots now, at least once, as after a
        # reconnect; then whoever tracks calls in doubt is told, as after a reconnect.
        calls: list[_Call] = []
        for address in gone:
            node = self._nodes.pop(address)
            calls.extend(node.take_calls())  # and stops it: nothing more goes out there
            logger.warning("litechan.redis.primary_gone", server=node.server)
        for call in calls:
            target = self._route(call.script[1][1]) if call.script is not None else self._any()
            target.adopt(call)
        for callback in list(self._map_callbacks):
            callback()
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                logger.exception("litechan.redis.reconnect_callback_failed")

    async def read_map(self) -> None:
        """Read the slot map now (a slot moved)."""
        with contextlib.suppress(Exception):
            self._apply(await self._read_map())

    def _schedule_refresh(self) -> None:
        if self._closed or (self._refreshing is not None and not self._refreshing.done()):
            self._refresh_due = True
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        # Read the map until nothing asks for it again and every primary in it serves: a
        # primary down is failed over by the cluster within its node timeout, and the map
        # shows its replica then.
        while not self._closed:
            self._refresh_due = False
            with contextlib.suppress(Exception):
                self._apply(await self._read_map())
            if not self._refresh_due and not any(n.down for n in self._nodes.values()):
                return
            await anyio.sleep(0.25)


class ClusterNotes:
    """One :class:`Notes` connection per primary; channels subscribed where their slot is."""

    def __init__(
        self,
        client: ClusterClient,
        channel: str,
        on_note: Callable[[bytes], None],
        on_connect: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_note = on_note
        self._on_connect = on_connect
        self._notes: dict[Client, Notes] = {}
        self._opening: dict[Client, anyio.Lock] = {}  # one connection per primary, opened once
        self._main: Notes | None = None  # the one subscribed to the broker's own channel
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = False
        client.on_map(self._map_changed)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def live(self) -> bool:
        return all(notes.live for notes in self._all())

    def _all(self) -> list[Notes]:
        main = [self._main] if self._main is not None else []
        return [*main, *self._notes.values()]

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        await self._start_main()

    async def _start_main(self) -> None:
        # The broker's own channel, on one primary: scripts PUBLISH to it, and the cluster bus
        # brings that to every node.
        nodes = self._client.nodes
        node = next((n for n in nodes if not n.down), None) or self._client._any()
        notes = Notes(node, self._channel, self._on_note, self._on_connect)
        assert self._task_group is not None
        await notes.start(self._task_group)
        self._main = notes

    async def _notes_of(self, channel: str) -> Notes:
        """The notes connection of the primary serving *channel*'s slot (opened if need be;
        while that primary does not answer, the map is read again until one does, within
        ``retry``: a failover)."""
        deadline = time.monotonic() + self._client.options.retry
        while True:
            node = self._client.primary_of(channel)
            notes = self._notes.get(node)
            if notes is not None:
                return notes
            lock = self._opening.setdefault(node, anyio.Lock())
            async with lock:
                if node in self._notes:
                    continue  # opened by another task meanwhile
                # A connection for the sharded channels of this primary's slots; its own
                # channel is one nobody publishes to.
                notes = Notes(node, f"{self._channel}:{id(node)}", _drop, self._on_connect)
                notes.on_moved = self._moved
                assert self._task_group is not None
                try:
                    await notes.start(self._task_group)
                except BrokerUnavailable:
                    if time.monotonic() >= deadline:
                        raise
                else:
                    self._notes[node] = notes
                    return notes
            await anyio.sleep(0.25)  # the cluster fails the primary over meanwhile
            await self._client.read_map()

    async def listen(
        self, channel: str, handler: Callable[[bytes], None], *, sharded: bool = False
    ) -> None:
        if sharded:
            notes = await self._notes_of(channel)
        else:
            assert self._main is not None
            notes = self._main
        await notes.listen(channel, handler, sharded=sharded)

    async def forget(self, channel: str, handler: Callable[[bytes], None]) -> None:
        for notes in self._all():
            await notes.forget(channel, handler)

    async def sync(self) -> None:
        async with anyio.create_task_group() as tg:
            for notes in self._all():
                tg.start_soon(notes.sync)

    async def aclose(self) -> None:
        self._closed = True
        for notes in self._all():
            await notes.aclose()

    def _moved(self, channel: str) -> None:
        if not self._closed and self._task_group is not None:
            self._task_group.start_soon(self._follow, channel)

    async def _follow(self, channel: str) -> None:
        """*channel*'s slot moved: subscribe it on the node that serves it now, and let the
        members read what they own (notes published meanwhile went nowhere)."""
        handlers: list[Callable[[bytes], None]] = []
        for notes in list(self._notes.values()):
            handlers.extend(notes.drop(channel))
        if handlers:
            await self._resubscribe([(channel, handler, True) for handler in handlers])

    async def _resubscribe(self, moved: list[tuple[str, Callable[[bytes], None], bool]]) -> None:
        """Listen to *moved* where their slots are now (reading the map first), then call the
        reconnect path; on a failure, log it and try again shortly, until the broker closes."""
        while not self._closed:
            try:
                await self._client.read_map()
                if self._main is None or self._main.closed:
                    await self._start_main()
                while moved:
                    channel, handler, sharded = moved[0]
                    await self.listen(channel, handler, sharded=sharded)
                    moved.pop(0)
                await self._on_connect(False)
                return
            except Exception as exc:  # a background task must never end the broker
                logger.warning("litechan.redis.notes_move_failed", error=str(exc))
                await anyio.sleep(0.5)

    def _map_changed(self) -> None:
        if not self._closed and self._task_group is not None:
            self._task_group.start_soon(self._rehome)

    async def _rehome(self) -> None:
        """Move what was subscribed on primaries that left the map to those serving now, then
        let the members read what notes may have been lost meanwhile."""
        live = set(self._client.nodes)
        moved: list[tuple[str, Callable[[bytes], None], bool]] = []
        for node, notes in list(self._notes.items()):
            if node not in live:
                del self._notes[node]
                moved.extend(notes.subscriptions())
                await notes.aclose()
        main = self._main
        if main is not None and main.client not in live:
            moved.extend(main.subscriptions())
            await main.aclose()  # _resubscribe opens another on a live primary
        if moved or (main is not None and main.closed):
            await self._resubscribe(moved)


def _drop(note: bytes) -> None:
    """What arrives on a channel nobody publishes to (nothing)."""


#: What the backend's topics and members send their calls through.
Commands: TypeAlias = Client | ClusterClient
