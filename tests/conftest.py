"""Shared pytest configuration: every async test runs on asyncio and on trio.

The Redis fixtures live in redis_fixtures.py, loaded when the redis extra is installed. Without
it (the nox session ``tests(no-redis)``, which proves litechan works without the extra), the
Redis test modules and every test that asks for a Redis fixture are deselected, and the run's
header says how many; with it, a Redis test never skips (a missing server is a failure).
"""

from __future__ import annotations

import importlib.util
from typing import Final

import pytest

#: Whether the redis extra (redis-py and hiredis) is installed.
REDIS_EXTRA: Final = all(importlib.util.find_spec(m) is not None for m in ("redis", "hiredis"))

#: Fixtures that only the Redis plugin defines.
_REDIS_FIXTURES: Final = frozenset(
    {"redis_server", "redis_base_url", "redis62_server", "own_redis_server", "redis_url"}
)

pytest_plugins = ["pytester", *(["redis_fixtures"] if REDIS_EXTRA else [])]
if not REDIS_EXTRA:  # the examples extra (the voice agent's web stack) requires the redis extra too
    collect_ignore_glob = ["test_redis*.py", "test_voice_agent.py"]


def pytest_report_header() -> str:
    if REDIS_EXTRA:
        return "litechan: the redis extra is installed; every Redis test runs"
    return (
        "litechan: no redis extra; the Redis tests are deselected "
        "(test_redis*.py and test_voice_agent.py not collected)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REDIS_EXTRA:
        return
    kept = [item for item in items if not _REDIS_FIXTURES & set(item.fixturenames)]
    if len(kept) < len(items):
        chosen = set(kept)
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = kept


@pytest.fixture(params=[pytest.param("asyncio"), pytest.param("trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loop each ``@pytest.mark.anyio`` test runs on: asyncio, then trio."""
    backend: str = request.param
    return backend
