"""The broker: one connection to a backend, and the factory of topic handles.

A :class:`Broker` is an async context manager that owns a task group; the backend's background
work (timers, readers) and every consumer and subscriber opened through it live inside that
scope, and are closed with it. Nothing is fire-and-forget.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, final
from urllib.parse import urlsplit

import anyio
import anyio.abc

from ._backends import open_backend
from ._backends.base import Backend, BackendOptions, LiteSpec, OrderedSpec
from ._background import Background
from ._clock import Clock, SystemClock
from ._errors import InvalidArgument, ResourceClosed
from ._names import check_int, check_name, check_seconds, utf8_ok
from ._session import Session
from ._urls import redact

if TYPE_CHECKING:
    from ._lite import LiteTopics
    from ._ordered import OrderedTopic

__all__ = ["Broker", "connect"]

DEFAULT_MAX_PAYLOAD: Final = 1 << 20
MAX_PARTITIONS: Final = 4096


def connect(
    url: str,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    clock: Clock | None = None,
) -> Broker:
    """Return a broker for *url*; open it with ``async with``.

    ``memory://`` is a private in-process world, ``memory://NAME`` a world shared by every
    broker of this process opened with the same NAME, in one event loop. *max_payload* bounds
    each message's payload (``PayloadTooLarge`` above it, before anything is written). *clock*
    replaces wall time for TTL, delays, the dedupe window and ``published_at`` (see
    :class:`ManualClock`).

    :raises UnknownBackend: no backend is registered for the URL's scheme.
    :raises InvalidArgument: the URL or an option is malformed.

    .. versionadded:: 0.1.0
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"url must be a str like 'memory://', got {type(url).__name__}")
    if not utf8_ok(url):  # the URL is not echoed: it may carry a password
        raise InvalidArgument("the broker URL holds a lone surrogate, which UTF-8 cannot encode")
    if type(max_payload) is not int or max_payload < 1:
        raise InvalidArgument(f"max_payload must be a positive int, got {max_payload!r}")
    if clock is not None and not isinstance(clock, Clock):
        raise InvalidArgument(f"clock must have time() and sleep_until(), got {clock!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # the URL is not echoed: it may carry a password
        raise InvalidArgument(f"malformed broker URL: {exc}") from None
    options = BackendOptions(clock=clock or SystemClock(), max_payload=max_payload)
    return Broker(url, open_backend(parts, options), options)


@final
class Broker:
    """A connection to a backend: declares topics and hands out their handles.

    Made by :func:`connect`. Use it as an async context manager; leaving the block closes every
    consumer and subscriber opened through it (their channels end with ``CLOSED``).

    .. versionadded:: 0.1.0
    """

    def __init__(self, url: str, backend: Backend, options: BackendOptions) -> None:
        self._backend = backend
        # What the handles share; all the broker shows of its URL is without the password.
        self._session = Session(backend, options, redact(url))
        self._background = Background()
        self._ordered: dict[str, OrderedTopic] = {}
        self._lite: dict[str, LiteTopics] = {}

    def __repr__(self) -> str:
        return f"<litechan.Broker {self.url!r} {self._session.state}>"

    @property
    def url(self) -> str:
        """The URL the broker was opened with, its password (if any) replaced by ``***``."""
        return self._session.shown_url

    @property
    def clock(self) -> Clock:
        """The clock the broker reads (wall time unless one was passed to :func:`connect`)."""
        return self._session.clock

    async def __aenter__(self) -> Self:
        if self._session.state != "new":
            raise ResourceClosed("a Broker can be opened only once; call litechan.connect() again")
        task_group = await self._background.open()
        try:
            await self._backend.start(task_group)
        except BaseException as exc:
            # The caller wants exc itself (a BrokerUnavailable, say), even if the connection's
            # background tasks failed with the same outage meanwhile.
            with contextlib.suppress(BaseExceptionGroup):
                await self._background.close(exc)
            raise
        self._session.state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return await self._background.close(exc)

    async def aclose(self) -> None:
        """Close every consumer and subscriber of this broker, then the backend connection."""
        session = self._session
        if session.state != "open":
            session.state = "closed"
            return
        session.state = "closed"
        self._backend.closing()
        with anyio.CancelScope(shield=True):
            for resource in list(session.resources):
                await resource.aclose()
            await self._backend.aclose()
        # The task group's scope is cancelled by __aexit__, after the application's body: it
        # wraps that body, which must see its consumers end, not a cancellation.

    # -- handles -------------------------------------------------------------------------------

    def ordered_topic(
        self,
        name: str,
        *,
        partitions: int = 16,
        max_len: int = 100_000,
        dedupe_window: float = 300.0,
    ) -> OrderedTopic:
        """Declare (or look up) the ordered topic *name* and return its handle.

        *partitions* fixes how keys are spread (:func:`partition_for`), *max_len* the messages
        retained per partition, *dedupe_window* how long a ``dedupe_id`` is remembered.

        :raises ConfigMismatch: *name* was declared with other settings.
        :raises InvalidName: *name* breaks the naming rules.

        .. versionadded:: 0.1.0
        """
        from ._ordered import OrderedTopic

        check_name(name, "topic name")
        check_int(partitions, "partitions", 1, MAX_PARTITIONS)
        check_int(max_len, "max_len", 1)
        check_seconds(dedupe_window, "dedupe_window", allow_zero=True)
        spec = OrderedSpec(name, partitions, max_len, float(dedupe_window))
        self._session.backend.declare_ordered(spec)
        handle = self._ordered.get(name)
        if handle is None:
            handle = self._ordered[name] = OrderedTopic(self._session, spec)
        return handle

    def lite_topics(self, parent: str, *, ttl: float = 600.0, max_len: int = 10_000) -> LiteTopics:
        """Declare (or look up) the lite-topic parent *parent* and return its handle.

        Each lite topic under it is deleted after *ttl* seconds without a publish and keeps at
        most *max_len* messages.

        :raises ConfigMismatch: *parent* was declared with other settings.
        :raises InvalidName: *parent* breaks the naming rules.

        .. versionadded:: 0.1.0
        """
        from ._lite import LiteTopics

        check_name(parent, "lite-topic parent name")
        check_seconds(ttl, "ttl", allow_zero=False)
        check_int(max_len, "max_len", 1)
        spec = LiteSpec(parent, float(ttl), max_len)
        self._session.backend.declare_lite(spec)
        handle = self._lite.get(parent)
        if handle is None:
            handle = self._lite[parent] = LiteTopics(self._session, spec)
        return handle
