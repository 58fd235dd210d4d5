"""The stable partition function: which partition a key lands in.

Every backend and every process uses this one function, so a session's packets land in the same
partition whatever the language runtime, process or backend: ``crc32(utf8(key)) mod partitions``
(zlib's CRC-32, the IEEE 802.3 polynomial; ``PYTHONHASHSEED`` plays no part).
"""

from __future__ import annotations

from zlib import crc32

__all__ = ["partition_for"]


def partition_for(key: str, partitions: int) -> int:
    """Return the partition (``0 <= p < partitions``) that *key* belongs to.

    ``crc32(key.encode("utf-8")) % partitions`` — documented and stable across releases, so
    other programs can compute it too.

    .. versionadded:: 0.1.0
    """
    return crc32(key.encode("utf-8")) % partitions
