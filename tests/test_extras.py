"""litechan without its optional extras: what works, and what a missing one says."""

from __future__ import annotations

import subprocess
import sys

_WITHOUT_HIREDIS = """
import sys
sys.modules["hiredis"] = None  # import hiredis now fails, as without the redis extra
import anyio
import litechan

async def main():
    async with litechan.connect("memory://") as broker:
        replies = broker.lite_topics("replies")
        assert await replies.publish("s1", b"x") == 1
    try:
        litechan.connect("redis://127.0.0.1:6379/0")
    except litechan.UnknownBackend as exc:
        print(exc)

anyio.run(main)
"""


def test_a_redis_url_without_the_extra_says_what_to_install() -> None:
    """Without hiredis, memory:// works and connect("redis://...") raises UnknownBackend
    naming the extra to install, not a bare ModuleNotFoundError."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_HIREDIS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "redis:// URLs need the 'redis' extra" in done.stdout
    assert 'pip install "litechan[redis]"' in done.stdout
