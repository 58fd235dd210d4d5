"""Publish -> deliver latency on Redis under a paced, open-loop load: litechan vs hand-written.

One publisher process offers ``--rate`` msg/s (default 10,000) for ``--duration`` seconds
(default 10): message ``i`` falls due at ``start + i / rate`` by the wall clock and is sent then,
whether or not earlier sends have finished (litechan: one ``publish`` task per message;
hand-written: one XADD pipeline per batch of due messages). Each 320-byte payload carries its
*scheduled* send time, so a sender that falls behind shows up as latency (no coordinated
omission). Messages go round-robin over the sessions; one subscriber process owns them all and
reads them as in ``redis_replies.py`` (litechan: merged iteration with acks; hand-written:
``XREAD`` over every session's stream). Phases, each on a flushed private redis-server:

1. S=5,000 sessions: litechan p99 (target <= 10 ms) and the hand-written p99 beside it;
2. the same rate with the subscriber owning 500 lite topics, then 50,000 (traffic spread over
   all of them): litechan's p99 ratio 50,000 / 500 (target <= 1.5x), and the same ratio for the
   hand-written reader, whose every XREAD names all the keys.

Commands (needs ``pip install -e ".[redis]"`` and a redis-server binary)::

    python benchmarks/redis_latency.py                      # 10k msg/s, 10 s per phase
    python benchmarks/redis_latency.py --duration 3 --contenders litechan
    python benchmarks/redis_latency.py --litechan-options acks=async
    python benchmarks/redis_latency.py --json latency.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Final

from _common import (
    Role,
    Table,
    add_common_arguments,
    litechan_missing,
    ms,
    print_header,
    rate,
    ratio_line,
    redis_server,
    verdict,
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

CONTENDERS: Final = ("hand-written", "litechan")
TARGET_P99: Final = 0.010
TARGET_SCALING: Final = 1.5


def make_roles(
    contender: str, port: int, url: str, sessions: int, messages: int, offered: float
) -> tuple[Role, Role]:
    """Spawn *contender*'s subscriber and its paced publisher."""
    if contender == "hand-written":
        return (
            Role("hand-written subscriber", raw_subscriber, port, sessions, messages),
            Role("hand-written publisher", raw_publisher, port, sessions, messages, 0, offered),
        )
    max_len = 10_000
    return (
        Role("litechan subscriber", litechan_subscriber, url, sessions, messages, max_len),
        Role(
            "litechan publisher",
            litechan_publisher,
            *(url, sessions, messages, max_len, 0, offered),
        ),
    )


def run(args: argparse.Namespace) -> int:
    messages = round(args.rate * args.duration)
    phases = [args.sessions, args.few, args.many]
    outcomes: dict[tuple[str, int], Outcome] = {}
    with redis_server(args.redis_server) as server:
        url = server.url("bench", args.litechan_options)
        print_header("redis latency benchmark", server, url)
        missing = litechan_missing(url) if "litechan" in args.contenders else None
        if missing:
            print(f"litechan: skipped, its Redis backend is not available ({missing})")
        print(
            f"paced open loop: {args.rate:,.0f} msg/s offered for {args.duration:g} s "
            f"({messages:,} messages of 320 bytes) per phase; latency from the scheduled send time"
        )
        table = Table(
            ("contender", 13),
            ("topics", 7),
            ("messages", 9),
            ("msg/s", 8),
            ("p50", 10),
            ("p99", 10),
            ("max", 10),
            ("sub CPU", 8),
            ("redis CPU", 9),
            ("subscribe", 10),
        )
        for sessions in phases:
            for contender in args.contenders:
                if contender == "litechan" and missing:
                    continue
                server.flush()
                spawn = functools.partial(
                    make_roles, contender, server.port, url, sessions, messages, args.rate
                )
                outcome = measure(
                    contender, sessions, messages, server.cpu_seconds, spawn, args.timeout
                )
                outcomes[contender, sessions] = outcome
                latency = outcome.latency
                table.row(
                    contender,
                    f"{sessions:,}",
                    f"{messages:,}",
                    rate(outcome.rate) if outcome.error is None else "FAILED",
                    ms(None if latency is None else latency.p50),
                    ms(None if latency is None else latency.p99),
                    ms(None if latency is None else latency.max),
                    outcome.cpu(outcome.subscriber.cpu if outcome.subscriber else None),
                    outcome.cpu(outcome.redis_cpu),
                    f"{outcome.setup:.2f} s" if outcome.setup else "-",
                )
                if outcome.error is not None:
                    print(f"       {contender} FAILED: {outcome.error}")
    summary = print_summary(args, outcomes)
    write_json(
        args.json,
        {
            "offered_msg_per_s": args.rate,
            "duration_s": args.duration,
            "outcomes": [outcome.as_json() for outcome in outcomes.values()],
            "summary": summary,
        },
    )
    return 0


def p99(outcomes: dict[tuple[str, int], Outcome], contender: str, sessions: int) -> float | None:
    outcome = outcomes.get((contender, sessions))
    latency = None if outcome is None else outcome.latency
    return None if latency is None else latency.p99


def print_summary(
    args: argparse.Namespace, outcomes: dict[tuple[str, int], Outcome]
) -> dict[str, float | None]:
    """Print the target lines and ratios; return them for the JSON output."""
    lite = p99(outcomes, "litechan", args.sessions)
    raw = p99(outcomes, "hand-written", args.sessions)
    lite_few, lite_many = p99(outcomes, "litechan", args.few), p99(outcomes, "litechan", args.many)
    raw_few = p99(outcomes, "hand-written", args.few)
    raw_many = p99(outcomes, "hand-written", args.many)
    at = f"{args.rate:,.0f} msg/s"
    if lite is not None:
        ok = lite <= TARGET_P99
        print(
            f"litechan p99 at {at} over S={args.sessions:,}: {ms(lite)} "
            f"(target <= {ms(TARGET_P99)}: {verdict(ok)})"
        )
    vs_raw = None if lite is None or raw is None else lite / raw
    print(ratio_line(f"p99 at S={args.sessions:,} litechan/hand-written", vs_raw))
    scaling = None if lite_few is None or lite_many is None else lite_many / lite_few
    print(
        ratio_line(
            f"litechan p99 owning {args.many:,} / owning {args.few:,} lite topics",
            scaling,
            f"<= {TARGET_SCALING:.1f}x",
            None if scaling is None else scaling <= TARGET_SCALING,
        )
    )
    raw_scaling = None if raw_few is None or raw_many is None else raw_many / raw_few
    print(ratio_line(f"hand-written p99 reading {args.many:,} / {args.few:,} keys", raw_scaling))
    return {
        "litechan_p99_ms": None if lite is None else round(lite * 1e3, 3),
        "hand_written_p99_ms": None if raw is None else round(raw * 1e3, 3),
        "p99_litechan/hand-written": None if vs_raw is None else round(vs_raw, 3),
        "litechan_p99_many/few": None if scaling is None else round(scaling, 3),
        "hand_written_p99_many/few": None if raw_scaling is None else round(raw_scaling, 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered msg/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--sessions", type=int, default=5_000, help="sessions of phase 1")
    parser.add_argument("--few", type=int, default=500, help="lite topics owned, small case")
    parser.add_argument("--many", type=int, default=50_000, help="lite topics owned, large case")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
