"""The "replies" workload's publisher and subscriber processes, and the parent's side of one
timed run (:func:`measure`), shared by ``redis_replies.py`` (publisher flat out) and
``redis_latency.py`` (publisher paced, open loop).

Message ``i`` goes to session ``i % sessions`` (round-robin, interleaved), carries a 320-byte
payload stamped with its send time, and the subscriber measures publish -> deliver latency from
that stamp the same way for every contender.

* litechan: the subscriber subscribes to every session's lite topic, then reads them merged
  (``async for msg in sub``) and acks each message; the publisher publishes from many concurrent
  coroutines (litechan coalesces concurrent publishes into pipelines).
* hand-written redis-py (hiredis): one stream per session; the publisher pipelines XADDs, the
  subscriber loops ``XREAD COUNT n BLOCK`` over *all* the session streams with their last ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis.asyncio
from _common import (
    Child,
    Latencies,
    Report,
    Role,
    RoleFailed,
    due_batches,
    expect_all,
    pump,
    roles,
    session_names,
    stamp_of,
    stamped,
)
from redis.typing import KeyT, StreamIdT

import litechan

PARENT: Final = "replies"
GROUP: Final = "gateways"
TTL: Final = 3_600.0
#: A lite topic the publisher writes once before the clock starts, so that connecting is not
#: timed; nobody subscribes to it.
WARMUP: Final = "warmup"
#: Concurrent subscribe calls while the subscriber takes its lite topics (before the clock).
SUBSCRIBE_CONCURRENCY: Final = 32
#: Most connections of the hand-written publisher (pipelines in flight at once, when paced).
PUBLISH_CONNECTIONS: Final = 32
#: Entries per stream per XREAD of the hand-written subscriber.
XREAD_COUNT: Final = 100


def stream_key(session: str) -> bytes:
    """The hand-written baseline's stream of *session*."""
    return f"bench:replies:{session}".encode()


async def litechan_subscriber(
    child: Child, url: str, sessions: int, total: int, max_len: int
) -> None:
    """Own the lite topics of *sessions* sessions, then read *total* messages merged, acking."""
    names = session_names(sessions)
    async with litechan.connect(url) as broker:
        replies = broker.lite_topics(PARENT, ttl=TTL, max_len=max_len)
        async with replies.subscriber(group=GROUP, name="gw-1") as sub:
            began = time.perf_counter()
            await pump(sessions, SUBSCRIBE_CONCURRENCY, lambda i: sub.subscribe(names[i]))
            child.send("ready", time.perf_counter() - began)
            latencies: list[float] = []
            gaps = 0
            cpu = time.process_time()
            async for msg in sub:
                now = time.time()
                latencies.append(now - stamp_of(msg.payload))
                gaps += msg.gap_before
                await msg.ack()
                child.count(len(latencies), now)
                if len(latencies) == total:
                    break
            last = time.time()
            report = Report(
                len(latencies),
                last,
                time.process_time() - cpu,
                latency=Latencies.of(latencies),
                extra={"gaps": float(gaps)},
            )
    child.send("done", report)


async def litechan_publisher(
    child: Child,
    url: str,
    sessions: int,
    total: int,
    max_len: int,
    concurrency: int,
    rate: float | None,
) -> None:
    """Publish *total* messages round-robin: flat out from *concurrency* coroutines, or paced
    at *rate* msg/s with one task per message as it falls due (open loop)."""
    names = session_names(sessions)
    async with litechan.connect(url) as broker:
        replies = broker.lite_topics(PARENT, ttl=TTL, max_len=max_len)
        await replies.publish(WARMUP, b"warm-up")
        child.send("ready")
        await child.recv("go")
        cpu = time.process_time()
        first = time.time()
        done = 0

        async def publish(index: int, at: float) -> None:
            nonlocal done
            await replies.publish(names[index % sessions], stamped(at))
            done += 1
            child.count(done, time.time())

        if rate is None:
            await pump(total, concurrency, lambda index: publish(index, time.time()))
        else:
            async with asyncio.TaskGroup() as tg:
                async for batch in due_batches(total, rate, first):
                    for index in batch:
                        tg.create_task(publish(index, first + index / rate))
        report = Report(done, time.time(), time.process_time() - cpu, first)
    child.send("done", report)


async def raw_subscriber(child: Child, port: int, sessions: int, total: int) -> None:
    """Read *total* messages with ``XREAD`` over every session's stream at once."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    last_ids: dict[KeyT, StreamIdT] = {stream_key(name): b"0-0" for name in session_names(sessions)}
    await client.ping()
    child.send("ready", 0.0)
    latencies: list[float] = []
    cpu = time.process_time()
    while len(latencies) < total:
        reply = await client.xread(last_ids, count=XREAD_COUNT, block=1_000)
        now = time.time()
        assert isinstance(reply, list)  # RESP2: [[key, [(id, {field: value}), ...]], ...]
        for key, entries in reply:
            for _, fields in entries:
                latencies.append(now - stamp_of(fields[b"p"]))
            last_ids[key] = entries[-1][0]
        child.count(len(latencies), now)
    last = time.time()
    await client.aclose()
    report = Report(
        len(latencies), last, time.process_time() - cpu, latency=Latencies.of(latencies)
    )
    child.send("done", report)


async def raw_publisher(
    child: Child, port: int, sessions: int, total: int, pipeline: int, rate: float | None
) -> None:
    """XADD *total* messages round-robin: flat out, *pipeline* per round trip, one pipeline
    after another; or paced at *rate* msg/s, one pipeline per batch of due messages, without
    waiting for the previous one (open loop)."""
    keys = [stream_key(name) for name in session_names(sessions)]
    # Paced pipelines overlap when the server lags: they queue for a connection, not fail.
    pool = redis.asyncio.BlockingConnectionPool(
        host="127.0.0.1", port=port, max_connections=PUBLISH_CONNECTIONS, timeout=None
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    await client.ping()
    child.send("ready")
    await child.recv("go")
    cpu = time.process_time()
    first = time.time()
    done = 0

    async def send(batch: range, stamp: Callable[[int], float]) -> None:
        nonlocal done
        pipe = client.pipeline(transaction=False)
        for index in batch:
            pipe.xadd(keys[index % sessions], {b"p": stamped(stamp(index))})
        await pipe.execute()
        done += len(batch)
        child.count(done, time.time())

    if rate is None:
        for start in range(0, total, pipeline):
            await send(range(start, min(total, start + pipeline)), lambda _: time.time())
    else:
        paced_rate = rate
        async with asyncio.TaskGroup() as tg:
            async for batch in due_batches(total, rate, first):
                tg.create_task(send(batch, lambda index: first + index / paced_rate))
    report = Report(done, time.time(), time.process_time() - cpu, first)
    await client.aclose(close_connection_pool=True)
    child.send("done", report)


# -- the parent's side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One contender's round: its reports, or why it has none."""

    contender: str
    sessions: int
    messages: int
    publisher: Report | None = None
    subscriber: Report | None = None
    setup: float = 0.0  # seconds the subscriber took to subscribe, before the clock started
    redis_cpu: float = 0.0
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.publisher is None or self.subscriber is None:
            return None
        return self.subscriber.last - self.publisher.first

    @property
    def rate(self) -> float | None:
        seconds = self.seconds
        return None if seconds is None else self.messages / seconds

    @property
    def latency(self) -> Latencies | None:
        return None if self.subscriber is None else self.subscriber.latency

    def cpu(self, used: float | None) -> str:
        """*used* CPU seconds as a percentage of one core over the timed run."""
        seconds = self.seconds
        if used is None or seconds is None:
            return "-"
        return f"{100 * used / seconds:.0f}%"

    def as_json(self) -> dict[str, object]:
        latency = self.latency
        return {
            "contender": self.contender,
            "sessions": self.sessions,
            "messages": self.messages,
            "msg_per_s": None if self.rate is None else round(self.rate),
            "p50_ms": None if latency is None else round(latency.p50 * 1e3, 3),
            "p99_ms": None if latency is None else round(latency.p99 * 1e3, 3),
            "publisher_cpu_s": None if self.publisher is None else round(self.publisher.cpu, 3),
            "subscriber_cpu_s": None if self.subscriber is None else round(self.subscriber.cpu, 3),
            "redis_cpu_s": round(self.redis_cpu, 3),
            "subscribe_s": round(self.setup, 3),
            "error": self.error,
        }


def measure(
    contender: str,
    sessions: int,
    messages: int,
    server_cpu: Callable[[], float],
    spawn: Callable[[], tuple[Role, Role]],
    timeout: float,
) -> Outcome:
    """Start a subscriber and a publisher, wait until both are ready, then time the run."""
    with roles() as started:
        try:
            subscriber, publisher = spawn()
            started += [subscriber, publisher]
            ready, _ = expect_all([subscriber, publisher], "ready", timeout)
            cpu = server_cpu()
            publisher.send("go", ready)
            sub_report, pub_report = expect_all([subscriber, publisher], "done", timeout)
            cpu = server_cpu() - cpu
        except RoleFailed as exc:
            return Outcome(contender, sessions, messages, error=str(exc))
    assert isinstance(sub_report, Report)
    assert isinstance(pub_report, Report)
    setup = ready if isinstance(ready, float) else 0.0
    return Outcome(contender, sessions, messages, pub_report, sub_report, setup, cpu)
