"""Backend registry: URL scheme -> backend class, imported lazily.

A backend module is imported only when a URL with its scheme is opened, so ``memory://`` users
never import redis-py. An unknown scheme raises :class:`~litechan.UnknownBackend` listing the
known ones.
"""

from __future__ import annotations

import importlib
from typing import Final
from urllib.parse import SplitResult

from .._errors import UnknownBackend
from .base import Backend, BackendOptions

__all__ = ["known_schemes", "open_backend"]

_REGISTRY: Final[dict[str, str]] = {
    "memory": "litechan._backends.memory:MemoryBackend",
    "redis": "litechan._backends.redis:RedisBackend",
    "rediss": "litechan._backends.redis:RedisBackend",
    "unix": "litechan._backends.redis:RedisBackend",
}


def known_schemes() -> list[str]:
    """The URL schemes litechan can open."""
    return sorted(_REGISTRY)


def open_backend(url: SplitResult, options: BackendOptions) -> Backend:
    """Instantiate the backend for *url*'s scheme (not started yet)."""
    target = _REGISTRY.get(url.scheme)
    if target is None:
        known = ", ".join(f"{scheme}://" for scheme in known_schemes())
        raise UnknownBackend(
            f"no backend for {url.scheme or '(no scheme)'}:// URLs; known: {known}"
        )
    module_name, _, class_name = target.partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class(url, options)
    return backend
