"""Generated speech-like audio: 16 kHz, 16-bit signed little-endian mono PCM, in 20 ms frames.

Each voice is a glottal pulse train at its own pitch shaped by two vowel formants, with a
syllable-rate loudness envelope. Two seconds of each voice are synthesised once, so streaming a
frame costs a slice, not a synthesis.
"""

from __future__ import annotations

import functools
import math
from array import array
from typing import Final

from .wire import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE

BANK_FRAMES: Final = 100  # two seconds of audio per voice
VOICES: Final = (110.0, 145.0, 196.0, 233.0)  # pitch of each voice, Hz


@functools.cache
def voice_bank(voice: int) -> tuple[bytes, ...]:
    """Two seconds of *voice* (an index into ``VOICES``) as 100 frames of 640 bytes."""
    f0 = VOICES[voice % len(VOICES)]
    formants = ((700.0, 0.6), (1_200.0, 0.3))
    samples = array("h")
    for n in range(BANK_FRAMES * FRAME_SAMPLES):
        t = n / SAMPLE_RATE
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 4.0 * t)  # about four syllables a second
        value = sum(
            weight * math.sin(2 * math.pi * k * f0 * t) / k
            for k in range(1, 12)
            for formant, weight in formants
            if abs(k * f0 - formant) < 400.0
        )
        value += 0.2 * math.sin(2 * math.pi * f0 * t)
        samples.append(int(max(-1.0, min(1.0, value * envelope)) * 12_000))
    if samples.itemsize != 2:  # pragma: no cover - array("h") is 16-bit on every CPython platform
        raise RuntimeError("array('h') is not 16-bit here")
    if array("h", [1]).tobytes() != b"\x01\x00":  # the wire format is little-endian
        samples.byteswap()
    data = samples.tobytes()
    return tuple(data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES))


def utterance(voice: int, turn: int, frames: int) -> list[bytes]:
    """*frames* consecutive 20 ms frames of *voice*, starting at a place that depends on *turn*."""
    bank = voice_bank(voice)
    start = (turn * 37) % len(bank)
    return [bank[(start + i) % len(bank)] for i in range(frames)]


def is_pcm_frame(data: bytes) -> bool:
    """Whether *data* has the size of one 20 ms frame and is not silence."""
    return len(data) == FRAME_BYTES and any(data)
