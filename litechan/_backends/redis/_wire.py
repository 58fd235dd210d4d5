"""A connection to a Redis server, opened and read by litechan itself.

:func:`open_wire` opens TCP (TLS for ``rediss://``, with the ``ssl`` module) or a unix socket
with asyncio streams, and does the handshake in one round trip: ``AUTH`` with the URL's user and
password, ``SELECT`` of its database, ``CLIENT SETNAME``. Replies are parsed by one
``hiredis.Reader``; a whole batch's replies come out of one read of the socket. redis-py's own
connection costs more per reply than the server spends on a publish (a timeout context per
reply, see docs/design.md), and reading its private stream attributes, as an earlier version
did, could break silently with any release.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any, Final

import hiredis

from ._options import Endpoint

__all__ = ["LinkError", "ReplyError", "Wire", "open_wire"]

_CHUNK: Final = 1 << 16


class ReplyError(Exception):
    """An error reply of the server (``-ERR ...``), returned as a value by :meth:`Wire.read`."""


class LinkError(ConnectionError):
    """The connection broke, timed out or was closed by the server."""


class Wire:
    """Write packed commands to, and read replies from, one open connection."""

    __slots__ = ("_parser", "_reader", "_writer", "address")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader(replyError=ReplyError)
        self.address = address

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:  # RuntimeError: written after close
            raise LinkError(f"writing to {self.address}: {exc}") from None

    def poll(self) -> Any:
        """The next reply if one is already buffered, else ``False``."""
        return self._parser.gets()

    async def fill(self) -> None:
        """Wait for more bytes from the server and buffer them."""
        try:
            data = await self._reader.read(_CHUNK)
        except OSError as exc:
            raise LinkError(f"reading from {self.address}: {exc}") from None
        if not data:
            raise LinkError(f"{self.address} closed the connection")
        self._parser.feed(data)

    async def read(self) -> Any:
        """The next reply (an error reply is returned as a :class:`ReplyError`, not raised)."""
        reply = self._parser.gets()
        while reply is False:
            await self.fill()
            reply = self._parser.gets()
        return reply

    def close(self) -> None:
        """Close the connection at once (what was not answered is lost)."""
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()


async def open_wire(endpoint: Endpoint, limit: float, handshake: Sequence[bytes] = ()) -> Wire:
    """Open a connection to *endpoint* within *limit* seconds and say who we are.

    *handshake* (packed commands) is sent after AUTH/SELECT/CLIENT SETNAME in the same write;
    an error reply to any of them is raised as :class:`ReplyError` (the connection is closed).
    """
    try:
        async with asyncio.timeout(limit):
            if endpoint.path:
                reader, writer = await asyncio.open_unix_connection(endpoint.path)
            else:
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.server_hostname if endpoint.tls else None,
                )
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError:
        raise LinkError(f"connecting to {endpoint.address}: no answer in {limit} s") from None
    except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError is an OSError)
        raise LinkError(f"connecting to {endpoint.address}: {exc}") from None
    wire = Wire(reader, writer, endpoint.address)
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
