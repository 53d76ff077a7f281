"""The scheduler on mixed work: batches of similar length, personas, preemption costs.

Each decision here depends on token counts and a pinned `CostModel`, never on how
fast the test machine happens to be.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.engine import Engine, EngineOptions, FinishReason, GenerationRequest, Turn
from bot.engine.policy import CostModel
from bot.knobs import Knobs
from testing.backends import CudaRules, Exploding, Slowed

ROOT = Path(__file__).resolve().parents[2]
PERSONA = (
    "You are a patient librarian who answers briefly, cites the shelf where a book "
    "lives and never guesses a date you do not know."
)


class Spy:
    """Record each call's batch (prompt lengths, static prompt length), then pass it on."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.batches: list[list[int]] = []
        self.static: list[int] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.batches.append([len(t) for t in start_tokens])
        self.static.append(len(kw.get("static_prompt") or ()))
        return self.real.generate_batch(start_tokens, **kw)


async def load(model_dir: Path, **kw: Any) -> Engine:
    engine = await Engine.load(
        model_dir, EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=0, **kw)
    )
    engine.set_backend(CudaRules(engine.backend, engine.info.vocab_size, engine.info.compute_type))
    return engine


async def test_a_long_prompt_is_not_batched_with_short_ones(tiny_model_dir: Path) -> None:
    """CTranslate2 would read the long one a token per step: it gets its own call."""
    engine = await load(tiny_model_dir, max_batch_size=8)
    spy = Spy(engine.backend)
    engine.set_backend(spy)
    try:
        knobs = Knobs(max_new_tokens=4)
        gens = [engine.submit(GenerationRequest("word " * 50, knobs))]
        gens += [engine.submit(GenerationRequest(f"short {i}", knobs)) for i in range(5)]
        results = await asyncio.gather(*(g.result() for g in gens))
        assert all(r.error is None for r in results)
        assert sorted(len(b) for b in spy.batches) == [1, 5]
        for batch in spy.batches:
            assert max(batch) - min(batch) <= 16
    finally:
        await engine.close()


async def test_a_persona_is_read_apart_and_shared_by_its_batch(tiny_model_dir: Path) -> None:
    engine = await load(tiny_model_dir, max_batch_size=8)
    spy = Spy(engine.backend)
    engine.set_backend(spy)
    try:
        knobs = Knobs(max_new_tokens=3)
        ask = GenerationRequest("Where is the atlas?", knobs, system_prompt=PERSONA)
        prepared = engine.prepare(ask)
        n = prepared.prefix_tokens
        assert n >= 32
        follow = GenerationRequest(
            "And the maps?", knobs, system_prompt=PERSONA,
            history=(Turn("user", "Where is the atlas?"), Turn("assistant", "Shelf 4.")),
        )
        assert engine.prepare(follow).tokens[:n] == prepared.tokens[:n]
        assert engine.prepare(follow).prefix_tokens == n
        assert engine.prepare(GenerationRequest("hi", system_prompt="Be brief.")).prefix_tokens == 0
        gens = [engine.submit(GenerationRequest(f"Where is book {i}?", knobs,
                                                system_prompt=PERSONA)) for i in range(3)]
        await asyncio.gather(*(g.result() for g in gens))
        assert len(spy.batches) == 1 and len(spy.batches[0]) == 3
        assert spy.static == [n]
        await engine.generate(ask)
        assert spy.static == [n, n]
        assert engine.persona_cache.hits >= 1
        # Tokens read: the persona once, each suffix once.
        suffixes = sum(len(engine.prepare(g.request).tokens) - n for g in gens)
        suffixes += len(prepared.tokens) - n
        assert engine.prompt_tokens_read == n + suffixes
    finally:
        await engine.close()


async def test_timeslices_do_not_thrash_when_rereading_costs_more(tiny_model_dir: Path) -> None:
    """A slice lasts at least 4x its re-read: long prompts with short replies run through."""
    engine = await load(tiny_model_dir, max_batch_size=4, timeslice_s=0.05)
    engine.set_backend(Slowed(engine.backend, delay=0.01))
    engine.costs = CostModel(prefill_s=0.01, step_s=0.01, fixed=True)  # ~130 tokens: 1.3 s
    try:
        gens = [
            engine.submit(GenerationRequest("word " * 40, Knobs(
                temperature=t, max_new_tokens=40, min_new_tokens=40)))
            for t in (0.5, 0.8, 1.1)
        ]
        results = await asyncio.gather(*(g.result() for g in gens))
        assert [r.new_tokens for r in results] == [40, 40, 40]
        assert engine.preemptions == 0
        assert engine.prompt_tokens_read == engine.prompt_tokens_submitted
    finally:
        await engine.close()


async def test_a_timeslice_counts_decoding_and_resumes_where_it_stopped(
    tiny_model_dir: Path,
) -> None:
    engine = await load(tiny_model_dir, max_batch_size=4, timeslice_s=0.1)
    engine.set_backend(Slowed(engine.backend, delay=0.01))
    engine.costs = CostModel(prefill_s=0.00001, step_s=0.01, fixed=True)
    try:
        greedy = Knobs(top_k=1, max_new_tokens=120, min_new_tokens=120)
        alone = await engine.generate(GenerationRequest("long", greedy))
        long = engine.submit(GenerationRequest("long", greedy))
        await asyncio.sleep(0.05)
        other = engine.submit(GenerationRequest("other", Knobs(temperature=1.3,
                                                               max_new_tokens=5,
                                                               min_new_tokens=5)))
        assert (await other.result()).new_tokens == 5
        r = await long.result()
        assert engine.preemptions >= 1
        assert r.text == alone.text and r.new_tokens == 120
        assert engine.prompt_tokens_read > engine.prompt_tokens_submitted  # it was re-read
    finally:
        await engine.close()


async def test_a_failing_batch_ends_only_its_own_replies_with_two_lanes(
    tiny_model_dir: Path,
) -> None:
    engine = await load(tiny_model_dir, inter_threads=2, max_batch_size=4)
    engine.set_backend(Exploding(engine.bundle.tokenizer, "fine " * 30, delay=0.01))
    try:
        bad = engine.submit(GenerationRequest("EXPLODE now", Knobs(max_new_tokens=30)))
        good = engine.submit(GenerationRequest("calm", Knobs(temperature=1.2,
                                                             max_new_tokens=30)))
        r_bad, r_good = await bad.result(), await good.result()
        assert r_bad.finish_reason == FinishReason.ERROR
        assert r_good.error is None and r_good.new_tokens == 30
    finally:
        await engine.close()


@pytest.mark.slow
def test_bench_mixed_prints_every_key(tiny_model_dir: Path) -> None:
    """`bench --mixed --json` on a tiny model for a few seconds: the keys, not the speed."""
    env = {**os.environ, "BOT_MODEL_DIR": str(tiny_model_dir), "BOT_DEVICE": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", "bench", "--mixed", "--json",
         "--minutes", "0.05"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    for key in (
        "long_prompt_tokens", "ttft_alone_s", "ttft_mixed_s", "ttft_mixed_over_alone",
        "join_max_gap_ms", "join_median_gap_ms", "persona_first_ttft_s",
        "persona_second_ttft_over_first", "timeslice_wall_over_serial",
        "reprefill_tokens_ratio", "open_ttft_p50_s", "open_ttft_p99_s",
        "open_aggregate_tok_s", "rss_mb_start", "rss_mb_end",
    ):
        assert key in figures, key
    assert "[mixed]" in out.stderr


async def test_a_batch_that_yielded_to_a_timeslice_comes_back_whole(tiny_model_dir: Path) -> None:
    """Replies of slightly different lengths resume in one call, not one by one.

    (No minimum length: `min_length` is one value per call, and the longer prompts,
    read a token per step, have written fewer tokens when the batch yields.)
    """
    engine = await load(tiny_model_dir, max_batch_size=4, timeslice_s=0.1)
    spy = Spy(Slowed(engine.backend, delay=0.01))
    engine.set_backend(spy)
    engine.costs = CostModel(prefill_s=0.00001, step_s=0.01, fixed=True)
    try:
        knobs = Knobs(top_k=1, max_new_tokens=60)
        group = [engine.submit(GenerationRequest("word " * n, knobs)) for n in (1, 3, 5)]
        await asyncio.sleep(0.05)
        other = engine.submit(GenerationRequest("other", Knobs(temperature=1.3,
                                                               max_new_tokens=5,
                                                               min_new_tokens=5)))
        await other.result()
        results = await asyncio.gather(*(g.result() for g in group))
        assert [r.new_tokens for r in results] == [60, 60, 60]
        assert engine.preemptions >= 1
        assert [len(b) for b in spy.batches][:3] == [3, 1, 3]
    finally:
        await engine.close()


async def test_a_burst_is_not_spread_over_the_lane_another_kind_needs(
    tiny_model_dir: Path,
) -> None:
    """5 short asks then a long one, two replicas: the shorts share one lane, the long the other.

    Spreading the shorts over both lanes (3 + 2) would leave the long ask waiting
    for a whole batch to finish before its prompt is even read.
    """
    engine = await load(tiny_model_dir, inter_threads=2, max_batch_size=8)
    spy = Spy(engine.backend)
    engine.set_backend(spy)
    try:
        knobs = Knobs(max_new_tokens=4)
        gens = [engine.submit(GenerationRequest(f"short {i}", knobs)) for i in range(5)]
        gens.append(engine.submit(GenerationRequest("word " * 50, knobs)))
        await asyncio.gather(*(g.result() for g in gens))
        assert sorted(len(b) for b in spy.batches) == [1, 5]
    finally:
        await engine.close()


def test_cuda_rules_refuse_what_a_gpu_refuses() -> None:
    class Never:
        def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
            return []

    rules = CudaRules(Never(), vocab_size=49152)
    with pytest.raises(RuntimeError, match="8192 classes"):
        rules.generate_batch([["a"]], sampling_topk=0, sampling_topp=0.95)
    with pytest.raises(ValueError, match="vocabulary size"):
        CudaRules(Never(), vocab_size=40).generate_batch([["a"]], sampling_topk=50)
    with pytest.raises(ValueError, match="not supported on CUDA"):
        CudaRules(Never(), vocab_size=40, compute_type="int16")
    assert rules.generate_batch([["a"]], sampling_topk=8192, sampling_topp=0.95) == []
    assert rules.generate_batch([["a"]], sampling_topk=1, sampling_topp=0.5) == []
