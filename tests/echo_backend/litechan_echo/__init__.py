"""A backend in a package of its own, found by litechan through its entry point (the tests put
this directory on ``sys.path``, where importlib.metadata sees it as an installed distribution).

It serves ``echo://NAME`` by reusing the memory backend: what the tests prove is the way in
(the entry point, ``litechan.backends``, the kit's ``url_backend``), not a new storage engine.
"""

from __future__ import annotations

from litechan._backends.memory import MemoryBackend

__all__ = ["EchoBackend"]


class EchoBackend(MemoryBackend):
    """``echo://NAME``: an in-process world, as ``memory://NAME``."""
