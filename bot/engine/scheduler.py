"""The generation engine: (system prompt, prompt, knobs) in, a stream of text out.

Design, and why:

- CTranslate2 decodes on its own threads; we call `generate_batch` from a small
  thread pool (one thread per replica, `inter_threads`) and get a Python
  callback per token. The callback detokenizes, matches stop sequences and hands
  the new text to the event loop with `call_soon_threadsafe`. The event loop
  never waits on the model, and CTranslate2's own async helper (which polls the
  loop) is not used.
- Concurrent requests that share sampling settings are decoded together in one
  `generate_batch` call: on a 2-core CPU that is where aggregate throughput
  comes from. Requests with different settings, or arriving while every
  replica is busy, wait in a bounded FIFO queue that reports positions.
- Each request stops on its own: returning True from the callback ends that
  request (cancel, stop sequence, its own `max_new_tokens`) while the rest of
  the batch continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.engine.generation import Generation, Slot, batch_key, cancelled_result
from bot.engine.loading import load_ctranslate2
from bot.engine.types import (
    EngineInfo,
    Finished,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GeneratorBackend,
    PreparedPrompt,
    Queued,
    Started,
    TextDelta,
)
from bot.errors import ModelError, PromptTooLong, QueueFull, ShuttingDown, UserFacingError
from bot.model.bundle import ModelBundle
from bot.model.chat import ChatTemplateError
from bot.model.tokenizer import require_valid_unicode

log = logging.getLogger(__name__)


class Engine:
    """Schedules requests onto CTranslate2 replicas, batching what can be batched."""

    def __init__(
        self,
        bundle: ModelBundle,
        generator: GeneratorBackend,
        *,
        info: EngineInfo,
        replicas: int = 1,
        max_batch_size: int = 8,
        queue_size: int = 32,
        batch_wait_s: float = 0.015,
        timeslice_s: float = 2.0,
    ) -> None:
        self.bundle = bundle
        self.info = info
        self._backend = generator
        self._replicas = replicas
        self._max_batch = max_batch_size
        self._queue_size = queue_size
        self._batch_wait_s = batch_wait_s
        self._timeslice_s = timeslice_s
        self._busy_lanes = 0
        self._lane_batches: dict[int, list[Generation]] = {}
        self.preemptions = 0
        self._waiting: deque[Generation] = deque()
        self._running: set[Generation] = set()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=replicas, thread_name_prefix="decode")
        self._lanes = [asyncio.create_task(self._lane(i)) for i in range(replicas)]
        self._end_ids = frozenset(bundle.end_token_ids)
        self.tokens_generated = 0
        self.on_result: list[Callable[[GenerationResult], None]] = []

    # --- construction ----------------------------------------------------------

    @classmethod
    async def load(
        cls,
        model_dir: Path,
        *,
        device: str = "auto",
        device_index: Sequence[int] = (0,),
        compute_type: str | None = None,
        cpu_threads: int = 0,
        inter_threads: int = 1,
        max_batch_size: int = 8,
        queue_size: int = 32,
        batch_wait_ms: int = 15,
        timeslice_s: float = 2.0,
        seed: int | None = None,
        context_length: int | None = None,
    ) -> Engine:
        """Load tokenizer, template and weights off the event loop."""
        bundle, generator, info = await asyncio.to_thread(
            load_ctranslate2, model_dir, device=device, device_index=device_index,
            compute_type=compute_type, cpu_threads=cpu_threads, inter_threads=inter_threads,
            seed=seed, context_length=context_length,
        )
        return cls(
            bundle,
            generator,
            info=info,
            replicas=info.inter_threads * max(1, len(device_index)),
            max_batch_size=max_batch_size,
            queue_size=queue_size,
            batch_wait_s=batch_wait_ms / 1000,
            timeslice_s=timeslice_s,
        )

    # --- public API --------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        """Render the chat template, count tokens and fit the reply into the context."""
        require_valid_unicode(request.prompt, "prompt")
        if request.system_prompt:
            require_valid_unicode(request.system_prompt, "system prompt")
        try:
            ids = self.bundle.encode_chat(
                request.system_prompt or None, request.prompt,
                [(turn.role, turn.text) for turn in request.history],
            )
        except ChatTemplateError as exc:
            raise UserFacingError(str(exc)) from exc
        context = self.bundle.context_length
        if len(ids) >= context:
            raise PromptTooLong(len(ids), context)
        max_new = request.knobs.max_new_tokens
        clamped = False
        if len(ids) + max_new > context:
            max_new = context - len(ids)
            clamped = True
        tokens = [self.bundle.tokenizer.id_to_token(i) for i in ids]
        return PreparedPrompt(tokens=tokens, max_new_tokens=max_new, clamped=clamped)

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue a request; raises `QueueFull`, `PromptTooLong` or `ShuttingDown` at once."""
        if self._closing:
            raise ShuttingDown()
        if len(self._waiting) >= self._queue_size:
            raise QueueFull(self._queue_size)
        prepared = self.prepare(request)
        gen = Generation(
            request, prepared, on_cancel=self._cancel_waiting, on_finished=self._running.discard
        )
        self._waiting.append(gen)
        self._publish_positions()
        self._wakeup.set()
        return gen

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit and wait for the whole reply (CLI, benchmarks, tests)."""
        return await self.submit(request).result()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def backend(self) -> GeneratorBackend:
        """What `generate_batch` is called on: CTranslate2's Generator, or a test double."""
        return self._backend

    def set_backend(self, backend: GeneratorBackend) -> GeneratorBackend:
        """Swap the backend for the next batch (tests, benches); returns the previous one.

        The public seam for test backends (scripted, failing, CUDA-rule enforcing),
        so nothing outside the engine assigns its private members.
        """
        previous, self._backend = self._backend, backend
        return previous

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new work, let running replies finish for `grace_s`, cancel the rest.

        Then shut down deterministically, in this order: the lanes end (each waits
        for its `generate_batch` call to return), the decoding threads are joined,
        and the CTranslate2 generator is unloaded and dropped here, on our terms.
        Left to the garbage collector, it could be destroyed during interpreter
        exit, its C++ thread pool torn down while the runtime's own threads and
        statics go away: one such race ended a `python -m bot ask` with SIGABRT.
        Closing twice is harmless.
        """
        self._closing = True
        while self._waiting:
            gen = self._waiting.popleft()
            gen.cancel_requested = True
            gen.emit(Finished(cancelled_result(gen)))
        if self._running and grace_s > 0:
            pending = [asyncio.ensure_future(g.result()) for g in self._running]
            await asyncio.wait(pending, timeout=grace_s)
        for gen in list(self._running):
            gen.cancel_requested = True
        self._wakeup.set()
        await asyncio.gather(*self._lanes, return_exceptions=True)
        self._executor.shutdown(wait=True)
        backend, self._backend = self._backend, _ClosedBackend()
        unload = getattr(backend, "unload_model", None)
        if callable(unload):
            with contextlib.suppress(Exception):
                unload()
        del backend  # the last reference: the generator and its threads end now

    @property
    def closing(self) -> bool:
        return self._closing

    # --- scheduling ----------------------------------------------------------------
    #
    # CTranslate2 cannot add a request to a running `generate_batch` call. So a
    # running batch is *preempted* at a token boundary when that serves the
    # people waiting: to let compatible newcomers join it (continuous batching,
    # at the price of re-reading each member's prompt plus reply so far), or,
    # after `timeslice_s`, to give requests with other settings their turn
    # (round robin). A preempted request keeps its detokenizer, stop matcher and
    # statistics and resumes exactly where it stopped.

    def _cancel_waiting(self, gen: Generation) -> None:
        if gen in self._waiting:
            self._waiting.remove(gen)
            gen.emit(Finished(cancelled_result(gen)))
            self._publish_positions()

    def _publish_positions(self) -> None:
        for ahead, gen in enumerate(self._waiting):
            if gen.slot is None:  # a preempted reply is already streaming: no "queued"
                gen.emit(Queued(ahead))

    def _take_batch(self) -> list[Generation]:
        """The head of the queue plus compatible requests, shared fairly between free lanes.

        With several replicas idle, a burst is split between them (two batches of 4
        decode faster than one of 8 on two replicas) rather than all going to one.
        """
        # A lane whose replies have all finished is as good as free (its call is
        # only returning), so count lanes still decoding something.
        decoding = sum(1 for gens in self._lane_batches.values() if any(not g.done for g in gens))
        free = max(1, self._replicas - decoding)
        limit = min(self._max_batch, -(-len(self._waiting) // free))
        head = self._waiting.popleft()
        batch = [head]
        key = batch_key(head)
        for gen in list(self._waiting):
            if len(batch) >= limit:
                break
            if batch_key(gen) == key:
                self._waiting.remove(gen)
                batch.append(gen)
        return batch

    def _preempt_reason(self, batch: list[Generation], elapsed: float) -> str | None:
        """Whether a running batch should yield now: "join", "timeslice" or None."""
        if self._closing or not self._waiting or self._busy_lanes < self._replicas:
            return None
        alive = [g for g in batch if not g.done and g.slot is not None]
        if not alive:
            return None
        left = max(g.slot.max_new - g.slot.new_tokens for g in alive if g.slot)
        if left < 16:
            return None  # about to finish anyway; re-reading prompts would cost more
        key = batch_key(alive[0])
        if len(alive) < self._max_batch and any(batch_key(g) == key for g in self._waiting):
            return "join"
        if self._timeslice_s and elapsed >= self._timeslice_s:
            return "timeslice"
        return None

    async def _lane(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._closing:
                return
            if self._batch_wait_s and len(self._waiting) < self._max_batch:
                # Asks often arrive in bursts; a few ms lets them share a batch.
                await asyncio.sleep(self._batch_wait_s)
                if not self._waiting:
                    continue
            batch = self._take_batch()
            self._busy_lanes += 1
            self._lane_batches[index] = batch
            try:
                await self._run_batch(loop, batch)
            finally:
                self._busy_lanes -= 1
                self._lane_batches.pop(index, None)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[Generation]) -> None:
        self._publish_positions()
        self._running.update(batch)
        slots: list[Slot] = []
        for gen in batch:
            if gen.slot is None:
                gen.slot = Slot(gen, self.bundle, self._end_ids)
                gen.slot.started_at = time.perf_counter()
                gen.emit(Started())
            slots.append(gen.slot)
        before = [slot.new_tokens for slot in slots]
        preempt = threading.Event()
        reason: str | None = None
        started = loop.time()
        future = loop.run_in_executor(self._executor, self._decode, loop, slots, preempt)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.05)
                if done:
                    break
                if reason is None:
                    reason = self._preempt_reason(batch, loop.time() - started)
                    if reason is not None:
                        preempt.set()
            future.result()
        except Exception as exc:  # the model failed: end these replies, keep serving
            if self._retry_smaller_after_oom(slots, exc):
                reason = "join"  # back at the head of the queue, in smaller batches
            else:
                log.exception("decoding failed for a batch of %d", len(slots))
                message = _model_error_message(exc)
                for slot in slots:
                    slot.suspended = False
                    if not slot.gen.done:
                        slot.gen.emit(Finished(slot.result(error=message)))
        finally:
            resumed = [s.gen for s in slots if s.suspended and not s.gen.done]
            for slot, count in zip(slots, before, strict=True):
                slot.suspended = False
                self.tokens_generated += slot.new_tokens - count
                if slot.gen in resumed:
                    continue
                if not slot.gen.done:
                    slot.gen.emit(Finished(slot.result()))
                self._running.discard(slot.gen)
                for hook in self.on_result:
                    with contextlib.suppress(Exception):
                        hook(slot.gen.final)
            if resumed:
                self.preemptions += 1
                for gen in resumed:
                    self._running.discard(gen)
                if reason == "join":
                    self._waiting.extendleft(reversed(resumed))
                else:
                    self._waiting.extend(resumed)
                self._publish_positions()
                self._wakeup.set()

    def _retry_smaller_after_oom(self, slots: list[Slot], exc: BaseException) -> bool:
        """CUDA ran out of memory in a batch: halve the batch limit and retry its replies.

        Each reply keeps what it has streamed and resumes from there, like a
        preempted one, at the head of the queue. The limit stays lowered (the GPU
        showed what fits), so a reply that fails alone gets the out-of-memory
        message instead of a retry; and since the limit only falls, retries end.
        """
        if not is_cuda_oom(exc) or len(slots) < 2:
            return False
        self._max_batch = max(1, len(slots) // 2)
        log.warning(
            "CUDA ran out of memory decoding a batch of %d; retrying in batches of at most %d",
            len(slots), self._max_batch,
        )
        for slot in slots:
            slot.suspended = slot.finish is None and not slot.gen.done
        return True

    def _decode(
        self, loop: asyncio.AbstractEventLoop, slots: list[Slot], preempt: threading.Event
    ) -> None:
        """Runs on a decoding thread: one `generate_batch` call for the whole batch."""
        lock = threading.Lock()
        finished = [False] * len(slots)

        def on_step(step: Any) -> bool:
            over: bool
            i = step.batch_id
            slot = slots[i]
            with lock:
                if finished[i]:
                    return True
                text, over = slot.step(step.token_id)
                if over:
                    finished[i] = True
                elif preempt.is_set():
                    # The token is kept; the request resumes from here later.
                    slot.suspended = finished[i] = True
            if text:
                loop.call_soon_threadsafe(slot.gen.emit, TextDelta(text))
            if over:
                loop.call_soon_threadsafe(slot.gen.emit, Finished(slot.result()))
            return over or slot.suspended

        sampling = slots[0].gen.request.knobs.ct2_sampling()
        max_length = max(s.max_new - s.new_tokens for s in slots)
        # min_length is shared by the batch (see _batch_key) and can never exceed
        # what is left of the shortest budget.
        sampling["min_length"] = min(
            slots[0].remaining_min(), min(s.max_new - s.new_tokens for s in slots)
        )
        self._backend.generate_batch(
            [s.resume_tokens() for s in slots],
            max_length=max_length,
            include_prompt_in_result=False,
            end_token=list(self._end_ids),
            return_end_token=True,
            callback=on_step,
            **sampling,
        )
        # Requests that ended without a final callback (e.g. the batch hit
        # max_length on another request's budget) are settled here.
        for i, slot in enumerate(slots):
            if not finished[i]:
                tail = slot.flush()
                if tail:
                    loop.call_soon_threadsafe(slot.gen.emit, TextDelta(tail))
                if slot.finish is None:
                    slot.finish = (
                        FinishReason.CANCELLED if slot.gen.cancel_requested
                        else FinishReason.MAX_TOKENS
                    )
                loop.call_soon_threadsafe(slot.gen.emit, Finished(slot.result()))


class _ClosedBackend:
    """Stands in for the generator once the engine is closed: it was released."""

    def generate_batch(self, start_tokens: list[list[str]], **kwargs: Any) -> Any:
        raise ShuttingDown()


#: CTranslate2's words for a GPU out of memory (its CUDA_CHECK / CUBLAS_CHECK messages).
_CUDA_OOM = ("CUDA failed with error out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether CTranslate2 failed because the GPU ran out of memory."""
    text = str(exc)
    return any(words in text for words in _CUDA_OOM)


def _model_error_message(exc: BaseException) -> str:
    if isinstance(exc, UserFacingError):
        return exc.message
    if is_cuda_oom(exc):
        return ModelError(
            "The GPU ran out of memory writing this reply. Try a shorter prompt or a "
            "smaller max_new_tokens, or ask again when fewer replies are being written."
        ).message
    return ModelError("The model failed while writing this reply.").message
