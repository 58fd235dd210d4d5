"""Validation of names, keys, payloads and headers, shared by every backend.

The name alphabet is deliberately narrow: ``A-Z a-z 0-9 _ - .``, 1 to 128 characters, no leading
dot. Backends build storage keys by joining names with separators that are *outside* this
alphabet (``:`` and ``{}`` on Redis), so no name can ever address another namespace's, parent's
or lite topic's keys (G10).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from ._errors import InvalidArgument, InvalidName, InvalidPayload, PayloadTooLarge

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "check_headers",
    "check_int",
    "check_key",
    "check_name",
    "check_payload",
    "check_seconds",
]

MAX_NAME_LENGTH: Final = 128
MAX_KEY_LENGTH: Final = 1024
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


def check_name(value: object, what: str) -> str:
    """Return *value* if it is a valid name, else raise :class:`InvalidName` saying why."""
    if type(value) is not str:
        raise InvalidName(f"{what} must be a str, got {type(value).__name__}")
    if _NAME_RE.fullmatch(value) is None:
        raise InvalidName(
            f"invalid {what} {value!r}: use 1 to {MAX_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 _ - . (not starting with '.')"
        )
    return value


def check_key(value: object) -> str:
    """Return *value* if it is a valid ordering key (any non-empty str up to 1024 characters)."""
    if type(value) is not str:
        raise InvalidName(f"key must be a str (the session id), got {type(value).__name__}")
    if not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidName(f"key must have 1 to {MAX_KEY_LENGTH} characters, got {len(value)}")
    return value


def check_payload(value: object, max_payload: int) -> bytes:
    """Return *value* as ``bytes``; raise before anything is written when it is not acceptable."""
    if type(value) is bytes:
        payload = value
    elif isinstance(value, bytes | bytearray | memoryview):
        payload = bytes(value)
    else:
        raise InvalidPayload(
            f"payload must be bytes, got {type(value).__name__}; encode it first "
            "(for example with msgspec.msgpack.encode)"
        )
    if len(payload) > max_payload:
        raise PayloadTooLarge(
            f"payload of {len(payload)} bytes exceeds max_payload={max_payload}; split it "
            "or raise max_payload in litechan.connect()"
        )
    return payload


def check_headers(value: object) -> dict[str, str]:
    """Return a copy of *value* as ``dict[str, str]``, or raise :class:`InvalidPayload`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"headers must be a mapping of str to str, got {type(value).__name__}")
    headers: dict[str, str] = {}
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            raise InvalidPayload(
                f"headers must map str to str, got {type(k).__name__} -> {type(v).__name__}"
            )
        headers[k] = v
    return headers


def check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    """Return *value* if it is an int (not a bool) within bounds, else raise InvalidArgument."""
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise InvalidArgument(f"{what} must be an int {bounds}, got {value!r}")
    return value


def check_seconds(value: object, what: str, *, allow_zero: bool) -> float:
    """Return *value* as float seconds if it is a finite non-negative number."""
    if type(value) is not int and type(value) is not float:
        raise InvalidArgument(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not (seconds >= 0 and seconds != float("inf")) or (seconds == 0 and not allow_zero):
        sign = ">= 0" if allow_zero else "> 0"
        raise InvalidArgument(f"{what} must be a finite number of seconds {sign}, got {value!r}")
    return seconds
