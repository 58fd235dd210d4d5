"""The backend interface, for packages that add a backend to litechan.

A backend is a class implementing :class:`Backend`, constructed with the parsed URL
(:class:`urllib.parse.SplitResult`) and the :class:`BackendOptions`. A package makes it
reachable by declaring an entry point in the group ``litechan.backends`` whose name is the URL
scheme it serves::

    [project.entry-points."litechan.backends"]
    mystore = "mystore_litechan:MyStoreBackend"

after which ``litechan.connect("mystore://...")`` opens it. The schemes litechan serves itself
(``memory``, ``redis``, ``rediss``, ``unix``) cannot be taken over. Prove a backend with the
conformance kit: ``litechan.testing.url_backend`` makes a factory for any registered URL, and
``litechan.testing.run_conformance`` runs every check against it.

Each class and protocol below documents its contract. The interface is provisional while
litechan is 0.x: a minor release may change it, and says so in its changelog.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from ._backends import ENTRY_POINT_GROUP
from ._backends.base import (
    ALWAYS_FRESH,
    Backend,
    BackendOptions,
    Entry,
    Fence,
    GroupMember,
    LiteBatch,
    LiteBody,
    LiteListener,
    LiteMember,
    LiteRecord,
    LiteSpec,
    OrderedBatch,
    OrderedListener,
    OrderedSpec,
    Start,
    Subscription,
)

__all__ = [
    "ALWAYS_FRESH",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendOptions",
    "Entry",
    "Fence",
    "GroupMember",
    "LiteBatch",
    "LiteBody",
    "LiteListener",
    "LiteMember",
    "LiteRecord",
    "LiteSpec",
    "OrderedBatch",
    "OrderedListener",
    "OrderedSpec",
    "Start",
    "Subscription",
]
