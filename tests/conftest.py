"""Shared pytest configuration: every async test runs on asyncio and on trio."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[pytest.param("asyncio"), pytest.param("trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loop each ``@pytest.mark.anyio`` test runs on: asyncio, then trio."""
    backend: str = request.param
    return backend
