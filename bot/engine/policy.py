"""The batching policy: which requests share a call, and when a running one yields.

Plain functions over queued `Generation`s and two small measured models, so a
test can ask what the scheduler would do without an engine, a model or a clock.

Why these rules (CTranslate2's behaviour):

- A batch's prompts are read in one pass only up to the shortest; the rest of
  each longer prompt is fed one token per step. So a batch holds requests of
  similar length (`fits`), and the persona is passed apart as `static_prompt`,
  read once per batch and kept between calls within `PersonaCache`'s bound.
- A running `generate_batch` call takes no newcomers. So a batch is preempted at
  a token boundary to let compatible requests join, or after a timeslice to let
  other settings run, only when `CostModel` says the waiting gain more than the
  re-reading costs, and never stalling a streaming reply more than a few steps.
- The repetition penalty counts only tokens decoded in the call, not those read
  in one pass. So a penalized reply runs to the end in one call, batched only
  with prompts of its own length (`penalized`): token for token what it would be
  alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Sequence

from bot.engine.generation import Generation, batch_key

__all__ = [
    "MIN_PREFIX_TOKENS",
    "REREAD_SHARE",
    "SKEW_TOKENS",
    "STALL_STEPS",
    "CostModel",
    "PersonaCache",
    "compatible",
    "fits",
    "free_lanes",
    "penalized",
    "preempt_reason",
    "read_length",
    "reread_s",
    "take_batch",
]

MIN_PREFIX_TOKENS = 32
"""Personas shorter than this are read with the prompt: not worth a batch of their own."""
STALL_STEPS = 3
"""A streaming reply may be held back at most this many decoding steps to let others in."""
SKEW_TOKENS = 16
"""Longer prompts fed one token per step that a newcomer may take to share a batch."""
REREAD_SHARE = 0.25
"""A timeslice lasts at least 1 / REREAD_SHARE times what re-reading its batch costs."""


class CostModel:
    """Seconds per prompt token read in one pass and per decoding step, as measured.

    Starts from a pessimistic guess (a slow CPU) so nothing is preempted on a
    guess; the first measurement replaces it, later ones are averaged in
    exponentially, so a change of load shows within a few batches.
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

    @classmethod
    def for_device(cls, device: str) -> CostModel:
        """The starting guess: a GPU reads and steps about ten times faster than a CPU."""
        if device == "cuda":
            return cls(prefill_s=0.0002, step_s=0.01)
        return cls(prefill_s=0.002, step_s=0.02)

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

    `cache_static_prompt` keeps every static prompt it sees, with no eviction,
    until the model is unloaded. So a prefix is admitted while the charged total
    (tokens x `bytes_per_token`) stays within `bound_bytes`; one that does not fit
    is read but not kept, and asks the engine for a flush (unload + reload) the
    next time no batch runs.
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


def prefix_of(gen: Generation) -> tuple[int, int]:
    """A cheap identity for a request's persona prefix: its length and hash."""
    n = gen.prepared.prefix_tokens
    return (n, hash(tuple(gen.prepared.tokens[:n]))) if n else (0, 0)


def read_length(gen: Generation) -> int:
    """Tokens the next call must read for this request besides the persona prefix."""
    if gen.slot is not None:
        return gen.slot.read_length()
    return len(gen.prepared.tokens) - gen.prepared.prefix_tokens


def penalized(gen: Generation) -> bool:
    """A reply with a repetition penalty: it must not be resumed nor read unevenly."""
    return gen.request.knobs.repetition_penalty > 0


def compatible(a: Generation, b: Generation) -> bool:
    """Same sampling settings and the same persona prefix: one call can serve both."""
    return batch_key(a) == batch_key(b) and prefix_of(a) == prefix_of(b)


def fits(members: Sequence[Generation], running: Collection[Generation]) -> bool:
    """Whether one call reads these prompts without sequential reading that hurts.

    Every token beyond the shortest prompt is fed one per step. A streaming reply
    (in `running`, or paused only to let newcomers join) may be held back
    `STALL_STEPS` steps at most; any other request, including one resumed after a
    timeslice, `SKEW_TOKENS` (or a quarter of the shortest prompt), which costs it
    less than waiting for a whole batch.
    """
    lengths = [read_length(g) for g in members]
    shortest = min(lengths)
    if any(penalized(g) for g in members) and max(lengths) != shortest:
        return False
    for gen, length in zip(members, lengths, strict=True):
        extra = length - shortest
        streaming = gen.slot is not None and (gen in running or gen.slot.joining)
        limit = STALL_STEPS if streaming else max(SKEW_TOKENS, shortest // 4)
        if extra > limit:
            return False
    return True


def free_lanes(replicas: int, lane_batches: Iterable[Sequence[Generation]]) -> int:
    """Lanes a new batch may count on, at least one (the lane asking).

    A lane whose replies all finished counts as free: its call is only returning.
    """
    decoding = sum(1 for gens in lane_batches if any(not g.done for g in gens))
    return max(1, replicas - decoding)


def take_batch(
    waiting: deque[Generation], *, max_batch: int, lanes: int, running: Collection[Generation]
) -> list[Generation]:
    """Remove and return the head of the queue plus compatible requests of similar length.

    A burst is split over the free `lanes` (two batches of 4 decode faster than
    one of 8 on two replicas), leaving one lane for other kinds when they wait.
    Requests that do not fit the head's batch keep their place.
    """
    head = waiting.popleft()
    batch = [head]
    others = False
    for gen in list(waiting):
        if len(batch) >= max_batch:
            break
        if compatible(gen, head) and fits([*batch, gen], running):
            batch.append(gen)
        else:
            others = True
    share = max(1, lanes - 1) if others else lanes
    batch = batch[: max(1, -(-len(batch) // share))]
    for gen in batch[1:]:
        waiting.remove(gen)
    return batch


def reread_s(gens: Iterable[Generation], cache: PersonaCache, costs: CostModel) -> float:
    """What reading these requests' prompts (and replies so far) again would cost."""
    tokens = 0
    prefixes: set[tuple[str, ...]] = set()
    for gen in gens:
        tokens += read_length(gen)
        prefix = gen.slot.prefix() if gen.slot else ()
        if prefix and not cache.cached(prefix):
            prefixes.add(prefix)
    tokens += sum(len(p) for p in prefixes)
    return tokens * costs.prefill_s


def preempt_reason(
    batch: Sequence[Generation],
    waiting: Iterable[Generation],
    *,
    running: Collection[Generation],
    max_batch: int,
    timeslice_s: float,
    decoding_s: float,
    cache: PersonaCache,
    costs: CostModel,
) -> str | None:
    """Whether a running batch should yield now: "join", "timeslice" or None.

    `decoding_s` counts time spent producing tokens in this call, not reading
    prompts, so a slice is never used up by its own re-reading. The engine asks
    only while every lane is busy (a free lane serves the waiting without this).
    """
    queue = list(waiting)
    if not queue:
        return None
    alive = [g for g in batch if not g.done and g.slot is not None]
    if not alive or any(penalized(g) for g in alive):
        return None
    left = max(g.slot.max_new - g.slot.new_tokens for g in alive if g.slot)
    if left < 16:
        return None  # about to finish anyway; re-reading prompts would cost more
    if len(alive) < max_batch:
        members = list(alive)
        for gen in queue:
            if len(members) >= max_batch:
                break
            if gen.slot is None and compatible(gen, alive[0]) and fits(
                [*members, gen], running
            ):
                members.append(gen)
        if len(members) > len(alive):
            # Joining costs every running reply one re-read; waiting costs each
            # newcomer the rest of this batch. Join only when the stall stays
            # within a few steps and the newcomers gain more than that.
            stall = reread_s(members, cache, costs)
            wait = left * costs.step_s
            if stall <= STALL_STEPS * costs.step_s and wait > stall:
                return "join"
    if timeslice_s and any(not compatible(g, alive[0]) for g in queue):
        slice_s = max(timeslice_s, reread_s(alive, cache, costs) / REREAD_SHARE)
        if decoding_s >= slice_s:
            return "timeslice"
    return None
