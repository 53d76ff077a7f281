"""A reply with a repetition penalty is the same alone, under timeslices and when joined.

CTranslate2 penalizes the tokens it decoded in a call, not the prompt it read in one
pass: re-submitting a reply as prompt + reply so far (how a preempted or joined
reply resumes) makes it forget what it said. The control below shows that on the
tiny model; the engine therefore runs such a reply in one call of equal prompt
lengths, and the stories check it comes out token for token as it does alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import ctranslate2

from bot.engine import Engine, EngineOptions, GenerationRequest
from bot.engine.policy import CostModel
from bot.knobs import Knobs
from bot.model.bundle import load_model_bundle
from testing.backends import Slowed

PENALIZED = Knobs(top_k=1, repetition_penalty=2.0, max_new_tokens=100, min_new_tokens=100)
PROMPT = "Tell me a story about the sea"


def test_control_ctranslate2_forgets_a_resumed_replys_tokens(tiny_model_dir: Path) -> None:
    """Why the engine must not resume these replies: the hazard is real on this model."""
    bundle = load_model_bundle(tiny_model_dir)
    generator = ctranslate2.Generator(str(tiny_model_dir), device="cpu")
    prompt = [bundle.tokenizer.id_to_token(i) for i in bundle.encode_chat(None, PROMPT)]
    kw = {"max_length": 100, "sampling_topk": 1, "end_token": [],
          "include_prompt_in_result": False}
    alone = generator.generate_batch([prompt], repetition_penalty=3.0, **kw)[0].sequences[0]
    plain = generator.generate_batch([prompt], repetition_penalty=1.0, **kw)[0].sequences[0]
    assert alone != plain  # the penalty changes this reply
    resumed = generator.generate_batch(
        [prompt + alone[:15]], repetition_penalty=3.0, **{**kw, "max_length": 85}
    )[0].sequences[0]
    assert resumed != alone[15:]


async def _engine(model_dir: Path, **kw: object) -> Engine:
    engine = await Engine.load(
        model_dir, EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=0, **kw)  # type: ignore[arg-type]
    )
    engine.set_backend(Slowed(engine.backend, delay=0.01))
    engine.costs = CostModel(prefill_s=0.00001, step_s=0.01, fixed=True)
    return engine


async def test_same_alone_under_a_timeslice_and_joined(tiny_model_dir: Path) -> None:
    engine = await _engine(tiny_model_dir, max_batch_size=4, timeslice_s=0.1)
    try:
        alone = await engine.generate(GenerationRequest(PROMPT, PENALIZED))
        assert alone.new_tokens == 100

        # Others with other settings wait past the timeslice: no preemption.
        long = engine.submit(GenerationRequest(PROMPT, PENALIZED))
        await asyncio.sleep(0.05)
        other = engine.submit(GenerationRequest("other", Knobs(temperature=1.3,
                                                               max_new_tokens=5)))
        assert (await long.result()).text == alone.text
        await other.result()

        # Asks with the same settings arrive while it decodes: it is not restarted.
        long = engine.submit(GenerationRequest(PROMPT, PENALIZED))
        await asyncio.sleep(0.05)
        newcomers = [engine.submit(GenerationRequest(f"word {n}", PENALIZED)) for n in range(3)]
        assert (await long.result()).text == alone.text
        await asyncio.gather(*(g.result() for g in newcomers))

        # Submitted together with prompts of other lengths: read as if alone.
        together = [engine.submit(GenerationRequest(p, PENALIZED))
                    for p in ("Hi", PROMPT, "A much longer question about boats and ships")]
        results = await asyncio.gather(*(g.result() for g in together))
        assert results[1].text == alone.text
        assert engine.preemptions == 0
    finally:
        await engine.close()


async def test_a_reply_without_penalty_still_yields(tiny_model_dir: Path) -> None:
    """The rule is for penalized replies only: others keep timeslices and joins."""
    engine = await _engine(tiny_model_dir, max_batch_size=4, timeslice_s=0.1)
    try:
        greedy = Knobs(top_k=1, max_new_tokens=100, min_new_tokens=100)
        long = engine.submit(GenerationRequest(PROMPT, greedy))
        await asyncio.sleep(0.05)
        other = engine.submit(GenerationRequest("other", Knobs(temperature=1.3,
                                                               max_new_tokens=5)))
        await asyncio.gather(long.result(), other.result())
        assert engine.preemptions >= 1
    finally:
        await engine.close()
