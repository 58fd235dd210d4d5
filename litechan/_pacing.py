"""How often a hot path that does not suspend yields to the event loop.

On the memory backend neither a publish nor the receive of a buffered message suspends, so
without pacing a tight loop would starve every other task. Yielding on every call would cost a
fifth of the per-message budget on asyncio; yielding once every :data:`YIELD_EVERY` calls bounds
the starvation and the delay before a cancellation is observed.

The rule every call site keeps: the checkpoint comes *before* anything is taken off a buffer or
written, so a cancellation delivered there loses no message and leaves no write half-reported.
"""

from __future__ import annotations

from typing import Final

__all__ = ["YIELD_EVERY", "Pacer"]

YIELD_EVERY: Final = 64


class Pacer:
    """Counts calls of one hot path and says when the next one should checkpoint."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    def due(self) -> bool:
        """Count one call; true once every :data:`YIELD_EVERY` calls."""
        self._count += 1
        if self._count >= YIELD_EVERY:
            self._count = 0
            return True
        return False

    def reset(self) -> None:
        """The caller just suspended for real: start counting again."""
        self._count = 0
