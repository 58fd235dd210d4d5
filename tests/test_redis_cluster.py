"""litechan against a real Redis Cluster that the tests start themselves (3 primaries, 3 replicas).

A cluster node serves only its own hash slots and answers ``MOVED`` for the others, while a
lite-topic parent's partitions are spread over every slot: the ``redis://`` backend must refuse
a cluster node when it connects, in words, instead of failing later with a server error.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from redis_support import RedisCluster, fresh_namespace

import litechan

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One private 6-node cluster for the module (making one takes several seconds)."""
    with RedisCluster(primaries=3, replicas=1) as made:
        yield made


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
        with cluster.client(node) as client:
            assert client.keys(f"*{namespace}*") == []
