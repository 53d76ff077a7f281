"""`python -m bench --prepare --json`: what preparing a long conversation costs.

A Reply on a long chain (or a thread, or a DM history) re-reads the stored
turns, fits them to the context window and renders the prompt before anything
is queued. This times `Chat.prepare` (the path every front-end takes: chain
walk, history, fitting, final render and encode) for chains of 10, 100 and 500
ordinary turns with the configured model's tokenizer, and measures the event
loop's longest stall while the 500-turn chain is prepared: a ticker task that
wakes every 5 ms records how late it woke. A stall is every member's replies
frozen, so it must stay far below the prepare time itself.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.chat.turns import TurnAsk
from bot.config import Settings
from bot.store.ask_log import AskLog
from bot.store.scopes import Location
from bot.store.store import SettingsStore
from bot.store.turns import NewExchange, StoredTurn

TURN_COUNTS = (10, 100, 500)
_QUESTION = "What should we pack for the hike on Saturday, and how early should we leave?"
_ANSWER = (
    "Pack water, a light jacket, snacks that keep, a small first-aid kit and a charged "
    "phone. Leave early enough to be back well before dark; turn around on time."
)
GUILD, CHANNEL, ASKER = 1, 2, 3


async def _chain(app: Any, turns: int) -> StoredTurn:
    parent: int | None = None
    last: StoredTurn | None = None
    for n in range(turns // 2):
        _, last = await app.turns.add_exchange(NewExchange(
            parent_id=parent, question=f"{n}. {_QUESTION}", answer=f"{n}. {_ANSWER}",
            author_id=ASKER, author_name="Ada", ask_id=None, guild_id=GUILD,
            channel_id=CHANNEL, private=False))
        parent = last.id
    assert last is not None
    return last


async def _ticker(lateness: list[float], stop: asyncio.Event, period: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + period
        await asyncio.sleep(period)
        lateness.append(max(0.0, loop.time() - due))


async def prepare_bench(app: Any, repeats: int = 3) -> dict[str, Any]:
    ask_base = TurnAsk(location=Location(GUILD, CHANNEL), prompt="And what about rain?",
                       author_id=ASKER, author_name="Ada", explicit=True, shared=True)
    out: dict[str, Any] = {"prepare_s": {}, "kept_turns": {}}
    heads: dict[int, int] = {}
    for turns in TURN_COUNTS:
        heads[turns] = (await _chain(app, turns)).id
    for turns in TURN_COUNTS:
        ask = TurnAsk(**{**ask_base.__dict__, "parent_id": heads[turns]})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            prepared = await app.chat.prepare(ask)
            times.append(time.perf_counter() - start)
        out["prepare_s"][str(turns)] = round(min(times), 4)
        out["kept_turns"][str(turns)] = len(prepared.request.history)
    lateness: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(lateness, stop))
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await app.chat.prepare(TurnAsk(**{**ask_base.__dict__, "parent_id": heads[500]}))
    elapsed = time.perf_counter() - start
    stop.set()
    await ticker
    out["loop_stall_500_s"] = round(max(lateness, default=0.0), 4)
    out["prepare_500_while_ticking_s"] = round(elapsed, 4)
    return out


async def run_prepare_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import App, load_engine, model_dir_for

    engine = await load_engine(settings, model_dir_for(settings))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = await SettingsStore.open(Path(tmp) / "bench.sqlite3")
            try:
                app = App(settings=settings, engine=engine, store=store,
                          ask_log=AskLog(store.db))
                out: dict[str, Any] = {
                    "model": engine.info.model_name,
                    "context_length": engine.info.context_length,
                }
                out.update(await prepare_bench(app))
                return out
            finally:
                await store.close()
    finally:
        await engine.close()
