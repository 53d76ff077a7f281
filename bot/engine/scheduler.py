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
- CTranslate2 reads only the first (shortest prompt - 1) tokens of a batch in
  one pass and feeds the rest of every longer prompt one token per decoding
  step. So a batch holds requests of similar remaining length (`_fits`), and a
  request's persona (system prompt) is passed apart as `static_prompt`: read once
  per batch, and kept between calls by CTranslate2 within `PersonaCache`'s bound.
- A running batch is preempted only when a cost model (`CostModel`: measured
  seconds per prompt token read and per decoding step) says the people waiting
  gain more than the re-reading costs, and never so that a streaming reply
  stalls for more than a few steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.engine.generation import (
    Generation,
    Slot,
    batch_key,
    cancelled_result,
    device_sampling,
)
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

MIN_PREFIX_TOKENS = 32
"""Personas shorter than this are read with the prompt: not worth a batch of their own."""
STALL_STEPS = 3
"""A streaming reply may be held back at most this many decoding steps to let others in."""
SKEW_TOKENS = 16
"""Longer prompts fed one token per step that a newcomer may take to share a batch."""
BIG_STATE_BYTES = 64 * 1024 * 1024
"""After a batch whose decoder state could exceed this, freed memory goes back (`malloc_trim`)."""
REREAD_SHARE = 0.25
"""A timeslice lasts at least 1 / REREAD_SHARE times what re-reading its batch costs."""


class CostModel:
    """Seconds per prompt token read in one pass and per decoding step, as measured.

    Starts from a pessimistic guess (a slow CPU), so nothing is preempted on the
    strength of a guess; the first measurement replaces the guess and later ones
    are averaged in (exponentially, so a change of load shows within a few batches).
    """

    def __init__(self, prefill_s: float = 0.002, step_s: float = 0.02, *,
                 fixed: bool = False) -> None:
        """`fixed` keeps the given figures (tests that must decide the same way every run)."""
        self.prefill_s = prefill_s
        self.step_s = step_s
        self.fixed = fixed
        self._measured_prefill = False
        self._measured_step = False
        self._calls = 0

    def observe(self, read_tokens: int, first_s: float, steps: int, decode_s: float) -> None:
        """One call: `first_s` from the call to its first token, then `steps` more in `decode_s`."""
        self._calls += 1
        if self._calls == 1 or self.fixed:
            return  # a model's first call also pays one-off set-up: not representative
        if steps >= 4 and decode_s > 0:
            step = decode_s / steps
            self.step_s = step if not self._measured_step else self.step_s + 0.3 * (
                step - self.step_s
            )
            self._measured_step = True
        if read_tokens >= 16:
            # The first token comes after the prompt read *and* one decoding step.
            per_token = max(0.0, first_s - self.step_s) / read_tokens
            self.prefill_s = per_token if not self._measured_prefill else self.prefill_s + 0.3 * (
                per_token - self.prefill_s
            )
            self._measured_prefill = True


class PersonaCache:
    """Which persona prefixes CTranslate2 may keep decoder state for, within a byte bound.

    CTranslate2's `cache_static_prompt` keeps every distinct static prompt it sees,
    in a map with no eviction, until the model is unloaded. So the engine decides
    what goes in: a prefix is admitted while the charged total (prefix tokens x
    `bytes_per_token`, every layer's keys and values) stays within `bound_bytes`;
    a prefix that does not fit is still read once per batch, just not kept, and asks
    for a flush, which the scheduler performs (unload + reload: the only way to
    empty CTranslate2's map) the next time no batch is running.
    """

    def __init__(self, bound_bytes: int, bytes_per_token: int) -> None:
        self.bound_bytes = bound_bytes
        self.bytes_per_token = bytes_per_token
        self.used_bytes = 0
        self.flush_wanted = False
        self.hits = 0
        self.admitted = 0
        self.refused = 0
        self.flushes = 0
        self._entries: dict[tuple[str, ...], int] = {}

    @property
    def enabled(self) -> bool:
        return self.bound_bytes > 0 and self.bytes_per_token > 0

    def cached(self, prefix: tuple[str, ...]) -> bool:
        return prefix in self._entries

    def admit(self, prefix: tuple[str, ...]) -> bool:
        """Whether this call may ask CTranslate2 to keep (or reuse) the prefix's state."""
        if prefix in self._entries:
            self.hits += 1
            return True
        if not self.enabled:
            return False
        cost = len(prefix) * self.bytes_per_token
        if self.used_bytes + cost > self.bound_bytes:
            self.refused += 1
            self.flush_wanted = cost <= self.bound_bytes
            return False
        self._entries[prefix] = cost
        self.used_bytes += cost
        self.admitted += 1
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.used_bytes = 0
        self.flush_wanted = False
        self.flushes += 1


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
        persona_cache_mb: float = 512.0,
        owns_backend: bool = False,
    ) -> None:
        self.bundle = bundle
        self.info = info
        self._backend = generator
        self._generator: Any = generator  # what holds CTranslate2's persona cache
        # Whoever loaded the weights releases them: `Engine.load` does, so `close`
        # unloads them; an engine built around someone else's generator (a bench's
        # second scheduler on the same weights, a test) leaves it loaded for them.
        self._owns_backend = owns_backend
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
        self.prompt_tokens_read = 0
        self.prompt_tokens_submitted = 0
        self.on_result: list[Callable[[GenerationResult], None]] = []
        self.costs = CostModel(
            prefill_s=0.0002 if info.device == "cuda" else 0.002,
            step_s=0.01 if info.device == "cuda" else 0.02,
        )
        self.persona_cache = PersonaCache(
            int(persona_cache_mb * 1024 * 1024), info.kv_bytes_per_token
        )
        self._flushing = False
        self._prefixes: dict[str, tuple[int, ...]] = {}

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
        persona_cache_mb: float = 512.0,
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
            persona_cache_mb=persona_cache_mb,
            owns_backend=True,
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
        return PreparedPrompt(tokens=tokens, max_new_tokens=max_new, clamped=clamped,
                              prefix_tokens=self._persona_prefix(request.system_prompt, ids))

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
            if len(self._prefixes) >= 1024:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = prefix
        n = len(prefix)
        if n < MIN_PREFIX_TOKENS or n >= len(ids) or tuple(ids[:n]) != prefix:
            return 0
        return n

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
        self.prompt_tokens_submitted += len(prepared.tokens)
        self._waiting.append(gen)
        self._publish_positions()
        self._wakeup.set()
        return gen

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit and wait for the whole reply (CLI, benchmarks, tests)."""
        return await self.submit(request).result()

    async def forward(self, tokens: Sequence[str]) -> Any:
        """The model's logits at every position of `tokens`: one forward pass, no sampling.

        For the probabilities and confidence views (`bot.lab`). It runs on the
        decoding threads' executor (one thread per replica), so it takes its turn
        with the batches instead of adding a model call beside them, and counts as
        a busy lane meanwhile so a persona-cache flush never unloads the weights
        under it. Returns float32 numpy logits, shape [len(tokens), vocabulary].
        """
        if self._closing:
            raise ShuttingDown()
        while self._flushing:  # noqa: ASYNC110 - a flush is rare and short (0.05-0.2 s)
            await asyncio.sleep(0.01)
        model = self._backend if hasattr(self._backend, "forward_batch") else self._generator
        self._busy_lanes += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, _forward_logits, model, list(tokens)
            )
        finally:
            self._busy_lanes -= 1

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
        if self._owns_backend:
            unload = getattr(self._generator, "unload_model", None)
            if callable(unload):
                with contextlib.suppress(Exception):
                    unload()
            self._generator = None
        del backend  # our last reference: an owned generator and its threads end now

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

    def _compatible(self, a: Generation, b: Generation) -> bool:
        """Same sampling settings and the same persona prefix: one call can serve both."""
        return batch_key(a) == batch_key(b) and _prefix_of(a) == _prefix_of(b)

    def _fits(self, members: list[Generation]) -> bool:
        """Whether one call reads these prompts without sequential reading that hurts.

        CTranslate2 feeds every token beyond the shortest prompt one per step. A
        reply that is streaming (running, or paused only to let newcomers join) may
        be held back `STALL_STEPS` steps at most: its reader sees a pause, not a
        freeze. Any other request may take `SKEW_TOKENS` (or a quarter of the
        shortest prompt) such steps, which costs it less than waiting for a whole
        batch; that includes replies resumed after a timeslice, so a batch that
        yielded comes back whole.
        """
        lengths = [_read_length(g) for g in members]
        shortest = min(lengths)
        for gen, length in zip(members, lengths, strict=True):
            extra = length - shortest
            streaming = gen.slot is not None and (gen in self._running or gen.slot.joining)
            limit = STALL_STEPS if streaming else max(SKEW_TOKENS, shortest // 4)
            if extra > limit:
                return False
        return True

    def _take_batch(self) -> list[Generation]:
        """The head of the queue plus compatible requests of similar length, shared fairly.

        With several replicas idle, a burst is split between them (two batches of 4
        decode faster than one of 8 on two replicas) rather than all going to one;
        but when requests of another kind wait too, they need a lane of their own,
        so this kind is not spread over it. Requests that do not fit the head's
        batch keep their place for the next lane.
        """
        # A lane whose replies have all finished is as good as free (its call is
        # only returning), so count lanes still decoding something.
        decoding = sum(1 for gens in self._lane_batches.values() if any(not g.done for g in gens))
        free = max(1, self._replicas - decoding)
        head = self._waiting.popleft()
        batch = [head]
        others = False
        for gen in list(self._waiting):
            if len(batch) >= self._max_batch:
                break
            if self._compatible(gen, head) and self._fits([*batch, gen]):
                batch.append(gen)
            else:
                others = True
        lanes = max(1, free - 1) if others else free
        batch = batch[: max(1, -(-len(batch) // lanes))]
        for gen in batch[1:]:
            self._waiting.remove(gen)
        return batch

    def _reread_s(self, gens: list[Generation]) -> float:
        """What reading these requests' prompts (and replies so far) again would cost."""
        tokens = 0
        prefixes: set[tuple[str, ...]] = set()
        for gen in gens:
            tokens += _read_length(gen)
            prefix = gen.slot.prefix() if gen.slot else ()
            if prefix and not self.persona_cache.cached(prefix):
                prefixes.add(prefix)
        tokens += sum(len(p) for p in prefixes)
        return tokens * self.costs.prefill_s

    def _preempt_reason(self, batch: list[Generation], decoding_s: float) -> str | None:
        """Whether a running batch should yield now: "join", "timeslice" or None.

        `decoding_s` counts time spent producing tokens in this call, not reading
        prompts, so a slice is never used up by its own re-reading.
        """
        if self._closing or not self._waiting or self._busy_lanes < self._replicas:
            return None
        alive = [g for g in batch if not g.done and g.slot is not None]
        if not alive:
            return None
        left = max(g.slot.max_new - g.slot.new_tokens for g in alive if g.slot)
        if left < 16:
            return None  # about to finish anyway; re-reading prompts would cost more
        if len(alive) < self._max_batch:
            members = list(alive)
            for gen in self._waiting:
                if len(members) >= self._max_batch:
                    break
                if gen.slot is None and self._compatible(gen, alive[0]) and self._fits(
                    [*members, gen]
                ):
                    members.append(gen)
            if len(members) > len(alive):
                # Joining costs every running reply one re-read; waiting costs each
                # newcomer the rest of this batch. Join only when the stall stays
                # within a few steps and the newcomers gain more than that.
                stall = self._reread_s(members)
                wait = left * self.costs.step_s
                if stall <= STALL_STEPS * self.costs.step_s and wait > stall:
                    return "join"
        if self._timeslice_s and any(not self._compatible(g, alive[0]) for g in self._waiting):
            slice_s = max(self._timeslice_s, self._reread_s(alive) / REREAD_SHARE)
            if decoding_s >= slice_s:
                return "timeslice"
        return None

    async def _lane(self, index: int) -> None:
        loop = asyncio.get_running_loop()
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
            batch = self._take_batch()
            self._busy_lanes += 1
            self._lane_batches[index] = batch
            try:
                await self._run_batch(loop, batch)
            finally:
                self._busy_lanes -= 1
                self._lane_batches.pop(index, None)

    async def _flush_persona_cache(self) -> None:
        """Empty CTranslate2's persona cache: unload and reload the weights (no batch runs).

        CTranslate2 offers no other way to drop what `cache_static_prompt` kept.
        `unload_model` silently does nothing while CTranslate2 still counts a batch
        as active (it can, for a moment after `generate_batch` returned), so it is
        retried until the model reports unloaded. Freed memory is handed back to
        the system (`malloc_trim`), or the process would keep its peak for good.
        Lanes wait meanwhile; for the embedded model on the CPU this took 0.05–0.15 s.
        """
        self._flushing = True
        started = time.perf_counter()
        generator = self._generator
        try:
            if hasattr(generator, "unload_model") and hasattr(generator, "load_model"):
                await asyncio.to_thread(_reload_without_state, generator)
            self.persona_cache.clear()
            log.info("persona cache flushed in %.2f s", time.perf_counter() - started)
        except Exception:
            log.exception("could not flush the persona cache; no more personas are kept")
            self.persona_cache.flush_wanted = False
            self.persona_cache.bound_bytes = 0
        finally:
            self._flushing = False
            self._wakeup.set()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[Generation]) -> None:
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
        preempt = threading.Event()
        reason: str | None = None
        first_token = threading.Event()
        decoding_since: float | None = None
        future = loop.run_in_executor(
            self._executor, self._decode, loop, slots, preempt, first_token, keep, stored
        )
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.05)
                if done:
                    break
                if decoding_since is None:
                    if not first_token.is_set():
                        continue
                    decoding_since = loop.time()
                if reason is None:
                    reason = self._preempt_reason(batch, loop.time() - decoding_since)
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
                    for gen in resumed:
                        if gen.slot is not None:
                            gen.slot.joining = True
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
        self,
        loop: asyncio.AbstractEventLoop,
        slots: list[Slot],
        preempt: threading.Event,
        first_token: threading.Event,
        keep_prefix: bool,
        prefix_stored: bool,
    ) -> None:
        """Runs on a decoding thread: one `generate_batch` call for the whole batch.

        The persona prefix is passed as `static_prompt`, kept by CTranslate2 when
        `keep_prefix` (decided on the event loop, which owns the cache's accounting).
        """
        lock = threading.Lock()
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
                loop.call_soon_threadsafe(slot.gen.emit, TextDelta(text))
            if over:
                loop.call_soon_threadsafe(slot.gen.emit, Finished(slot.result()))
            return over or slot.suspended

        sampling = device_sampling(slots[0].gen.request.knobs, self.info.vocab_size)
        max_length = max(s.max_new - s.new_tokens for s in slots)
        # min_length is shared by the batch (see _batch_key) and can never exceed
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
        self._backend.generate_batch(
            starts,
            max_length=max_length,
            include_prompt_in_result=False,
            end_token=list(self._end_ids),
            return_end_token=True,
            callback=on_step,
            **sampling,
        )
        if steps:
            self.costs.observe(one_pass, steps[0] - called, len(steps) - 1, steps[-1] - steps[0])
        longest = len(prefix) + max(len(s) for s in starts) + max_length
        if len(slots) * longest * self.info.kv_bytes_per_token > BIG_STATE_BYTES:
            give_memory_back()
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
def _forward_logits(model: Any, tokens: list[str]) -> Any:
    """CTranslate2's `forward_batch` for one sequence, as float32 numpy on the CPU."""
    import numpy as np

    out = model.forward_batch([tokens])
    if str(getattr(out, "device", "cpu")) != "cpu":
        import ctranslate2

        out = out.to_device(ctranslate2.Device.cpu)
    return np.asarray(out, dtype=np.float32)[0].copy()


def _reload_without_state(generator: Any) -> None:
    """Unload (retrying while CTranslate2 still counts a batch) and reload the weights."""
    for _ in range(200):
        generator.unload_model()
        if not generator.model_is_loaded:
            break
        time.sleep(0.005)
    else:
        raise RuntimeError("CTranslate2 kept the model loaded")
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


def _prefix_of(gen: Generation) -> tuple[int, int]:
    """A cheap identity for a request's persona prefix: its length and hash."""
    n = gen.prepared.prefix_tokens
    return (n, hash(tuple(gen.prepared.tokens[:n]))) if n else (0, 0)


def _read_length(gen: Generation) -> int:
    """Tokens the next call must read for this request besides the persona prefix."""
    if gen.slot is not None:
        return gen.slot.read_length()
    return len(gen.prepared.tokens) - gen.prepared.prefix_tokens


def _model_error_message(exc: BaseException) -> str:
    if isinstance(exc, UserFacingError):
        return exc.message
    if is_cuda_oom(exc):
        return ModelError(
            "The GPU ran out of memory writing this reply. Try a shorter prompt or a "
            "smaller max_new_tokens, or ask again when fewer replies are being written."
        ).message
    return ModelError("The model failed while writing this reply.").message
