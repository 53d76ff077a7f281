"""Continue's footer counts the whole reply and gives advice that fits what is left."""

from __future__ import annotations

from bot import wording
from bot.chat.request import Cap, continue_footer
from bot.engine import FinishReason, GenerationResult


def result(new: int, reason: FinishReason, limit: int = 20) -> GenerationResult:
    return GenerationResult(text="more words", prompt_tokens=50, new_tokens=new, ttft_s=0.1,
                            decode_tok_s=20.0, total_s=1.0, finish_reason=reason,
                            max_new_tokens=limit)


def test_the_whole_reply_is_counted_with_how_often_it_was_continued() -> None:
    cut = continue_footer(result(20, FinishReason.MAX_TOKENS), earlier_tokens=40,
                          continuations=1, can_continue=True)
    assert cut == ("60 tokens, continued once · cut at the limit of 20 tokens — "
                   "press Continue for more")
    done = continue_footer(result(7, FinishReason.END), earlier_tokens=60, continuations=2,
                           can_continue=True)
    assert done == "67 tokens, continued twice · done"


def test_without_continue_left_the_advice_is_the_scopes() -> None:
    capped = continue_footer(result(20, FinishReason.MAX_TOKENS), earlier_tokens=140,
                             continuations=8, can_continue=False,
                             cap=Cap("channel", 20))
    assert capped.startswith("160 tokens, continued 8 times · cut at the limit of 20 tokens")
    assert wording.RAISE_HINT in capped and wording.MORE_HINT not in capped
    assert wording.times(1) == "once" and wording.times(3) == "3 times"
