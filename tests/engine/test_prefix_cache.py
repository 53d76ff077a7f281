"""Persona prefix reuse: the same tokens out, and memory within the configured bound.

The persona (system prompt as rendered) is passed to CTranslate2 as `static_prompt`
and its decoder state kept between asks; these tests hold the two promises that
makes: greedy output does not change, and the kept state never outgrows
`persona_cache_mb`, however many personas come and go.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.common import rss_mb
from bot.engine import Engine, EngineOptions, GenerationRequest, Turn
from bot.engine.policy import PersonaCache
from bot.engine.worker import generate_with_callback
from bot.knobs import Knobs

WORDS = [
    "river", "stone", "lantern", "quiet", "maple", "harbor", "violet", "ember", "canyon",
    "meadow", "falcon", "silver", "orchard", "thunder", "velvet", "cedar", "glacier",
    "saffron", "willow", "copper",
]
PERSONA = (
    "You are Captain Mira Voss, the calm and slightly sardonic navigator of the airship "
    "Halcyon. You answer in short, vivid sentences, you love maps, tides and weather, "
    "you never reveal the ship's cargo, and you end every answer with a nautical proverb "
    "that you invent on the spot. You treat every question as if a passenger had asked it "
    "on the observation deck at dusk, with the engines humming below."
)


class Recorder:
    """Pass calls through and keep each batch item's token ids as they are produced."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.ids: list[list[int]] = []
        self.static: list[int] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        callback = kw.pop("callback")
        ids: list[list[int]] = [[] for _ in start_tokens]
        self.ids.extend(ids)
        self.static.append(len(kw.get("static_prompt") or ()))

        def record(step: Any) -> bool:
            ids[step.batch_id].append(step.token_id)
            return bool(callback(step))

        return generate_with_callback(self.real, start_tokens, record, **kw)


def reference_ids(engine: Engine, request: GenerationRequest, max_new: int) -> list[int]:
    """Greedy ids for the whole prompt in one plain call: no static prompt, no cache."""
    prepared = engine.prepare(request)
    result = engine.backend.generate_batch(
        [prepared.tokens], max_length=max_new, sampling_topk=1, include_prompt_in_result=False,
        end_token=list(engine.bundle.end_token_ids), return_end_token=True,
    )
    return list(result[0].sequences_ids[0])


async def test_float32_greedy_output_is_identical_with_and_without_the_reused_persona(
    smol_model_dir: Path,
) -> None:
    """Token for token: plain prompt, persona read as a static prefix, persona state reused.

    float32 compute (the int8 file's weights dequantized at load), because int8
    quantizes activations per call and so depends on how a prompt is split.
    """
    engine = await Engine.load(smol_model_dir, EngineOptions(
        device="cpu", compute_type="float32", batch_wait_ms=0
    ))
    try:
        knobs = Knobs(top_k=1, max_new_tokens=40)
        ask = GenerationRequest("What should I pack for a night flight?", knobs,
                                system_prompt=PERSONA)
        assert engine.prepare(ask).prefix_tokens >= 64
        expected = reference_ids(engine, ask, 40)
        recorder = Recorder(engine.backend)
        engine.set_backend(recorder)

        first = await engine.generate(ask)  # persona read and kept
        second = await engine.generate(ask)  # persona state copied from the cache
        assert engine.persona_cache.hits >= 1
        assert recorder.static[:2] == [engine.prepare(ask).prefix_tokens] * 2
        assert recorder.ids[0] == expected
        assert recorder.ids[1] == expected
        assert first.text == second.text and first.new_tokens == len(
            [i for i in expected if i not in engine.bundle.end_token_ids]
        )

        # A follow-up with history keeps the same persona prefix and the same output.
        follow = GenerationRequest(
            "And what if it rains?", knobs, system_prompt=PERSONA,
            history=(Turn("user", ask.prompt), Turn("assistant", first.text)),
        )
        assert engine.prepare(follow).prefix_tokens == engine.prepare(ask).prefix_tokens
        engine.set_backend(recorder.real)
        expected_follow = reference_ids(engine, follow, 40)
        engine.set_backend(recorder)
        await engine.generate(follow)
        assert recorder.ids[2] == expected_follow
    finally:
        await engine.close()


def persona(i: int) -> str:
    rng = random.Random(i)
    return f"You are persona {i}. " + " ".join(rng.choice(WORDS) for _ in range(40))


async def test_memory_stays_within_the_bound_with_40_personas(smol_model_dir: Path) -> None:
    """40 distinct personas through a 40 MB cache: accounting and RSS both stay bounded.

    Kept without a bound, each of these personas holds about 9 MB (360 MB for all, far
    above the 88 MB allowed); with it, the cache is emptied when full (every four or
    five personas) and the process gives the memory back.
    """
    bound_mb = 40
    engine = await Engine.load(smol_model_dir, EngineOptions(
        device="cpu", batch_wait_ms=0, persona_cache_mb=bound_mb
    ))
    try:
        one = Knobs(max_new_tokens=1)
        await engine.generate(GenerationRequest("Hi", one, system_prompt=persona(-1)))
        cache = engine.persona_cache
        per_persona = engine.prepare(
            GenerationRequest("Hi", system_prompt=persona(0))
        ).prefix_tokens * cache.bytes_per_token
        assert 4 * per_persona <= cache.bound_bytes < 40 * per_persona
        start = rss_mb()
        peak = start
        for i in range(40):
            await engine.generate(GenerationRequest("Hi", one, system_prompt=persona(i)))
            assert cache.used_bytes <= cache.bound_bytes
            peak = max(peak, rss_mb())
        assert cache.flushes >= 6
        assert peak - start <= bound_mb + 48, (start, peak)
    finally:
        await engine.close()


def test_the_persona_cache_admits_within_its_bound_and_asks_for_a_flush() -> None:
    cache = PersonaCache(0, 1000)
    assert not cache.admit(("a",) * 40) and cache.used_bytes == 0 and not cache.flush_wanted
    small = PersonaCache(100_000, 1000)
    assert small.admit(("a",) * 60) and small.admit(("a",) * 60)  # the same prefix: a hit
    assert not small.admit(("b",) * 60) and small.flush_wanted  # would exceed: flush asked
    assert small.used_bytes == 60_000
    assert not small.cached(("b",) * 60)
    huge = PersonaCache(100_000, 1000)
    assert not huge.admit(("c",) * 200) and not huge.flush_wanted  # can never fit
    small.clear()
    assert small.used_bytes == 0 and small.admit(("b",) * 60)
