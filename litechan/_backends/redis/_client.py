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

Outages. Every failure of the link is handled the same way, whatever caused it: a cut, a
timeout, a failed handshake. The connection is dropped, the commands of the batch in flight that
got no reply go back to the head of the queue, and everything is sent again, in order, once a new
connection is up. A command whose reply was lost may thus run twice: every script is idempotent
or its caller recovers (the ``on_reconnect`` callbacks run before anything is sent again). A
*transient* error reply (``LOADING``, ``BUSY``, ... see ``_replies``) is an outage too, on a
link that is fine: the refused commands (only they: later ones of the batch may have run) go
back to the head of the queue and are sent again after the same pause. Calls still queued
``retry`` seconds after they were made fail with :class:`~litechan.BrokerUnavailable`, and calls
made once an outage has lasted longer than ``retry`` fail at once. *Persistent* calls (cleanups:
giving up a subscription or a partition) have no deadline: they go out whenever the server is
back, until the broker closes. The flusher never dies of a server's reply; redis-py exceptions
never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.abc
import msgspec
import redis.asyncio
import redis.exceptions
import structlog
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from ..._errors import BrokerUnavailable, InvalidArgument, LitechanError
from ._options import RedisOptions
from ._replies import is_refusal, is_transient, reply_error
from ._wire import Wire

__all__ = [
    "CONNECTION_ERRORS",
    "AckBatch",
    "Arg",
    "Client",
    "OnDone",
    "Script",
    "connection_pool",
    "entry_body",
    "pack",
    "gather_replies",
    "translate",
]

logger = structlog.get_logger("litechan")

Arg: TypeAlias = bytes | str | int | float
T = TypeVar("T")

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


class TransientReply(redis.exceptions.ConnectionError):
    """A transient error reply (``LOADING``...): the link is treated as cut."""


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
    if isinstance(exc, redis.exceptions.ResponseError) and not isinstance(
        exc, redis.exceptions.BusyLoadingError
    ):
        return reply_error(exc, what)
    if isinstance(exc, CONNECTION_ERRORS):
        return BrokerUnavailable(f"{what}: Redis is unreachable: {exc}")
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
        raise InvalidArgument(f"malformed Redis URL: {exc}") from None


class Script:
    """A Lua script, called by SHA1 and loaded again on every new connection.

    Redis 7 takes flags in a first line (``#!lua flags=allow-oom``): scripts that only keep
    litechan's bookkeeping (acks, leases, subscriptions, fetches) are flagged ``allow-oom`` so
    that consumers drain a full server, and the others are refused before they write anything.
    Redis 6.2 cannot compile that line and gets the plain source.
    """

    __slots__ = ("flagged", "name", "sha", "sha_plain", "source")

    def __init__(
        self, name: str, source: str, *, flags: Literal["", "allow-oom", "no-writes"]
    ) -> None:
        self.name = name
        self.source = source
        self.flagged = f"#!lua flags={flags}\n{source}" if flags else f"#!lua\n{source}"
        self.sha = _sha1(self.flagged)
        self.sha_plain = _sha1(source)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


#: Told how a call ended: its reply, or the litechan error it failed with.
OnDone: TypeAlias = Callable[[Any], None]


class _Call:
    __slots__ = ("deadline", "future", "on_done", "packed", "script")

    def __init__(
        self,
        packed: bytes,
        future: asyncio.Future[Any] | None,
        deadline: float,
        script: tuple[Script, Sequence[Arg]] | None,
        on_done: OnDone | None = None,
    ) -> None:
        self.packed = packed
        self.future = future
        self.deadline = deadline
        self.script = script
        self.on_done = on_done

    def end(self, outcome: Any) -> None:
        """Hand *outcome* (a reply, or a LitechanError) to whoever waits for this call."""
        if self.on_done is not None:
            try:
                self.on_done(outcome)
            except Exception:  # a callback must never stop the flusher
                logger.exception("litechan.redis.callback_failed")
        future = self.future
        if future is not None:
            if not future.done():
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        elif isinstance(outcome, BaseException) and "closed" not in str(outcome):
            # Nobody awaits a fire-and-forget call (an ack): its failure is logged here.
            name = self.script[0].name if self.script is not None else "command"
            logger.warning("litechan.redis.command_failed", command=name, error=str(outcome))


class AckBatch:
    """Acks of one topic coalesced into one script call, and the callers waiting for its answer.

    A member adds offsets while the batch is open; right before the next write (a
    ``before_flush`` hook) it sends the batch as one call whose end it reports to :meth:`done`.
    With ``acks=sync`` every ``ack()`` of the batch waits for *that* call's answer
    (:meth:`wait`): it returns once the server applied it (or fenced it, G4), and raises the
    server's refusal or the outage that kept it from running. With ``acks=async`` nobody waits
    and nothing is allocated for it.
    """

    __slots__ = ("_ended", "_outcome", "_waiter", "generation", "offsets", "tag")

    def __init__(self, generation: int, tag: str = "") -> None:
        self.generation = generation
        self.tag = tag  # the epoch of a lite topic
        self.offsets: list[int] = []
        self._ended = False
        self._outcome: Any = None
        self._waiter: asyncio.Future[None] | None = None

    def done(self, outcome: Any) -> None:
        """The call carrying the batch ended with *outcome* (``None`` when it was not sent:
        ownership had ended here, so the acks are no-ops, G4)."""
        self._ended = True
        self._outcome = outcome
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(None)

    async def wait(self) -> None:
        """Return when the call carrying this batch is answered; raise what it raised."""
        if not self._ended:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        elif isinstance(self._outcome, BaseException):
            raise self._outcome


class Client:
    """Auto-batched commands over one connection; see the module docstring."""

    def __init__(self, options: RedisOptions, pool: ConnectionPool) -> None:
        self._options = options
        self._pool = pool
        self._queue: deque[_Call] = deque()
        self._has_work = asyncio.Event()
        self._conn: Wire | None = None
        self._scripts: dict[str, Script] = {}
        self._flagged = True  # the server takes script flags (Redis 7); known at connect
        self._closed = False
        self._hooks: list[Callable[[], None]] = []
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._held: set[AbstractConnection] = set()
        self._flusher_scope = anyio.CancelScope(shield=True)
        self._down_since: float | None = None  # since when calls are not served (monotonic)
        self._replaced = False  # the link was lost: replies may be missing
        self._last_error = ""
        self._close_by = math.inf
        self.connected = asyncio.Event()

    @property
    def options(self) -> RedisOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._closed

    def register(self, script: Script) -> None:
        """Load *script* on every new connection (a restarted server has forgotten it)."""
        self._scripts[script.name] = script

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* each time the server serves again after an outage (a new connection
        replaced a lost one, before anything is sent again on it; or a transient refusal
        ended): replies may be missing, calls may have failed. Returns a function that removes
        it."""
        self._reconnect_callbacks.append(callback)
        return lambda: self._reconnect_callbacks.remove(callback)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect once (so a wrong URL fails at ``connect``), then start the flusher."""
        try:
            self._conn = await self._connect()
        except BaseException as exc:
            raise translate(exc, f"connecting to {self.server}") from None
        task_group.start_soon(self._flush_forever)

    def closing(self) -> None:
        """The broker is closing: what is still to be answered gets ``retry`` seconds at most."""
        self._close_by = min(self._close_by, time.monotonic() + self._options.retry)

    async def bounded(self, awaitable: Awaitable[T]) -> T | None:
        """Await *awaitable* for at most ``retry`` seconds (less once the broker is closing);
        ``None`` when that time ran out."""
        limit = min(self._options.retry, self._close_by - time.monotonic())
        with anyio.move_on_after(max(0.0, limit)):
            return await awaitable
        return None

    async def aclose(self) -> None:
        self._closed = True
        self._has_work.set()
        self._flusher_scope.cancel()
        wire, self._conn = self._conn, None
        if wire is not None:
            with anyio.move_on_after(1.0):
                await self._release(wire.conn)
        self._fail_queued(BrokerUnavailable("the broker was closed"))
        with anyio.move_on_after(1.0):
            await self._pool.aclose()

    def _fail_queued(self, error: LitechanError) -> None:
        queue, self._queue = self._queue, deque()
        for call in queue:
            call.end(error)

    # -- calling ---------------------------------------------------------------------------------

    def _enqueue(
        self,
        packed: bytes,
        script: tuple[Script, Sequence[Arg]] | None = None,
        *,
        persistent: bool = False,
        want_future: bool = True,
        on_done: OnDone | None = None,
    ) -> asyncio.Future[Any] | None:
        if self._closed:
            raise BrokerUnavailable("the broker's Redis connection is closed")
        now = time.monotonic()
        retry = self._options.retry
        down = self._down_since
        if down is not None and now - down >= retry and not persistent:
            raise BrokerUnavailable(
                f"Redis at {self.server} unreachable for {now - down:.1f} s, longer than the "
                f"retry option ({retry} s): {self._last_error}"
            )
        future = asyncio.get_running_loop().create_future() if want_future else None
        deadline = math.inf if persistent else now + retry
        self._queue.append(_Call(packed, future, deadline, script, on_done))
        if not self._has_work.is_set():
            self._has_work.set()
        return future

    def _future(self, packed: bytes, script: tuple[Script, Sequence[Arg]] | None = None) -> Any:
        future = self._enqueue(packed, script)
        assert future is not None
        return future

    def _pack_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        sha = script.sha if self._flagged else script.sha_plain
        return pack(("EVALSHA", sha, len(keys), *keys, *args))

    async def call(self, *args: Arg) -> Any:
        """Run one command (batched with whatever else is queued) and return its reply."""
        return await self._future(pack(args))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run *script* with *keys* and *args* (EVALSHA, batched) and return its reply."""
        packed = self._pack_script(script, keys, args)
        return await self._future(packed, (script, (len(keys), *keys, *args)))

    def run_soon(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        persistent: bool = False,
        on_done: OnDone | None = None,
    ) -> None:
        """Queue *script* without waiting (acks): FIFO with every other call.

        *on_done* is told how it ended (its reply, or the error), as soon as the reply is read;
        without one a failure is logged. A *persistent* call has no deadline: it waits for the
        server for as long as the broker is open, and is never refused for an outage. Never
        raises: a call refused at once (the broker is closed, or an outage is older than
        retry) ends at once, through *on_done*.
        """
        packed = self._pack_script(script, keys, args)
        try:
            self._enqueue(
                packed,
                (script, (len(keys), *keys, *args)),
                persistent=persistent,
                want_future=False,
                on_done=on_done,
            )
        except LitechanError as exc:  # closed, or an outage older than retry: it ends now
            _Call(packed, None, 0.0, (script, ()), on_done).end(exc)

    def run_later(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], *, persistent: bool = False
    ) -> asyncio.Future[Any]:
        """Queue *script* now and return the future of its reply, to await later (or not: a
        failure nobody retrieved is logged). Never raises: a call refused at once (the broker
        is closed, or an outage is older than retry) comes back as a failed future."""
        packed = self._pack_script(script, keys, args)
        try:
            future = self._enqueue(
                packed, (script, (len(keys), *keys, *args)), persistent=persistent
            )
        except LitechanError as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        assert future is not None
        future.add_done_callback(lambda done: _retrieve(done, script.name))
        return future

    async def run_many(
        self, script: Script, calls: Iterable[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """Run *script* once per ``(keys, args)`` of *calls*, in one go; replies in order, a
        failed call's error as an exception object."""
        return await gather_replies(
            [
                self._future(
                    self._pack_script(script, keys, args), (script, (len(keys), *keys, *args))
                )
                for keys, args in calls
            ]
        )

    async def many(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Run *commands* in one go and return their replies (errors as exception objects)."""
        return await gather_replies([self._future(pack(args)) for args in commands])

    def before_flush(self, hook: Callable[[], None]) -> None:
        """Call *hook* right before the next batch is written (it may queue commands): how
        acks are coalesced per topic without a timer."""
        self._hooks.append(hook)
        if not self._has_work.is_set():
            self._has_work.set()

    async def drain(self) -> None:
        """Return once everything queued so far has been answered or failed (bounded)."""
        if self._closed or (self._conn is None and not self._queue and not self._hooks):
            return
        with contextlib.suppress(LitechanError):
            await self.bounded(self.call("PING"))

    # -- the flusher -----------------------------------------------------------------------------

    async def _connect(self) -> Wire:
        conn = await self.dedicated()
        try:
            wire = Wire(conn)
            with anyio.fail_after(self._options.socket_timeout):
                self._flagged = await self._load_scripts(wire)
        except BaseException:
            await self._release(conn)
            raise
        self.connected.set()
        return wire

    async def _load_scripts(self, wire: Wire) -> bool:
        """Load every script, flagged if the server compiles flags (Redis 7), else plain (6.2);
        return which."""
        scripts = list(self._scripts.values())
        for flagged in (True, False):
            sources = [s.flagged if flagged else s.source for s in scripts]
            await wire.write(b"".join(pack(("SCRIPT", "LOAD", source)) for source in sources))
            errors = [r for r in [await wire.read() for _ in scripts] if isinstance(r, Exception)]
            if not errors:
                return flagged
            if any(is_transient(error) for error in errors):
                raise TransientReply(str(errors[0]))
            if not (flagged and all("near '#'" in str(error) for error in errors)):
                raise errors[0]
        return False

    async def _release(self, conn: AbstractConnection) -> None:
        if conn not in self._held:
            return  # released already (a reader's finally block and aclose may both try)
        self._held.discard(conn)
        try:
            with anyio.move_on_after(1.0):
                await conn.disconnect()
        except Exception as exc:  # a connection that will not close is abandoned, not fatal
            logger.debug("litechan.redis.close_failed", server=self.server, error=str(exc))
        finally:
            await self._pool.release(conn)

    async def _flush_forever(self) -> None:
        # Shielded: a deadline around the broker cancels its task group, yet the broker still
        # closes (under a shield) by sending releases and unsubscribes that this task must
        # answer. Only aclose() stops it.
        with self._flusher_scope:
            try:
                await self._flush_loop()
            finally:
                # Whatever ends this task, no caller may be left waiting for it.
                self._closed = True
                self._fail_queued(BrokerUnavailable("the broker's Redis connection is closed"))

    async def _flush_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._closed:
            self._run_hooks()
            if self._conn is not None and not self._queue:
                if self._down_since is not None:
                    # Not serving, nothing queued (calls fail fast meanwhile): keep asking, or
                    # nothing would ever find out that it serves again.
                    self._queue.append(_Call(pack(("PING",)), None, math.inf, None, _ignore))
                    continue
                self._has_work.clear()
                await self._has_work.wait()
                continue
            try:
                if self._conn is None:  # after a loss: connect again even with nothing queued
                    self._conn = await self._connect()
                    self._back_up()
                if self._queue:
                    await self._flush(self._conn)
                backoff = _BACKOFF_MIN
            except Exception as exc:  # every failure is an outage: wait, try again
                if isinstance(exc, TransientReply) and not str(exc).startswith("NOSCRIPT"):
                    self._refused(str(exc))  # the link is fine; the server is not serving
                else:
                    await self._lost(exc)  # a new link (NOSCRIPT: it loads the scripts again)
                self._expire()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _run_hooks(self) -> None:
        if not self._hooks:
            return
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # a hook must never stop the flusher
                if not self._closed:
                    logger.exception("litechan.redis.hook_failed")

    async def _lost(self, exc: Exception) -> None:
        """The link failed: drop it (the loop connects again)."""
        wire, self._conn = self._conn, None
        if wire is not None:
            self.connected.clear()
            self._replaced = True
            with anyio.move_on_after(1.0):
                await self._release(wire.conn)
        self._outage(str(exc) or type(exc).__name__, "litechan.redis.disconnected")

    def _refused(self, error: str) -> None:
        """The server answered, but is not serving for now (a transient error reply)."""
        self._outage(error, "litechan.redis.not_serving")

    def _outage(self, error: str, event: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(event, server=self.server, error=error)
        elif error != self._last_error:
            logger.warning("litechan.redis.still_unavailable", server=self.server, error=error)
        self._last_error = error

    def _back_up(self) -> None:
        """The server serves again after an outage: let members recover what calls that failed
        or lost their replies meanwhile left undone, and go on."""
        if self._down_since is None and not self._replaced:
            return
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            logger.info("litechan.redis.back", server=self.server, after=round(down, 3))
        self._replaced = False
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                logger.exception("litechan.redis.reconnect_callback_failed")

    async def _flush(self, wire: Wire) -> None:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
        done = 0
        refused: list[_Call] = []
        refusal: Any = None
        try:
            await wire.write(b"".join([c.packed for c in batch]))
            with anyio.fail_after(self._options.socket_timeout):
                for call in batch:
                    reply = await wire.read()
                    done += 1
                    if is_transient(reply):
                        refused.append(call)  # not run: sent again below
                        refusal = reply
                    else:
                        self._resolve(call, reply)
        except BaseException:
            # What got no reply is sent again on the next connection, first, in order.
            self._requeue([*refused, *batch[done:]])
            raise
        if refused:
            # The server refused these for now (loading, busy...) and may have run later ones
            # of the batch: only the refused ones go again, after a pause, as after a cut.
            self._requeue(refused)
            raise TransientReply(str(refusal))
        if self._down_since is not None:
            self._back_up()

    def _requeue(self, calls: list[_Call]) -> None:
        """Put *calls* back at the head of the queue, in order; a script's SHA follows the
        flavour of the server they go to next."""
        for call in calls:
            if call.script is not None:
                script, args = call.script
                sha = script.sha if self._flagged else script.sha_plain
                call.packed = pack(("EVALSHA", sha, *args))
        self._queue.extendleft(reversed(calls))

    def _resolve(self, call: _Call, reply: Any) -> None:
        if isinstance(reply, redis.exceptions.ResponseError):
            what = f"Redis ({call.script[0].name})" if call.script is not None else "Redis"
            error = reply_error(reply, what)
            if not is_refusal(reply):  # a bug or an unsupported server: say so loudly
                logger.error("litechan.redis.command_error", command=what, error=str(reply))
            call.end(error)
        else:
            call.end(reply)

    def _expire(self) -> None:
        """Fail the calls that have waited longer than ``retry`` for a connection."""
        now = time.monotonic()
        queue = self._queue
        if not queue or all(call.deadline > now for call in (queue[0], queue[-1])):
            return
        kept: deque[_Call] = deque()
        expired: list[_Call] = []
        for call in queue:
            (kept if call.deadline > now else expired).append(call)
        self._queue = kept
        for call in expired:
            call.end(
                BrokerUnavailable(
                    f"Redis at {self.server} unreachable for {self._options.retry} s "
                    f"(the retry option): {self._last_error}"
                )
            )

    @property
    def server(self) -> str:
        """The server's address, without credentials (for messages and logs)."""
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


async def gather_replies(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """The replies of *futures*, in order; a failed call's error as an exception object."""
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _ignore(outcome: Any) -> None:
    """The end of a call whose outcome nobody needs (a probe)."""


def _retrieve(future: asyncio.Future[Any], name: str) -> None:
    """Retrieve the error of a call's future (and log it): a caller may not wait for it."""
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and "closed" not in str(error):
        logger.debug("litechan.redis.call_failed", command=name, error=str(error))


_ = redis.asyncio  # redis-py's asyncio package must be importable (it is: see pyproject extras)
