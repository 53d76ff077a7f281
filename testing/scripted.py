"""A weights-free engine: a model directory's tokenizer and chat template, a scripted model.

Most stories need the embedded model only for what reaches the model (its tokenizer,
its chat template, its context window) and script what it says. Loading the
CTranslate2 weights for that costs seconds per story. `scripted_engine` builds the
real `Engine` around the directory's `ModelBundle` and a `ScriptedGenerator`, with
no `ctranslate2.Generator` at all: scheduling, streaming, prompt fitting and every
front-end run for real. What needs the weights (`Engine.forward`: probabilities,
the lab) fails loudly on it, so such stories keep loading the real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bot.engine import Engine, EngineOptions
from bot.engine.loading import cpu_layout, kv_bytes_per_token, read_decoder_shape
from bot.engine.types import EngineInfo
from bot.model.bundle import ModelBundle, load_model_bundle
from testing.backends import ScriptedGenerator

Script = Callable[[list[str]], str] | str


def scripted_engine(
    model_dir: Path, script: Script, *, delay: float = 0.005,
    options: EngineOptions | None = None, bundle: ModelBundle | None = None,
) -> Engine:
    """An `Engine` over `model_dir`'s tokenizer and template whose model says `script`.

    Call it inside a running event loop (the engine starts its lanes at once). The
    layout (replicas, threads) is what `Engine.load` would choose for `options`.
    `bundle` is the directory's tokenizer and template when the caller read them already
    (off the event loop: `load_bundle`).
    """
    options = options or EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=5)
    if bundle is None:
        bundle = load_model_bundle(model_dir, context_length=options.context_length)
    inter_threads, cpu_threads = cpu_layout("cpu", options.inter_threads, options.cpu_threads)
    compute_type = options.compute_type or "int8"
    shape = read_decoder_shape(model_dir)
    info = EngineInfo(
        model_name=bundle.name, model_path=model_dir, device="cpu", compute_type=compute_type,
        inter_threads=inter_threads, cpu_threads=cpu_threads,
        context_length=bundle.context_length, load_s=0.0,
        vocab_size=shape.get("vocab_size", bundle.tokenizer.vocab_size),
        kv_bytes_per_token=kv_bytes_per_token(shape, compute_type),
    )
    generator = ScriptedGenerator(bundle.tokenizer, script, delay)
    return Engine(bundle, generator, info=info, options=options)


async def load_bundle(model_dir: Path, options: EngineOptions) -> ModelBundle:
    """The tokenizer and template of `model_dir`, read in a worker thread (CPU work)."""
    return await asyncio.to_thread(load_model_bundle, model_dir,
                                   context_length=options.context_length)
