"""Time as the library sees it: an injectable clock.

TTL expiry, ``nack(delay=)``, the dedupe window and ``published_at`` all read one clock, so tests
can replace wall time by :class:`ManualClock` and make hours pass in microseconds. A backend whose
server keeps time itself (Redis key expiry) documents that it follows the server's clock instead.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol, final, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What litechan needs from a clock.

    .. versionadded:: 0.1.0
    """

    def time(self) -> float:
        """Return the current time in UNIX seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`time` has reached *deadline* (cancellable)."""
        ...


@final
class SystemClock:
    """Wall time (``time.time()``) and real sleeping.

    .. versionadded:: 0.1.0
    """

    __slots__ = ()

    def time(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the wall clock reaches *deadline*."""
        await anyio.sleep(max(0.0, deadline - time.time()))

    def __repr__(self) -> str:
        return "SystemClock()"


@final
@attrs.define(eq=False)
class ManualClock:
    """A clock that only moves when told to: :meth:`advance` is the only way time passes.

    Sleepers whose deadline is reached are woken by :meth:`advance`, in deadline order. Use one
    clock per event loop.

    .. versionadded:: 0.1.0
    """

    _now: float = attrs.field(default=1_700_000_000.0, alias="start")
    _sleepers: list[tuple[float, int, anyio.Event]] = attrs.field(factory=list, init=False)
    _counter: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    def time(self) -> float:
        """Return the clock's current time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* and wake every sleeper whose deadline passed."""
        if seconds < 0:
            raise ValueError("a ManualClock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    async def sleep_until(self, deadline: float) -> None:
        """Wait until :meth:`advance` moves the clock to *deadline* or beyond."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        item = (deadline, next(self._counter), event)
        heapq.heappush(self._sleepers, item)
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled: forget the sleeper now, not at its deadline
                self._sleepers.remove(item)
                heapq.heapify(self._sleepers)
