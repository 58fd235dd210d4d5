"""Subscribe + unsubscribe churn of one litechan subscriber on Redis, vs the server's floor.

A gateway takes and gives up sessions all the time (clients connect, reconnect elsewhere, hang
up). This measures one subscriber doing ``await sub.subscribe(t); await sub.unsubscribe(t)``
pairs over ``--topics`` existing lite topics (each holding one message, as a live session's
would), from 1 task and from several concurrent tasks on the same subscriber. Reported: pairs/s
and ops/s, where **one op is one subscribe or one unsubscribe** (ops/s = 2 x pairs/s).

Baseline in the same run, on the same private redis-server: the server's floor for a pair of
dependent round trips, a redis-py (hiredis) ``HSET`` then ``HDEL`` of one field per pair, from
the same number of tasks (one op = one command). The ratio shows how close a subscribe or an
unsubscribe gets to one plain round trip. Target: >= 10,000 ops/s per subscriber.

Commands (needs ``pip install -e ".[redis]"`` and a redis-server binary)::

    python benchmarks/redis_churn.py                        # 1, 8 and 64 tasks, 20,000 pairs
    python benchmarks/redis_churn.py --tasks 1 --pairs 5000
    python benchmarks/redis_churn.py --json churn.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import redis.asyncio
from _common import (
    PAYLOAD_SIZE,
    Table,
    add_common_arguments,
    litechan_missing,
    print_header,
    pump,
    rate,
    ratio_line,
    redis_server,
    session_names,
    verdict,
    write_json,
)

import litechan

TARGET_OPS: Final = 10_000.0
#: Pairs run before each timed run, so that connections and code paths are warm.
WARMUP_PAIRS: Final = 200


async def timed(pairs: int, tasks: int, pair: Callable[[int], Awaitable[None]]) -> float:
    """Pairs per second of ``pair(0)`` ... ``pair(pairs - 1)`` run from *tasks* tasks."""
    await pump(WARMUP_PAIRS, tasks, pair)
    started = time.perf_counter()
    await pump(pairs, tasks, pair)
    return pairs / (time.perf_counter() - started)


async def bench_raw(port: int, names: list[str], pairs: int, tasks: int) -> float:
    pool = redis.asyncio.BlockingConnectionPool(
        host="127.0.0.1", port=port, max_connections=tasks, timeout=None
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    keys = [f"bench:churn:{name}" for name in names]

    async def pair(index: int) -> None:
        key = keys[index % len(keys)]
        await client.hset(key, "owner", "gw-1")
        await client.hdel(key, "owner")

    try:
        return await timed(pairs, tasks, pair)
    finally:
        await client.aclose(close_connection_pool=True)


async def bench_litechan(url: str, names: list[str], pairs: int, tasks: int) -> tuple[float, int]:
    """Pairs/s, and how many lite topics the subscriber still owns after the run (should be 0)."""
    async with litechan.connect(url) as broker:
        replies = broker.lite_topics("replies", ttl=3_600.0, max_len=10_000)
        await pump(len(names), 128, lambda i: replies.publish(names[i], bytes(PAYLOAD_SIZE)))
        async with replies.subscriber(group="gateways", name="gw-1") as sub:

            async def pair(index: int) -> None:
                name = names[index % len(names)]
                await sub.subscribe(name)
                await sub.unsubscribe(name)

            pairs_per_s = await timed(pairs, tasks, pair)
            return pairs_per_s, len(sub.lite_topics)


async def run(args: argparse.Namespace) -> int:
    names = session_names(args.topics)
    results: list[dict[str, object]] = []
    with redis_server(args.redis_server) as server:
        url = server.url("bench", args.litechan_options)
        print_header("redis churn benchmark", server, url)
        missing = litechan_missing(url)
        if missing:
            print(f"litechan: skipped, its Redis backend is not available ({missing})")
        print(
            f"{args.pairs:,} subscribe+unsubscribe pairs per run over {args.topics:,} lite topics "
            "holding one message each; one op = one subscribe or one unsubscribe"
        )
        table = Table(
            ("contender", 24),
            ("tasks", 6),
            ("pairs/s", 9),
            ("ops/s", 9),
            ("ratio", 7),
        )
        for tasks in args.tasks:
            server.flush()
            raw = await bench_raw(server.port, names, args.pairs, tasks)
            table.row("hand-written HSET+HDEL", tasks, rate(raw), rate(2 * raw), "")
            row: dict[str, object] = {"tasks": tasks, "hand_written_pairs_per_s": round(raw)}
            if not missing:
                server.flush()
                try:
                    async with asyncio.timeout(args.timeout):
                        lite, left = await bench_litechan(url, names, args.pairs, tasks)
                except Exception:  # reported, and the other runs go on
                    table.row("litechan", tasks, "FAILED", "", "")
                    print(f"       litechan FAILED (timeout {args.timeout:g} s):")
                    traceback.print_exc(file=sys.stdout)
                    row["litechan_error"] = traceback.format_exc()
                    results.append(row)
                    continue
                table.row("litechan", tasks, rate(lite), rate(2 * lite), f"{lite / raw:.2f}x")
                if left:
                    print(f"       WARNING: the subscriber still owns {left} lite topics")
                print(
                    ratio_line(f"       {tasks} task(s): litechan/hand-written ops/s", lite / raw)
                    + f"; litechan {rate(2 * lite)} ops/s "
                    f"(target >= {rate(TARGET_OPS)}: {verdict(2 * lite >= TARGET_OPS)})"
                )
                row |= {
                    "litechan_pairs_per_s": round(lite),
                    "litechan_ops_per_s": round(2 * lite),
                    "ratio": round(lite / raw, 3),
                    "still_owned": left,
                }
            results.append(row)
    write_json(args.json, results)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=20_000, help="pairs per timed run")
    parser.add_argument(
        "--tasks",
        type=int,
        nargs="+",
        default=[1, 8, 64],
        help="concurrent tasks churning on the one subscriber (one run per value)",
    )
    parser.add_argument(
        "--topics", type=int, default=10_000, help="distinct lite topics cycled through"
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
