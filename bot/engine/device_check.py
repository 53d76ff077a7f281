"""The start-up check that the device really generates, and CTranslate2's device errors in words.

A GPU host can load a model and still fail at its first reply: the ctranslate2
wheel loads `libcublas.so.12` only at its first GPU multiply, and the driver alone
passes `get_cuda_device_count()`. So on CUDA one short generation runs before the
bot reports READY=1. Apart from `loading` because it imports the engine.
"""

from __future__ import annotations

from typing import Any

from bot.engine.engine import Engine
from bot.engine.types import GenerationRequest
from bot.errors import UserFacingError
from bot.knobs import Knobs

__all__ = ["SELF_CHECK_TOKENS", "DeviceCheckError", "explain_device_error", "gpu_self_check"]

#: New tokens the start-up check asks for: enough to run the decoding loop.
SELF_CHECK_TOKENS = 4


class DeviceCheckError(UserFacingError):
    """The device cannot run the model; the message says what to install or change."""


def explain_device_error(exc: BaseException, compute_type: str) -> str | None:
    """A sentence for CTranslate2 4.x's device errors, matched on its exact messages, or None."""
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

    Through the engine itself, so what passes here is what a first reply does. The
    engine turns model errors into a reply's message; the wrapper keeps
    CTranslate2's own exception so the failure can name the missing piece.
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
