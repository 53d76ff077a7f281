"""Choosing a device and a CPU layout, and loading CTranslate2 weights.

The only module of the engine that imports `ctranslate2`, and only inside a
function, so importing the engine costs nothing until a model is loaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.engine.types import EngineInfo
from bot.model.bundle import ModelBundle, load_model_bundle


def resolve_device(device: str) -> str:
    """`auto` means CUDA when CTranslate2 sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def cpu_layout(device: str, inter_threads: int, cpu_threads: int) -> tuple[int, int]:
    """Replicas and threads per replica; 0 means "choose" for either.

    On the CPU, several single-threaded replicas beat one multi-threaded one on
    the 2-core reference machine by a wide margin (one stream: 82 vs 31 tok/s
    with 1 vs 2 threads; 8 concurrent: ~190 vs ~90 tok/s for 2x1 vs 1x2; see
    docs/benchmarks.md), so "auto" is one replica per core up to 4, sharing the
    cores left over as threads. On CUDA one replica per GPU is the default.
    """
    cores = os.cpu_count() or 1
    if inter_threads == 0:
        inter_threads = 1 if device == "cuda" else max(1, min(cores, 4))
    if cpu_threads == 0 and device == "cpu":
        cpu_threads = max(1, cores // inter_threads)
    return inter_threads, cpu_threads


def default_compute_type(device: str) -> str:
    return "int8_float16" if device == "cuda" else "int8"



def load_ctranslate2(
    model_dir: Path,
    *,
    device: str = "auto",
    device_index: Sequence[int] = (0,),
    compute_type: str | None = None,
    cpu_threads: int = 0,
    inter_threads: int = 1,
    seed: int | None = None,
    context_length: int | None = None,
) -> tuple[ModelBundle, Any, EngineInfo]:
    """Tokenizer, template and a `ctranslate2.Generator`; blocking, so run it off the loop."""
    import ctranslate2

    started = time.perf_counter()
    real_device = resolve_device(device)
    ctype = compute_type or default_compute_type(real_device)
    inter_threads, cpu_threads = cpu_layout(real_device, inter_threads, cpu_threads)
    bundle = load_model_bundle(model_dir, context_length=context_length)
    if seed is not None:
        # CTranslate2 seeds each worker's sampler when the Generator is
        # built; setting it later has no effect, so it is per process.
        ctranslate2.set_random_seed(seed)
    generator = ctranslate2.Generator(
        str(model_dir),
        device=real_device,
        device_index=list(device_index),
        compute_type=ctype,
        inter_threads=inter_threads,
        intra_threads=cpu_threads,
    )
    info = EngineInfo(
        model_name=bundle.name,
        model_path=model_dir,
        device=real_device,
        compute_type=str(generator.compute_type),
        inter_threads=inter_threads,
        cpu_threads=cpu_threads,
        context_length=bundle.context_length,
        load_s=time.perf_counter() - started,
    )
    return bundle, generator, info
