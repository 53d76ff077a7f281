"""The knobs lab: the numbers are the model's, the knobs act as the engine's do.

A tiny random float32 Llama built from a GGUF gives an independent reference: a
float64 numpy forward pass of the same weights (`numpy_llama_logits`). CTranslate2
itself, called directly with the engine's own sampling arguments and
`return_logits_vocab`, is the reference for the logits processors (repetition
penalty, min_length). The embedded SmolLM2 checks the 8,192-candidate bound and
the near-zero temperature on a real distribution.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
import pytest

from bot.engine import Engine, EngineOptions, FinishReason, GenerationRequest
from bot.engine.generation import TOP_P_MAX_CANDIDATES, device_sampling
from bot.errors import InvalidKnobs, ShuttingDown, UserFacingError
from bot.knobs import KNOB_NAMES, KNOB_SPECS, PRESETS, Knobs, build_knobs
from bot.lab.chart import MAX_PNG_BYTES, render_png
from bot.lab.compare import (
    COMPARE_NEW_TOKENS,
    compare,
    parse_variant,
    plan_variants,
    start_compare,
    variant_requests,
)
from bot.lab.confidence import render_ansi, render_plain, score_reply, surprising_lines
from bot.lab.help import KNOB_HELP, assignment, contrasting, markdown_table
from bot.lab.probs import format_table, probs_step
from bot.lab.sampling import apply_knobs, penalize, softmax
from bot.model.gguf_convert import LlamaParams, convert_gguf
from testing.model_factory import (
    numpy_llama_logits,
    read_gguf_weights,
    tiny_params,
    write_tiny_llama_gguf,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "hello there, how are you today?"


@dataclass
class Reference:
    model_dir: Path
    weights: dict[str, npt.NDArray[np.float32]]
    params: LlamaParams

    def logits(self, ids: list[int]) -> npt.NDArray[np.float64]:
        return numpy_llama_logits(self.weights, self.params, ids)


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    tmp = tmp_path_factory.mktemp("lab")
    gguf_path = write_tiny_llama_gguf(tmp / "tiny.gguf", seed=5)
    model_dir = convert_gguf(gguf_path, tmp / "model", quantization="float32")
    weights = read_gguf_weights(gguf_path)
    vocab = weights["token_embd.weight"].shape[0]
    return Reference(model_dir, weights, tiny_params(vocab_size=vocab))


@pytest.fixture
async def engine(ref: Reference) -> AsyncIterator[Engine]:
    e = await Engine.load(ref.model_dir, EngineOptions(
        device="cpu", cpu_threads=1, batch_wait_ms=5, compute_type="float32"))
    yield e
    await e.close()


def prompt_ids(engine: Engine, prompt: str = PROMPT, system: str | None = None) -> list[int]:
    """The prompt's ids by the bundle's own encoder (not through the lab or `prepare`)."""
    return engine.bundle.encode_chat(system, prompt)


# --------------------------------------------------------------------------- raw and final


async def test_raw_is_an_independent_softmax_of_the_same_models_logits(
    engine: Engine, ref: Reference
) -> None:
    step = await probs_step(engine, GenerationRequest(PROMPT, system_prompt="Be kind."), top=40)
    expected = softmax(ref.logits(prompt_ids(engine, system="Be kind."))[-1])
    assert len(step.candidates) >= 40
    for c in step.candidates:
        assert c.raw == pytest.approx(expected[c.id], rel=1e-3, abs=1e-7)
    # The candidates are the model's most likely tokens, in order (near-ties may swap).
    top = np.sort(expected)[::-1][:10]
    assert [c.raw for c in step.candidates[:10]] == pytest.approx(top.tolist(), rel=1e-3)


async def test_final_sums_to_one_over_the_kept_tokens_and_is_zero_elsewhere(
    engine: Engine,
) -> None:
    for values in ({}, {"temperature": 1.7, "top_p": 0.6}, {"top_k": 7, "top_p": 1.0},
                   {"repetition_penalty": 1.0, "top_k": 20}, PRESETS["precise"]):
        knobs = build_knobs(dict(values))
        step = await probs_step(engine, GenerationRequest(PROMPT, knobs=knobs), top=5)
        dist = step.dist
        assert dist.final[dist.kept].sum() == pytest.approx(1.0, abs=1e-6)
        assert not dist.final[~dist.kept].any()
        assert step.kept == int(dist.kept.sum()) >= 1
        assert step.left_out == pytest.approx(float(dist.raw[~dist.kept].sum()))


async def test_top_k_keeps_exactly_k(engine: Engine) -> None:
    for k in (2, 5, 17, 50):
        knobs = Knobs(top_k=k, top_p=1.0, temperature=1.0)
        step = await probs_step(engine, GenerationRequest(PROMPT, knobs=knobs))
        assert step.kept == k
        kept = set(np.flatnonzero(step.dist.kept).tolist())
        assert kept == set(np.argsort(-step.dist.raw, kind="stable")[:k].tolist())
        assert step.removed_counts["top_k"] == step.dist.raw.size - k


def smallest_nucleus(logits: npt.NDArray[Any], temperature: float, p: float,
                     bound: int) -> set[int]:
    """The smallest set of likeliest tokens whose mass (after temperature) reaches p."""
    order = np.argsort(-logits)[:bound]
    probs = softmax(logits[order] / temperature)
    cum = np.cumsum(probs)
    m = int(np.searchsorted(cum, p - 1e-6)) + 1
    return {int(i) for i in order[:m]}


async def test_top_p_keeps_the_smallest_set_reaching_p_after_temperature(
    engine: Engine, ref: Reference
) -> None:
    logits = ref.logits(prompt_ids(engine))[-1]
    for temperature, p in ((0.7, 0.5), (1.0, 0.9), (2.0, 0.3), (0.3, 0.95)):
        knobs = Knobs(temperature=temperature, top_p=p)
        step = await probs_step(engine, GenerationRequest(PROMPT, knobs=knobs))
        kept = set(np.flatnonzero(step.dist.kept).tolist())
        assert kept == smallest_nucleus(logits, temperature, p, TOP_P_MAX_CANDIDATES)
        # Smallest: without its least likely token the set falls short of p.
        tempered = softmax(logits / temperature)
        least = min(kept, key=lambda i: tempered[i])
        assert tempered[list(kept - {least})].sum() < p <= tempered[list(kept)].sum() + 1e-6


async def test_top_p_zero_is_greedy(engine: Engine) -> None:
    step = await probs_step(engine, GenerationRequest(PROMPT, knobs=Knobs(top_p=0.0)))
    assert step.kept == 1
    assert step.greedy.final == 1.0
    assert step.greedy.id == int(np.argmax(step.dist.raw))
    assert step.removed_counts["top_p"] == step.dist.raw.size - 1


def test_temperature_sharpens_until_the_top_token_has_all_the_mass() -> None:
    logits = np.array([2.0, 1.0, 0.5, -1.0, 0.0], dtype=np.float32)
    tops = [apply_knobs(logits, Knobs(temperature=t, top_p=1.0)).final[0]
            for t in (5.0, 1.0, 0.5, 0.1)]
    assert tops == sorted(tops)
    assert tops[-1] > 0.9999
    # With the default top_p the nucleus is the top token alone: all the mass, exactly.
    sharp = apply_knobs(logits, Knobs(temperature=0.1))
    assert sharp.final[0] == 1.0 and int(sharp.kept.sum()) == 1


# --------------------------------------------------------------------------- CTranslate2 itself


def ct2_steps(model_dir: Path, tokens: list[str], knobs: Knobs, vocab: int, steps: int,
              end_ids: list[int]) -> tuple[list[int], list[npt.NDArray[np.float32]]]:
    """Ids and the processed logits of each step, from CTranslate2 called as the engine does."""
    generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=1)
    result = generator.generate_batch(
        [tokens], max_length=steps, include_prompt_in_result=False, end_token=end_ids,
        return_end_token=True, return_logits_vocab=True, **device_sampling(knobs, vocab),
    )[0]
    logits = [np.asarray(step, dtype=np.float32) for step in result.logits[0]]
    return list(result.sequences_ids[0]), logits


async def test_repetition_penalty_and_min_length_match_ctranslate2(
    engine: Engine, ref: Reference
) -> None:
    knobs = Knobs(top_p=0.0, repetition_penalty=2.0, min_new_tokens=4, max_new_tokens=8)
    vocab = engine.info.vocab_size
    request = GenerationRequest(PROMPT, knobs=knobs)
    tokens = engine.prepare(request).tokens
    ends = list(engine.bundle.end_token_ids)
    ids, processed = ct2_steps(ref.model_dir, tokens, knobs, vocab, 8, ends)
    assert len(ids) >= 5
    mattered = 0
    generated: list[int] = []
    for n, token in enumerate(ids):
        step = await probs_step(engine, request, generated=generated)
        ours = step.dist.processed
        finite = processed[n] > np.finfo(np.float32).min
        assert np.allclose(ours[finite], processed[n][finite], atol=2e-4)
        # The end tokens are held back exactly while min_new_tokens asks for it.
        for end in engine.bundle.end_token_ids:
            assert (ours[end] == np.finfo(np.float32).min) == (n < 4)
            assert (processed[n][end] == np.finfo(np.float32).min) == (n < 4)
        assert step.greedy.id == token
        if int(np.argmax(step.dist.raw)) != token:
            mattered += 1
        if token in ends:
            break
        generated.append(token)
    assert mattered >= 1, "the penalty never changed the pick: the test proves nothing"


async def test_ctranslate2_samples_only_kept_tokens_at_the_labs_frequencies(
    engine: Engine, ref: Reference
) -> None:
    """Top-k, temperature and top-p in CTranslate2's own sampler: 1,000 one-token draws."""
    ctranslate2.set_random_seed(1234)  # before the Generator: its threads' seed
    generator = ctranslate2.Generator(str(ref.model_dir), device="cpu", intra_threads=1)
    vocab = engine.info.vocab_size
    for knobs in (Knobs(temperature=5.0, top_p=0.6), Knobs(temperature=5.0, top_k=6, top_p=0.9)):
        request = GenerationRequest("a", knobs=knobs)  # a flat step of this random model
        step = await probs_step(engine, request)
        final = step.dist.final
        assert step.kept >= 2 and final.max() < 0.9, "a flat enough step to learn something"
        tokens = engine.prepare(request).tokens
        n = 1000
        results = generator.generate_batch(
            [tokens] * n, max_length=1, include_prompt_in_result=False, end_token=[],
            **device_sampling(knobs, vocab),
        )
        draws = np.array([r.sequences_ids[0][0] for r in results])
        assert set(draws.tolist()) <= set(np.flatnonzero(step.dist.kept).tolist())
        for token in np.flatnonzero(final > 0.05):
            p = final[token]
            freq = float(np.mean(draws == token))
            assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n), (token, freq, p)


def test_penalty_formula_on_negative_and_positive_scores() -> None:
    logits = np.array([2.0, -2.0, 1.0, -1.0], dtype=np.float32)
    out = penalize(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, -1.0]


# --------------------------------------------------------------------------- seeds and steps


async def test_seeded_sample_is_repeatable_and_follows_final(engine: Engine) -> None:
    knobs = Knobs(temperature=1.5, top_p=1.0)
    request = GenerationRequest(PROMPT, knobs=knobs)
    a = await probs_step(engine, request, seed=42)
    b = await probs_step(engine, request, seed=42)
    assert a.sample is not None and b.sample is not None
    assert a.sample.id == b.sample.id
    draws = np.array([a.dist.draw(seed, 0) for seed in range(3000)])
    top = a.greedy.id
    p = a.dist.final[top]
    freq = float(np.mean(draws == top))
    assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / draws.size)
    assert all(a.dist.kept[d] for d in set(draws.tolist()))


async def test_stepping_appends_the_chosen_token_and_stops_at_the_end(engine: Engine) -> None:
    request = GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=2))
    first = await probs_step(engine, request, seed=1)
    nxt = first.then(first.greedy.id)
    second = await probs_step(engine, request, generated=nxt, seed=1)
    assert second.step == 1 and second.generated == (first.greedy.id,)
    third = await probs_step(engine, request, generated=second.then(second.greedy.id))
    assert third.at_limit
    with pytest.raises(UserFacingError, match="limit of 2 tokens"):
        third.then(third.greedy.id)
    end = engine.bundle.end_token_ids[0]
    with pytest.raises(UserFacingError, match="ends the reply"):
        first.then(end)
    with pytest.raises(UserFacingError, match="does not have"):
        await probs_step(engine, request, generated=[10**7])


async def test_table_and_json_name_what_each_knob_removed(engine: Engine) -> None:
    knobs = Knobs(top_k=5, top_p=0.5, min_new_tokens=2)
    step = await probs_step(engine, GenerationRequest(PROMPT, knobs=knobs), seed=3)
    table = format_table(step)
    assert "top_k removed" in table and "min_new_tokens removed 1 token" in table
    assert f"a sample with seed 3 picks {step.sample.text if step.sample else ''}" in table
    data = step.to_json()
    assert data["knobs"]["top_k"] == 5
    assert {"id", "text", "raw", "final"} <= set(data["candidates"][0])
    ends = len(engine.bundle.end_token_ids)
    assert data["removed"]["min_new_tokens"] == ends
    assert data["removed"]["top_k"] == step.dist.raw.size - 5 - ends


async def test_token_texts_show_spaces_and_byte_fragments(smol_engine: Engine) -> None:
    step = await probs_step(smol_engine, GenerationRequest("Say hello"), top=40)
    labels = [c.text for c in step.candidates]
    assert all(" " not in t for t in labels)  # a space is drawn, never blank
    # An emoji's first byte on its own is shown as bytes, not as an empty string.
    tok = smol_engine.bundle.tokenizer
    (first, *_rest) = tok.encode("🙂")
    from bot.lab.probs import make_candidate

    cand = make_candidate(smol_engine, step.dist, [], first)
    assert cand.text.startswith("<0x")


# --------------------------------------------------------------------------- the embedded model


async def test_embedded_model_raw_matches_its_own_logits_and_the_bound(
    smol_engine: Engine, smol_model_dir: Path
) -> None:
    request = GenerationRequest("What is the capital of France?")
    step = await probs_step(smol_engine, request, top=20)
    ids = smol_engine.bundle.encode_chat(None, "What is the capital of France?")

    def reference() -> np.ndarray[Any, Any]:
        generator = ctranslate2.Generator(str(smol_model_dir), device="cpu", intra_threads=1)
        return np.asarray(generator.forward_batch([ids]), dtype=np.float32)[0][-1]

    # A model load and a forward pass: off the event loop, as the bot does them.
    logits = await asyncio.to_thread(reference)
    expected = softmax(logits)
    for c in step.candidates:
        assert c.raw == pytest.approx(expected[c.id], rel=0.02, abs=1e-6)
    # Default knobs: the nucleus is taken among the 8,192 likeliest (the engine's bound).
    assert step.removed_counts["candidate_bound"] == logits.size - TOP_P_MAX_CANDIDATES
    kept = set(np.flatnonzero(step.dist.kept).tolist())
    own = step.dist.processed.astype(np.float64)
    assert kept == smallest_nucleus(own, 0.7, 0.95, TOP_P_MAX_CANDIDATES)
    sharp = await probs_step(smol_engine, GenerationRequest(request.prompt,
                                                            knobs=Knobs(temperature=0.1)))
    assert sharp.kept == 1 and sharp.greedy.final == 1.0


# --------------------------------------------------------------------------- Engine.forward


async def test_forward_queues_with_generations_and_gives_the_same_logits(
    engine: Engine,
) -> None:
    tokens = engine.prepare(GenerationRequest(PROMPT)).tokens
    alone = await engine.forward(tokens)
    gens = [engine.submit(GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=64)))
            for _ in range(3)]
    during = await engine.forward(tokens)
    results = [await g.result() for g in gens]
    assert all(r.new_tokens > 0 for r in results)
    assert np.allclose(alone, during, atol=1e-4)
    await engine.close()
    with pytest.raises(ShuttingDown):
        await engine.forward(tokens)


# --------------------------------------------------------------------------- compare


async def test_compare_runs_one_request_per_variant_with_one_seed(engine: Engine) -> None:
    base = GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=12), system_prompt="Be brief.")
    variants = plan_variants(["temperature=0.1", "temperature=1.5 top_p=1", "creative"],
                             base.knobs)
    seed, results = await compare(engine, base, variants, seed=1234)
    assert seed == 1234
    assert [r.label for r in results] == ["temperature=0.1", "temperature=1.5 top_p=1",
                                          "creative"]
    assert results[0].knobs.temperature == 0.1
    assert results[1].knobs.top_p == 1.0 and results[1].knobs.temperature == 1.5
    assert results[2].knobs.repetition_penalty == PRESETS["creative"]["repetition_penalty"]
    assert all(r.knobs.max_new_tokens == 12 for r in results)
    assert all(r.result.new_tokens > 0 for r in results)
    out = [r.to_json(seed) for r in results]
    assert all({"knobs", "text", "seed"} <= set(o) and o["seed"] == 1234 for o in out)


async def test_compare_defaults_caps_and_stop(engine: Engine) -> None:
    base = Knobs(temperature=0.7, max_new_tokens=16)
    plan = plan_variants([None, "", None], base)
    assert [v.label for v in plan] == ["current settings: temperature 0.7, top_p 0.95",
                                       "temperature=1.5"]
    assert [v.label for v in plan_variants(["top_k=1"], base, "this channel")] == [
        "this channel: temperature 0.7, top_p 0.95", "top_k=1"]
    with pytest.raises(InvalidKnobs, match="Variant b: "):
        plan_variants(["top_k=1", "temperature=hot"], base)
    # Variants stop at the comparison's own length unless one asks for more (within the cap).
    long = GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=512, min_new_tokens=300))
    requests = variant_requests(long, plan_variants(["top_k=1", "max_new_tokens=400"], base))
    assert [r.knobs.max_new_tokens for r in requests] == [COMPARE_NEW_TOKENS, 400]
    assert requests[0].knobs.min_new_tokens == COMPARE_NEW_TOKENS
    request = GenerationRequest(PROMPT, knobs=base)
    # A variant cannot widen the scope's cap.
    _seed, results = await compare(engine, request, plan_variants(["max_new_tokens=500"], base),
                                  cap=16)
    assert all(r.knobs.max_new_tokens == 16 for r in results)
    # Stop stops every variant.
    long = GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=1000, min_new_tokens=1000))
    comparison = start_compare(engine, long, plan_variants(["temperature=0.2",
                                                            "temperature=1.2"], long.knobs))
    seen: set[int] = set()
    async for i, _event in comparison.events():
        seen.add(i)
        if len(seen) == 1:
            comparison.cancel()
    done = await comparison.results()
    assert all(r.result.finish_reason is FinishReason.CANCELLED for r in done)
    assert all(r.result.new_tokens < 1000 for r in done)


def test_variant_parsing_errors_are_plain() -> None:
    assert parse_variant("Creative").overrides == PRESETS["creative"]
    assert parse_variant('temperature=1.5 stop="\\n"').overrides == {
        "temperature": 1.5, "stop": ("\n",)}
    with pytest.raises(InvalidKnobs, match="neither a preset"):
        parse_variant("spicy")
    with pytest.raises(InvalidKnobs, match="temperature"):
        parse_variant("temperature=9")
    with pytest.raises(InvalidKnobs, match="Unknown setting"):
        parse_variant("warmth=1")
    with pytest.raises(UserFacingError, match="at most 4"):
        plan_variants(["top_k=1"] * 5, Knobs())


async def test_compare_that_cannot_queue_leaves_nothing_queued(ref: Reference) -> None:
    engine = await Engine.load(ref.model_dir, EngineOptions(
        device="cpu", cpu_threads=1, queue_size=1, batch_wait_ms=200))
    try:
        request = GenerationRequest(PROMPT, knobs=Knobs(max_new_tokens=4))
        with pytest.raises(UserFacingError):
            start_compare(engine, request, plan_variants(["top_k=1", "top_k=2"], request.knobs))
        assert engine.queue_depth == 0
    finally:
        await engine.close()


# --------------------------------------------------------------------------- chart and confidence


async def test_chart_renders_a_png_from_a_worker_thread(engine: Engine) -> None:
    step = await probs_step(engine, GenerationRequest(PROMPT, knobs=Knobs(top_k=5)), seed=2)
    where: list[str] = []

    def render() -> bytes:
        where.append(threading.current_thread().name)
        return render_png(step)

    png = await asyncio.to_thread(render)
    assert where and where[0] != threading.main_thread().name
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert 1000 < len(png) < MAX_PNG_BYTES


async def test_confidence_gives_each_reply_token_the_models_probability(
    engine: Engine, ref: Reference
) -> None:
    request = GenerationRequest(PROMPT)
    reply = "hello friend, I am well"
    conf = await score_reply(engine, request, reply)
    prompt = prompt_ids(engine)
    reply_ids = engine.bundle.tokenizer.encode(reply)
    logits = ref.logits(prompt + reply_ids)
    assert [t.id for t in conf.tokens] == reply_ids
    for n, t in enumerate(conf.tokens):
        dist = softmax(logits[len(prompt) - 1 + n])
        assert t.prob == pytest.approx(dist[t.id], rel=1e-3, abs=1e-7)
        assert t.rank == int(np.sum(dist > dist[t.id])) + 1
        assert all(a.prob >= t.prob or t.rank == 1 for a in t.alternatives[:1])
    assert "".join(t.text for t in conf.tokens) == reply
    block, shown = render_ansi(conf)
    assert shown == len(conf.tokens) and block.endswith("\u001b[0m")
    assert render_plain(conf, below=1.1).count("⟨") == len(conf.tokens)
    assert len(surprising_lines(conf, 3)) == 3


# --------------------------------------------------------------------------- knob help


def test_every_knob_has_help_with_the_models_range_and_default() -> None:
    assert set(KNOB_HELP) == set(KNOB_NAMES)
    for name, h in KNOB_HELP.items():
        assert KNOB_SPECS[name].range_text() in h.line()
        assert len(h.what) <= 220
    assert "default 0.7" in KNOB_HELP["temperature"].line()
    assert "default no limit" in KNOB_HELP["top_k"].line()


def test_contrasting_values_are_valid_and_differ() -> None:
    for base in (Knobs(), *(build_knobs(dict(p)) for p in PRESETS.values()),
                 Knobs(temperature=2.0, top_p=0.3, top_k=3, max_new_tokens=40,
                       min_new_tokens=10, stop=("x",), repetition_penalty=1.0)):
        for name in KNOB_NAMES:
            value = contrasting(name, base)
            assert value != getattr(base, name), name
            changed = build_knobs({name: value}, base=base)
            assert getattr(changed, name) == value
            assert parse_variant(assignment(name, value)).overrides == {name: value}


def test_readme_carries_the_knob_help_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme


async def test_lab_bench_reports_every_figure(engine: Engine) -> None:
    from bench.lab_bench import lab_bench

    out = await lab_bench(engine, new_tokens=4, repeats=1, prompt=PROMPT)
    for key in ("ttft_s", "probs_step_s", "probs_step_over_ttft", "chart_render_ms",
                "one_ask_s", "compare_3_variants_s", "compare_3_over_one_ask"):
        assert out[key] > 0, key
    assert out["chart_png_bytes"] < MAX_PNG_BYTES


@pytest.mark.slow
def test_the_lab_imports_no_discord_no_ctranslate2_and_no_matplotlib() -> None:
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "import bot.lab.probs, bot.lab.compare, bot.lab.confidence, bot.lab.chart, "
            "bot.lab.help, bot.lab.sampling\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout))
    assert "bot" in loaded
    assert loaded.isdisjoint({"discord", "cogs", "ctranslate2", "matplotlib", "testing"})


async def test_raw_text_mode_continues_the_text_as_written(smol_engine: Engine) -> None:
    """No chat template: the embedded model completes the sentence itself."""
    request = GenerationRequest("The capital of France is", system_prompt="Be a pirate.")
    raw = await probs_step(smol_engine, request, top=5, raw=True)
    assert raw.raw_text and raw.greedy.decoded == " Paris"
    assert raw.candidates[0].decoded == " Paris"
    tok = smol_engine.bundle.tokenizer
    assert raw.prompt_tokens == len(smol_engine.bundle.with_bos(tok.encode(request.prompt)))
    assert "raw text, no chat template" in format_table(raw).splitlines()[0]
    assert raw.to_json()["mode"] == "raw"
    # Chat mode reads the prompt as a message: the first token of a reply is not " Paris".
    chat = await probs_step(smol_engine, request, top=5)
    assert not chat.raw_text and chat.prompt_tokens > raw.prompt_tokens
    assert chat.greedy.decoded != " Paris"
    nxt = await probs_step(smol_engine, request, generated=(raw.greedy.id,), top=5, raw=True)
    assert nxt.prompt_tokens == raw.prompt_tokens and nxt.step == 1


async def test_chart_names_each_knobs_cut_and_idle_knobs(smol_engine: Engine) -> None:
    """top_k=3 reads "top_k=3 cut", not the first removal's name; a penalty at step 1 and
    a temperature under greedy decoding each get a note."""
    from bot.lab.chart import cut_lines, idle_knobs

    request = GenerationRequest("The capital of France is", knobs=build_knobs(
        {"temperature": 1.5, "top_k": 6, "top_p": 0.8, "repetition_penalty": 0.3}))
    step = await probs_step(smol_engine, request, top=8, seed=7, raw=True)
    names = [name for _, name in cut_lines(step)]
    assert names == ["top_p=0.8 cut", "top_k=6 cut"]
    (y_p, _), (y_k, _) = cut_lines(step)
    by_rank = [c.removed_by for c in step.candidates]
    assert by_rank[int(y_p + 0.5)] == "top_p" and by_rank[int(y_k + 0.5)] == "top_k"
    assert any("repetition_penalty=0.3 has nothing to act on" in n for n in idle_knobs(step))
    after = await probs_step(smol_engine, request, generated=(step.greedy.id,), raw=True)
    assert not any("repetition_penalty" in n for n in idle_knobs(after))
    greedy = await probs_step(smol_engine, GenerationRequest(
        "Hi", knobs=build_knobs({"top_k": 1, "temperature": 0.2})), top=3)
    assert any("temperature=0.2 changes nothing" in n for n in idle_knobs(greedy))
    png = await asyncio.to_thread(render_png, step, prompt=request.prompt)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < MAX_PNG_BYTES


def test_word_odds_mark_low_tokens_in_the_text_as_well_as_by_colour() -> None:
    from bot.lab.confidence import RED, Confidence, ScoredToken, render_ansi

    conf = Confidence((ScoredToken(1, "The", "The", 0.9, 1, ()),
                       ScoredToken(2, " moon", "␣moon", 0.02, 7, ()),
                       ScoredToken(3, " shines", "␣shines", 0.5, 1, ())), 10)
    block, shown = render_ansi(conf)
    assert shown == 3
    assert f"{RED}⟨ moon⟩" in block and "⟨The⟩" not in block and "⟨ shines⟩" not in block
