"""A worker of an ordered topic: acks the first ``ack_first`` messages, then holds the rest.

Config: url, topic, partitions, group, name, ack_first (null: ack everything), hold (optional:
seconds each message is "processed" before its ack, so the process can be paused mid-message).
Events:
``ready``, ``partitions`` (the owned partitions, each time they change), ``got`` (key, payload,
partition, offset, delivery_count), ``acked`` (key, payload, offset, got_t: the stamp of its
``got``, taken before ack() was called), ``holding`` (n: how many messages it holds un-acked).
Messages are handled one at a time, in delivery order.
"""

from __future__ import annotations

from typing import Any

import anyio

import litechan

from ._common import config, emit, setup_logging, stop_on_stdin


async def report_partitions(consumer: litechan.Consumer) -> None:
    """Emit ``partitions`` whenever the owned set changes (polled: there is no change event)."""
    last: frozenset[int] | None = None
    while True:
        now = consumer.partitions
        if now != last:
            emit("partitions", partitions=sorted(now))
            last = now
        await anyio.sleep(0.01)


async def main(cfg: dict[str, Any]) -> None:
    ack_first: int | None = cfg["ack_first"]
    held: list[litechan.Message] = []
    acked = 0
    async with litechan.connect(cfg["url"]) as broker:
        topic = broker.ordered_topic(cfg["topic"], partitions=cfg["partitions"])
        async with (
            topic.consumer(group=cfg["group"], name=cfg["name"]) as consumer,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stop_on_stdin, tg.cancel_scope)
            tg.start_soon(report_partitions, consumer)
            emit("ready")
            async for msg in consumer:
                got_t = emit(
                    "got",
                    key=msg.key,
                    payload=msg.payload.decode(),
                    partition=msg.partition,
                    offset=msg.offset,
                    delivery_count=msg.delivery_count,
                )
                if ack_first is None or acked < ack_first:
                    if cfg.get("hold"):
                        await anyio.sleep(cfg["hold"])  # the work this message stands for
                    await msg.ack()
                    acked += 1
                    emit(
                        "acked",
                        key=msg.key,
                        payload=msg.payload.decode(),
                        offset=msg.offset,
                        got_t=got_t,
                    )
                else:
                    held.append(msg)
                    emit("holding", n=len(held), key=msg.key, payload=msg.payload.decode())
    emit("closed")


if __name__ == "__main__":
    setup_logging()
    anyio.run(main, config(), backend="asyncio")
