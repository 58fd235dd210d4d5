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

import os
from collections.abc import AsyncIterator
from typing import Final

import pytest

import litechan

from ._harness import redis_backend

__all__ = [
    "REDIS_URL_ENV",
    "litechan_broker",
    "litechan_clock",
    "litechan_redis_broker",
    "litechan_redis_url",
]

#: The environment variable naming the Redis server of ``litechan_redis_url``.
REDIS_URL_ENV: Final = "LITECHAN_TEST_REDIS_URL"
#: Where ``litechan_clock`` starts (2023-11-14, UNIX seconds).
CLOCK_START: Final = 1_700_000_000.0


@pytest.fixture
def litechan_clock() -> litechan.ManualClock:
    """A manual clock at a fixed time, read by ``litechan_broker``."""
    return litechan.ManualClock(start=CLOCK_START)


@pytest.fixture
async def litechan_broker(litechan_clock: litechan.ManualClock) -> AsyncIterator[litechan.Broker]:
    """An open broker on a private memory:// world that reads ``litechan_clock``."""
    async with litechan.connect("memory://", clock=litechan_clock) as broker:
        yield broker


@pytest.fixture
async def litechan_redis_url() -> AsyncIterator[str]:
    """``LITECHAN_TEST_REDIS_URL`` with a namespace of this test's own, deleted after it."""
    base = os.environ.get(REDIS_URL_ENV)
    if not base:
        pytest.skip(f"set {REDIS_URL_ENV}=redis://host:port/db to run the tests that use Redis")
    async with redis_backend(base)() as harness:
        yield harness.url


@pytest.fixture
async def litechan_redis_broker(litechan_redis_url: str) -> AsyncIterator[litechan.Broker]:
    """An open broker on ``litechan_redis_url``."""
    async with litechan.connect(litechan_redis_url) as broker:
        yield broker
