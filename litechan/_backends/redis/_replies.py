"""What a Redis error reply means, and the litechan error it becomes.

Every error reply is classified by its code, the first word of the reply:

* **transient**: the server did not run the command and will again soon (``LOADING`` its data
  after a restart, ``BUSY`` with another client's script, ``MASTERDOWN``, ``TRYAGAIN``,
  ``CLUSTERDOWN``, ``NOREPLICAS``). The client handles it like a cut: the link is dropped,
  the command and everything after it are sent again on a new connection, and callers wait up
  to ``retry`` seconds (then ``BrokerUnavailable``, naming the code).
* **refusal**: the server will not run the command in its present state or for this user
  (``OOM`` under ``maxmemory``: :class:`~litechan.Overloaded`; ``NOPERM``, ``READONLY``,
  ``MISCONF``: :class:`~litechan.ServerError`; ``NOAUTH``, ``WRONGPASS``:
  :class:`~litechan.BrokerUnavailable`). The caller gets it at once.
* **data**: litechan's keys hold something litechan did not write (``WRONGTYPE``, or the
  ``LITECHAN_FOREIGN_ID`` of its own scripts): :class:`~litechan.CorruptEntry`.
* anything else (a script error, a command the server does not know): a bug or an
  unsupported server, :class:`~litechan.ServerError`, logged as an error.

``NOSCRIPT`` is the client's own business: it loads the scripts again (as after a cut).
"""

from __future__ import annotations

import re
from typing import Final

from ..._errors import (
    BrokerUnavailable,
    CorruptEntry,
    LitechanError,
    Overloaded,
    ServerError,
)
from ._wire import ReplyError

__all__ = [
    "TRANSIENT",
    "error_code",
    "is_redirect",
    "is_refusal",
    "is_transient",
    "reply_error",
]

#: Codes of error replies that mean "not run, try again soon".
TRANSIENT: Final = frozenset(
    {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS", "NOSCRIPT"}
)
_CREDENTIALS: Final = frozenset({"NOAUTH", "WRONGPASS"})
_SERVER_REFUSALS: Final = {
    "NOPERM": "the Redis user may not run litechan's commands on these keys (ACL)",
    "READONLY": "the server is a read-only replica; connect to the primary",
    "MISCONF": "the server refuses writes because it cannot persist them",
}
_REFUSALS: Final = frozenset(
    {"OOM", "LITECHAN_FOREIGN_ID", "WRONGTYPE", *_SERVER_REFUSALS, *_CREDENTIALS, *TRANSIENT}
)


#: Redis 6.2 wraps an error a script's ``redis.call`` raised: ``ERR Error running script (call
#: to f_...): @user_script:3: @user_script: 3: -OOM command not allowed ...``.
_WRAPPED: Final = re.compile(r"ERR Error running script .*?: -([A-Z][A-Z_]*) ")


def error_code(reply: BaseException) -> str:
    """The code of an error reply: its first word (``OOM``, ``LOADING``, ``ERR``...), or, for
    an error raised inside a script on Redis 6.2, the code of that inner error."""
    text = str(reply)
    wrapped = _WRAPPED.match(text)
    if wrapped is not None:
        return wrapped.group(1)
    return text.split(" ", 1)[0] if text else ""


def is_transient(reply: object) -> bool:
    """Whether *reply* is an error reply of a command the server did not run for now."""
    return isinstance(reply, ReplyError) and error_code(reply) in TRANSIENT


def is_redirect(reply: object) -> bool:
    """Whether *reply* sends a call to another node of a cluster (``MOVED`` or ``ASK``)."""
    return isinstance(reply, ReplyError) and error_code(reply) in ("MOVED", "ASK")


def is_refusal(reply: BaseException) -> bool:
    """Whether *reply* is an expected refusal (full, no permission, read-only, foreign data),
    as opposed to a bug or an unsupported server."""
    code = error_code(reply)
    return code in _REFUSALS


def reply_error(reply: BaseException, what: str) -> LitechanError:
    """The litechan error for the error reply *reply* to a command made while doing *what*."""
    code = error_code(reply)
    text = str(reply)
    if code == "OOM":
        return Overloaded(f"{what}: the Redis server is full (maxmemory): {text}")
    if code in _SERVER_REFUSALS:
        return ServerError(f"{what}: {_SERVER_REFUSALS[code]}: {text}")
    if code in _CREDENTIALS:
        return BrokerUnavailable(f"{what}: Redis refused the credentials: {text}")
    if code == "LITECHAN_FOREIGN_ID":
        return CorruptEntry(
            f"{what}: a stream holds an entry another program added with id "
            f"{text.split()[-1]}, past litechan's offsets; delete that entry"
        )
    if code == "WRONGTYPE":
        return CorruptEntry(
            f"{what}: a key of litechan's holds another type of value (another program wrote "
            f"it; delete it): {text}"
        )
    if code in TRANSIENT:
        return BrokerUnavailable(f"{what}: Redis is not serving for now ({code}): {text}")
    return ServerError(f"{what}: Redis could not run litechan's command: {text}")
