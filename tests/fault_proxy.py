"""A Redis-aware TCP proxy that breaks the link in precise ways, for the fault tests.

:class:`FaultProxy` sits between litechan and a real ``redis-server`` and understands RESP2 well
enough to know which reply answers which command. That lets a test aim a fault at one command:

- :meth:`FaultProxy.lose_reply`: the next command matching a rule reaches the server and runs,
  and then the client's connection is reset instead of its reply being delivered (a reply lost in
  a cut: the client cannot know whether the command ran);
- :meth:`FaultProxy.answer`: the next matching command never reaches the server; the client gets
  the given reply instead (``-LOADING ...``, ``-OOM ...``: what a server in that state says);

and break the whole link:

- :meth:`FaultProxy.drop_replies`: requests go through and run, every reply is discarded (a
  half-open link), those of subscribed connections too unless asked otherwise;
- :meth:`FaultProxy.delay`: replies are held for a while;
- :meth:`FaultProxy.silence`: nothing gets through either way, connections stay open;
- :meth:`FaultProxy.refuse`: open connections are reset, new ones reset on accept;
- :meth:`FaultProxy.restore`: normal forwarding; connections whose byte streams lost data are
  reset, as a real network would leave them unusable.

Connections that subscribed (pub/sub) are forwarded raw once their subscribe is answered: their
replies are pushes, not answers to commands, so command rules apply to them only before that.
The proxy runs its own asyncio loop in a daemon thread, so it works whatever loop the test runs;
its control methods are plain calls that return once the proxy applied them. Rules report to the
test's asyncio loop through :meth:`Rule.wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import hiredis

__all__ = ["FaultProxy", "Match", "Rule", "command", "evalsha", "scan_resp"]

T = TypeVar("T")

#: A predicate over one command's arguments (``[b"EVALSHA", b"<sha>", b"2", ...]``).
Match = Callable[[list[bytes]], bool]

_CHUNK: Final = 1 << 16
_SUBSCRIBES: Final = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})


def command(*names: str) -> Match:
    """Match commands by name (case-insensitive)."""
    wanted = {name.upper().encode() for name in names}
    return lambda args: bool(args) and args[0].upper() in wanted


def evalsha(sha: str) -> Match:
    """Match calls of the script whose SHA1 is *sha* (``EVALSHA sha ...``)."""
    digest = sha.encode()
    return lambda args: len(args) > 1 and args[0].upper() == b"EVALSHA" and args[1] == digest


def scan_resp(buf: bytes | bytearray, pos: int = 0) -> int:
    """The index just past the RESP value that starts at *pos*, or -1 if it is incomplete.

    Knows RESP2 (simple strings, errors, integers, bulk strings, arrays, nil ones too), the
    RESP3 scalar and aggregate types, and inline commands; no value is decoded.
    """
    if pos >= len(buf):
        return -1
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return -1
    kind = buf[pos : pos + 1]
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):
        return line_end + 2
    if kind in (b"$", b"!", b"="):
        size = int(buf[pos + 1 : line_end])
        if size < 0:
            return line_end + 2
        end = line_end + 2 + size + 2
        return end if end <= len(buf) else -1
    if kind in (b"*", b"~", b">", b"%"):
        count = int(buf[pos + 1 : line_end]) * (2 if kind == b"%" else 1)
        at = line_end + 2
        for _ in range(max(count, 0)):
            at = scan_resp(buf, at)
            if at < 0:
                return -1
        return at
    return line_end + 2  # an inline command


def _parse_command(raw: bytes) -> list[bytes]:
    if raw[:1] != b"*":
        return raw.strip().split()
    reader = hiredis.Reader()
    reader.feed(raw)
    parsed = reader.gets()
    return list(parsed) if isinstance(parsed, list) else []


class Rule:
    """A fault aimed at the commands matching a predicate, for its next *times* matches."""

    def __init__(
        self,
        match: Match,
        times: int,
        action: Literal["lose", "answer"],
        reply: bytes,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.match = match
        self.remaining = times
        self.action = action
        self.reply = reply
        self.fired = 0  # how many commands it hit so far
        self._loop = loop
        self._waiters: list[tuple[int, asyncio.Event]] = []
        self._lock = threading.Lock()

    def _hit(self) -> None:
        with self._lock:
            self.fired += 1
            self.remaining -= 1
            ready = [event for count, event in self._waiters if self.fired >= count]
        if self._loop is not None:
            for event in ready:
                with contextlib.suppress(RuntimeError):  # the test's loop is gone
                    self._loop.call_soon_threadsafe(event.set)

    async def wait(self, count: int = 1, *, limit: float = 20.0) -> None:
        """Return once the rule hit *count* commands; fail after *limit* seconds."""
        event = asyncio.Event()
        with self._lock:
            if self.fired >= count:
                return
            self._waiters.append((count, event))
        try:
            await asyncio.wait_for(event.wait(), limit)
        except TimeoutError:
            raise AssertionError(
                f"the proxy rule hit {self.fired} of {count} commands within {limit} s"
            ) from None


class _Slot:
    """One reply a client is owed, in order: the server's, or one the proxy makes up."""

    __slots__ = ("kind", "reply")

    def __init__(self, kind: Literal["server", "lose", "answer", "subscribe"], reply: bytes = b""):
        self.kind = kind
        self.reply = reply


class _Link:
    """One proxied client connection."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.requests = bytearray()
        self.replies = bytearray()
        self.slots: deque[_Slot] = deque()
        self.raw = False  # subscribed: replies are forwarded as they come
        self.damaged = False  # lost bytes: reset it when the link is restored
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """See the module docstring. Use as a context manager or call :meth:`start`/:meth:`close`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.accepted = 0
        self._mode: Literal["forward", "refuse", "silence", "drop_replies"] = "forward"
        self._delay = 0.0
        self._drop_pubsub = True
        self._rules: list[Rule] = []
        self._counters: list[tuple[Match, list[int]]] = []
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PROXY_PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def links(self) -> int:
        """Client connections open through the proxy."""
        return len(self._links)

    # -- lifecycle

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as exc:  # surfaced by close()
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="FaultProxy", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._error is not None:
            raise RuntimeError("the fault proxy did not start") from self._error
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        async with self._server:
            await self._stopped.wait()
            for link in list(self._links):
                self._drop(link)

    def close(self) -> None:
        """Reset every connection and stop the proxy's thread."""
        if self._thread is None:
            return
        if self._thread.is_alive() and self._stopped is not None:
            with contextlib.suppress(RuntimeError):
                self._call(self._stop)
            self._thread.join(10)
        self._thread = None
        if self._error is not None:
            raise RuntimeError("the fault proxy failed") from self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _stop(self) -> None:
        assert self._stopped is not None
        self._stopped.set()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run *fn* on the proxy's loop and return its result."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the fault proxy is not running")

        async def run() -> T:
            return fn()

        coro: Coroutine[Any, Any, T] = run()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    # -- control

    def refuse(self) -> None:
        """Reset every open connection and every new one, until :meth:`restore`."""
        self._call(lambda: self._set_mode("refuse"))

    def silence(self) -> None:
        """Let no byte through either way (connections stay open), until :meth:`restore`."""
        self._call(lambda: self._set_mode("silence"))

    def drop_replies(self, *, pubsub: bool = True) -> None:
        """Forward requests (they run) and discard every reply, until :meth:`restore`; with
        ``pubsub=False`` subscribed connections go on receiving their messages."""

        def apply() -> None:
            self._drop_pubsub = pubsub
            self._set_mode("drop_replies")

        self._call(apply)

    def delay(self, seconds: float) -> None:
        """Hold every reply *seconds* before forwarding it (0: no delay)."""

        def apply() -> None:
            self._delay = seconds

        self._call(apply)

    def restore(self) -> None:
        """Forward normally again; connections that lost bytes meanwhile are reset."""
        self._call(lambda: self._set_mode("forward"))

    def lose_reply(self, match: Match, *, times: int = 1) -> Rule:
        """Let the next *times* commands matching *match* run, then reset the client's
        connection instead of delivering each one's reply."""
        return self._add_rule(Rule(match, times, "lose", b"", _test_loop()))

    def answer(self, match: Match, reply: bytes, *, times: int = 1) -> Rule:
        """Answer the next *times* commands matching *match* with *reply* (raw RESP, e.g.
        ``b"-LOADING Redis is loading the dataset in memory\\r\\n"``) without sending them on."""
        return self._add_rule(Rule(match, times, "answer", reply, _test_loop()))

    def counter(self, match: Match) -> Callable[[], int]:
        """A function returning how many commands matching *match* went through so far."""
        seen = [0]
        self._call(lambda: self._counters.append((match, seen)))
        return lambda: seen[0]

    def _add_rule(self, rule: Rule) -> Rule:
        self._call(lambda: self._rules.append(rule))
        return rule

    def _set_mode(self, mode: Literal["forward", "refuse", "silence", "drop_replies"]) -> None:
        self._mode = mode
        for link in list(self._links):
            if mode == "refuse" or (mode == "forward" and link.damaged):
                self._drop(link)

    # -- forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "refuse":
            _abort(writer)
            return
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)  # the server is down: the client sees what it would see
            return
        link = _Link((reader, writer), upstream)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump_requests(link)),
            asyncio.create_task(self._pump_replies(link)),
        ]

    def _drop(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        _abort(link.client_writer)
        _abort(link.server_writer)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    async def _pump_requests(self, link: _Link) -> None:
        try:
            while not link.closed:
                data = await link.client_reader.read(_CHUNK)
                if not data:
                    break
                if self._mode == "silence":
                    link.damaged = True
                    continue
                link.requests += data
                self._route_requests(link)
        except (OSError, asyncio.IncompleteReadError):
            pass
        self._drop(link)

    def _route_requests(self, link: _Link) -> None:
        buf = link.requests
        start = 0
        forward = bytearray()
        while True:
            end = scan_resp(buf, start)
            if end < 0:
                break
            raw = bytes(buf[start:end])
            start = end
            if link.raw:
                forward += raw
                continue
            args = _parse_command(raw)
            for match, seen in self._counters:
                if match(args):
                    seen[0] += 1
            rule = next((r for r in self._rules if r.remaining > 0 and r.match(args)), None)
            if rule is not None and rule.action == "answer":
                rule._hit()
                link.slots.append(_Slot("answer", rule.reply))
                continue
            if rule is not None:
                rule._hit()
                link.slots.append(_Slot("lose"))
            elif args and args[0].upper() in _SUBSCRIBES:
                link.slots.append(_Slot("subscribe"))
            else:
                link.slots.append(_Slot("server"))
            forward += raw
        del buf[:start]
        if forward:
            link.server_writer.write(bytes(forward))
        self._emit_made_up(link)

    async def _pump_replies(self, link: _Link) -> None:
        try:
            while not link.closed:
                data = await link.server_reader.read(_CHUNK)
                if not data:
                    break
                if self._mode == "silence" or (
                    self._mode == "drop_replies" and (self._drop_pubsub or not link.raw)
                ):
                    link.damaged = True
                    continue
                if link.raw:
                    self._to_client(link, data)
                    continue
                link.replies += data
                self._route_replies(link)
        except (OSError, asyncio.IncompleteReadError):
            pass
        self._drop(link)

    def _route_replies(self, link: _Link) -> None:
        buf = link.replies
        start = 0
        out = bytearray()
        while not link.raw:
            end = scan_resp(buf, start)
            if end < 0:
                break
            reply = bytes(buf[start:end])
            start = end
            out += self._made_up(link)
            slot = link.slots.popleft() if link.slots else _Slot("server")
            if slot.kind == "lose":
                if out:
                    self._to_client(link, bytes(out))
                self._drop(link)
                return
            out += reply
            if slot.kind == "subscribe":
                link.raw = True
        out += self._made_up(link)
        if link.raw:
            out += buf[start:]
            start = len(buf)
        del buf[:start]
        if out:
            self._to_client(link, bytes(out))

    def _made_up(self, link: _Link) -> bytes:
        """The made-up replies now at the head of *link*'s slots (they are due now)."""
        out = bytearray()
        while link.slots and link.slots[0].kind == "answer":
            out += link.slots.popleft().reply
        return bytes(out)

    def _emit_made_up(self, link: _Link) -> None:
        out = self._made_up(link)
        if out:
            self._to_client(link, out)

    def _to_client(self, link: _Link, data: bytes) -> None:
        if link.closed:
            return
        if self._delay > 0:
            assert self._loop is not None
            self._loop.call_later(self._delay, self._write_client, link, data)
        else:
            self._write_client(link, data)

    def _write_client(self, link: _Link, data: bytes) -> None:
        if not link.closed:
            link.client_writer.write(data)

    def __repr__(self) -> str:
        return f"<FaultProxy {self.host}:{self.port} -> {self.upstream[1]} {self._mode}>"


def _test_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
