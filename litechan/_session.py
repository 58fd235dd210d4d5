"""What the handles of one broker share, instead of reaching into the broker.

A :class:`Session` is made by the broker and held by every handle it gives out (topics,
consumers, subscribers): the backend while the broker is open, the options, the pacer that
makes publishes yield now and then, and the consumers and subscribers to close with the broker.
The handles never import the broker, and the broker is the only one to change the state.
"""

from __future__ import annotations

from typing import Protocol

from ._backends.base import Backend, BackendOptions
from ._clock import Clock
from ._errors import ResourceClosed
from ._names import check_seconds
from ._pacing import Pacer

__all__ = ["Closable", "Session"]


class Closable(Protocol):
    """What the broker closes on exit (consumers and subscribers)."""

    async def aclose(self) -> None: ...


class Session:
    """One broker's backend, options and open resources, as its handles see them."""

    __slots__ = ("_backend", "options", "pacer", "resources", "shown_url", "state")

    def __init__(self, backend: Backend, options: BackendOptions, shown_url: str) -> None:
        self._backend = backend
        self.options = options
        #: The broker's URL without its password, for messages.
        self.shown_url = shown_url
        #: "new", "open" or "closed"; set by the broker.
        self.state = "new"
        # publish/send on a backend that does not suspend must still yield now and then.
        self.pacer = Pacer()
        self.resources: set[Closable] = set()

    @property
    def clock(self) -> Clock:
        return self.options.clock

    def deadline(self, expires_in: object) -> float:
        """The ``expires_at`` of a message sent now with *expires_in* (checked)."""
        return self.options.clock.time() + check_seconds(expires_in, "expires_in", allow_zero=False)

    @property
    def backend(self) -> Backend:
        """The backend, while the broker is open."""
        if self.state != "open":
            raise ResourceClosed(
                f"broker {self.shown_url!r} is {self.state}: "
                "use it inside `async with litechan.connect(...)`"
            )
        return self._backend

    def register(self, resource: Closable) -> None:
        """Close *resource* with the broker."""
        self.resources.add(resource)

    def unregister(self, resource: Closable) -> None:
        self.resources.discard(resource)
