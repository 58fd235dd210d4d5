"""Where litechan's log events go: nowhere until the application configures logging, then to
the stdlib logger ``litechan`` or to the application's structlog, with the same fields on every
backend."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest
from structlog.testing import capture_logs

import litechan

pytestmark = pytest.mark.anyio

# Two subscribers of one group take the same lite topic: the first one's loss is logged
# (litechan.lite.revoked, info). SETUP is run before the takeover, in a fresh interpreter.
_TAKEOVER = """
import sys
import anyio
import litechan
{setup}

async def main():
    async with litechan.connect("memory://") as broker:
        replies = broker.lite_topics("replies")
        async with replies.subscriber(group="gw", name="gw-1") as one, \\
                replies.subscriber(group="gw", name="gw-2") as two:
            await one.subscribe("s1")
            await two.subscribe("s1")

anyio.run(main)
"""


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    code = _TAKEOVER.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_nothing_is_printed_until_logging_is_configured() -> None:
    """With neither logging nor structlog configured, an info event prints nothing at all."""
    done = _run("")
    assert (done.stdout, done.stderr) == ("", "")


def test_events_reach_the_stdlib_logger_once_logging_is_configured() -> None:
    """With logging configured, the event is a record of logger 'litechan' at its level, its
    message the event name and fields, and record.event / record.fields hold them apart."""
    setup = """
import json, logging
class Collect(logging.Handler):
    def emit(self, record):
        print(json.dumps([record.name, record.levelname, record.getMessage(),
                          record.event, record.fields]))
logging.getLogger("litechan").addHandler(Collect())
logging.getLogger("litechan").setLevel(logging.DEBUG)
"""
    records = [json.loads(line) for line in _run(setup).stdout.splitlines()]
    revoked = [r for r in records if r[3] == "litechan.lite.revoked"]
    fields = {"parent": "replies", "lite_topic": "s1", "group": "gw", "subscriber": "gw-1"}
    assert revoked == [
        [
            "litechan",
            "INFO",
            "litechan.lite.revoked parent='replies' lite_topic='s1' group='gw' subscriber='gw-1'",
            "litechan.lite.revoked",
            fields,
        ]
    ]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_revoked_carries_the_same_fields_on_every_backend(redis_url: str) -> None:
    """litechan.lite.revoked names the parent, topic, group and the subscriber that lost the
    topic, on the memory backend and on Redis alike."""
    seen: dict[str, list[dict[str, object]]] = {}
    for url in ("memory://revoked-fields", redis_url):
        with anyio.fail_after(20), capture_logs() as logs:
            async with litechan.connect(url) as a, litechan.connect(url) as b:
                ra, rb = a.lite_topics("replies"), b.lite_topics("replies")
                async with (
                    ra.subscriber(group="gw", name="gw-1") as one,
                    rb.subscriber(group="gw", name="gw-2") as two,
                ):
                    channel = await one.subscribe("s1")
                    await two.subscribe("s1")
                    with anyio.fail_after(10):
                        async for _ in channel:  # ends when the loss reaches gw-1
                            pass
        seen[url.split(":")[0]] = [e for e in logs if e["event"] == "litechan.lite.revoked"]
    expected = {
        "event": "litechan.lite.revoked",
        "log_level": "info",
        "parent": "replies",
        "lite_topic": "s1",
        "group": "gw",
        "subscriber": "gw-1",
    }
    assert seen == {"memory": [expected], "redis": [expected]}
