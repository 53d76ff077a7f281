"""Every knob changes the embedded model's output the way the guide's table says.

These use the real SmolLM2 (int8), so they check behaviour, not plumbing.
Sampling runs on an engine seeded once (`engine` below), so each test sees the
same samples on every run of a given machine and library; and each assertion is
also statistically sound, so another machine's different samples pass too:
they compare against greedy decoding of the same prompt rather than fixed text,
with medians of enough samples that a chance failure is far below 1 in 10,000
(see each test).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.engine import Engine, EngineOptions, FinishReason, GenerationRequest
from bot.knobs import Knobs

pytestmark = pytest.mark.slow

CATS = "Write one sentence about cats."
SEED = 20261126


@pytest.fixture
async def smol_engine(smol_model_dir: Path) -> AsyncIterator[Engine]:
    """The embedded model on one replica, its sampler seeded when it is built.

    CTranslate2 seeds a replica's sampler when the generator is created (one
    replica: requests are sampled in submission order), so this makes every
    sampled text in a test the same on each run.
    """
    engine = await Engine.load(smol_model_dir, EngineOptions(
        device="cpu", batch_wait_ms=5, inter_threads=1, seed=SEED
    ))
    yield engine
    await engine.close()


async def gen(engine: Engine, prompt: str, **knobs: object) -> str:
    result = await engine.generate(GenerationRequest(prompt, Knobs.model_validate(knobs)))
    assert result.error is None
    return result.text


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def test_capital_of_france_greedy(smol_engine: Engine) -> None:
    assert "Paris" in await gen(smol_engine, "What is the capital of France?", top_k=1)


async def test_temperature_low_stays_near_greedy_high_wanders(smol_engine: Engine) -> None:
    """Low temperature follows greedy decoding for a while; high temperature leaves it at once.

    Why medians of 16: at temperature 0.1 the int8 model still has near-ties
    (measured over 30 unseeded samples: common prefix with greedy 0 once, 11
    fourteen times, 23 or more fifteen times). The median of 16 falls to 10 or
    below only if 8 of the 16 diverge within the first word, which at the
    measured rate (1 in 30) has a probability of about 2e-8. At temperature 3 the
    first token already differs from greedy in every sample we drew.
    """
    greedy = await gen(smol_engine, CATS, top_k=1, max_new_tokens=24)
    # Together: equal knobs share the engine's batches, as members' asks do.
    low = await asyncio.gather(*(
        gen(smol_engine, CATS, temperature=0.1, top_p=1.0, max_new_tokens=24)
        for _ in range(16)))
    high = await asyncio.gather(*(
        gen(smol_engine, CATS, temperature=3.0, top_p=1.0, max_new_tokens=24)
        for _ in range(6)))
    low_prefix = statistics.median(common_prefix(greedy, t) for t in low)
    high_prefix = statistics.median(common_prefix(greedy, t) for t in high)
    assert low_prefix > 10, sorted(common_prefix(greedy, t) for t in low)
    assert high_prefix < low_prefix / 2
    assert len(set(high)) == len(high)


async def test_top_p_zero_and_top_k_one_are_greedy_even_when_hot(smol_engine: Engine) -> None:
    greedy = await gen(smol_engine, CATS, top_k=1, max_new_tokens=24)
    assert await gen(smol_engine, CATS, top_p=0.0, temperature=5.0, max_new_tokens=24) == greedy
    assert await gen(smol_engine, CATS, top_k=1, temperature=5.0, max_new_tokens=24) == greedy
    # Without those limits the same temperature samples far from greedy.
    hot = {await gen(smol_engine, CATS, top_k=50, top_p=1.0, temperature=5.0,
                     max_new_tokens=24) for _ in range(3)}
    assert greedy not in hot and len(hot) == 3


async def test_max_and_min_new_tokens(smol_engine: Engine) -> None:
    short = await smol_engine.generate(
        GenerationRequest("Say OK.", Knobs(top_k=1, max_new_tokens=128))
    )
    assert short.finish_reason == FinishReason.END and short.new_tokens < 30
    held = await smol_engine.generate(
        GenerationRequest("Say OK.", Knobs(top_k=1, min_new_tokens=40, max_new_tokens=128))
    )
    assert held.new_tokens >= 40
    # Greedy: a sampled reply could (rarely) end by itself within 5 tokens.
    capped = await smol_engine.generate(
        GenerationRequest("Tell me a long story.", Knobs(top_k=1, max_new_tokens=5))
    )
    assert capped.new_tokens == 5 and capped.finish_reason == FinishReason.MAX_TOKENS


async def test_stop_sequence_ends_before_it_and_hides_it(smol_engine: Engine) -> None:
    full = await gen(smol_engine, "What is the capital of France?", top_k=1)
    assert "Paris" in full
    result = await smol_engine.generate(GenerationRequest(
        "What is the capital of France?", Knobs(top_k=1, stop=("Paris",))
    ))
    assert result.finish_reason == FinishReason.STOP_SEQUENCE
    assert result.text == full[: full.index("Paris")]


async def test_repetition_penalty_discourages_repeats(smol_engine: Engine) -> None:
    prompt = "List the days of the week, then list them again, and again."
    tok = smol_engine.bundle.tokenizer

    async def distinct_ratio(penalty: float) -> float:
        text = await gen(smol_engine, prompt, top_k=1, max_new_tokens=100,
                         repetition_penalty=penalty)
        ids = tok.encode(text)
        return len(set(ids)) / len(ids)

    plain = await distinct_ratio(0.0)
    penalised = await distinct_ratio(0.5)
    assert plain < 0.5
    assert penalised > plain + 0.3


def _ask(model_dir: Path, seed: int) -> str:
    env = {**os.environ, "BOT_MODEL_DIR": str(model_dir)}
    env.pop("DISCORD_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", "ask", CATS, "--seed", str(seed),
         "--temperature", "1.5", "--top-p", "1", "--max-new-tokens", "32"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return out.stdout


def test_same_seed_same_text_across_processes(smol_model_dir: Path) -> None:
    first = _ask(smol_model_dir, 7)
    assert first.strip()
    assert _ask(smol_model_dir, 7) == first
    assert _ask(smol_model_dir, 8) != first


def test_cli_ask_answers_paris(smol_model_dir: Path) -> None:
    env = {**os.environ, "BOT_MODEL_DIR": str(smol_model_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", "ask",
         "What is the capital of France?", "--top-k", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    assert "Paris" in out.stdout
    assert "finish: end" in out.stderr
