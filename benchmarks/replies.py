"""The "replies" benchmark: many sessions' small reply packets, through lite topics.

S sessions each get M packets of 320 bytes, published round-robin over the sessions by one
publisher task; one subscriber owns all S lite topics and reads them merged (``async for msg in
sub``), acking each. The run is timed from the first publish until every message has been
delivered and acked, and publish -> deliver latency is taken from ``msg.published_at``.

The baseline, measured in the same run, is a bare anyio memory object stream carrying the same
number of 320-byte payloads (with a timestamp each) from one producer task to one consumer task,
so the ratio shows what the lite-topic machinery costs over the cheapest possible in-process hop::

    python benchmarks/replies.py                        # S=500 and S=5,000, 200 packets each
    python benchmarks/replies.py --sessions 500 --packets 1000 --check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from collections.abc import Sequence

import anyio
import attrs

import litechan

PAYLOAD_SIZE = 320  # 10 ms of 16 kHz 16-bit mono audio
TARGET_MSG_PER_S = 200_000.0  # memory backend target (docs/benchmarks.md)


@attrs.frozen
class Result:
    """One timed run: how many messages, how long, and publish -> deliver latency."""

    name: str
    sessions: int
    messages: int
    seconds: float
    latencies: list[float] = attrs.field(repr=False)
    gaps: int = 0
    subscribe_seconds: float = 0.0  # time to subscribe to the S lite topics (not in `seconds`)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def session_names(sessions: int) -> list[str]:
    return [f"s{i:06d}" for i in range(sessions)]


async def bench_litechan(url: str, sessions: int, packets: int) -> Result:
    """Publish S*M packets round-robin over S lite topics; one subscriber owns them all."""
    names = session_names(sessions)
    total = sessions * packets
    payload = bytes(PAYLOAD_SIZE)
    latencies = [0.0] * total
    gaps = 0
    async with litechan.connect(url) as broker:
        # max_len above the per-topic backlog: no packet may be trimmed before it is read.
        replies = broker.lite_topics("bench-replies", ttl=3_600.0, max_len=max(packets, 10_000))
        async with replies.subscriber(group="bench", name="gateway") as sub:
            subscribe_started = time.perf_counter()
            for name in names:
                await sub.subscribe(name)
            subscribe_seconds = time.perf_counter() - subscribe_started
            all_acked = anyio.Event()

            async def publisher() -> None:
                for _ in range(packets):
                    for name in names:
                        await replies.publish(name, payload)

            async def subscriber() -> None:
                nonlocal gaps
                received = 0
                async for msg in sub:
                    latencies[received] = time.time() - msg.published_at
                    gaps += msg.gap_before
                    await msg.ack()
                    received += 1
                    if received == total:
                        all_acked.set()
                        return

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscriber)
                tg.start_soon(publisher)
                await all_acked.wait()
            elapsed = time.perf_counter() - started
    return Result("litechan " + url, sessions, total, elapsed, latencies, gaps, subscribe_seconds)


async def bench_anyio_stream(sessions: int, packets: int) -> Result:
    """The baseline: the same payloads over one anyio memory object stream, one hop."""
    total = sessions * packets
    payload = bytes(PAYLOAD_SIZE)
    latencies = [0.0] * total
    send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)

    async def producer() -> None:
        async with send:
            for _ in range(total):
                await send.send((time.time(), payload))

    async def consumer() -> None:
        async with receive:
            received = 0
            async for sent_at, _ in receive:
                latencies[received] = time.time() - sent_at
                received += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        tg.start_soon(producer)
    elapsed = time.perf_counter() - started
    return Result("anyio memory stream", sessions, total, elapsed, latencies)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


async def run(args: argparse.Namespace) -> int:
    rows: list[dict[str, object]] = []
    ok = True
    print(
        f"replies benchmark: {args.backend}, {PAYLOAD_SIZE}-byte packets, "
        f"anyio backend {args.anyio_backend}, Python {platform.python_version()}, "
        f"litechan {litechan.__version__}"
    )
    print(
        f"{'S':>6} {'messages':>9} {'workload':<26} {'msg/s':>10} {'p50':>10} {'p99':>10} "
        f"{'ratio':>7}"
    )
    for sessions in args.sessions:
        packets = args.packets
        gc.collect()
        baseline = await bench_anyio_stream(sessions, packets)
        gc.collect()
        result = await bench_litechan(args.backend, sessions, packets)
        ratio = result.rate / baseline.rate
        for res, shown_ratio in ((baseline, ""), (result, f"{ratio:.2f}x")):
            print(
                f"{sessions:>6} {res.messages:>9} {res.name:<26} {res.rate:>10,.0f} "
                f"{fmt_ms(res.percentile(0.50)):>10} {fmt_ms(res.percentile(0.99)):>10} "
                f"{shown_ratio:>7}"
            )
        print(
            f"       subscribing to {sessions:,} lite topics took "
            f"{result.subscribe_seconds * 1e3:.1f} ms "
            f"({sessions / result.subscribe_seconds:,.0f} subscribes/s)"
        )
        if result.gaps:
            print(f"       WARNING: {result.gaps} packets trimmed before delivery (gap_before)")
            ok = False
        meets = result.rate >= TARGET_MSG_PER_S
        if args.backend.startswith("memory:"):
            verdict = "meets" if meets else "MISSES"
            print(f"       {verdict} the memory target of {TARGET_MSG_PER_S:,.0f} msg/s")
            ok = ok and meets
        rows.append(
            {
                "sessions": sessions,
                "packets_per_session": packets,
                "messages": result.messages,
                "litechan_msg_per_s": round(result.rate),
                "litechan_p50_ms": round(result.percentile(0.50) * 1e3, 3),
                "litechan_p99_ms": round(result.percentile(0.99) * 1e3, 3),
                "baseline_msg_per_s": round(baseline.rate),
                "ratio": round(ratio, 3),
                "subscribes_per_s": round(sessions / result.subscribe_seconds),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if ok or not args.check else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="litechan 'replies' benchmark (lite topics, one subscriber owning all)."
    )
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="+",
        default=[500, 5_000],
        help="number of sessions (lite topics); several values run several rounds",
    )
    parser.add_argument("--packets", type=int, default=200, help="packets per session")
    parser.add_argument("--backend", default="memory://", help="broker URL (default memory://)")
    parser.add_argument("--anyio-backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or a packet trimmed"
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    return anyio.run(run, args, backend=args.anyio_backend)


if __name__ == "__main__":
    sys.exit(main())
