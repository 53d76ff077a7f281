"""The engine's public face: (persona, prompt, knobs) in, a stream of text out.

`Engine` owns the bounded FIFO queue (which reports positions) and one lane per
replica; a lane takes a batch by the policy's rules (`bot.engine.policy`) and
hands it to the decode worker (`bot.engine.worker`). Requests sharing sampling
settings are decoded together in one `generate_batch` call: on a 2-core CPU that
is where aggregate throughput comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.engine import policy
from bot.engine.generation import Generation, Slot, cancelled_result
from bot.engine.loading import load_ctranslate2, load_off_loop
from bot.engine.policy import MIN_PREFIX_TOKENS, CostModel, PersonaCache
from bot.engine.types import (
    EngineInfo,
    EngineOptions,
    Finished,
    GenerationRequest,
    GenerationResult,
    GeneratorBackend,
    PreparedPrompt,
    Queued,
    Started,
)
from bot.engine.worker import (
    ClosedBackend,
    DecodeWorker,
    model_error_message,
    oom_retry_limit,
    reload_without_state,
    unload_weights,
)
from bot.errors import PromptTooLong, QueueFull, ShuttingDown, UserFacingError
from bot.model.bundle import ModelBundle
from bot.model.chat import ChatTemplateError
from bot.model.tokenizer import require_valid_unicode

__all__ = ["Engine"]

log = logging.getLogger(__name__)

#: Texts whose token counts `Engine.count_tokens` keeps (a few long conversations' turns).
TOKEN_COUNT_CACHE = 8192


class Engine:
    """Schedules requests onto CTranslate2 replicas, batching what can be batched."""

    def __init__(
        self,
        bundle: ModelBundle,
        generator: GeneratorBackend,
        *,
        info: EngineInfo,
        options: EngineOptions | None = None,
        owns_backend: bool = False,
    ) -> None:
        """One lane per replica: `info.inter_threads` on each GPU of `options.device_index`.

        The loading options in `options` (device, threads, seed...) were used by
        whoever loaded `generator`; the engine reads the scheduling ones.
        """
        options = options or EngineOptions()
        self.bundle = bundle
        self.info = info
        self.options = options
        self._generator: Any = generator  # what holds CTranslate2's persona cache
        # Whoever loaded the weights releases them: `Engine.load` does, so `close`
        # unloads them; an engine built around someone else's generator (a bench's
        # second scheduler on the same weights, a test) leaves it loaded for them.
        self._owns_backend = owns_backend
        replicas = max(1, info.inter_threads) * max(1, len(options.device_index))
        self._replicas = replicas
        self._max_batch = options.max_batch_size
        self._batch_wait_s = options.batch_wait_ms / 1000
        self._busy_lanes = 0
        self._lane_batches: dict[int, list[Generation]] = {}
        self.preemptions = 0
        self._waiting: deque[Generation] = deque()
        self._running: set[Generation] = set()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._end_ids = frozenset(bundle.end_token_ids)
        self._worker = DecodeWorker(
            generator, threads=replicas, end_ids=self._end_ids,
            vocab_size=info.vocab_size, kv_bytes_per_token=info.kv_bytes_per_token,
        )
        self._lanes = [asyncio.create_task(self._lane(i)) for i in range(replicas)]
        self.tokens_generated = 0
        self.prompt_tokens_read = 0
        self.prompt_tokens_submitted = 0
        self.on_result: list[Callable[[GenerationResult], None]] = []
        self.costs = CostModel.for_device(info.device)
        self.persona_cache = PersonaCache(
            int(options.persona_cache_mb * 1024 * 1024), info.kv_bytes_per_token
        )
        self._flushing = False
        self._prefixes: dict[str, tuple[int, ...]] = {}
        self._counts: dict[str, int] = {}  # `count_tokens`, least recently used first
        self._counts_lock = threading.Lock()

    # --- construction ----------------------------------------------------------

    @classmethod
    async def load(cls, model_dir: Path, options: EngineOptions | None = None) -> Engine:
        """Load tokenizer, template and weights off the event loop (CTranslate2's threads
        at `options.decode_nice`, `bot.engine.loading`)."""
        options = options or EngineOptions()
        bundle, generator, info = await load_off_loop(
            lambda: load_ctranslate2(model_dir, options), nice=options.decode_nice)
        return cls(bundle, generator, info=info, options=options, owns_backend=True)

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
        return PreparedPrompt(tokens=tokens, max_new_tokens=max_new, clamped=clamped,
                              prefix_tokens=self._persona_prefix(request.system_prompt, ids))

    @property
    def context_length(self) -> int:
        return self.bundle.context_length

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` encoded on its own as plain text, cached per text.

        Fitting a conversation sums these per stored turn, so each turn is encoded
        once, not once per candidate prompt. Least recently used out first.
        """
        with self._counts_lock:  # preparation runs in worker threads
            count = self._counts.pop(text, None)
        if count is None:
            count = len(self.bundle.tokenizer.encode(text))
        with self._counts_lock:
            if len(self._counts) >= TOKEN_COUNT_CACHE:
                self._counts.pop(next(iter(self._counts)))
            self._counts[text] = count  # (re)inserted last: most recently used
        return count

    def _persona_prefix(self, system: str | None, ids: list[int]) -> int:
        """How many leading ids are the rendered persona, the same for every ask with it.

        Found by rendering the persona with two different user texts and keeping
        their common tokens, less one (a tokenizer may merge across the boundary);
        the ask's own ids must start with exactly those, so history, templates that
        fold the persona into the first user turn and odd tokenizations stay correct.
        """
        key = system or ""
        prefix = self._prefixes.get(key)
        if prefix is None:
            try:
                a = self.bundle.encode_chat(system or None, "a")
                b = self.bundle.encode_chat(system or None, "b")
            except (UserFacingError, ValueError):  # a template refusing "a": no prefix, no harm
                a = b = []
            common = 0
            for x, y in zip(a, b, strict=False):
                if x != y:
                    break
                common += 1
            prefix = tuple(a[: max(0, common - 1)])
            with self._counts_lock:  # preparation runs in worker threads
                if len(self._prefixes) >= 1024:
                    self._prefixes.pop(next(iter(self._prefixes)))
                self._prefixes[key] = prefix
        n = len(prefix)
        if n < MIN_PREFIX_TOKENS or n >= len(ids) or tuple(ids[:n]) != prefix:
            return 0
        return n

    def submit(
        self, request: GenerationRequest, prepared: PreparedPrompt | None = None
    ) -> Generation:
        """Queue a request; raises `QueueFull`, `PromptTooLong` or `ShuttingDown` at once.

        `prepared` is this engine's `prepare(request)` when the caller already has
        it (fitting a conversation prepares to measure): it is queued as it is, not
        rendered and encoded again.
        """
        if self._closing:
            raise ShuttingDown()
        if len(self._waiting) >= self.options.queue_size:
            raise QueueFull(self.options.queue_size)
        if prepared is None:
            prepared = self.prepare(request)
        gen = Generation(
            request, prepared, on_cancel=self._cancel_waiting, on_finished=self._running.discard
        )
        self.prompt_tokens_submitted += len(prepared.tokens)
        self._waiting.append(gen)
        self._publish_positions()
        self._wakeup.set()
        return gen

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit and wait for the whole reply (CLI, benchmarks, tests)."""
        return await self.submit(request).result()

    async def forward(self, tokens: Sequence[str]) -> Any:
        """Float32 logits [len(tokens), vocabulary]: one forward pass, no sampling (`bot.lab`).

        Waits for a free lane and for any persona-cache flush (which unloads the
        weights), and holds the lane as busy while it runs on the decoding threads.
        """
        # Polled: a forward pass is not a queued request (it has no events), and
        # 10 ms is below one decoding step.
        while self._flushing or self._busy_lanes >= self._replicas:
            if self._closing:
                raise ShuttingDown()
            await asyncio.sleep(0.01)
        if self._closing:
            raise ShuttingDown()
        self._busy_lanes += 1
        try:
            return await self._worker.forward(tokens, self._generator)
        finally:
            self._busy_lanes -= 1
            self._wakeup.set()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    def busy(self) -> bool:
        """Work queued or running: a model registry never unloads a busy engine."""
        return bool(self._running or self._waiting)

    @property
    def backend(self) -> GeneratorBackend:
        """What `generate_batch` is called on: CTranslate2's Generator, or a test double."""
        return self._worker.backend

    def set_backend(self, backend: GeneratorBackend) -> GeneratorBackend:
        """Swap the backend for the next batch (tests, benches); returns the previous one."""
        previous, self._worker.backend = self._worker.backend, backend
        return previous

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new work, let running replies finish for `grace_s`, cancel the rest.

        Then, in order: the lanes end (each after its `generate_batch` call returns),
        the decoding threads are joined, and an owned generator is unloaded and
        dropped here. Left to the garbage collector at interpreter exit, its C++
        thread pool can be torn down after the runtime's statics (SIGABRT).
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
        self._worker.shutdown()
        backend, self._worker.backend = self._worker.backend, ClosedBackend()
        if self._owns_backend:
            if callable(getattr(self._generator, "unload_model", None)):
                with contextlib.suppress(Exception):
                    unload_weights(self._generator)
            self._generator = None
        del backend  # our last reference: an owned generator and its threads end now

    @property
    def closing(self) -> bool:
        return self._closing

    # --- scheduling ----------------------------------------------------------------
    #
    # Which requests share a call and when a running call yields is the policy's
    # (`bot.engine.policy`); here it is applied. A preempted request keeps its
    # detokenizer, stop matcher and statistics and resumes exactly where it stopped.

    def _cancel_waiting(self, gen: Generation) -> None:
        if gen in self._waiting:
            self._waiting.remove(gen)
            gen.emit(Finished(cancelled_result(gen)))
            self._publish_positions()

    def _publish_positions(self) -> None:
        for ahead, gen in enumerate(self._waiting):
            if gen.slot is None:  # a preempted reply is already streaming: no "queued"
                gen.emit(Queued(ahead))

    def _preempt_reason(self, batch: list[Generation], decoding_s: float) -> str | None:
        """The policy's answer for a running batch, asked only while every lane is busy."""
        if self._closing or self._busy_lanes < self._replicas:
            return None
        return policy.preempt_reason(
            batch, self._waiting, running=self._running, max_batch=self._max_batch,
            timeslice_s=self.options.timeslice_s, decoding_s=decoding_s,
            cache=self.persona_cache, costs=self.costs,
        )

    async def _lane(self, index: int) -> None:
        while True:
            while not self._waiting or self._flushing:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._closing:
                return
            if self._batch_wait_s and len(self._waiting) < self._max_batch:
                # Asks often arrive in bursts; a few ms lets them share a batch.
                await asyncio.sleep(self._batch_wait_s)
                if not self._waiting or self._flushing:
                    continue
            if self.persona_cache.flush_wanted and self._busy_lanes == 0:
                await self._flush_persona_cache()
                continue
            batch = policy.take_batch(
                self._waiting, max_batch=self._max_batch, running=self._running,
                lanes=policy.free_lanes(self._replicas, self._lane_batches.values()),
            )
            self._busy_lanes += 1
            self._lane_batches[index] = batch
            try:
                await self._run_batch(batch)
            finally:
                self._busy_lanes -= 1
                self._lane_batches.pop(index, None)

    async def _flush_persona_cache(self) -> None:
        """Empty CTranslate2's persona cache by unloading and reloading the weights.

        CTranslate2 offers no other way to drop what `cache_static_prompt` kept.
        Lanes wait meanwhile (`reload_without_state` has the details).
        """
        self._flushing = True
        started = time.perf_counter()
        generator = self._generator
        try:
            if hasattr(generator, "unload_model") and hasattr(generator, "load_model"):
                # As at load: whatever threads CTranslate2 starts again start lowered.
                await load_off_loop(lambda: reload_without_state(generator),
                                    nice=self.options.decode_nice)
            self.persona_cache.clear()
            log.info("persona cache flushed in %.2f s", time.perf_counter() - started)
        except Exception:
            log.exception("could not flush the persona cache; no more personas are kept")
            self.persona_cache.flush_wanted = False
            self.persona_cache.bound_bytes = 0
        finally:
            self._flushing = False
            self._wakeup.set()

    async def _run_batch(self, batch: list[Generation]) -> None:
        self._publish_positions()
        self._running.update(batch)
        slots: list[Slot] = []
        for gen in batch:
            if gen.slot is None:
                gen.slot = Slot(gen, self.bundle, self._end_ids)
                gen.slot.started_at = time.perf_counter()
                gen.emit(Started())
            gen.slot.joining = False
            slots.append(gen.slot)
        before = [slot.new_tokens for slot in slots]
        prefix = slots[0].prefix()
        keep = stored = False
        if prefix:
            # Kept by an earlier call (admitted then): CTranslate2 copies its state.
            stored = self.persona_cache.cached(prefix)
            keep = self.persona_cache.admit(prefix)
        self.prompt_tokens_read += sum(s.read_length() for s in slots) + (
            0 if stored else len(prefix)
        )
        reason: str | None = None
        try:
            reason = await self._worker.run(
                slots, keep_prefix=keep, prefix_stored=stored, costs=self.costs,
                should_yield=lambda decoding_s: self._preempt_reason(batch, decoding_s),
            )
        except Exception as exc:  # the model failed: end these replies, keep serving
            smaller = oom_retry_limit(slots, exc)
            if smaller is not None:
                # Back at the head of the queue, in smaller batches; the limit stays
                # lowered, so a reply that fails alone gets the out-of-memory message.
                self._max_batch = smaller
                log.warning(
                    "CUDA ran out of memory decoding a batch of %d; retrying in batches "
                    "of at most %d", len(slots), self._max_batch,
                )
                reason = "join"
            else:
                log.exception("decoding failed for a batch of %d", len(slots))
                message = model_error_message(exc)
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
                    for gen in resumed:
                        if gen.slot is not None:
                            gen.slot.joining = True
                    self._waiting.extendleft(reversed(resumed))
                else:
                    self._waiting.extend(resumed)
                self._publish_positions()
                self._wakeup.set()
