"""pytest fixtures for applications that use litechan (loaded by pytest through the
``pytest11`` entry point once litechan is installed; async fixtures need anyio's pytest plugin,
which anyio registers the same way).

* ``litechan_clock``: a :class:`~litechan.ManualClock` at a fixed time; advance it to expire
  lite topics, end nack delays and dedupe windows without waiting.
* ``litechan_broker``: an open broker on a private ``memory://`` world that reads
  ``litechan_clock``; closed after the test.
* ``litechan_redis_url``: the URL of a Redis server given by the ``LITECHAN_TEST_REDIS_URL``
  environment variable, with a namespace of this test's own (its keys are deleted after the
  test). Without the variable the test is skipped, saying so: an application's suite decides
  whether Redis is part of it.
* ``litechan_redis_broker``: an open broker on ``litechan_redis_url``.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import collections.abc
import os
import typing

import pytest

import litechan

from ._harness import redis_backend as _redis_backend

__all__ = [
    "CLOCK_START",
    "REDIS_URL_ENV",
    "litechan_broker",
    "litechan_clock",
    "litechan_redis_broker",
    "litechan_redis_url",
]

#: The environment variable naming the Redis server of ``litechan_redis_url``.
REDIS_URL_ENV: typing.Final = "LITECHAN_TEST_REDIS_URL"
#: Where ``litechan_clock`` starts (2023-11-14, UNIX seconds).
CLOCK_START: typing.Final = 1_700_000_000.0


@pytest.fixture
def litechan_clock() -> litechan.ManualClock:
    """A manual clock at a fixed time, read by ``litechan_broker``.

    .. versionadded:: 0.2.0
    """
    return litechan.ManualClock(start=CLOCK_START)


@pytest.fixture
async def litechan_broker(
    litechan_clock: litechan.ManualClock,
) -> collections.abc.AsyncIterator[litechan.Broker]:
    """An open broker on a private memory:// world that reads ``litechan_clock``.

    .. versionadded:: 0.2.0
    """
    async with litechan.connect("memory://", clock=litechan_clock) as broker:
        yield broker


@pytest.fixture
async def litechan_redis_url() -> collections.abc.AsyncIterator[str]:
    """``LITECHAN_TEST_REDIS_URL`` with a namespace of this test's own, deleted after it.

    .. versionadded:: 0.2.0
    """
    base = os.environ.get(REDIS_URL_ENV)
    if not base:
        pytest.skip(f"set {REDIS_URL_ENV}=redis://host:port/db to run the tests that use Redis")
    async with _redis_backend(base)() as harness:
        yield harness.url


@pytest.fixture
async def litechan_redis_broker(
    litechan_redis_url: str,
) -> collections.abc.AsyncIterator[litechan.Broker]:
    """An open broker on ``litechan_redis_url``.

    .. versionadded:: 0.2.0
    """
    async with litechan.connect(litechan_redis_url) as broker:
        yield broker
