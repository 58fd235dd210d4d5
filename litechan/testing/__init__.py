"""litechan's public conformance kit: the guarantees of the design as checks any backend runs.

Why it exists: litechan promises the same behaviour (per-key order, single owner, resume,
takeover, TTL, ...) on every backend, including backends written outside this project. Those
promises are only worth something if they are executable, so they live here, as reusable async
checks in the manner of ``trio.testing.check_one_way_stream``: a backend author provides a
:data:`BackendFactory` that opens a fresh world of their backend and runs the checks, one by one
from pytest or all at once with :func:`run_conformance`. litechan's own test suite runs the very
same checks on the memory backend and on Redis.

Layout: :mod:`._harness` is the ground the checks stand on (:class:`Harness`, one world openable
by many brokers, with a clock); :mod:`._checks` holds one check per guarantee edge.

.. versionadded:: 0.1.0
"""

from .._clock import ManualClock as ManualClock
from ._checks import CHECKS as CHECKS
from ._checks import Check as Check
from ._checks import check_body_errors_come_out_plain as check_body_errors_come_out_plain
from ._checks import check_bounded_retention as check_bounded_retention
from ._checks import check_cancelled_receive_lite as check_cancelled_receive_lite
from ._checks import check_cancelled_receive_ordered as check_cancelled_receive_ordered
from ._checks import check_channel_lifecycle as check_channel_lifecycle
from ._checks import check_closed_resources as check_closed_resources
from ._checks import check_config_mismatch as check_config_mismatch
from ._checks import check_dedupe as check_dedupe
from ._checks import check_gap_counts_only_unacked as check_gap_counts_only_unacked
from ._checks import check_hostile_strings as check_hostile_strings
from ._checks import check_invalid_names as check_invalid_names
from ._checks import check_key_order as check_key_order
from ._checks import check_key_order_across_nack as check_key_order_across_nack
from ._checks import check_key_order_across_rebalance as check_key_order_across_rebalance
from ._checks import check_lazy_creation as check_lazy_creation
from ._checks import check_lite_deadline as check_lite_deadline
from ._checks import check_lite_isolation as check_lite_isolation
from ._checks import check_lite_message_fields as check_lite_message_fields
from ._checks import check_lite_single_owner_and_fencing as check_lite_single_owner_and_fencing
from ._checks import check_lite_stats as check_lite_stats
from ._checks import check_max_deliveries_dead_letters as check_max_deliveries_dead_letters
from ._checks import check_max_in_flight as check_max_in_flight
from ._checks import check_merged_iteration as check_merged_iteration
from ._checks import check_nack_delay as check_nack_delay
from ._checks import check_next_message_waits_for_ack as check_next_message_waits_for_ack
from ._checks import check_no_head_of_line_blocking as check_no_head_of_line_blocking
from ._checks import check_no_head_of_line_blocking_deep as check_no_head_of_line_blocking_deep
from ._checks import check_no_redelivery_after_ack as check_no_redelivery_after_ack
from ._checks import check_ordered_deadline as check_ordered_deadline
from ._checks import check_ordered_fencing as check_ordered_fencing
from ._checks import check_ordered_isolation as check_ordered_isolation
from ._checks import check_ordered_message_fields as check_ordered_message_fields
from ._checks import check_ordered_stats as check_ordered_stats
from ._checks import check_partition_ordering as check_partition_ordering
from ._checks import check_partitions_single_owner as check_partitions_single_owner
from ._checks import check_payload_errors as check_payload_errors
from ._checks import check_redelivery_after_crash as check_redelivery_after_crash
from ._checks import check_reject_dead_letters as check_reject_dead_letters
from ._checks import check_resume_committed as check_resume_committed
from ._checks import check_resume_skips_acked as check_resume_skips_acked
from ._checks import check_resume_start_positions as check_resume_start_positions
from ._checks import check_takeover as check_takeover
from ._checks import check_takeover_skips_acked as check_takeover_skips_acked
from ._checks import check_ttl_expiry as check_ttl_expiry
from ._checks import check_ttl_refreshed_by_publish as check_ttl_refreshed_by_publish
from ._checks import check_unknown_backend as check_unknown_backend
from ._checks import run_conformance as run_conformance
from ._harness import BackendFactory as BackendFactory
from ._harness import Harness as Harness
from ._harness import memory_backend as memory_backend
from ._harness import redis_backend as redis_backend
from ._harness import url_backend as url_backend

__all__ = [
    # ---- running the kit ----
    "CHECKS",
    "Check",
    "run_conformance",
    # ---- the ground the checks stand on ----
    "BackendFactory",
    "Harness",
    "ManualClock",
    "memory_backend",
    "redis_backend",
    "url_backend",
    # ---- messages as delivered ----
    "check_lite_message_fields",
    "check_ordered_message_fields",
    # ---- G1 per-key order ----
    "check_key_order",
    "check_key_order_across_nack",
    "check_key_order_across_rebalance",
    "check_next_message_waits_for_ack",
    # ---- G2 no head-of-line blocking ----
    "check_max_in_flight",
    "check_no_head_of_line_blocking",
    "check_no_head_of_line_blocking_deep",
    "check_partition_ordering",
    # ---- G3 at-least-once ----
    "check_max_deliveries_dead_letters",
    "check_nack_delay",
    "check_no_redelivery_after_ack",
    "check_redelivery_after_crash",
    "check_reject_dead_letters",
    # ---- G4 single owner ----
    "check_lite_single_owner_and_fencing",
    "check_ordered_fencing",
    "check_partitions_single_owner",
    # ---- G5 lazy creation ----
    "check_lazy_creation",
    # ---- G6 resume ----
    "check_resume_committed",
    "check_resume_skips_acked",
    "check_resume_start_positions",
    # ---- G7 takeover and channel ends ----
    "check_channel_lifecycle",
    "check_takeover",
    "check_takeover_skips_acked",
    # ---- G8 TTL ----
    "check_ttl_expiry",
    "check_ttl_refreshed_by_publish",
    # ---- G9 bounded retention ----
    "check_bounded_retention",
    "check_gap_counts_only_unacked",
    # ---- G10 isolation ----
    "check_lite_isolation",
    "check_ordered_isolation",
    # ---- G11 idempotent send ----
    "check_dedupe",
    "check_lite_deadline",
    "check_ordered_deadline",
    # ---- G12 clear errors ----
    "check_body_errors_come_out_plain",
    "check_closed_resources",
    "check_config_mismatch",
    "check_hostile_strings",
    "check_invalid_names",
    "check_payload_errors",
    "check_unknown_backend",
    # ---- merged iteration and observability ----
    "check_lite_stats",
    "check_merged_iteration",
    "check_ordered_stats",
    # ---- cancellation ----
    "check_cancelled_receive_lite",
    "check_cancelled_receive_ordered",
]
