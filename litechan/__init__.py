"""litechan: ordered request partitions and per-session reply channels for real-time agents.

Layout (each concern lives in one place):

* ``_broker``    — :func:`connect` and :class:`Broker`: URL -> backend, topic handles, lifetime.
* ``_ordered``   — request side: :class:`OrderedTopic`, :class:`Consumer` (key-ordered dispatch
  from ``_dispatch``, a pure state machine).
* ``_lite``      — reply side: :class:`LiteTopics`, :class:`Subscriber`, :class:`Channel`.
* ``_types``     — values handed to applications: messages, receipts, stats, end reasons.
* ``_names``     — validation of names, keys, payloads; ``_hashing`` the partition function;
  ``_clock`` injectable time; ``_pacing`` when hot paths yield; ``_errors`` the exception tree.
* ``_backends``  — the internal backend interface (``base.Backend``) and its implementations,
  chosen by URL scheme and imported lazily (``memory``).
* ``litechan.testing`` — the conformance kit every backend must pass, and ``ManualClock``.
"""

from ._broker import Broker as Broker
from ._broker import connect as connect
from ._clock import Clock as Clock
from ._clock import ManualClock as ManualClock
from ._clock import SystemClock as SystemClock
from ._errors import BrokerUnavailable as BrokerUnavailable
from ._errors import ConfigMismatch as ConfigMismatch
from ._errors import CorruptEntry as CorruptEntry
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidName as InvalidName
from ._errors import InvalidPayload as InvalidPayload
from ._errors import LitechanError as LitechanError
from ._errors import Overloaded as Overloaded
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import ResourceClosed as ResourceClosed
from ._errors import ServerError as ServerError
from ._errors import UnknownBackend as UnknownBackend
from ._hashing import partition_for as partition_for
from ._lite import Channel as Channel
from ._lite import LiteTopics as LiteTopics
from ._lite import Subscriber as Subscriber
from ._ordered import Consumer as Consumer
from ._ordered import OrderedTopic as OrderedTopic
from ._types import DeadLetter as DeadLetter
from ._types import EndReason as EndReason
from ._types import GroupLag as GroupLag
from ._types import LiteMessage as LiteMessage
from ._types import LiteTopicLag as LiteTopicLag
from ._types import LiteTopicsStats as LiteTopicsStats
from ._types import Message as Message
from ._types import OrderedTopicStats as OrderedTopicStats
from ._types import PartitionStats as PartitionStats
from ._types import Receipt as Receipt
from ._version import __version__ as __version__

__all__ = [
    # entry point
    "connect",
    "Broker",
    # request side: ordered, partitioned topics
    "OrderedTopic",
    "Consumer",
    "Message",
    "Receipt",
    "DeadLetter",
    "partition_for",
    # reply side: lite topics
    "LiteTopics",
    "Subscriber",
    "Channel",
    "LiteMessage",
    "EndReason",
    # observability
    "OrderedTopicStats",
    "PartitionStats",
    "GroupLag",
    "LiteTopicsStats",
    "LiteTopicLag",
    # time
    "Clock",
    "SystemClock",
    "ManualClock",
    # errors
    "LitechanError",
    "InvalidArgument",
    "InvalidName",
    "InvalidPayload",
    "PayloadTooLarge",
    "UnknownBackend",
    "ConfigMismatch",
    "BrokerUnavailable",
    "Overloaded",
    "ResourceClosed",
    "ServerError",
    "CorruptEntry",
    # version
    "__version__",
]
