"""The classification of Redis error replies: every code maps to one kind and one error."""

from __future__ import annotations

import pytest

import litechan
from litechan._backends.redis._replies import error_code, is_refusal, is_transient, reply_error
from litechan._backends.redis._wire import ReplyError

TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS", "NOSCRIPT")


def reply(text: str) -> ReplyError:
    return ReplyError(text)


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_codes_are_outages(code: str) -> None:
    """A reply saying the command did not run for now is transient, and past retry it becomes
    BrokerUnavailable naming the code."""
    error = reply(f"{code} the server says why")
    assert is_transient(error)
    converted = reply_error(error, "publishing")
    assert isinstance(converted, litechan.BrokerUnavailable)
    assert code in str(converted)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", litechan.Overloaded),
        ("NOPERM this user has no permissions to access one of the keys", litechan.ServerError),
        ("READONLY You can't write against a read only replica.", litechan.ServerError),
        ("MISCONF Redis is configured to save RDB snapshots, but ...", litechan.ServerError),
        ("NOAUTH Authentication required.", litechan.BrokerUnavailable),
        ("WRONGPASS invalid username-password pair", litechan.BrokerUnavailable),
        (
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            litechan.CorruptEntry,
        ),
        ("LITECHAN_FOREIGN_ID 1700000000000-0", litechan.CorruptEntry),
        ("ERR user_script:3: attempt to index a nil value", litechan.ServerError),
        ("ERR unknown command 'SSUBSCRIBE'", litechan.ServerError),
    ],
)
def test_other_codes_are_refusals_or_bugs(text: str, expected: type[Exception]) -> None:
    """Refusals and bugs are not transient, and each becomes its own litechan error carrying the
    server's words; only bugs (ERR) are not expected refusals."""
    error = reply(text)
    assert not is_transient(error)
    converted = reply_error(error, "acking")
    assert type(converted) is expected
    assert text.split()[0] in str(converted) or "another program" in str(converted)
    assert is_refusal(error) is (not text.startswith("ERR"))


def test_redis62_wraps_errors_raised_in_scripts() -> None:
    """Redis 6.2 reports an error a script's redis.call raised inside an ERR: the inner code
    decides (an OOM in a script is Overloaded there too)."""
    text = (
        "ERR Error running script (call to f_d65f17ab): @user_script:3: @user_script: 3: "
        "-OOM command not allowed when used memory > 'maxmemory'."
    )
    assert error_code(reply(text)) == "OOM"
    assert isinstance(reply_error(reply(text), "publishing"), litechan.Overloaded)
    plain = "ERR Error running script (call to f_d65f17ab): @user_script:3: bad argument"
    assert error_code(reply(plain)) == "ERR"
