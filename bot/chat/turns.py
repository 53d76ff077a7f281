"""One conversation turn, as every front-end describes it and `Chat.prepare` readies it.

Discord (slash `/ask`, the Reply modal, mentions, replies, DMs, Regenerate) and
the console build a `TurnAsk`; `bot.chat.service.Chat` turns it into a
`PreparedTurn` (history, request, prompt encoded once) and records it once the
reply finished. Front-ends say only where the ask happens: a `place` is a conversation that
has a current turn (a DM, a thread opened from an answer, the console); its
current turn is what an ask continues unless the front-end names the turn
(`parent_id` with `explicit`). Nothing is stored before a reply finished, so
a refused or failed ask leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.chat.files import TextFile, with_files
from bot.chat.request import Cap
from bot.engine import Engine, GenerationRequest, PreparedPrompt
from bot.errors import UserFacingError
from bot.hosting.choice import TurnModel
from bot.knobs import Knobs
from bot.store.scopes import Location
from bot.store.turns import StoredTurn


@dataclass(frozen=True)
class TurnAsk:
    """What a front-end knows about an ask: where, who, what, and what it continues."""

    location: Location
    prompt: str  # as the asker typed it (stored so); the model may read it with a name
    author_id: int
    author_name: str
    place: str | None = None  # the conversation whose current turn this continues
    parent_id: int | None = None  # the turn it continues, when the front-end knows it
    explicit: bool = False  # `parent_id` was chosen: None then means "no history"
    private: bool = False  # only its author sees it (and may continue it)
    direct: bool = False  # a one-to-one place (a DM): private, yet its place's current turn
    shared: bool = False  # several people talk here: questions carry names, if configured
    overrides: Mapping[str, Any] = field(default_factory=dict)  # per-ask knobs
    again: Knobs | None = None  # Regenerate: these knobs under today's persona and cap
    files: tuple[TextFile, ...] = ()  # text files read as context, after the question
    named: bool = False  # the text names its speakers itself (a burst from several members)
    # Inspect's "write on": the reply's tokens so far, which the model reads inside its
    # open turn and carries on, within what is left of the reply's max_new_tokens.
    written: tuple[int, ...] = ()


@dataclass(frozen=True)
class PreparedTurn:
    """A turn ready to submit, and what recording it needs once the reply finished."""

    ask: TurnAsk
    parent_id: int | None
    request: GenerationRequest
    prepared: PreparedPrompt  # `request` rendered and encoded: submit it, don't redo it
    dropped_turns: int  # earlier turns left out to fit the context (for the footer)
    # The engine of the model answering (submit to it at once: an idle model
    # may be unloaded after the next await) and which model that is, with its note.
    engine: Engine
    model: TurnModel
    several: bool = False  # the host serves several models: the footer names this one
    cap: Cap | None = None  # the scope's max_new_tokens cap and the asked value (footer)
    reasoning: bool = False  # the scope splits <think> reasoning from the answer
    files: tuple[TextFile, ...] = ()  # the files as the model read them (cut to fit)
    files_cut: tuple[str, ...] = ()  # names of files of which only the beginning fitted

    @property
    def question(self) -> str:
        """The question as stored: what was typed, then its files as the model read them."""
        return with_files(self.ask.prompt, self.files)

    @property
    def footer_model(self) -> str | None:
        """What the footer says about the model: nothing on a single-model host."""
        if not self.several:
            return None
        return self.model.note or f"`{self.model.name}`"

    @property
    def private(self) -> bool:
        return self.ask.private or self.ask.direct

    @property
    def head(self) -> str | None:
        """The place this turn becomes current in: a private ask in a shared place never does."""
        ask = self.ask
        return ask.place if (ask.direct or not ask.private) else None


class ElsewhereConversation(UserFacingError):
    """A continuation named a conversation of another server or channel."""

    def __init__(self) -> None:
        super().__init__(
            "That conversation belongs to another channel: continue it where it started."
        )


def check_where(turn: StoredTurn, where: Location) -> None:
    """Refuse continuing `turn` anywhere but its own server and channel (or a thread of it).

    Every continuation (a Reply, a Regenerate, a message replying to or forwarding
    an answer, a thread's or a DM's current turn) names its turn with something a
    client sends: a custom id, a message reference. So what it names is checked
    against where the ask happens, every time, here where every path meets.
    """
    if turn.guild_id != where.guild_id:
        raise ElsewhereConversation()
    if turn.channel_id is not None and turn.channel_id not in (
        where.channel_id, where.parent_channel_id
    ):
        raise ElsewhereConversation()
