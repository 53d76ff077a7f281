"""`python -m bench --flood [--presses N]`: acknowledgements under a flood of button presses.

Discord gives an interaction 3 s to be acknowledged. Here the real bot, with the
configured model, answers a question; then, while long answers keep the CPU busy
decoding, `N` members press Regenerate on that answer at once. Each press's
acknowledgement latency is the fake's record of the callback minus the moment the
press was delivered; p50, p99 and the maximum are reported, with how many presses
went unanswered within Discord's 3 s and how many were refused, with the CPU each
side's event-loop thread spent per press from the flood to its last acknowledgement
(the bot's loop, and the fake's, which shares the process's GIL). The fake runs on
a thread and event loop of its own, as Discord is another machine (it still shares
the process and its GIL); `--fake-same-loop` puts it on the bot's loop, where its
request handling competes with the bot's callbacks and is measured with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from bench.common import BENCH_PROMPT
from bench.discord_bench import is_final, percentile, running_world
from bot.config import Settings
from testing.fake_discord import FakeInteraction

BUSY_ASKS = 2
BUSY_TOKENS = 512
DISCORD_ACK_DEADLINE_S = 3.0


async def run_flood_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    presses = int(getattr(args, "presses", None) or 1000)
    users = 60
    same_loop = bool(getattr(args, "fake_same_loop", False))
    # The fake's own schema checks would compete for the GIL; they are not the bot's work.
    async with running_world(settings, 4, users, validate=False,
                             fake_thread=not same_loop) as world:
        fake = world.fake
        asked = await world.ask("Say hello.", world.users[0], world.channels[0],
                                max_new_tokens=16)
        answer = await world.call(asked.wait_original, lambda m: is_final(m.content),
                                  timeout=300)
        regen = next(
            c["custom_id"] for row in answer.components for c in row.get("components", [])
            if str(c.get("custom_id", "")).startswith("llm:regen:")
        )
        busy = [
            await world.ask(f"{BENCH_PROMPT} (#{i})", world.users[1 + i], world.channels[1 + i],
                            max_new_tokens=BUSY_TOKENS, min_new_tokens=BUSY_TOKENS)
            for i in range(BUSY_ASKS)
        ]
        tokens_before = world.app.engine.tokens_generated
        cpu_before, wall_before = os.times(), time.monotonic()
        await world.call(fake.wait_for, lambda: all(i.response for i in busy) or None,
                         timeout=60)

        async def flood() -> list[FakeInteraction]:
            return await asyncio.gather(*[
                fake.inject_component(
                    regen, message_id=answer.id,
                    user=world.users[2 + BUSY_ASKS + i % (users - 3 - BUSY_ASKS)])
                for i in range(presses)
            ])

        fake_cpu_before = await world.call(_thread_cpu)
        bot_cpu_before = time.thread_time()
        itxs = await world.call(flood)
        with contextlib.suppress(TimeoutError):
            await world.call(fake.wait_for, _all_answered(itxs), timeout=120)
        bot_cpu = time.thread_time() - bot_cpu_before
        fake_cpu = await world.call(_thread_cpu) - fake_cpu_before
        cpu_after, wall = os.times(), time.monotonic() - wall_before
        acks = [i.response.time - i.created for i in itxs if i.response is not None]
        cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        return {
            "presses": presses,
            "fake": "bot's loop" if same_loop else "own thread",
            "acknowledged": len(acks),
            "refused_in_response": sum(1 for i in itxs
                                       if i.response is not None and i.response.type == 4),
            "late_over_3s": sum(a > DISCORD_ACK_DEADLINE_S for a in acks)
            + (presses - len(acks)),
            "ack_ms_min": _ms(min(acks) if acks else None),
            "ack_ms_p50": _ms(percentile(acks, 50)),
            "ack_ms_p99": _ms(percentile(acks, 99)),
            "ack_ms_max": _ms(max(acks) if acks else None),
            "bot_loop_cpu_ms_per_press": round(bot_cpu * 1000 / presses, 3),
            "fake_cpu_ms_per_press": (round(fake_cpu * 1000 / presses, 3)
                                      if not same_loop else None),
            "tokens_decoded_during_flood": world.app.engine.tokens_generated - tokens_before,
            "process_cpu_share": round(cpu / wall, 2) if wall > 0 else None,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


def _all_answered(itxs: list[FakeInteraction]) -> Callable[[], bool | None]:
    """`wait_for`'s predicate, re-checked on the fake's thread at every request it
    answers: a cursor past the answered ones, so a check costs the fake (and the GIL it
    shares with the bot) next to nothing instead of a walk over every press."""
    cursor = 0

    def check() -> bool | None:
        nonlocal cursor
        while cursor < len(itxs) and itxs[cursor].response is not None:
            cursor += 1
        return cursor == len(itxs) or None

    return check


async def _thread_cpu() -> float:
    """CPU time of the thread this runs on (the fake's loop, through `World.call`)."""
    return time.thread_time()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)
