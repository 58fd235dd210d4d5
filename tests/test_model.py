"""The model-based state machine (litechan.testing.model) on the memory backend, and the model."""

from __future__ import annotations

import pytest
import structlog.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import litechan
from litechan.testing import memory_backend, redis_backend
from litechan.testing.model import LiteModel, ModelViolation, OrderedModel, make_state_machine

MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_memory_backend_follows_the_model(anyio_backend: str) -> None:
    """Random sequences of every operation keep the memory backend within the model."""
    machine = make_state_machine(memory_backend, anyio_backend=anyio_backend)
    with structlog.testing.capture_logs():  # thousands of expected warnings (gaps, dead letters)
        run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


REDIS_SETTINGS = settings(
    MACHINE_SETTINGS,
    max_examples=20,
    stateful_step_count=30,
)


@pytest.mark.timeout(900)
def test_redis_backend_follows_the_model(redis_base_url: str) -> None:
    """Random sequences of every operation keep the Redis backend within the model.

    Time is real on Redis, so the machine runs without TTL rules (the kit's TTL checks cover
    G8 there): a TTL short enough for a test would run out during a sequence of rules.
    """
    machine = make_state_machine(redis_backend(redis_base_url), anyio_backend="asyncio")
    with structlog.testing.capture_logs():
        run_state_machine_as_test(machine, settings=REDIS_SETTINGS)


# -- the pure model ---------------------------------------------------------------------------


def _two_keys_one_partition(partitions: int) -> tuple[str, str]:
    keys = [f"k{i}" for i in range(100)]
    first = keys[0]
    second = next(
        k
        for k in keys[1:]
        if litechan.partition_for(k, partitions) == litechan.partition_for(first, partitions)
    )
    return first, second


def test_ordered_model_predicts_receipts_and_dedupe() -> None:
    """Offsets grow by one per partition and a dedupe id stores one message per window."""
    model = OrderedModel(2, dedupe_window=10.0)
    a = model.send("a", b"1", dedupe_id="x")
    assert (a.partition, a.offset, a.duplicate) == (litechan.partition_for("a", 2), 1, False)
    assert model.send("a", b"2", dedupe_id="x") == type(a)(a.partition, 1, True)
    model.advance(11.0)
    assert model.send("a", b"3", dedupe_id="x").offset == 2


def test_ordered_model_rejects_out_of_order_delivery() -> None:
    """Delivering a key's second message before its first is settled is a G1 violation."""
    model = OrderedModel(2)
    model.open("c")
    first = model.send("a", b"1")
    second = model.send("a", b"2")
    with pytest.raises(ModelViolation, match="G1"):
        model.deliver(
            "c",
            key="a",
            partition=second.partition,
            offset=second.offset,
            payload=b"2",
            headers={},
            delivery_count=1,
        )
    model.deliver(
        "c",
        key="a",
        partition=first.partition,
        offset=first.offset,
        payload=b"1",
        headers={},
        delivery_count=1,
    )
    assert model.deliverable() == []


def test_ordered_model_lets_other_keys_pass_a_busy_key() -> None:
    """With ordering="key" another key of the same partition is deliverable (G2)."""
    k1, k2 = _two_keys_one_partition(2)
    model = OrderedModel(2, max_in_flight=2)
    model.open("c")
    r1 = model.send(k1, b"1")
    model.send(k1, b"2")
    r3 = model.send(k2, b"3")
    model.deliver(
        "c", key=k1, partition=r1.partition, offset=1, payload=b"1", headers={}, delivery_count=1
    )
    assert [(m.key, m.offset) for m in model.deliverable()] == [(k2, r3.offset)]
    strict = OrderedModel(2, ordering="partition")
    strict.open("c")
    strict.send(k1, b"1")
    strict.send(k2, b"2")
    strict.deliver(
        "c", key=k1, partition=r1.partition, offset=1, payload=b"1", headers={}, delivery_count=1
    )
    assert strict.deliverable() == []


def test_ordered_model_redelivers_after_crash_and_refuses_acked() -> None:
    """A crash makes held messages deliverable again with delivery_count + 1; acked never."""
    model = OrderedModel(1, max_deliveries=2)
    model.open("a")
    model.send("k", b"1")
    model.send("k", b"2")
    model.deliver("a", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=1)
    model.crash("a")
    model.open("b")
    with pytest.raises(ModelViolation, match="delivery_count"):
        model.deliver(
            "b", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=1
        )
    model.deliver("b", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=2)
    model.ack("b", 0, 1)
    assert model.settled_prefix(0) == 1
    with pytest.raises(ModelViolation, match="G3"):
        model.deliver(
            "b", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=3
        )


def test_ordered_model_dead_letters_after_max_deliveries() -> None:
    """A nack of a message delivered max_deliveries times dead-letters it; the key moves on."""
    model = OrderedModel(1, max_deliveries=2)
    model.open("c")
    model.send("k", b"1")
    model.send("k", b"2")
    for count in (1, 2):
        model.deliver(
            "c", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=count
        )
        dead = model.nack("c", 0, 1)
    assert dead
    assert model.dead_letters(certain=True) == {(0, 1)}
    assert [m.offset for m in model.deliverable()] == [2]


def test_ordered_model_enforces_nack_delay() -> None:
    """A nacked message is not deliverable before its delay and must be afterwards."""
    model = OrderedModel(1, now=100.0)
    model.open("c")
    model.send("k", b"1")
    model.deliver("c", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=1)
    model.nack("c", 0, 1, delay=2.0)
    assert model.deliverable() == []
    with pytest.raises(ModelViolation, match="nack"):
        model.deliver(
            "c", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=2
        )
    model.advance(3.0)
    assert model.must_deliver()


def test_ordered_model_expires_messages_past_their_deadline() -> None:
    """A message nobody held by its deadline is never deliverable and its key's next one is;
    one held in time stays deliverable until settled."""
    model = OrderedModel(1, now=100.0)
    model.open("c")
    model.send("k", b"1", expires_in=2.0)
    model.send("k", b"2")
    model.advance(2.0)
    assert [m.payload for m in model.deliverable()] == [b"2"]
    assert model.expired(0) == 1
    with pytest.raises(ModelViolation, match="deadline"):
        model.deliver(
            "c", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=1
        )
    model.send("k", b"3", expires_in=5.0)
    model.deliver("c", key="k", partition=0, offset=2, payload=b"2", headers={}, delivery_count=1)
    model.ack("c", 0, 2)
    model.deliver("c", key="k", partition=0, offset=3, payload=b"3", headers={}, delivery_count=1)
    model.advance(1.0)  # held in time: the consumer settles it as it likes
    model.nack("c", 0, 3, delay=5.0)  # its retry would come after its deadline: expired
    assert model.deliverable() == []
    assert model.expired(0) == 2


def test_lite_model_resumes_at_committed_after_takeover() -> None:
    """Takeover revokes the old channel and the new one resumes after the committed offset."""
    model = LiteModel(["s"], ttl=10.0, max_len=5)
    first = model.subscribe("a", "s")
    for expected in (1, 2, 3):
        assert model.publish("s") == (expected, 1)
        model.deliver(first.channel, "s", offset=expected, epoch=1, gap_before=0)
    assert model.ack(first.channel, "s", 1, 1)
    second = model.subscribe("b", "s")
    assert second.revoked == first.channel
    assert model.ended[first.channel] == "REVOKED"
    assert not model.ack(first.channel, "s", 2, 1)  # fenced
    assert model.topics["s"].cursor == 2
    with pytest.raises(ModelViolation, match="G7"):
        model.deliver(first.channel, "s", offset=2, epoch=1, gap_before=0)
    model.deliver(second.channel, "s", offset=2, epoch=1, gap_before=0)
    assert model.subscribe("b", "s").same


def test_lite_model_requires_visible_gaps() -> None:
    """A subscriber that fell behind max_len must be told exactly how many it missed (G9)."""
    model = LiteModel(["s"], ttl=10.0, max_len=3)
    channel = model.subscribe("a", "s").channel
    for _ in range(5):
        model.publish("s")
    with pytest.raises(ModelViolation, match="G9"):
        model.deliver(channel, "s", offset=3, epoch=1, gap_before=0)
    with pytest.raises(ModelViolation, match="G9"):
        model.deliver(channel, "s", offset=4, epoch=1, gap_before=3)  # skipped retained 3
    model.deliver(channel, "s", offset=3, epoch=1, gap_before=2)
    assert model.ack(channel, "s", 3, 1)
    assert model.topics["s"].committed == 3


def test_lite_model_expires_with_a_new_epoch() -> None:
    """After ttl without publish a lite topic is gone; the next publish is offset 1 of epoch 2."""
    model = LiteModel(["s", "t"], ttl=10.0, max_len=3)
    channel = model.subscribe("a", "s").channel
    model.publish("s")
    model.publish("t")
    assert model.advance(5.0) == []
    model.publish("t")
    assert model.advance(6.0) == [channel]
    assert model.ended[channel] == "EXPIRED"
    assert model.live_topics() == 1
    assert model.publish("s") == (1, 2)
    assert model.publish("t") == (3, 1)


def test_lite_model_explicit_start_repositions_the_group() -> None:
    """start="latest" skips what was published and moves the committed offset there."""
    model = LiteModel(["s"], ttl=10.0, max_len=5)
    model.publish("s")
    model.publish("s")
    outcome = model.subscribe("a", "s", "latest")
    assert model.topics["s"].cursor == 3
    assert model.topics["s"].committed == 2
    assert model.lagging() == []
    model.publish("s")
    assert model.lagging() == [model.topics["s"]]
    model.deliver(outcome.channel, "s", offset=3, epoch=1, gap_before=0)
    assert model.backlogs("s") == {1}


def test_ordered_model_lets_a_new_owner_skip_a_nack_delay() -> None:
    """A nack delay binds the consumer that nacked; the partition's next owner may deliver early."""
    model = OrderedModel(1, now=100.0)
    model.open("a")
    model.send("k", b"1")
    model.deliver("a", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=1)
    model.open("b")
    model.nack("a", 0, 1, delay=2.0)
    model.deliver("b", key="k", partition=0, offset=1, payload=b"1", headers={}, delivery_count=2)
