"""A connection to a Redis server, opened and read by litechan itself.

:func:`open_wire` opens TCP (TLS for ``rediss://``, with the ``ssl`` module) or a unix socket
with asyncio, and does the handshake in one round trip: ``AUTH`` with the URL's user and
password, ``SELECT`` of its database, ``CLIENT SETNAME``. Replies are parsed by one
``hiredis.Reader``; a whole batch's replies come out of one read of the socket. redis-py's own
connection costs more per reply than the server spends on a publish (a timeout context per
reply, see docs/design.md), and reading its private stream attributes, as an earlier version
did, could break silently with any release. The connection is an asyncio protocol of its own
(no stream buffer between the socket and the parser).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, cast

import hiredis

from ._options import Endpoint

__all__ = ["LinkError", "ReplyError", "Wire", "open_wire"]

#: Bytes buffered unread before the socket is no longer read (until the next fill).
_HIGH_WATER: Final = 1 << 20


class ReplyError(Exception):
    """An error reply of the server (``-ERR ...``), returned as a value by :meth:`Wire.read`."""


class LinkError(ConnectionError):
    """The connection broke, timed out or was closed by the server."""


class Wire(asyncio.Protocol):
    """Write packed commands to, and read replies from, one open connection.

    An asyncio protocol: bytes go from the socket straight into the hiredis parser (no stream
    buffer copied twice), and a read waits on one future whose timeout is a plain timer handle
    (an anyio cancel scope per read cost about 15 µs of a 55 µs round trip). Reading pauses
    while more than ``_HIGH_WATER`` bytes wait unread, so a slow reader leaves the backlog in
    the kernel and the server's output buffer, whose limits then apply, not in this process.
    """

    __slots__ = (
        "_drained",
        "_lost",
        "_parser",
        "_paused",
        "_transport",
        "_unread",
        "_waiter",
        "address",
    )

    def __init__(self, address: str) -> None:
        self._parser = hiredis.Reader(replyError=ReplyError)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._lost: LinkError | None = None
        self._paused = False
        self._unread = 0
        self.address = address

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A read-write transport (uvloop's do not subclass asyncio.Transport)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(True)
        else:
            self._unread += len(data)
            if self._unread > _HIGH_WATER and self._transport is not None:
                self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._end(LinkError(f"{self.address} closed the connection"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._end(LinkError(f"{self.address} closed the connection{detail}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _end(self, error: LinkError) -> None:
        if self._lost is None:
            self._lost = error
        for future in (self._waiter, self._drained):
            if future is not None and not future.done():
                future.set_exception(self._lost)
        self._waiter = self._drained = None

    # -- reading and writing ---------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Write *data*; wait while the kernel's send buffer is full."""
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        self._transport.write(data)
        if self._paused:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def poll(self) -> Any:
        """The next reply if one is already buffered, else ``False``."""
        return self._parser.gets()

    async def fill(self, limit: float | None = None) -> bool:
        """Wait for more bytes from the server and buffer them; ``False`` if none came within
        *limit* seconds (the connection stays usable). Raises :class:`LinkError` once the
        connection is closed."""
        if self._lost is not None:
            raise self._lost
        transport = self._transport
        assert transport is not None
        self._unread = 0
        if not transport.is_reading():
            transport.resume_reading()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if limit is None else loop.call_later(limit, _time_out, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    async def read(self) -> Any:
        """The next reply (an error reply is returned as a :class:`ReplyError`, not raised)."""
        reply = self._parser.gets()
        while reply is False:
            await self.fill()
            reply = self._parser.gets()
        return reply

    def close(self) -> None:
        """Close the connection at once (what was not answered is lost)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.abort()
        self._end(LinkError(f"the connection to {self.address} was closed"))


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def open_wire(endpoint: Endpoint, limit: float, handshake: Sequence[bytes] = ()) -> Wire:
    """Open a connection to *endpoint* within *limit* seconds and say who we are.

    *handshake* (packed commands) is sent after AUTH/SELECT/CLIENT SETNAME in the same write;
    an error reply to any of them is raised as :class:`ReplyError` (the connection is closed).
    """
    loop = asyncio.get_running_loop()
    wire = Wire(endpoint.address)
    try:
        async with asyncio.timeout(limit):
            if endpoint.path:
                await loop.create_unix_connection(lambda: wire, endpoint.path)
            else:
                # asyncio sets TCP_NODELAY on the sockets it opens
                await loop.create_connection(
                    lambda: wire,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.server_hostname if endpoint.tls else None,
                )
    except TimeoutError:
        raise LinkError(f"connecting to {endpoint.address}: no answer in {limit} s") from None
    except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError is an OSError)
        raise LinkError(f"connecting to {endpoint.address}: {exc}") from None
    commands = [*_hello(endpoint), *handshake]
    if not commands:
        return wire
    try:
        async with asyncio.timeout(limit):
            await wire.write(b"".join(commands))
            replies = [await wire.read() for _ in commands]
    except TimeoutError:
        wire.close()
        raise LinkError(f"{endpoint.address} did not answer the handshake in {limit} s") from None
    except BaseException:
        wire.close()
        raise
    for reply in replies:
        if isinstance(reply, ReplyError):
            wire.close()
            raise reply
    return wire


def _hello(endpoint: Endpoint) -> list[bytes]:
    commands: list[bytes] = []
    if endpoint.password is not None or endpoint.username:
        if endpoint.username:
            commands.append(pack(("AUTH", endpoint.username, endpoint.password or "")))
        else:
            commands.append(pack(("AUTH", endpoint.password or "")))
    if endpoint.db:
        commands.append(pack(("SELECT", endpoint.db)))
    if endpoint.client_name:
        commands.append(pack(("CLIENT", "SETNAME", endpoint.client_name)))
    return commands


def pack(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """Encode one command in RESP (hiredis' encoder, in C: about 0.15 µs an argument)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed
