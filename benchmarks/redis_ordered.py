"""Ordered topic throughput on Redis: send -> consume -> ack, litechan vs hand-written redis-py.

One sender process sends ``--messages`` 320-byte messages (default 200,000) round-robin over
``--keys`` session ids (default 5,000); two worker processes of consumer group ``asr`` (``w1``,
``w2``) consume them and ack each one. Timed from the first send until the last ack. Per-key order
is checked from the send time stamped in each payload (a message older than the previous one of
its key is counted as out of order). Contenders, on the same private redis-server, flushed between:

* ``litechan``: ``ordered_topic("audio", partitions=8)``; the sender calls ``send(key, payload)``
  from ``--concurrency`` coroutines; each worker iterates ``audio.consumer(group="asr", name=...)``
  (key ordering, the default) and awaits ``msg.ack()``. The clock starts once the group has split
  the 8 partitions between the two workers.
* ``hand-written``: redis-py asyncio with hiredis; 8 streams, the key's stream chosen by CRC32;
  the sender pipelines ``--pipeline`` XADDs per round trip; each worker loops ``XREADGROUP COUNT
  100 BLOCK`` over its 4 streams, then XACKs the batch in one pipeline.

Commands (needs ``pip install -e ".[redis]"`` and a redis-server binary)::

    python benchmarks/redis_ordered.py                      # 200,000 messages over 5,000 keys
    python benchmarks/redis_ordered.py --messages 20000 --contenders litechan
    python benchmarks/redis_ordered.py --litechan-options acks=async
    python benchmarks/redis_ordered.py --json ordered.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import redis.asyncio
from _common import (
    GAUGE,
    LAST,
    Child,
    Latencies,
    RedisServer,
    Report,
    Role,
    RoleFailed,
    Table,
    add_common_arguments,
    expect_all,
    litechan_missing,
    ms,
    print_header,
    pump,
    rate,
    ratio_line,
    redis_server,
    roles,
    session_names,
    stamp_of,
    stamped,
    write_json,
)
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

import litechan

CONTENDERS: Final = ("hand-written", "litechan")
TOPIC: Final = "audio"
GROUP: Final = "asr"
PARTITIONS: Final = 8
WORKERS: Final = ("w1", "w2")
XREADGROUP_COUNT: Final = 100
#: How long the workers may take to split the partitions before the clock starts anyway.
BALANCE_TIMEOUT: Final = 60.0
#: How often the parent reads the workers' shared counters while they run.
POLL: Final = 0.002


def stream_of(key: str) -> str:
    """The hand-written baseline's stream for *key*."""
    return f"bench:{TOPIC}:{zlib.crc32(key.encode()) % PARTITIONS}"


class OrderCheck:
    """Per-key order, judged by send stamps: a message older than its key's previous one."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self.out_of_order = 0

    def see(self, key: str, stamp: float) -> None:
        if stamp < self._last.get(key, 0.0):
            self.out_of_order += 1
        else:
            self._last[key] = stamp


# -- litechan roles -------------------------------------------------------------------------------


async def litechan_sender(child: Child, url: str, keys: int, total: int, concurrency: int) -> None:
    names = session_names(keys)
    async with litechan.connect(url) as broker:
        audio = broker.ordered_topic(TOPIC, partitions=PARTITIONS)
        child.send("ready")
        await child.recv("go")
        cpu = time.process_time()
        first = time.time()
        done = 0

        async def send(index: int) -> None:
            nonlocal done
            await audio.send(names[index % keys], stamped(time.time()))
            done += 1
            child.count(done, time.time())

        await pump(total, concurrency, send)
        report = Report(done, time.time(), time.process_time() - cpu, first)
    child.send("done", report)


async def litechan_worker(child: Child, url: str, name: str) -> None:
    async with litechan.connect(url) as broker:
        audio = broker.ordered_topic(TOPIC, partitions=PARTITIONS)
        async with audio.consumer(group=GROUP, name=name) as consumer:
            latencies: list[float] = []
            order = OrderCheck()
            redelivered = 0
            cpu = 0.0

            async def consume() -> None:
                nonlocal redelivered, cpu
                async for msg in consumer:
                    now = time.time()
                    if not latencies:
                        cpu = time.process_time()
                    stamp = stamp_of(msg.payload)
                    latencies.append(now - stamp)
                    order.see(msg.key, stamp)
                    redelivered += msg.delivery_count > 1
                    await msg.ack()
                    child.count(len(latencies), time.time())

            async def watch_partitions() -> None:
                while True:
                    child.state[GAUGE] = len(consumer.partitions)
                    await asyncio.sleep(0.02)

            child.send("ready")
            tasks = [asyncio.create_task(consume()), asyncio.create_task(watch_partitions())]
            await child.recv("stop")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            extra = {"out_of_order": float(order.out_of_order), "redelivered": float(redelivered)}
            report = Report(
                len(latencies),
                child.state[LAST],
                time.process_time() - cpu if latencies else 0.0,
                latency=Latencies.of(latencies),
                extra=extra,
            )
    child.send("done", report)


# -- hand-written roles ---------------------------------------------------------------------------


async def raw_sender(child: Child, port: int, keys: int, total: int, pipeline: int) -> None:
    names = session_names(keys)
    streams = [stream_of(name) for name in names]
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    await client.ping()
    child.send("ready")
    await child.recv("go")
    cpu = time.process_time()
    first = time.time()
    for start in range(0, total, pipeline):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(total, start + pipeline)):
            fields: dict[FieldT, EncodableT] = {
                b"k": names[index % keys],
                b"p": stamped(time.time()),
            }
            pipe.xadd(streams[index % keys], fields)
        await pipe.execute()
        child.count(min(total, start + pipeline), time.time())
    report = Report(total, time.time(), time.process_time() - cpu, first)
    await client.aclose()
    child.send("done", report)


async def raw_worker(child: Child, port: int, name: str, streams: list[str]) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    await client.ping()
    latencies: list[float] = []
    order = OrderCheck()
    cpu = 0.0

    async def consume() -> None:
        nonlocal cpu
        wanted: dict[KeyT, StreamIdT] = dict.fromkeys(streams, ">")
        while True:
            reply = await client.xreadgroup(
                GROUP, name, wanted, count=XREADGROUP_COUNT, block=1_000
            )
            now = time.time()
            assert isinstance(reply, list)  # RESP2: [[stream, [(id, {field: value}), ...]], ...]
            if reply and not latencies:
                cpu = time.process_time()
            pipe = client.pipeline(transaction=False)
            for stream, entries in reply:
                for _, fields in entries:
                    stamp = stamp_of(fields[b"p"])
                    latencies.append(now - stamp)
                    order.see(fields[b"k"].decode(), stamp)
                pipe.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
            child.count(len(latencies), time.time())

    child.state[GAUGE] = len(streams)
    child.send("ready")
    task = asyncio.create_task(consume())
    await child.recv("stop")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.aclose()
    report = Report(
        len(latencies),
        child.state[LAST],
        time.process_time() - cpu if latencies else 0.0,
        latency=Latencies.of(latencies),
        extra={"out_of_order": float(order.out_of_order), "redelivered": 0.0},
    )
    child.send("done", report)


# -- the parent -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    contender: str
    messages: int
    sender: Report | None = None
    workers: tuple[Report, ...] = ()
    redis_cpu: float = 0.0
    balance: str = ""
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.sender is None or not self.workers:
            return None
        return max(worker.last for worker in self.workers) - self.sender.first

    @property
    def rate(self) -> float | None:
        seconds = self.seconds
        return None if seconds is None else self.messages / seconds

    @property
    def latency(self) -> Latencies | None:
        if not self.workers:
            return None
        # The workers' own percentiles cannot be merged exactly; the worse of the two is shown.
        return max(
            (worker.latency for worker in self.workers if worker.latency is not None),
            key=lambda latency: latency.p99,
        )

    def share(self, cpu: float) -> str:
        seconds = self.seconds
        return "-" if seconds is None else f"{100 * cpu / seconds:.0f}%"

    def as_json(self) -> dict[str, object]:
        latency = self.latency
        return {
            "contender": self.contender,
            "messages": self.messages,
            "msg_per_s": None if self.rate is None else round(self.rate),
            "p50_ms_worst_worker": None if latency is None else round(latency.p50 * 1e3, 3),
            "p99_ms_worst_worker": None if latency is None else round(latency.p99 * 1e3, 3),
            "per_worker": [worker.count for worker in self.workers],
            "out_of_order": sum(int(worker.extra["out_of_order"]) for worker in self.workers),
            "redelivered": sum(int(worker.extra["redelivered"]) for worker in self.workers),
            "redis_cpu_s": round(self.redis_cpu, 3),
            "partitions_split": self.balance,
            "error": self.error,
        }


def wait_balanced(workers: Sequence[Role], timeout: float) -> str:
    """Wait until every worker owns a partition and all are owned; return the split."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            worker.check()
        owned = [int(worker.state[GAUGE]) for worker in workers]
        if sum(owned) == PARTITIONS and min(owned) > 0:
            break
        time.sleep(0.05)
    return "/".join(str(int(worker.state[GAUGE])) for worker in workers)


def wait_acked(workers: Sequence[Role], total: int, timeout: float) -> None:
    """Wait until the workers' shared counters add up to *total*."""
    deadline = time.monotonic() + timeout
    while sum(worker.count for worker in workers) < total:
        for worker in workers:
            worker.check()
        if time.monotonic() > deadline:
            counts = ", ".join(f"{worker.name} {worker.count:,}" for worker in workers)
            raise RoleFailed(f"only {counts} of {total:,} acked after {timeout:.0f} s")
        time.sleep(POLL)


def measure(contender: str, server: RedisServer, url: str, args: argparse.Namespace) -> Outcome:
    total = args.messages
    with roles() as started:
        try:
            if contender == "litechan":
                workers = [Role(f"litechan {name}", litechan_worker, url, name) for name in WORKERS]
                sender = Role(
                    "litechan sender",
                    litechan_sender,
                    *(url, args.keys, total, args.concurrency),
                )
            else:
                streams = [f"bench:{TOPIC}:{partition}" for partition in range(PARTITIONS)]
                for stream in streams:
                    server.client.xgroup_create(stream, GROUP, id="$", mkstream=True)
                half = PARTITIONS // 2
                workers = [
                    Role(f"hand-written {name}", raw_worker, server.port, name, part)
                    for name, part in zip(WORKERS, (streams[:half], streams[half:]), strict=True)
                ]
                sender = Role(
                    "hand-written sender",
                    raw_sender,
                    *(server.port, args.keys, total, args.pipeline),
                )
            started += [*workers, sender]
            expect_all([*workers, sender], "ready", args.timeout)
            balance = wait_balanced(workers, BALANCE_TIMEOUT)
            cpu = server.cpu_seconds()
            sender.send("go")
            sent = sender.expect("done", args.timeout)
            wait_acked(workers, total, args.timeout)
            cpu = server.cpu_seconds() - cpu
            for worker in workers:
                worker.send("stop")
            reports = expect_all(workers, "done", args.timeout)
        except RoleFailed as exc:
            return Outcome(contender, total, error=str(exc))
    assert isinstance(sent, Report)
    done = tuple(report for report in reports if isinstance(report, Report))
    return Outcome(contender, total, sent, done, cpu, balance)


def run(args: argparse.Namespace) -> int:
    outcomes: dict[str, Outcome] = {}
    with redis_server(args.redis_server) as server:
        url = server.url("bench", args.litechan_options)
        print_header("redis ordered-topic benchmark", server, url)
        missing = litechan_missing(url) if "litechan" in args.contenders else None
        if missing:
            print(f"litechan: skipped, its Redis backend is not available ({missing})")
        print(
            f"{args.messages:,} messages of 320 bytes over {args.keys:,} keys, {PARTITIONS} "
            f"partitions, workers {' and '.join(WORKERS)} of group {GROUP!r}; litechan sends from "
            f"{args.concurrency} coroutines, hand-written pipelines {args.pipeline} XADDs"
        )
        table = Table(
            ("contender", 13),
            ("msg/s", 8),
            ("p50", 10),
            ("p99", 10),
            ("w1/w2 msgs", 16),
            ("sender CPU", 10),
            ("w1 CPU", 7),
            ("w2 CPU", 7),
            ("redis CPU", 9),
            ("split", 5),
        )
        for contender in args.contenders:
            if contender == "litechan" and missing:
                continue
            server.flush()
            outcome = measure(contender, server, url, args)
            outcomes[contender] = outcome
            if outcome.error is not None:
                table.row(contender, "FAILED", "", "", "", "", "", "", "", "")
                print(f"       {contender} FAILED: {outcome.error}")
                continue
            latency = outcome.latency
            assert outcome.sender is not None
            table.row(
                contender,
                rate(outcome.rate),
                ms(None if latency is None else latency.p50),
                ms(None if latency is None else latency.p99),
                "/".join(f"{worker.count:,}" for worker in outcome.workers),
                outcome.share(outcome.sender.cpu),
                *(outcome.share(worker.cpu) for worker in outcome.workers),
                outcome.share(outcome.redis_cpu),
                outcome.balance,
            )
            disorder = sum(int(worker.extra["out_of_order"]) for worker in outcome.workers)
            again = sum(int(worker.extra["redelivered"]) for worker in outcome.workers)
            if disorder or again:
                print(f"       {contender}: {disorder} out of order, {again} redelivered")
    lite, raw = outcomes.get("litechan"), outcomes.get("hand-written")
    ratio = None
    if lite is not None and raw is not None and lite.rate is not None and raw.rate is not None:
        ratio = lite.rate / raw.rate
    if lite is not None and raw is not None:
        print(ratio_line("throughput litechan/hand-written", ratio))
    write_json(
        args.json,
        {
            "outcomes": [outcome.as_json() for outcome in outcomes.values()],
            "ratio": None if ratio is None else round(ratio, 3),
        },
    )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200_000, help="messages sent")
    parser.add_argument("--keys", type=int, default=5_000, help="distinct keys (sessions)")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="sending coroutines, litechan (default 128)"
    )
    parser.add_argument(
        "--pipeline", type=int, default=200, help="XADDs per pipeline, hand-written (default 200)"
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
