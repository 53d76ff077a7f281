"""A small real model factory for registry tests: `ctranslate2.Generator` on the CPU.

The registry is tested with real weights loaded and unloaded, but without the
whole `Engine` (its scheduler is tested elsewhere), so what is measured is the
registry's own behaviour: what loads when, what is unloaded, what is refused.
`busy()` is true while a generation runs, exactly what the bot's engines report.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from bot.hosting.catalog import ModelSpec
from bot.model.bundle import ModelBundle, load_model_bundle


@dataclass
class Ct2Model:
    """A loaded CTranslate2 generator with its tokenizer; counts the generations running."""

    spec: ModelSpec
    bundle: ModelBundle
    generator: Any
    running: int = 0
    generations: int = 0
    unloaded: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def busy(self) -> bool:
        return self.running > 0

    async def generate(
        self, prompt: str, max_new_tokens: int = 8, hold: threading.Event | None = None
    ) -> list[int]:
        """Greedy ids for `prompt`; with `hold`, each step waits for it (a long generation).

        Marked running before the first `await`, as an engine's queue is, so a
        load planned right after this call sees the model busy.
        """
        ids = self.bundle.encode_chat(None, prompt)
        tokens = [self.bundle.tokenizer.id_to_token(i) for i in ids]
        self.running += 1

        def step(_step: Any) -> bool:
            if hold is not None:
                hold.wait(timeout=10)  # a failed test must not hold a thread for long
            return False

        def run() -> list[int]:
            with self._lock:
                results = self.generator.generate_batch(
                    [tokens], max_length=max_new_tokens, min_length=max_new_tokens,
                    include_prompt_in_result=False, sampling_topk=1, end_token=[],
                    callback=step if hold is not None else None,
                )
            return list(results[0].sequences_ids[0])

        try:
            return await asyncio.to_thread(run)
        finally:
            self.running -= 1
            self.generations += 1


def load_ct2_blocking(spec: ModelSpec) -> Ct2Model:
    import ctranslate2

    bundle = load_model_bundle(spec.dir, context_length=spec.context_length)
    generator = ctranslate2.Generator(
        str(spec.dir), device="cpu", compute_type=spec.compute_type or "default",
        inter_threads=1, intra_threads=1,
    )
    return Ct2Model(spec=spec, bundle=bundle, generator=generator)


async def load_ct2(spec: ModelSpec) -> Ct2Model:
    return await asyncio.to_thread(load_ct2_blocking, spec)


async def unload_ct2(model: Ct2Model) -> None:
    def run() -> None:
        with model._lock:
            model.generator.unload_model()
            model.generator = None

    await asyncio.to_thread(run)
    model.unloaded = True
