"""Shared machinery of the Redis benchmarks (``redis_*.py`` beside this file).

Not a benchmark itself. It gives each benchmark script:

* :func:`redis_server` — a private ``redis-server`` on a free port, without persistence, started
  as a child of the benchmark and killed when it ends, so runs never touch a real server;
* :class:`Role` / :class:`Child` — a publisher, subscriber or worker in its own OS process
  (``multiprocessing`` with ``spawn``), talking to the parent over a pipe and publishing its
  progress in shared memory, so a hang is reported with how far each side got;
* stamped payloads (:func:`stamped`, :func:`stamp_of`): every contender carries its send time in
  the first 8 bytes of the payload, so publish -> deliver latency is measured the same way for
  litechan and for the hand-written baselines (which have no ``published_at``);
* :class:`Latencies`, :class:`Report`, :class:`Table` and the ``--json`` output.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.sharedctypes
import os
import platform
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec

import redis

import litechan

P = ParamSpec("P")

PAYLOAD_SIZE: Final = 320  # 10 ms of 16 kHz 16-bit mono audio
_STAMP: Final = struct.Struct("<d")

# Slots of a role's shared state (doubles, written by the child, read by the parent).
COUNT: Final = 0  # messages handled so far
LAST: Final = 1  # time.time() of the last one
GAUGE: Final = 2  # role-specific (e.g. partitions owned)
_SLOTS: Final = 3


# -- payloads and names --------------------------------------------------------------------------


def stamped(at: float, size: int = PAYLOAD_SIZE) -> bytes:
    """A *size*-byte payload whose first 8 bytes are the send time *at* (UNIX seconds)."""
    return _STAMP.pack(at) + bytes(size - _STAMP.size)


def stamp_of(payload: bytes) -> float:
    """The send time written by :func:`stamped`."""
    stamp: float = _STAMP.unpack_from(payload)[0]
    return stamp


def session_names(count: int) -> list[str]:
    """*count* distinct, deterministic session ids shaped like the UUIDs real sessions use."""
    return [str(uuid.UUID(int=i, version=4)) for i in range(count)]


# -- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    """Summary of one set of latencies, in seconds (nearest-rank percentiles)."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Latencies:
        ordered = sorted(values)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan)
        return cls(len(ordered), _rank(ordered, 0.50), _rank(ordered, 0.99), ordered[-1])


def _rank(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Report:
    """What a role sends back when it is done: how many, when, at what CPU cost."""

    count: int
    last: float  # time.time() after the last message sent or handled
    cpu: float  # CPU seconds the role's process used for them
    first: float = 0.0  # senders: time.time() of the first send (the start of the clock)
    latency: Latencies | None = None
    extra: dict[str, float] = field(default_factory=dict)


# -- the private redis-server ---------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    """A redis-server started by :func:`redis_server`, and a synchronous client to inspect it."""

    port: int
    version: str
    client: redis.Redis

    def url(self, namespace: str, options: str = "") -> str:
        """The litechan broker URL of this server, with its own key *namespace* and the extra
        URL *options* (a query string such as ``acks=async``)."""
        extra = f"&{options}" if options else ""
        return f"redis://127.0.0.1:{self.port}/0?namespace={namespace}{extra}"

    def info(self, section: str) -> dict[str, Any]:
        info: dict[str, Any] = self.client.info(section)
        return info

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the server has used since it started."""
        cpu = self.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    def flush(self) -> None:
        """Drop every key, synchronously, so the next contender starts from an empty server."""
        self.client.flushall(asynchronous=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server(binary: str) -> Iterator[RedisServer]:
    """Run a private redis-server (no RDB, no AOF) on a free port for the ``with`` block."""
    with tempfile.TemporaryDirectory(prefix="litechan-bench-") as workdir:
        log = Path(workdir) / "redis.log"
        for _ in range(5):  # another process may take the free port before the server binds it
            port = free_port()
            process = subprocess.Popen(
                [
                    binary,
                    *("--port", str(port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no"),
                    *("--dir", workdir, "--logfile", str(log), "--daemonize", "no"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60)
            try:
                if _wait_ready(process, client):
                    version = str(client.info("server")["redis_version"])
                    yield RedisServer(port, version, client)
                    return
            finally:
                client.close()
                _stop(process)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RuntimeError(f"{binary} did not start; its log ends with:\n{tail}")


def _wait_ready(process: subprocess.Popen[bytes], client: redis.Redis) -> bool:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if client.ping():
                return True
        except redis.ConnectionError:
            time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- roles in their own processes -----------------------------------------------------------------


class RoleFailed(Exception):
    """A role raised, exited, or did not answer in time; the message says how far it got."""


class Child:
    """A role's side of the link: the pipe to the parent and the shared progress slots."""

    def __init__(
        self,
        pipe: multiprocessing.connection.Connection,
        state: multiprocessing.sharedctypes.SynchronizedArray[float],
    ) -> None:
        self._pipe = pipe
        self.state = state

    def send(self, tag: str, value: object = None) -> None:
        self._pipe.send((tag, value))

    async def recv(self, tag: str) -> object:
        """Wait (without blocking the event loop) for the parent's message *tag*."""
        loop = asyncio.get_running_loop()
        fd = self._pipe.fileno()
        while not self._pipe.poll():
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
        got, value = self._pipe.recv()
        if got != tag:
            raise RuntimeError(f"expected {tag!r} from the parent, got {got!r}")
        return value

    def count(self, count: int, at: float) -> None:
        """Publish progress: *count* messages handled, the last at *at*."""
        state = self.state
        state[COUNT] = count
        state[LAST] = at


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _child_main(
    role: Callable[..., Coroutine[Any, Any, None]],
    pipe: multiprocessing.connection.Connection,
    state: multiprocessing.sharedctypes.SynchronizedArray[float],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> None:
    try:
        asyncio.run(role(Child(pipe, state), *args, **kwargs))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None


class Role:
    """A benchmark role (``async def role(child, ...)``) running in a spawned process.

    *role* and its arguments are pickled: *role* must be a module-level function.
    """

    def __init__(
        self,
        name: str,
        role: Callable[Concatenate[Child, P], Coroutine[Any, Any, None]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._pipe, child_pipe = context.Pipe()
        self.state = context.Array(ctypes.c_double, _SLOTS, lock=False)
        self._process = context.Process(
            target=_child_main,
            args=(role, child_pipe, self.state, args, kwargs),
            name=name,
            daemon=True,
        )
        self._process.start()
        child_pipe.close()

    @property
    def count(self) -> int:
        return int(self.state[COUNT])

    def send(self, tag: str, value: object = None) -> None:
        self._pipe.send((tag, value))

    def expect(self, tag: str, timeout: float) -> object:
        """The value of the role's next message, which must be *tag*."""
        return expect_all([self], tag, timeout)[0]

    def check(self) -> None:
        """Raise :class:`RoleFailed` if the process has ended (with its error, if it sent one)."""
        if self._process.is_alive():
            return
        detail = "without a word"
        if self._pipe.poll():
            got, value = self._pipe.recv()
            detail = f":\n{value}" if got == "error" else f"after sending {got!r}"
        raise RoleFailed(f"{self.name} exited (code {self._process.exitcode}) {detail}")

    def stop(self) -> None:
        """End the process (at once if it is still running) and reap it."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()


def expect_all(roles: Sequence[Role], tag: str, timeout: float) -> list[object]:
    """Wait for message *tag* from every role; :class:`RoleFailed` if one fails or is late."""
    values: dict[Role, object] = {}
    deadline = time.monotonic() + timeout
    by_pipe = {role._pipe: role for role in roles}
    while len(values) < len(roles):
        waiting = [pipe for pipe, role in by_pipe.items() if role not in values]
        left = deadline - time.monotonic()
        ready = multiprocessing.connection.wait(waiting, timeout=max(0.0, left))
        if not ready:
            late = [role for role in roles if role not in values]
            raise RoleFailed(
                f"no {tag!r} after {timeout:.0f} s from "
                + ", ".join(role.name for role in late)
                + "; progress: "
                + ", ".join(f"{role.name} {role.count:,}" for role in roles)
            )
        for pipe in ready:
            role = by_pipe[pipe]  # type: ignore[index]
            try:
                got, value = role._pipe.recv()
            except EOFError:
                raise RoleFailed(f"{role.name} exited without reporting {tag!r}") from None
            if got == "error":
                raise RoleFailed(f"{role.name} failed:\n{value}")
            if got != tag:
                raise RoleFailed(f"{role.name} sent {got!r}, expected {tag!r}")
            values[role] = value
    return [values[role] for role in roles]


@contextmanager
def roles() -> Iterator[list[Role]]:
    """A list to put :class:`Role` objects in; every one is stopped when the block ends."""
    started: list[Role] = []
    try:
        yield started
    finally:
        for role in started:
            role.stop()


async def due_batches(count: int, rate: float, start: float) -> AsyncIterator[range]:
    """Open-loop pacing: yield the indexes of *count* messages as they fall due.

    Message ``i`` is due at ``start + i / rate`` (wall clock). Whatever is due is yielded at
    once and never waits for earlier sends to finish, so a slow system sees the offered load
    pile up instead of slowing the sender down (no coordinated omission).
    """
    sent = 0
    while sent < count:
        due = min(count, math.floor((time.time() - start) * rate) + 1)
        if due > sent:
            yield range(sent, due)
            sent = due
        # Always suspend, even when behind: the sends just started must get to run.
        await asyncio.sleep(max(0.0, start + sent / rate - time.time()))


async def pump(count: int, concurrency: int, call: Callable[[int], Awaitable[object]]) -> None:
    """Await ``call(0)`` ... ``call(count - 1)`` from *concurrency* tasks, started in order."""
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            await call(index)

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, count)):
            tg.create_task(worker())


def litechan_missing(url: str) -> str | None:
    """Why litechan cannot open *url* (its Redis backend is not installed), or None."""
    try:
        litechan.connect(url)
    except litechan.UnknownBackend as exc:
        return str(exc)
    return None


# -- command line and output ----------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server") or "/usr/bin/redis-server",
        help="redis-server binary to start (a private one, on a free port)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write the results as JSON to PATH (stdout without PATH)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a contender may take before it is reported as hung (default 300)",
    )
    parser.add_argument(
        "--litechan-options",
        default="",
        metavar="QUERY",
        help="extra options of litechan's Redis URL, e.g. 'acks=async' (default: none)",
    )


def print_header(title: str, server: RedisServer, url: str) -> None:
    print(
        f"{title}: redis-server {server.version} (private, port {server.port}), "
        f"Python {platform.python_version()}, litechan {litechan.__version__}, "
        f"redis-py {redis.__version__}, {os.cpu_count()} CPUs, "
        # Other work on the machine shows up in tail latencies: say how busy it was.
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"litechan broker URL: {url}; checkout {_checkout()}")


def _checkout() -> str:
    """The commit of the litechan checkout being measured, marked when the tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit


def write_json(target: str | None, results: object) -> None:
    if target is None:
        return
    text = json.dumps(results, indent=2)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")
        print(f"results written to {target}")


class Table:
    """Rows printed as they come, under a header; the first column is left-aligned."""

    def __init__(self, *columns: tuple[str, int]) -> None:
        self._widths = [width for _, width in columns]
        self._line([name for name, _ in columns])

    def row(self, *cells: object) -> None:
        self._line([str(cell) for cell in cells])

    def _line(self, cells: Sequence[str]) -> None:
        first, *rest = zip(cells, self._widths, strict=True)
        parts = [first[0].ljust(first[1])] + [cell.rjust(width) for cell, width in rest]
        print(" ".join(parts).rstrip(), flush=True)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.2f} ms"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def ratio_line(
    label: str, value: float | None, target: str | None = None, ok: bool | None = None
) -> str:
    """``label: 1.23x (target >= 1.0x: meets)``; *value* None when a side did not finish."""
    shown = "n/a (a side was not run or did not finish)" if value is None else f"{value:.2f}x"
    if target is None:
        return f"{label}: {shown}"
    if value is None or ok is None:
        return f"{label}: {shown} (target {target})"
    return f"{label}: {shown} (target {target}: {verdict(ok)})"
