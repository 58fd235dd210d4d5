"""The "replies" workload on Redis: litechan vs hand-written redis-py vs channels_redis.

S sessions each get M packets of 320 bytes, published round-robin over the sessions (interleaved)
by one publisher process; one subscriber process owns all S reply channels and reads them. Timed
from the first publish until every message has been delivered (and, for litechan, acked);
publish -> deliver latency is taken from a send time stamped in each payload. Every contender
runs against the same private redis-server, started by this script on a free port (no
persistence) and flushed between contenders:

* ``litechan``: ``lite_topics("replies")``; the subscriber subscribes to all S lite topics, then
  iterates them merged (``async for msg in sub``) and acks each message; the publisher publishes
  from ``--concurrency`` coroutines, which litechan coalesces into pipelines.
* ``hand-written``: redis-py asyncio client with hiredis; one stream per session, XADD pipelined
  ``--pipeline`` at a time; the subscriber loops ``XREAD COUNT 100 BLOCK`` over all S streams
  with their last ids. No consumer group and no acks: the cheapest correct reader.
* ``channels_redis``: ``RedisChannelLayer``, its most favourable honest use: one process-local
  channel per session (``new_channel()``, so all of them share one Redis key and one receive
  loop), ``send()`` from ``--concurrency`` coroutines, one task per session awaiting
  ``receive()`` as a Django Channels consumer does. It is slow, so it carries at most
  ``--channels-redis-messages`` messages per round (fewer per session, same S); its msg/s is what
  is compared, and the output says when it was scaled down.

Target (docs/benchmarks.md): litechan >= 1.0x hand-written at S=500 and S=5,000, >= 20x
channels_redis. Commands (needs ``pip install -e ".[redis,bench]"`` and a redis-server binary)::

    python benchmarks/redis_replies.py                          # S=500 and S=5,000, M=200
    python benchmarks/redis_replies.py --sessions 500 --packets 50
    python benchmarks/redis_replies.py --contenders hand-written channels_redis
    python benchmarks/redis_replies.py --litechan-options acks=async
    python benchmarks/redis_replies.py --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Sequence
from typing import Final

from _common import (
    Child,
    Latencies,
    Report,
    Role,
    Table,
    add_common_arguments,
    litechan_missing,
    ms,
    print_header,
    pump,
    rate,
    ratio_line,
    redis_server,
    stamp_of,
    stamped,
    write_json,
)
from _replies import (
    Outcome,
    litechan_publisher,
    litechan_subscriber,
    measure,
    raw_publisher,
    raw_subscriber,
)
from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped]

CONTENDERS: Final = ("hand-written", "litechan", "channels_redis")
TARGET_VS_RAW: Final = 1.0
TARGET_VS_CHANNELS: Final = 20.0
#: channels_redis bounds each channel's backlog; the whole backlog must fit.
CHANNELS_CAPACITY: Final = 1 << 30
CHANNELS_EXPIRY: Final = 3_600


# -- channels_redis roles (the litechan and hand-written ones are in _replies_roles) --------------


def channel_layer(port: int) -> RedisChannelLayer:
    return RedisChannelLayer(
        # redis-py's pool refuses more than 100 connections unless told; send() holds one.
        hosts=[{"address": f"redis://127.0.0.1:{port}/0", "max_connections": 10_000}],
        capacity=CHANNELS_CAPACITY,
        expiry=CHANNELS_EXPIRY,
    )


async def channels_subscriber(child: Child, port: int, sessions: int, per_session: int) -> None:
    """One process-local channel per session, one task per channel awaiting receive()."""
    layer = channel_layer(port)
    channels: list[str] = [await layer.new_channel() for _ in range(sessions)]
    latencies: list[float] = []
    cpu = time.process_time()

    async def session(channel: str) -> None:
        for _ in range(per_session):
            message = await layer.receive(channel)
            now = time.time()
            latencies.append(now - stamp_of(message["p"]))
            child.count(len(latencies), now)

    async with asyncio.TaskGroup() as tg:
        for channel in channels:
            tg.create_task(session(channel))
        await asyncio.sleep(0)  # every session's receive() is waiting before the clock starts
        child.send("ready", channels)
    report = Report(
        len(latencies), time.time(), time.process_time() - cpu, latency=Latencies.of(latencies)
    )
    await layer.close_pools()
    child.send("done", report)


async def channels_publisher(child: Child, port: int, total: int, concurrency: int) -> None:
    """send() the messages round-robin over the subscriber's channels from many coroutines."""
    layer = channel_layer(port)
    await layer.send("bench.warmup", {"type": "warmup"})
    child.send("ready")
    channels = await child.recv("go")
    assert isinstance(channels, list)
    cpu = time.process_time()
    first = time.time()
    done = 0

    async def send(index: int) -> None:
        nonlocal done
        message = {"type": "reply", "p": stamped(time.time())}
        await layer.send(channels[index % len(channels)], message)
        done += 1
        child.count(done, time.time())

    await pump(total, concurrency, send)
    report = Report(done, time.time(), time.process_time() - cpu, first)
    await layer.close_pools()
    child.send("done", report)


# -- the parent -----------------------------------------------------------------------------------


def message_count(contender: str, sessions: int, packets: int, channels_budget: int) -> int:
    """S * M, except for channels_redis: at most *channels_budget* (at least 1 per session)."""
    if contender != "channels_redis":
        return sessions * packets
    return sessions * max(1, min(packets, channels_budget // sessions))


def make_roles(
    contender: str, args: argparse.Namespace, port: int, url: str, sessions: int, messages: int
) -> tuple[Role, Role]:
    """Spawn *contender*'s subscriber and publisher processes."""
    if contender == "hand-written":
        return (
            Role("hand-written subscriber", raw_subscriber, port, sessions, messages),
            Role(
                "hand-written publisher",
                raw_publisher,
                *(port, sessions, messages, args.pipeline, None),
            ),
        )
    if contender == "litechan":
        max_len = max(10_000, args.packets)
        return (
            Role("litechan subscriber", litechan_subscriber, url, sessions, messages, max_len),
            Role(
                "litechan publisher",
                litechan_publisher,
                *(url, sessions, messages, max_len, args.concurrency, None),
            ),
        )
    return (
        Role(
            "channels_redis subscriber", channels_subscriber, port, sessions, messages // sessions
        ),
        Role("channels_redis publisher", channels_publisher, port, messages, args.concurrency),
    )


def run(args: argparse.Namespace) -> int:
    results: list[dict[str, object]] = []
    with redis_server(args.redis_server) as server:
        url = server.url("bench", args.litechan_options)
        print_header("redis replies benchmark", server, url)
        missing = litechan_missing(url) if "litechan" in args.contenders else None
        if missing:
            print(f"litechan: skipped, its Redis backend is not available ({missing})")
        print(
            f"{args.packets} packets of 320 bytes per session; litechan and channels_redis publish "
            f"from {args.concurrency} coroutines, hand-written pipelines {args.pipeline} XADDs"
        )
        table = Table(
            ("S", 6),
            ("contender", 15),
            ("messages", 10),
            ("msg/s", 9),
            ("p50", 11),
            ("p99", 11),
            ("pub CPU", 8),
            ("sub CPU", 8),
            ("redis CPU", 9),
            ("subscribe", 10),
        )
        for sessions in args.sessions:
            outcomes: dict[str, Outcome] = {}
            for contender in args.contenders:
                if contender == "litechan" and missing:
                    continue
                messages = message_count(
                    contender, sessions, args.packets, args.channels_redis_messages
                )
                server.flush()
                spawn = functools.partial(
                    make_roles, contender, args, server.port, url, sessions, messages
                )
                outcome = measure(
                    contender, sessions, messages, server.cpu_seconds, spawn, args.timeout
                )
                outcomes[contender] = outcome
                latency = outcome.latency
                table.row(
                    sessions,
                    contender,
                    f"{messages:,}",
                    rate(outcome.rate) if outcome.error is None else "FAILED",
                    ms(None if latency is None else latency.p50),
                    ms(None if latency is None else latency.p99),
                    outcome.cpu(outcome.publisher.cpu if outcome.publisher else None),
                    outcome.cpu(outcome.subscriber.cpu if outcome.subscriber else None),
                    outcome.cpu(outcome.redis_cpu),
                    f"{outcome.setup:.2f} s" if outcome.setup else "-",
                )
                if outcome.error is not None:
                    print(f"       {contender} FAILED: {outcome.error}")
                gaps = 0.0 if outcome.subscriber is None else outcome.subscriber.extra.get("gaps")
                if gaps:
                    print(f"       WARNING: litechan reported {gaps:.0f} trimmed packets")
                if messages < sessions * args.packets:
                    print(
                        f"       {contender} scaled down to {messages // sessions} messages per "
                        "session "
                        f"({messages:,} in all, --channels-redis-messages): its msg/s is compared"
                    )
            ratios = ratio_lines(sessions, outcomes)
            results.append(
                {
                    "sessions": sessions,
                    "packets_per_session": args.packets,
                    "outcomes": [outcome.as_json() for outcome in outcomes.values()],
                    "ratios": ratios,
                }
            )
    write_json(args.json, results)
    return 0


def ratio_lines(sessions: int, outcomes: dict[str, Outcome]) -> dict[str, float | None]:
    """Print litechan's ratios to the baselines of this round; return them."""
    litechan_rate = outcomes["litechan"].rate if "litechan" in outcomes else None
    ratios: dict[str, float | None] = {}
    for baseline, target in (
        ("hand-written", TARGET_VS_RAW),
        ("channels_redis", TARGET_VS_CHANNELS),
    ):
        if "litechan" not in outcomes or baseline not in outcomes:
            continue
        base_rate = outcomes[baseline].rate
        value = None if litechan_rate is None or base_rate is None else litechan_rate / base_rate
        ratios[f"litechan/{baseline}"] = None if value is None else round(value, 3)
        label = f"       S={sessions:,} throughput litechan/{baseline}"
        print(
            ratio_line(
                label, value, f">= {target:.1f}x", None if value is None else value >= target
            )
        )
    return ratios


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, nargs="+", default=[500, 5_000])
    parser.add_argument("--packets", type=int, default=200, help="packets per session")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="publishing coroutines of litechan and channels_redis (default 128)",
    )
    parser.add_argument(
        "--pipeline", type=int, default=200, help="XADDs per pipeline, hand-written (default 200)"
    )
    parser.add_argument(
        "--channels-redis-messages",
        type=int,
        default=20_000,
        help="most messages channels_redis carries per round (default 20,000)",
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
