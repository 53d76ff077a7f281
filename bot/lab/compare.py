"""One prompt, two to four knob settings, side by side, through the engine like any ask.

Each variant is a knob string in the /knobs set syntax (``temperature=0.1``,
``temperature=1.5 top_p=1``, ``top_k=1``) or a preset name, layered over the
scope's settings; with none, the scope's settings meet a contrasting
temperature. Every variant is an ordinary `GenerationRequest` submitted to the
engine: the queue bound, batching, lanes and preemption treat them like asks
(variants with equal settings share a batch; different ones take lanes), and a
scope's `max_new_tokens` caps every variant as it caps an ask.

The seed, honestly: CTranslate2 4.8.5 has no per-call seed. Its sampler draws
from a per-thread generator seeded once per process (`set_random_seed`, from
`BOT_SEED`, before the weights load). So the seed a comparison shows is fixed
for all its variants and drives the lab's own draws (the probabilities view's
sampled pick); in a fresh process started with that seed (`python -m bot compare
--seed N`) each decoding thread starts from the same state, so up to one variant
per replica starts from the same random stream; in a long-running bot it cannot
replay a draw. What a comparison does guarantee is the same prompt, persona and
history for every variant, so the knobs are the only difference in what is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bot.chat.request import within_cap
from bot.engine import Event, Finished, GenerationRequest, GenerationResult
from bot.errors import InvalidKnobs, UserFacingError
from bot.knobs import KNOB_NAMES, PRESETS, Knobs, build_knobs, parse_assignments
from bot.lab.help import assignment, contrasting

if TYPE_CHECKING:
    from bot.engine import Engine, Generation

MIN_VARIANTS = 2
MAX_VARIANTS = 4
COMPARE_NEW_TOKENS = 150
"""Each variant's length unless it asks for one (`max_new_tokens=`): a comparison is
read side by side, and four 512-token replies are neither readable nor quick."""
SEED_LIMIT = 2**31
"""Seeds are shown and typed by people: kept to a positive 31-bit number."""


@dataclass(frozen=True)
class Variant:
    """One column of a comparison: its label as typed and the knobs it changes."""

    label: str
    overrides: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """A preset name or a knob string; a clear error otherwise."""
    raw = text.strip()
    if not raw:
        raise InvalidKnobs("A variant was empty: give knob=value pairs or a preset name.")
    if raw.lower() in PRESETS:
        return Variant(raw.lower(), dict(PRESETS[raw.lower()]))
    if "=" not in raw:
        raise InvalidKnobs(
            f"`{raw}` is neither a preset ({', '.join(PRESETS)}) nor knob=value pairs "
            "(e.g. temperature=1.5 top_p=1)."
        )
    return Variant(raw, parse_assignments(raw))


def settings_words(knobs: Knobs) -> str:
    """The sampling settings a variant shares with the scope, briefly."""
    words = [f"temperature {knobs.temperature:g}"]
    if knobs.top_p < 1:
        words.append(f"top_p {knobs.top_p:g}")
    if knobs.top_k > 0:
        words.append(f"top_k {knobs.top_k}")
    return ", ".join(words)


def current_variant(base: Knobs, where: str = "current settings") -> Variant:
    """The scope's own settings, labelled with where they come from and what they are."""
    return Variant(f"{where}: {settings_words(base)}", {})


def default_variants(base: Knobs, where: str = "current settings") -> list[Variant]:
    """No variants given: the scope's settings against a contrasting temperature."""
    value = contrasting("temperature", base)
    return [current_variant(base, where),
            Variant(assignment("temperature", value), {"temperature": value})]


def knob_variants(name: str, base: Knobs) -> list[Variant]:
    """"Try it on my last prompt": the knob's current value against a contrasting one."""
    current = getattr(base, name)
    other = contrasting(name, base)
    return [Variant(assignment(name, current), {}),
            Variant(assignment(name, other), {name: other})]


def plan_variants(texts: Sequence[str | None], base: Knobs,
                  where: str = "current settings") -> list[Variant]:
    """The variants of a `/compare`: those typed (blank ones skipped), completed to two.

    One variant alone is compared with the scope's settings (labelled `where`);
    none gives `default_variants`. A variant that cannot be read is named in
    the error ("variant b: …").
    """
    given: list[Variant] = []
    for n, text in enumerate(texts):
        if text is None or not text.strip():
            continue
        try:
            given.append(parse_variant(text))
        except InvalidKnobs as exc:
            raise InvalidKnobs(f"Variant {'abcdefgh'[n % 8]}: {exc.message}") from None
    if len(given) > MAX_VARIANTS:
        raise UserFacingError(f"Compare at most {MAX_VARIANTS} settings at once, not {len(given)}.")
    if not given:
        return default_variants(base, where)
    if len(given) == 1:
        return [current_variant(base, where), *given]
    return given


#: What a variant box offers before anything is typed: a preset or a one-knob change.
_SUGGESTED = ("temperature=0.2", "temperature=1.2", "top_p=0.5", "top_k=5",
              "repetition_penalty=0.3", "min_new_tokens=64")


def variant_suggestions(typed: str, limit: int = 25) -> list[str]:
    """Autocomplete for a variant: presets and knob assignments matching what is typed.

    A complete assignment typed so far is offered first as it is (when it reads),
    then the rest, so "temperature=1.5 to" can grow into "temperature=1.5 top_k=5".
    """
    text = typed.strip()
    head, _, last = text.rpartition(" ")
    out: list[str] = []
    if text:
        try:
            parse_variant(text)
            out.append(text)
        except UserFacingError:
            pass
    words = [*PRESETS, *_SUGGESTED, *(f"{name}=" for name in KNOB_NAMES if name != "stop")]
    for word in words:
        if word.startswith(last.lower()) or (not last and not head):
            candidate = f"{head} {word}".strip() if head else word
            if candidate not in out and (head == "" or "=" in word):
                out.append(candidate)
    return [o[:100] for o in out][:limit]


def new_seed() -> int:
    return secrets.randbelow(SEED_LIMIT - 1) + 1


def check_seed(seed: int) -> int:
    if not 0 <= seed < SEED_LIMIT:
        raise UserFacingError(f"A seed is a whole number from 0 to {SEED_LIMIT - 1}.")
    return seed


@dataclass(frozen=True)
class VariantResult:
    label: str
    knobs: Knobs
    result: GenerationResult

    @property
    def text(self) -> str:
        return self.result.text

    def to_json(self, seed: int) -> dict[str, Any]:
        r = self.result
        return {
            "label": self.label, "knobs": self.knobs.model_dump(mode="json"), "text": r.text,
            "new_tokens": r.new_tokens, "finish_reason": str(r.finish_reason),
            "ttft_s": r.ttft_s, "total_s": r.total_s, "error": r.error, "seed": seed,
        }


class Comparison:
    """The running variants of one comparison: their events, Stop for all, their results."""

    def __init__(self, seed: int, variants: list[Variant], requests: list[GenerationRequest],
                 generations: list[Generation]) -> None:
        self.seed = seed
        self.variants = variants
        self.requests = requests
        self.generations = generations

    def cancel(self) -> None:
        """Stop: every variant stops within a token (or leaves the queue)."""
        for gen in self.generations:
            gen.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(variant index, event) as they come, until every variant has finished."""
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        async def pump(i: int, gen: Generation) -> None:
            async for event in gen.events():
                await queue.put((i, event))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.generations)]
        left = len(tasks)
        try:
            while left:
                i, event = await queue.get()
                if isinstance(event, Finished):
                    left -= 1
                yield i, event
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def results(self) -> list[VariantResult]:
        done = await asyncio.gather(*(g.result() for g in self.generations))
        return [VariantResult(v.label, r.knobs, res)
                for v, r, res in zip(self.variants, self.requests, done, strict=True)]

    def to_json(self, results: Sequence[VariantResult]) -> list[dict[str, Any]]:
        return [r.to_json(self.seed) for r in results]


def variant_requests(request: GenerationRequest, variants: Sequence[Variant],
                     cap: int | None = None) -> list[GenerationRequest]:
    """One request per variant: the same prompt, persona and history; only the knobs differ.

    `cap` is the scope's `max_new_tokens` (an admin's limit): a variant may
    narrow it, never widen it, as for an ask. It defaults to the request's own.
    A variant that does not ask for a length gets `COMPARE_NEW_TOKENS` at most.
    """
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise UserFacingError(
            f"Compare {MIN_VARIANTS} to {MAX_VARIANTS} settings, not {len(variants)}."
        )
    limit = request.knobs.max_new_tokens if cap is None else cap
    short = min(limit, request.knobs.max_new_tokens, COMPARE_NEW_TOKENS)
    out: list[GenerationRequest] = []
    for v in variants:
        overrides = dict(v.overrides)
        if "max_new_tokens" not in overrides:
            overrides["max_new_tokens"] = short
            if "min_new_tokens" not in overrides and request.knobs.min_new_tokens > short:
                overrides["min_new_tokens"] = short
        try:
            knobs = build_knobs(within_cap(overrides, limit), base=request.knobs)
        except InvalidKnobs as exc:
            raise InvalidKnobs(f"Variant {v.label}: {exc.message}") from None
        out.append(replace(request, knobs=knobs))
    return out


def start_compare(
    engine: Engine,
    request: GenerationRequest,
    variants: Sequence[Variant],
    *,
    seed: int | None = None,
    cap: int | None = None,
) -> Comparison:
    """Submit every variant now (so they batch or take lanes together); all or none.

    If the queue refuses one, those already queued are cancelled and the error
    (`QueueFull`, `PromptTooLong` …) goes to the caller as for an ask.
    """
    chosen = check_seed(seed) if seed is not None else new_seed()
    requests = variant_requests(request, variants, cap)
    gens: list[Generation] = []
    try:
        for r in requests:
            gens.append(engine.submit(r))
    except BaseException:
        for g in gens:
            g.cancel()
        raise
    return Comparison(chosen, list(variants), requests, gens)


async def compare(
    engine: Engine,
    request: GenerationRequest,
    variants: Sequence[Variant],
    *,
    seed: int | None = None,
    cap: int | None = None,
) -> tuple[int, list[VariantResult]]:
    """Run a comparison to the end: (seed, one result per variant, in order)."""
    comparison = start_compare(engine, request, variants, seed=seed, cap=cap)
    try:
        return comparison.seed, await comparison.results()
    except asyncio.CancelledError:
        comparison.cancel()
        raise

