"""A result carries the ids the model wrote: the reply as generated, what Inspect walks."""

from __future__ import annotations

from pathlib import Path

from bot.engine import FinishReason, GenerationRequest
from bot.knobs import Knobs
from testing.scripted import scripted_engine

SCRIPT = "Ada: the tide is out. STOP and more"


async def test_the_result_keeps_every_id_written_even_those_cut_from_its_text(
    tiny_model_dir: Path,
) -> None:
    engine = scripted_engine(tiny_model_dir, SCRIPT)
    try:
        tokenizer = engine.bundle.tokenizer
        request = GenerationRequest("hi", Knobs(max_new_tokens=64, stop=["STOP"]),
                                    speakers=("Ada",))
        result = await engine.submit(request).result()
        # The speaker's label and the stop sequence are cut from the text...
        assert result.finish_reason == FinishReason.STOP_SEQUENCE
        assert result.text.strip() == "the tide is out."
        # ...but the ids are what the model wrote, up to the token that completed the stop.
        ids = list(result.token_ids)
        assert len(ids) == result.new_tokens
        assert tokenizer.decode(ids).startswith("Ada: the tide is out. STOP")
        assert ids == tokenizer.encode(SCRIPT)[: len(ids)]
    finally:
        await engine.close()
