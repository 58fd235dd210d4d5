"""Test side of the child processes: start one, wait for its events, stop or SIGKILL it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ._common import PREFIX

__all__ = ["Child", "Event", "spawn"]

TESTS_DIR = Path(__file__).resolve().parent.parent
Event = dict[str, Any]


class Child:
    """One running child process and the events it reported so far (in order)."""

    def __init__(self, name: str, process: anyio.abc.Process, stderr_path: Path) -> None:
        self.name = name
        self.process = process
        self.stderr_path = stderr_path
        self.events: list[Event] = []
        self.eof = False
        self.killed_at: float | None = None
        self._changed = anyio.Event()

    # -- reading

    async def _read(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        prefix = PREFIX.encode()
        try:
            while True:
                try:
                    line = await stream.receive_until(b"\n", 1 << 22)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                    break
                if line.startswith(prefix):
                    self.events.append(json.loads(line[len(prefix) :]))
                    self._wake()
        finally:
            self.eof = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def changed(self) -> anyio.Event:
        """An event set at the next report (or exit) of the child."""
        return self._changed

    def of(self, ev: str) -> list[Event]:
        """Every event named *ev* reported so far."""
        return [event for event in self.events if event["ev"] == ev]

    async def wait_for(
        self,
        ev: str,
        predicate: Callable[[Event], bool] = lambda event: True,
        *,
        limit: float,
        after: int = 0,
    ) -> Event:
        """Return the first event named *ev* (from index *after*) matching *predicate*.

        Waits up to *limit* seconds; fails with the child's recent events and stderr when it
        does not come, or when the child exits first.
        """
        with anyio.move_on_after(limit):
            while True:
                for event in self.events[after:]:
                    if event["ev"] == ev and predicate(event):
                        return event
                if self.eof:
                    raise self.failure(f"exited (code {self.process.returncode}) before {ev!r}")
                await self._changed.wait()
        raise self.failure(f"did not report {ev!r} within {limit} s")

    def failure(self, what: str) -> AssertionError:
        """An error saying *what* went wrong, with the child's last events and stderr."""
        recent = "\n".join(json.dumps(event) for event in self.events[-15:])
        return AssertionError(
            f"child {self.name} {what}\n--- last events:\n{recent}\n"
            f"--- stderr:\n{self.stderr_tail()}"
        )

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no stderr)"
        return "\n".join(text.splitlines()[-lines:])

    # -- ending

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def kill(self) -> float:
        """SIGKILL the child now; return the ``time.monotonic()`` of the kill."""
        with contextlib.suppress(ProcessLookupError):  # already gone
            self.process.send_signal(signal.SIGKILL)
        self.killed_at = time.monotonic()
        return self.killed_at

    def pause(self) -> float:
        """SIGSTOP the child (it keeps its sockets, runs nothing); return the stamp."""
        self.process.send_signal(signal.SIGSTOP)
        return time.monotonic()

    def resume(self) -> float:
        """SIGCONT a paused child; return the stamp (events it reports later are after it)."""
        self.process.send_signal(signal.SIGCONT)
        return time.monotonic()

    async def stop(self, limit: float = 10.0) -> int:
        """Ask the child to stop (a ``stop`` line); return its exit code (SIGKILL if it hangs)."""
        if self.running and self.process.stdin is not None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self.process.stdin.send(b"stop\n")
        with anyio.move_on_after(limit):
            return await self.process.wait()
        self.kill()
        await self.process.wait()
        raise self.failure(f"did not stop within {limit} s (killed)")


@asynccontextmanager
async def spawn(
    module: str, cfg: dict[str, Any], *, name: str | None = None
) -> AsyncIterator[Child]:
    """Run ``python -m redis_procs.<module> '<cfg>'``; SIGKILL it on the way out if still alive."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    with tempfile.TemporaryDirectory(prefix="litechan-child-") as directory:
        stderr_path = Path(directory) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            process = await anyio.open_process(
                [sys.executable, "-m", f"redis_procs.{module}", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=str(TESTS_DIR),
            )
        child = Child(name or module, process, stderr_path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(child._read)
                try:
                    yield child
                finally:
                    with anyio.CancelScope(shield=True):
                        if child.running:
                            child.process.kill()
                        with anyio.move_on_after(10):
                            await process.wait()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
