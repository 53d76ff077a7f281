"""One request in flight: the consumer's handle and the decoding thread's state.

`Generation` is what a front-end holds (events, cancel, result); `Slot` is what
the decoding thread owns while a batch runs (detokenizer, stop matcher, counts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bot.engine.streaming import IncrementalDetokenizer, LeadingLabel, StopMatcher
from bot.engine.types import (
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    PreparedPrompt,
    Queued,
    TextDelta,
)
from bot.knobs import Knobs
from bot.model.bundle import ModelBundle

__all__ = ["TOP_P_MAX_CANDIDATES", "Generation", "Slot", "batch_key", "device_sampling"]

TOP_P_MAX_CANDIDATES = 8192
"""Top-p picks its nucleus among at most this many tokens (`device_sampling`)."""


class Generation:
    """A handle on one submitted request: iterate its events, cancel it, await it."""

    def __init__(
        self,
        request: GenerationRequest,
        prepared: PreparedPrompt,
        *,
        on_cancel: Callable[[Generation], None],
        on_finished: Callable[[Generation], None],
    ) -> None:
        """`on_cancel` lets the scheduler drop a waiting request; `on_finished` forget it."""
        self.request = request
        self.prepared = prepared
        self._on_cancel = on_cancel
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._done: asyncio.Future[GenerationResult] = self._loop.create_future()
        self.cancel_requested = False  # read by the decoding thread; a bool is atomic
        self.submitted_at = time.perf_counter()
        self.ahead: int | None = None
        self.slot: Slot | None = None  # set once decoding starts; kept across preemptions

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
        self._on_cancel(self)

    # --- producer side (the scheduler, on the event-loop thread) ----------------

    @property
    def final(self) -> GenerationResult:
        """The result of a finished generation (raises if it is still running)."""
        return self._done.result()

    def emit(self, event: Event) -> None:
        """Deliver one event to the consumer; call on the event-loop thread only."""
        if self._done.done():
            return
        if isinstance(event, Queued):
            if event.ahead == self.ahead:
                return
            self.ahead = event.ahead
        self._events.put_nowait(event)
        if isinstance(event, Finished):
            self._done.set_result(event.result)
            self._on_finished(self)


class Slot:
    """Per-request decoding state, owned by the decoding thread during a batch."""

    def __init__(self, gen: Generation, bundle: ModelBundle, end_ids: frozenset[int]) -> None:
        self.gen = gen
        self.detok = IncrementalDetokenizer(bundle.tokenizer.decode)
        self.stops = StopMatcher(gen.request.knobs.stop)
        self.label = LeadingLabel(gen.request.speakers)
        self.end_ids = end_ids
        self.max_new = gen.prepared.max_new_tokens
        self.new_tokens = 0
        self.text_parts: list[str] = []
        self.started_at = 0.0
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finish: FinishReason | None = None
        self.generated: list[str] = []  # token strings, to resume after a preemption
        self.ids: list[int] = []  # the same tokens' ids, for the result
        self.suspended = False
        self.runs = 0  # `generate_batch` calls this request has been part of
        self.joining = False  # paused only to let newcomers join: still streaming
        self._id_to_token = bundle.tokenizer.id_to_token

    def resume_tokens(self) -> list[str]:
        """The prompt for the next `generate_batch` call: original prompt + tokens so far."""
        return self.gen.prepared.tokens + self.generated

    def prefix(self) -> tuple[str, ...]:
        """The persona tokens this request shares with others (read as `static_prompt`)."""
        return tuple(self.gen.prepared.tokens[: self.gen.prepared.prefix_tokens])

    def read_length(self) -> int:
        """Tokens the next call must read besides the shared persona prefix."""
        return len(self.gen.prepared.tokens) - self.gen.prepared.prefix_tokens + len(
            self.generated
        )

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
            return self.flush(), True
        self.new_tokens += 1
        self.generated.append(self._id_to_token(token_id))
        self.ids.append(int(token_id))
        text = self.stops.feed(self.label.feed(self.detok.push(token_id)))
        if self.stops.stopped:
            self.finish = FinishReason.STOP_SEQUENCE
            return self._keep(text), True
        if self.new_tokens >= self.max_new:
            self.finish = FinishReason.MAX_TOKENS
            return self._keep(text) + self.flush(), True
        return self._keep(text), False

    def flush(self) -> str:
        tail = self.stops.feed(self.label.feed(self.detok.flush()) + self.label.flush())
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
            token_ids=tuple(self.ids),
        )


def device_sampling(knobs: Knobs, vocab_size: int) -> dict[str, Any]:
    """`knobs.ct2_sampling()` within what every device's kernels accept.

    CTranslate2's CUDA top-p kernel sorts at most 8,192 classes and throws on more,
    so top-p picks among the `TOP_P_MAX_CANDIDATES` likeliest tokens (a top-k
    applied first, as CTranslate2 orders them). The CPU gets the same bound so a
    reply does not depend on the device; on the embedded model those tokens hold
    over 99 % of the probability (docs/benchmarks.md). A top-k above the
    vocabulary is clamped to it: CTranslate2 refuses it on every device.
    """
    sampling = knobs.ct2_sampling()
    topk = int(sampling["sampling_topk"])
    if vocab_size > 0 and topk > vocab_size:
        sampling["sampling_topk"] = topk = vocab_size
    if sampling["sampling_topp"] < 1.0:
        limit = min(TOP_P_MAX_CANDIDATES, vocab_size) if vocab_size > 0 else TOP_P_MAX_CANDIDATES
        if topk == 0 or topk > limit:
            sampling["sampling_topk"] = limit
    return sampling


def batch_key(gen: Generation) -> tuple[Any, ...]:
    """Requests with equal keys can share one `generate_batch` call.

    `min_length` is one value per call, so a request resumed part-way through its
    minimum only batches with requests needing the same number of further tokens.
    """
    sampling = gen.request.knobs.ct2_sampling()
    sampling.pop("min_length")
    remaining = gen.slot.remaining_min() if gen.slot is not None else max(
        0, min(gen.request.knobs.min_new_tokens, gen.prepared.max_new_tokens)
    )
    return (*sorted(sampling.items()), remaining)


def cancelled_result(gen: Generation) -> GenerationResult:
    """The result of a request cancelled before or between its batches."""
    if gen.slot is not None:  # preempted part-way: keep what was written
        gen.slot.finish = FinishReason.CANCELLED
        return gen.slot.result()
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

