"""The figures of a run and its verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import attrs
import msgspec

import litechan

from .users import Tally
from .wire import WORKERS


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values* by the nearest-rank method; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Backlog(msgspec.Struct, kw_only=True):
    """The largest backlogs seen while the run went on."""

    replies: int = 0  # un-confirmed replies of one session's lite topic
    replies_topic: str = ""
    replies_owner: str = ""
    replies_total: int = 0  # over every lite topic at once
    # frames of the ordered topic past each partition's committed offset, summed: a turn holds
    # its last frame until its reply is out, so this counts the frames acked after it too
    audio: int = 0


@attrs.define(eq=False)
class Monitor:
    """Samples the topics' stats, as an operator's dashboard would, and keeps the maxima."""

    audio: litechan.OrderedTopic
    replies: litechan.LiteTopics
    interval: float = 0.25
    backlog: Backlog = attrs.Factory(Backlog)

    async def run(self) -> None:
        while True:
            await self.sample()
            await anyio.sleep(self.interval)

    async def sample(self) -> None:
        lite = await self.replies.stats(top=1)
        if lite.top and lite.top[0].backlog > self.backlog.replies:
            top = lite.top[0]
            self.backlog.replies = top.backlog
            self.backlog.replies_topic = top.lite_topic
            self.backlog.replies_owner = top.owner or "(none)"
        self.backlog.replies_total = max(self.backlog.replies_total, lite.backlog)
        audio = await self.audio.stats()
        self.backlog.audio = max(self.backlog.audio, audio.lag(WORKERS))


class Report(msgspec.Struct, kw_only=True):
    backend: str
    layout: str  # where gateways, workers and users ran
    elapsed: float
    tally: Tally
    backlog: Backlog
    gateways: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    workers: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    chaos: list[str] = msgspec.field(default_factory=list)

    @property
    def overhead(self) -> list[float]:
        return [f - m for f, m in zip(self.tally.first_audio, self.tally.model, strict=True)]

    def problems(self) -> list[str]:
        t = self.tally
        found = [
            f"{count} {what}"
            for count, what in (
                (t.lost, "replies lost"),
                (t.turns_lost, "turns without a complete reply"),
                (t.misrouted, "replies misrouted"),
                (t.out_of_order, "replies out of order"),
                (t.corrupt, "replies corrupt"),
                (t.stale_sockets, "sockets left open after their session moved"),
                (t.unexpected_takeovers, "sockets taken over without a reason"),
            )
            if count
        ]
        if t.turns_done + t.turns_lost < t.turns_expected:
            found.append(f"{t.turns_expected - t.turns_done - t.turns_lost} turns never ran")
        return found

    def render(self) -> str:
        t = self.tally

        def ms(values: Sequence[float]) -> str:
            return "   ".join(f"p{q} {percentile(values, q) * 1e3:>7,.1f} ms" for q in (50, 95, 99))

        b = self.backlog
        lines = [
            f"voice agent on {self.backend}: {self.layout}",
            f"sessions:            {t.sessions:,}, {t.turns_expected:,} turns"
            f" ({t.turns_done:,} answered) in {self.elapsed:.1f} s",
            f"time to first audio: {ms(t.first_audio)}   (end of speech -> first reply audio)",
            f"time to full reply:  {ms(t.full_reply)}",
            f"model time:          {ms(t.model)}   (ASR + LLM + TTS, simulated)",
            f"link overhead:       {ms(self.overhead)}   (first audio - model time)",
            f"frames:              {t.frames_sent:,} audio frames sent, {t.replies:,} replies"
            " received",
            f"lost:                {t.lost}",
            f"misrouted:           {t.misrouted}",
            f"duplicates:          {t.duplicates}   (redelivered after a takeover, dropped)",
            f"out of order:        {t.out_of_order}",
            f"max backlog:         {b.replies} replies in one session"
            + (f" ({b.replies_topic}, owner {b.replies_owner})" if b.replies_topic else "")
            + f", {b.replies_total} over all sessions; audio lag {b.audio} frames",
            f"reconnects:          {t.reconnects}   roams: {t.roams}"
            f" ({t.roams_closed} old sockets closed by their gateway)",
        ]
        lines += [f"chaos:               {event}" for event in self.chaos]
        problems = self.problems()
        if problems:
            lines.append("FAILED: " + "; ".join(problems))
        else:
            lines.append("OK: nothing lost, misrouted or out of order")
        return "\n".join(lines)
