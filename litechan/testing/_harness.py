"""The ground the conformance checks stand on: one *world* of a backend, openable many times.

Most guarantees are about more than one process: a gateway that resumes where a dead one stopped
(G6), a consumer group whose partitions move when a worker joins (G1, G4), a takeover (G7). A
check therefore needs several brokers sharing one backend state (one named memory world, one
Redis database) and a way to make time pass for TTLs, nack delays and dedupe windows.
:class:`Harness` packages exactly that, so the checks stay backend-neutral: a backend author
writes one :data:`BackendFactory` and runs every check against it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, TypeAlias, final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import attrs

import litechan

from .._clock import ManualClock
from .._urls import redact

__all__ = ["BackendFactory", "Harness", "memory_backend", "redis_backend"]

# How many plain checkpoints settle() runs before anyio.wait_all_tasks_blocked(): on asyncio the
# latter sleeps 0.1 s whenever some task is still runnable, so letting the wake-up chain of one
# operation run first keeps a settle at a fraction of a millisecond on the memory backend.
_SETTLE_CHECKPOINTS = 32


@final
@attrs.frozen(eq=False)
class Harness:
    """One world of a backend under test: brokers opened by :meth:`connect` share its state.

    *url* is what :func:`litechan.connect` opens; every call of :meth:`connect` is a new broker
    (a new "process") on the same world. *clock* is the :class:`ManualClock` the brokers read,
    or ``None`` when the backend keeps real time (a server that expires keys itself); then
    :meth:`advance` really sleeps. *settle_time* is how long :meth:`settle` waits, on top of
    letting every local task run, for work done outside this process (a server round trip):
    0 for in-process backends.

    .. versionadded:: 0.1.0
    """

    url: str = attrs.field(repr=redact)  # a password stays out of the repr
    clock: ManualClock | None = None
    settle_time: float = 0.0

    def connect(
        self, *, max_payload: int | None = None
    ) -> AbstractAsyncContextManager[litechan.Broker]:
        """Open a new broker on this world (``async with harness.connect() as broker:``).

        *max_payload* is passed to :func:`litechan.connect` when given.
        """
        return self._open(max_payload)

    @asynccontextmanager
    async def _open(self, max_payload: int | None) -> AsyncIterator[litechan.Broker]:
        if max_payload is None:
            broker = litechan.connect(self.url, clock=self.clock)
        else:
            broker = litechan.connect(self.url, clock=self.clock, max_payload=max_payload)
        async with broker:
            yield broker

    async def advance(self, seconds: float) -> None:
        """Let *seconds* pass for the brokers of this world, then let them react.

        With a :class:`ManualClock` time jumps at once and every timer that became due runs
        before this returns; without one this sleeps for real.
        """
        if self.clock is None:
            await anyio.sleep(seconds)
        else:
            self.clock.advance(seconds)
        await self.settle()

    async def settle(self) -> None:
        """Return once every local task is blocked (and *settle_time* has passed).

        Checks use it before asserting that something did *not* happen: whatever the brokers
        were going to deliver as a consequence of the last operation has been delivered.
        """
        for _ in range(_SETTLE_CHECKPOINTS):
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        if self.settle_time > 0:
            await anyio.sleep(self.settle_time)
            await anyio.wait_all_tasks_blocked()


#: What every check takes: a callable that opens a *fresh, empty* world of the backend under test
#: and yields its :class:`Harness` (``async with backend() as harness:``). Each call must be
#: isolated from every other call (a new memory world, a new Redis namespace or database).
#:
#: .. versionadded:: 0.1.0
BackendFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[Harness]]


@asynccontextmanager
async def memory_backend() -> AsyncIterator[Harness]:
    """A :data:`BackendFactory` for the in-process memory backend, on a :class:`ManualClock`.

    Each call opens a new named world (``memory://kit-<uuid>``), so checks never see each other's
    topics. A named memory world is dropped when its last broker closes; the harness keeps one
    broker open for its whole life, so a check may close every broker it opened and connect
    again to find the world as it left it, like a server that outlives its clients.

    .. versionadded:: 0.1.0
    """
    async with _memory_worlds() as harness:
        yield harness


def url_backend(
    make_url: Callable[[], str],
    *,
    manual_clock: bool = False,
    hold_open: bool = False,
    settle_time: float = 0.0,
) -> BackendFactory:
    """A :data:`BackendFactory` for any backend litechan can open, its own or one an installed
    package registers (see :mod:`litechan.backends`).

    Each call opens ``make_url()``, which must name a fresh, empty world (a new name, database
    or namespace each time). *manual_clock*: the brokers read a :class:`ManualClock`, which
    checks advance (for a backend that takes its time from ``connect(clock=...)``, as
    in-process ones do); otherwise time is real. *hold_open*: one broker stays open for the
    harness's life (for a world that lives only while a broker has it open). *settle_time* is
    what :meth:`Harness.settle` waits for work done outside this process.

    .. versionadded:: 0.2.0
    """

    @asynccontextmanager
    async def factory() -> AsyncIterator[Harness]:
        harness = Harness(
            url=make_url(),
            clock=ManualClock() if manual_clock else None,
            settle_time=settle_time,
        )
        if hold_open:
            async with harness.connect():
                yield harness
        else:
            yield harness

    return factory


_memory_worlds: Final = url_backend(
    lambda: f"memory://kit-{uuid.uuid4().hex}", manual_clock=True, hold_open=True
)


def redis_backend(url: str, *, settle_time: float = 0.05) -> BackendFactory:
    """A :data:`BackendFactory` for the Redis server at *url* (``redis://``, ``rediss://``,
    ``unix://``), or the Redis Cluster at *url* (``redis+cluster://``); asyncio only.

    Each call opens a fresh namespace (``namespace=kit-<uuid>`` added to the URL's query, which
    may carry other options such as ``lease``) and deletes its keys afterwards. Time is real:
    the server expires keys itself, so :meth:`Harness.advance` sleeps, and :meth:`Harness.settle`
    waits *settle_time* for notes to come back from the server.

    .. versionadded:: 0.2.0
    """

    @asynccontextmanager
    async def factory() -> AsyncIterator[Harness]:
        namespace = f"kit-{uuid.uuid4().hex[:16]}"
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "namespace"]
        query.append(("namespace", namespace))
        harness = Harness(
            url=urlunsplit(parts._replace(query=urlencode(query))), settle_time=settle_time
        )
        try:
            yield harness
        finally:
            with anyio.CancelScope(shield=True):
                await _delete_namespace(harness.url, namespace)

    return factory


async def _delete_namespace(url: str, namespace: str) -> None:
    """Remove every key of *namespace* (what a check left behind) from the server at *url*."""
    import redis.asyncio

    from .._backends.redis._options import parse_url

    options = parse_url(urlsplit(url))
    if options.seeds:  # a cluster: each primary deletes its own keys, one at a time (slots)
        for seed in options.seeds:
            client = redis.asyncio.Redis(
                host=seed.host, port=seed.port, username=seed.username, password=seed.password
            )
            try:
                if (await client.info("replication")).get("role") != "master":
                    continue
                async with client.pipeline(transaction=False) as pipe:
                    for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
                        async for key in client.scan_iter(match=pattern, count=1000):
                            pipe.unlink(key)
                    await pipe.execute()
            except redis.RedisError:
                continue  # a node down: what it held is gone with it, or comes back unused
            finally:
                await client.aclose()
        return
    client = redis.asyncio.Redis.from_url(options.client_url)
    try:
        for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(keys), 1000):
                await client.unlink(*keys[i : i + 1000])
    finally:
        await client.aclose()
