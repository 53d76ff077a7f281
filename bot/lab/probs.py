"""Next-token probabilities for an ask: one forward pass, then the knobs (`sampling`).

In chat mode the prompt is exactly what the engine would read for the request
(`Engine.prepare`: persona, earlier turns, template, plain-text user text), so
the first step is the first token of the bot's reply, and Inspect on a finished
reply shows each step as that reply was generated. In raw mode
(`raw_prompt`) the text is continued as written, with no template: "The capital
of France is" shows what comes next in the text itself. A walk through
a reply token by token appends the chosen ids (`generated`) and asks again; each
step is one forward pass over prompt + reply so far, queued with the engine's
batches (`Engine.forward`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.engine.generation import TOP_P_MAX_CANDIDATES
from bot.engine.types import PreparedPrompt
from bot.errors import ModelError, PromptTooLong, UserFacingError
from bot.knobs import Knobs
from bot.lab.sampling import STAGES, StepDistribution, apply_knobs
from bot.model.pieces import piece_label, token_text_in_context, visible
from bot.model.tokenizer import require_valid_unicode

if TYPE_CHECKING:
    from bot.engine import Engine, GenerationRequest

log = logging.getLogger(__name__)

MAX_FORWARD_BYTES = 1 << 30
"""One forward pass returns logits for every position; refuse what would exceed this."""
DEFAULT_TOP = 10
MAX_TOP = 40
REMOVED_EXAMPLES = 5
SHOW_REMOVED = 2
"""When every top candidate is kept, this many removed ones are shown too, to mark the cut."""
#: How the table names what removed a token.
STAGE_WORDS = {
    "min_new_tokens": "min_new_tokens",
    "top_k": "top_k",
    "candidate_bound": f"top_p's shortlist (the {TOP_P_MAX_CANDIDATES:,} likeliest)",
    "top_p": "top_p",
}


@dataclass(frozen=True)
class Candidate:
    """One possible next token, as the model and the knobs see it."""

    id: int
    text: str
    """Shown visibly: spaces as ␣, newlines as ↵, part of a character as <0xF0>."""
    decoded: str
    """The text this token adds after the context, as it would appear in the reply."""
    special: bool
    raw: float
    tempered: float
    final: float
    removed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "text": self.text, "decoded": self.decoded, "special": self.special,
            "raw": self.raw, "after_temperature": self.tempered, "final": self.final,
            "removed_by": self.removed_by,
        }


@dataclass(frozen=True)
class ProbsStep:
    """The next step of a reply: top candidates, what each knob removed, greedy and a draw."""

    knobs: Knobs
    sampling: dict[str, Any]
    prompt_tokens: int
    generated: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    kept: int
    removed_counts: dict[str, int]
    removed_examples: dict[str, tuple[Candidate, ...]]
    left_out: float
    greedy: Candidate
    sample: Candidate | None
    seed: int | None
    end_ids: frozenset[int]
    max_new_tokens: int
    forward_s: float
    dist: StepDistribution = field(repr=False)
    raw_text: bool = False
    """The prompt was read as plain text, without the chat template."""

    @property
    def step(self) -> int:
        """How many reply tokens come before this step (0 = the reply's first token)."""
        return len(self.generated)

    @property
    def at_limit(self) -> bool:
        """The engine would stop here: the reply used its max_new_tokens."""
        return len(self.generated) >= self.max_new_tokens

    def then(self, token_id: int) -> tuple[int, ...]:
        """The reply so far with `token_id` appended, for the next step (a Step button)."""
        if token_id in self.end_ids:
            raise UserFacingError("That token ends the reply: there is no next step.")
        if self.at_limit:
            raise UserFacingError(
                f"The reply reached its limit of {self.max_new_tokens} tokens: the engine "
                "would stop here."
            )
        return (*self.generated, int(token_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "knobs": self.knobs.model_dump(mode="json"),
            "sampling": {k: v for k, v in self.sampling.items() if not isinstance(v, list)},
            "prompt_tokens": self.prompt_tokens,
            "step": self.step,
            "generated": list(self.generated),
            "candidates": [c.to_json() for c in self.candidates],
            "kept": self.kept,
            "removed": self.removed_counts,
            "removed_examples": {
                k: [c.to_json() for c in v] for k, v in self.removed_examples.items()
            },
            "left_out": self.left_out,
            "greedy": self.greedy.to_json(),
            "sample": self.sample.to_json() if self.sample else None,
            "seed": self.seed,
            "forward_s": self.forward_s,
            "mode": "raw" if self.raw_text else "chat",
        }


async def forward_logits(engine: Engine, tokens: Sequence[str]) -> np.ndarray[Any, Any]:
    """Logits for every position of `tokens`, through the engine; errors in plain words."""
    vocab = engine.info.vocab_size or 0
    if vocab and len(tokens) * vocab * 4 > MAX_FORWARD_BYTES:
        raise UserFacingError(
            f"That is too long to score at once ({len(tokens)} tokens): try a shorter prompt "
            "or reply."
        )
    try:
        logits: np.ndarray[Any, Any] = await engine.forward(tokens)
    except UserFacingError:
        raise
    except Exception as exc:
        log.exception("forward pass failed for %d tokens", len(tokens))
        raise ModelError("The model failed while computing the probabilities.") from exc
    return logits


def prompt_ids(engine: Engine, tokens: Sequence[str]) -> list[int]:
    """Vocabulary ids of the prompt's token strings (as `Engine.prepare` returns them)."""
    tok = engine.bundle.tokenizer
    out: list[int] = []
    for t in tokens:
        i = tok.token_to_id(t)
        out.append(-1 if i is None else int(i))
    return out


def make_candidate(engine: Engine, dist: StepDistribution, context: list[int],
                   token_id: int) -> Candidate:
    tok = engine.bundle.tokenizer
    special = token_id in tok.special_ids
    if special:
        decoded = label = tok.id_to_token(token_id)
    else:
        decoded = token_text_in_context(tok, [i for i in context if i >= 0], token_id)
        label = visible(piece_label(tok, token_id, decoded))
    stage = int(dist.removed_by[token_id])
    return Candidate(
        id=int(token_id), text=label, decoded=decoded, special=special,
        raw=float(dist.raw[token_id]), tempered=float(dist.tempered[token_id]),
        final=float(dist.final[token_id]), removed_by=STAGES[stage] if stage >= 0 else None,
    )


def candidate_ids(dist: StepDistribution, top: int, include: Sequence[int] = ()) -> list[int]:
    """The `top` likeliest tokens by the model, any the knobs raised into their top, the cut,
    and `include` (the token a reply took here, however unlikely).

    Sorted by raw probability, so the kept tokens come first unless the
    repetition penalty reordered them.
    """
    order = np.argsort(-dist.raw, kind="stable")
    by_final = np.argsort(-dist.final, kind="stable")[:top]
    chosen = {int(i) for i in order[:top]} | {int(i) for i in by_final if dist.final[i] > 0}
    chosen |= {int(i) for i in include if 0 <= int(i) < len(dist.raw)}
    if all(dist.removed_by[i] < 0 for i in chosen):
        # Show where the cut falls: the likeliest tokens the knobs removed.
        removed = [int(i) for i in order[top: top + 4096] if dist.removed_by[i] >= 0]
        chosen.update(removed[:SHOW_REMOVED])
    return sorted(chosen, key=lambda i: (-dist.raw[i], i))


def raw_prompt(engine: Engine, request: GenerationRequest) -> PreparedPrompt:
    """`request.prompt` as plain text to continue: no template, no persona, no history.

    The model's BOS is added when its tokenizer adds one; the text is people's
    text, so a control-token string in it stays characters.
    """
    require_valid_unicode(request.prompt, "prompt")
    bundle = engine.bundle
    ids = bundle.with_bos(bundle.tokenizer.encode(request.prompt))
    context = bundle.context_length
    if len(ids) >= context:
        raise PromptTooLong(len(ids), context)
    max_new = min(request.knobs.max_new_tokens, context - len(ids))
    return PreparedPrompt(tokens=[bundle.tokenizer.id_to_token(i) for i in ids],
                          max_new_tokens=max_new,
                          clamped=max_new < request.knobs.max_new_tokens)


async def probs_step(
    engine: Engine,
    request: GenerationRequest,
    *,
    generated: Sequence[int] = (),
    top: int = DEFAULT_TOP,
    seed: int | None = None,
    raw: bool = False,
    include: Sequence[int] = (),
) -> ProbsStep:
    """The next-token step for `request` after the reply so far (`generated`).

    One forward pass over prompt + `generated` (prompt exactly as the engine
    renders it, or with `raw` the prompt's text alone, `raw_prompt`); the knobs
    are `request.knobs`, applied as CTranslate2 does. `include` are ids shown
    among the candidates whatever their rank (the token a reply took here).
    """
    if not 1 <= top <= MAX_TOP:
        raise UserFacingError(f"Show between 1 and {MAX_TOP} candidates, not {top}.")
    prepared = raw_prompt(engine, request) if raw else engine.prepare(request)
    tok = engine.bundle.tokenizer
    vocab = engine.info.vocab_size or 0
    gen_ids = [int(i) for i in generated]
    if any(i < 0 or (vocab and i >= vocab) for i in gen_ids):
        raise UserFacingError("That reply holds a token this model does not have.")
    context_length = engine.bundle.context_length
    if len(prepared.tokens) + len(gen_ids) >= context_length:
        raise UserFacingError(
            f"The reply has filled the {context_length}-token context window: no next step."
        )
    tokens = list(prepared.tokens) + [tok.id_to_token(i) for i in gen_ids]
    started = time.perf_counter()
    logits = await forward_logits(engine, tokens)
    forward_s = time.perf_counter() - started
    end_ids = frozenset(engine.bundle.end_token_ids)
    dist = apply_knobs(logits[-1], request.knobs, generated=gen_ids, end_ids=end_ids,
                       vocab_size=vocab or None)
    context = prompt_ids(engine, prepared.tokens) + gen_ids

    def cand(i: int) -> Candidate:
        return make_candidate(engine, dist, context, i)

    removed_counts = {stage: int(np.count_nonzero(dist.removed_by == n))
                      for n, stage in enumerate(STAGES)}
    examples = {stage: tuple(cand(int(i)) for i in dist.removed(stage)[:REMOVED_EXAMPLES])
                for stage in STAGES if removed_counts[stage]}
    sample = cand(dist.draw(seed, len(gen_ids))) if seed is not None else None
    return ProbsStep(
        knobs=request.knobs, sampling=dist.sampling, prompt_tokens=len(prepared.tokens),
        generated=tuple(gen_ids),
        candidates=tuple(cand(i) for i in candidate_ids(dist, top, include)),
        kept=int(np.count_nonzero(dist.kept)), removed_counts=removed_counts,
        removed_examples=examples, left_out=dist.left_out(), greedy=cand(dist.best()),
        sample=sample, seed=seed, end_ids=end_ids, max_new_tokens=prepared.max_new_tokens,
        forward_s=forward_s, dist=dist, raw_text=raw,
    )


def _pct(p: float) -> str:
    if p <= 0:
        return "—"
    if p < 0.0005:
        return "<0.1%"
    return f"{p * 100:.1f}%"


def format_knobs(knobs: Knobs) -> str:
    """The sampling knobs in the /knobs set syntax (what `/compare` variants are written in)."""
    return " ".join(
        f"{name}={getattr(knobs, name):g}" if isinstance(getattr(knobs, name), float)
        else f"{name}={getattr(knobs, name)}"
        for name in ("temperature", "top_p", "top_k", "repetition_penalty", "min_new_tokens")
    )


def format_table(step: ProbsStep) -> str:
    """The step as a monospace table and a few plain sentences (console, CLI, accessibility)."""
    width = max([len(c.text) for c in step.candidates] + [5])
    width = min(width, 24)
    mode = "raw text, no chat template" if step.raw_text else "chat"
    lines = [f"next token {step.step + 1} · {mode} · {format_knobs(step.knobs)}",
             f"{'':>3} {'token':<{width}} {'raw':>7} {'after T':>7} {'final':>7}"]
    for n, c in enumerate(step.candidates, 1):
        text = c.text if len(c.text) <= width else c.text[: width - 1] + "…"
        note = f"  ✕ removed by {STAGE_WORDS[c.removed_by]}" if c.removed_by else ""
        lines.append(f"{n:>3} {text:<{width}} {_pct(c.raw):>7} "
                     f"{_pct(c.tempered):>7} {_pct(c.final):>7}{note}")
    lines.append(summary(step))
    return "\n".join(lines)


def summary(step: ProbsStep) -> str:
    """What the knobs did, in words: what each removed, the mass left out, greedy and a draw."""
    parts: list[str] = []
    if step.sampling.get("sampling_topk") == 1:
        parts.append("these knobs decode greedily: only the best token is kept")
    for stage in STAGES:
        n = step.removed_counts.get(stage, 0)
        if not n:
            continue
        shown = ", ".join(c.text for c in step.removed_examples.get(stage, ())[:3])
        who = STAGE_WORDS[stage]
        parts.append(f"{who} removed {n:,} {'token' if n == 1 else 'tokens'} (e.g. {shown})")
    parts.append(f"{step.kept} kept; {_pct(step.left_out)} of the model's probability left out")
    parts.append(f"greedy picks {step.greedy.text}")
    if step.sample is not None:
        parts.append(f"a sample with seed {step.seed} picks {step.sample.text}")
    return "; ".join(parts) + "."
