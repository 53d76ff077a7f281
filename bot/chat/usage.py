"""How much of the context window a conversation uses, in the words people read.

One place for the numbers the footer, `/settings` and the console's `/history`
show, so they always agree: "3 earlier turns left out · 2,048 tokens" when
fitting dropped turns, and "uses 1,234 of 2,048 tokens (60 %)". The counts are
the real tokenizer's: `usage_of` takes them from the engine's own `prepare`
(the chat template rendered and encoded exactly as an ask is), never from an
estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.engine import PreparedPrompt


@dataclass(frozen=True)
class ContextUsage:
    """A fitted prompt's size against the window; `reply_tokens` is the room kept for it."""

    prompt_tokens: int
    context_length: int
    dropped_turns: int = 0
    reply_tokens: int = 0

    @property
    def percent(self) -> int:
        """Whole percent of the window the prompt uses (never 0 for a non-empty prompt)."""
        if self.context_length <= 0:
            return 0
        value = round(100 * self.prompt_tokens / self.context_length)
        return max(value, 1) if self.prompt_tokens else 0

    def dropped_text(self) -> str | None:
        """The footer's part: "3 earlier turns left out · 2,048 tokens", or None."""
        if self.dropped_turns <= 0:
            return None
        turns = "turn" if self.dropped_turns == 1 else "turns"
        return (f"{self.dropped_turns:,} earlier {turns} left out · "
                f"{self.context_length:,} tokens")

    def usage_text(self) -> str:
        """"uses 1,234 of 2,048 tokens (60 %)" for `/settings` and `/history`."""
        return (f"uses {self.prompt_tokens:,} of {self.context_length:,} tokens "
                f"({self.percent} %)")


def usage_of(prepared: PreparedPrompt, context_length: int,
             dropped_turns: int = 0) -> ContextUsage:
    """The usage of a prompt the engine already prepared (no second encode)."""
    return ContextUsage(len(prepared.tokens), context_length, dropped_turns,
                        prepared.max_new_tokens)

