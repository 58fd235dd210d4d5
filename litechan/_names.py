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
    "MAX_HEADERS_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_REASON_LENGTH",
    "check_dedupe_id",
    "check_headers",
    "check_int",
    "check_key",
    "check_name",
    "check_payload",
    "check_reason",
    "check_seconds",
    "shown",
    "utf8_ok",
]

MAX_NAME_LENGTH: Final = 128
MAX_KEY_LENGTH: Final = 1024
#: Bytes of header names and values (UTF-8) one message may carry.
MAX_HEADERS_SIZE: Final = 64 * 1024
#: Characters of a reject reason kept in the dead letter (the rest is cut).
MAX_REASON_LENGTH: Final = 1000
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
_SHOWN: Final = 60


def shown(value: str) -> str:
    """*value* for an error message: its repr, cut after 60 characters of it (a hostile 10 MB
    string must not be echoed whole into messages and logs, nor a short one whose characters
    each take ten to escape)."""
    text = repr(value)
    if len(text) <= _SHOWN + 2:
        return text
    return f"{text[:_SHOWN]}... ({len(value)} characters)"


def utf8_ok(value: str) -> bool:
    """Whether *value* can be encoded as UTF-8 (it holds no lone surrogate), which every wire
    and storage litechan writes to needs."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(value: object, what: str) -> str:
    """Return *value* if it is a valid name, else raise :class:`InvalidName` saying why."""
    if type(value) is not str:
        raise InvalidName(f"{what} must be a str, got {type(value).__name__}")
    if _NAME_RE.fullmatch(value) is None:
        raise InvalidName(
            f"invalid {what} {shown(value)}: use 1 to {MAX_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 _ - . (not starting with '.')"
        )
    return value


def check_key(value: object) -> str:
    """Return *value* if it is a valid ordering key: a str of 1 to 1024 characters that UTF-8 can
    encode (any character but a lone surrogate)."""
    if type(value) is not str:
        raise InvalidName(f"key must be a str (the session id), got {type(value).__name__}")
    if not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidName(f"key must have 1 to {MAX_KEY_LENGTH} characters, got {len(value)}")
    if not utf8_ok(value):
        raise InvalidName(f"key {shown(value)} holds a lone surrogate, which UTF-8 cannot encode")
    return value


def check_dedupe_id(value: object) -> str | None:
    """Return *value* if it is ``None`` or a valid ``dedupe_id`` (the rules of a key)."""
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > MAX_KEY_LENGTH:
        what = f"a str of {len(value)} characters" if type(value) is str else shown(repr(value))
        raise InvalidArgument(
            f"dedupe_id must be a str of 1 to {MAX_KEY_LENGTH} characters, got {what}"
        )
    if not utf8_ok(value):
        raise InvalidArgument(
            f"dedupe_id {shown(value)} holds a lone surrogate, which UTF-8 cannot encode"
        )
    return value


def check_reason(value: object) -> str:
    """Return a reject reason fit for a dead letter: a str UTF-8 can encode, cut to 1000
    characters."""
    if type(value) is not str:
        raise InvalidArgument(f"reason must be a str, got {type(value).__name__}")
    if not utf8_ok(value):
        raise InvalidArgument(
            f"reason {shown(value)} holds a lone surrogate, which UTF-8 cannot encode"
        )
    if len(value) > MAX_REASON_LENGTH:
        return f"{value[:MAX_REASON_LENGTH]}... ({len(value)} characters)"
    return value


def check_payload(value: object, max_payload: int) -> bytes:
    """Return *value* as ``bytes``; raise before anything is written when it is not acceptable.

    Any object with the buffer protocol is accepted (``bytearray``, ``memoryview``, an
    ``array.array`` or NumPy array of PCM samples) and copied, in C order, to ``bytes``; a
    ``str`` is refused (its encoding is the application's choice)."""
    if type(value) is bytes:
        payload = value
    else:
        try:
            view = memoryview(value)  # type: ignore[arg-type]  # any Buffer, checked here
        except TypeError:
            raise InvalidPayload(
                f"payload must be bytes or another buffer, got {type(value).__name__}; "
                "encode it first (for example with msgspec.msgpack.encode)"
            ) from None
        with view:
            payload = view.tobytes()
    if len(payload) > max_payload:
        raise PayloadTooLarge(
            f"payload of {len(payload)} bytes exceeds max_payload={max_payload}; split it "
            "or raise max_payload in litechan.connect()"
        )
    return payload


def check_headers(value: object) -> dict[str, str]:
    """Return a copy of *value* as ``dict[str, str]``, or raise :class:`InvalidPayload` (a name
    or value that is not a str UTF-8 can encode) or :class:`PayloadTooLarge` (more than
    64 KiB of names and values)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"headers must be a mapping of str to str, got {type(value).__name__}")
    headers: dict[str, str] = {}
    size = 0
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            raise InvalidPayload(
                f"headers must map str to str, got {type(k).__name__} -> {type(v).__name__}"
            )
        if not (utf8_ok(k) and utf8_ok(v)):
            raise InvalidPayload(
                f"header {shown(k)}: {shown(v)} holds a lone surrogate, which UTF-8 cannot encode"
            )
        size += len(k) + len(v)
        headers[k] = v
    # Counting characters is enough while they cannot reach the limit even at 4 bytes each.
    if size > MAX_HEADERS_SIZE // 4:
        encoded = sum(len(field.encode()) for field in (*headers, *headers.values()))
        if encoded > MAX_HEADERS_SIZE:
            raise PayloadTooLarge(
                f"headers of {encoded} bytes exceed {MAX_HEADERS_SIZE}; carry large data in "
                "the payload"
            )
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
