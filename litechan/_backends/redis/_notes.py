"""Notes: the pub/sub connection that tells a broker's members that something happened.

Each broker subscribes to one channel of its own (``ns:n:BROKER``); scripts publish to it when
a lite topic it owns gets a message (the note carries the message, so the subscriber does not
fetch it), when one of its lite topics is taken over, and when a partition it owns gets an entry.
Groups of ordered topics have a rebalance channel each, subscribed while a member is in them.

Pub/sub is fire-and-forget: notes published while the connection is down are lost. So every
(re)connection runs the ``on_connect`` callbacks, which reconcile the members' state with the
server in batched round trips, and checks the world marker to notice a server that came back
empty (``litechan.redis.data_lost``). The first connection is made when the broker opens, and
its failure is the broker's; after that, any failure (a cut, a server still loading its data
during reconciliation, a callback's error) drops the link and builds it again: the reader never
dies while the broker is open.

:meth:`Notes.sync` is a round trip on this link: once it returns, every note published to the
broker before it was called has been handled. :class:`Fence` uses it after the process stalled
(see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import anyio
import anyio.abc

from ..._log import logger
from ._client import CONNECTION_ERRORS, Client, pack, translate
from ._replies import is_redirect
from ._wire import LinkError, Wire

__all__ = ["STALL", "Fence", "Listening", "Notes"]


_BACKOFF_MIN: Final = 0.02
_BACKOFF_MAX: Final = 0.5
#: A loop that did not run for this long stalled (SIGSTOP, a long GC pause, a blocked loop).
STALL: Final = 0.5
_TICK: Final = 0.1


class Listening(Protocol):
    """What members and the fence use of the notes: :class:`Notes`, or one per cluster node."""

    @property
    def live(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    async def listen(
        self, channel: str, handler: Callable[[bytes], None], *, sharded: bool = False
    ) -> None: ...

    async def forget(self, channel: str, handler: Callable[[bytes], None]) -> None: ...

    async def sync(self) -> None: ...


class Notes:
    """One broker's pub/sub reader; see the module docstring."""

    def __init__(
        self,
        client: Client,
        channel: str,
        on_note: Callable[[bytes], None],
        on_connect: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_note = on_note
        self._on_connect = on_connect
        self._handlers: dict[bytes, list[Callable[[bytes], None]]] = {}
        self._sharded: set[bytes] = set()  # channels scripts publish to with SPUBLISH
        self._subscribed: set[bytes] = set()  # the channels the link was opened with
        self._wire: Wire | None = None
        self._closed = False
        #: One entry per PING written on the link, in order: the sync waiting on its PONG.
        self._pings: deque[anyio.Event | None] = deque()
        #: Syncs waiting for the next link to be up and reconciled.
        self._waiting: list[anyio.Event] = []
        #: A link is up and reconciled: every note published to the broker arrives.
        self.live = False
        #: Told the name of a sharded channel the server unsubscribed this reader from (a
        #: cluster moved its slot); None: such a channel is ignored.
        self.on_moved: Callable[[str], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def client(self) -> Client:
        """The client whose server this reader subscribes on."""
        return self._client

    def drop(self, channel: str) -> list[Callable[[bytes], None]]:
        """Stop listening to *channel* here, without telling the server (it already stopped
        sending it); return its handlers."""
        key = channel.encode()
        self._sharded.discard(key)
        return self._handlers.pop(key, [])

    def subscriptions(self) -> list[tuple[str, Callable[[bytes], None], bool]]:
        """Every ``(channel, handler, sharded)`` listened to (its own channel aside)."""
        return [
            (channel.decode(), handler, channel in self._sharded)
            for channel, handlers in self._handlers.items()
            for handler in handlers
        ]

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect and subscribe (raising what went wrong), then read in the background."""
        try:
            wire = await self._open()
        except Exception as exc:
            raise translate(exc, f"subscribing to notes on {self._client.server}") from None
        self._wire = wire
        self.live = True
        await self._on_connect(True)
        task_group.start_soon(self._run, wire)

    async def aclose(self) -> None:
        self._closed = True
        self.live = False
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        self._release_waiters()

    async def listen(
        self, channel: str, handler: Callable[[bytes], None], *, sharded: bool = False
    ) -> None:
        """Call *handler* with each message published to *channel* (until :meth:`forget`).

        A *sharded* channel is one scripts publish to with ``SPUBLISH`` on Redis 7 (a slot
        partition's); it is subscribed with ``SSUBSCRIBE`` there, with ``SUBSCRIBE`` on 6.2.
        """
        key = channel.encode()
        handlers = self._handlers.setdefault(key, [])
        handlers.append(handler)
        if sharded:
            self._sharded.add(key)
        if len(handlers) == 1:
            await self._send(self._subscribe(key))

    async def forget(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Stop calling *handler* for *channel*."""
        key = channel.encode()
        handlers = self._handlers.get(key, [])
        if handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[key]
                sharded = key in self._sharded and self._client.sharded
                self._sharded.discard(key)
                await self._send(pack(("SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE", channel)))

    def _subscribe(self, channel: bytes) -> bytes:
        sharded = channel in self._sharded and self._client.sharded
        return pack(("SSUBSCRIBE" if sharded else "SUBSCRIBE", channel))

    async def sync(self) -> None:
        """Return once every note published to this broker before the call was handled: a
        PING's answer on the link, or, when the link is down, its next reconciliation."""
        event = anyio.Event()
        wire = self._wire
        if wire is None or not self.live:
            self._waiting.append(event)
        else:
            self._pings.append(event)
            await self._send(pack(("PING",)))
        await event.wait()

    async def _send(self, packed: bytes) -> None:
        wire = self._wire
        if wire is None:
            return  # subscribed again on reconnect
        with contextlib.suppress(*CONNECTION_ERRORS):  # the reader notices and reconnects
            await wire.write(packed)

    async def _open(self) -> Wire:
        wire = await self._client.open()
        try:
            channels = [self._channel.encode(), *self._handlers]
            self._subscribed = set(channels)
            await wire.write(b"".join(self._subscribe(channel) for channel in channels))
            with anyio.fail_after(self._client.options.socket_timeout):
                replies = [await wire.read() for _ in channels]
        except BaseException:
            wire.close()
            raise
        moved = [
            channel
            for channel, reply in zip(channels, replies, strict=True)
            if self.on_moved is not None and is_redirect(reply)
        ]
        errors = [
            reply
            for channel, reply in zip(channels, replies, strict=True)
            if isinstance(reply, Exception) and channel not in moved
        ]
        if errors:
            wire.close()
            raise errors[0]
        for channel in moved:  # its slot left this node while the link was down: follow it
            assert self.on_moved is not None
            self._subscribed.discard(channel)
            self.on_moved(channel.decode())
        return wire

    async def _run(self, wire: Wire | None) -> None:
        backoff = _BACKOFF_MIN
        while not self._closed:
            try:
                if wire is None:
                    wire = await self._open()
                    self._wire = wire
                    late = [c for c in self._handlers if c not in self._subscribed]
                    if late:  # listen() was called while the link was being built
                        await wire.write(b"".join(self._subscribe(c) for c in late))
                    await self._on_connect(False)  # reconcile what was missed
                    self.live = True
                    self._release_waiters()
                backoff = _BACKOFF_MIN
                await self._read(wire)
            except Exception as exc:  # any failure drops the link; the next one reconciles
                if self.closed:
                    return
                logger.warning("litechan.redis.notes_disconnected", error=str(exc) or repr(exc))
            if wire is not None:
                self._link_down(wire)
                wire.close()
                wire = None
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _link_down(self, wire: Wire) -> None:
        self.live = False
        if self._wire is wire:
            self._wire = None
        # Syncs waiting on this link's PINGs are answered by the next reconciliation instead.
        self._waiting.extend(event for event in self._pings if event is not None)
        self._pings.clear()

    def _release_waiters(self) -> None:
        waiting, self._waiting = self._waiting, []
        for event in waiting:
            event.set()

    async def _read(self, wire: Wire) -> None:
        on_note = self._on_note
        own = self._channel.encode()
        handlers = self._handlers
        idle = self._client.options.socket_timeout
        pinged = False
        while True:
            reply = wire.poll()
            if reply is False:  # nothing buffered: wait for the server
                if not await wire.fill(idle):
                    if pinged:  # no answer to a PING for a whole socket_timeout: a dead link
                        raise LinkError("no reply to PING on the notes connection")
                    pinged = True
                    self._pings.append(None)
                    await wire.write(pack(("PING",)))
                else:
                    pinged = False
                continue
            if type(reply) is not list:
                continue  # an error reply on a subscribed link cannot come from our commands
            kind = reply[0]
            if kind == b"pong":
                if self._pings:
                    event = self._pings.popleft()
                    if event is not None:
                        event.set()
                continue
            if kind == b"sunsubscribe" and reply[1] in handlers and self.on_moved is not None:
                # Not asked for (forget() drops the handlers first): the channel's slot moved
                # to another node of the cluster, which publishes its notes from now on.
                self.on_moved(reply[1].decode())
                continue
            if kind != b"message" and kind != b"smessage":
                continue  # (un)subscribe confirmations
            channel = reply[1]
            try:
                if channel == own:
                    on_note(reply[2])
                else:
                    for handler in handlers.get(channel, ()):
                        handler(reply[2])
            except Exception:  # a note must never stop the reader
                logger.exception("litechan.redis.note_failed", note=reply[2][:200])


class Fence:
    """How long a gateway may hand out replies it already holds without proving it still owns
    their lite topics (implements the backend interface's ``Fence``).

    A lite topic has no lease: another gateway takes it over at once (G7), and the old owner
    learns it from an ``R`` note. A process that stalled (SIGSTOP, a long GC pause, a blocked
    loop) may wake up with that note unread and replies of the topic in its buffers. So a
    subscriber hands out what it holds only while :attr:`until` is ahead of ``time.monotonic()``:
    a timer callback moves it ahead every 0.1 s while the loop runs and the notes link is live,
    and stops moving it when the loop stalled for more than 0.5 s or the link is down. Past it,
    the subscriber awaits :meth:`confirm`, a round trip on the notes link (or its next
    reconciliation) after which every note published before it has been handled, revocations
    included. The timer is a loop callback, not a task: a task waking every 0.1 s would keep
    ``anyio.wait_all_tasks_blocked()`` (which polls at that very period) from ever returning.
    """

    def __init__(self, notes: Listening, task_group: anyio.abc.TaskGroup) -> None:
        self._notes = notes
        self._round: anyio.Event | None = None
        self._wanted = asyncio.Event()  # a round is asked for (set by the timer, too)
        self._done = False
        self._stalled = False
        self._stalled_at = -math.inf  # when the last stall was seen
        self._loop = asyncio.get_running_loop()
        self._last = time.monotonic()
        self.until = self._last + STALL
        self._timer = self._loop.call_later(_TICK, self._tick)
        # Rounds run in a task of their own: the timer is a loop callback, which cannot start
        # a task in the broker's task group (anyio needs a running task for that).
        task_group.start_soon(self._rounds)

    async def confirm(self) -> None:
        """Return once every note published before the call was handled."""
        event = self._round or self._start_round()
        await event.wait()

    def close(self) -> None:
        self._timer.cancel()

    def _start_round(self) -> anyio.Event:
        event = self._round = anyio.Event()
        if self._done:  # the broker is closing: nothing to prove any more
            self._round = None
            event.set()
        else:
            self._wanted.set()
        return event

    async def _rounds(self) -> None:
        try:
            while True:
                await self._wanted.wait()
                self._wanted.clear()
                if self._round is not None:
                    await self._sync(self._round)
        finally:
            self._done = True
            if self._round is not None:
                self._round.set()

    async def _sync(self, event: anyio.Event) -> None:
        started = time.monotonic()
        try:
            await self._notes.sync()
            if started >= self._stalled_at:  # its PING went out after the stall was seen
                self._stalled = False
                self.until = started + STALL
        finally:
            self._round = None
            event.set()
        if self._stalled:  # a stall came while this round was out: it proves nothing of it
            self._start_round()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last > STALL:
            logger.info("litechan.redis.stalled", seconds=round(now - self._last, 3))
            self._stalled = True
            self._stalled_at = now
            if self._round is None:
                self._start_round()
        elif not self._stalled and self._notes.live:
            self.until = now + STALL
        self._last = now
        if not self._notes.closed:
            self._timer = self._loop.call_later(_TICK, self._tick)
