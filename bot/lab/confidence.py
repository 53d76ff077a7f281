"""How sure the model was of each token of a finished reply: one scoring pass.

One forward pass over prompt + reply (the prompt exactly as the engine renders it
for the request) gives, at each reply position, the model's whole distribution:
the probability of the token the reply has there, its rank, and the likeliest
alternatives. These are the model's raw probabilities (softmax of the logits),
before any knob: "how surprising was this token to the model".

The reply's tokens are the ids the model wrote when they are known (Inspect),
else its text encoded again as plain text (the CLI): usually the same sequence,
but where a sampled reply took an unusual split, the scores are for the usual one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from bot.errors import UserFacingError
from bot.lab.probs import forward_logits, prompt_ids
from bot.model.pieces import piece_label, token_text_in_context, visible

if TYPE_CHECKING:
    from bot.engine import Engine, GenerationRequest

ALTERNATIVES = 3
#: ANSI colours Discord renders in ```ansi blocks, from sure to surprised.
GREEN, CYAN, YELLOW, RED, RESET = ("\u001b[0;32m", "\u001b[0;36m", "\u001b[0;33m",
                                   "\u001b[0;31m", "\u001b[0m")
BANDS = ((0.8, GREEN), (0.4, CYAN), (0.1, YELLOW), (0.0, RED))
"""Probability at or above which a token gets each colour."""
BLOCK_BUDGET = 1700


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    prob: float


@dataclass(frozen=True)
class ScoredToken:
    id: int
    text: str
    """The token's text as it appears in the reply."""
    label: str
    """The same, visible (␣, ↵, <0xF0>) for lists and tables."""
    prob: float
    rank: int
    """1 = the model's first choice here."""
    alternatives: tuple[Alternative, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.label, "decoded": self.text, "prob": self.prob,
                "rank": self.rank,
                "alternatives": [{"id": a.id, "text": a.text, "prob": a.prob}
                                 for a in self.alternatives]}


@dataclass(frozen=True)
class Confidence:
    tokens: tuple[ScoredToken, ...]
    prompt_tokens: int

    @property
    def mean_prob(self) -> float:
        return float(np.mean([t.prob for t in self.tokens])) if self.tokens else 0.0

    def surprising(self, n: int = 5) -> list[ScoredToken]:
        """The `n` tokens the model found least likely, in reply order."""
        worst = sorted(range(len(self.tokens)), key=lambda i: (self.tokens[i].prob, i))[:n]
        return [self.tokens[i] for i in sorted(worst)]

    def to_json(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "mean_prob": self.mean_prob,
                "tokens": [t.to_json() for t in self.tokens]}


def _log_softmax(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    z = rows.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    out: np.ndarray[Any, Any] = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


async def score_reply(
    engine: Engine, request: GenerationRequest, reply: str, *, alternatives: int = ALTERNATIVES,
    ids: Sequence[int] | None = None,
) -> Confidence:
    """Each token of `reply` (the answer to `request`) with the model's probability for it;
    `ids` are the reply's own tokens when known (`reply` is then not encoded)."""
    tok = engine.bundle.tokenizer
    reply_ids = [int(i) for i in ids] if ids is not None else tok.encode(reply)
    vocab = engine.info.vocab_size or 0
    if any(i < 0 or (vocab and i >= vocab) for i in reply_ids):
        raise UserFacingError("That reply holds a token this model does not have.")
    if not reply_ids:
        raise UserFacingError("That reply is empty: there is nothing to score.")
    prepared = engine.prepare(request)
    total = len(prepared.tokens) + len(reply_ids)
    if total > engine.bundle.context_length:
        raise UserFacingError(
            f"Prompt and reply together ({total} tokens) exceed the "
            f"{engine.bundle.context_length}-token context window."
        )
    tokens = [*prepared.tokens, *(tok.id_to_token(i) for i in reply_ids)]
    logits = await forward_logits(engine, tokens)
    start = len(prepared.tokens) - 1  # the logits at position t predict token t + 1
    logp = _log_softmax(logits[start: start + len(reply_ids)])
    context = [i for i in prompt_ids(engine, prepared.tokens) if i >= 0]
    scored: list[ScoredToken] = []
    for n, token_id in enumerate(reply_ids):
        row = logp[n]
        p = float(np.exp(row[token_id]))
        rank = int(np.count_nonzero(row > row[token_id])) + 1
        ctx = context + reply_ids[:n]
        best = np.argsort(-row, kind="stable")[: alternatives + 1]
        alts = tuple(
            Alternative(int(i), _label(engine, ctx, int(i)), float(np.exp(row[i])))
            for i in best if int(i) != token_id
        )[:alternatives]
        text = token_text_in_context(tok, ctx, token_id)
        scored.append(ScoredToken(token_id, text, visible(piece_label(tok, token_id, text)), p,
                                  rank, alts))
    return Confidence(tuple(scored), len(prepared.tokens))


def _label(engine: Engine, context: list[int], token_id: int) -> str:
    tok = engine.bundle.tokenizer
    if token_id in tok.special_ids:
        return tok.id_to_token(token_id)
    return visible(piece_label(tok, token_id, token_text_in_context(tok, context, token_id)))


def colour_of(prob: float) -> str:
    for floor, colour in BANDS:
        if prob >= floor:
            return colour
    return RED


LOW: Final = 0.1
"""Below this probability a token is marked ⟨like this⟩ as well as coloured red."""


def render_ansi(conf: Confidence, budget: int = BLOCK_BUDGET) -> tuple[str, int]:
    """The reply coloured by confidence for a ```ansi block, and how many tokens fit.

    Tokens under `LOW` are also marked ⟨like this⟩: colour is lost where a client
    does not render ANSI (Discord's phone apps), the marks are not.
    """
    out: list[str] = []
    used = shown = 0
    for t in conf.tokens:
        # Only a run of three backticks could close the code block: break every run.
        text = t.text.replace("`", "`\u200b")
        chunk = colour_of(t.prob) + (f"⟨{text}⟩" if t.prob < LOW else text)
        if used + len(chunk) > budget:
            break
        out.append(chunk)
        used += len(chunk)
        shown += 1
    return "".join(out) + RESET, shown


def render_plain(conf: Confidence, below: float = LOW) -> str:
    """The plain fallback: tokens the model gave under `below` are marked ⟨like this⟩."""
    return "".join(f"⟨{t.text}⟩" if t.prob < below else t.text for t in conf.tokens)


def surprising_lines(conf: Confidence, n: int = 5) -> list[str]:
    """One line per surprising token: its probability, rank and the model's alternatives."""
    lines = []
    for t in conf.surprising(n):
        alts = ", ".join(f"{a.text} {a.prob * 100:.0f}%" for a in t.alternatives)
        lines.append(f"{t.label} {t.prob * 100:.1f}% (choice #{t.rank}); alternatives: "
                     f"{alts}")
    return lines


def legend() -> str:
    return "green ≥ 80 % · cyan ≥ 40 % · yellow ≥ 10 % · red < 10 %"
