"""`python -m bench --mixed`: the engine on the work a busy server sends.

The uniform bench (one 114-token prompt, equal settings) shows the engine at its
best; this one measures what it was weak at, each scenario in isolation on one
loaded model, then a Poisson open-loop workload mixing them:

- `ttft_mixed_over_alone`: an ask with a 1,600-token persona, alone and then
  arriving with 5 short asks (default knobs): time to its first text.
- `join_*_gap_ms`: with one replica (the CUDA default), a 300-token reply is
  streaming when 3 asks with the same knobs arrive: gaps between its text updates.
- `persona_second_ttft_over_first`: two asks in a row with the same 1,600-token persona.
- `timeslice_wall_over_serial`, `reprefill_tokens_ratio`: three 730-token asks with
  different temperatures on the default layout, timeslice 0.5 s, against timeslicing
  off; prompt tokens the model read / prompt tokens submitted.
- `open_*`: Poisson arrivals for `--minutes` (default 2) with personas of 0, 100,
  600 and 1,600 tokens, three knob sets and 64-256 new tokens.

Every persona in the first scenarios is new text, so no cache from an earlier
scenario flatters a later one. Sizes shrink to fit a small model's context (tests
run this on a tiny random model for a few seconds, to check the keys only).
Progress goes to stderr, the JSON alone to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import time
from typing import Any

from bench.common import BENCH_PROMPT, first_text, rss_mb
from bot.config import Settings
from bot.engine import Engine, EngineOptions, GenerationRequest, TextDelta
from bot.errors import PromptTooLong, QueueFull
from bot.knobs import Knobs

WORDS = [
    "the", "river", "carried", "lanterns", "past", "quiet", "harbors", "while", "maple",
    "leaves", "drifted", "over", "stone", "bridges", "and", "the", "old", "cartographer",
    "counted", "tides", "by", "candlelight,", "sketching", "canyons,", "meadows,", "glaciers",
    "orchards", "for", "travellers", "who", "asked", "about", "weather,", "cargo,", "songs,",
    "recipes", "and", "the", "names", "of", "distant", "stars",
]
QUESTIONS = [
    "What is a good name for a cat?",
    "Give me one tip for sleeping better.",
    "How do I boil an egg?",
    "Suggest a board game for four people.",
    "What is the capital of Canada?",
    "Write a haiku about rain.",
]


def _say(message: str) -> None:
    print(f"[mixed] {message}", file=sys.stderr, flush=True)


class CountingBackend:
    """Pass calls through and count the prompt tokens the model is made to read.

    A static prompt counts when CTranslate2 must compute it: always without
    `cache_static_prompt`, and the first time a prefix is seen with it.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.read = 0
        self._kept: set[tuple[str, ...]] = set()

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.read += sum(len(t) for t in start_tokens)
        static = tuple(kw.get("static_prompt") or ())
        if static:
            if static not in self._kept:
                self.read += len(static)
            if kw.get("cache_static_prompt"):
                self._kept.add(static)
        return self.real.generate_batch(start_tokens, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def text_of_tokens(engine: Engine, tokens: int, seed: int) -> str:
    """Plain English-like text that encodes to about `tokens` tokens (distinct per seed)."""
    rng = random.Random(seed)
    words = [f"Notebook {seed}."]
    while len(engine.bundle.tokenizer.encode(" ".join(words))) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(16))
    text = " ".join(words)
    while len(engine.bundle.tokenizer.encode(text)) > tokens and " " in text:
        text = text.rsplit(" ", 1)[0]
    return text


def view(base: Engine, options: EngineOptions) -> Engine:
    """Another scheduler on the same loaded weights (another timeslice, say).

    One lane per replica of `base`: `options.device_index` is left at one GPU.
    """
    return Engine(base.bundle, base.backend, info=base.info, options=options)


async def mixed_ttft(engine: Engine, size: int, rounds: int = 3) -> dict[str, Any]:
    """Alone, then with 5 short asks; `rounds` times (medians), each with new personas.

    On a shared machine one pair can be off by half; the median of three is steadier.
    """
    knobs = Knobs(max_new_tokens=32)
    alone_s: list[float] = []
    mixed_s: list[float] = []
    long_tokens = 0
    for r in range(rounds):
        alone_req = GenerationRequest("Who are you?", knobs,
                                      system_prompt=text_of_tokens(engine, size, 1000 + 2 * r))
        long_tokens = len(engine.prepare(alone_req).tokens)
        alone, _ = await first_text(engine, alone_req)
        mixed_req = GenerationRequest("Who are you?", knobs,
                                      system_prompt=text_of_tokens(engine, size, 1001 + 2 * r))
        long_task = asyncio.ensure_future(first_text(engine, mixed_req))
        shorts = [engine.submit(GenerationRequest(q)) for q in QUESTIONS[:5]]
        mixed, _ = await long_task
        await asyncio.gather(*(g.result() for g in shorts))
        _say(f"long ask ({long_tokens} tokens): first text alone {alone:.2f} s, "
             f"with 5 short ones {mixed:.2f} s")
        alone_s.append(alone)
        mixed_s.append(mixed)
    alone, mixed = statistics.median(alone_s), statistics.median(mixed_s)
    return {
        "long_prompt_tokens": long_tokens,
        "ttft_alone_s": round(alone, 3),
        "ttft_mixed_s": round(mixed, 3),
        "ttft_mixed_over_alone": round(mixed / alone, 2),
        "ttft_mixed_over_alone_each": [round(m / a, 2) for a, m in zip(alone_s, mixed_s,
                                                                       strict=True)],
    }


async def join_once(one: Engine, reply_tokens: int) -> dict[str, Any]:
    knobs = Knobs(max_new_tokens=reply_tokens)
    stamps: list[float] = []
    prompt = BENCH_PROMPT
    try:
        fits = len(one.prepare(GenerationRequest(prompt)).tokens) + reply_tokens
        fits_context = fits <= one.info.context_length
    except PromptTooLong:
        fits_context = False
    if not fits_context:
        prompt = QUESTIONS[0]  # a tiny test model's context
    running = one.submit(GenerationRequest(prompt, knobs))
    late: list[Any] = []
    late_first: list[float] = []
    arrived = 0.0

    async def watch(gen: Any) -> None:
        async for event in gen.events():
            if isinstance(event, TextDelta):
                late_first.append(time.perf_counter() - arrived)
                gen.cancel()
                return

    watchers: list[asyncio.Task[None]] = []
    async for event in running.events():
        if isinstance(event, TextDelta):
            stamps.append(time.perf_counter())
            if len(stamps) == 40:
                arrived = time.perf_counter()
                late = [one.submit(GenerationRequest(q, knobs)) for q in QUESTIONS[:3]]
                watchers = [asyncio.create_task(watch(g)) for g in late]
    result = await running.result()
    await asyncio.gather(*watchers)
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    out = {
        "join_reply_tokens": result.new_tokens,
        "join_max_gap_ms": round(max(gaps), 1) if gaps else None,
        "join_median_gap_ms": round(statistics.median(gaps), 1) if gaps else None,
        "join_p99_gap_ms": round(sorted(gaps)[int(0.99 * (len(gaps) - 1))], 1) if gaps else None,
        "join_newcomer_ttft_s": round(statistics.median(late_first), 2) if late_first else None,
    }
    return out


async def join_gaps(one: Engine, reply_tokens: int) -> dict[str, Any]:
    """The join scenario; again (3 tries at most) if the sampled reply ended early.

    Default knobs sample, so the running reply sometimes meets its end token after
    a few dozen tokens, before the newcomers' effect can be seen.
    """
    for _ in range(3):
        out = await join_once(one, reply_tokens)
        _say(f"join, one replica: {out}")
        if out["join_reply_tokens"] >= reply_tokens // 2:
            break
    return out


async def persona_reuse(engine: Engine, size: int) -> dict[str, Any]:
    persona = text_of_tokens(engine, size, 3)
    knobs = Knobs(max_new_tokens=16)
    first, _ = await first_text(engine, GenerationRequest("Who are you?", knobs,
                                                          system_prompt=persona))
    second, _ = await first_text(engine, GenerationRequest("What do you like?", knobs,
                                                           system_prompt=persona))
    _say(f"persona: first ask {first:.2f} s, second {second:.2f} s")
    return {
        "persona_first_ttft_s": round(first, 3),
        "persona_second_ttft_s": round(second, 3),
        "persona_second_ttft_over_first": round(second / first, 3),
    }


async def timeslice(base: Engine, size: int, new_tokens: int) -> dict[str, Any]:
    prompts = [text_of_tokens(base, size, 10 + i) for i in range(3)]
    temps = (0.5, 0.8, 1.1)
    figures: dict[float, tuple[float, int, int]] = {}
    for slice_s in (0.0, 0.5):
        engine = view(base, EngineOptions(timeslice_s=slice_s, batch_wait_ms=15, max_batch_size=8))
        counter = CountingBackend(base.backend)
        engine.set_backend(counter)
        try:
            requests = [
                GenerationRequest(p, Knobs(temperature=t, max_new_tokens=new_tokens,
                                           min_new_tokens=new_tokens))
                for p, t in zip(prompts, temps, strict=True)
            ]
            submitted = sum(len(engine.prepare(r).tokens) for r in requests)
            start = time.perf_counter()
            gens = [engine.submit(r) for r in requests]
            await asyncio.gather(*(g.result() for g in gens))
            figures[slice_s] = (time.perf_counter() - start, counter.read, submitted)
        finally:
            await engine.close()
        _say(f"timeslice {slice_s}: {figures[slice_s][0]:.2f} s, "
             f"{figures[slice_s][1]} prompt tokens read of {submitted}")
    serial, sliced = figures[0.0], figures[0.5]
    return {
        "timeslice_prompt_tokens": sliced[2],
        "timeslice_wall_s": round(sliced[0], 2),
        "serial_wall_s": round(serial[0], 2),
        "timeslice_wall_over_serial": round(sliced[0] / serial[0], 2),
        "reprefill_tokens_ratio": round(sliced[1] / sliced[2], 2),
    }


async def open_loop(engine: Engine, seconds: float, rate: float, sizes: list[int],
                    seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    personas: list[str | None] = [None] + [text_of_tokens(engine, n, 100 + n) for n in sizes]
    knob_sets = [
        {},
        {"temperature": 0.9, "top_p": 0.9},
        {"temperature": 0.5, "top_k": 40},
    ]
    ttfts: list[float] = []
    tokens = 0
    rejected = 0
    unfinished = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(request: GenerationRequest) -> None:
        nonlocal tokens, rejected, unfinished
        start = time.perf_counter()
        try:
            gen = engine.submit(request)
        except (QueueFull, PromptTooLong):
            rejected += 1
            return
        first: float | None = None
        try:
            async for event in gen.events():
                if isinstance(event, TextDelta) and first is None:
                    first = time.perf_counter() - start
            tokens += (await gen.result()).new_tokens
        except asyncio.CancelledError:
            gen.cancel()
            unfinished += 1
            tokens += (await gen.result()).new_tokens
        # A reply cut off by the drain limit counts with the wait it had so far:
        # its percentile is then a lower bound (see open_unfinished).
        ttfts.append(first if first is not None else time.perf_counter() - start)

    start = time.perf_counter()
    deadline = start + seconds
    next_at = start
    while True:
        next_at += rng.expovariate(rate)
        if next_at >= deadline:
            break
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        knobs = Knobs(max_new_tokens=rng.randint(64, 256), **rng.choice(knob_sets))
        request = GenerationRequest(rng.choice(QUESTIONS), knobs,
                                    system_prompt=rng.choice(personas))
        tasks.append(asyncio.create_task(one(request)))
    # Draining is bounded (as long as the arrivals again, 2 minutes at least), so
    # an engine that cannot keep up ends the bench and says so.
    _, late = await asyncio.wait(tasks, timeout=max(120.0, seconds)) if tasks else ((), ())
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - start
    ttfts.sort()

    def pct(q: float) -> float | None:
        if not ttfts:
            return None
        return round(ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))], 3)

    out = {
        "open_seconds": round(seconds, 1),
        "open_rate_per_s": rate,
        "open_requests": len(tasks),
        "open_rejected": rejected,
        "open_unfinished": unfinished,
        "open_ttft_p50_s": pct(0.5),
        "open_ttft_p99_s": pct(0.99),
        "open_aggregate_tok_s": round(tokens / wall, 2),
    }
    _say(f"open loop: {out}")
    return out


async def run_mixed_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Load the configured model (default layout, then one replica) and run every scenario."""
    from bot.app import load_engine, model_dir_for

    minutes = float(args.minutes)
    settings = settings.model_copy(update={"max_batch_size": max(8, settings.max_batch_size)})
    model_dir = model_dir_for(settings)
    engine = await load_engine(settings, model_dir)
    rss_start = rss_mb()
    ctx = engine.info.context_length

    def fit(n: int) -> int:
        return max(8, min(n, ctx // 2 - 48))

    out: dict[str, Any] = {
        "model": engine.info.model_name,
        "device": engine.info.device,
        "compute_type": engine.info.compute_type,
        "inter_threads": engine.info.inter_threads,
        "cpu_threads": engine.info.cpu_threads,
        "rss_mb_start": round(rss_start, 1),
    }
    try:
        out.update(await mixed_ttft(engine, fit(1600)))
        out.update(await persona_reuse(engine, fit(1600)))
        out.update(await timeslice(engine, fit(730), 64))
        one = await load_engine(settings.model_copy(update={"inter_threads": 1}), model_dir)
        try:
            out.update(await join_gaps(one, min(300, ctx // 4)))
        finally:
            await one.close()
        out.update(await open_loop(engine, minutes * 60, 0.4,
                                   [fit(100), fit(600), fit(1600)]))
        out["rss_mb_end"] = round(rss_mb(), 1)
        return out
    finally:
        await engine.close()
