"""The model stages of a voice agent, as Protocols, and simulated stages that stand in for them.

A worker runs, for each turn of a session, a streaming pipeline::

    frames --> ASR --partials, transcript--> LLM --tokens--> TTS --20 ms audio frames-->

Any object with the methods below plugs in: a real streaming ASR client, an LLM SDK's streaming
call, a TTS engine. The simulated ones sleep for latencies drawn from configurable
distributions, and are deterministic for a given (session, turn): a turn that a second worker
answers again after a crash produces the same replies, which the user recognises as repeats.
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import attrs

from .audio import voice_bank
from .wire import FRAME_SECONDS, PARTIAL_EVERY, Frame

# -- the Protocols ---------------------------------------------------------------------------


class Transcription(Protocol):
    """The ASR of one utterance, fed frame by frame."""

    async def feed(self, frame: Frame) -> str | None:
        """Take one frame; return a partial transcript when the recogniser has a new one."""
        ...

    async def finish(self) -> str:
        """The end of speech was reached: return the final transcript."""
        ...


class ASR(Protocol):
    def open(self, session: str, turn: int, first_seq: int) -> Transcription:
        """Start recognising *session*'s utterance *turn*, whose next frame is *first_seq*.

        *first_seq* is above 0 when a worker takes over an utterance that another one started.
        """
        ...


class LLM(Protocol):
    def complete(self, session: str, turn: int, transcript: str) -> AsyncIterator[str]:
        """Stream the answer to *transcript*, one text token at a time."""
        ...


class TTS(Protocol):
    def synthesize(
        self, session: str, turn: int, tokens: AsyncIterator[str]
    ) -> AsyncIterator[bytes]:
        """Stream speech for *tokens* as they come, in 20 ms frames of 16 kHz 16-bit mono PCM."""
        ...


@attrs.frozen
class Stages:
    asr: ASR
    llm: LLM
    tts: TTS


# -- latency distributions -------------------------------------------------------------------

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@attrs.frozen
class Latency:
    """A log-normal latency given by its median and 99th percentile, in seconds.

    Log-normal is the usual shape of model latencies: most calls near the median, and a long
    tail of slow ones.
    """

    median: float = attrs.field(validator=attrs.validators.gt(0.0))
    p99: float = attrs.field()

    @p99.validator
    def _check_p99(self, _attribute: object, value: float) -> None:
        if value < self.median:
            raise ValueError(f"p99 ({value}) must be at least the median ({self.median})")

    @classmethod
    def parse(cls, text: str) -> Latency:
        """Parse ``"MEDIAN,P99"`` in milliseconds, e.g. ``"350,2500"``."""
        try:
            median, p99 = (float(part) / 1e3 for part in text.split(","))
            return cls(median, p99)
        except ValueError as exc:
            raise ValueError(f"expected MEDIAN,P99 in milliseconds, got {text!r}: {exc}") from None

    def sample(self, rng: random.Random) -> float:
        sigma = math.log(self.p99 / self.median) / _Z99
        return self.median * math.exp(sigma * rng.gauss(0.0, 1.0))

    def __str__(self) -> str:
        return f"median {self.median * 1e3:.0f} ms, p99 {self.p99 * 1e3:.0f} ms"


@attrs.frozen
class Profile:
    """How the simulated users talk and how the simulated models answer."""

    utterance: tuple[int, int] = (30, 70)  # frames of user speech per turn: 0.6 to 1.4 s
    think: tuple[float, float] = (1.0, 3.0)  # seconds between the end of a reply and the next turn
    asr_final: Latency = Latency(0.060, 0.200)  # end of speech -> final transcript
    llm_first_token: Latency = Latency(0.350, 2.500)  # transcript -> first token: a long tail
    llm_token: float = 0.030  # seconds between later tokens
    reply_tokens: tuple[int, int] = (6, 14)
    tts_first_frame: Latency = Latency(0.080, 0.250)  # first token -> first audio frame
    tts_frames_per_token: int = 8  # 160 ms of speech per token
    tts_realtime_factor: float = 0.2  # synthesis time / audio time: 5x faster than real time


def turn_rng(session: str, turn: int, stage: str) -> random.Random:
    """A random generator that depends only on (*session*, *turn*, *stage*)."""
    digest = hashlib.blake2b(f"{session}/{turn}/{stage}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


WORDS = (
    "sure",
    "let",
    "me",
    "check",
    "that",
    "for",
    "you",
    "your",
    "order",
    "ships",
    "tomorrow",
    "morning",
    "anything",
    "else",
    "today",
    "thanks",
)

# -- simulated stages ------------------------------------------------------------------------


@attrs.define
class SimulatedTranscription:
    session: str
    turn: int
    profile: Profile
    frames: int = 0

    async def feed(self, frame: Frame) -> str | None:
        self.frames = frame.seq + 1
        if frame.seq % PARTIAL_EVERY == PARTIAL_EVERY - 1:
            return self._text(frame.seq // PARTIAL_EVERY + 1)
        return None

    async def finish(self) -> str:
        await anyio.sleep(self.profile.asr_final.sample(turn_rng(self.session, self.turn, "asr")))
        return self._text(max(1, self.frames // PARTIAL_EVERY))

    def _text(self, words: int) -> str:
        return " ".join(f"word{i}" for i in range(words))


@attrs.frozen
class SimulatedASR:
    """Partials every ``PARTIAL_EVERY`` frames; the final transcript after ``asr_final``."""

    profile: Profile

    def open(self, session: str, turn: int, first_seq: int) -> SimulatedTranscription:
        return SimulatedTranscription(session, turn, self.profile, first_seq)


@attrs.frozen
class SimulatedLLM:
    """First token after ``llm_first_token``, then one every ``llm_token`` seconds."""

    profile: Profile

    async def complete(self, session: str, turn: int, transcript: str) -> AsyncIterator[str]:
        rng = turn_rng(session, turn, "llm")
        first = self.profile.llm_first_token.sample(rng)
        count = rng.randint(*self.profile.reply_tokens)
        await anyio.sleep(first)
        for i in range(count):
            if i:
                await anyio.sleep(self.profile.llm_token)
            yield rng.choice(WORDS) + " "


@attrs.frozen
class SimulatedTTS:
    """Speech ``tts_first_frame`` after the first token, then faster than real time."""

    profile: Profile
    chunk: int = 5  # frames made per wake-up (100 ms of speech)

    async def synthesize(
        self, session: str, turn: int, tokens: AsyncIterator[str]
    ) -> AsyncIterator[bytes]:
        rng = turn_rng(session, turn, "tts")
        bank = voice_bank(2 + zlib.crc32(session.encode()) % 2)
        frame_time = FRAME_SECONDS * self.profile.tts_realtime_factor
        made = 0
        first = True
        async for _token in tokens:
            if first:
                await anyio.sleep(self.profile.tts_first_frame.sample(rng))
                first = False
            for i in range(self.profile.tts_frames_per_token):
                if i and i % self.chunk == 0:
                    await anyio.sleep(frame_time * self.chunk)
                yield bank[made % len(bank)]
                made += 1


def simulated(profile: Profile) -> Stages:
    """The default stages: ASR, LLM and TTS simulated with *profile*'s latencies."""
    return Stages(SimulatedASR(profile), SimulatedLLM(profile), SimulatedTTS(profile))
