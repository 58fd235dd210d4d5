"""A backend that another package registers through the ``litechan.backends`` entry point
(tests/echo_backend, on ``sys.path`` as an installed distribution): found by connect(), listed
among the known schemes, and held to the whole conformance kit through ``url_backend``."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

import litechan
from litechan._backends import _registered, known_schemes
from litechan.testing import CHECKS, Check, url_backend

pytestmark = pytest.mark.anyio

_ECHO = Path(__file__).resolve().parent / "echo_backend"

echo_worlds = url_backend(
    lambda: f"echo://kit-{uuid.uuid4().hex}", manual_clock=True, hold_open=True
)


@pytest.fixture(autouse=True)
def echo_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo package is installed for the test (its dist-info on sys.path)."""
    monkeypatch.syspath_prepend(str(_ECHO))


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
async def test_a_registered_backend_passes_the_kit(check: Check) -> None:
    """The backend found through its entry point meets the guarantee the check verifies."""
    with anyio.fail_after(60):
        await check(echo_worlds)


def test_registered_schemes_are_known_and_cannot_take_litechans_own() -> None:
    """echo:// is a known scheme opening the registered class; the same package's claim on
    redis:// is ignored (litechan's own schemes cannot be taken over)."""
    assert "echo" in known_schemes()
    assert "redis" not in _registered()
    broker = litechan.connect("echo://world")
    assert "echo://world" in repr(broker)
    assert type(broker._backend).__name__ == "EchoBackend"


def test_a_registered_backend_that_fails_to_load_is_named() -> None:
    """A registration whose class cannot be imported raises UnknownBackend naming it."""
    with pytest.raises(litechan.UnknownBackend, match=r"broken:// \(litechan_echo:NoSuch"):
        litechan.connect("broken://x")


def test_an_unknown_scheme_lists_the_registered_ones() -> None:
    """An unknown scheme's error lists litechan's schemes and the registered ones."""
    with pytest.raises(litechan.UnknownBackend, match="echo://") as info:
        litechan.connect("nosuch://x")
    assert "memory://" in str(info.value)
