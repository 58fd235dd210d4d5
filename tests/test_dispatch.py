"""The key-ordered dispatcher's rules, checked without an event loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from litechan._backends.base import Entry
from litechan._dispatch import KeyOrderedDispatcher, by_partition


def entry(key: str, offset: int, partition: int = 0) -> Entry:
    return Entry(partition, offset, key, b"", {}, 0.0, 1, 1)


def test_one_message_out_per_key() -> None:
    """A key's second entry is held until the first is settled (G1)."""
    d = KeyOrderedDispatcher(max_in_flight=10)
    a1, a2 = entry("a", 1), entry("a", 2)
    d.push(a1)
    d.push(a2)
    assert d.pop() is a1
    assert d.pop() is None
    d.settle(a1)
    assert d.pop() is a2


def test_busy_key_does_not_block_other_keys() -> None:
    """Another key of the same partition goes out while one key is busy (G2)."""
    d = KeyOrderedDispatcher(max_in_flight=10)
    a1, a2, b1 = entry("a", 1), entry("a", 2), entry("b", 3)
    for e in (a1, a2, b1):
        d.push(e)
    assert d.pop() is a1
    assert d.pop() is b1


def test_partition_ordering_serialises_the_partition() -> None:
    """With partition ordering, a second key of the partition waits for the first."""
    d = KeyOrderedDispatcher(max_in_flight=10, key_of=by_partition)
    a1, b1 = entry("a", 1), entry("b", 2)
    d.push(a1)
    d.push(b1)
    assert d.pop() is a1
    assert d.pop() is None
    d.settle(a1)
    assert d.pop() is b1


def test_max_in_flight_bounds_messages_out() -> None:
    """No more than max_in_flight entries are out at once."""
    d = KeyOrderedDispatcher(max_in_flight=2)
    entries = [entry(f"k{i}", i + 1) for i in range(3)]
    for e in entries:
        d.push(e)
    assert [d.pop(), d.pop(), d.pop()] == [entries[0], entries[1], None]
    d.settle(entries[0])
    assert d.pop() is entries[2]


def test_retry_goes_before_later_entries_of_its_key() -> None:
    """A nacked entry comes back at its due time ahead of the key's queued entries."""
    d = KeyOrderedDispatcher(max_in_flight=10)
    a1, a2 = entry("a", 1), entry("a", 2)
    d.push(a1)
    d.push(a2)
    assert d.pop() is a1
    d.retry(a1, due=5.0)
    assert d.pop() is None
    d.release_due(4.9)
    assert d.pop() is None
    assert d.next_due() == 5.0
    d.release_due(5.0)
    assert d.pop() is a1


def test_drop_partition_returns_held_entries_in_offset_order() -> None:
    """Revoking a partition hands back its queued and delayed entries, and only those."""
    d = KeyOrderedDispatcher(max_in_flight=10)
    a1, a2, b1, c1 = entry("a", 1), entry("a", 2), entry("b", 3), entry("c", 1, partition=1)
    for e in (a1, a2, b1, c1):
        d.push(e)
    assert d.pop() is a1
    d.retry(a1, due=1.0)
    dropped = d.drop_partition(0)
    assert dropped == [a1, a2, b1]
    assert d.pop() is c1
    assert d.pop() is None
    assert d.buffered == 0


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=4),
)
def test_random_settlement_keeps_key_order(script: list[tuple[str, bool]], limit: int) -> None:
    """Whatever the order of settlements, each key comes out in push order, once, within limits."""
    d = KeyOrderedDispatcher(max_in_flight=limit)
    pushed: dict[str, list[int]] = {}
    for offset, (key, _) in enumerate(script, start=1):
        d.push(entry(key, offset))
        pushed.setdefault(key, []).append(offset)
    out: list[Entry] = []
    delivered: dict[str, list[int]] = {}
    settle_first = [flag for _, flag in script]
    step = 0
    while True:
        e = d.pop()
        if e is not None:
            assert d.in_flight <= limit
            assert all(o.key != e.key for o in out), "two entries of one key out at once"
            out.append(e)
            delivered.setdefault(e.key, []).append(e.offset)
            continue
        if not out:
            break
        victim = out.pop(0 if settle_first[step % len(settle_first)] else -1)
        step += 1
        d.settle(victim)
    assert delivered == pushed
    assert d.buffered == 0
    assert d.in_flight == 0
