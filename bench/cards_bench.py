"""`python -m bench --cards --json`: how long a hostile character card holds up the loop.

Each file a member could upload to `/system import` (at most the upload cap) is
imported the way the cog imports it (`read_card`, parsed in a worker thread),
and once more parsed inline on the loop to show the parser's own cost is
bounded. `testing.loop_watch.LoopWatch` records the loop's worst lateness (wall
clock) and its worst busy gap (wall time backed by CPU time, which a busy
machine alone cannot inflate). Target: the worst busy gap under 0.1 s for every file.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.chat.characters import MAX_PNG_BYTES, CardError, parse_card, read_card
from bot.config import Settings
from testing.character_cards import hostile_cards
from testing.loop_watch import LoopWatch


async def _measure(run: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    outcome = "accepted"
    start = time.perf_counter()
    async with LoopWatch() as watch:
        try:
            await run()
        except CardError as exc:
            outcome = "refused: " + exc.message
    return {
        "wall_s": round(time.perf_counter() - start, 4),
        "loop_worst_lateness_s": round(watch.worst_lateness_s, 4),
        "loop_worst_busy_s": round(watch.worst_busy_s, 4),
        "outcome": outcome,
    }


def _filename(name: str) -> str:
    return "card.json" if name.startswith("json") else "card.png"


async def cards_bench() -> dict[str, Any]:
    """Per file: size, then the worker-thread import and the inline parse, measured."""
    files = hostile_cards(cap=MAX_PNG_BYTES, bomb_bytes=256 * 1024 * 1024)
    out: dict[str, Any] = {"upload_cap_bytes": MAX_PNG_BYTES, "files": {}}
    for name, data in files.items():

        async def off_loop(data: bytes = data, filename: str = _filename(name)) -> object:
            return await read_card(data, filename=filename)

        async def inline(data: bytes = data, filename: str = _filename(name)) -> object:
            return parse_card(data, filename=filename)

        out["files"][name] = {"bytes": len(data), "import": await _measure(off_loop),
                              "parse_inline": await _measure(inline)}
    out["worst_busy_s"] = max(f["import"]["loop_worst_busy_s"] for f in out["files"].values())
    return out


async def run_cards_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    del settings, args  # no model, no store: the parser alone
    return await cards_bench()
