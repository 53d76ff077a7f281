"""The knobs at work on one decoding step: CTranslate2's sampling, re-done in numpy.

The numbers a member sees must be the ones the engine uses, so this follows
CTranslate2 4.8's C++ step by step (read in its source, `src/decoding.cc`,
`GreedySearch::search`, which `generate_batch` runs when `beam_size=1`):

1. ``apply_min_length`` (`src/decoding.cc`): while fewer than ``min_length``
   tokens were generated in the call, every end token's logit is set to the
   lowest float (`DisableTokens`, `src/decoding_utils.cc`; on the CPU at once).
2. ``RepetitionPenalty::apply`` (`src/decoding_utils.cc`, kernel
   ``primitives<CPU>::penalize_previous_tokens`` in `src/cpu/primitives.cc`):
   for every token id *generated so far in the call* (``alive_seq``; the prompt
   is not penalised), ``score < 0 ? score * penalty : score / penalty`` on the
   raw logit, once per distinct id (all reads happen before the writes).
3. The logits go to the sampler (``LogSoftMax`` first only when scores are
   returned; softmax-invariant either way). ``make_sampler`` picks
   ``BestSampler`` (argmax) when ``sampling_topk == 1``, else ``RandomSampler``
   (`src/sampling.cc`):
   a. top-k: keep the k best scores when ``0 < k < vocabulary`` (k larger than
      the vocabulary throws, 0 means all);
   b. divide by the temperature;
   c. top-p when ``p < 1`` (``TopPMask``, `src/ops/topp_mask.cc` and
      `topp_mask_cpu.cc`): softmax over what top-k kept, sort descending, keep a
      token while the probability summed *before* it is still below p (so the
      token that reaches p is kept), mask the rest with -inf;
   d. softmax, then one multinomial draw (``std::discrete_distribution`` on a
      per-thread ``std::mt19937``, `src/ops/multinomial_cpu.cc`, `src/random.cc`).

The knobs reach CTranslate2 through `bot.engine.generation.device_sampling`, the
very function the engine calls, so the two cannot drift: ``top_k = -1`` becomes
0 (all), ``top_p = 0`` becomes greedy (top-k 1), the repetition penalty is
``1 + value``, and with ``top_p < 1`` top-k is bounded to 8,192 (the CUDA top-p
kernel's limit) — so top-p's nucleus is taken among those 8,192.

What the seed can and cannot do: CTranslate2 4.8.5 has no per-call seed; its
generator is seeded once per process (`set_random_seed`) and each decoding
thread keeps its own. So the "seeded sample" here is this module's own draw
from the final distribution with a numpy generator: repeatable for a given
seed and step, and distributed exactly as the engine's draw, but not the token
the engine's own generator would pick.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.engine.generation import device_sampling
from bot.knobs import Knobs

FloatArray = npt.NDArray[np.float64]
F32 = np.float32
#: What `DisableTokens` writes over a disabled logit (`std::numeric_limits<float>::lowest()`).
DISABLED = np.finfo(np.float32).min

STAGES = ("min_new_tokens", "top_k", "candidate_bound", "top_p")
"""What removes tokens, in the order it acts; temperature and the penalty only reshape.

``candidate_bound`` is the engine's own top-k of 8,192 under ``top_p < 1`` (no knob
of the member's): named apart so a table does not blame ``top_k = -1`` for it.
"""


def softmax(x: npt.NDArray[Any]) -> FloatArray:
    """A numerically safe softmax in float64; -inf entries get exactly 0."""
    z = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(z)
    out = np.zeros_like(z)
    if not finite.any():
        return out
    m = z[finite].max()
    e = np.where(finite, np.exp(np.where(finite, z, m) - m), 0.0)
    out = e / e.sum()
    return np.asarray(out, dtype=np.float64)


def penalize(logits: npt.NDArray[np.float32], generated: Iterable[int],
             penalty: float) -> npt.NDArray[np.float32]:
    """CTranslate2's repetition penalty (see the module docstring, step 2), on a copy."""
    out = np.array(logits, dtype=F32, copy=True)
    ids = sorted(set(int(i) for i in generated))
    if penalty == 1.0 or not ids:
        return out
    idx = np.asarray(ids, dtype=np.int64)
    scores = out[idx]
    p = F32(penalty)
    out[idx] = np.where(scores < 0, scores * p, scores / p)
    return out


@dataclass(frozen=True)
class StepDistribution:
    """One decoding step, before and after the knobs, over the whole vocabulary."""

    raw: FloatArray
    """softmax of the model's logits: what the model says, before any knob."""
    processed: npt.NDArray[np.float32]
    """Logits after min_new_tokens and the repetition penalty (what the sampler receives)."""
    tempered: FloatArray
    """softmax(processed / temperature) over the whole vocabulary, before any cut."""
    final: FloatArray
    """The distribution the engine samples from: 0 outside the kept tokens, sums to 1."""
    removed_by: npt.NDArray[np.int8]
    """Per token: -1 kept, else the index in `STAGES` of the knob that removed it."""
    sampling: dict[str, Any]
    """The CTranslate2 arguments the engine passes for these knobs (`device_sampling`)."""
    greedy: bool
    """True when these knobs make the engine pick the best token (top-k 1)."""

    @property
    def kept(self) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = self.removed_by < 0
        return mask

    def removed(self, stage: str) -> npt.NDArray[np.int64]:
        """Ids the knob `stage` removed, most likely first (by raw probability)."""
        ids = np.flatnonzero(self.removed_by == STAGES.index(stage))
        order = np.argsort(-self.raw[ids], kind="stable")
        return np.asarray(ids[order], dtype=np.int64)

    def left_out(self) -> float:
        """The model's (raw) probability mass the knobs left out."""
        return float(self.raw[~self.kept].sum())

    def best(self) -> int:
        """What greedy decoding would pick after these knobs (the best processed logit)."""
        return int(np.argmax(self.final))

    def draw(self, seed: int, step: int) -> int:
        """A repeatable draw from `final` for (seed, step): what a sample *could* pick."""
        rng = np.random.default_rng([seed & 0xFFFFFFFF, step])
        return int(rng.choice(self.final.size, p=self.final))


def apply_knobs(
    logits: npt.NDArray[Any],
    knobs: Knobs,
    *,
    generated: Sequence[int] = (),
    end_ids: Iterable[int] = (),
    vocab_size: int | None = None,
) -> StepDistribution:
    """The next-token distribution after `knobs`, as CTranslate2 computes it (module docstring).

    `generated` is the reply so far (ids decoded in this reply, oldest first):
    min_new_tokens and the repetition penalty depend on it, the prompt does not.
    """
    raw_logits = np.asarray(logits, dtype=F32).reshape(-1)
    vocab = int(vocab_size or raw_logits.size)
    sampling = device_sampling(knobs, vocab)
    removed = np.full(raw_logits.size, -1, dtype=np.int8)

    # 1. min_length: end tokens disabled until enough tokens were generated.
    x = np.array(raw_logits, copy=True)
    if len(generated) < int(sampling["min_length"]):
        for end in end_ids:
            if 0 <= end < x.size:
                x[end] = DISABLED
                removed[end] = STAGES.index("min_new_tokens")
    # 2. repetition penalty on the ids generated so far.
    x = penalize(x, generated, float(sampling["repetition_penalty"]))
    processed = x.copy()

    topk = int(sampling["sampling_topk"])
    temperature = float(sampling["sampling_temperature"])
    topp = float(sampling["sampling_topp"])
    tempered = softmax(processed.astype(np.float64) / temperature)
    if topk == 1:  # BestSampler: argmax, whatever the other knobs say
        final = np.zeros(x.size, dtype=np.float64)
        best = int(np.argmax(processed))
        final[best] = 1.0
        why = STAGES.index("top_p" if knobs.top_p <= 0.0 else "top_k")
        removed[(removed < 0) & (np.arange(x.size) != best)] = why
        return StepDistribution(softmax(raw_logits), processed, tempered, final, removed,
                                sampling, greedy=True)
    if topk > x.size:
        raise ValueError(f"sampling_topk {topk} is above the vocabulary size {x.size}")

    # 3a. top-k on the processed scores (the sampler's input; ties go to the lower id).
    candidates = np.arange(x.size)
    if 0 < topk < x.size:
        order = np.argsort(-processed, kind="stable")
        candidates = np.sort(order[:topk])
        out = np.ones(x.size, dtype=bool)
        out[candidates] = False
        why = STAGES.index("top_k" if knobs.top_k != -1 else "candidate_bound")
        removed[out & (removed < 0)] = why
    # 3b. temperature (in float32, as `ops::Mul` by 1/T does).
    inv_t = F32(1) / F32(temperature)
    scores = processed[candidates] * inv_t
    # 3c. top-p: softmax over the candidates, keep while the mass before a token is < p.
    keep = np.ones(candidates.size, dtype=bool)
    if topp < 1.0:
        probs = softmax(scores).astype(F32)
        order = np.argsort(-probs, kind="stable")
        before = np.concatenate(([F32(0)], np.cumsum(probs[order], dtype=F32)[:-1]))
        keep_sorted = before < F32(topp)
        keep = np.zeros(candidates.size, dtype=bool)
        keep[order[keep_sorted]] = True
        dropped = candidates[~keep]
        removed[dropped[removed[dropped] < 0]] = STAGES.index("top_p")
    # Tokens disabled by min_length stay out even if a cut kept them (their mass is 0).
    kept_ids = candidates[keep]
    kept_ids = kept_ids[removed[kept_ids] < 0]
    # 3d. softmax over what is left.
    final = np.zeros(x.size, dtype=np.float64)
    final[kept_ids] = softmax(processed[kept_ids] * inv_t)
    return StepDistribution(softmax(raw_logits), processed, tempered, final, removed,
                            sampling, greedy=False)
