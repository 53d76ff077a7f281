"""CUDA out of memory in a batch: retry in smaller batches, a clear message if alone.

No GPU here: `MemoryBound` raises CTranslate2's exact words ("CUDA failed with error out
of memory") whenever a batch holds more replies than its "GPU" fits, part-way through
decoding as a real OOM in the KV cache would, and otherwise decodes with the
harness's scripted generator through the engine's real callback path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.engine import Engine, EngineOptions, FinishReason, GenerationRequest
from bot.knobs import Knobs
from testing.backends import Failing, MemoryBound

SCRIPT = "one two three four five six seven eight nine ten"


@pytest.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.load(tiny_model_dir, EngineOptions(
        device="cpu", cpu_threads=1, max_batch_size=8, batch_wait_ms=5
    ))
    yield engine
    await engine.close()


def asks(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"question {i}", knobs=Knobs(max_new_tokens=64))
            for i in range(n)]


async def test_oom_batch_is_retried_in_halves_without_losing_text(engine: Engine) -> None:
    backend = MemoryBound(engine.bundle.tokenizer, SCRIPT, fits=2)
    engine.set_backend(backend)
    gens = [engine.submit(r) for r in asks(8)]  # one burst: one batch of 8
    results = await asyncio.gather(*(g.result() for g in gens))
    assert backend.sizes[:3] == [8, 4, 2]  # out of memory at 8, then at 4, then fits
    assert max(backend.sizes[3:]) == 2
    for result in results:
        assert result.error is None and result.finish_reason == FinishReason.END
        assert result.text == SCRIPT  # resumed where it stopped: nothing lost or repeated


async def test_a_reply_that_fails_alone_gets_a_clear_message(engine: Engine) -> None:
    engine.set_backend(MemoryBound(engine.bundle.tokenizer, SCRIPT, fits=0))
    gens = [engine.submit(r) for r in asks(2)]
    results = await asyncio.gather(*(g.result() for g in gens))
    for result in results:
        assert result.finish_reason == FinishReason.ERROR
        assert result.error is not None and "GPU ran out of memory" in result.error
        assert result.text.startswith("one two")  # what streamed before is kept


async def test_other_errors_are_not_retried(engine: Engine) -> None:
    backend = Failing("CUDA failed with error an illegal memory access was encountered")
    engine.set_backend(backend)
    results = await asyncio.gather(*(g.result() for g in [engine.submit(r) for r in asks(4)]))
    assert backend.sizes == [4]
    assert all(r.error == "The model failed while writing this reply." for r in results)
