"""`python -m bench --discord | --soak`: the real bot, measured through the fake Discord.

Everything runs in one process: the configured model (by default the embedded
one), a temporary SQLite store, the real `LlamaBot` and an in-process
`FakeDiscord` on 127.0.0.1 that enforces Discord's webhook-edit bucket
(5 edits per 5 s per interaction token). Timings are taken from the fake's own
records (`RecordedRequest.finished`, `InteractionCallback.time`), i.e. when a
Discord user would have seen the change, not when the bot thought it sent it.

`--discord` answers "how does the bot feel": acknowledgement latency under 20
concurrent asks, time to the first visible text, edits per reply, 429s our pacing
caused, and whether streaming through Discord keeps up with the engine.

`--soak --minutes M` answers "does it hold up": a steady stream of asks from a
pool of users and channels with injected 429s and gateway RECONNECTs, checking
that no reply is lost, our own pacing never earns a 429, and memory does not grow.
It stops by itself: sending ends after M minutes and the drain is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bench.common import BENCH_PROMPT, peak_rss_mb, rss_mb
from bot.app import App, load_engine, model_dir_for
from bot.chat.request import FINISH_WORDS
from bot.config import Settings
from bot.discord.client import LlamaBot
from bot.engine import Finished, GenerationResult, TextDelta
from bot.store.ask_log import AskLog
from bot.store.scopes import Scope
from bot.store.store import SettingsStore
from testing.fake_discord import (
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeInteraction,
    FakeUser,
    RecordedRequest,
    Routes,
)
from testing.fake_discord.threaded import FakeOnThread

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

EDIT_BUCKET_LIMIT = 5  # Discord: 5 edits of one interaction's messages per 5 s
EDIT_BUCKET_WINDOW_S = 5.0
CONCURRENT_ASKS = 20
SOAK_ASKS_PER_S = 0.5
SOAK_USERS = 12
SOAK_CHANNELS = 6
SOAK_MAX_NEW_TOKENS = 48
SOAK_429_EVERY_EDITS = 25
SOAK_DRAIN_S = 120.0
PRUNE_AFTER_S = 15.0  # forget a finished reply's records this long after its footer
RSS_SAMPLE_S = 2.0
RSS_GROWTH_MB = 8.0
#: Text edits the stream measurement wants to see: a ratio needs at least two, and a
#: reply of 128 tokens at ~63 tok/s with a 1.25 s edit interval gets only two, or one.
STREAM_TEXT_EDITS = 6
STREAM_MAX_TOKENS = 1024

_FOOTER_MARKS = tuple(f" · {word}" for word in FINISH_WORDS.values())
_WEBHOOK_EDITS = (Routes.EDIT_ORIGINAL, Routes.EDIT_FOLLOWUP)

SOAK_PROMPTS = (
    "Give me three tips for a beginner learning to cook.",
    "Explain what a rainbow is to a child.",
    "Write a haiku about a rainy Monday.",
    "What should I pack for a day hike?",
    "Summarise the plot of a heist movie you would enjoy.",
    "List some good names for a grey cat.",
)


# --------------------------------------------------------------------------- reading replies


def is_final(content: str) -> bool:
    """A reply's last message ends with the footer (`-# N tokens · … · done`)."""
    return any(mark in content for mark in _FOOTER_MARKS)


def body_of(content: str) -> str:
    """The model's text in a streamed message: without the quoted prompt and the status line."""
    lines = content.split("\n")
    if lines and lines[0].startswith("> "):
        lines = lines[1:]
    while lines and lines[-1].startswith("-# "):
        lines = lines[:-1]
    if lines and lines[-1].startswith("⚠️"):
        lines = lines[:-1]
    return "\n".join(lines).strip()


def reply_state(itx: FakeInteraction) -> str:
    """'final', 'refused' (an ephemeral error in place of the ack), or 'pending'."""
    response = itx.response
    if response is None:
        return "pending"
    if response.type == 4:
        return "refused"
    messages = [m for m in (itx.original, *itx.followups) if m is not None]
    return "final" if any(is_final(m.content) for m in messages) else "pending"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: with few samples p99 is simply the worst, as it should be."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most events inside any sliding window of `window` seconds."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _ok(record: RecordedRequest) -> bool:
    return record.status is not None and 200 <= record.status < 300


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    fake: FakeDiscord
    bot: LlamaBot
    app: App
    guild: FakeGuild
    users: list[FakeUser]
    results: list[tuple[float, GenerationResult]] = field(default_factory=list)
    first_text_only: bool = False  # `--discord --first-text`: only `single_first_text`
    threaded: FakeOnThread | None = None  # the fake's own thread and loop, if it has one

    @property
    def channels(self) -> list[int]:
        return [c.id for c in self.guild.channels]

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn` (the fake's: injecting, waiting) on the loop the fake runs on."""
        if self.threaded is not None:
            return await self.threaded.call(fn, *args, **kwargs)
        return await fn(*args, **kwargs)

    async def ask(self, prompt: str, user: FakeUser, channel_id: int,
                  **options: Any) -> FakeInteraction:
        return await self.call(
            self.fake.inject_interaction,
            "ask", {"prompt": prompt, **options}, user=user, channel_id=channel_id
        )

    def webhook_edits(self, token: str) -> list[RecordedRequest]:
        """Successful edits of this interaction's messages, in the order users saw them."""
        records = [
            r for route in _WEBHOOK_EDITS for r in self.fake.requests_for(route)
            if r.params.get("webhook_token") == token and _ok(r) and r.finished is not None
        ]
        return sorted(records, key=lambda r: r.finished or 0.0)


def bench_guild(channels: int, users: int) -> tuple[FakeGuild, list[FakeUser]]:
    gid = (1 << 22) * 2025 + 1
    members = [FakeUser(gid + 1000 + i, f"user{i}", f"User {i}") for i in range(users)]
    guild = FakeGuild(
        id=gid, name="Bench",
        channels=[FakeChannel(gid + 100 + i, f"chan-{i}", 0, position=i) for i in range(channels)],
        members=members,
    )
    return guild, members


def fake_options(guild: FakeGuild, *, validate: bool = True) -> dict[str, Any]:
    """The bench's `FakeDiscord`: one guild, Discord's webhook-edit bucket enforced."""
    return dict(guilds=[guild], enforce_buckets=True, bucket_limit=EDIT_BUCKET_LIMIT,
                bucket_window=EDIT_BUCKET_WINDOW_S, validate=validate)


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[App]:
    """The configured model and a temporary database: the bot's side of a world."""
    model_dir = model_dir_for(settings)
    with tempfile.TemporaryDirectory(prefix="llamacord-bench-") as tmp:
        settings = settings.model_copy(update={"database_path": Path(tmp) / "bench.sqlite3"})
        store = await SettingsStore.open(settings.database_path)
        try:
            engine = await load_engine(settings, model_dir)
            try:
                yield App(settings=settings, engine=engine, store=store,
                          ask_log=AskLog(store.db))
            finally:
                await engine.close()
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def running_world(settings: Settings, channels: int, users: int,
                        *, validate: bool = True, fake_thread: bool = False,
                        ) -> AsyncIterator[World]:
    """The configured model, a temporary database, the real client and a pacing fake
    (`validate=False`: without the fake's checks of each body against Discord's rules;
    `fake_thread`: the fake on its own thread and loop, off the bot's)."""
    async with running_app(settings) as app, contextlib.AsyncExitStack() as stack:
        guild, members = bench_guild(channels, users)
        options = fake_options(guild, validate=validate)
        threaded: FakeOnThread | None = None
        if fake_thread:
            threaded = await stack.enter_async_context(FakeOnThread(**options))
            fake = threaded.fake
        else:
            fake = await stack.enter_async_context(FakeDiscord(**options))
        bot = fake.make_bot(LlamaBot, app=app)
        async with fake.run_bot(bot):
            world = World(fake=fake, bot=bot, app=app, guild=guild, users=members,
                          threaded=threaded)
            await world.call(fake.wait_for, lambda: fake.commands or None, timeout=30)
            app.engine.on_result.append(lambda r: world.results.append((time.monotonic(), r)))
            yield world


# --------------------------------------------------------------------------- --discord


async def concurrent_acks(world: World, n: int = CONCURRENT_ASKS) -> dict[str, Any]:
    """`n` asks from `n` users at once: ack latency, first text, edits per reply."""
    fake = world.fake
    asks = [
        world.ask(f"{BENCH_PROMPT[:120]} (#{i})", world.users[i % len(world.users)],
                  world.channels[i % len(world.channels)])
        for i in range(n)
    ]
    itxs = await asyncio.gather(*asks)
    await fake.wait_for(
        lambda: all(reply_state(i) != "pending" for i in itxs) or None, timeout=600
    )
    acks = [i.response.time - i.created for i in itxs if i.response is not None]
    first_text: list[float] = []
    edits: list[int] = []
    for itx in itxs:
        records = world.webhook_edits(itx.token)
        edits.append(len(records))
        shown = next((r for r in records if body_of(str((r.json or {}).get("content", "")))),
                     None)
        if shown is not None and shown.finished is not None:
            first_text.append(shown.finished - itx.created)
    states = [reply_state(i) for i in itxs]
    return {
        "asks": n,
        "completed": states.count("final"),
        "refused": states.count("refused"),
        "ack_ms_p50": _ms(percentile(acks, 50)),
        "ack_ms_p99": _ms(percentile(acks, 99)),
        "first_text_s": _round(statistics.median(first_text) if first_text else None),
        "first_text_s_p99": _round(percentile(first_text, 99)),
        "edits_per_reply": _round(statistics.mean(edits) if edits else None, 2),
    }


async def stream_ratio(world: World, new_tokens: int) -> dict[str, Any]:
    """How much of the engine's decode speed survives the trip through Discord edits.

    One ask, greedy, exactly `new_tokens` tokens (`min_new_tokens = max_new_tokens`),
    nothing else running. What is compared, and why it is fair:

    - Engine rate: the engine's own `decode_tok_s`, (N - 1) tokens over the span
      from the first to the last token.
    - Discord rate over the same text: the engine's text is timestamped as it is
      produced; the span from when the first *visible* text existed in the engine
      to its last token is compared with the span from the first edit showing
      text to the final edit, as the fake recorded them. Identical text on both
      sides, so the ratio does not depend on decode speed varying along the
      reply (attention slows as it grows), nor on guessing tokens from characters.
    - 1.0 means a reader sees text arrive as fast as the model writes it and the
      footer lands as soon as decoding ends; a final edit held back by the rate
      limit, or edits falling behind, pull it below 1.

    If decoding ends before the first text edit can be sent (a fast GPU and a 1 s
    edit interval), the reply appears in one step: the ratio is undefined (null)
    and `delivery_lag_s` (final edit minus the engine's last token) says it all.
    """
    # The footers are visible before every ask task has returned (discord.py may
    # still sleep out a drained rate-limit bucket), and the asker's slot is held
    # until then: wait, so this ask is not refused as "already in progress".
    await world.fake.wait_for(lambda: not world.bot.runner.active or None, timeout=60)
    user, channel = world.users[0], world.channels[0]
    timeline: list[tuple[float, int]] = []  # (when the engine produced it, chars so far)
    gens: list[Any] = []
    done_at: list[float] = []
    engine = world.bot.app.engine
    real_submit = engine.submit

    def recording_submit(request: Any, prepared: Any = None) -> Any:
        gen = real_submit(request, prepared)
        gens.append(gen)
        real_emit = gen.emit

        def emit(event: Any) -> None:
            if isinstance(event, TextDelta):
                chars = (timeline[-1][1] if timeline else 0) + len(event.text)
                timeline.append((time.monotonic(), chars))
            elif isinstance(event, Finished):
                done_at.append(time.monotonic())
            real_emit(event)

        gen.emit = emit  # type: ignore[method-assign]
        return gen

    engine.submit = recording_submit  # type: ignore[method-assign]
    try:
        itx = await world.ask(BENCH_PROMPT, user, channel, top_k=1,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        await world.fake.wait_for(lambda: reply_state(itx) != "pending" or None, timeout=300)
    finally:
        engine.submit = real_submit  # type: ignore[method-assign]
    out: dict[str, Any] = {"stream_new_tokens": new_tokens}
    if not gens:
        return {**out, "stream_ratio": None, "stream_note": "the ask was refused"}
    # This ask's own result, from its generation: the engine's result hooks run a
    # little after the footer can already be on screen, and reading them raced.
    result: GenerationResult = await gens[-1].result()
    engine_done_at = done_at[-1] if done_at else time.monotonic()
    records = world.webhook_edits(itx.token)
    shown = [(r.finished or 0.0, body_of(str((r.json or {}).get("content", ""))))
             for r in records]
    shown = [(t, body) for t, body in shown if body]
    engine_rate = result.decode_tok_s
    out.update(
        engine_decode_tok_s=_round(engine_rate, 2),
        stream_text_edits=len(shown),
        delivery_lag_s=_round(shown[-1][0] - engine_done_at) if shown else None,
    )
    if len(shown) < 2 or engine_rate is None:
        return {**out, "discord_tok_s": None, "stream_ratio": None}
    (t_first, first_body), (t_final, _) = shown[0], shown[-1]
    # The same stretch of text, timed twice: from the moment the first visible
    # text existed to the end, in the engine and on screen. Comparing spans over
    # identical text makes the ratio independent of how decode speed varies
    # along the reply (attention gets slower as the reply grows).
    engine_from = next((t for t, chars in timeline if chars >= len(first_body)), None)
    if engine_from is None or not timeline:
        return {**out, "discord_tok_s": None, "stream_ratio": None}
    engine_span = timeline[-1][0] - engine_from
    screen_span = t_final - t_first
    if screen_span <= 0 or engine_span <= 0:
        return {**out, "discord_tok_s": None, "stream_ratio": None}
    ratio = engine_span / screen_span
    out["first_edit_lag_s"] = _round(t_first - engine_from)
    return {**out, "discord_tok_s": _round(engine_rate * ratio, 2),
            "stream_ratio": _round(ratio)}


def stream_tokens(decode_tok_s: float | None, edit_interval_s: float, at_least: int) -> int:
    """How long the measured stream must be for `STREAM_TEXT_EDITS` text edits.

    Sized from the warm-up's decode speed, so the figures exist on a slow CPU and
    a fast GPU alike: decoding must outlast that many edit intervals (plus one
    for the first edit's wait). Never less than `--new-tokens`, never more than
    `STREAM_MAX_TOKENS`.
    """
    if not decode_tok_s:
        return max(at_least, STREAM_MAX_TOKENS // 2)
    wanted = math.ceil(decode_tok_s * edit_interval_s * (STREAM_TEXT_EDITS + 1))
    return max(at_least, min(STREAM_MAX_TOKENS, wanted))


async def single_first_text(world: World, repeats: int = 5) -> dict[str, Any]:
    """Submit → first visible text for one ask at a time on an idle bot.

    Under 20 concurrent asks the queue dominates `first_text_s`; here nothing
    waits, so what shows is what the reply path itself adds (a status edit
    spent before the text held it back by a whole edit interval).
    """
    times: list[float] = []
    for i in range(repeats):
        itx = await world.ask(f"Say hello, number {i}.", world.users[0], world.channels[0],
                              max_new_tokens=16)
        def finished(itx: FakeInteraction = itx) -> bool | None:
            return reply_state(itx) != "pending" or None

        await world.fake.wait_for(finished, timeout=120)
        shown = next((r for r in world.webhook_edits(itx.token)
                      if body_of(str((r.json or {}).get("content", "")))), None)
        if shown is not None and shown.finished is not None:
            times.append(shown.finished - itx.created)
    return {
        "single_first_text_s": _round(statistics.median(times) if times else None),
        "single_first_text_s_max": _round(max(times) if times else None),
        "single_asks": repeats,
    }


async def discord_numbers(world: World, new_tokens: int) -> dict[str, Any]:
    info = world.app.engine.info
    out: dict[str, Any] = {
        "model": info.model_name,
        "device": info.device,
        "compute_type": info.compute_type,
        "cpu_threads": info.cpu_threads,
        "inter_threads": info.inter_threads,
        "max_batch_size": world.app.settings.max_batch_size,
        "edit_interval_s": world.app.settings.edit_interval_s,
        "edit_bucket": f"{EDIT_BUCKET_LIMIT}/{EDIT_BUCKET_WINDOW_S:g}s per token",
    }
    # A warm-up ask: the first decode pays one-off allocations we should not measure.
    warm = await world.ask("Say hello.", world.users[-1], world.channels[-1],
                           top_k=1, max_new_tokens=32, min_new_tokens=32)
    await world.fake.wait_for(lambda: reply_state(warm) != "pending" or None, timeout=120)
    # The engine's result hooks run just after the footer may already show: wait for them.
    await world.fake.wait_for(lambda: world.results or None, timeout=30)
    warm_rate = world.results[-1][1].decode_tok_s
    out.update(await single_first_text(world))
    if world.first_text_only:
        return out
    out.update(await concurrent_acks(world))
    tokens = stream_tokens(warm_rate, world.app.settings.edit_interval_s, new_tokens)
    stream = await stream_ratio(world, tokens)
    while stream.get("stream_ratio") is None and tokens < STREAM_MAX_TOKENS:
        # Slower than the warm-up promised (a busy machine): longer, until it shows.
        tokens = min(STREAM_MAX_TOKENS, tokens * 2)
        stream = await stream_ratio(world, tokens)
    out.update(stream)
    out["http_429"] = world.fake.stats.rate_limited
    out["rss_mb"] = round(rss_mb(), 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


# --------------------------------------------------------------------------- --soak


@dataclass
class _Ask:
    itx: FakeInteraction
    sent: float
    state: str = "pending"
    done_at: float | None = None
    edit_times: list[float] = field(default_factory=list)
    trail: list[str] = field(default_factory=list)  # "PATCH 200"…, to explain a lost reply

    def diagnosis(self) -> dict[str, Any]:
        response = self.itx.response
        messages = [m for m in (self.itx.original, *self.itx.followups) if m is not None]
        return {
            "token": self.itx.token[:20],
            "age_s": round(time.monotonic() - self.sent, 1),
            "response_type": None if response is None else response.type,
            "requests": self.trail[-12:],
            "last_content": messages[-1].content[-120:] if messages else None,
        }


@dataclass
class _Soak:
    """The soak's own bookkeeping, kept small: the fake's records are pruned as we go."""

    world: World
    asks: dict[str, _Ask] = field(default_factory=dict)
    acks: list[float] = field(default_factory=list)
    pending_records: list[RecordedRequest] = field(default_factory=list)
    edits_seen: int = 0
    next_fault_at: int = SOAK_429_EVERY_EDITS
    injected_429: int = 0
    reconnects: int = 0
    completed: int = 0
    refused: int = 0
    errored: int = 0
    max_edits_5s: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)

    def harvest(self) -> None:
        """Fold new fake records into our counters, arm the next 429, prune old replies.

        Runs without awaiting, so the fake cannot append while the list is swapped.
        """
        fake = self.world.fake
        fresh = self.pending_records + fake.requests
        fake.requests = []
        self.pending_records = []
        for record in fresh:
            if record.status is None:
                self.pending_records.append(record)  # still in flight
                continue
            owner = self.asks.get(record.params.get("webhook_token", ""))
            if owner is not None:
                owner.trail.append(f"{record.method} {record.route.rsplit('/', 1)[-1]} "
                                   f"{record.status}")
            if record.method != "PATCH" or not record.route.startswith("/webhooks/"):
                continue
            self.edits_seen += 1
            ask = self.asks.get(record.params.get("webhook_token", ""))
            if ask is not None and _ok(record) and record.finished is not None:
                ask.edit_times.append(record.finished)
        if self.edits_seen >= self.next_fault_at:
            fake.fail_next(Routes.EDIT_ORIGINAL, 429, retry_after=0.5)
            self.injected_429 += 1
            self.next_fault_at = self.edits_seen + SOAK_429_EVERY_EDITS
        now = time.monotonic()
        for token, ask in list(self.asks.items()):
            if ask.state == "pending":
                state = reply_state(ask.itx)
                if state != "pending":
                    self._settle(ask, state, now)
            elif ask.done_at is not None and now - ask.done_at > PRUNE_AFTER_S:
                self._forget(token, ask)

    def _settle(self, ask: _Ask, state: str, now: float) -> None:
        ask.state = state
        ask.done_at = now
        if ask.itx.response is not None:
            self.acks.append(ask.itx.response.time - ask.itx.created)
        if state == "refused":
            self.refused += 1
            return
        self.completed += 1
        messages = [m for m in (ask.itx.original, *ask.itx.followups) if m is not None]
        if any(" · error" in m.content for m in messages):
            self.errored += 1

    def _forget(self, token: str, ask: _Ask) -> None:
        """Drop a finished reply from the fake's stores so they do not pose as our leak."""
        fake = self.world.fake
        self.max_edits_5s = max(self.max_edits_5s,
                                max_in_window(ask.edit_times, EDIT_BUCKET_WINDOW_S))
        fake.forget_interaction(token)
        del self.asks[token]


async def _rss_sampler(soak: _Soak, stop: asyncio.Event) -> None:
    while not stop.is_set():
        soak.rss.append((time.monotonic(), rss_mb()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)


async def _reconnector(soak: _Soak, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        await soak.world.fake.send_reconnect()
        soak.reconnects += 1


def rss_trend(samples: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Did memory grow? Compare the last fifth of the run with the second fifth.

    The first fifth is warm-up (first batches, caches, the allocator settling);
    a leak shows as a later window sitting above an earlier, already-warm one.
    The least-squares slope over the second half backs the comparison up.
    """
    if len(samples) < 5:
        return {"rss_grew": None}
    n = len(samples)
    second = [mb for _, mb in samples[n // 5: 2 * n // 5]] or [samples[1][1]]
    last = [mb for _, mb in samples[4 * n // 5:]]
    half = samples[n // 2:]
    t0 = half[0][0]
    xs = [(t - t0) / 60 for t, _ in half]
    ys = [mb for _, mb in half]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var \
        if var > 0 else 0.0
    growth = max(last) - max(second)
    return {
        "rss_start_mb": round(samples[0][1], 1),
        "rss_second_fifth_max_mb": round(max(second), 1),
        "rss_last_fifth_max_mb": round(max(last), 1),
        "rss_slope_mb_per_min_second_half": round(slope, 2),
        "rss_grew": growth > RSS_GROWTH_MB,
    }


async def soak(world: World, minutes: float) -> dict[str, Any]:
    """Steady asks, injected 429s and RECONNECTs for `minutes`, then a bounded drain."""
    fake, app = world.fake, world.app
    await app.store.set_knobs(Scope.server(world.guild.id),
                              {"max_new_tokens": SOAK_MAX_NEW_TOKENS}, actor_id=1)
    state = _Soak(world)
    stop = asyncio.Event()
    reconnect_every = max(15.0, min(60.0, minutes * 60 / 2))
    helpers = [asyncio.create_task(_rss_sampler(state, stop)),
               asyncio.create_task(_reconnector(state, reconnect_every, stop))]
    started = time.monotonic()
    deadline = started + minutes * 60
    sent = 0
    try:
        while time.monotonic() < deadline:
            user = world.users[sent % len(world.users)]
            channel = world.channels[(sent * 7) % len(world.channels)]
            prompt = SOAK_PROMPTS[sent % len(SOAK_PROMPTS)]
            itx = await world.ask(prompt, user, channel)
            state.asks[itx.token] = _Ask(itx, time.monotonic())
            sent += 1
            state.harvest()
            next_at = started + sent / SOAK_ASKS_PER_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        sending_s = time.monotonic() - started
        drain_deadline = time.monotonic() + SOAK_DRAIN_S
        while time.monotonic() < drain_deadline:
            state.harvest()
            if all(a.state != "pending" for a in state.asks.values()):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)  # let the last edits' records land
        state.harvest()
    finally:
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
    lost = [a for a in state.asks.values() if a.state == "pending"]
    for token, ask in list(state.asks.items()):
        if ask.state != "pending":
            state._forget(token, ask)
    lost_detail = [a.diagnosis() for a in lost[:5]]
    if lost:
        log.warning("%d replies never finished: %s", len(lost), lost_detail)
    info = app.engine.info
    return {
        "model": info.model_name,
        "device": info.device,
        "compute_type": info.compute_type,
        "minutes": round(sending_s / 60, 2),
        "asks_per_s": SOAK_ASKS_PER_S,
        "users": len(world.users),
        "channels": len(world.channels),
        "asks_sent": sent,
        "replies_completed": state.completed,
        "replies_refused": state.refused,
        "replies_with_error": state.errored,
        "replies_lost": len(lost),
        "lost_detail": lost_detail,
        "http_429_self": fake.stats.rate_limited,
        "http_429_injected": state.injected_429,
        "reconnects": state.reconnects,
        "gateway_resumes": fake.stats.resumes,
        "ack_ms_p50": _ms(percentile(state.acks, 50)),
        "ack_ms_p99": _ms(percentile(state.acks, 99)),
        "max_edits_per_reply_5s": state.max_edits_5s,
        "tokens_generated": app.engine.tokens_generated,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **rss_trend(state.rss),
    }


# --------------------------------------------------------------------------- entry point


async def discord_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Dispatch `--discord` or `--soak`; see the module docstring for what each measures."""
    if args.soak:
        async with running_world(settings, SOAK_CHANNELS, SOAK_USERS) as world:
            return await soak(world, float(args.minutes))
    async with running_world(settings, 10, CONCURRENT_ASKS) as world:
        world.first_text_only = bool(getattr(args, "first_text", False))
        return await discord_numbers(world, int(args.new_tokens))
