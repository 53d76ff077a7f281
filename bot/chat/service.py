"""`Chat`: the conversation layer every front-end talks to, free of Discord.

The Discord runner, the cogs and the console never reach a store: they say
where an ask happens and what it continues (`TurnAsk`), and `Chat` decides the
rest once:

    chat.prepare(ask) → PreparedTurn      settings resolved once, the turn's model
                                          leased once, the prompt encoded once
    turn.engine.submit(turn.request, turn.prepared)
    chat.record(turn, result, ...)        one transaction: the ask (for Regenerate),
                                          the exchange or a new version, why it stopped;
                                          returns the answer with its versions

Continue is `continue_` then `extend`, the same way. Nothing is stored before a
reply finished, so a refused or failed ask leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from bot import wording
from bot.chat.files import TextFile, attach
from bot.chat.history import Fitted, check_continuable, fit_history, history_of, speaker_text
from bot.chat.request import Cap, cap_of, make_request, persona, within_cap
from bot.chat.speakers import fill_user, several_people, shared_request
from bot.chat.turns import PreparedTurn, TurnAsk, check_where
from bot.chat.usage import ContextUsage, usage_of
from bot.chat.view import ConversationView, TurnLine
from bot.config import Settings
from bot.engine import Engine, FinishReason, GenerationRequest, GenerationResult, PreparedPrompt
from bot.errors import UserFacingError
from bot.hosting.host import ModelHost, OnWait, swapper_of
from bot.knobs import Knobs
from bot.model.bundle import read_generation_defaults
from bot.store.ask_log import AskLog, AskRecord
from bot.store.scopes import Effective, Location, with_model_defaults
from bot.store.store import SettingsStore
from bot.store.swipes import MAX_SWIPES, Answer, Swipes, SwipeStore
from bot.store.turns import NewExchange, StoredTurn, TurnStore

#: `GenerationResult.finish_reason` as the turns table records it.
_FINISH: Final = {
    FinishReason.END: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.MAX_TOKENS: "length",
    FinishReason.CANCELLED: "cancelled",
    FinishReason.ERROR: "error",
}

#: The question a window is measured for when the next one is unknown: a short ask.
PROBE = "?"


def finish_of(result: GenerationResult) -> str:
    """Why a reply stopped, in the stored words ('length' is what Continue is for)."""
    return "error" if result.error else _FINISH[result.finish_reason]


def written_on(engine: Engine, prepared: PreparedPrompt, ids: Sequence[int]) -> PreparedPrompt:
    """`prepared` with a reply's first tokens inside its open assistant turn (no end marker),
    so the model carries them on; the budget is what is left of the reply's."""
    tokenizer = engine.bundle.tokenizer
    vocab = engine.info.vocab_size or tokenizer.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise UserFacingError(wording.WRITE_ON_UNKNOWN_TOKEN)
    tokens = [*prepared.tokens, *(tokenizer.id_to_token(i) for i in ids)]
    budget = min(prepared.max_new_tokens - len(ids), engine.info.context_length - len(tokens))
    if budget <= 0:
        raise UserFacingError(wording.WRITE_ON_NO_ROOM)
    return replace(prepared, tokens=tokens, max_new_tokens=budget)


class Chat:
    """Conversations over the settings, turns, versions and ask log of one database."""

    def __init__(self, settings: Settings, store: SettingsStore, turns: TurnStore,
                 swipes: SwipeStore, ask_log: AskLog, models: ModelHost) -> None:
        self.settings = settings
        self.store = store
        self.turns = turns
        self.swipes = swipes
        self.ask_log = ask_log
        self.models = models

    async def resolve(self, location: Location) -> Effective:
        """The settings in force at `location`, over the defaults of the model in effect there
        (its `generation_config.json`, shown as "(model)")."""
        effective = await self.store.resolve(location)
        name = self.models.choice(effective).name
        model_dir = self.models.catalog.spec(name).dir
        return with_model_defaults(effective, read_generation_defaults(model_dir))

    # --- a turn ----------------------------------------------------------------------

    def request(self, effective: Effective, prompt: str,
                overrides: Mapping[str, Any] | None = None) -> tuple[GenerationRequest, Cap]:
        """The request an ask makes under `effective`, and the scope's cap on its length.

        The persona in force (or the configured default), the scope's knobs, then the
        per-ask overrides, whose `max_new_tokens` the scope's value caps.
        """
        system, _ = persona(effective, self.settings.system_prompt)
        capped = within_cap(overrides, effective.knobs.max_new_tokens) if overrides else None
        request = make_request(prompt, base=effective.knobs, system_prompt=system,
                               overrides=capped)
        return request, cap_of(effective, overrides)

    async def prepare(self, ask: TurnAsk, on_wait: OnWait | None = None) -> PreparedTurn:
        """History (checked for privacy, with names), persona and knobs, fitted to the context.

        Raises `UserFacingError` (a private chain, an empty prompt, bad knobs, a prompt
        too long on its own, a model that cannot load) before anything is queued.
        `on_wait` hears it when the turn's model must load first ("loading model X…").
        Submit to `turn.engine` before the next await: the model is leased only while
        the turn is fitted.
        """
        parent = ask.parent_id
        if not ask.explicit and parent is None and ask.place is not None:
            parent, chain = await self.turns.chain_at(ask.place)
        else:
            chain = await self.turns.chain(parent)
        if chain:
            check_where(chain[-1], ask.location)
        private = ask.private or ask.direct
        if check_continuable(chain, ask.author_id) and not private:
            raise UserFacingError(
                "That conversation is private: it can only be continued privately.")
        # Names only once two or more people take part: a lone member's "Name: text"
        # turns taught the model to open its replies with a name.
        questions = [t for t in chain if t.role == "user" and not t.opening]  # not a greeting's
        names = (ask.shared and self.settings.conversation_names and not private
                 and several_people([t.author_id for t in questions] + [ask.author_id]))
        history = history_of(chain, names=names)
        if not ask.prompt.strip():  # refused before a speaker's name could make it look non-empty
            raise UserFacingError("Ask something: the prompt was empty.")
        model_prompt = (speaker_text(ask.prompt, ask.author_name) if names and not ask.named
                        else ask.prompt)
        # Regenerate: the ask's stored knobs under the persona and cap in force now.
        overrides = ask.again.model_dump() if ask.again is not None else ask.overrides
        effective = await self.resolve(ask.location)
        request, cap = self.request(effective, model_prompt, overrides)
        # A card's {{user}} is whoever asks this turn.
        request = replace(request, system_prompt=fill_user(request.system_prompt,
                                                           ask.author_name))
        if ask.shared:
            # A leading speaker's label is stripped from the reply, a line that starts a
            # speaker's turn ends it (BOT_SPEAKER_STOPS, the asker's first), and with
            # several people the persona says who is who.
            speakers = [t.author_name for t in questions] + [ask.author_name]
            request = shared_request(request, speakers, several=names,
                                     stops=self.settings.speaker_stops)
        # The scope's model, or the one the conversation kept; fitted with that model's
        # tokenizer and window.
        models = self.models
        turn_model = models.turn_model(chain[-1].model if chain else None, effective)

        files: list[TextFile] = []
        files_cut: list[str] = []

        def fit(engine: Engine) -> tuple[Fitted, PreparedPrompt]:
            asked = request
            if ask.files:  # the files take the room the question leaves, before any history
                prompt, kept, cut = attach(
                    request.prompt, ask.files, system=request.system_prompt,
                    context_length=engine.context_length,
                    max_new_tokens=request.knobs.max_new_tokens,
                    count_tokens=engine.count_tokens,
                )
                files[:], files_cut[:] = kept, cut
                asked = replace(request, prompt=prompt)
            fitted = fit_history(engine, replace(asked, history=history))
            # Fitting prepared the chosen request while measuring; only a request with no
            # history to fit is prepared here, once (a prompt too long on its own raises).
            prepared = fitted.prepared or engine.prepare(fitted.request)
            return fitted, written_on(engine, prepared, ask.written) if ask.written else prepared

        # Rendering and encoding a long conversation is CPU work: in a worker thread, so
        # no member's reply (nor the gateway's heartbeat) waits on it. The lease keeps the
        # model loaded meanwhile.
        # Loading a model that unloads others is rate-limited per server (or DM member).
        swapper = swapper_of(ask.location.guild_id, ask.author_id)
        async with models.lease(turn_model.name, on_wait, swapper=swapper) as engine:
            fitted, prepared = await asyncio.to_thread(fit, engine)
        return PreparedTurn(ask=ask, parent_id=parent, request=fitted.request, prepared=prepared,
                            dropped_turns=fitted.dropped_turns, engine=engine, model=turn_model,
                            several=models.several, cap=cap,
                            reasoning=effective.reasoning or engine.bundle.chat.opens_reasoning,
                            files=tuple(files), files_cut=tuple(files_cut))

    async def usage(self, ask: TurnAsk) -> ContextUsage:
        """How much of the window the next ask in `ask`'s conversation would use.

        `ask.prompt` is a stand-in (the next question is unknown); the count is the
        real tokenizer's, through the same preparation and fitting as an ask.
        """
        turn = await self.prepare(ask)
        return usage_of(turn.prepared, turn.engine.info.context_length, turn.dropped_turns)

    async def usage_here(self, ask: TurnAsk) -> ContextUsage | None:
        """`usage` of the conversation at `ask.place`; None where there is none yet, or
        where it cannot be measured now (a private chain, a model that cannot load):
        `/settings` then shows the window of the model answering instead."""
        if ask.place is None or await self.turns.head(ask.place) is None:
            return None
        try:
            return await self.usage(ask)
        except UserFacingError:
            return None

    async def record(
        self, turn: PreparedTurn, result: GenerationResult | None, *, ask_id: int | None = None,
        log: AskRecord | None = None, question_ids: tuple[int, ...] = (),
        answer_ids: tuple[int, ...] = (), reasoning: str = "", swipe_of: int | None = None,
    ) -> Swipes | None:
        """Store what an ask left, in one transaction; the answer with its versions.

        `log` keeps the ask for Regenerate (under `ask_id`); `result` (None: nothing to
        store but the ask) becomes a new exchange, or with `swipe_of` another version of
        that question's answer. Returns None when no answer was stored.
        """
        db = self.turns.db
        now = db.now_iso()
        expired = self.turns.private_cutoff()
        ask = turn.ask

        async def work(conn: Any) -> Swipes | None:
            if log is not None and ask_id is not None:
                await self.ask_log.save_in(conn, ask_id, log)
            if result is None:
                return None
            if swipe_of is not None:
                return await self.swipes.add_swipe_in(
                    conn, swipe_of, result.text, now, user_id=ask.author_id, ask_id=ask_id,
                    reasoning=reasoning, finish=finish_of(result), tokens=result.new_tokens,
                    message_ids=answer_ids)
            question, answer = await self.turns.exchange_in(conn, NewExchange(
                parent_id=turn.parent_id, question=turn.question, answer=result.text,
                author_id=ask.author_id, author_name=ask.author_name, ask_id=ask_id,
                guild_id=ask.location.guild_id, channel_id=ask.location.channel_id,
                private=turn.private, question_message_ids=question_ids,
                answer_message_ids=answer_ids, head=turn.head, model=turn.model.name,
            ), now, expired, finish=finish_of(result), tokens=result.new_tokens,
                reasoning=reasoning)
            stored = Answer(answer, reasoning, finish_of(result), 0, max(0, result.new_tokens))
            return Swipes(question, (stored,), 0)

        return await db.write(work)

    # --- Continue ----------------------------------------------------------------------

    async def continue_(self, answer_id: int, *, location: Location, user_id: int,
                        shared: bool = True, on_wait: OnWait | None = None,
                        ) -> tuple[Answer, PreparedTurn]:
        """The answer Continue extends and the request that carries it on.

        The question is prepared exactly as the first ask was (history, persona, the
        ask's knobs under today's cap), then the answer so far is appended as plain
        text *inside the open assistant turn* (no end-of-turn marker), so the model
        carries on the same sentence. The budget is the knobs' `max_new_tokens`,
        shortened to what the window has left; a full window is refused here.
        """
        answer = await self.swipes.check_continue(answer_id, user_id=user_id)
        question = (await self.turns.get(answer.turn.parent_id)
                    if answer.turn.parent_id else None)
        if question is None:
            raise UserFacingError("I no longer have the question of this reply to continue it.")
        record = await self.ask_log.load(answer.turn.ask_id) if answer.turn.ask_id else None
        turn = await self.prepare(TurnAsk(
            location=location, prompt=question.text, author_id=question.author_id,
            author_name=question.author_name, parent_id=question.parent_id, explicit=True,
            private=question.private, shared=shared,
            again=Knobs.model_validate(record.knobs) if record is not None else None,
        ), on_wait)
        engine = turn.engine
        tokenizer = engine.bundle.tokenizer
        # The answer is people's text to the tokenizer (what the model said is never
        # read back as a control token), appended after the template's assistant opener.
        extra = [tokenizer.id_to_token(i) for i in tokenizer.encode(answer.turn.text)]
        tokens = [*turn.prepared.tokens, *extra]
        room = engine.info.context_length - len(tokens)
        if room <= 0:
            raise UserFacingError(
                "This reply fills the model's context window; ask a follow-up instead."
            )
        budget = turn.request.knobs.max_new_tokens
        prepared = replace(turn.prepared, tokens=tokens, max_new_tokens=min(budget, room),
                           clamped=budget > room)
        return answer, replace(turn, prepared=prepared, dropped_turns=0)

    async def extend(self, answer_id: int, more: str, result: GenerationResult, *,
                     user_id: int, message_ids: Sequence[int] = ()) -> Swipes:
        """Append a Continue's text (and its ids, to its ask) to its answer, in one
        transaction; the versions after."""
        async def work(conn: Any) -> Swipes:
            swipes = await self.swipes.extend_in(
                conn, answer_id, more, user_id=user_id, tokens=result.new_tokens,
                finish=finish_of(result), message_ids=message_ids)
            ask_id = next((a.turn.ask_id for a in swipes.answers if a.turn.id == answer_id),
                          None)
            if ask_id is not None:
                await self.ask_log.extend_reply_in(conn, ask_id, result.token_ids)
            return swipes

        return await self.turns.db.write(work)

    # --- what a member sees of their conversation ----------------------------------------

    async def view(self, location: Location, chain: list[StoredTurn],
                   viewer_id: int) -> ConversationView:
        """The turns of `chain` the viewer may see, their tokens in the turn's model, and
        which the next ask would leave out to fit its window."""
        visible = [t for t in chain if t.visible_to(viewer_id)]
        effective = await self.resolve(location)
        request, _ = self.request(effective, PROBE)
        history = history_of(visible, names=False)
        name = self.models.turn_model(chain[-1].model if chain else None, effective).name
        async with self.models.lease(name) as engine:
            tokenizer = engine.bundle.tokenizer
            counts = [len(tokenizer.encode(t.text)) for t in visible]
            fitted = fit_history(engine, replace(request, history=history))
            window = engine.info.context_length
        # history_of leaves out an answer whose question retention removed: count it too.
        dropped = len(visible) - len(history) + fitted.dropped_turns
        lines = tuple(
            TurnLine(role=t.role, speaker=t.author_name if t.role == "user" else "bot",
                     tokens=n, left_out=i < dropped, text=t.text)
            for i, (t, n) in enumerate(zip(visible, counts, strict=True))
            if not t.opening  # the empty question before a greeting: nothing to list
        )
        return ConversationView(lines, sum(counts), window, request.knobs.max_new_tokens)

    async def conversation_here(self, place: str | None, channel_id: int | None,
                                user_id: int) -> list[StoredTurn]:
        """The conversation an ask here continues: the place's, else the member's newest
        one in the channel."""
        if place is not None:
            return (await self.turns.chain_at(place))[1]
        if channel_id is None:
            return []
        latest = await self.turns.latest_answer(channel_id, user_id)
        return await self.turns.chain(latest.id if latest is not None else None)

    # --- the stored conversation, for the front-ends ----------------------------------

    async def head(self, place: str) -> int | None:
        return await self.turns.head(place)

    async def set_head(self, place: str, turn_id: int | None) -> None:
        await self.turns.set_head(place, turn_id)

    async def get(self, turn_id: int) -> StoredTurn | None:
        return await self.turns.get(turn_id)

    async def by_message(self, message_id: int) -> StoredTurn | None:
        return await self.turns.by_message(message_id)

    async def answer_for_ask(self, ask_id: int) -> StoredTurn | None:
        return await self.turns.answer_for_ask(ask_id)

    async def question_for_ask(self, ask_id: int) -> StoredTurn | None:
        return await self.turns.question_for_ask(ask_id)

    async def question_of_ask(self, ask_id: int) -> StoredTurn | None:
        """The question an ask's reply answers: the ask's own, or for a version made by
        Regenerate or Inspect's write on (no question of its own) its answer's parent."""
        answer = await self.turns.answer_for_ask(ask_id)
        if answer is not None and answer.parent_id is not None:
            return await self.turns.get(answer.parent_id)
        return await self.turns.question_for_ask(ask_id)

    async def room_for_version(self, question_id: int, *, user_id: int) -> None:
        """Refuse, before anything is generated, a version `record` would refuse after it:
        the answer to `question_id` has all the versions it may keep."""
        kept = await self.swipes.swipes(question_id, user_id=user_id)
        if len(kept.answers) >= MAX_SWIPES:
            raise UserFacingError(wording.versions_full(MAX_SWIPES))

    async def asked(self, ask_id: int) -> AskRecord | None:
        """The stored ask (for Regenerate), or None once it is past its time."""
        return await self.ask_log.load(ask_id)

    async def latest_ask(self, user_id: int, channel_id: int | None) -> int | None:
        """The member's newest ask still kept in that channel (the lab's "try it")."""
        return await self.ask_log.latest_id(user_id, channel_id)

    async def forget_own(self, conversation_id: int, user_id: int) -> int:
        return await self.turns.forget_own(conversation_id, user_id)

    async def answer(self, answer_id: int) -> Answer | None:
        return await self.swipes.answer(answer_id)

    async def step(self, answer_id: int, delta: int, *, user_id: int) -> Swipes:
        """◀ (−1) or ▶ (+1) from the version `answer_id`'s message shows."""
        return await self.swipes.step(answer_id, delta, user_id=user_id)

    # --- greetings ----------------------------------------------------------------------

    async def record_greeting(
        self, greetings: Sequence[str], location: Location, *, ask_id: int | None,
        message_ids: Sequence[int] = (), place: str | None = None, owner_id: int | None = None,
    ) -> Swipes:
        """A posted greeting as the first assistant turn of a new conversation, each
        alternate greeting another version of it (the first shown).

        Nobody asked for it, so in a server it belongs to no member (`owner_id` None:
        public, and no member's erasure removes it; retention removes it like any
        turn); in a DM `owner_id` is the member, whose private conversation it is.
        `place` (a DM, a thread, the console) makes it the conversation there.
        """
        return await self.swipes.add_opening(
            greetings, author_id=owner_id or 0, ask_id=ask_id, guild_id=location.guild_id,
            channel_id=location.channel_id, private=owner_id is not None,
            message_ids=message_ids, head=place)
