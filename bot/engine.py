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
import enum
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.errors import ModelError, PromptTooLong, QueueFull, ShuttingDown, UserFacingError
from bot.knobs import Knobs
from bot.model_files import ModelBundle, load_model_bundle
from bot.streaming import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)


class FinishReason(enum.StrEnum):
    END = "end"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class GenerationRequest:
    """One ask, already resolved against the settings store."""

    prompt: str
    knobs: Knobs = field(default_factory=Knobs)
    system_prompt: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    decode_tok_s: float | None
    total_s: float
    finish_reason: FinishReason
    max_new_tokens: int
    clamped_to_context: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Queued:
    """The request is waiting; `ahead` requests are before it."""

    ahead: int


@dataclass(frozen=True)
class Started:
    """Decoding of the request has begun (its prompt is being read)."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


Event = Queued | Started | TextDelta | Finished


class GeneratorBackend(Protocol):
    """The part of `ctranslate2.Generator` the engine uses; tests may wrap it."""

    def generate_batch(self, start_tokens: list[list[str]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PreparedPrompt:
    tokens: list[str]
    max_new_tokens: int
    clamped: bool


class Generation:
    """A handle on one submitted request: iterate its events, cancel it, await it."""

    def __init__(
        self, engine: Engine, request: GenerationRequest, prepared: PreparedPrompt
    ) -> None:
        self.request = request
        self.prepared = prepared
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._done: asyncio.Future[GenerationResult] = self._loop.create_future()
        self.cancel_requested = False  # read by the decoding thread; a bool is atomic
        self.submitted_at = time.perf_counter()
        self.ahead: int | None = None
        self._slot: _Slot | None = None  # set once decoding starts; kept across preemptions

    # --- consumer side ---------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Yield events until (and including) `Finished`."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Finished):
                return

    async def stream(self) -> AsyncIterator[str]:
        """Just the text deltas; the result is in `await gen.result()` afterwards."""
        async for event in self.events():
            if isinstance(event, TextDelta):
                yield event.text

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._done)

    @property
    def done(self) -> bool:
        return self._done.done()

    def cancel(self) -> None:
        """Stop decoding within one token (or drop the request if it still waits)."""
        self.cancel_requested = True
        self._engine._cancel_waiting(self)

    # --- producer side (event-loop thread only) --------------------------------

    def _emit(self, event: Event) -> None:
        if self._done.done():
            return
        if isinstance(event, Queued):
            if event.ahead == self.ahead:
                return
            self.ahead = event.ahead
        self._events.put_nowait(event)
        if isinstance(event, Finished):
            self._done.set_result(event.result)
            self._engine._running.discard(self)


class _Slot:
    """Per-request decoding state, owned by the decoding thread during a batch."""

    def __init__(self, gen: Generation, bundle: ModelBundle, end_ids: frozenset[int]) -> None:
        self.gen = gen
        self.detok = IncrementalDetokenizer(bundle.tokenizer.decode)
        self.stops = StopMatcher(gen.request.knobs.stop)
        self.end_ids = end_ids
        self.max_new = gen.prepared.max_new_tokens
        self.new_tokens = 0
        self.text_parts: list[str] = []
        self.started_at = 0.0
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finish: FinishReason | None = None
        self.generated: list[str] = []  # token strings, to resume after a preemption
        self.suspended = False
        self._id_to_token = bundle.tokenizer.id_to_token

    def resume_tokens(self) -> list[str]:
        """The prompt for the next `generate_batch` call: original prompt + tokens so far."""
        return self.gen.prepared.tokens + self.generated

    def remaining_min(self) -> int:
        knobs_min = self.gen.request.knobs.min_new_tokens
        return max(0, min(knobs_min, self.max_new) - self.new_tokens) if knobs_min > 0 else 0

    def step(self, token_id: int) -> tuple[str, bool]:
        """Consume one token; return (text to show, whether this request is over)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        if self.gen.cancel_requested:
            self.finish = FinishReason.CANCELLED
            return "", True
        if token_id in self.end_ids:
            self.finish = FinishReason.END
            return self._flush(), True
        self.new_tokens += 1
        self.generated.append(self._id_to_token(token_id))
        text = self.stops.feed(self.detok.push(token_id))
        if self.stops.stopped:
            self.finish = FinishReason.STOP_SEQUENCE
            return self._keep(text), True
        if self.new_tokens >= self.max_new:
            self.finish = FinishReason.MAX_TOKENS
            return self._keep(text) + self._flush(), True
        return self._keep(text), False

    def _flush(self) -> str:
        tail = self.stops.feed(self.detok.flush())
        if self.stops.stopped:
            self.finish = FinishReason.STOP_SEQUENCE
            return self._keep(tail)
        return self._keep(tail + self.stops.flush())

    def _keep(self, text: str) -> str:
        if text:
            self.text_parts.append(text)
        return text

    def result(self, error: str | None = None) -> GenerationResult:
        finish = self.finish or (FinishReason.ERROR if error else FinishReason.MAX_TOKENS)
        if error is not None and self.finish is None:
            finish = FinishReason.ERROR
        end = time.perf_counter()
        ttft = (self.first_token_at - self.started_at) if self.first_token_at else None
        decode = None
        if self.first_token_at and self.last_token_at and self.new_tokens > 1:
            span = self.last_token_at - self.first_token_at
            decode = (self.new_tokens - 1) / span if span > 0 else None
        return GenerationResult(
            text="".join(self.text_parts),
            prompt_tokens=len(self.gen.prepared.tokens),
            new_tokens=self.new_tokens,
            ttft_s=ttft,
            decode_tok_s=decode,
            total_s=end - self.gen.submitted_at,
            finish_reason=finish,
            max_new_tokens=self.max_new,
            clamped_to_context=self.gen.prepared.clamped,
            error=error,
        )


def _batch_key(gen: Generation) -> tuple[Any, ...]:
    """Requests with equal keys can share one `generate_batch` call.

    `min_length` is one value per call, so a request resumed part-way through its
    minimum only batches with requests needing the same number of further tokens.
    """
    sampling = gen.request.knobs.ct2_sampling()
    sampling.pop("min_length")
    remaining = gen._slot.remaining_min() if gen._slot is not None else max(
        0, min(gen.request.knobs.min_new_tokens, gen.prepared.max_new_tokens)
    )
    return (*sorted(sampling.items()), remaining)


@dataclass(frozen=True)
class EngineInfo:
    model_name: str
    model_path: Path
    device: str
    compute_type: str
    inter_threads: int
    cpu_threads: int
    context_length: int
    load_s: float


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
        self._generator = generator
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
    ) -> Engine:
        """Load tokenizer, template and weights off the event loop."""
        import ctranslate2

        started = time.perf_counter()
        real_device = resolve_device(device)
        ctype = compute_type or default_compute_type(real_device)
        inter_threads, cpu_threads = cpu_layout(real_device, inter_threads, cpu_threads)

        def _load() -> tuple[ModelBundle, Any]:
            bundle = load_model_bundle(model_dir)
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
            return bundle, generator

        bundle, generator = await asyncio.to_thread(_load)
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
        return cls(
            bundle,
            generator,
            info=info,
            replicas=inter_threads * max(1, len(device_index)),
            max_batch_size=max_batch_size,
            queue_size=queue_size,
            batch_wait_s=batch_wait_ms / 1000,
            timeslice_s=timeslice_s,
        )

    # --- public API --------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        """Render the chat template, count tokens and fit the reply into the context."""
        for what, value in (("prompt", request.prompt), ("system prompt", request.system_prompt)):
            if value and not _is_encodable(value):
                raise UserFacingError(
                    f"Your {what} contains characters that are not valid Unicode "
                    "(a broken emoji or surrogate); please retype it."
                )
        text = self.bundle.chat.render(request.system_prompt or None, request.prompt)
        ids = self.bundle.encode_prompt(text)
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
        gen = Generation(self, request, prepared)
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

    def tokenize(self, text: str) -> list[tuple[int, str]]:
        """(id, text) per token, for showing how the model sees a string."""
        if not _is_encodable(text):
            # The tokenizer rejects lone surrogates with a TypeError; say what is wrong.
            raise UserFacingError(
                "That text contains characters that are not valid Unicode "
                "(a broken emoji or surrogate); please retype it."
            )
        tok = self.bundle.tokenizer
        ids = tok.encode(text)
        pieces: list[tuple[int, str]] = []
        detok = IncrementalDetokenizer(tok.decode)
        for i in ids:
            pieces.append((i, detok.push(i)))
        if pieces:
            last_id, last_text = pieces[-1]
            pieces[-1] = (last_id, last_text + detok.flush())
        return pieces

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new work, let running replies finish for `grace_s`, cancel the rest."""
        self._closing = True
        while self._waiting:
            gen = self._waiting.popleft()
            gen.cancel_requested = True
            gen._emit(Finished(_cancelled_result(gen)))
        if self._running and grace_s > 0:
            pending = [asyncio.ensure_future(g.result()) for g in self._running]
            await asyncio.wait(pending, timeout=grace_s)
        for gen in list(self._running):
            gen.cancel_requested = True
        self._wakeup.set()
        await asyncio.gather(*self._lanes, return_exceptions=True)
        self._executor.shutdown(wait=True)

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
            gen._emit(Finished(_cancelled_result(gen)))
            self._publish_positions()

    def _publish_positions(self) -> None:
        for ahead, gen in enumerate(self._waiting):
            if gen._slot is None:  # a preempted reply is already streaming: no "queued"
                gen._emit(Queued(ahead))

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
        key = _batch_key(head)
        for gen in list(self._waiting):
            if len(batch) >= limit:
                break
            if _batch_key(gen) == key:
                self._waiting.remove(gen)
                batch.append(gen)
        return batch

    def _preempt_reason(self, batch: list[Generation], elapsed: float) -> str | None:
        """Whether a running batch should yield now: "join", "timeslice" or None."""
        if self._closing or not self._waiting or self._busy_lanes < self._replicas:
            return None
        alive = [g for g in batch if not g.done and g._slot is not None]
        if not alive:
            return None
        left = max(g._slot.max_new - g._slot.new_tokens for g in alive if g._slot)
        if left < 16:
            return None  # about to finish anyway; re-reading prompts would cost more
        key = _batch_key(alive[0])
        if len(alive) < self._max_batch and any(_batch_key(g) == key for g in self._waiting):
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
        slots: list[_Slot] = []
        for gen in batch:
            if gen._slot is None:
                gen._slot = _Slot(gen, self.bundle, self._end_ids)
                gen._slot.started_at = time.perf_counter()
                gen._emit(Started())
            slots.append(gen._slot)
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
            log.exception("decoding failed for a batch of %d", len(slots))
            message = _model_error_message(exc)
            for slot in slots:
                slot.suspended = False
                if not slot.gen.done:
                    slot.gen._emit(Finished(slot.result(error=message)))
        finally:
            resumed = [s.gen for s in slots if s.suspended and not s.gen.done]
            for slot, count in zip(slots, before, strict=True):
                slot.suspended = False
                self.tokens_generated += slot.new_tokens - count
                if slot.gen in resumed:
                    continue
                if not slot.gen.done:
                    slot.gen._emit(Finished(slot.result()))
                self._running.discard(slot.gen)
                for hook in self.on_result:
                    with contextlib.suppress(Exception):
                        hook(slot.gen._done.result())
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

    def _decode(
        self, loop: asyncio.AbstractEventLoop, slots: list[_Slot], preempt: threading.Event
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
                loop.call_soon_threadsafe(slot.gen._emit, TextDelta(text))
            if over:
                loop.call_soon_threadsafe(slot.gen._emit, Finished(slot.result()))
            return over or slot.suspended

        sampling = slots[0].gen.request.knobs.ct2_sampling()
        max_length = max(s.max_new - s.new_tokens for s in slots)
        # min_length is shared by the batch (see _batch_key) and can never exceed
        # what is left of the shortest budget.
        sampling["min_length"] = min(
            slots[0].remaining_min(), min(s.max_new - s.new_tokens for s in slots)
        )
        self._generator.generate_batch(
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
                tail = slot._flush()
                if tail:
                    loop.call_soon_threadsafe(slot.gen._emit, TextDelta(tail))
                if slot.finish is None:
                    slot.finish = (
                        FinishReason.CANCELLED if slot.gen.cancel_requested
                        else FinishReason.MAX_TOKENS
                    )
                loop.call_soon_threadsafe(slot.gen._emit, Finished(slot.result()))


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cancelled_result(gen: Generation) -> GenerationResult:
    if gen._slot is not None:  # preempted part-way: keep what was written
        gen._slot.finish = FinishReason.CANCELLED
        return gen._slot.result()
    return GenerationResult(
        text="",
        prompt_tokens=len(gen.prepared.tokens),
        new_tokens=0,
        ttft_s=None,
        decode_tok_s=None,
        total_s=time.perf_counter() - gen.submitted_at,
        finish_reason=FinishReason.CANCELLED,
        max_new_tokens=gen.prepared.max_new_tokens,
        clamped_to_context=gen.prepared.clamped,
    )


def _model_error_message(exc: BaseException) -> str:
    if isinstance(exc, UserFacingError):
        return exc.message
    return ModelError("The model failed while writing this reply.").message
