"""Input validation: the naming rules, the partition function and option checks."""

from __future__ import annotations

import array
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import litechan
from litechan._names import (
    check_dedupe_id,
    check_headers,
    check_key,
    check_name,
    check_payload,
    check_reason,
)

#: Any str at all: lone surrogates and NUL included (st.text() leaves surrogates out by default).
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=1100)


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
    """Payloads are any buffer (bytes, bytearray, a memoryview slice, an array of samples),
    copied to bytes in C order, and bounded by their size in bytes; the errors name the fix."""
    assert check_payload(bytearray(b"ab"), 10) == b"ab"
    assert check_payload(memoryview(b"abcdef")[1:4], 10) == b"bcd"
    samples = array.array("h", [1, -2])  # 16-bit PCM, as an audio frame arrives
    assert check_payload(samples, 10) == samples.tobytes()
    assert type(check_payload(samples, 10)) is bytes
    with pytest.raises(litechan.InvalidPayload, match="bytes"):
        check_payload("text", 10)
    with pytest.raises(litechan.PayloadTooLarge, match="max_payload"):
        check_payload(b"x" * 11, 10)
    with pytest.raises(litechan.PayloadTooLarge, match="max_payload"):
        check_payload(array.array("h", [0] * 6), 10)  # 12 bytes, though 6 items


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


@given(any_text)
def test_free_form_strings_either_raise_their_error_or_fit_every_wire(value: str) -> None:
    """Any str given as a key, dedupe_id, header or reason either raises its specific error with
    a short message, or is accepted as something UTF-8 (and so msgpack and Redis) can carry."""
    for check, error in (
        (check_key, litechan.InvalidName),
        (check_dedupe_id, litechan.InvalidArgument),
        (lambda v: check_headers({v: v}), litechan.InvalidPayload),
        (check_reason, litechan.InvalidArgument),
    ):
        try:
            accepted = check(value)
        except error as exc:
            message = str(exc)
        else:
            message = ""
        assert len(message) < 300, message
        if message:
            continue
        for text in accepted if isinstance(accepted, dict) else [accepted]:
            assert isinstance(text, str)
            text.encode()
    if any("\ud800" <= c <= "\udfff" for c in value):  # a lone surrogate is never accepted
        with pytest.raises(litechan.InvalidName):
            check_key(value)


def test_hostile_strings_are_refused_with_short_messages() -> None:
    """Lone surrogates and 10,000-character strings raise specific errors that echo at most a
    prefix; NUL is data and passes; long reasons are cut."""
    long = "x" * 10_000
    for call, error in (
        (lambda: check_key("s\ud800"), litechan.InvalidName),
        (lambda: check_key(long), litechan.InvalidName),
        (lambda: check_name(long, "name"), litechan.InvalidName),
        (lambda: check_dedupe_id(long), litechan.InvalidArgument),
        (lambda: check_dedupe_id(""), litechan.InvalidArgument),
        (lambda: check_headers({"h": "v\udfff"}), litechan.InvalidPayload),
        (lambda: check_headers({"h": "x" * 70_000}), litechan.PayloadTooLarge),
        (lambda: check_headers({"h": "\U0001f600" * 17_000}), litechan.PayloadTooLarge),
        (lambda: check_reason("r\ud800"), litechan.InvalidArgument),
        (lambda: litechan.connect("redis://:pass\ud800word@h/0"), litechan.InvalidArgument),
    ):
        with pytest.raises(error) as info:
            call()
        assert len(str(info.value)) < 200, str(info.value)
        assert "pass" not in str(info.value)
    assert check_key("a\x00b") == "a\x00b"
    assert check_headers({"n\x00": "v\x00"}) == {"n\x00": "v\x00"}
    assert check_headers({"h": "\U0001f600" * 16_000})  # 64,000 bytes: within the limit
    assert check_reason("r" * 5000).startswith("r" * 1000 + "... (5000")
    assert check_dedupe_id(None) is None
