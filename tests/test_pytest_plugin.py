"""litechan's pytest plugin, as an application's own test suite uses it (run by pytester in a
fresh pytest process, which finds the plugin through its pytest11 entry point)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

_ASYNCIO_ONLY = """
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""
_API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _documented_example() -> str:
    """The example test of docs/api.md's pytest fixtures section."""
    blocks = re.findall(r"```python\n(.*?)```", _API_MD.read_text(), re.S)
    [example] = [block for block in blocks if "def test_reply_reaches_the_gateway" in block]
    return example


_APPLICATION_TESTS = """
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_memory(litechan_broker, litechan_clock):
    replies = litechan_broker.lite_topics("replies")
    async with replies.subscriber(group="gw", name="gw-1") as sub:
        channel = await sub.subscribe("s1")
        litechan_clock.advance(5.0)
        await replies.publish("s1", b"hello")
        msg = await anext(aiter(channel))
        assert (msg.payload, msg.published_at) == (b"hello", 1_700_000_005.0)


async def test_redis(litechan_redis_broker, litechan_redis_url):
    assert "namespace=kit-" in litechan_redis_url
    replies = litechan_redis_broker.lite_topics("replies")
    assert await replies.publish("s1", b"hello") == 1
"""


def test_memory_fixtures_serve_an_applications_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litechan_broker and litechan_clock work in an application's tests (docs/api.md's example
    among them); without LITECHAN_TEST_REDIS_URL the Redis fixtures skip, saying which
    variable to set."""
    monkeypatch.delenv("LITECHAN_TEST_REDIS_URL", raising=False)
    pytester.makepyfile(test_app=_APPLICATION_TESTS, test_documented=_documented_example())
    pytester.makeconftest(
        '@__import__("pytest").fixture\ndef anyio_backend():\n    return "asyncio"\n'
    )
    result = pytester.runpytest_subprocess("-p", "anyio", "-rs", timeout=120)
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*set LITECHAN_TEST_REDIS_URL=*"])


def test_redis_fixtures_use_the_server_named_by_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redis_base_url: str
) -> None:
    """With LITECHAN_TEST_REDIS_URL set, litechan_redis_broker opens a broker on that server in
    a namespace of the test's own."""
    monkeypatch.setenv("LITECHAN_TEST_REDIS_URL", redis_base_url)
    pytester.makepyfile(_APPLICATION_TESTS)
    result = pytester.runpytest_subprocess("-p", "anyio", timeout=120)
    result.assert_outcomes(passed=2)
