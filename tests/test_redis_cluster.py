"""litechan against a real Redis Cluster that the tests start themselves (3 primaries, 3 replicas).

A cluster node serves only its own hash slots and answers ``MOVED`` for the others, while a
lite-topic parent's partitions are spread over every slot: the ``redis://`` backend must refuse
a cluster node when it connects, in words, instead of failing later with a server error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
import structlog.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from redis_support import RedisCluster, RedisServer, fresh_namespace
from test_voice_agent import FAST_USERS, run_example

import litechan
from litechan._backends.redis._lite import partition_of
from litechan._backends.redis._slots import key_slot, partition_tags
from litechan.testing import CHECKS, BackendFactory, redis_backend
from litechan.testing.model import make_state_machine

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

CLUSTER_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One private 6-node cluster for the module (making one takes several seconds)."""
    with RedisCluster(primaries=3, replicas=1) as made:
        yield made


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "one database"),
        ("redis+cluster://127.0.0.1:7000/?db=2", "database"),
        ("redis+cluster://127.0.0.1:7000,/", "host:port"),
        ("redis+cluster://127.0.0.1:port/", "port"),
        ("redis+cluster://127.0.0.1:7000/?nosuch=1", "unknown option 'nosuch'"),
        ("redis+cluster://127.0.0.1:7000/?ssl_ca_certs=/x", "rediss://"),
    ],
)
def test_bad_cluster_urls_are_rejected_at_connect(url: str, complaint: str) -> None:
    """A cluster URL with a database, an empty or bad node, or a bad option raises
    InvalidArgument at connect(), before any I/O."""
    with pytest.raises(litechan.InvalidArgument, match=complaint):
        litechan.connect(url)


def test_a_cluster_url_names_every_node_and_keeps_the_password_hidden() -> None:
    """Every host:port of a cluster URL is a seed with the URL's credentials and options; the
    password appears in no repr."""
    from urllib.parse import urlsplit

    from litechan._backends.redis._options import parse_url

    url = "rediss+cluster://gw:s3cret@10.0.0.1:7000,10.0.0.2:7001/?namespace=voice&retry=2"
    options = parse_url(urlsplit(url + "&ssl_cert_reqs=none"))
    assert [(e.host, e.port) for e in options.seeds] == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert {(e.username, e.password, e.tls is not None) for e in options.seeds} == {
        ("gw", "s3cret", True)
    }
    assert (options.namespace, options.retry) == ("voice", 2.0)
    assert "s3cret" not in repr(options)
    assert "s3cret" not in repr(litechan.connect(url + "&ssl_cert_reqs=none"))


@asyncio_only
async def test_a_cluster_url_to_a_standalone_server_is_refused(redis_server: RedisServer) -> None:
    """redis+cluster:// to a server without cluster mode raises InvalidArgument naming redis://."""
    url = f"redis+cluster://{redis_server.host}:{redis_server.port}/?namespace=x"
    with anyio.fail_after(20), pytest.raises(litechan.InvalidArgument, match="redis://"):
        async with litechan.connect(url):
            pass


def test_the_cluster_is_what_the_tests_ask_for(cluster: RedisCluster) -> None:
    """The harness makes 3 primaries, each with a replica in sync, every slot served."""
    assert len(cluster.primary_nodes()) == 3
    assert len(cluster.nodes) == 6
    with cluster.client(cluster.nodes[0]) as client:
        info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    assert "cluster_state:ok" in text
    assert "cluster_slots_assigned:16384" in text


@asyncio_only
async def test_a_redis_url_to_a_cluster_node_is_refused_when_connecting(
    cluster: RedisCluster,
) -> None:
    """redis:// to a cluster node raises InvalidArgument at connect, naming the node and why,
    and leaves nothing of the namespace on the node."""
    for node in (cluster.primary_nodes()[0], cluster.nodes[-1]):
        namespace = fresh_namespace("cluster")
        url = f"redis://{node.host}:{node.port}/0?namespace={namespace}"
        with anyio.fail_after(20):
            with pytest.raises(litechan.InvalidArgument) as caught:
                async with litechan.connect(url):
                    pass
        message = str(caught.value)
        assert f"{node.host}:{node.port}" in message
        assert "Redis Cluster" in message
        assert "redis+cluster://" in message
        with cluster.client(node) as client:
            assert client.keys(f"*{namespace}*") == []


@asyncio_only
@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
async def test_the_cluster_passes_the_conformance_kit(
    cluster: RedisCluster, check: Callable[[BackendFactory], Awaitable[None]]
) -> None:
    """Every check of the kit holds on a 3-primary cluster, a parent spread over 8 slots."""
    await check(redis_backend(f"redis+cluster://{cluster.seeds}/?lite_partitions=8"))


@pytest.mark.timeout(900)
def test_the_cluster_follows_the_model(cluster: RedisCluster) -> None:
    """Random sequences of every operation keep the cluster backend within the model."""
    machine = make_state_machine(
        redis_backend(f"redis+cluster://{cluster.seeds}/?lite_partitions=4"),
        anyio_backend="asyncio",
    )
    with structlog.testing.capture_logs():
        run_state_machine_as_test(machine, settings=CLUSTER_SETTINGS)


@asyncio_only
@pytest.mark.timeout(120)
async def test_publishers_subscribers_and_consumers_go_on_after_a_primary_is_killed() -> None:
    """SIGKILL a primary under a running broker: once its replica took over, publishes and sends
    succeed (waiting within retry), and the subscriber and the consumer that were running get
    what is published and sent after it, through the new primary."""
    sessions = [f"s{i}" for i in range(24)]
    with RedisCluster(primaries=3, replicas=1) as made:
        url = f"redis+cluster://{made.seeds}/?namespace={fresh_namespace('fo')}"
        url += "&lite_partitions=8&retry=20&lease=2"
        with anyio.fail_after(90):
            async with litechan.connect(url) as broker:
                replies = broker.lite_topics("replies")
                audio = broker.ordered_topic("audio", partitions=4)
                async with (
                    replies.subscriber(group="gw", name="gw-1") as sub,
                    audio.consumer(group="asr", name="w1") as consumer,
                ):
                    for session in sessions:
                        await sub.subscribe(session)
                        await replies.publish(session, b"before")
                        await audio.send(session, b"before")
                    await _take_until(sub, {(s, b"before") for s in sessions})
                    await _take_until(consumer, {(s, b"before") for s in sessions})
                    victim = made.primary_nodes()[0]
                    victim.kill()
                    for session in sessions:
                        await replies.publish(session, b"after")
                        await audio.send(session, b"after")
                    await _take_until(sub, {(s, b"after") for s in sessions})
                    await _take_until(consumer, {(s, b"after") for s in sessions})
        assert not victim.running
        assert len(made.primary_nodes()) == 3  # the victim's replica took over


async def _take_until(
    view: litechan.Subscriber | litechan.Consumer, wanted: set[tuple[str, bytes]]
) -> None:
    """Read *view*, acking, until every (session, payload) of *wanted* was delivered (other
    messages, such as redeliveries of earlier ones, may come between)."""
    missing = set(wanted)
    async for message in view:
        key = message.lite_topic if isinstance(message, litechan.LiteMessage) else message.key
        missing.discard((key, message.payload))
        await message.ack()
        if not missing:
            return


@pytest.mark.timeout(240)
def test_the_voice_agent_on_the_cluster_survives_a_killed_gateway_and_worker(
    tmp_path: Path, cluster: RedisCluster
) -> None:
    """The voice agent with --backend redis+cluster:// and --chaos (a gateway and a worker
    SIGKILLed mid-run) ends with nothing lost, misrouted or out of order."""
    report, printed = run_example(
        tmp_path,
        "--backend",
        f"redis+cluster://{cluster.seeds}/?lite_partitions=8",
        "--chaos",
        "--sessions",
        "16",
        "--turns",
        "4",
        *FAST_USERS,
        timeout=210,
    )
    tally = report["tally"]
    assert len(report["chaos"]) == 2
    assert tally["turns_done"] == tally["turns_expected"] == 64
    assert (tally["lost"], tally["misrouted"], tally["out_of_order"], tally["corrupt"]) == (
        0,
        0,
        0,
        0,
    )
    assert "OK: nothing lost, misrouted or out of order" in printed


def _migrate_slot(cluster: RedisCluster, slot: int) -> None:
    """Move *slot* to another primary the way ``redis-cli --cluster reshard`` does: IMPORTING
    and MIGRATING, MIGRATE of its keys two at a time (calls meanwhile get ASK), then the new
    owner announced to every primary (MOVED from then on)."""
    primaries = cluster.primary_nodes()
    with cluster.client(primaries[0]) as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
    owner = next(node for node in primaries if node.port == port)
    target = next(node for node in primaries if node is not owner)
    with cluster.client(owner) as source, cluster.client(target) as destination:
        source_id = source.execute_command("CLUSTER", "MYID").decode()
        target_id = destination.execute_command("CLUSTER", "MYID").decode()
        destination.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2):
            source.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        for node in primaries:
            with cluster.client(node) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


@asyncio_only
@pytest.mark.timeout(120)
async def test_a_slot_migrated_under_traffic_loses_nothing_and_keeps_order(
    cluster: RedisCluster,
) -> None:
    """Moving the slot of a session's lite topic to another primary while it is published to
    and read: every message arrives, in order, without waiting for the topic's TTL (its notes
    follow the slot), and publishes go on through ASK and MOVED."""
    namespace = fresh_namespace("mig")
    url = f"redis+cluster://{cluster.seeds}/?namespace={namespace}&lite_partitions=8&retry=20"
    session = "s-migrating"
    tags = partition_tags(f"{namespace}:l:replies", 8)
    slot = key_slot(tags[partition_of(session, 8)])
    published: list[bytes] = []
    with anyio.fail_after(60):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies", ttl=3600)
            async with replies.subscriber(group="gw", name="gw-1") as sub:
                channel = await sub.subscribe(session)
                migrated = anyio.Event()

                async def publish_until_migrated() -> None:
                    while not migrated.is_set() or len(published) < 50:
                        payload = str(len(published)).encode()
                        await replies.publish(session, payload)
                        published.append(payload)
                    await replies.publish(session, b"end")
                    published.append(b"end")

                async def migrate() -> None:
                    await anyio.to_thread.run_sync(_migrate_slot, cluster, slot)
                    migrated.set()

                got: list[bytes] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish_until_migrated)
                    tg.start_soon(migrate)
                    async for message in channel:
                        got.append(message.payload)
                        await message.ack()
                        if message.payload == b"end":
                            break
                assert got == published
                assert await replies.publish(session, b"last") == len(published) + 1


def _primary_and_replica(cluster: RedisCluster, slot: int) -> tuple[RedisServer, RedisServer]:
    """The primary serving *slot* now and its replica."""
    with cluster.client(cluster.primary_nodes()[0]) as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
    primary = next(node for node in cluster.nodes if node.port == port)
    for node in cluster.nodes:
        with cluster.client(node) as client:
            role = client.execute_command("ROLE")
        if role[0] == b"slave" and int(role[2]) == port:
            return primary, node
    raise AssertionError(f"no replica of the primary on port {port}")


@asyncio_only
@pytest.mark.timeout(120)
async def test_with_replicas_an_acked_publish_survives_its_primary() -> None:
    """?replicas=1: a publish returns once a replica has it; with that replica paused it
    raises BrokerUnavailable within replicas_wait instead; after the primary is SIGKILLed, the
    replica that takes over holds every publish that returned, in order."""
    namespace = fresh_namespace("durable")
    session = "s-durable"
    with RedisCluster(primaries=3, replicas=1) as made:
        url = f"redis+cluster://{made.seeds}/?namespace={namespace}&lite_partitions=8"
        url += "&replicas=1&replicas_wait=0.5&retry=20"
        slot = key_slot(partition_tags(f"{namespace}:l:replies", 8)[partition_of(session, 8)])
        primary, replica = _primary_and_replica(made, slot)
        with anyio.fail_after(90):
            async with litechan.connect(url) as broker:
                replies = broker.lite_topics("replies", ttl=3600)
                await replies.publish(session, b"warm")
                replica.pause()
                try:
                    with pytest.raises(litechan.BrokerUnavailable, match="replicas"):
                        await replies.publish(session, b"unreplicated")
                finally:
                    replica.resume()
                made.wait_ok()
                durable = [f"d{i}".encode() for i in range(20)]
                for payload in durable:
                    await replies.publish(session, payload)
                primary.kill()
                async with replies.subscriber(group="gw", name="gw-1") as sub:
                    channel = await sub.subscribe(session, start="earliest")
                    got: list[bytes] = []
                    async for message in channel:
                        got.append(message.payload)
                        if message.payload == durable[-1]:
                            break
        assert [payload for payload in got if payload in durable] == durable
