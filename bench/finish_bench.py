"""`python -m bench --finish --json`: how often an everyday answer ends on its own.

At a `max_new_tokens` of 128, five of six ordinary answers from
the embedded model were "cut at the limit". This asks each prompt of
`bench/data/everyday_prompts.txt` once, through the engine with the default
knobs (a fixed seed, one ask at a time), with the largest candidate as the
budget, and reports for each candidate default the share of answers that
ended on their own within it, the median tokens and the time an answer of that
length takes. One run serves every candidate: the budget never changes what is
sampled before it (the same seed, the same order), so an answer that ends on
its own at 230 tokens under a budget of 512 ends there under any budget of at
least 230, and is cut under any smaller one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.engine import Engine, FinishReason, GenerationRequest
from bot.knobs import Knobs

PROMPTS_FILE = Path(__file__).with_name("data") / "everyday_prompts.txt"
CANDIDATES = (128, 256, 384, 512)
SEED = 1234


def everyday_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


async def finish_bench(engine: Engine, prompts: list[str], system_prompt: str | None,
                       candidates: tuple[int, ...] = CANDIDATES) -> dict[str, Any]:
    budget = max(candidates)
    knobs = Knobs().model_copy(update={"max_new_tokens": budget})
    answers: list[tuple[int, bool, float]] = []  # tokens, ended on its own, seconds
    for prompt in prompts:
        start = time.perf_counter()
        result = await engine.submit(GenerationRequest(
            prompt=prompt, knobs=knobs, system_prompt=system_prompt)).result()
        own = result.finish_reason in (FinishReason.END, FinishReason.STOP_SEQUENCE)
        answers.append((result.new_tokens, own, time.perf_counter() - start))
    tok_s = sum(t for t, _, _ in answers) / max(1e-9, sum(s for _, _, s in answers))
    by_candidate: dict[str, Any] = {}
    for cap in candidates:
        ended = [t for t, own, _ in answers if own and t <= cap]
        lengths = [min(t, cap) for t, _, _ in answers]
        by_candidate[str(cap)] = {
            "ended_on_their_own": len(ended),
            "share_ended": round(len(ended) / len(answers), 3),
            "median_tokens": statistics.median(lengths),
            "median_seconds_at_measured_speed": round(statistics.median(lengths) / tok_s, 2),
        }
    return {
        "prompts": len(prompts),
        "budget": budget,
        "seed": SEED,
        "decode_tok_s": round(tok_s, 1),
        "tokens_when_unbounded": sorted(t for t, _, _ in answers),
        "cut_at_budget": sum(1 for _, own, _ in answers if not own),
        "candidates": by_candidate,
    }


async def run_finish_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import load_engine, model_dir_for

    seeded = settings.model_copy(update={"seed": SEED})
    engine = await load_engine(seeded, model_dir_for(seeded))
    try:
        out: dict[str, Any] = {"model": engine.info.model_name, "device": engine.info.device}
        out.update(await finish_bench(engine, everyday_prompts(),
                                      settings.system_prompt or None))
        return out
    finally:
        await engine.close()
