"""Redis memory per idle litechan lite topic holding one message, vs a bare stream.

For each payload size (``--sizes``, default a small 16-byte message and the 320-byte audio
packet), ``--topics`` lite topics (default 10,000) each get one message, and the growth of
``used_memory`` (``INFO memory``) is divided by their number. Measured on a private redis-server,
flushed before each case, with no client of the case still connected when memory is read (so
connection buffers are not counted):

* ``hand-written``: the floor, a bare stream per session with one ``XADD`` each
  (``bench:replies:<session>``, one field), pipelined;
* ``litechan never subscribed``: one ``publish`` per lite topic, nobody ever subscribed;
* ``litechan subscribed once``: the same, then a subscriber of group ``gateways`` subscribed to
  each, read and acked its message, and unsubscribed (the state a finished session leaves).

Beside bytes per topic the script prints the keys per topic, the number of keys of each type, and
the keys of one probe lite topic found with ``SCAN MATCH`` with their ``MEMORY USAGE``.
Target: <= 1 KiB per idle lite topic. Commands (needs ``pip install -e ".[redis]"`` and a
redis-server binary)::

    python benchmarks/redis_memory.py                       # 10,000 topics, 16 and 320 bytes
    python benchmarks/redis_memory.py --topics 50000 --sizes 320
    python benchmarks/redis_memory.py --json memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import redis.asyncio
from _common import (
    RedisServer,
    Table,
    add_common_arguments,
    litechan_missing,
    print_header,
    pump,
    redis_server,
    session_names,
    verdict,
    write_json,
)

import litechan

TARGET_BYTES: Final = 1024
#: Seconds to let the server notice closed connections before memory is read.
SETTLE: Final = 0.2
CASES: Final = ("hand-written", "litechan never subscribed", "litechan subscribed once")


@dataclass(frozen=True)
class Footprint:
    """Memory one case added to the server, and the keys it left."""

    case: str
    size: int
    topics: int
    used: int  # bytes of used_memory added
    keys: int
    types: dict[str, int]
    probe: list[tuple[str, str, int]]  # (key, type, MEMORY USAGE) of the probe topic's keys

    @property
    def per_topic(self) -> float:
        return self.used / self.topics

    def as_json(self) -> dict[str, object]:
        return {
            "case": self.case,
            "payload_bytes": self.size,
            "topics": self.topics,
            "bytes_per_topic": round(self.per_topic, 1),
            "keys_per_topic": round(self.keys / self.topics, 3),
            "key_types": self.types,
            "probe_keys": [
                {"key": key, "type": kind, "memory_usage": usage} for key, kind, usage in self.probe
            ],
        }


def text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply


async def footprint(
    server: RedisServer,
    case: str,
    size: int,
    names: list[str],
    fill: Callable[[], Awaitable[None]],
) -> Footprint:
    """Run *fill* on a flushed server and measure what it leaves behind."""
    server.flush()
    await asyncio.sleep(SETTLE)
    before = server.used_memory()
    await fill()
    await asyncio.sleep(SETTLE)
    used = server.used_memory() - before
    client = server.client
    keys: list[bytes] = list(client.scan_iter(count=1_000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    types = Counter(text(kind) for kind in pipe.execute())
    probe = names[len(names) // 2]
    probe_keys = sorted(client.scan_iter(match=f"*{probe}*", count=1_000))
    details = [
        (text(key), text(client.type(key)), int(client.memory_usage(key, samples=0) or 0))
        for key in probe_keys
    ]
    return Footprint(case, size, len(names), used, len(keys), dict(types), details)


async def fill_raw(port: int, names: list[str], payload: bytes) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    for start in range(0, len(names), 200):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + 200]:
            pipe.xadd(f"bench:replies:{name}", {b"p": payload})
        await pipe.execute()
    await client.aclose()


async def fill_litechan(url: str, names: list[str], payload: bytes, subscribe: bool) -> None:
    async with litechan.connect(url) as broker:
        replies = broker.lite_topics("replies", ttl=3_600.0, max_len=10_000)
        await pump(len(names), 128, lambda i: replies.publish(names[i], payload))
        if not subscribe:
            return
        async with replies.subscriber(group="gateways", name="gw-1") as sub:

            async def take(index: int) -> None:
                channel = await sub.subscribe(names[index])
                message = await anext(channel)
                await message.ack()
                await sub.unsubscribe(names[index])

            await pump(len(names), 32, take)


async def run(args: argparse.Namespace) -> int:
    names = session_names(args.topics)
    results: list[dict[str, object]] = []
    with redis_server(args.redis_server) as server:
        url = server.url("bench", args.litechan_options)
        print_header("redis memory benchmark", server, url)
        missing = litechan_missing(url)
        if missing:
            print(f"litechan: skipped, its Redis backend is not available ({missing})")
        print(f"{args.topics:,} topics holding one message each; used_memory growth / topics")
        table = Table(
            ("payload", 8),
            ("case", 26),
            ("bytes/topic", 12),
            ("keys/topic", 11),
            ("vs hand-written", 16),
        )
        for size in args.sizes:
            payload = bytes(size)
            fills: dict[str, Callable[[], Awaitable[None]]] = {
                "hand-written": functools.partial(fill_raw, server.port, names, payload),
                "litechan never subscribed": functools.partial(
                    fill_litechan, url, names, payload, False
                ),
                "litechan subscribed once": functools.partial(
                    fill_litechan, url, names, payload, True
                ),
            }
            floor: Footprint | None = None
            for case in CASES:
                if case != "hand-written" and missing:
                    continue
                try:
                    async with asyncio.timeout(args.timeout):
                        found = await footprint(server, case, size, names, fills[case])
                except Exception:  # reported, and the other cases go on
                    table.row(f"{size} B", case, "FAILED", "", "")
                    print(f"       {case} FAILED (timeout {args.timeout:g} s):")
                    traceback.print_exc(file=sys.stdout)
                    continue
                floor = floor or found
                table.row(
                    f"{size} B",
                    case,
                    f"{found.per_topic:,.0f}",
                    f"{found.keys / found.topics:.2f}",
                    f"{found.per_topic / floor.per_topic:.2f}x",
                )
                kinds = ", ".join(
                    f"{count:,} {kind}" for kind, count in sorted(found.types.items())
                )
                print(f"         keys by type: {kinds}")
                for key, kind, usage in found.probe:
                    print(f"         probe key {key} ({kind}): MEMORY USAGE {usage:,} bytes")
                if case.startswith("litechan"):
                    print(
                        f"         {case}, {size}-byte message: {found.per_topic:,.0f} bytes per "
                        f"idle lite topic (target <= {TARGET_BYTES:,}: "
                        f"{verdict(found.per_topic <= TARGET_BYTES)})"
                    )
                results.append(found.as_json())
    write_json(args.json, results)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--topics", type=int, default=10_000, help="lite topics per case")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[16, 320], help="payload sizes in bytes"
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
