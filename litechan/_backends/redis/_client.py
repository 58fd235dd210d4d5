"""The Redis connection of one broker: auto-batched commands, scripts, errors, outages.

Every command of a broker goes through one :class:`Client`. Callers from any number of tasks
queue commands and await their replies (or hand a callback); a writer task writes what is queued
as one batch, and a reader task reads the replies back in order, so a hundred coroutines
publishing at once cost a few round trips, not a hundred (see docs/design.md). Up to
``MAX_IN_FLIGHT`` batches are on the wire at once: while the server works on one and the reader
takes the replies of another, the next accumulates. Commands are packed here (RESP is a few
lines) and replies parsed by one ``hiredis.Reader`` per connection, which litechan opens itself
(``_wire``).

One connection also gives FIFO order across callers: an ack queued before a partition is
released reaches Redis before the release.

Outages. Every failure of the link is handled the same way, whatever caused it: a cut, a
timeout, a failed handshake. The connection is dropped, the commands written and not answered go
back to the head of the queue, and everything is sent again, in order, once a new connection is
up. A command whose reply was lost may thus run twice: every script is idempotent or its caller
recovers (the ``on_reconnect`` callbacks run before anything is sent again). A *transient* error
reply (``LOADING``, ``BUSY``, ... see ``_replies``) is an outage too, on a link that is fine: the
refused commands (only they: later ones may have run) go back to the head of the queue and are
sent again after the same pause. Calls still queued ``retry`` seconds after they were made fail
with :class:`~litechan.BrokerUnavailable`, and calls made once an outage has lasted longer than
``retry`` fail at once. *Persistent* calls (cleanups: giving up a subscription or a partition)
have no deadline: they go out whenever the server is back, until the broker closes. The flusher
never dies of a server's reply; nothing of the socket layer leaves this module.
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

from ..._errors import BrokerUnavailable, InvalidArgument, LitechanError, Overloaded
from ..._log import logger
from ._options import Endpoint, RedisOptions
from ._replies import is_redirect, is_refusal, is_transient, reply_error
from ._wire import LinkError, ReplyError, Wire, open_wire, pack

__all__ = [
    "CONNECTION_ERRORS",
    "AckBatch",
    "Arg",
    "Client",
    "OnDone",
    "Script",
    "entry_body",
    "pack",
    "gather_replies",
    "translate",
]


Arg: TypeAlias = bytes | str | int | float
T = TypeVar("T")

#: Most commands written in one go; the rest waits for the next batch.
MAX_BATCH: Final = 2048
#: Batches written and not yet answered at once: while the server works on one and the client
#: reads the replies of another, the next accumulates.
MAX_IN_FLIGHT: Final = 2
_BACKOFF_MIN: Final = 0.02
_BACKOFF_MAX: Final = 0.5

#: Exceptions that mean "the server cannot be reached now".
CONNECTION_ERRORS: Final = (LinkError, OSError, TimeoutError, EOFError)


class TransientReply(Exception):
    """The server refused commands for now (``LOADING``...): an outage, on a link that is fine."""


def entry_body(fields: Any) -> bytes:
    """The body of a stream entry written by litechan (one field, ``b``), else DecodeError."""
    if type(fields) is not list or len(fields) != 2 or fields[0] != b"b":
        raise msgspec.DecodeError(f"not a litechan entry: fields {fields!r:.200}")
    body: bytes = fields[1]
    return body


def translate(exc: BaseException, what: str) -> LitechanError:
    """The litechan error for an exception raised while doing *what*."""
    if isinstance(exc, LitechanError):
        return exc
    if isinstance(exc, ReplyError):
        return reply_error(exc, what)
    if isinstance(exc, CONNECTION_ERRORS):
        return BrokerUnavailable(f"{what}: Redis is unreachable: {exc}")
    return BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class Script:
    """A Lua script, called by SHA1 and loaded again on every new connection.

    Redis 7 takes flags in a first line (``#!lua flags=allow-oom``): scripts that only keep
    litechan's bookkeeping (acks, leases, subscriptions, fetches) are flagged ``allow-oom`` so
    that consumers drain a full server, and the others are refused before they write anything.
    Redis 6.2 cannot compile that line and gets the plain source. ``@PUBLISH@`` in a source is
    ``SPUBLISH`` on Redis 7 (sharded pub/sub: a script may publish only in its own slot, which a
    cluster needs) and ``PUBLISH`` on 6.2.
    """

    __slots__ = ("flagged", "name", "sha", "sha_plain", "source", "stores_messages")

    def __init__(
        self,
        name: str,
        source: str,
        *,
        flags: Literal["", "allow-oom", "no-writes"],
        stores_messages: bool = False,
    ) -> None:
        self.name = name
        #: Publishes and sends: with the ``replicas`` option their replies wait for WAIT.
        self.stores_messages = stores_messages
        self.source = source.replace("@PUBLISH@", "PUBLISH")
        shebang = f"#!lua flags={flags}" if flags else "#!lua"
        self.flagged = f"{shebang}\n{source.replace('@PUBLISH@', 'SPUBLISH')}"
        self.sha = _sha1(self.flagged)
        self.sha_plain = _sha1(self.source)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


#: Told how a call ended: its reply, or the litechan error it failed with.
OnDone: TypeAlias = Callable[[Any], None]


class _Call:
    __slots__ = ("deadline", "future", "on_done", "packed", "redirects", "script")

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
        self.redirects = 0  # MOVED / ASK replies it got (a cluster's client bounds them)

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

    __slots__ = ("_ended", "_outcome", "_waiter", "expired", "generation", "offsets", "tag")

    def __init__(self, generation: int, tag: str = "") -> None:
        self.generation = generation
        self.tag = tag  # the epoch of a lite topic
        self.offsets: list[int] = []
        self.expired: list[int] = []  # settled unread, their deadline passed (counted apart)
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


class Bounds:
    """What bounds the calls of a :class:`Client` (or of a cluster's client, over all its
    primaries): ``retry``, how long a call may wait, and ``max_pending``, how many publishes
    and sends may wait for their answer."""

    _options: RedisOptions
    _closed: bool
    _close_by: float  # time.monotonic() by which a closing broker gives up waiting
    #: Publishes and sends accepted and not answered yet (bounded by max_pending).
    pending: int
    _roomy: asyncio.Event | None  # set when pending falls under max_pending

    @property
    def options(self) -> RedisOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._closed

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

    @property
    def server(self) -> str:
        raise NotImplementedError

    def admit(self) -> None:
        raise NotImplementedError

    @property
    def full(self) -> bool:
        """Whether ``max_pending`` publishes and sends are unanswered: a new one must wait."""
        return self.pending >= self._options.max_pending

    def answered(self, count: int) -> None:
        """*count* publishes or sends were answered (or failed): room for as many."""
        self.pending -= count
        roomy = self._roomy
        if roomy is not None and self.pending < self._options.max_pending:
            self._roomy = None
            roomy.set()

    async def wait_for_room(self, deadline: float) -> None:
        """Return once a publish or send may be accepted; raise Overloaded if none may be by
        *deadline* (``time.monotonic()``)."""
        while self.full:
            self.admit()  # closed, or an outage older than retry, says so first
            roomy = self._roomy
            if roomy is None:
                roomy = self._roomy = asyncio.Event()
            with anyio.move_on_after(deadline - time.monotonic()):
                await roomy.wait()
                continue
            limit, wait = self._options.max_pending, self._options.pending_wait
            raise Overloaded(
                f"{self.pending:,} publishes and sends wait for Redis at {self.server} "
                f"(max_pending={limit:,}) and none was answered within pending_wait={wait} s: "
                "the server does not keep up with this load"
            )


class Client(Bounds):
    """Auto-batched commands over one connection; see the module docstring."""

    def __init__(self, options: RedisOptions, endpoint: Endpoint | None = None) -> None:
        self._options = options
        self._endpoint = endpoint or options.endpoint
        #: Where a node of a cluster hands a call answered MOVED or ASK (with the error's text),
        #: instead of failing it; None on a standalone server.
        self.redirect: Callable[[_Call, str], None] | None = None
        #: Told when an outage begins (a cluster reads its slot map again: a failover?).
        self.on_down: Callable[[], None] | None = None
        self._queue: deque[_Call] = deque()
        self._has_work = asyncio.Event()
        self._wire: Wire | None = None
        self._scripts: dict[str, Script] = {}
        self._flagged = True  # the server takes script flags (Redis 7); known at connect
        self._closed = False
        #: Hooks to run before the next batch, each once (a dict: an ordered set).
        self._hooks: dict[Callable[[], None], None] = {}
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._flusher_scope = anyio.CancelScope(shield=True)
        self._down_since: float | None = None  # since when calls are not served (monotonic)
        self._replaced = False  # the link was lost: replies may be missing
        self._last_error = ""
        self._close_by = math.inf
        # The link: calls written and not answered yet, in order, and the sizes of the batches
        # they were written in.
        self._in_flight: deque[_Call] = deque()
        self._batches: deque[int] = deque()
        self._room = asyncio.Event()  # a batch was answered: the writer may write another
        self._sent = asyncio.Event()  # a batch was written: the reader has replies to wait for
        self._refused: list[_Call] = []
        self._refusal = ""
        #: With ``replicas``: stores answered, held until the WAIT written after them answers.
        self._replicating: list[tuple[_Call, Any]] = []
        self._replicas = options.replicas
        self._wait = pack(("WAIT", options.replicas, round(options.replicas_wait * 1000)))
        self.connected = asyncio.Event()
        #: Publishes and sends accepted and not answered yet (bounded by max_pending).
        self.pending = 0
        self._roomy: asyncio.Event | None = None  # set when pending falls under max_pending

    @property
    def sharded(self) -> bool:
        """Whether notes use sharded pub/sub (``SSUBSCRIBE``: Redis 7), known once connected."""
        return self._flagged

    @property
    def server(self) -> str:
        """The server's address, without credentials (for messages and logs)."""
        return self._endpoint.address

    def register(self, script: Script) -> None:
        """Load *script* on every new connection (a restarted server has forgotten it)."""
        self._scripts[script.name] = script

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* each time the server serves again after an outage (a new connection
        replaced a lost one, before anything is sent again on it; or a transient refusal
        ended): replies may be missing, calls may have failed. Returns a function that removes
        it."""
        self._reconnect_callbacks.append(callback)
        return lambda: self.remove_reconnect(callback)

    def remove_reconnect(self, callback: Callable[[], None]) -> None:
        """Stop calling *callback* (ValueError if it was not registered)."""
        self._reconnect_callbacks.remove(callback)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect once (so a wrong URL fails at ``connect``), then start the flusher."""
        try:
            self._wire = await self._connect()
        except Exception as exc:
            raise translate(exc, f"connecting to {self.server}") from None
        task_group.start_soon(self._flush_forever)

    def run_in(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the flusher without connecting first: it connects, and retries, itself (a
        cluster node found by a redirect or a new slot map)."""
        task_group.start_soon(self._flush_forever)

    async def aclose(self) -> None:
        self._stop()
        self._fail_queued(BrokerUnavailable("the broker was closed"))

    def _stop(self) -> None:
        self._closed = True
        self._has_work.set()
        self._flusher_scope.cancel()
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    def _fail_queued(self, error: LitechanError) -> None:
        # What waits in hooks for the next batch is queued first (refused at once: closed).
        self._run_hooks()
        calls = [*self._refused, *self._in_flight, *self._queue]
        self._refused, self._in_flight, self._queue = [], deque(), deque()
        self._batches.clear()
        for call in calls:
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
        now = time.monotonic()
        retry = self._options.retry
        if self._closed or (self._down_since is not None and not persistent):
            self.admit()
        future = asyncio.get_running_loop().create_future() if want_future else None
        deadline = math.inf if persistent else now + retry
        self._queue.append(_Call(packed, future, deadline, script, on_done))
        if not self._has_work.is_set():
            self._has_work.set()
        return future

    def admit(self) -> None:
        """Raise what a new call gets at once: the broker is closed, or an outage has lasted
        longer than ``retry`` (for callers that queue their call later, in a flush hook)."""
        if self._closed:
            raise BrokerUnavailable("the broker's Redis connection is closed")
        down = self._down_since
        if down is not None:
            now, retry = time.monotonic(), self._options.retry
            if now - down >= retry:
                raise BrokerUnavailable(
                    f"Redis at {self.server} unreachable for {now - down:.1f} s, longer than "
                    f"the retry option ({retry} s): {self._last_error}"
                )

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

    def call_later(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command and return the future of its reply (await it, or gather it)."""
        future: asyncio.Future[Any] = self._future(pack(args))
        return future

    async def many(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Run *commands* in one go and return their replies (errors as exception objects)."""
        return await gather_replies([self.call_later(*args) for args in commands])

    def adopt(self, call: _Call, *, asking: bool = False) -> None:
        """Queue *call*, redirected from another node of the cluster, behind what is queued
        here (after ``ASKING`` with *asking*: the slot is being imported by this node)."""
        if self._closed:
            call.end(BrokerUnavailable("the broker's Redis connection is closed"))
            return
        if asking:
            self._queue.append(_Call(pack(("ASKING",)), None, call.deadline, None, _ignore))
        self._requeue_tail(call)
        if not self._has_work.is_set():
            self._has_work.set()

    @property
    def down(self) -> bool:
        """Whether the server does not serve now (an outage is going on)."""
        return self._down_since is not None or self._wire is None

    def take_calls(self) -> list[_Call]:
        """Stop, and hand over every call not answered yet, in order (this node no longer
        serves their slots): stores whose WAIT did not answer, refused, written, queued. The
        WAITs stay: the node they go to writes its own."""
        self._stop()
        calls = [call for call, _ in self._replicating]
        calls += [*self._refused, *self._in_flight, *self._queue]
        self._replicating = []
        self._refused.clear()
        self._in_flight.clear()
        self._queue.clear()
        self._batches.clear()
        return [call for call in calls if call.on_done != self._replicated]

    def _requeue_tail(self, call: _Call) -> None:
        if call.script is not None:
            script, args = call.script
            sha = script.sha if self._flagged else script.sha_plain
            call.packed = pack(("EVALSHA", sha, *args))
        self._queue.append(call)

    async def scan(self, pattern: str) -> list[bytes]:
        """Every key matching *pattern* (SCAN: not for hot paths)."""
        keys: list[bytes] = []
        cursor: Any = 0
        while True:
            cursor, found = await self.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.extend(found)
            if int(cursor) == 0:
                return keys

    def before_flush(self, hook: Callable[[], None]) -> None:
        """Call *hook* right before the next batch is written (it may queue commands), once
        however often it is registered meanwhile: how publishes, sends and acks are coalesced
        into one call per partition without a timer. Pass the same bound method each time
        (kept in an attribute): a hook is found again by its hash."""
        hooks = self._hooks
        if hook not in hooks:
            hooks[hook] = None
            if not self._has_work.is_set():
                self._has_work.set()

    async def drain(self) -> None:
        """Return once everything queued so far has been answered or failed (bounded)."""
        if self._closed or (self._wire is None and not self._queue and not self._hooks):
            return
        with contextlib.suppress(LitechanError):
            await self.bounded(self.call("PING"))

    # -- connections -----------------------------------------------------------------------------

    async def open(self) -> Wire:
        """A new connection to the server (for the notes), closed by the caller."""
        return await open_wire(self._endpoint, self._options.connect_timeout)

    async def _connect(self) -> Wire:
        wire = await self.open()
        try:
            with anyio.fail_after(self._options.socket_timeout):
                if not self._options.seeds:
                    await self._refuse_cluster_node(wire)
                self._flagged = await self._load_scripts(wire)
        except BaseException:
            wire.close()
            raise
        self.connected.set()
        return wire

    async def _refuse_cluster_node(self, wire: Wire) -> None:
        """Raise InvalidArgument if the server is a node of a Redis Cluster: it serves only its
        own slots, and answers ``MOVED`` for the others (a parent's partitions span them all)."""
        await wire.write(pack(("INFO", "cluster")))
        info = await wire.read()
        if isinstance(info, bytes) and b"cluster_enabled:1" in info:
            raise InvalidArgument(
                f"{self.server} is a node of a Redis Cluster, which serves only its own hash "
                f"slots: connect with redis+cluster://{self.server}/ (rediss+cluster:// with "
                "TLS), which finds the other nodes from it"
            )

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

    # -- the flusher -----------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        # Shielded: a deadline around the broker cancels its task group, yet the broker still
        # closes (under a shield) by sending releases and unsubscribes that this task must
        # answer. Only aclose() stops it.
        with self._flusher_scope:
            try:
                await self._supervise()
            finally:
                # Whatever ends this task, no caller may be left waiting for it.
                self._closed = True
                self._fail_queued(BrokerUnavailable("the broker's Redis connection is closed"))

    async def _supervise(self) -> None:
        """Keep a link up and run it; after any failure, requeue what it did not finish."""
        backoff = _BACKOFF_MIN
        while not self._closed:
            self._run_hooks()  # the writer runs them while a link is up; during an outage, here
            try:
                if self._wire is None:  # after a loss: connect again even with nothing queued
                    self._wire = await self._connect()
                    self._back_up()
                elif self._down_since is not None and not self._queue and not self._hooks:
                    # Not serving, nothing queued (calls fail fast meanwhile): keep asking, or
                    # nothing would ever find out that it serves again.
                    self._queue.append(_Call(pack(("PING",)), None, math.inf, None, _ignore))
                await self._run_link(self._wire)
                backoff = _BACKOFF_MIN
            except Exception as exc:  # every failure is an outage: wait, try again
                # Stores answered but not known to be on the replicas go again, as calls whose
                # reply was lost do (at least once).
                held = [call for call, _ in self._replicating]
                self._replicating = []
                self._requeue([*held, *self._refused, *self._in_flight])
                self._refused, self._in_flight = [], deque()
                self._batches.clear()
                if isinstance(exc, TransientReply) and not str(exc).startswith("NOSCRIPT"):
                    self._outage(str(exc), "litechan.redis.not_serving")  # the link is fine
                else:
                    self._lost(exc)  # a new link (NOSCRIPT: it loads the scripts again)
                self._run_hooks()
                self._expire()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _run_link(self, wire: Wire) -> None:
        """Write batches and read their replies on *wire* until something fails (it raises)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, wire)
            await self._read(wire)

    async def _write(self, wire: Wire) -> None:
        queue = self._queue
        while True:
            self._run_hooks()
            if not queue or self._refusal:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            if len(self._batches) >= MAX_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            if self._replicas and any(_stores(call) for call in batch):
                batch.append(_Call(self._wait, None, math.inf, None, self._replicated))
            self._in_flight.extend(batch)
            self._batches.append(len(batch))
            self._sent.set()
            await wire.write(b"".join([call.packed for call in batch]))

    async def _read(self, wire: Wire) -> None:
        in_flight = self._in_flight
        batches = self._batches
        timeout = self._options.socket_timeout
        while True:
            reply = wire.poll()
            if reply is False:
                if not in_flight:
                    if self._refusal:  # every refused call is back: retry them after a pause
                        raise TransientReply(self._refusal)
                    self._sent.clear()
                    await self._sent.wait()
                    continue
                if not await wire.fill(timeout):
                    raise LinkError(f"no reply from {self.server} in socket_timeout ({timeout} s)")
                continue
            if not in_flight:
                raise LinkError(f"a reply from {self.server} that no command asked for")
            call = in_flight.popleft()
            left = batches[0] - 1
            if left:
                batches[0] = left
            else:
                batches.popleft()
                self._room.set()
            if is_transient(reply):
                # Not run, for now (loading, busy...); later commands may have run: only the
                # refused ones go again, once the server serves (after the usual pause).
                self._refused.append(call)
                self._refusal = str(reply)
            elif self.redirect is not None and is_redirect(reply):
                self.redirect(call, str(reply))  # another node serves its slot: it goes there
            else:
                self._resolve(call, reply)
                if self._down_since is not None and not self._refusal:
                    self._back_up()

    def _run_hooks(self) -> None:
        if not self._hooks:
            return
        hooks, self._hooks = self._hooks, {}
        for hook in hooks:
            try:
                hook()
            except Exception:  # a hook must never stop the flusher
                if not self._closed:
                    logger.exception("litechan.redis.hook_failed")

    def _lost(self, exc: Exception) -> None:
        """The link failed: drop it (the supervisor connects again)."""
        wire, self._wire = self._wire, None
        if wire is not None:
            self.connected.clear()
            self._replaced = True
            wire.close()
        self._outage(str(exc) or type(exc).__name__, "litechan.redis.disconnected")

    def _outage(self, error: str, event: str) -> None:
        self._refusal = ""
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(event, server=self.server, error=error)
            if self.on_down is not None:
                self.on_down()
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

    def _requeue(self, calls: list[_Call]) -> None:
        """Put *calls* back at the head of the queue, in order; a script's SHA follows the
        flavour of the server they go to next."""
        for call in calls:
            if call.script is not None:
                script, args = call.script
                sha = script.sha if self._flagged else script.sha_plain
                call.packed = pack(("EVALSHA", sha, *args))
        self._queue.extendleft(reversed(calls))

    def _replicated(self, outcome: Any) -> None:
        """The WAIT written after stores answered: they end now, stored on enough replicas, or
        failed (BrokerUnavailable: stored on the primary, maybe not on a replica)."""
        held, self._replicating = self._replicating, []
        wanted = self._options.replicas
        if isinstance(outcome, int) and outcome >= wanted:
            for call, reply in held:
                call.end(reply)
            return
        error = BrokerUnavailable(
            f"Redis at {self.server}: {outcome if isinstance(outcome, int) else 'no'} of the "
            f"{wanted} replicas asked for (the replicas option) acknowledged the write within "
            f"replicas_wait ({self._options.replicas_wait} s); it is on the primary and may "
            "be lost in a failover"
        )
        for call, _ in held:
            call.end(error)

    def _resolve(self, call: _Call, reply: Any) -> None:
        if self._replicas and _stores(call) and not isinstance(reply, ReplyError):
            self._replicating.append((call, reply))  # ends with the WAIT after it
            return
        if isinstance(reply, ReplyError):
            what = f"Redis ({call.script[0].name})" if call.script is not None else "Redis"
            error = reply_error(reply, what)
            if not is_refusal(reply):  # a bug or an unsupported server: say so loudly
                logger.error("litechan.redis.command_error", command=what, error=str(reply))
            call.end(error)
        else:
            call.end(reply)

    def _expire(self) -> None:
        """Fail the calls that have waited longer than ``retry`` for the server."""
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


async def gather_replies(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """The replies of *futures*, in order; a failed call's error as an exception object."""
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _stores(call: _Call) -> bool:
    """Whether *call* stores messages (a publish or a send)."""
    return call.script is not None and call.script[0].stores_messages


def _ignore(outcome: Any) -> None:
    """The end of a call whose outcome nobody needs (a probe)."""


def _retrieve(future: asyncio.Future[Any], name: str) -> None:
    """Retrieve the error of a call's future (and log it): a caller may not wait for it."""
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and "closed" not in str(error):
        logger.debug("litechan.redis.call_failed", command=name, error=str(error))
