"""Backpressure on Redis: a broker holds at most ``max_pending`` publishes and sends
unanswered; one more waits ``pending_wait`` for room and is then shed with Overloaded, and
nothing already accepted is lost. The server is made slow by a proxy that holds its replies."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from fault_proxy import FaultProxy
from redis_support import RedisServer, delete_namespace, fresh_namespace, litechan_url

import litechan

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

MAX_PENDING = 6
PENDING_WAIT = 0.2
HELD = 2.0  # how long the proxy holds each reply


@pytest.fixture
def slow_url(redis_server: RedisServer) -> Iterator[tuple[str, FaultProxy]]:
    """A litechan URL through a fault proxy, with a small max_pending and pending_wait."""
    namespace = fresh_namespace("overload")
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        url = litechan_url(
            proxy.url,
            namespace=namespace,
            max_pending=MAX_PENDING,
            pending_wait=PENDING_WAIT,
            socket_timeout=20,
            retry=20,
        )
        yield url, proxy
    delete_namespace(redis_server.url, namespace)


async def test_past_max_pending_a_publish_or_send_is_shed_and_nothing_accepted_is_lost(
    slow_url: tuple[str, FaultProxy],
) -> None:
    """With max_pending publishes and sends unanswered, one more of either raises Overloaded
    after pending_wait (long before the replies come); every accepted one then completes, and
    the shed ones stored nothing."""
    url, proxy = slow_url
    done: dict[str, object] = {}
    with anyio.fail_after(30):
        async with litechan.connect(url) as broker:
            replies = broker.lite_topics("replies")
            audio = broker.ordered_topic("audio", partitions=2)
            await replies.publish("warm", b"w")  # declarations checked: only data calls wait
            await audio.send("warm", b"w")
            client = broker._backend.client  # type: ignore[attr-defined]
            proxy.delay(HELD)

            async def publish(i: int) -> None:
                done[f"publish s{i}"] = await replies.publish(f"s{i}", b"x")

            async def send(i: int) -> None:
                done[f"send k{i}"] = (await audio.send(f"k{i}", b"y")).offset

            async with anyio.create_task_group() as tg:
                for i in range(MAX_PENDING // 2):
                    tg.start_soon(publish, i)
                    tg.start_soon(send, i)
                await anyio.wait_all_tasks_blocked()  # each waits for its reply now
                assert client.pending == MAX_PENDING
                started = anyio.current_time()
                with pytest.raises(litechan.Overloaded, match=f"max_pending={MAX_PENDING}"):
                    await replies.publish("shed", b"z")
                with pytest.raises(litechan.Overloaded, match="pending_wait"):
                    await audio.send("shed", b"z")
                assert anyio.current_time() - started < HELD  # shed before any reply came
            publishes = {k: v for k, v in done.items() if k.startswith("publish")}
            sends = {k: v for k, v in done.items() if k.startswith("send")}
            assert publishes == {f"publish s{i}": 1 for i in range(3)}  # a new topic each
            assert len(sends) == 3
            assert all(isinstance(v, int) and v >= 1 for v in sends.values())
            assert client.pending == 0
            proxy.delay(0)
            assert await replies.publish("shed", b"z") == 1  # the shed publish stored nothing
            assert (await audio.stats()).length == 4  # warm and the 3 accepted: no shed one
