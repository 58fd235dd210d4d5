"""The storage of the memory backend: an append-only log with offsets from 1."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Log"]

T = TypeVar("T")


class Log(Generic[T]):
    """An append-only log with integer offsets from 1 and front trimming.

    ``items[start]`` holds offset ``first``; hot paths read the three fields directly.
    """

    __slots__ = ("first", "items", "start")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.start = 0  # index in items of the first retained item
        self.first = 1  # offset of the first retained item

    @property
    def next(self) -> int:
        return self.first + len(self.items) - self.start

    def __len__(self) -> int:
        return len(self.items) - self.start

    def append(self, item: T) -> None:
        self.items.append(item)

    def get(self, offset: int) -> T:
        return self.items[self.start + offset - self.first]

    def slice(self, offset: int, count: int) -> list[T]:
        i = self.start + offset - self.first
        return self.items[i : i + count]

    def trim(self, max_len: int) -> int:
        """Drop the oldest items beyond *max_len*; return how many were dropped."""
        excess = len(self.items) - self.start - max_len
        if excess <= 0:
            return 0
        self.start += excess
        self.first += excess
        if self.start > 1024 and self.start * 2 > len(self.items):
            del self.items[: self.start]
            self.start = 0
        return excess
