"""`python -m bench --models`: what serving several models costs.

Three figures, through `ModelRegistry` and one real `Engine` per loaded model:

- cold load: how long a model's first `acquire` takes, and its first time to
  first text against a warm one;
- switching: a budget that holds one model at a time, asks alternating between
  two models, so each ask unloads the other (switch_s = unload + load) and reads
  its prompt on fresh weights (first TTFT after the switch);
- two at once: both loaded, `streams` replies to each submitted together:
  aggregate tokens/s and each stream's decode rate, against one stream alone.

The models are BOT_MODEL_DIRS' first two when two or more are configured, else the
embedded SmolLM2 and a tiny random model built for the run. Replies are pinned
(greedy, `min_new_tokens = max_new_tokens`), so every run decodes the same count.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import first_text, peak_rss_mb, rss_mb
from bot.app import catalog_from_settings
from bot.config import Settings
from bot.engine import Engine, GenerationRequest
from bot.hosting.catalog import ModelSpec, weight_bytes_of
from bot.hosting.registry import ModelRegistry
from bot.knobs import Knobs

PROMPT = "Suggest three names for a hiking club and say why in one line each."


def make_registry(
    settings: Settings, specs: list[ModelSpec], budget: int | None
) -> ModelRegistry[Engine]:
    """Engines loaded as the bot loads them (`bot.app.load_model`: each model's options)."""
    from bot.app import load_model

    batched = settings.model_copy(update={"max_batch_size": max(8, settings.max_batch_size)})

    async def load(spec: ModelSpec) -> Engine:
        return await load_model(batched, spec)

    async def unload(engine: Engine) -> None:
        await engine.close(grace_s=settings.shutdown_grace_s)

    return ModelRegistry(specs, load=load, unload=unload, budget_bytes=budget, poll_s=0.05)


def request_for(engine: Engine, new_tokens: int) -> GenerationRequest:
    probe = GenerationRequest(prompt=PROMPT, knobs=Knobs(max_new_tokens=new_tokens))
    n = engine.prepare(probe).max_new_tokens  # the tiny model's window is short
    return GenerationRequest(
        prompt=PROMPT,
        knobs=Knobs(max_new_tokens=n, min_new_tokens=n, top_k=1, top_p=1.0, temperature=1.0),
    )


async def ttft(served: Engine, new_tokens: int) -> float:
    first, result = await first_text(served, request_for(served, new_tokens))
    assert result.error is None, result.error
    return first


async def models_bench(
    settings: Settings, specs: list[ModelSpec], *, new_tokens: int = 64, repeats: int = 3,
    streams: int = 2,
) -> dict[str, Any]:
    a, b = specs[:2]
    out: dict[str, Any] = {
        "models": {
            s.name: {"weight_mb": round(s.weight_bytes / 2**20, 1), "device": s.device,
                     "compute_type": s.compute_type or "default"}
            for s in (a, b)
        },
        "new_tokens": new_tokens,
    }

    # Cold load and first TTFT, then warm TTFT, with room for both.
    reg = make_registry(settings, [a, b], None)
    try:
        for spec in (a, b):
            started = time.perf_counter()
            served = await reg.acquire(spec.name)
            load_s = time.perf_counter() - started
            first = await ttft(served, new_tokens)
            warm = statistics.median([await ttft(served, new_tokens) for _ in range(repeats)])
            out["models"][spec.name].update({
                "load_s": round(load_s, 3), "first_ttft_s": round(first, 4),
                "warm_ttft_s": round(warm, 4),
                "inter_threads": served.info.inter_threads,
                "cpu_threads": served.info.cpu_threads,
                "compute_type": served.info.compute_type,
            })

        # Two at once: each model alone first, then `streams` replies to each together.
        alone: dict[str, float] = {}
        for spec in (a, b):
            served = await reg.acquire(spec.name)
            result = await served.generate(request_for(served, new_tokens))
            alone[spec.name] = result.decode_tok_s or 0.0
        engines = {spec.name: await reg.acquire(spec.name) for spec in (a, b)}
        started = time.perf_counter()
        gens = [
            (name, engine.submit(request_for(engine, new_tokens)))
            for name, engine in engines.items() for _ in range(streams)
        ]
        results = [(name, await gen.result()) for name, gen in gens]
        wall = time.perf_counter() - started
        out["together"] = {
            "streams_per_model": streams,
            "aggregate_tok_s": round(sum(r.new_tokens for _, r in results) / wall, 2),
            # Each model's tokens over its own span (submit to its last reply's end).
            "per_model_tok_s": {
                name: round(
                    sum(r.new_tokens for n, r in results if n == name)
                    / max(r.total_s for n, r in results if n == name), 2)
                for name in engines
            },
            "stream_decode_tok_s": {
                name: [round(r.decode_tok_s or 0.0, 2) for n, r in results if n == name]
                for name in engines
            },
            "alone_decode_tok_s": {name: round(v, 2) for name, v in alone.items()},
            "wall_s": round(wall, 3),
        }
    finally:
        await reg.close()

    # Switching: a budget for one model at a time on their device.
    budget = max(a.weight_bytes, b.weight_bytes)
    reg = make_registry(settings, [a, b], budget)
    switches: dict[str, list[tuple[float, float]]] = {a.name: [], b.name: []}
    try:
        await reg.acquire(b.name)
        for spec in [a, b] * repeats:
            started = time.perf_counter()
            served = await reg.acquire(spec.name)
            switch_s = time.perf_counter() - started
            switches[spec.name].append((switch_s, await ttft(served, new_tokens)))
        out["switching"] = {
            "budget_mb": round(budget / 2**20, 1),
            "evictions": reg.evictions,
            **{
                name: {
                    "switch_s": round(statistics.median(s for s, _ in rows), 3),
                    "first_ttft_after_switch_s": round(statistics.median(t for _, t in rows), 4),
                }
                for name, rows in switches.items()
            },
        }
    finally:
        await reg.close()
    out["rss_mb"] = round(rss_mb(), 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


async def run_models_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """The configured models when there are two, else the embedded one and a tiny one."""
    new_tokens = min(args.new_tokens, 256)
    catalog = catalog_from_settings(settings)
    if len(catalog) >= 2:
        return await models_bench(settings, list(catalog.specs), new_tokens=new_tokens)
    from testing.model_factory import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="models-bench-") as tmp:
        tiny_dir = await asyncio.to_thread(make_tiny_model, Path(tmp))
        tiny = ModelSpec(name="tiny", dir=tiny_dir, device=catalog.specs[0].device,
                         device_index=catalog.specs[0].device_index,
                         weight_bytes=weight_bytes_of(tiny_dir))
        return await models_bench(settings, [catalog.specs[0], tiny], new_tokens=new_tokens)
