"""Key-ordered dispatch: which fetched entry a consumer may hand to the application next.

This is a pure state machine (no I/O, no event loop), shared by every backend and unit-tested
on its own. Its rules:

=========================  ==================================================================
event                      effect
=========================  ==================================================================
``push(e)``                e joins the FIFO of its ordering key (its session key, or its
                           partition with ``ordering="partition"``); a key with no message
                           out becomes *ready*.
``pop()``                  while fewer than ``max_in_flight`` are out: the head of the oldest
                           ready key goes out, and the key is *busy* until it is settled.
``settle(e)``              (ack / reject) the key is free; its next entry, if any, is ready.
``retry(e, due)``          (nack) e leaves the in-flight count but its key stays busy until
                           ``due``; then e is the key's head again, ahead of later entries.
``drop_partition(p)``      (revocation) every entry of p that is not with the application is
                           forgotten and returned, so the backend can hand it to the next owner.
=========================  ==================================================================

Invariants: a key has at most one entry out or waiting on a retry (G1); a busy key never blocks
another key (G2); ``in_flight <= max_in_flight``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable

from ._types import Entry

__all__ = ["KeyOrderedDispatcher", "by_key", "by_partition"]


def by_key(entry: Entry) -> Hashable:
    """Ordering by session key (``ordering="key"``)."""
    return entry.key


def by_partition(entry: Entry) -> Hashable:
    """Strict partition order (``ordering="partition"``)."""
    return entry.partition


class KeyOrderedDispatcher:
    """Holds fetched entries and decides which may be delivered next (see the module docstring)."""

    __slots__ = (
        "_busy",
        "_counter",
        "_delayed",
        "_in_flight_by_partition",
        "_key_of",
        "_queues",
        "_ready",
        "buffered",
        "in_flight",
        "max_in_flight",
    )

    def __init__(self, max_in_flight: int, key_of: Callable[[Entry], Hashable] = by_key) -> None:
        self.max_in_flight = max_in_flight
        self._key_of = key_of
        self._queues: dict[Hashable, deque[Entry]] = {}
        self._busy: set[Hashable] = set()
        self._ready: deque[Hashable] = deque()
        self._delayed: list[tuple[float, int, Entry]] = []
        self._counter = itertools.count()
        self._in_flight_by_partition: dict[int, int] = {}
        #: entries held here (queued or waiting on a retry), not with the application
        self.buffered = 0
        #: entries with the application, not yet settled
        self.in_flight = 0

    def push(self, entry: Entry) -> None:
        """Queue a freshly fetched entry behind earlier entries of its key."""
        key = self._key_of(entry)
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque((entry,))
            if key not in self._busy:
                self._ready.append(key)
        else:
            queue.append(entry)
        self.buffered += 1

    def pop(self) -> Entry | None:
        """Return the next deliverable entry, or ``None`` if none may go out now."""
        if self.in_flight >= self.max_in_flight or not self._ready:
            return None
        key = self._ready.popleft()
        queue = self._queues[key]
        entry = queue.popleft()
        if not queue:
            del self._queues[key]
        self._busy.add(key)
        self.in_flight += 1
        self.buffered -= 1
        by_partition = self._in_flight_by_partition
        by_partition[entry.partition] = by_partition.get(entry.partition, 0) + 1
        return entry

    def _leave_flight(self, entry: Entry) -> None:
        self.in_flight -= 1
        count = self._in_flight_by_partition[entry.partition] - 1
        if count:
            self._in_flight_by_partition[entry.partition] = count
        else:
            del self._in_flight_by_partition[entry.partition]

    def settle(self, entry: Entry) -> None:
        """The application acked or rejected *entry*: its key may move on."""
        self._leave_flight(entry)
        key = self._key_of(entry)
        self._busy.discard(key)
        if key in self._queues:
            self._ready.append(key)

    def push_delayed(self, entry: Entry, due: float) -> None:
        """Queue a fetched entry that may not go out before *due* (a nack delay this consumer
        gave it earlier); its key is held until then."""
        self._busy.add(self._key_of(entry))
        heapq.heappush(self._delayed, (due, next(self._counter), entry))
        self.buffered += 1

    def retry(self, entry: Entry, due: float) -> None:
        """The application nacked *entry*: deliver it again at *due*, ahead of its key's queue."""
        self._leave_flight(entry)
        heapq.heappush(self._delayed, (due, next(self._counter), entry))
        self.buffered += 1

    def next_due(self) -> float | None:
        """When the earliest retry becomes deliverable, if any is waiting."""
        return self._delayed[0][0] if self._delayed else None

    def release_due(self, now: float) -> None:
        """Make every retry whose time has come the head of its key again."""
        while self._delayed and self._delayed[0][0] <= now:
            entry = heapq.heappop(self._delayed)[2]
            key = self._key_of(entry)
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = deque((entry,))
            else:
                queue.appendleft(entry)
            self._busy.discard(key)
            # A redelivery goes before keys that merely became ready: it is the oldest work.
            self._ready.appendleft(key)

    def has_ready(self) -> bool:
        """Whether :meth:`pop` would hand something out if ``max_in_flight`` allowed it."""
        return bool(self._ready)

    def delayed_entries(self, partition: int) -> list[tuple[float, Entry]]:
        """The entries of *partition* waiting on a retry delay, with their due times."""
        return [(due, e) for due, _, e in self._delayed if e.partition == partition]

    def holds(self, partition: int) -> bool:
        """Whether any entry of *partition* is out, queued or waiting on a retry delay."""
        return (
            partition in self._in_flight_by_partition
            or any(item[2].partition == partition for item in self._delayed)
            or any(e.partition == partition for q in self._queues.values() for e in q)
        )

    def drop_partition(self, partition: int) -> list[Entry]:
        """Forget every held entry of *partition* (queued or awaiting retry) and return them."""
        dropped: list[Entry] = []
        for key, queue in list(self._queues.items()):
            kept = deque(e for e in queue if e.partition != partition)
            if len(kept) != len(queue):
                dropped.extend(e for e in queue if e.partition == partition)
                if kept:
                    self._queues[key] = kept
                else:
                    del self._queues[key]
        still_delayed = []
        for item in self._delayed:
            if item[2].partition == partition:
                dropped.append(item[2])
                self._busy.discard(self._key_of(item[2]))
            else:
                still_delayed.append(item)
        heapq.heapify(still_delayed)
        self._delayed = still_delayed
        self._ready = deque(k for k in self._ready if k in self._queues and k not in self._busy)
        # Keys whose queue survived and that are no longer busy must be ready exactly once.
        ready = set(self._ready)
        for key in self._queues:
            if key not in self._busy and key not in ready:
                self._ready.append(key)
        self.buffered -= len(dropped)
        dropped.sort(key=lambda e: e.offset)
        return dropped

    def drain(self) -> list[Entry]:
        """Forget and return every held entry (the consumer is closing)."""
        held = [e for q in self._queues.values() for e in q]
        held.extend(item[2] for item in self._delayed)
        self._queues.clear()
        self._delayed.clear()
        self._ready.clear()
        self.buffered = 0
        return held
