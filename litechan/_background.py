"""The task group a broker or a consumer holds open, from its ``__aenter__`` to its
``__aexit__``, for its background work.

An anyio task group wraps what the body of ``async with`` raised in an ``ExceptionGroup``, so
``except KeyError`` around ``async with litechan.connect(...)`` would never match.
:meth:`Background.close` lets the body's own exception out as itself; only when background work
failed as well does the group come out (both failures are in it).
"""

from __future__ import annotations

import anyio
import anyio.abc

__all__ = ["Background"]


class Background:
    """A task group held open across ``__aenter__`` / ``__aexit__`` of its owner."""

    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def group(self) -> anyio.abc.TaskGroup | None:
        """The open task group (``None`` before :meth:`open` and after :meth:`close`)."""
        return self._group

    async def open(self) -> anyio.abc.TaskGroup:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return group

    async def close(self, exc: BaseException | None = None) -> bool | None:
        """Cancel the background work and wait for it to end; return what the owner's
        ``__aexit__`` returns. *exc*, the body's exception, is left to propagate as itself
        (``None`` is returned); a failure of the background work raises an ExceptionGroup."""
        group, self._group = self._group, None
        if group is None:
            return None
        group.cancel_scope.cancel()  # the body is over: only background work is left
        tb = exc.__traceback__ if exc is not None else None
        try:
            return await group.__aexit__(type(exc) if exc is not None else None, exc, tb)
        except BaseExceptionGroup as errors:
            if exc is None or not _only(errors, exc):
                raise
            return None  # falsy: Python re-raises exc itself, with its own traceback


def _only(errors: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether *errors* holds *exc* and nothing else but cancellations."""
    cancelled = anyio.get_cancelled_exc_class()
    found, rest = errors.split(lambda e: e is exc)
    if found is None:
        return False
    return rest is None or rest.split(cancelled)[1] is None
