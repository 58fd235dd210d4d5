"""The Redis connection of one broker: auto-batched commands, scripts, errors, outages.

Every command of a broker goes through one :class:`Client`. Callers from any number of tasks
queue commands and await their replies; one flusher task writes everything queued as a single
pipeline on one connection and reads the replies back in order. While a batch is on the wire the
next one accumulates, so a hundred coroutines publishing at once cost a few round trips, not a
hundred (see docs/design.md for the measurements). Commands are packed here (RESP is a few lines)
and replies parsed by one ``hiredis.Reader`` per connection (``_wire``): redis-py's own pipeline
object and ``read_response`` cost several times more per command than the server does.

One connection also gives FIFO order across callers: an ack queued before a partition is
released reaches Redis before the release.

Outages: when the connection breaks, the commands of the batch in flight and everything queued
are kept and sent again once a new connection is up (a command whose reply was lost may thus
run twice: publish and send are at-least-once across a connection loss). Calls still queued
``retry`` seconds after they were made fail with :class:`~litechan.BrokerUnavailable`.
redis-py exceptions never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeAlias

import anyio
import anyio.abc
import msgspec
import redis.asyncio
import redis.exceptions
import structlog
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from ..._errors import BrokerUnavailable, CorruptEntry, LitechanError
from ._options import RedisOptions
from ._wire import Wire

__all__ = [
    "Arg",
    "Client",
    "Settled",
    "Script",
    "connection_pool",
    "entry_body",
    "pack",
    "translate",
]

logger = structlog.get_logger("litechan")

Arg: TypeAlias = bytes | str | int | float

#: Most commands written in one go; the rest waits for the next batch.
MAX_BATCH: Final = 2048
_BACKOFF_MIN: Final = 0.02
_BACKOFF_MAX: Final = 0.5

#: redis-py exceptions that mean "the server cannot be reached now".
CONNECTION_ERRORS: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
    TimeoutError,
    EOFError,
)


def pack(args: Sequence[Arg]) -> bytes:
    """Encode one command in RESP (what ``Connection.pack_command`` does, several times faster)."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        kind = arg.__class__  # exact types: faster than isinstance, and bool is not sent
        if kind is bytes:
            data: bytes = arg  # type: ignore[assignment]
        elif kind is str:
            data = arg.encode()  # type: ignore[union-attr]
        elif kind is int:
            data = b"%d" % arg  # type: ignore[str-format]
        else:
            data = repr(float(arg)).encode()
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def entry_body(fields: Any) -> bytes:
    """The body of a stream entry written by litechan (one field, ``b``), else DecodeError."""
    if type(fields) is not list or len(fields) != 2 or fields[0] != b"b":
        raise msgspec.DecodeError(f"not a litechan entry: fields {fields!r:.200}")
    body: bytes = fields[1]
    return body


def translate(exc: BaseException, what: str) -> LitechanError:
    """The litechan error for a redis-py (or socket) exception raised while doing *what*."""
    if isinstance(exc, LitechanError):
        return exc
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return BrokerUnavailable(f"{what}: Redis refused the credentials: {exc}")
    if isinstance(exc, CONNECTION_ERRORS):
        return BrokerUnavailable(f"{what}: Redis is unreachable: {exc}")
    if isinstance(exc, redis.exceptions.ResponseError):
        if str(exc).startswith("LITECHAN_FOREIGN_ID"):
            return CorruptEntry(
                f"{what}: a stream holds an entry another program added with id "
                f"{str(exc).split()[-1]}, past litechan's offsets; delete that entry"
            )
        return BrokerUnavailable(f"{what}: Redis replied with an error: {exc}")
    return BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}")


def connection_pool(options: RedisOptions) -> ConnectionPool:
    """A redis-py connection pool for *options* (TLS, unix sockets, ACL user from the URL)."""
    try:
        return ConnectionPool.from_url(
            options.client_url,
            max_connections=options.pool_size,
            socket_connect_timeout=options.connect_timeout,
            socket_timeout=options.socket_timeout,
            protocol=2,
        )
    except (ValueError, TypeError) as exc:
        from ..._errors import InvalidArgument

        raise InvalidArgument(f"malformed Redis URL: {exc}") from None


def _raise_error(reply: Any) -> None:
    if isinstance(reply, redis.exceptions.ResponseError):
        raise reply


class Script:
    """A Lua script, called by SHA1 (and loaded again after a server restart)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class _Call:
    __slots__ = ("deadline", "future", "packed", "script")

    def __init__(
        self, packed: bytes, future: asyncio.Future[Any] | None, deadline: float, script: Any
    ) -> None:
        self.packed = packed
        self.future = future
        self.deadline = deadline
        self.script: tuple[Script, Sequence[Arg], int] | None = script


class Settled:
    """Acks queued by a member and the callers waiting until they have reached Redis.

    A member queues acks (coalesced per topic); :meth:`queued` registers the member's flush as
    a hook of the next batch; ``await settled.wait()`` returns once that batch has been
    answered, so an ack that returned is durable (G3) while concurrent acks still share one
    round trip.
    """

    __slots__ = ("_client", "_flush", "_hooked", "_waiting")

    def __init__(self, client: Client, flush: Callable[[], None]) -> None:
        self._client = client
        self._flush = flush
        self._hooked = False
        self._waiting: asyncio.Future[None] | None = None

    def queued(self) -> None:
        """Something was queued: make sure the next batch flushes it."""
        if not self._hooked:
            self._hooked = True
            self._client.before_flush(self._run)

    async def wait(self) -> None:
        """Return once everything queued so far has been written and answered (with
        ``acks=async``, at once)."""
        self.queued()
        if self._client.options.acks == "async":
            return
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiting)

    def _run(self) -> None:
        self._hooked = False
        self._flush()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._client.marker().add_done_callback(functools.partial(_chain, waiting))


def _chain(target: asyncio.Future[None], source: asyncio.Future[Any]) -> None:
    if target.done():
        return
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


class Client:
    """Auto-batched commands over one connection; see the module docstring."""

    def __init__(self, options: RedisOptions, pool: ConnectionPool) -> None:
        self._options = options
        self._pool = pool
        self._queue: deque[_Call] = deque()
        self._has_work = asyncio.Event()
        self._conn: Wire | None = None
        self._scripts: dict[str, Script] = {}
        self._closed = False
        self._hooks: list[Callable[[], None]] = []
        self._held: set[AbstractConnection] = set()
        self._flusher_scope = anyio.CancelScope(shield=True)
        self.connected = asyncio.Event()

    @property
    def options(self) -> RedisOptions:
        return self._options

    def register(self, script: Script) -> None:
        """Load *script* on every new connection (a restarted server has forgotten it)."""
        self._scripts[script.sha] = script

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect once (so a wrong URL fails at ``connect``), then start the flusher."""
        try:
            self._conn = await self._connect()
        except BaseException as exc:
            raise translate(exc, f"connecting to {self._redacted()}") from None
        task_group.start_soon(self._flush_forever)

    async def aclose(self) -> None:
        self._closed = True
        self._has_work.set()
        self._flusher_scope.cancel()
        wire, self._conn = self._conn, None
        if wire is not None:
            await self._release(wire.conn)
        for call in self._queue:
            if call.future is not None and not call.future.done():
                call.future.set_exception(BrokerUnavailable("the broker was closed"))
        self._queue.clear()
        await self._pool.aclose()

    # -- calling ---------------------------------------------------------------------------------

    def _enqueue(self, packed: bytes, want_reply: bool, script: Any = None) -> _Call:
        if self._closed:
            raise BrokerUnavailable("the broker's Redis connection is closed")
        future = asyncio.get_running_loop().create_future() if want_reply else None
        call = _Call(packed, future, time.monotonic() + self._options.retry, script)
        self._queue.append(call)
        if not self._has_work.is_set():
            self._has_work.set()
        return call

    async def call(self, *args: Arg) -> Any:
        """Run one command (batched with whatever else is queued) and return its reply."""
        future = self._enqueue(pack(args), True).future
        assert future is not None
        return await future

    def call_soon(self, *args: Arg) -> None:
        """Queue one command whose reply nobody waits for (errors are logged)."""
        self._enqueue(pack(args), False)

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run *script* with *keys* and *args* (EVALSHA, batched) and return its reply."""
        packed = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        future = self._enqueue(packed, True, (script, (*keys, *args), len(keys))).future
        assert future is not None
        return await future

    def run_soon(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> None:
        """Queue *script* without waiting for its reply (acks): FIFO with every other call."""
        packed = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        self._enqueue(packed, False, (script, (*keys, *args), len(keys)))

    def marker(self) -> asyncio.Future[Any]:
        """A future resolved when everything queued before it has been answered (FIFO)."""
        future = self._enqueue(pack(("PING",)), True).future
        assert future is not None
        return future

    def before_flush(self, hook: Callable[[], None]) -> None:
        """Call *hook* right before the next batch is written (it may queue commands): how
        acks are coalesced per topic without a timer."""
        self._hooks.append(hook)
        if not self._has_work.is_set():
            self._has_work.set()

    async def drain(self) -> None:
        """Return once everything queued so far has been written and answered (or failed)."""
        if self._closed or (self._conn is None and not self._queue and not self._hooks):
            return
        with contextlib.suppress(LitechanError):
            await self.call("PING")

    async def many(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Run *commands* in one go and return their replies (errors as exception objects)."""
        futures = []
        for args in commands:
            future = self._enqueue(pack(args), True).future
            assert future is not None
            futures.append(future)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    # -- the flusher -----------------------------------------------------------------------------

    async def _connect(self) -> Wire:
        conn = await self.dedicated()
        try:
            wire = Wire(conn)
            if self._scripts:
                scripts = list(self._scripts.values())
                await wire.write(b"".join(pack(("SCRIPT", "LOAD", s.source)) for s in scripts))
                with anyio.fail_after(self._options.socket_timeout):
                    for _ in scripts:
                        _raise_error(await wire.read())
        except BaseException:
            await self._release(conn)
            raise
        self.connected.set()
        return wire

    async def _release(self, conn: AbstractConnection) -> None:
        if conn not in self._held:
            return  # released already (a reader's finally block and aclose may both try)
        self._held.discard(conn)
        try:
            await conn.disconnect()
        finally:
            await self._pool.release(conn)

    async def _flush_forever(self) -> None:
        # Shielded: a deadline around the broker cancels its task group, yet the broker still
        # closes (under a shield) by sending releases and unsubscribes that this task must
        # answer. Only aclose() stops it.
        with self._flusher_scope:
            await self._flush_loop()

    async def _flush_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._closed:
            if self._hooks:
                hooks, self._hooks = self._hooks, []
                for hook in hooks:
                    hook()
            if not self._queue:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            try:
                if self._conn is None:
                    self._conn = await self._connect()
                    logger.info("litechan.redis.reconnected", server=self._redacted())
                await self._flush(self._conn)
                backoff = _BACKOFF_MIN
            except CONNECTION_ERRORS as exc:
                wire, self._conn = self._conn, None
                if wire is not None:
                    self.connected.clear()
                    logger.warning(
                        "litechan.redis.disconnected", server=self._redacted(), error=str(exc)
                    )
                    await self._release(wire.conn)
                self._expire(exc)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _flush(self, wire: Wire) -> None:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
        done = 0
        try:
            await wire.write(b"".join([c.packed for c in batch]))
            with anyio.fail_after(self._options.socket_timeout):
                for call in batch:
                    reply = await wire.read()
                    done += 1
                    self._resolve(call, reply)
        except BaseException:
            # Whatever did not get its reply is sent again on the next connection, first.
            queue.extendleft(reversed(batch[done:]))
            raise

    def _resolve(self, call: _Call, reply: Any) -> None:
        if isinstance(reply, redis.exceptions.ResponseError):
            if call.script is not None and str(reply).startswith("NOSCRIPT"):
                # The server forgot the script (SCRIPT FLUSH): send its source this time.
                script, args, numkeys = call.script
                call.packed = pack(("EVAL", script.source, numkeys, *args))
                call.script = None
                self._queue.appendleft(call)
                return
            if call.future is None:
                logger.error("litechan.redis.command_failed", error=str(reply))
                return
        future = call.future
        if future is None or future.done():
            return
        if isinstance(reply, redis.exceptions.ResponseError):
            future.set_exception(translate(reply, "Redis"))
        else:
            future.set_result(reply)

    def _expire(self, exc: BaseException) -> None:
        """Fail the calls that have waited longer than ``retry`` for a connection."""
        now = time.monotonic()
        queue = self._queue
        if not queue or (queue[0].deadline > now and queue[-1].deadline > now):
            return
        kept: deque[_Call] = deque()
        for call in queue:
            if call.deadline > now:
                kept.append(call)
            elif call.future is not None and not call.future.done():
                call.future.set_exception(
                    BrokerUnavailable(
                        f"Redis at {self._redacted()} unreachable for {self._options.retry}s "
                        f"(the retry option): {exc}"
                    )
                )
        self._queue = kept

    def _redacted(self) -> str:
        kwargs = self._pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    # -- a dedicated connection (pub/sub) --------------------------------------------------------

    async def dedicated(self) -> AbstractConnection:
        """A new connection outside the batching one (for SUBSCRIBE); the caller releases it."""
        conn: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        self._held.add(conn)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._release(conn)
            raise
        return conn

    async def release(self, conn: AbstractConnection) -> None:
        await self._release(conn)


_ = redis.asyncio  # redis-py's asyncio package must be importable (it is: see pyproject extras)
