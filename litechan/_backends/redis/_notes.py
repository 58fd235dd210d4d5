"""Notes: the pub/sub connection that tells a broker's members that something happened.

Each broker subscribes to one channel of its own (``ns:n:BROKER``); scripts publish to it when
a lite topic it owns gets a message (the note carries the message, so the subscriber does not
fetch it), when one of its lite topics is taken over, and when a partition it owns gets an entry.
Groups of ordered topics have a rebalance channel each, subscribed while a member is in them.

Pub/sub is fire-and-forget: notes published while the connection is down are lost. So every
(re)connection runs the ``on_connect`` callbacks, which reconcile the members' state with the
server in batched round trips, and checks the world marker to notice a server that came back
empty (``litechan.redis.data_lost``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import redis.exceptions
import structlog

from ._client import CONNECTION_ERRORS, Client, pack
from ._wire import Wire

__all__ = ["Notes"]

logger = structlog.get_logger("litechan")

_BACKOFF_MIN: Final = 0.02
_BACKOFF_MAX: Final = 0.5


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
        self._wire: Wire | None = None
        self._ready = anyio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        await task_group.start(self._run)

    async def aclose(self) -> None:
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            await self._client.release(wire.conn)

    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Call *handler* with each message published to *channel* (until :meth:`forget`)."""
        handlers = self._handlers.setdefault(channel.encode(), [])
        handlers.append(handler)
        if len(handlers) == 1:
            await self._send(pack(("SUBSCRIBE", channel)))

    async def forget(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Stop calling *handler* for *channel*."""
        key = channel.encode()
        handlers = self._handlers.get(key, [])
        if handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[key]
                await self._send(pack(("UNSUBSCRIBE", channel)))

    async def _send(self, packed: bytes) -> None:
        wire = self._wire
        if wire is None:
            return  # subscribed again on reconnect
        with contextlib.suppress(*CONNECTION_ERRORS):  # the reader notices and reconnects
            await wire.write(packed)

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        backoff = _BACKOFF_MIN
        first = True
        while not self._closed:
            try:
                conn = await self._client.dedicated()
            except CONNECTION_ERRORS:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            wire = Wire(conn)
            try:
                channels = [self._channel, *(c.decode() for c in self._handlers)]
                await wire.write(pack(("SUBSCRIBE", *channels)))
                with anyio.fail_after(self._client.options.socket_timeout):
                    for _ in channels:
                        await wire.read()
                self._wire = wire
                if first:
                    first = False
                    task_status.started()
                    await self._on_connect(True)
                else:
                    await self._on_connect(False)
                backoff = _BACKOFF_MIN
                await self._read(wire)
            except CONNECTION_ERRORS as exc:
                if self.closed:
                    return
                logger.warning("litechan.redis.notes_disconnected", error=str(exc))
            finally:
                if self._wire is wire:
                    self._wire = None
                await self._client.release(conn)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _read(self, wire: Wire) -> None:
        on_note = self._on_note
        own = self._channel.encode()
        handlers = self._handlers
        idle = self._client.options.socket_timeout
        pinged = False
        while True:
            reply = wire.poll()
            if reply is False:  # nothing buffered: wait for the server (one scope per read)
                with anyio.move_on_after(idle) as scope:
                    await wire.fill()
                if scope.cancelled_caught:
                    if pinged:  # no answer to a PING for a whole socket_timeout: a dead link
                        raise redis.exceptions.TimeoutError("no reply to PING on notes channel")
                    pinged = True
                    await wire.write(pack(("PING",)))
                else:
                    pinged = False
                continue
            if type(reply) is not list or reply[0] != b"message":
                continue  # (un)subscribe confirmations, pongs
            channel = reply[1]
            try:
                if channel == own:
                    on_note(reply[2])
                else:
                    for handler in handlers.get(channel, ()):
                        handler(reply[2])
            except Exception:  # a note must never stop the reader
                logger.exception("litechan.redis.note_failed", note=reply[2][:200])
