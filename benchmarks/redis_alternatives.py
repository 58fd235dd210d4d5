"""Micro-measurements behind the design of the Redis backend (docs/design.md, "Alternatives
measured").

Each measure compares the design litechan uses with the alternative it rejected, both measured in
the same run on the same private redis-server (started by this script on a free port, with
``--save "" --appendonly no``, flushed between measures, killed at the end), on asyncio:

a. **Batching.** 100 concurrent tasks each awaiting one ``XADD`` (320 bytes) at a time through
   plain redis-py ``redis.asyncio.Redis``; the same XADDs through redis-py pipelines of 200
   (``transaction=False``, one task); the same XADDs from 100 concurrent tasks through litechan's
   auto-batching ``Client`` (what the Redis backend uses). msg/s each.
b. **Packing.** Client-side cost of encoding one ``EVALSHA`` with 7 arguments after ``numkeys``
   (the shape of a lite publish of one message): redis-py's asyncio ``Connection.pack_command``
   vs litechan's ``pack`` (hiredis' encoder; µs per call, best of 5 ``timeit`` runs).
c. **Delivery to a subscriber owning S=5,000 streams.** 20,000 messages of 320 bytes, published
   round-robin over the S streams in pipelined batches of 50 (the next batch once the previous
   one is delivered): a reader looping ``XREAD BLOCK`` over all S keys with their last ids, vs a
   reader of one pub/sub channel to which each publish also sends the message (``XADD`` +
   ``PUBLISH`` carrying it). Both use raw redis-py connections (hiredis replies) and litechan's
   packer. Reported: wall msg/s, and the CPU time of server + this process per delivered message.
d. **Memory per idle lite topic.** litechan publishes one 320-byte message to each of 10,000 lite
   topics (its own namespace); the growth of ``used_memory`` (``INFO memory``, read with no
   litechan connection open) divided by 10,000, and ``MEMORY USAGE`` of the two keys of one topic
   (its list ``{TAG}:d:TOPIC`` and hash ``{TAG}:m:TOPIC``). The alternative it replaced, measured
   the same way: a stream per topic holding the message as one entry, beside the same small hash
   (written with redis-py pipelines), at the server's default ``stream-node-max-bytes`` (4096:
   Redis preallocates a new stream's first node up to it). Target: <= 1 KiB per topic.

Command (from the repository root, after ``pip install -e ".[redis]"``, with ``redis-server``
on ``PATH``; about a minute on a 2-core machine)::

    .venv/bin/python benchmarks/redis_alternatives.py

``--redis-server PATH`` picks another server binary.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import anyio
import redis
import redis.asyncio
from _common import RedisServer, redis_server
from redis.asyncio.connection import Connection

import litechan
from litechan._backends.redis._client import Client, pack
from litechan._backends.redis._options import parse_url

PAYLOAD: Final = bytes(320)
TASKS: Final = 100  # concurrent publishing tasks (a)
PIPELINE: Final = 200  # commands per redis-py pipeline (a)
XADDS: Final = 50_000  # messages per contender and round (a)
ROUNDS: Final = 3  # rounds of (a), contenders interleaved; the best of each is kept
STREAMS: Final = 5_000  # streams owned by the subscriber (c)
DELIVERIES: Final = 20_000  # messages delivered per contender (c)
PACE: Final = 50  # messages published per batch (c)
BUDGET: Final = 20.0  # seconds at most per contender (c)
TOPICS: Final = 10_000  # idle lite topics (d)
TARGET_BYTES: Final = 1024  # per idle lite topic (d)
TOPIC_NAMES: Final = [str(uuid.UUID(int=i, version=4)) for i in range(TOPICS)]


# -- the private redis-server ---------------------------------------------------------------------


def row(label: str, value: str, ratio: float | None = None) -> None:
    shown = "" if ratio is None else f"{ratio:8.2f}x"
    print(f"   {label:<52} {value:>18} {shown}".rstrip())


# -- a. batching ----------------------------------------------------------------------------------


async def _timed(run: Callable[[int], Awaitable[None]], count: int) -> float:
    await run(2_000)  # warm-up: connections open, code paths hot
    start = time.perf_counter()
    await run(count)
    return count / (time.perf_counter() - start)


async def xadd_plain(server: RedisServer, count: int) -> float:
    """100 tasks, each awaiting one XADD after another, through redis.asyncio.Redis."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)

    async def run(total: int) -> None:
        async def task(i: int) -> None:
            key = f"alt:a:{i}"
            for _ in range(total // TASKS):
                await client.xadd(key, {"b": PAYLOAD})

        async with anyio.create_task_group() as tg:
            for i in range(TASKS):
                tg.start_soon(task, i)

    try:
        return await _timed(run, count)
    finally:
        await client.aclose()


async def xadd_pipelined(server: RedisServer, count: int) -> float:
    """One task sending the same XADDs in redis-py pipelines of 200."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)

    async def run(total: int) -> None:
        sent = 0
        while sent < total:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(sent, min(total, sent + PIPELINE)):
                    pipe.xadd(f"alt:a:{i % TASKS}", {"b": PAYLOAD})
                await pipe.execute()
            sent += PIPELINE

    try:
        return await _timed(run, count)
    finally:
        await client.aclose()


async def xadd_litechan(server: RedisServer, count: int) -> float:
    """100 tasks, each awaiting one XADD after another, through litechan's auto-batching Client."""
    options = parse_url(urlsplit(server.url("alternatives")))
    client = Client(options)

    async def run(total: int) -> None:
        async def task(i: int) -> None:
            key = f"alt:a:{i}"
            for _ in range(total // TASKS):
                await client.call("XADD", key, "*", "b", PAYLOAD)

        async with anyio.create_task_group() as inner:
            for i in range(TASKS):
                inner.start_soon(task, i)

    rate = 0.0
    async with anyio.create_task_group() as tg:
        await client.start(tg)  # as RedisBackend.start does (no scripts registered)
        try:
            rate = await _timed(run, count)
        finally:
            await client.aclose()
    return rate


async def measure_batching(server: RedisServer) -> dict[str, float]:
    print(
        f"a. XADD of {len(PAYLOAD)} bytes, {XADDS:,} messages per contender, "
        f"best of {ROUNDS} interleaved rounds"
    )
    contenders = {
        f"redis-py, {TASKS} tasks, one await per XADD": xadd_plain,
        f"redis-py pipelines of {PIPELINE}, one task": xadd_pipelined,
        f"litechan Client (auto-batching), {TASKS} tasks": xadd_litechan,
    }
    results = dict.fromkeys(contenders, 0.0)
    for _ in range(ROUNDS):
        for label, contender in contenders.items():
            server.flush()
            results[label] = max(results[label], await contender(server, XADDS))
    base = next(iter(results.values()))
    for label, rate in results.items():
        row(label, f"{rate:,.0f} msg/s", rate / base)
    return results


# -- b. packing -----------------------------------------------------------------------------------


def measure_packing() -> dict[str, float]:
    args: tuple[bytes | str | int, ...] = (
        "EVALSHA",
        "0123456789abcdef0123456789abcdef01234567",
        2,
        "{litechan:l:replies:0.0}:m:6f1c2b8e-9d4a-4c1e-8f7a-2b3c4d5e6f70",
        "{litechan:l:replies:0.0}:d:6f1c2b8e-9d4a-4c1e-8f7a-2b3c4d5e6f70",
        660_000,
        10_000,
        "a1b2c3d4e5f6",
        1,
        PAYLOAD,
    )
    conn = Connection()
    assert b"".join(conn.pack_command(*args)) == pack(args)  # the same bytes on the wire

    def best(stmt: Callable[[], object]) -> float:
        timer = timeit.Timer(stmt)
        number, _ = timer.autorange()
        return min(timer.repeat(5, number)) / number * 1e6

    redis_py = best(lambda: conn.pack_command(*args))
    ours = best(lambda: pack(args))
    print("b. packing one EVALSHA with 7 arguments after numkeys (client CPU per command)")
    row("redis-py Connection.pack_command", f"{redis_py:.2f} µs", 1.0)
    row("litechan pack (hiredis)", f"{ours:.2f} µs", redis_py / ours)
    return {"redis-py pack_command": redis_py, "litechan pack": ours}


# -- c. delivery to a subscriber owning S streams -------------------------------------------------


async def _raw(server: RedisServer) -> Connection:
    conn = Connection(host="127.0.0.1", port=server.port, socket_timeout=None, protocol=2)
    await conn.connect()  # type: ignore[no-untyped-call]
    return conn


class _Delivery:
    """What the reader of (c) has received; the publisher waits on it to pace itself."""

    def __init__(self) -> None:
        self.received = 0
        self.reads = 0  # read round trips (XREAD calls) or notes read
        self.progress = asyncio.Event()
        self.ready = asyncio.Event()

    def got(self, n: int) -> None:
        self.received += n
        self.progress.set()

    async def wait_for(self, target: int) -> None:
        while self.received < target:
            self.progress.clear()
            await self.progress.wait()


async def _disconnect(conn: Connection) -> None:
    with anyio.CancelScope(shield=True):
        await conn.disconnect()


async def _publish(
    server: RedisServer, delivery: _Delivery, keys: list[str], note: str | None, deadline: float
) -> int:
    """Publish round-robin over *keys*, PACE per pipeline, each batch once the previous one was
    delivered; stop after DELIVERIES messages or at *deadline*. Return how many were sent."""
    conn = await _raw(server)
    try:
        sent = 0
        while sent < DELIVERIES and time.perf_counter() < deadline:
            batch = range(sent, min(DELIVERIES, sent + PACE))
            commands = []
            for i in batch:
                commands.append(pack(("XADD", keys[i % len(keys)], "*", "b", PAYLOAD)))
                if note is not None:
                    commands.append(pack(("PUBLISH", note, PAYLOAD)))
            await conn.send_packed_command(b"".join(commands), check_health=False)
            for _ in commands:
                await conn.read_response()
            sent += len(batch)
            await delivery.wait_for(sent)
        return sent
    finally:
        await _disconnect(conn)


async def _read_xread(server: RedisServer, delivery: _Delivery, keys: list[str]) -> None:
    """Loop XREAD BLOCK over every key with its last id (until cancelled)."""
    conn = await _raw(server)
    index = {key.encode(): i for i, key in enumerate(keys)}
    ids: list[bytes | str] = ["0-0"] * len(keys)
    delivery.ready.set()
    try:
        while True:
            await conn.send_packed_command(
                pack(("XREAD", "BLOCK", 1000, "STREAMS", *keys, *ids)), check_health=False
            )
            reply = await conn.read_response()
            delivery.reads += 1
            if not reply:
                continue
            n = 0
            for key, entries in reply:
                ids[index[key]] = entries[-1][0]
                n += len(entries)
            delivery.got(n)
    finally:
        await _disconnect(conn)


async def _read_notes(server: RedisServer, delivery: _Delivery, channel: str) -> None:
    """Read the messages published to *channel* (until cancelled)."""
    conn = await _raw(server)
    try:
        await conn.send_packed_command(pack(("SUBSCRIBE", channel)), check_health=False)
        await conn.read_response()
        delivery.ready.set()
        while True:
            reply = await conn.read_response()
            if reply[0] == b"message":
                delivery.reads += 1
                delivery.got(1)
    finally:
        await _disconnect(conn)


async def deliver(server: RedisServer, mode: str) -> tuple[float, float, float, int]:
    """(msg/s wall, µs of server + client CPU per message, messages per read, delivered)."""
    keys = [f"alt:c:{uuid.UUID(int=i, version=4)}" for i in range(STREAMS)]
    channel = "alt:c:notes"
    delivery = _Delivery()
    async with anyio.create_task_group() as tg:
        if mode == "xread":
            tg.start_soon(_read_xread, server, delivery, keys)
        else:
            tg.start_soon(_read_notes, server, delivery, channel)
        await delivery.ready.wait()
        await asyncio.sleep(0.05)  # the reader's first command is in effect
        server_cpu = server.cpu_seconds()
        client_cpu = time.process_time()
        start = time.perf_counter()
        sent = await _publish(
            server, delivery, keys, None if mode == "xread" else channel, start + BUDGET
        )
        wall = time.perf_counter() - start
        cpu = (time.process_time() - client_cpu) + (server.cpu_seconds() - server_cpu)
        tg.cancel_scope.cancel()
    n = delivery.received
    assert n == sent, (n, sent)
    return n / wall, cpu / n * 1e6, n / max(1, delivery.reads), n


async def measure_delivery(server: RedisServer) -> dict[str, float]:
    print(
        f"c. {DELIVERIES:,} messages of {len(PAYLOAD)} B to one reader owning {STREAMS:,} "
        f"streams, round-robin, batches of {PACE}"
    )
    results: dict[str, float] = {}
    base = 0.0
    for label, mode in (
        (f"XREAD BLOCK over all {STREAMS:,} keys per call", "xread"),
        ("pub/sub note carrying the message (XADD + PUBLISH)", "notes"),
    ):
        server.flush()
        rate, micros, per_read, n = await deliver(server, mode)
        base = base or micros
        results[f"{mode} msg/s"] = rate
        results[f"{mode} µs/msg"] = micros
        row(label, f"{rate:,.0f} msg/s")
        row(
            f"  server + client CPU per message ({n:,} delivered)",
            f"{micros:,.1f} µs",
            base / micros,
        )
        if mode == "xread":
            row("  messages per XREAD call", f"{per_read:.1f}")
            row("  server + client CPU per XREAD call", f"{micros * per_read / 1000:,.2f} ms")
    return results


# -- d. memory per idle lite topic ----------------------------------------------------------------


async def _litechan_footprint(server: RedisServer, namespace: str) -> tuple[float, float]:
    """(used_memory growth per topic, keys per topic) of 10,000 litechan lite topics."""
    server.flush()
    await asyncio.sleep(0.2)
    before = server.used_memory()
    async with litechan.connect(server.url(namespace)) as broker:
        replies = broker.lite_topics("replies", ttl=600.0)

        async def publish(offset: int) -> None:
            for topic in TOPIC_NAMES[offset::TASKS]:
                await replies.publish(topic, PAYLOAD)

        async with anyio.create_task_group() as tg:
            for i in range(TASKS):
                tg.start_soon(publish, i)
    await asyncio.sleep(0.2)  # the server has dropped the broker's connections
    return (server.used_memory() - before) / TOPICS, int(server.client.dbsize()) / TOPICS


def _stream_footprint(server: RedisServer) -> tuple[float, float]:
    """The same for a stream per topic holding one entry, beside a small hash."""
    server.flush()
    before = server.used_memory()
    pipe = server.client.pipeline(transaction=False)
    for topic in TOPIC_NAMES:
        tag = f"{{alt:l:replies:{topic}}}"
        pipe.xadd(tag + ":s", {"b": PAYLOAD}, id="0-1")
        pipe.hset(tag + ":m", mapping={"e": "a1b2c3d4e5f60718", "n": 1})
        pipe.pexpire(tag + ":s", 600_000)
        pipe.pexpire(tag + ":m", 600_000)
    pipe.execute()
    return (server.used_memory() - before) / TOPICS, int(server.client.dbsize()) / TOPICS


def _memory_usage(server: RedisServer, pattern: str) -> int:
    (key,) = server.client.keys(pattern)[:1]
    return int(server.client.memory_usage(key, samples=0) or 0)


async def measure_memory(server: RedisServer) -> dict[str, float]:
    print(
        f"d. Redis memory per idle lite topic with one {len(PAYLOAD)} B message "
        f"({TOPICS:,} topics, ttl 600 s, the server's default stream-node-max-bytes)"
    )
    one = TOPIC_NAMES[0]
    per_topic, keys = await _litechan_footprint(server, "altmem")
    row(
        "  litechan: used_memory growth per topic (ratio to 1 KiB)",
        f"{per_topic:,.0f} B",
        per_topic / TARGET_BYTES,
    )
    row("    keys per topic", f"{keys:.2f}")
    row("    MEMORY USAGE of its list {TAG}:d:TOPIC", f"{_memory_usage(server, f'*:d:{one}'):,} B")
    row("    MEMORY USAGE of its hash {TAG}:m:TOPIC", f"{_memory_usage(server, f'*:m:{one}'):,} B")
    stream, stream_keys = _stream_footprint(server)
    row(
        "  a stream per topic: used_memory growth per topic",
        f"{stream:,.0f} B",
        stream / TARGET_BYTES,
    )
    row("    keys per topic", f"{stream_keys:.2f}")
    row("    MEMORY USAGE of the stream", f"{_memory_usage(server, f'*{one}}}:s'):,} B")
    return {"bytes per topic, litechan": per_topic, "bytes per topic, a stream each": stream}


# -- main -----------------------------------------------------------------------------------------


async def measure_all(server: RedisServer) -> None:
    print(
        f"redis_alternatives: redis-server {server.version}, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, litechan {litechan.__version__}, asyncio"
    )
    await measure_batching(server)
    measure_packing()
    await measure_delivery(server)
    await measure_memory(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server") or "redis-server",
        help="the redis-server binary to run (default: the one on PATH)",
    )
    args = parser.parse_args()
    with redis_server(args.redis_server) as server:
        anyio.run(measure_all, server, backend="asyncio")


if __name__ == "__main__":
    main()
