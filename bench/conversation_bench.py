"""`python -m bench --conversation`: what a follow-up costs as a conversation grows.

A follow-up re-reads the whole conversation, so time to first text grows with
each turn. This measures it for the 1st, 5th and 10th turn of a conversation
with a 600-token persona, through the same path the bot takes: stored turns →
`history_of` → `fit_history` → `Engine.submit` (which renders the persona as
the system prompt; an engine that reuses a persona prefix does so here too).
Replies are pinned (greedy, `min_new_tokens = max_new_tokens`) so every run
decodes the same tokens; each conversation is replayed `repeats` times and the
median per turn is reported.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.common import first_text, rss_mb
from bot.chat.history import fit_history
from bot.config import Settings
from bot.engine import Engine, GenerationRequest, Turn
from bot.knobs import Knobs

PERSONA_TOKENS = 600
TURNS = 10
QUESTIONS = [
    "What should a beginner pack for a day hike in autumn?",
    "How much water is enough for six hours?",
    "What if it starts raining half-way?",
    "Which snacks keep well in a backpack?",
    "How do we split the group by pace?",
    "What should the first-aid kit hold?",
    "How early should we start in the morning?",
    "What is a good turnaround time?",
    "How do we share the route with everyone?",
    "Give me a short final checklist.",
]
_PERSONA_LINE = (
    "You are Trailmate, the friendly hiking guide of a small community server. You answer "
    "clearly, you keep safety first, you suggest concrete gear and timings, and you never "
    "invent trail names you are not sure about. "
)


def persona_of(engine: Engine, tokens: int = PERSONA_TOKENS) -> str:
    """A persona of exactly `tokens` tokens (by the model's own tokenizer)."""
    tokenizer = engine.bundle.tokenizer
    text = _PERSONA_LINE
    while len(tokenizer.encode(text)) < tokens:
        text += _PERSONA_LINE
    return tokenizer.decode(tokenizer.encode(text)[:tokens])


async def conversation_bench(
    engine: Engine, new_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    persona = persona_of(engine)
    knobs = Knobs(max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=1, top_p=1.0,
                  temperature=1.0)
    ttfts: list[list[float]] = [[] for _ in range(TURNS)]
    prompt_tokens = [0] * TURNS
    dropped = [0] * TURNS
    for _ in range(repeats):
        history: tuple[Turn, ...] = ()
        for turn, question in enumerate(QUESTIONS[:TURNS]):
            request = GenerationRequest(prompt=question, knobs=knobs, system_prompt=persona,
                                        history=history)
            fitted = fit_history(engine, request)
            ttft, result = await first_text(engine, fitted.request, missing=0.0)
            answer, tokens = result.text, result.prompt_tokens
            ttfts[turn].append(ttft)
            prompt_tokens[turn] = tokens
            dropped[turn] = fitted.dropped_turns
            history = (*fitted.request.history, Turn("user", question), Turn("assistant", answer))
    out: dict[str, Any] = {
        "persona_tokens": len(engine.bundle.tokenizer.encode(persona)),
        "new_tokens": new_tokens,
        "repeats": repeats,
    }
    for turn in (1, 5, 10):
        out[f"turn_{turn}_prompt_tokens"] = prompt_tokens[turn - 1]
        out[f"turn_{turn}_ttft_s"] = round(statistics.median(ttfts[turn - 1]), 4)
        out[f"turn_{turn}_dropped_turns"] = dropped[turn - 1]
    out["ttft_s_by_turn"] = [round(statistics.median(t), 4) for t in ttfts]
    return out


async def run_conversation_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import load_engine, model_dir_for

    engine = await load_engine(settings, model_dir_for(settings))
    try:
        out: dict[str, Any] = {
            "model": engine.info.model_name,
            "device": engine.info.device,
            "compute_type": engine.info.compute_type,
            "cpu_threads": engine.info.cpu_threads,
            "inter_threads": engine.info.inter_threads,
            "context_length": engine.info.context_length,
        }
        out.update(await conversation_bench(engine, new_tokens=min(args.new_tokens, 64)))
        out["rss_mb"] = round(rss_mb(), 1)
        return out
    finally:
        await engine.close()
