"""`python -m bench`: measured numbers, printed as one JSON object.

Engine bench: every figure comes from one process and one loaded model, so the
ratios compare like with like. The reply length is pinned
(`min_new_tokens = max_new_tokens`, greedy) so each run decodes the same number
of tokens and the streaming path and raw CTranslate2 do the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.common import BENCH_PROMPT, first_text, peak_rss_mb, rss_mb
from bot.config import Settings
from bot.engine import Engine, GenerationRequest
from bot.knobs import Knobs


async def engine_bench(engine: Engine, new_tokens: int = 128, repeats: int = 3) -> dict[str, Any]:
    knobs = Knobs(max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=1, top_p=1.0,
                  temperature=1.0)
    request = GenerationRequest(prompt=BENCH_PROMPT, knobs=knobs)
    prepared = engine.prepare(request)

    # One stream through our API: time to first text and decode rate.
    ttfts: list[float] = []
    rates: list[float] = []
    for _ in range(repeats):
        first, result = await first_text(engine, request, missing=0.0)
        assert result.new_tokens == new_tokens, result
        ttfts.append(first)
        rates.append(result.decode_tok_s or 0.0)

    # Raw CTranslate2: the same prompt and settings, no callback, no Python per token.
    generator: Any = engine.backend
    kwargs = dict(knobs.ct2_sampling(), include_prompt_in_result=False,
                  end_token=list(engine.bundle.end_token_ids))
    kwargs["min_length"] = new_tokens

    def raw(max_length: int) -> float:
        kw = dict(kwargs, min_length=min(max_length, new_tokens))
        t = time.perf_counter()
        generator.generate_batch([prepared.tokens], max_length=max_length, **kw)
        return time.perf_counter() - t

    raw_rates: list[float] = []
    for _ in range(repeats):
        prefill = await asyncio.to_thread(raw, 1)
        full = await asyncio.to_thread(raw, new_tokens)
        raw_rates.append((new_tokens - 1) / max(full - prefill, 1e-9))

    async def aggregate(n: int) -> float:
        start = time.perf_counter()
        gens = [engine.submit(request) for _ in range(n)]
        results = await asyncio.gather(*(g.result() for g in gens))
        return sum(r.new_tokens for r in results) / (time.perf_counter() - start)

    agg4 = statistics.median([await aggregate(4) for _ in range(2)])
    agg8 = statistics.median([await aggregate(8) for _ in range(2)])
    decode = statistics.median(rates)
    raw_decode = statistics.median(raw_rates)
    return {
        "prompt_tokens": len(prepared.tokens),
        "new_tokens": new_tokens,
        "ttft_s": round(statistics.median(ttfts), 4),
        "decode_tok_s": round(decode, 2),
        "raw_decode_tok_s": round(raw_decode, 2),
        "overhead_ratio": round(decode / raw_decode, 3),
        "aggregate_tok_s_4": round(agg4, 2),
        "aggregate_tok_s_8": round(agg8, 2),
        "aggregate_8_over_single": round(agg8 / decode, 2),
    }


async def run_engine_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Load the configured model and measure it (the default `bench`)."""
    from bot.app import load_engine, model_dir_for

    started = time.perf_counter()
    settings = settings.model_copy(update={"max_batch_size": max(8, settings.max_batch_size)})
    engine = await load_engine(settings, model_dir_for(settings))
    load_s = time.perf_counter() - started
    try:
        out: dict[str, Any] = {
            "model": engine.info.model_name,
            "device": engine.info.device,
            "compute_type": engine.info.compute_type,
            "cpu_threads": engine.info.cpu_threads,
            "inter_threads": engine.info.inter_threads,
            "load_s": round(load_s, 3),
        }
        out.update(await engine_bench(engine, new_tokens=args.new_tokens))
        out["rss_mb"] = round(rss_mb(), 1)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out
    finally:
        await engine.close()
