"""Where litechan's log events go: quiet until the application says otherwise.

An application that configured structlog (``structlog.configure``) gets every event through
its own processors, with the event name (``litechan.redis.back``) and the event's fields as
keys. Any other application gets them through the standard library logger ``litechan``, which
has a ``NullHandler`` (as the logging HOWTO asks of libraries) and so prints nothing until the
application configures ``logging``: then each event is one record whose message is the event
name followed by its fields (``litechan.redis.back server='10.0.0.5:6379' after=0.42``), with
``record.event`` and ``record.fields`` for handlers that want them apart.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = ["logger"]

_STDLIB: Final = logging.getLogger("litechan")
_STDLIB.addHandler(logging.NullHandler())


def _to_record(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The keyword arguments of the stdlib logging call for one event."""
    event = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    fields = dict(event_dict)
    text = " ".join([event, *(f"{key}={value!r}" for key, value in fields.items())])
    return {"msg": text, "exc_info": exc_info, "extra": {"event": event, "fields": fields}}


_TO_STDLIB: Final = structlog.wrap_logger(
    _STDLIB,
    processors=[structlog.stdlib.filter_by_level, _to_record],
    wrapper_class=structlog.stdlib.BoundLogger,
)
# Resolved at every call, so that an application may configure structlog at any time (and
# tests capture events with structlog.testing.capture_logs).
_TO_STRUCTLOG: Final = structlog.get_logger("litechan")


def _target() -> Any:
    return _TO_STRUCTLOG if structlog.is_configured() else _TO_STDLIB


class _Logger:
    """litechan's logger: ``logger.warning("litechan.x.y", field=value)``."""

    __slots__ = ()

    def debug(self, event: str, **fields: Any) -> None:
        _target().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        _target().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        _target().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        _target().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback)."""
        _target().exception(event, **fields)


logger: Final = _Logger()
