"""The conformance kit (``litechan.testing``) run on the memory backend (asyncio and trio) and on
a real redis-server started by the test suite (asyncio: redis-py's client is asyncio-only)."""

from __future__ import annotations

import inspect

import anyio
import pytest

import litechan.testing
from litechan.testing import (
    CHECKS,
    BackendFactory,
    Check,
    _checks,
    memory_backend,
    redis_backend,
    run_conformance,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
async def test_memory_backend_passes(check: Check) -> None:
    """The memory backend meets the guarantee the check verifies."""
    with anyio.fail_after(60):
        await check(memory_backend)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
async def test_redis_backend_passes(check: Check, redis_base_url: str) -> None:
    """The Redis backend meets the guarantee the check verifies, against a real redis-server."""
    with anyio.fail_after(90):
        await check(redis_backend(redis_base_url))


def test_checks_lists_every_check() -> None:
    """CHECKS holds every check_* function of the kit, once, and each is exported."""
    defined = {
        name
        for name, value in inspect.getmembers(_checks, inspect.iscoroutinefunction)
        if name.startswith("check_")
    }
    listed = [check.__name__ for check in CHECKS]
    assert len(listed) == len(set(listed))
    assert set(listed) == defined
    assert defined <= set(litechan.testing.__all__)
    assert defined <= set(_checks.__all__)
    assert all(getattr(litechan.testing, name) is getattr(_checks, name) for name in defined)


async def test_run_conformance_reports_every_failure() -> None:
    """run_conformance runs every check and raises all failures together, naming each check."""

    async def check_passes(backend: BackendFactory) -> None:
        async with backend():
            pass

    async def check_fails(backend: BackendFactory) -> None:
        raise AssertionError("broken")

    with anyio.fail_after(10):
        await run_conformance(memory_backend, [check_passes])
        with pytest.raises(ExceptionGroup) as info:
            await run_conformance(memory_backend, [check_fails, check_passes, check_fails])
    assert "2 of 3" in str(info.value)
    assert len(info.value.exceptions) == 2
    assert all(
        "in litechan.testing.check_fails" in getattr(exc, "__notes__", [])
        for exc in info.value.exceptions
    )
