"""Input validation: the naming rules, the partition function and option checks."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import litechan
from litechan._names import check_key, check_name, check_payload


@pytest.mark.parametrize(
    "name",
    ["a", "session-1", "9f1c2d3e-0000-4a4a-8b8b-123456789abc", "A_b.c-d", "x" * 128, "_x", "-x"],
)
def test_valid_names_are_accepted(name: str) -> None:
    """Names of the documented alphabet and length pass unchanged."""
    assert check_name(name, "name") == name


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "a:b", "a{b}", "a/b", "a b", "ü", "x" * 129, "a\n", "*", "..", "a,b"],
)
def test_invalid_names_are_refused(name: str) -> None:
    """Separators, wildcards, non-ASCII, leading dots and over-long names raise InvalidName."""
    with pytest.raises(litechan.InvalidName):
        check_name(name, "name")


@given(st.text(max_size=200))
def test_valid_names_never_contain_key_separators(name: str) -> None:
    """No accepted name contains a character a backend uses to build storage keys."""
    try:
        check_name(name, "name")
    except litechan.InvalidName:
        return
    assert not set(name) & set(":{}/ *?[]\\\n"), name
    assert 1 <= len(name) <= 128
    assert not name.startswith(".")


def test_non_string_names_and_keys_are_refused() -> None:
    """Names and keys must be str; bytes and ints raise InvalidName."""
    with pytest.raises(litechan.InvalidName):
        check_name(b"abc", "name")
    with pytest.raises(litechan.InvalidName):
        check_key(42)
    with pytest.raises(litechan.InvalidName):
        check_key("")


def test_payload_checks() -> None:
    """Payloads are bytes-like and bounded; the errors name the fix."""
    assert check_payload(bytearray(b"ab"), 10) == b"ab"
    with pytest.raises(litechan.InvalidPayload, match="bytes"):
        check_payload("text", 10)
    with pytest.raises(litechan.PayloadTooLarge, match="max_payload"):
        check_payload(b"x" * 11, 10)


@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=4096))
def test_partition_for_is_crc32_mod_partitions(key: str, partitions: int) -> None:
    """partition_for is exactly crc32(utf-8 key) % partitions, the documented stable hash."""
    p = litechan.partition_for(key, partitions)
    assert p == zlib.crc32(key.encode()) % partitions
    assert 0 <= p < partitions


def test_partition_for_known_values() -> None:
    """Fixed vectors pin the partition function across releases and processes."""
    assert litechan.partition_for("session-1", 16) == zlib.crc32(b"session-1") % 16
    assert [litechan.partition_for(k, 8) for k in ("a", "b", "c")] == [
        zlib.crc32(b"a") % 8,
        zlib.crc32(b"b") % 8,
        zlib.crc32(b"c") % 8,
    ]
    assert litechan.partition_for("a", 8) == 0xE8B7BE43 % 8
