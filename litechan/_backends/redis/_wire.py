"""A connection's byte streams read with hiredis directly.

redis-py opens the connection (TCP, TLS, unix socket, AUTH with an ACL user, SELECT), and then
litechan reads replies from its stream with one ``hiredis.Reader``: redis-py's
``read_response`` sets up a timeout context per reply, which costs more than the server takes
to run a publish script. Replies of a whole batch come out of one ``read`` of the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import hiredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

__all__ = ["Wire"]

_CHUNK: Final = 1 << 16


class Wire:
    """Write packed commands to, and read replies from, one connected redis-py connection."""

    __slots__ = ("_parser", "_reader", "_writer", "conn")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        reader = getattr(conn, "_reader", None)
        writer = getattr(conn, "_writer", None)
        if reader is None or writer is None:
            raise redis.exceptions.ConnectionError("the connection is not open")
        self._reader: asyncio.StreamReader = reader
        self._writer: asyncio.StreamWriter = writer
        self._parser = hiredis.Reader(replyError=redis.exceptions.ResponseError)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def poll(self) -> Any:
        """The next reply if one is already buffered, else ``False``."""
        return self._parser.gets()

    async def fill(self) -> None:
        """Wait for more bytes from the server and buffer them."""
        data = await self._reader.read(_CHUNK)
        if not data:
            raise redis.exceptions.ConnectionError("Redis closed the connection")
        self._parser.feed(data)

    async def read(self) -> Any:
        """The next reply (an error reply is returned as a ``ResponseError``, not raised)."""
        parser = self._parser
        reply = parser.gets()
        while reply is False:
            data = await self._reader.read(_CHUNK)
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
        return reply
