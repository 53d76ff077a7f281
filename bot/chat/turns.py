"""One conversation turn, for every front-end: prepare it, then record it.

Discord (slash `/ask`, the Reply modal, mentions, replies, DMs, Regenerate) and
the console all ask through here, so what a turn continues, who may continue
it, the persona and knobs in force, the speaker's name and the fitting to the
context window are decided once:

    prepare_turn(app, TurnAsk(...)) → PreparedTurn   (history, request, prompt)
    turn.engine.submit(turn.request, turn.prepared)   (its model's engine; encoded once)
    record_turn(app.turns, turn, answer, ...)         (once the reply finished)

Front-ends say only where the ask happens: a `place` is a conversation that
has a current turn (a DM, a thread opened from an answer, the console); its
current turn is what an ask continues unless the front-end names the turn
(`parent_id` with `explicit`). Nothing is stored before a reply finished, so
a refused or failed ask leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.chat.history import (
    Fitted,
    check_continuable,
    fit_history,
    history_of,
    speaker_text,
)
from bot.chat.request import Cap, resolve_noting_cap
from bot.chat.speakers import with_speaker_stops
from bot.chat.usage import ContextUsage, usage_of
from bot.engine import Engine, GenerationRequest, PreparedPrompt
from bot.errors import UserFacingError
from bot.hosting.choice import TurnModel
from bot.hosting.host import OnWait
from bot.knobs import Knobs
from bot.store.scopes import Location
from bot.store.turns import NewExchange, StoredTurn, TurnStore

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
    # Issue 23: the engine of the model answering (submit to it at once: an idle model
    # may be unloaded after the next await) and which model that is, with its note.
    engine: Engine
    model: TurnModel
    several: bool = False  # the host serves several models: the footer names this one
    cap: Cap | None = None  # the scope's max_new_tokens cap and the asked value (footer)
    reasoning: bool = False  # issue 22: the scope splits <think> reasoning from the answer

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
    """A continuation named a conversation of another server or channel (item 13)."""

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


async def prepare_turn(app: App, ask: TurnAsk, on_wait: OnWait | None = None) -> PreparedTurn:
    """History (checked for privacy, with names), persona and knobs, fitted to the context.

    Raises `UserFacingError` (a private chain, an empty prompt, bad knobs, a prompt
    too long on its own, a model that cannot load) before anything is queued.
    `on_wait` hears it when the turn's model must load first ("loading model X…").
    """
    parent = ask.parent_id
    if not ask.explicit and parent is None and ask.place is not None:
        parent = await app.turns.head(ask.place)
    chain = await app.turns.chain(parent)
    if chain:
        check_where(chain[-1], ask.location)
    private = ask.private or ask.direct
    if check_continuable(chain, ask.author_id) and not private:
        raise UserFacingError("That conversation is private: it can only be continued privately.")
    names = ask.shared and app.settings.conversation_names and not private
    history = history_of(chain, names=names)
    if not ask.prompt.strip():  # refused before a speaker's name could make it look non-empty
        raise UserFacingError("Ask something: the prompt was empty.")
    model_prompt = speaker_text(ask.prompt, ask.author_name) if names else ask.prompt
    # Regenerate: the ask's stored knobs under the persona and cap in force now.
    overrides = ask.again.model_dump() if ask.again is not None else ask.overrides
    request, cap = await resolve_noting_cap(app, ask.location, model_prompt, overrides)
    if names and app.settings.speaker_stops:
        # Issue 22: stop at a line that starts another speaker's turn (opt-in,
        # BOT_SPEAKER_STOPS), the asker's own line first.
        speakers = [t.author_name for t in chain if t.role == "user"] + [ask.author_name]
        request = replace(request, knobs=with_speaker_stops(request.knobs, speakers))
    # Issue 23: the scope's model, or the one the conversation kept (`model_for_turn`);
    # fitted with that model's tokenizer and window.
    models = app.models
    effective = await app.resolve(ask.location)
    turn_model = models.turn_model(chain[-1].model if chain else None, effective)
    engine = await models.engine(turn_model.name, on_wait)

    def fit(engine: Engine) -> tuple[Fitted, PreparedPrompt]:
        fitted = fit_history(engine, replace(request, history=history))
        # Fitting prepared the chosen request while measuring; only a request with no
        # history to fit is prepared here, once (a prompt too long on its own raises).
        return fitted, fitted.prepared or engine.prepare(fitted.request)

    # Rendering and encoding a long conversation is CPU work: in a worker thread, so
    # no member's reply (nor the gateway's heartbeat) waits on it (issue 24 item 17).
    # That await lets the model be unloaded meanwhile (another one needed the room), so
    # the engine is taken again afterwards, last: nothing awaits between that and the
    # caller's submit. If another engine serves the model now, fit again on it.
    for _ in range(3):
        fitted, prepared = await asyncio.to_thread(fit, engine)
        current = await models.engine(turn_model.name, on_wait)
        if current is engine:
            break
        engine = current
    return PreparedTurn(ask=ask, parent_id=parent, request=fitted.request, prepared=prepared,
                        dropped_turns=fitted.dropped_turns, engine=engine, model=turn_model,
                        several=models.several, cap=cap,
                        reasoning=effective.reasoning or engine.bundle.chat.opens_reasoning)


async def conversation_usage(app: App, ask: TurnAsk) -> ContextUsage:
    """Issue 22: how much of the window the next ask in `ask`'s conversation would use.

    `ask.prompt` is a stand-in (the next question is unknown); the count is the
    real tokenizer's, through the same preparation and fitting as an ask.
    """
    turn = await prepare_turn(app, ask)
    return usage_of(turn.prepared, turn.engine.info.context_length, turn.dropped_turns)


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
        answer_message_ids=answer_ids, head=turn.head, model=turn.model.name,
    ))
    return stored
