"""The exception tree of litechan.

Every error the library raises on purpose derives from :class:`LitechanError`, so one ``except``
clause covers them all. Errors caused by bad input also derive from the matching built-in
(``ValueError`` / ``TypeError``) so generic code that expects those keeps working. A backend's own
exceptions (redis-py's, for instance) are translated at the backend edge and never escape raw.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ConfigMismatch",
    "CorruptEntry",
    "InvalidArgument",
    "InvalidName",
    "InvalidPayload",
    "LitechanError",
    "Overloaded",
    "PayloadTooLarge",
    "ResourceClosed",
    "ServerError",
    "UnknownBackend",
]


class LitechanError(Exception):
    """Root of every exception litechan raises on purpose.

    .. versionadded:: 0.1.0
    """


class InvalidArgument(LitechanError, ValueError):
    """An argument has a value (or type) the operation cannot accept.

    .. versionadded:: 0.1.0
    """


class InvalidName(InvalidArgument):
    """A topic, parent, group, consumer or lite topic name breaks the naming rules.

    Names are 1 to 128 characters of ``A-Z a-z 0-9 _ - .`` and do not start with ``.``; see
    ``docs/concepts.md``. The rule guarantees that no name can address keys of another
    namespace, parent or lite topic on any backend.

    .. versionadded:: 0.1.0
    """


class InvalidPayload(InvalidArgument, TypeError):
    """A payload or headers value has the wrong type.

    Payloads are ``bytes``; headers are ``dict[str, str]``.

    .. versionadded:: 0.1.0
    """


class PayloadTooLarge(InvalidArgument):
    """A payload is larger than the broker's ``max_payload``; nothing was written.

    .. versionadded:: 0.1.0
    """


class UnknownBackend(InvalidArgument):
    """The URL passed to :func:`litechan.connect` names a scheme no backend is registered for.

    .. versionadded:: 0.1.0
    """


class ConfigMismatch(LitechanError):
    """A topic or lite-topic parent was declared again with other settings than its first time.

    .. versionadded:: 0.1.0
    """


class BrokerUnavailable(LitechanError):
    """The backend cannot be reached (connection refused or lost, retries exhausted).

    .. versionadded:: 0.1.0
    """


class Overloaded(LitechanError):
    """The broker refuses more work for now (a bounded queue is full, or the server is out of
    memory); nothing was written. Retry later, or shed the load.

    .. versionadded:: 0.1.0
    """


class ServerError(LitechanError):
    """The server refused or failed a command for a reason that waiting will not fix: the user
    may not run it (ACL), the server is a read-only replica, or it cannot persist. The message
    carries the server's own words.

    .. versionadded:: 0.2.0
    """


class ResourceClosed(LitechanError):
    """The broker, consumer, subscriber or channel was already closed.

    .. versionadded:: 0.1.0
    """


class CorruptEntry(LitechanError):
    """An entry found in a stream could not be decoded; it was dead-lettered, not delivered.

    Not raised to consumers: it is what dead letters and logs report as the reason.

    .. versionadded:: 0.1.0
    """
