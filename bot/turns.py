"""One conversation turn, for every front-end: prepare it, then record it.

Discord (slash `/ask`, the Reply modal, mentions, replies, DMs, Regenerate) and
the console all ask through here, so what a turn continues, who may continue
it, the persona and knobs in force, the speaker's name and the fitting to the
context window are decided once:

    prepare_turn(app, TurnAsk(...)) → PreparedTurn   (history, request, prompt)
    Engine.submit(turn.request, turn.prepared)        (encoded once, never again)
    record_turn(app.turns, turn, answer, ...)         (once the reply finished)

Front-ends say only where the ask happens: a `place` is a conversation that
has a current turn (a DM, a thread opened from an answer, the console); its
current turn is what an ask continues unless the front-end names the turn
(`parent_id` with `explicit`). Nothing is stored before a reply finished, so
a refused or failed ask leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.asks import resolve_again, resolve_request
from bot.context_usage import ContextUsage, usage_of
from bot.conversation import check_continuable, fit_history, history_of, speaker_text
from bot.engine import GenerationRequest, PreparedPrompt
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.settings.scopes import Location
from bot.settings.turns import NewExchange, StoredTurn, TurnStore
from bot.speakers import with_speaker_stops

if TYPE_CHECKING:
    from bot.app import App


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


@dataclass(frozen=True)
class PreparedTurn:
    """A turn ready to submit, and what recording it needs once the reply finished."""

    ask: TurnAsk
    parent_id: int | None
    request: GenerationRequest
    prepared: PreparedPrompt  # `request` rendered and encoded: submit it, don't redo it
    dropped_turns: int  # earlier turns left out to fit the context (for the footer)
    reasoning: bool = False  # issue 22: the scope splits <think> reasoning from the answer

    @property
    def private(self) -> bool:
        return self.ask.private or self.ask.direct

    @property
    def head(self) -> str | None:
        """The place this turn becomes current in: a private ask in a shared place never does."""
        ask = self.ask
        return ask.place if (ask.direct or not ask.private) else None


async def prepare_turn(app: App, ask: TurnAsk) -> PreparedTurn:
    """History (checked for privacy, with names), persona and knobs, fitted to the context.

    Raises `UserFacingError` (a private chain, an empty prompt, bad knobs, a prompt
    too long on its own) before anything is queued.
    """
    parent = ask.parent_id
    if not ask.explicit and parent is None and ask.place is not None:
        parent = await app.turns.head(ask.place)
    chain = await app.turns.chain(parent)
    private = ask.private or ask.direct
    if check_continuable(chain, ask.author_id) and not private:
        raise UserFacingError("That conversation is private: it can only be continued privately.")
    names = ask.shared and app.settings.conversation_names and not private
    history = history_of(chain, names=names)
    if not ask.prompt.strip():  # refused before a speaker's name could make it look non-empty
        raise UserFacingError("Ask something: the prompt was empty.")
    model_prompt = speaker_text(ask.prompt, ask.author_name) if names else ask.prompt
    if ask.again is not None:
        request = await resolve_again(app, ask.location, model_prompt, ask.again)
    else:
        request = await resolve_request(app, ask.location, model_prompt, ask.overrides)
    if names and app.settings.speaker_stops:
        # Issue 22: stop at a line that starts another speaker's turn (opt-in,
        # BOT_SPEAKER_STOPS), the asker's own line first.
        speakers = [t.author_name for t in chain if t.role == "user"] + [ask.author_name]
        request = replace(request, knobs=with_speaker_stops(request.knobs, speakers))
    fitted = fit_history(app.engine, replace(request, history=history))
    # Fitting prepared the chosen request while measuring; only a request with no
    # history to fit is prepared here, once (a prompt too long on its own raises).
    prepared = fitted.prepared or app.engine.prepare(fitted.request)
    reasoning = (await app.resolve(ask.location)).reasoning
    return PreparedTurn(ask=ask, parent_id=parent, request=fitted.request, prepared=prepared,
                        dropped_turns=fitted.dropped_turns, reasoning=reasoning)


async def conversation_usage(app: App, ask: TurnAsk) -> ContextUsage:
    """Issue 22: how much of the window the next ask in `ask`'s conversation would use.

    `ask.prompt` is a stand-in (the next question is unknown); the count is the
    real tokenizer's, through the same preparation and fitting as an ask.
    """
    turn = await prepare_turn(app, ask)
    return usage_of(turn.prepared, app.engine.info.context_length, turn.dropped_turns)


async def record_turn(
    turns: TurnStore, turn: PreparedTurn, answer: str, *, ask_id: int | None,
    question_ids: tuple[int, ...] = (), answer_ids: tuple[int, ...] = (),
) -> StoredTurn:
    """Store the finished exchange (question and answer); returns the answer's turn."""
    ask = turn.ask
    _, stored = await turns.add_exchange(NewExchange(
        parent_id=turn.parent_id, question=ask.prompt, answer=answer,
        author_id=ask.author_id, author_name=ask.author_name, ask_id=ask_id,
        guild_id=ask.location.guild_id, channel_id=ask.location.channel_id,
        private=turn.private, question_message_ids=question_ids,
        answer_message_ids=answer_ids, head=turn.head,
    ))
    return stored
