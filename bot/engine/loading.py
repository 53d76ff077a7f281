"""Choosing a device and a CPU layout, loading CTranslate2 weights, checking the GPU.

The only module of the engine that imports `ctranslate2`, and only inside a
function, so importing the engine costs nothing until a model is loaded.

A GPU host can load a model and still fail at its first reply: the ctranslate2
wheel loads `libcublas.so.12` only when it first multiplies on the GPU, and the
driver alone passes `get_cuda_device_count()`. So on CUDA `gpu_self_check` runs
one short generation through the engine, with the configured compute type and the
default knobs, before the bot reports READY=1, and turns CTranslate2's error
into a sentence that names what is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.engine.types import EngineInfo, GenerationRequest
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.model.bundle import ModelBundle, load_model_bundle

if TYPE_CHECKING:
    from bot.engine.scheduler import Engine

#: New tokens the start-up check asks for: enough to run the decoding loop.
SELF_CHECK_TOKENS = 4


class DeviceCheckError(UserFacingError):
    """The device cannot run the model; the message says what to install or change."""


def explain_device_error(exc: BaseException, compute_type: str) -> str | None:
    """A sentence for CTranslate2's device errors (its exact strings), or None.

    Matched on CTranslate2 4.x's messages: "Library libcublas.so.12 is not found or
    cannot be loaded", "CUDA failed with error out of memory", "cuBLAS failed with
    status CUBLAS_STATUS_ALLOC_FAILED", "CUDA failed with error CUDA driver version
    is insufficient for CUDA runtime version", "Requested int8_float16 compute type,
    but the target device or backend do not support efficient int8_float16
    computation".
    """
    text = str(exc)
    if "libcublas" in text or "cublas64" in text:
        return (
            "CUDA 12's cuBLAS library (libcublas.so.12) is missing: the ctranslate2 wheel "
            "loads it at run time. Install the CUDA 12 runtime, or `pip install "
            "nvidia-cublas-cu12` into the bot's environment and put its nvidia/cublas/lib "
            f"directory on LD_LIBRARY_PATH (see docs/deploy.md). CTranslate2 said: {text}"
        )
    if "libcudnn" in text or "cudnn" in text.lower():
        return (
            "cuDNN 9 for CUDA 12 is missing: install it (or `pip install nvidia-cudnn-cu12`) "
            f"and put it on LD_LIBRARY_PATH. CTranslate2 said: {text}"
        )
    if "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text:
        return (
            f"The GPU ran out of memory running this model with compute type {compute_type}: "
            "choose a smaller model or compute type (BOT_COMPUTE_TYPE=int8_float16 or int8), "
            f"or free the GPU. CTranslate2 said: {text}"
        )
    if "driver version is insufficient" in text:
        return (
            "The NVIDIA driver is too old for CUDA 12 (the ctranslate2 wheel needs driver "
            f"525 or newer): upgrade it. CTranslate2 said: {text}"
        )
    if "compute type" in text and "do not support" in text:
        return (
            f"This device cannot run compute type {compute_type}: set BOT_COMPUTE_TYPE to "
            f"one it supports (float16 or int8_float32, say). CTranslate2 said: {text}"
        )
    if "CUDA" in text or "cuBLAS" in text:
        return f"The GPU failed to run the model. CTranslate2 said: {text}"
    return None


class _Recording:
    """A backend wrapper that keeps the exception `generate_batch` raised, if any."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.error: BaseException | None = None

    def generate_batch(self, start_tokens: list[list[str]], **kwargs: Any) -> Any:
        try:
            return self.real.generate_batch(start_tokens, **kwargs)
        except Exception as exc:
            self.error = exc
            raise


async def gpu_self_check(engine: Engine) -> None:
    """One short generation with the default knobs; raises `DeviceCheckError` if it fails.

    Through the engine itself (its encoder, scheduler and sampling settings), so
    what passes here is what a first reply will do. The engine turns model errors
    into a reply's error message; the wrapper keeps CTranslate2's own exception so
    the start-up failure can name the missing piece.
    """
    previous = engine.backend
    recording = _Recording(previous)
    engine.set_backend(recording)
    try:
        result = await engine.generate(
            GenerationRequest(prompt="Hi", knobs=Knobs(max_new_tokens=SELF_CHECK_TOKENS))
        )
    finally:
        engine.set_backend(previous)
    error = recording.error
    if error is None and result.error is None:
        return
    compute_type = engine.info.compute_type
    if error is not None:
        message = explain_device_error(error, compute_type) or (
            f"The start-up generation on {engine.info.device} failed: {error}"
        )
        raise DeviceCheckError(message) from error
    raise DeviceCheckError(f"The start-up generation on {engine.info.device} failed: "
                           f"{result.error}")


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


_SCALAR_FORMATS = {1: "<b", 2: "<h", 3: "<i"}  # CTranslate2 DataType: int8, int16, int32


def read_decoder_shape(model_dir: Path) -> dict[str, int]:
    """Layer count, widths and vocabulary of a CTranslate2 decoder, from `model.bin`'s index.

    CTranslate2 does not expose them, yet the persona cache must charge each cached
    token what it really keeps (keys and values of every layer: with grouped-query
    attention that is a fraction of `2 * layers * d_model`), and the CUDA rules need
    the output vocabulary. Only the variable headers are read; payloads are skipped.
    Returns {} on any format it does not recognise, and callers fall back.
    """
    import struct

    shapes: dict[str, tuple[int, ...]] = {}
    scalars: dict[str, int] = {}
    try:
        with open(model_dir / "model.bin", "rb") as fh:

            def take(fmt: str) -> Any:
                size = struct.calcsize(fmt)
                return struct.unpack(fmt, fh.read(size))

            def string() -> str:
                (length,) = take("<H")
                return fh.read(length).rstrip(b"\0").decode("utf-8")

            (version,) = take("<I")
            if version < 4:
                return {}
            string()
            take("<I")
            (count,) = take("<I")
            for _ in range(count):
                name = string()
                (rank,) = take("<B")
                dims = take(f"<{rank}I") if rank else ()
                type_id, num_bytes = take("<BI")
                if rank == 0 and type_id in _SCALAR_FORMATS and num_bytes <= 4:
                    (scalars[name],) = struct.unpack(_SCALAR_FORMATS[type_id], fh.read(num_bytes))
                    continue
                shapes[name] = tuple(dims)
                fh.seek(num_bytes, 1)
    except (OSError, struct.error, UnicodeDecodeError):
        return {}
    layers = sum(
        1 for name in shapes if name.startswith("decoder/layer_")
        and name.endswith("/self_attention/linear_0/weight")
    )
    embeddings = shapes.get("decoder/embeddings/weight")
    heads = scalars.get("decoder/num_heads")
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
    """What one cached prompt token costs: keys and values of every layer, as measured.

    CTranslate2 keeps the state with every attention head's keys and values (not
    only the grouped-query ones), in 2-byte floats for half-precision compute
    types and float32 otherwise (int8 on the CPU computes in float32): 2 x layers
    x d_model x width. Measured on the embedded model on the CPU: 149–188 KB a
    token against 138 KB so computed, so a quarter is added for what the allocator
    keeps around it. 0 (cache nothing) when the shape is unknown.
    """
    width = 2 if ("float16" in compute_type or "bfloat16" in compute_type) else 4
    if not shape:
        return 0
    return 2 * shape["layers"] * shape["d_model"] * width * 5 // 4
