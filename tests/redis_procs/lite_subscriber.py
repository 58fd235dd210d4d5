"""A gateway: subscribes to one lite topic and acks every message up to ``ack_upto``.

Config: url, parent, ttl, max_len, group, name, topic, ack_upto, die_after_ack (optional: SIGKILL
itself right after the ack of ``ack_upto`` returned), hold (optional: seconds each message is
"processed" before its ack, so the process can be paused mid-message). Events: ``subscribed``,
``got`` (lite_topic, offset, epoch, payload, gap_before), ``acked`` (offset), ``ended`` (reason).
Messages above ``ack_upto`` are received and never acked (they stay un-acked for the group).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio

import litechan

from ._common import config, emit, setup_logging, stop_on_stdin


async def main(cfg: dict[str, Any]) -> None:
    async with litechan.connect(cfg["url"]) as broker:
        replies = broker.lite_topics(cfg["parent"], ttl=cfg["ttl"], max_len=cfg["max_len"])
        async with (
            replies.subscriber(group=cfg["group"], name=cfg["name"]) as subscriber,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stop_on_stdin, tg.cancel_scope)
            channel = await subscriber.subscribe(cfg["topic"])
            emit("subscribed", topic=cfg["topic"])
            async for msg in channel:
                emit(
                    "got",
                    lite_topic=msg.lite_topic,
                    offset=msg.offset,
                    epoch=msg.epoch,
                    payload=msg.payload.decode(),
                    gap_before=msg.gap_before,
                )
                if msg.offset <= cfg["ack_upto"]:
                    if cfg.get("hold"):
                        await anyio.sleep(cfg["hold"])  # the work this message stands for
                    await msg.ack()
                    emit("acked", offset=msg.offset)
                    if msg.offset == cfg["ack_upto"] and cfg.get("die_after_ack"):
                        os.kill(os.getpid(), signal.SIGKILL)
            emit("ended", reason=str(channel.end_reason))
            tg.cancel_scope.cancel()
    emit("closed")


if __name__ == "__main__":
    setup_logging()
    anyio.run(main, config(), backend="asyncio")
