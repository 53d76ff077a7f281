"""`python -m bot bench --lab --json`: what the knobs lab costs.

- One probabilities step (`probs_step`: one forward pass over the prompt, the knobs
  in numpy, the candidates' texts) against the time to first text of the same
  prompt as an ask; target ≤ 2×.
- The chart's render time (matplotlib, Agg, on a worker thread as the front-ends
  call it); target ≤ 300 ms.
- A compare of three variants against one ask, every reply pinned to the same
  length (`min_new_tokens = max_new_tokens`), so the only difference is that three
  settings are decoded: they take separate lanes (different settings never share a
  batch), so on N replicas three cost about ceil(3 / N) asks' time.

Medians of a few runs, one process, one loaded model. The load
average is printed too: on a shared machine it explains a slow run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from bench.common import BENCH_PROMPT, first_text, rss_mb
from bot.config import Settings
from bot.engine import Engine, GenerationRequest
from bot.knobs import Knobs
from bot.lab.chart import render_png
from bot.lab.compare import compare, plan_variants
from bot.lab.probs import probs_step

REPEATS = 5
COMPARE_VARIANTS = ("temperature=0.1", "temperature=1.5 top_p=1", "creative")


async def lab_bench(
    engine: Engine, new_tokens: int = 128, repeats: int = REPEATS, prompt: str = BENCH_PROMPT
) -> dict[str, Any]:
    request = GenerationRequest(prompt=prompt, knobs=Knobs(max_new_tokens=8))
    prompt_tokens = len(engine.prepare(request).tokens)
    await first_text(engine, request)  # warm-up: the first call pays one-off set-up
    await probs_step(engine, request)

    ttfts: list[float] = []
    steps: list[float] = []
    forwards: list[float] = []
    for _ in range(repeats):  # interleaved, so a change of load hits both alike
        first, _result = await first_text(engine, request)
        ttfts.append(first)
        started = time.perf_counter()
        step = await probs_step(engine, request, seed=1)
        steps.append(time.perf_counter() - started)
        forwards.append(step.forward_s)

    renders: list[float] = []
    png = b""
    for _ in range(repeats + 1):
        started = time.perf_counter()
        png = await asyncio.to_thread(render_png, step)
        renders.append(time.perf_counter() - started)
    renders = renders[1:]  # the first render imports matplotlib and loads the font

    pinned = Knobs(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    ask = GenerationRequest(prompt=prompt, knobs=pinned)
    variants = plan_variants(COMPARE_VARIANTS, pinned)
    one: list[float] = []
    three: list[float] = []
    for _ in range(2):
        started = time.perf_counter()
        result = await engine.generate(ask)
        one.append(time.perf_counter() - started)
        assert result.new_tokens == new_tokens, result
        started = time.perf_counter()
        _seed, results = await compare(engine, ask, variants)
        three.append(time.perf_counter() - started)
        assert all(r.result.new_tokens == new_tokens for r in results), results

    ttft = statistics.median(ttfts)
    probs = statistics.median(steps)
    one_s = statistics.median(one)
    three_s = statistics.median(three)
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_s": round(ttft, 4),
        "probs_step_s": round(probs, 4),
        "probs_forward_s": round(statistics.median(forwards), 4),
        "probs_step_over_ttft": round(probs / ttft, 3),
        "chart_render_ms": round(statistics.median(renders) * 1000, 1),
        "chart_render_max_ms": round(max(renders) * 1000, 1),
        "chart_png_bytes": len(png),
        "chart_candidates": len(step.candidates),
        "compare_new_tokens": new_tokens,
        "one_ask_s": round(one_s, 3),
        "compare_3_variants_s": round(three_s, 3),
        "compare_3_over_one_ask": round(three_s / one_s, 3),
        "lanes": engine.info.inter_threads,
    }


async def run_lab_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import load_engine, model_dir_for

    engine = await load_engine(settings, model_dir_for(settings))
    try:
        out: dict[str, Any] = {
            "model": engine.info.model_name,
            "device": engine.info.device,
            "compute_type": engine.info.compute_type,
            "cpu_threads": engine.info.cpu_threads,
            "inter_threads": engine.info.inter_threads,
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        out.update(await lab_bench(engine, new_tokens=args.new_tokens))
        out["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        out["rss_mb"] = round(rss_mb(), 1)
        return out
    finally:
        await engine.close()
