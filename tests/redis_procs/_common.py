"""What every child process shares: its config, event reporting and the stop signal."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import anyio.abc
import structlog

PREFIX = "@@"


def config() -> dict[str, Any]:
    """The child's configuration: the JSON object in ``argv[1]``."""
    loaded: dict[str, Any] = json.loads(sys.argv[1])
    return loaded


def setup_logging() -> None:
    """Send litechan's structlog output to stderr, keeping stdout for events."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def emit(ev: str, **fields: Any) -> float:
    """Report one event on stdout, stamped with ``time.monotonic()`` (system-wide on Linux).

    Returns the stamp.
    """
    now = time.monotonic()
    line = json.dumps({"ev": ev, "t": now, **fields})
    sys.stdout.write(f"{PREFIX}{line}\n")
    sys.stdout.flush()
    return now


async def stop_on_stdin(scope: anyio.CancelScope) -> None:
    """Cancel *scope* when a ``stop`` line arrives on stdin, or stdin ends."""
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line or line.strip() == "stop":
            emit("stopping")
            scope.cancel()
            return
