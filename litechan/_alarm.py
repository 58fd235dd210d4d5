"""A re-armable alarm on an injectable clock, for TTL expiry and delayed redelivery.

One background task per alarm sleeps until the earliest armed deadline; arming an earlier
deadline cancels the sleep and starts again. Firing calls a plain function, which re-arms the
alarm for the next deadline if there is one. Work done per message is one comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio

from ._clock import Clock

__all__ = ["Alarm"]


class Alarm:
    """Calls ``fire()`` once the clock reaches the earliest deadline passed to :meth:`arm`."""

    __slots__ = ("_changed", "_clock", "_deadline", "_fire", "_scope", "_stopped")

    def __init__(self, clock: Clock, fire: Callable[[], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._deadline = math.inf
        self._changed = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    def arm(self, deadline: float) -> None:
        """Fire at *deadline* at the latest (an earlier armed deadline stays in force)."""
        if deadline < self._deadline:
            self._deadline = deadline
            if self._scope is not None:
                self._scope.cancel()
            self._changed.set()

    def stop(self) -> None:
        """Make :meth:`run` return; the alarm never fires again."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
        self._changed.set()

    async def run(self) -> None:
        """Serve the alarm until :meth:`stop` or cancellation; run it in the owner's task group."""
        while not self._stopped:
            if self._deadline == math.inf:
                await self._changed.wait()
                self._changed = anyio.Event()
                continue
            deadline = self._deadline
            with anyio.CancelScope() as scope:
                self._scope = scope
                await self._clock.sleep_until(deadline)
            self._scope = None
            if scope.cancel_called:
                continue  # re-armed earlier (or stopped): look again
            self._deadline = math.inf
            self._fire()
