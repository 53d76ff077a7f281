"""`python -m bench --flood [--presses N]`: acknowledgements under a flood of button presses.

Discord gives an interaction 3 s to be acknowledged. Here the real bot, with the
configured model, answers a question; then, while long answers keep the CPU busy
decoding, `N` members press Regenerate on that answer at once. Each press's
acknowledgement latency is the fake's record of the callback minus the moment the
press was delivered; p50, p99 and the maximum are reported, with how many presses
went unanswered within Discord's 3 s and how many were refused, with the CPU each
side spent per press from the flood to its last acknowledgement (the bot's
event-loop thread, and the fake's).

Where the fake runs (`fake_mode` in the JSON):

- `process` (the default): a child process (`bench.flood_fake`) serves the fake on
  127.0.0.1 and runs the whole scenario on its own loop, as Discord is another
  machine: its Python never competes with the bot's for the GIL. Every latency is
  computed there, from the fake's own clock.
- `thread` (`--fake-thread`): a thread and event loop of its own in the bot's
  process; off the bot's loop, but sharing the process's GIL.
- `same-loop` (`--fake-same-loop`): on the bot's loop, where its request handling
  competes with the bot's callbacks and is measured with them.

In every mode the scenario is the same coroutine (`flood_on_fake`) on the fake's
loop, and the bot receives real gateway events and makes real HTTP calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.common import BENCH_PROMPT
from bench.discord_bench import (
    bench_guild,
    fake_options,
    is_final,
    percentile,
    running_app,
    running_world,
)
from bot.app import App
from bot.config import Settings
from bot.discord.client import LlamaBot
from testing.fake_discord import FakeDiscord, FakeInteraction, FakeUser
from testing.fake_discord.process import FakeProcess
from testing.fake_discord.server import build_client, running_client

BUSY_ASKS = 2
BUSY_TOKENS = 512
DISCORD_ACK_DEADLINE_S = 3.0
CHANNELS = 4
USERS = 60
SCENARIO_TIMEOUT_S = 600.0

#: Where the scenario tells the bot's side to read its counters.
CONNECTED, FLOOD, ANSWERED = "connected", "flood", "answered"


def fake_mode(args: argparse.Namespace) -> str:
    if getattr(args, "fake_same_loop", False):
        return "same-loop"
    if getattr(args, "fake_thread", False):
        return "thread"
    return "process"


async def run_flood_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    presses = int(getattr(args, "presses", None) or 1000)
    mode = fake_mode(args)
    if mode == "process":
        return await _flood_with_fake_process(settings, presses)
    # The fake's own schema checks would compete for the GIL; they are not the bot's work.
    async with running_world(settings, CHANNELS, USERS, validate=False,
                             fake_thread=mode == "thread") as world:
        side = BotSide(world.app)
        mark: Callable[[str], Awaitable[None]]
        if mode == "thread":
            bot_loop = asyncio.get_running_loop()

            async def mark(event: str) -> None:  # on the fake's thread: read on the bot's
                async def there() -> None:
                    side.mark(event)

                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), bot_loop))

            fake_clock: Callable[[], float] | None = time.thread_time
        else:
            async def mark(event: str) -> None:
                side.mark(event)

            fake_clock = None  # the fake's work is the bot loop's: counted there
        out = await world.call(flood_on_fake, world.fake, world.users, presses, mark,
                               fake_clock)
        return {**out, "fake_mode": mode, **side.figures(presses)}


async def _flood_with_fake_process(settings: Settings, presses: int) -> dict[str, Any]:
    """The bot here, the fake and the scenario in a child process; its result merged
    with this side's counters. The child is stopped whatever happens (`FakeProcess`)."""
    async with running_app(settings) as app, \
            FakeProcess("bench.flood_fake", "--presses", str(presses)) as remote:
        side = BotSide(app)
        bot = build_client(LlamaBot, app=app)
        async with running_client(bot):
            while True:
                event = await remote.event(timeout=SCENARIO_TIMEOUT_S)
                if event.get("event") == "result":
                    out: dict[str, Any] = event["result"]
                    break
                side.mark(str(event.get("event")))
                await remote.send("ok")
    return {**out, "fake_mode": "process", **side.figures(presses)}


class BotSide:
    """The bot process's counters over the flood, read on the bot's loop at each mark."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._start: tuple[float, float, float, int] | None = None
        self._end: tuple[float, float, float, int] | None = None

    def _read(self) -> tuple[float, float, float, int]:
        cpu = os.times()
        return (time.thread_time(), cpu.user + cpu.system, time.monotonic(),
                self._app.engine.tokens_generated)

    def mark(self, event: str) -> None:
        if event == FLOOD:
            self._start = self._read()
        elif event == ANSWERED:
            self._end = self._read()

    def figures(self, presses: int) -> dict[str, Any]:
        if self._start is None or self._end is None:
            return {}
        loop_cpu, cpu, wall, tokens = (b - a for a, b in zip(self._start, self._end,
                                                              strict=True))
        return {
            "bot_loop_cpu_ms_per_press": round(loop_cpu * 1000 / presses, 3),
            "tokens_decoded_during_flood": int(tokens),
            "process_cpu_share": round(cpu / wall, 2) if wall > 0 else None,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


async def flood_on_fake(fake: FakeDiscord, users: Sequence[FakeUser], presses: int,
                        mark: Callable[[str], Awaitable[None]],
                        fake_clock: Callable[[], float] | None) -> dict[str, Any]:
    """The scenario, on the fake's loop: an answer, busy decoding, then the flood.

    `mark` lets the bot's side read its counters just before the flood and once every
    press is answered; `fake_clock` is the CPU clock of the fake's work (none when it
    shares the bot's loop)."""
    channels = [c.id for g in fake.guilds for c in g.channels]
    await mark(CONNECTED)  # the bot is ready: its gateway session is there to deliver to
    await fake.wait_for(lambda: fake.commands or None, timeout=30)
    asked = await fake.inject_interaction("ask", {"prompt": "Say hello.", "max_new_tokens": 16},
                                          user=users[0], channel_id=channels[0])
    answer = await asked.wait_original(lambda m: is_final(m.content), timeout=300)
    regen = next(
        c["custom_id"] for row in answer.components for c in row.get("components", [])
        if str(c.get("custom_id", "")).startswith("llm:regen:")
    )
    busy = [
        await fake.inject_interaction(
            "ask", {"prompt": f"{BENCH_PROMPT} (#{i})", "max_new_tokens": BUSY_TOKENS,
                    "min_new_tokens": BUSY_TOKENS},
            user=users[1 + i], channel_id=channels[1 + i])
        for i in range(BUSY_ASKS)
    ]
    await fake.wait_for(lambda: all(i.response for i in busy) or None, timeout=60)
    await mark(FLOOD)
    fake_cpu_before = fake_clock() if fake_clock is not None else 0.0
    pressers = users[2 + BUSY_ASKS:-1]
    itxs: list[FakeInteraction] = await asyncio.gather(*[
        fake.inject_component(regen, message_id=answer.id, user=pressers[i % len(pressers)])
        for i in range(presses)
    ])
    with contextlib.suppress(TimeoutError):
        await fake.wait_for(_all_answered(itxs), timeout=120)
    fake_cpu = fake_clock() - fake_cpu_before if fake_clock is not None else None
    await mark(ANSWERED)
    acks = [i.response.time - i.created for i in itxs if i.response is not None]
    return {
        "presses": presses,
        "acknowledged": len(acks),
        "refused_in_response": sum(1 for i in itxs
                                   if i.response is not None and i.response.type == 4),
        "late_over_3s": sum(a > DISCORD_ACK_DEADLINE_S for a in acks) + (presses - len(acks)),
        "ack_ms_min": _ms(min(acks) if acks else None),
        "ack_ms_p50": _ms(percentile(acks, 50)),
        "ack_ms_p99": _ms(percentile(acks, 99)),
        "ack_ms_max": _ms(max(acks) if acks else None),
        "fake_cpu_ms_per_press": (round(fake_cpu * 1000 / presses, 3)
                                  if fake_cpu is not None else None),
    }


def flood_fake_options() -> tuple[dict[str, Any], list[FakeUser]]:
    """The flood's guild and fake (without the fake's schema checks: not the bot's work)."""
    guild, members = bench_guild(CHANNELS, USERS)
    return fake_options(guild, validate=False), members


def _all_answered(itxs: list[FakeInteraction]) -> Callable[[], bool | None]:
    """`wait_for`'s predicate, re-checked on the fake's loop at every request it
    answers: a cursor past the answered ones, so a check costs the fake next to
    nothing instead of a walk over every press."""
    cursor = 0

    def check() -> bool | None:
        nonlocal cursor
        while cursor < len(itxs) and itxs[cursor].response is not None:
            cursor += 1
        return cursor == len(itxs) or None

    return check


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)
