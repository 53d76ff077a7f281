"""The decode worker: one `generate_batch` call per batch, on its own threads.

CTranslate2 decodes on its own threads; the worker calls `generate_batch` from a
small thread pool (one thread per replica) and gets a Python callback per token.
The callback detokenizes, matches stop sequences and hands the new text to the
event loop through an `Outbox` (`call_soon_threadsafe`, one wake-up for whatever
piled up meanwhile, not one per token per reply), so the loop never waits on the
model (CTranslate2's own async helper, which polls the loop, is not used). Each
request stops on its own: returning True from the callback ends that request
(cancel, stop sequence, its own budget) while the rest of the batch continues.

Also here: what a failed call means (a GPU out of memory is retried in smaller
batches, anything else ends the batch's replies with a message), and handing
freed memory back to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bot.engine.generation import Slot, device_sampling
from bot.engine.policy import CostModel
from bot.engine.types import Finished, FinishReason, GeneratorBackend, TextDelta
from bot.errors import ModelError, ShuttingDown, UserFacingError

__all__ = [
    "BIG_STATE_BYTES",
    "ClosedBackend",
    "DecodeWorker",
    "Outbox",
    "StepCallback",
    "generate_with_callback",
    "give_memory_back",
    "is_cuda_oom",
    "model_error_message",
    "oom_retry_limit",
    "reload_without_state",
    "unload_weights",
]

log = logging.getLogger(__name__)

BIG_STATE_BYTES = 64 * 1024 * 1024
"""After a batch whose decoder state could exceed this, freed memory goes back (`malloc_trim`)."""

#: CTranslate2's words for a GPU out of memory (its CUDA_CHECK / CUBLAS_CHECK messages).
_CUDA_OOM = ("CUDA failed with error out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


class Outbox:
    """Events from a decoding thread to the loop, in order, in as few wake-ups as it takes.

    Every wake-up of the loop from another thread costs a write to its self-pipe
    and a turn of the loop. A batch yields one token per reply per step, so one
    wake-up is scheduled only when none is pending; events put meanwhile go with it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[Any], object], Any]] = []
        self.wakeups = 0

    def put(self, deliver: Callable[[Any], object], event: Any) -> None:
        with self._lock:
            self._pending.append((deliver, event))
            if len(self._pending) > 1:
                return  # the wake-up already scheduled takes this one too
            self.wakeups += 1
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for deliver, event in pending:
            deliver(event)


class StepCallback:
    """The per-token callback handed to CTranslate2, emptied once the call returns.

    CTranslate2 keeps its copy of the callback inside the batch job, and frees that
    job on one of the generator's own worker threads *after* `generate_batch` has
    returned. Had the copy held the last reference to the generator (through a
    wrapping backend, or an engine dropped meanwhile), the generator would be
    destroyed on its own thread: its thread pool joins that thread, `std::thread::join`
    throws EDEADLK, and `std::terminate` aborts the process. This happened in the
    test suite (gdb: `~ThreadPool` under `~GenerationOptions` in `Worker::run`).
    Emptied, the late copy frees nothing but this small object.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[Any], bool]) -> None:
        self._fn: Callable[[Any], bool] | None = fn

    def __call__(self, step: Any) -> bool:
        fn = self._fn
        return True if fn is None else bool(fn(step))

    def release(self) -> None:
        self._fn = None


def generate_with_callback(
    backend: Any, start_tokens: list[list[str]], callback: Callable[[Any], bool], **kwargs: Any
) -> Any:
    """`backend.generate_batch(..., callback=...)` with the callback emptied afterwards.

    Every caller that hands CTranslate2 a callback (the worker, and wrapping test
    backends) goes through here: see `StepCallback` for the crash it prevents.
    """
    handle = StepCallback(callback)
    try:
        return backend.generate_batch(start_tokens, callback=handle, **kwargs)
    finally:
        handle.release()


class DecodeWorker:
    """The decoding threads and the backend they call; one batch per call of `run`."""

    def __init__(
        self,
        backend: GeneratorBackend,
        *,
        threads: int,
        end_ids: frozenset[int],
        vocab_size: int,
        kv_bytes_per_token: int,
    ) -> None:
        self.backend = backend
        self._end_ids = end_ids
        self._vocab_size = vocab_size
        self._kv_bytes_per_token = kv_bytes_per_token
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def run(
        self,
        slots: list[Slot],
        *,
        keep_prefix: bool,
        prefix_stored: bool,
        costs: CostModel,
        should_yield: Callable[[float], str | None],
    ) -> str | None:
        """Decode one batch until it ends, or until `should_yield` gives a reason to pause.

        `should_yield` is asked on the event loop every 50 ms once tokens flow, with
        the seconds spent decoding so far (reading prompts does not count); the
        first reason it gives stops every slot at its next token (marked
        `suspended`, to resume later) and is returned. The backend's exception,
        if any, is raised here.
        """
        loop = asyncio.get_running_loop()
        preempt = threading.Event()
        first_token = threading.Event()
        reason: str | None = None
        decoding_since: float | None = None
        future = loop.run_in_executor(
            self._executor, self._decode, loop, slots, preempt, first_token, keep_prefix,
            prefix_stored, costs,
        )
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.05)
            if done:
                break
            if decoding_since is None:
                if not first_token.is_set():
                    continue
                decoding_since = loop.time()
            if reason is None:
                reason = should_yield(loop.time() - decoding_since)
                if reason is not None:
                    preempt.set()
        future.result()
        return reason

    async def forward(self, tokens: Sequence[str], fallback: Any) -> Any:
        """One `forward_batch` call on the decoding threads: float32 numpy logits.

        On these threads (one per replica) so a forward pass takes a replica's
        turn as a batch does rather than adding a model call beside them. A test
        backend without `forward_batch` hands the call to `fallback` (the real
        generator it wraps).
        """
        model = self.backend if hasattr(self.backend, "forward_batch") else fallback
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _forward_logits, model, list(tokens)
        )

    def shutdown(self) -> None:
        """Join the decoding threads (each ends when its call returns)."""
        self._executor.shutdown(wait=True)

    def _decode(
        self,
        loop: asyncio.AbstractEventLoop,
        slots: list[Slot],
        preempt: threading.Event,
        first_token: threading.Event,
        keep_prefix: bool,
        prefix_stored: bool,
        costs: CostModel,
    ) -> None:
        """Runs on a decoding thread: one `generate_batch` call for the whole batch.

        The persona prefix is passed as `static_prompt`, kept by CTranslate2 when
        `keep_prefix` (decided on the event loop, which owns the cache's accounting).
        """
        lock = threading.Lock()
        outbox = Outbox(loop)
        finished = [False] * len(slots)
        steps: list[float] = []

        def on_step(step: Any) -> bool:
            over: bool
            i = step.batch_id
            slot = slots[i]
            with lock:
                if not steps or step.step >= len(steps):
                    steps.append(time.perf_counter())
                    first_token.set()
                if finished[i]:
                    return True
                text, over = slot.step(step.token_id)
                if over:
                    finished[i] = True
                elif preempt.is_set():
                    # The token is kept; the request resumes from here later.
                    slot.suspended = finished[i] = True
            if text:
                outbox.put(slot.gen.emit, TextDelta(text))
            if over:
                outbox.put(slot.gen.emit, Finished(slot.result()))
            return over or slot.suspended

        sampling = device_sampling(slots[0].gen.request.knobs, self._vocab_size)
        max_length = max(s.max_new - s.new_tokens for s in slots)
        # min_length is shared by the batch (see batch_key) and can never exceed
        # what is left of the shortest budget.
        sampling["min_length"] = min(
            slots[0].remaining_min(), min(s.max_new - s.new_tokens for s in slots)
        )
        prefix = slots[0].prefix()
        starts = [s.resume_tokens()[len(prefix):] for s in slots]
        one_pass = len(slots) * (min(len(s) for s in starts) - 1)
        if prefix:
            sampling["static_prompt"] = list(prefix)
            sampling["cache_static_prompt"] = keep_prefix
            if not prefix_stored:
                one_pass += len(prefix)
        for s in slots:
            s.runs += 1
        called = time.perf_counter()
        generate_with_callback(
            self.backend,
            starts,
            on_step,
            max_length=max_length,
            include_prompt_in_result=False,
            end_token=list(self._end_ids),
            return_end_token=True,
            **sampling,
        )
        if steps:
            costs.observe(one_pass, steps[0] - called, len(steps) - 1, steps[-1] - steps[0])
        longest = len(prefix) + max(len(s) for s in starts) + max_length
        if len(slots) * longest * self._kv_bytes_per_token > BIG_STATE_BYTES:
            give_memory_back()
        # Requests that ended without a final callback (e.g. the batch hit
        # max_length on another request's budget) are settled here.
        for i, slot in enumerate(slots):
            if not finished[i]:
                tail = slot.flush()
                if tail:
                    outbox.put(slot.gen.emit, TextDelta(tail))
                if slot.finish is None:
                    slot.finish = (
                        FinishReason.CANCELLED if slot.gen.cancel_requested
                        else FinishReason.MAX_TOKENS
                    )
                outbox.put(slot.gen.emit, Finished(slot.result()))


def oom_retry_limit(slots: Sequence[Slot], exc: BaseException) -> int | None:
    """After CUDA ran out of memory in a batch: the lower batch limit to retry it under.

    None when there is nothing to retry (another error, or a reply that failed
    alone: it gets the out-of-memory message). Otherwise every unfinished slot is
    marked suspended, so it keeps what it has streamed and resumes from there,
    like a preempted one. The engine keeps the limit lowered (the GPU showed what
    fits); since the limit only falls, retries end.
    """
    if not is_cuda_oom(exc) or len(slots) < 2:
        return None
    for slot in slots:
        slot.suspended = slot.finish is None and not slot.gen.done
    return max(1, len(slots) // 2)


def _forward_logits(model: Any, tokens: list[str]) -> Any:
    """CTranslate2's `forward_batch` for one sequence, as float32 numpy on the CPU."""
    import numpy as np

    out = model.forward_batch([tokens])
    if str(getattr(out, "device", "cpu")) != "cpu":
        import ctranslate2

        out = out.to_device(ctranslate2.Device.cpu)
    return np.asarray(out, dtype=np.float32)[0].copy()


class ClosedBackend:
    """Stands in for the generator once the engine is closed: it was released."""

    def generate_batch(self, start_tokens: list[list[str]], **kwargs: Any) -> Any:
        raise ShuttingDown()


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether CTranslate2 failed because the GPU ran out of memory."""
    text = str(exc)
    return any(words in text for words in _CUDA_OOM)


def model_error_message(exc: BaseException) -> str:
    """What a reply whose batch failed says."""
    if isinstance(exc, UserFacingError):
        return exc.message
    if is_cuda_oom(exc):
        return ModelError(
            "The GPU ran out of memory writing this reply. Try a shorter prompt or a "
            "smaller max_new_tokens, or ask again when fewer replies are being written."
        ).message
    return ModelError("The model failed while writing this reply.").message


def unload_weights(generator: Any) -> None:
    """Unload, retrying while CTranslate2 still counts a batch (for up to a second).

    `unload_model` silently does nothing while CTranslate2 counts a batch as
    active, which it can for a moment after `generate_batch` returned.
    """
    for _ in range(200):
        generator.unload_model()
        if not getattr(generator, "model_is_loaded", False):
            return
        time.sleep(0.005)
    raise RuntimeError("CTranslate2 kept the model loaded")


def reload_without_state(generator: Any) -> None:
    """Unload the weights and load them again: CTranslate2 forgets every kept persona."""
    unload_weights(generator)
    give_memory_back()
    generator.load_model()


def give_memory_back() -> None:
    """Return freed heap pages to the system (glibc's `malloc_trim`; elsewhere a no-op).

    CTranslate2 frees a batch's decoder state when the call ends, but glibc keeps
    the pages in each thread's arena, so without this the process stays at the
    peak of its largest batch (3 GB after long personas in batches of 8) for good.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
