"""Redis Cluster hash slots, and the hash tags of a parent's slot partitions.

A key's slot is ``CRC16(key) mod 16384``, computed on the part between the first ``{`` and the
next ``}`` when there is one (its hash tag). A script may only touch keys of one slot (in a
cluster), so the lite topics of a parent are grouped into a fixed number of *slot partitions*,
each with a hash tag of its own: one script call then carries every publish (or ack) of a flush
that falls into one partition. The tags are chosen so that their slots spread evenly over the
slot space (a cluster assigns contiguous slot ranges to its primaries), as Centrifuge's
precomputed partition tags do: partition ``i`` of ``n`` gets the first tag
``PREFIX:i.s`` (``s = 0, 1, ...``) whose slot falls in the ``i``-th of ``n`` equal ranges.
"""

from __future__ import annotations

import functools
from typing import Final

__all__ = ["SLOTS", "key_slot", "partition_tags"]

SLOTS: Final = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE: Final = _table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster slot of *key* (its hash tag's, when it has a non-empty one)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


@functools.cache
def partition_tags(prefix: str, count: int) -> tuple[str, ...]:
    """The hash tags (with their braces) of *count* slot partitions under *prefix*."""
    tags = []
    width = SLOTS / count
    for index in range(count):
        low, high = int(index * width), int((index + 1) * width)
        suffix = 0
        while True:
            candidate = f"{prefix}:{index}.{suffix}"
            if low <= key_slot(candidate) < high:
                break
            suffix += 1
        tags.append(f"{{{candidate}}}")
    return tuple(tags)
