"""Choosing a device and a CPU layout, loading CTranslate2 weights.

The only module of the engine that imports `ctranslate2`, and only inside a
function, so importing the engine costs nothing until a model is loaded. The
start-up check that the device really generates is `bot.engine.device_check`.

CTranslate2 starts its replicas' threads when a `Generator` is built, and on
Linux a thread starts at its creator's nice value: `load_off_loop` builds it on a
thread of its own lowered by `EngineOptions.decode_nice`, so decoding takes the
cores the event loop leaves (a flood of presses is acknowledged while replies
decode) and still all of them when the loop is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.engine.types import EngineInfo, EngineOptions
from bot.model.bundle import ModelBundle, load_model_bundle
from bot.model.model_bin import read_index

T = TypeVar("T")


def resolve_device(device: str) -> str:
    """`auto` means CUDA when CTranslate2 sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def cpu_layout(device: str, inter_threads: int, cpu_threads: int) -> tuple[int, int]:
    """Replicas and threads per replica; 0 means "choose" for either.

    On the CPU, single-threaded replicas beat one multi-threaded replica (about
    2x for 8 concurrent asks on 2 cores, docs/benchmarks.md), so "auto" is one
    replica per core up to 4, the cores left over shared as threads. On CUDA,
    one replica per GPU.
    """
    cores = os.cpu_count() or 1
    if inter_threads == 0:
        inter_threads = 1 if device == "cuda" else max(1, min(cores, 4))
    if cpu_threads == 0 and device == "cpu":
        cpu_threads = max(1, cores // inter_threads)
    return inter_threads, cpu_threads


def default_compute_type(device: str) -> str:
    return "int8_float16" if device == "cuda" else "int8"


def lower_thread_priority(by: int) -> None:
    """Raise the calling thread's nice value by `by` (Linux only: elsewhere the call
    would lower the whole process, event loop included, so it does nothing)."""
    if by <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):  # on Linux, PRIO_PROCESS 0 is the calling thread
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + by))


async def load_off_loop(fn: Callable[[], T], *, nice: int) -> T:
    """`fn()` on a thread of its own, first lowered by `nice`: the threads `fn` starts
    inherit that, and no pooled thread is left lowered for other work."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]  # None only with an error

    def body() -> None:
        lower_thread_priority(nice)
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, raised there
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=body, name="model-load", daemon=True).start()
    return await done


def load_ctranslate2(
    model_dir: Path, options: EngineOptions
) -> tuple[ModelBundle, Any, EngineInfo]:
    """Tokenizer, template and a `ctranslate2.Generator`; blocking, so run it off the loop."""
    import ctranslate2

    started = time.perf_counter()
    real_device = resolve_device(options.device)
    ctype = options.compute_type or default_compute_type(real_device)
    inter_threads, cpu_threads = cpu_layout(
        real_device, options.inter_threads, options.cpu_threads
    )
    bundle = load_model_bundle(model_dir, context_length=options.context_length)
    if options.seed is not None:
        # CTranslate2 seeds each worker's sampler when the Generator is built.
        ctranslate2.set_random_seed(options.seed)
    generator = ctranslate2.Generator(
        str(model_dir),
        device=real_device,
        device_index=list(options.device_index),
        compute_type=ctype,
        inter_threads=inter_threads,
        intra_threads=cpu_threads,
    )
    shape = read_decoder_shape(model_dir)
    info = EngineInfo(
        model_name=bundle.name,
        model_path=model_dir,
        device=real_device,
        compute_type=str(generator.compute_type),
        inter_threads=inter_threads,
        cpu_threads=cpu_threads,
        context_length=bundle.context_length,
        load_s=time.perf_counter() - started,
        vocab_size=shape.get("vocab_size", bundle.tokenizer.vocab_size),
        kv_bytes_per_token=kv_bytes_per_token(shape, str(generator.compute_type)),
    )
    return bundle, generator, info


def read_decoder_shape(model_dir: Path) -> dict[str, int]:
    """Layer count, widths and vocabulary of a CTranslate2 decoder, from `model.bin`'s index.

    CTranslate2 does not expose them, yet the persona cache charges per token and
    the sampling bounds need the output vocabulary. {} for a file it cannot read;
    callers fall back.
    """
    try:
        shapes, scalars = read_index(model_dir / "model.bin")
    except (OSError, ValueError, struct.error):
        return {}
    layers = sum(
        1 for name in shapes if name.startswith("decoder/layer_")
        and name.endswith("/self_attention/linear_0/weight")
    )
    embeddings = shapes.get("decoder/embeddings/weight")
    heads = int(scalars.get("decoder/num_heads", 0))
    if not layers or not embeddings or not heads:
        return {}
    d_model = embeddings[1]
    head_dim = d_model // heads
    qkv = shapes.get("decoder/layer_0/self_attention/linear_0/weight", (3 * d_model,))[0]
    kv_heads = max(1, (qkv // head_dim - heads) // 2)
    projection = shapes.get("decoder/projection/weight", embeddings)
    return {
        "layers": layers,
        "d_model": d_model,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": projection[0],
    }


def kv_bytes_per_token(shape: dict[str, int], compute_type: str) -> int:
    """What one cached prompt token costs: keys and values of every layer.

    CTranslate2 keeps every head's keys and values (not only the grouped-query
    ones), in 2-byte floats for half-precision compute types, else float32:
    2 x layers x d_model x width, plus a quarter the allocator keeps around it
    (measured on the embedded model). 0 (cache nothing) when the shape is unknown.
    """
    width = 2 if ("float16" in compute_type or "bfloat16" in compute_type) else 4
    if not shape:
        return 0
    return 2 * shape["layers"] * shape["d_model"] * width * 5 // 4
