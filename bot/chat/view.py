"""A member's conversation as they can see it and clear it (issue 24 item 8).

The console has /history and /new; on Discord, `/conversation show` lists the
turns of the member's conversation where they ask it (their DM conversation,
the thread's, or in a channel their newest one), each with its length in the
model's own tokens and whether the next ask would leave it out to fit the
context window; `/conversation forget` deletes their turns of it (the whole
conversation in DMs, where every turn is theirs). No Discord here: the cog
only says where.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot import wording
from bot.chat.history import fit_history, history_of
from bot.chat.request import resolve_request
from bot.store.scopes import Location
from bot.store.turns import StoredTurn

if TYPE_CHECKING:
    from bot.app import App

#: The question the window is measured for: a short next ask.
_PROBE = "?"
#: How much of each turn the listing quotes.
PREVIEW_CHARS = 80


@dataclass(frozen=True)
class TurnLine:
    role: str  # "user" | "assistant"
    speaker: str
    tokens: int
    left_out: bool  # the next ask here would leave it out to fit the context window
    preview: str


@dataclass(frozen=True)
class ConversationView:
    turns: tuple[TurnLine, ...]
    history_tokens: int
    context_length: int

    @property
    def left_out(self) -> int:
        return sum(1 for t in self.turns if t.left_out)


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


async def view_of(app: App, location: Location, chain: list[StoredTurn],
                  viewer_id: int) -> ConversationView:
    """The turns of `chain` the viewer may see, their token counts, and what would be left out."""
    visible = [t for t in chain if t.visible_to(viewer_id)]
    tokenizer = app.engine.bundle.tokenizer
    counts = [len(tokenizer.encode(t.text)) for t in visible]
    request = await resolve_request(app, location, _PROBE)
    history = history_of(visible, names=False)
    fitted = fit_history(app.engine, replace(request, history=history))
    # history_of leaves out an answer whose question retention removed: count it too.
    dropped = len(visible) - len(history) + fitted.dropped_turns
    lines = tuple(
        TurnLine(role=t.role, speaker=t.author_name if t.role == "user" else "bot",
                 tokens=n, left_out=i < dropped, preview=_preview(t.text))
        for i, (t, n) in enumerate(zip(visible, counts, strict=True))
    )
    return ConversationView(lines, sum(counts), app.engine.info.context_length)


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
        out.append(f"- {t.speaker} ({wording.plural(t.tokens, 'token')}{mark}): {t.preview}")
    return "\n".join(out)
