"""Generator backends for the engine's public seam (`Engine.set_backend`).

Each speaks the part of `ctranslate2.Generator.generate_batch` the engine uses
(a per-token callback, `max_length`, `end_token`), so the scheduler, streaming
and Discord paths run for real while the "model" says what a test needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bot.engine.worker import generate_with_callback


class ScriptedGenerator:
    """Emit the tokens of `text_for(prompt_tokens)` for each batch item, then the end token."""

    def __init__(self, tokenizer: Any, text_for: Callable[[list[str]], str] | str,
                 delay: float = 0.005) -> None:
        self.tokenizer = tokenizer
        self.text_for = text_for if callable(text_for) else (lambda _t: text_for)
        self.delay = delay
        self.calls = 0
        self._prompts: list[list[str]] = []
        self._scripts: dict[tuple[str, ...], list[int]] = {}

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> list[Any]:
        self.calls += 1
        # The engine passes a shared persona apart, as CTranslate2's static_prompt:
        # the script sees the whole prompt, as the model would.
        static = list(kw.get("static_prompt") or ())
        start_tokens = [static + list(tokens) for tokens in start_tokens]
        callback = kw["callback"]
        end = kw["end_token"][0]
        max_length = kw["max_length"]
        scripts: list[list[int]] = []
        offsets: list[int] = []
        for tokens in start_tokens:
            # A request the engine preempted comes back as prompt + tokens so far:
            # continue its script where it stopped instead of starting over.
            # A conversation's next prompt also starts with an earlier prompt: it is a
            # continuation only if what follows is that prompt's own script.
            prompt = next((p for p in self._prompts if self._continues(p, tokens)), None)
            if prompt is None:
                prompt = list(tokens)
                if prompt not in self._prompts:
                    self._prompts.append(prompt)
                # A new request (the same prompt again included) gets a fresh script.
                self._scripts[tuple(prompt)] = [
                    *self.tokenizer.encode(self.text_for(prompt)), end
                ]
            scripts.append(self._scripts[tuple(prompt)])
            offsets.append(len(tokens) - len(prompt))
        active = set(range(len(scripts)))
        for step in range(max_length):
            for i in sorted(active):
                ids = scripts[i]
                pos = offsets[i] + step
                token = ids[pos] if pos < len(ids) else end
                last = token == end or step == max_length - 1
                if callback(SimpleNamespace(batch_id=i, step=step, token_id=token,
                                            is_last=last)) or last:
                    active.discard(i)
            if not active:
                break
            time.sleep(self.delay)
        return []


    def _continues(self, prompt: list[str], tokens: list[str]) -> bool:
        """Whether `tokens` is `prompt` followed by the start of the script it was given."""
        if len(tokens) <= len(prompt) or tokens[: len(prompt)] != prompt:
            return False
        done = tokens[len(prompt):]
        script = self._scripts[tuple(prompt)]
        return len(done) <= len(script) and done == [
            self.tokenizer.id_to_token(i) for i in script[: len(done)]
        ]


CUDA_OOM = "CUDA failed with error out of memory"
"""CTranslate2's words when the KV cache does not fit (what the engine retries in halves)."""
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
"""A CUDA fault that no retry helps: the engine must end the reply with an error."""

StepCallback = Callable[[Any], bool]


def fail_after(callback: StepCallback, steps: int, message: str) -> StepCallback:
    """Wrap a per-token callback so the `steps + 1`-th token raises `RuntimeError(message)`.

    CTranslate2 raises from inside `generate_batch` while tokens are streaming, so
    the tokens before the failure have reached the engine: the tests check what
    happens to text already shown.
    """
    seen = 0

    def failing(step: Any) -> bool:
        nonlocal seen
        seen += 1
        if seen > steps:
            raise RuntimeError(message)
        return bool(callback(step))

    return failing


class Exploding(ScriptedGenerator):
    """Raises part-way through any batch holding a prompt that asks it to."""

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> list[Any]:
        static = "".join(kw.get("static_prompt") or ())
        if any("EXPLODE" in static + "".join(t) for t in start_tokens):
            kw = {**kw, "callback": fail_after(kw["callback"], 6, ILLEGAL_ACCESS)}
        return super().generate_batch(start_tokens, **kw)


class MemoryBound(ScriptedGenerator):
    """Out of GPU memory after `after` steps per reply for batches above `fits` replies.

    A real KV cache overflows part-way through decoding, after some text has streamed;
    `sizes` keeps each call's batch size so a test can see the engine halve it.
    """

    def __init__(self, tokenizer: Any, text: str, fits: int, after: int = 3) -> None:
        super().__init__(tokenizer, text, delay=0.0)
        self.fits = fits
        self.after = after
        self.sizes: list[int] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> list[Any]:
        self.sizes.append(len(start_tokens))
        if len(start_tokens) > self.fits:
            steps = self.after * len(start_tokens)
            kw = {**kw, "callback": fail_after(kw["callback"], steps, CUDA_OOM)}
        return super().generate_batch(start_tokens, **kw)


class Failing:
    """Raises `message` at once on every call, as CTranslate2 does on a broken GPU host.

    `calls` keeps each call's keyword arguments and `sizes` its batch size, so a test
    can check what was asked of the device before it failed.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        self.calls: list[dict[str, Any]] = []
        self.sizes: list[int] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.calls.append(kw)
        self.sizes.append(len(start_tokens))
        raise RuntimeError(self.message)


class FailsMidway:
    """Wrap a real generator so every call raises `message` after `after` tokens."""

    def __init__(self, real: Any, after: int, message: str = ILLEGAL_ACCESS) -> None:
        self.real = real
        self.after = after
        self.message = message

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        callback = fail_after(kw.pop("callback"), self.after, self.message)
        return generate_with_callback(self.real, start_tokens, callback, **kw)


class Slowed:
    """Wrap a generator so each token takes at least `delay` s: queue tests need time."""

    def __init__(self, real: Any, delay: float = 0.01) -> None:
        self.real = real
        self.delay = delay

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        callback = kw.pop("callback")
        delay = self.delay

        def slow(step: Any) -> bool:
            time.sleep(delay)
            return bool(callback(step))

        return generate_with_callback(self.real, start_tokens, slow, **kw)


CUDA_COMPUTE_TYPES = frozenset({
    "float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
})
"""`ctranslate2.get_supported_compute_types("cuda")` on a recent GPU (bfloat16 needs
compute capability 8.0). CTranslate2 refuses the rest there, int16 among them ("the
target device or backend do not support efficient int16 computation")."""
CUDA_TOPP_MAX_CLASSES = 8192
"""`src/ops/topp_mask_gpu.cu`: one block radix sort of 256 threads x 32 items."""


class CudaRules:
    """Wrap a (CPU) generator and refuse what CTranslate2 refuses on CUDA, as it does.

    The CPU kernels accept settings the GPU ones throw on: top-p over more than
    8,192 classes (with `sampling_topk=0` that is the whole vocabulary), a top-k
    above the vocabulary, and compute types CUDA does not offer. Running the engine
    tests through this wrapper makes the CPU suite fail where a GPU would.
    """

    def __init__(self, real: Any, vocab_size: int, compute_type: str = "int8_float16") -> None:
        if compute_type not in CUDA_COMPUTE_TYPES:
            raise ValueError(f"compute type {compute_type} is not supported on CUDA")
        self.real = real
        self.vocab_size = vocab_size
        self.compute_type = compute_type
        self.calls = 0

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.calls += 1
        topk = int(kw.get("sampling_topk", 1))
        topp = float(kw.get("sampling_topp", 1.0))
        if topk > self.vocab_size:
            raise ValueError(
                f"sampling_topk option ({topk}) cannot be greater than the vocabulary size"
                f" ({self.vocab_size})"
            )
        classes = self.vocab_size if topk in (0, self.vocab_size) else topk
        if topp < 1.0 and topk != 1 and classes > CUDA_TOPP_MAX_CLASSES:
            raise RuntimeError(
                f"The TopP operator does not support more than {CUDA_TOPP_MAX_CLASSES} "
                f"classes, but the input has {classes} classes."
            )
        return self.real.generate_batch(start_tokens, **kw)

    def __getattr__(self, name: str) -> Any:
        """Everything else (unload_model, load_model, compute_type) is the real one's."""
        return getattr(self.real, name)
