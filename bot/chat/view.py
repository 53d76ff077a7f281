"""A member's conversation as they can see it and clear it.

The console has /history and /new; on Discord, `/conversation show` lists the
turns of the member's conversation where they ask it (their DM conversation,
the thread's, or in a channel their newest one), each with its length in the
model's own tokens and whether the next ask would leave it out to fit the
context window; `/conversation forget` deletes their turns of it (the whole
conversation in DMs, where every turn is theirs). No Discord here: the cog
only says where, and `Chat.view` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import wording

#: How much of each turn the listing quotes.
PREVIEW_CHARS = 80


@dataclass(frozen=True)
class TurnLine:
    role: str  # "user" | "assistant"
    speaker: str
    tokens: int
    left_out: bool  # the next ask here would leave it out to fit the context window
    text: str

    def preview(self, chars: int = PREVIEW_CHARS) -> str:
        """The turn as a listing quotes it: one line, at most `chars`."""
        flat = " ".join(self.text.split())
        return flat if len(flat) <= chars else flat[: chars - 1] + "…"


@dataclass(frozen=True)
class ConversationView:
    turns: tuple[TurnLine, ...]
    history_tokens: int
    context_length: int
    reply_tokens: int = 0  # the room the next ask keeps for its reply (`max_new_tokens`)

    @property
    def left_out(self) -> int:
        return sum(1 for t in self.turns if t.left_out)


def describe(view: ConversationView) -> str:
    """The listing as text (Discord markdown is plain enough for the console too)."""
    if not view.turns:
        return "No conversation here yet."
    out = [f"**{wording.plural(len(view.turns), 'turn')}**, "
           f"{wording.plural(view.history_tokens, 'token')} of a "
           f"{view.context_length:,}-token window"]
    if view.left_out:
        out[0] += f"; the next ask leaves out the oldest {wording.plural(view.left_out, 'turn')}"
    for t in view.turns:
        mark = " · *left out*" if t.left_out else ""
        out.append(f"- {t.speaker} ({wording.plural(t.tokens, 'token')}{mark}): {t.preview()}")
    return "\n".join(out)
