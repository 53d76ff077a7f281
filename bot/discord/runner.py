"""The runner: every generating entry on Discord, from its press to its last edit, in one lifecycle.

Entries: slash `/ask`, the Reply modal, Regenerate, Continue, Inspect's write on
(interactions) and mentions, replies and DMs (messages) each become an `Ask`; any
other run that generates for a member (the lab's `/compare`, `CompareRun`)
subclasses `Run` and calls `AskRunner.run` too. That one method is the lifecycle:

    refuse when restarting → the member's slot (`AskGate`, taken before the
    first await) → `Run.start` (prepare through `Chat` and submit; a model that must load
    first acknowledges early through `LoadingNotice`) → the cooldown starts →
    acknowledge → `Run.deliver` (stream, store, and `release` the slot when
    generation ends, before the final edit) → finish hooks → one error tail.

Presses that must read the store before they know whether to refuse (Regenerate,
the Reply box, Continue, Inspect's write on), and reads queue under load, take the
slot and acknowledge before them (`early_ack`, `deferred`; a deferred update for
Continue and write on); a refusal found later withdraws that acknowledgement and
is said privately (`InteractionSurface.withdraw`, a follow-up). Every other run is
acknowledged at the latest `ACK_WITHIN_S` after it began.

A refusal before the acknowledgement reaches the entry as `UserFacingError`
(or is said on the early "loading" page); after it, the reply itself says how
it ended, and a reply Discord keeps refusing gets `Surface.say_undelivered`.
Stop and shutdown find a running `Run` in `AskRunner.active` by its id, never
by what a button's custom id claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import discord

from bot import wording
from bot.chat.files import TextFile
from bot.chat.history import PrivateConversation
from bot.chat.request import footer
from bot.chat.turns import PreparedTurn, TurnAsk, check_where
from bot.discord.attachments import read_text_files
from bot.discord.buttons import ReplyModal, check_binding, reply_view
from bot.discord.common import NO_MENTIONS, location_of, reply_to
from bot.discord.conversation import (
    HOW_TO_ASK,
    HOW_TO_ASK_DM,
    addressed,
    display_name,
    location,
    place_of,
    thread_name,
    thread_place,
)
from bot.discord.modals import send_stateless
from bot.discord.model_wait import ACK_WITHIN_S, LoadingNotice
from bot.discord.pages import quote_prompt
from bot.discord.reply import (
    INTERACTION_TTL_S,
    InteractionSurface,
    MessageSurface,
    Page,
    ReplyWriter,
    Surface,
    ThreadSurface,
)
from bot.discord.swipes import (
    Continuing,
    PressedSurface,
    answer_view,
    record_continuation,
    show_reasoning,
    shown_text,
    swipe,
    swipe_content,
)
from bot.engine import Generation, GenerationResult
from bot.errors import UserFacingError
from bot.hosting.host import OnWait
from bot.knobs import Knobs
from bot.limits import AskGate, QuietRefusals, Slot
from bot.model.reasoning import ReasoningFilter
from bot.store.ask_log import AskRecord
from bot.store.swipes import AnswerGone, Swipes
from bot.store.turns import StoredTurn
from bot.wording import HELP, asks_for_help

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

@dataclass(eq=False, kw_only=True)
class Run(ABC):
    """One entry of the lifecycle: who asked, where, and the surface it writes on."""

    id: int  # the interaction's or message's id: the id its Stop button carries
    user_id: int
    surface: Surface
    guild_id: int | None
    channel_id: int | None
    private: bool = False  # an ephemeral reply: nobody else stops, sees or continues it
    task: asyncio.Task[Any] | None = None
    interrupted: bool = False  # the bot is stopping: the footer says so

    @abstractmethod
    async def start(self, runner: AskRunner, on_wait: OnWait) -> None:
        """Prepare and submit the work; raise `UserFacingError` to refuse (nothing shown yet)."""

    @abstractmethod
    async def deliver(self, runner: AskRunner, first: Page, stop: discord.ui.View,
                      release: Callable[[], object]) -> GenerationResult | None:
        """Stream onto `first` (and more pages); call `release` once generation has ended."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop generating (Stop, shutdown, a failed acknowledgement)."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """Whether there is generation to stop."""


@dataclass(eq=False, kw_only=True)
class Ask(Run):
    """A reply: a new answer, a version of one (`swipe_of`) or more of one (`continuing`)."""

    turn: TurnAsk  # what the core needs to prepare the turn (its place is found later)
    channel: object  # where it was asked (a thread's conversation is looked up from it)
    open_thread: bool = False  # `/ask thread:true`: a thread from the answer, once stored
    swipe_of: int | None = None  # Regenerate adds a version to this question
    supersedes: discord.Message | None = None  # the reply Regenerate was pressed on
    shows_in: discord.PartialMessage | None = None  # the reply a version written on shows in
    continuing: Continuing | None = None  # Continue carries this answer on, in place
    notes: tuple[str, ...] = ()  # one line each for attached files that were not read
    # Filled in as it runs:
    prepared: PreparedTurn | None = None
    gen: Generation | None = None
    answer: StoredTurn | None = None
    dm: bool = field(init=False)

    def __post_init__(self) -> None:
        self.dm = self.guild_id is None

    async def start(self, runner: AskRunner, on_wait: OnWait) -> None:
        turn = await runner.prepare(self, on_wait)
        self.gen = turn.engine.submit(turn.request, turn.prepared)  # QueueFull refuses here
        self.prepared = turn

    async def deliver(self, runner: AskRunner, first: Page, stop: discord.ui.View,
                      release: Callable[[], object]) -> GenerationResult:
        result = await runner.stream(self, first, stop, release)
        if self.supersedes is not None and self.supersedes.id != await first.message_id():
            await _retire(self.supersedes)
        return result

    def cancel(self) -> None:
        if self.gen is not None:
            self.gen.cancel()

    @property
    def running(self) -> bool:
        return self.gen is not None


#: Called with each finished reply (to a command, a button, a mention or a DM).
FinishHook = Callable[[Run, GenerationResult], Awaitable[None] | None]


class AskRunner:
    """Runs asks for the bot: fairness, conversations, streaming, the reply's buttons."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.chat = app.chat
        settings = app.settings
        self.gate = AskGate(settings.per_user_limit, settings.user_cooldown_s,
                            shared=app.shared_limits)
        self.edit_interval_s = settings.edit_interval_s
        self.interaction_ttl_s: float = INTERACTION_TTL_S - 30
        self.active: dict[int, Run] = {}  # running replies by id, for Stop and shutdown
        self.accepting = True
        self.on_finish: list[FinishHook] = []
        self._background: set[asyncio.Task[None]] = set()
        self.quiet_refusals = QuietRefusals()  # refusals to messages: once per member a window

    # --- the lifecycle ---------------------------------------------------------------

    async def run(self, run: Run, held: Slot | None = None) -> None:
        """The one lifecycle (see the module): every entry's, the lab's runs' too.

        Refusals up to the acknowledgement raise `UserFacingError` to the entry;
        after it, the reply itself says how it ended. `held`: the member's slot,
        already taken by an entry that acknowledged before its store reads.
        """
        self.check_open()
        if isinstance(run, Ask) and run.continuing is None and not run.turn.prompt:
            raise UserFacingError(wording.EMPTY_PROMPT)
        # The member's slot is taken here before anything else awaits (`AskGate.hold`,
        # this host's count, no round trip): checked here but taken later, two
        # simultaneous asks by one person both passed the check, and the loser's
        # refusal came after its ack, leaving a reply that never finished. The claim
        # on every host (`Slot.share`) is a round trip: it runs under the deadline below.
        with contextlib.ExitStack() as slot:
            held = slot.enter_context(held or self.gate.hold(run.user_id))
            stop = reply_view(run.id, stop_for=run.user_id)
            # A model that must load first acknowledges the ask early and says so.
            notice = LoadingNotice(run.surface, stop)
            # Whatever queues in `start` (store reads, a shared slot, fitting a long
            # history), an interaction is acknowledged within Discord's 3 s.
            late = asyncio.get_running_loop().call_later(ACK_WITHIN_S, notice.acknowledge_late)
            try:
                await held.share()
                await run.start(self, notice)
                self.gate.accepted(run.user_id)  # a refused run above starts no cooldown
            except UserFacingError as exc:
                if not await notice.refuse(exc):
                    raise
                return
            except Exception:
                if not notice.acknowledged:
                    raise  # the entry's error handler answers the press
                # A bug after the early "loading" page: the apology goes there, not stale.
                log.exception("reply %s failed before it began", run.id)
                await notice.refuse(UserFacingError(wording.GENERIC))
                return
            finally:
                late.cancel()
            try:
                first = await notice.page() or await run.surface.acknowledge(stop)
            except BaseException:
                run.cancel()
                raise
            run.task = asyncio.current_task()
            self.active[run.id] = run
            try:
                result = await run.deliver(self, first, stop, slot.close)
                if result is not None:
                    for hook in self.on_finish:
                        maybe = hook(run, result)
                        if maybe is not None:
                            await maybe
                if isinstance(run, Ask) and run.open_thread and run.answer is not None:
                    self._in_background(self._open_thread(run, run.answer))
            except UserFacingError as exc:
                log.info("reply %s ended early: %s", run.id, exc.message)
            except discord.HTTPException as exc:
                log.exception("reply %s could not be delivered", run.id)
                await run.surface.say_undelivered(exc)
            finally:
                self.active.pop(run.id, None)

    def check_open(self) -> None:
        """Refuse new work while the bot is stopping."""
        if not self.accepting or self.app.models.closing:
            raise UserFacingError(wording.RESTARTING)

    @contextlib.contextmanager
    def early_ack(self, interaction: discord.Interaction) -> Iterator[Slot]:
        """The member's slot for a press that acknowledges before reading the store.

        Only in-memory checks come before the acknowledgement (stopping, a reply
        already in progress here, the cooldown), so they refuse with the press's own
        response; the slot is held on this host from here, so a second press by the
        same member is refused at once. With several hosts, `run` claims it on every
        host once the press is acknowledged (`Slot.share`): that round trip can queue.
        """
        self.check_open()
        with self.gate.hold(interaction.user.id) as slot:
            yield slot

    @contextlib.asynccontextmanager
    async def deferred(self, interaction: discord.Interaction, *, private: bool,
                       ) -> AsyncIterator[tuple[InteractionSurface, Slot]]:
        """`early_ack`, then a "thinking" message as private as `private`, which the
        reply becomes; a refusal inside the block takes it back and is said privately."""
        with self.early_ack(interaction) as held:
            surface = self.interaction_surface(interaction, private=private)
            await surface.defer()
            try:
                yield surface, held
            except Exception as exc:
                if not await surface.withdraw(exc):
                    raise

    async def prepare(self, ask: Ask, on_wait: OnWait) -> PreparedTurn:
        """The turn an ask submits: a new one in its place, or more of an answer."""
        if ask.continuing is not None:
            answer, turn = await self.chat.continue_(
                ask.continuing.answer_id, location=ask.turn.location, user_id=ask.user_id,
                on_wait=on_wait)
            ask.continuing.answer = answer
            return turn
        place = ask.turn.place or await place_of(self.chat, ask.channel, ask.user_id, ask.dm)
        return await self.chat.prepare(replace(ask.turn, place=place), on_wait=on_wait)

    @staticmethod
    def _ask_record(ask: Ask, turn: PreparedTurn, token_ids: tuple[int, ...] = ()) -> AskRecord:
        """What Regenerate (and Inspect: the ids the model wrote) needs of this ask."""
        request = turn.request
        return AskRecord(
            prompt=turn.question, knobs=request.knobs.model_dump(mode="json"),
            system_prompt=request.system_prompt, guild_id=ask.guild_id,
            channel_id=ask.channel_id, user_id=ask.user_id, private=ask.private,
            prompt_author_id=(None if ask.turn.author_id == ask.user_id
                              else ask.turn.author_id),
            reply_ids=token_ids,
        )

    async def stream(self, ask: Ask, first: Page, stop: discord.ui.View,
                     release: Callable[[], object]) -> GenerationResult:
        """An ask's delivery: the text, the footer, the record, then the finished buttons."""
        turn, gen = ask.prepared, ask.gen
        assert turn is not None and gen is not None
        continuing = ask.continuing
        written = ask.turn.written
        text_filter = ReasoningFilter() if turn.reasoning and continuing is None else None
        writer = ReplyWriter(ask.surface, gen, first, stop, edit_interval_s=self.edit_interval_s,
                             text_filter=text_filter)
        so_far = turn.engine.bundle.tokenizer.decode(list(written)) if written else ""
        if continuing is not None:
            writer.text = continuing.shown
        before = len(writer.text)
        if text_filter is not None and so_far:
            # Written on: the reply so far is the start of this stream, its thoughts
            # included; the filter reads it first, so they stay apart from the answer.
            writer.text += text_filter.feed(so_far)[0]
        else:
            writer.text += so_far
        try:
            result = await writer.stream()
            if written:  # the version is the reply so far and what the model wrote on
                text = result.text if text_filter is not None else so_far + result.text
                result = replace(result, text=text,
                                 token_ids=written + result.token_ids,
                                 new_tokens=len(written) + result.new_tokens,
                                 max_new_tokens=len(written) + result.max_new_tokens)
            if continuing is None:
                tail = "-# " + footer(result, turn.dropped_turns, turn.footer_model,
                                      turn.engine.info.context_length, cap=turn.cap)
                files = file_notes(turn, ask.notes)
                if files:
                    tail = f"-# {files}\n{tail}"
            else:
                tail = "-# " + continuing.footer(result, turn.cap)
            if result.error:
                tail = f"{wording.warning(result.error)}\n{tail}"
            if ask.interrupted:
                tail = f"{wording.INTERRUPTED}\n{tail}"
            await writer.lay_out(tail)
            # Stored before the buttons show, so a Reply pressed at once finds the turns.
            view = await self._record(ask, turn, result, writer, writer.text[before:])
            # The asker may ask again from the moment the footer shows: free the slot
            # first. (Otherwise a drained edit bucket keeps this task asleep in
            # discord.py for up to its reset *after* the footer is visible, and an ask
            # made on seeing it was refused as "already in progress".)
            release()
            await writer.show_final(view)
            return result
        except BaseException:
            await writer.abort()
            raise

    async def _record(self, ask: Ask, turn: PreparedTurn, result: GenerationResult,
                      writer: ReplyWriter, more: str) -> discord.ui.View | None:
        """Store what was written; the finished buttons that go with it."""
        if ask.continuing is not None:
            if result.error:
                return None
            try:
                return await record_continuation(
                    self.app, ask.continuing, user_id=ask.user_id, more=more, result=result,
                    message_ids=await writer.message_ids())
            except UserFacingError as exc:
                if isinstance(ask.surface, InteractionSurface):
                    await ask.surface.note(wording.warning(exc.message))
                return None
        keep = result if not result.error and result.text.strip() else None
        ids = await writer.message_ids() if keep is not None else ()
        swipes = await self._store(ask, turn, keep, ids, reasoning=writer.reasoning,
                                   token_ids=result.token_ids)
        if result.error:
            return None
        if ask.shows_in is not None and swipes is not None:
            # Written on from Inspect: the reply's own message shows the new version, as a
            # version swipe would, and holds its buttons; the streamed copy keeps none.
            # Unless a Regenerate retired that message meanwhile (its buttons gone): it
            # stays retired, and the streamed copy keeps the buttons.
            try:
                shown = await ask.shows_in.fetch()
                if shown.components:
                    await shown.edit(
                        content=swipe_content(swipes.current, swipes),
                        view=answer_view(swipes.current, swipes), allowed_mentions=NO_MENTIONS)
                    return None
            except discord.HTTPException as exc:
                log.warning("couldn't show version on reply %s: %s", ask.shows_in.id, exc)
        # ◀ n/m ▶ and Continue with the versions just stored.
        return (answer_view(swipes.current, swipes) if swipes is not None
                else reply_view(ask.id, reply=False))

    async def _store(
        self, ask: Ask, turn: PreparedTurn, result: GenerationResult | None,
        ids: tuple[int, ...], *, reasoning: str = "", token_ids: tuple[int, ...] = (),
    ) -> Swipes | None:
        """Keep the ask and record the exchange; None when there is nothing to continue.

        Best effort: a reply matters more than its buttons. An answer refused (the cap
        on versions) still keeps its ask, so Regenerate works.
        """
        record = self._ask_record(ask, turn, token_ids)
        try:
            swipes = await self.chat.record(
                turn, result, ask_id=ask.id, log=record, question_ids=ask.surface.question_ids(),
                answer_ids=ids, reasoning=reasoning, swipe_of=ask.swipe_of)
        except UserFacingError as exc:  # e.g. the cap on versions: say so under the reply
            log.info("reply %s not stored: %s", ask.id, exc.message)
            if isinstance(ask.surface, InteractionSurface):
                await ask.surface.note(wording.warning(exc.message))
            with contextlib.suppress(Exception):
                await self.chat.record(turn, None, ask_id=ask.id, log=record)
            return None
        except Exception:
            log.exception("couldn't store the turns of reply %s", ask.id)
            return None
        if swipes is not None:
            ask.answer = swipes.current.turn
        return swipes

    # --- entries: an answer's own buttons ------------------------------------------------

    async def bound_turns(self, turn_id: int, message_id: int | None,
                          ) -> tuple[StoredTurn | None, StoredTurn | None]:
        """The turn a button names and the turn of the message it was pressed on."""
        named = await self.chat.get(turn_id)
        shown = await self.chat.by_message(message_id) if message_id is not None else None
        return named, shown

    async def swipe(self, interaction: discord.Interaction, answer_id: int, delta: int) -> None:
        """◀ / ▶: the press's own response, no generation (bot/discord/swipes.py)."""
        await swipe(self.app, interaction, answer_id, delta,
                    lambda: check_binding(interaction, self, answer_id))

    async def show_reasoning(self, interaction: discord.Interaction, answer_id: int) -> None:
        """Reasoning: the thoughts, to the presser alone (bot/discord/swipes.py)."""
        await show_reasoning(self.app, interaction, answer_id,
                             lambda: check_binding(interaction, self, answer_id))

    async def continue_reply(self, interaction: discord.Interaction, answer_id: int) -> None:
        """Continue: one more budget for the same answer, appended in the same message.

        Acknowledged (a deferred update: the pressed message is the reply's page)
        before the store is read, as Regenerate is, the slot taken first; a refusal
        found in the store is said privately in a follow-up (the press's error path).
        """
        with self.early_ack(interaction) as held:
            await interaction.response.defer()
            await check_binding(interaction, self, answer_id)
            user = interaction.user
            found = await self.chat.answer(answer_id)
            if found is None:
                raise AnswerGone()
            continuing = Continuing(answer_id, shown_text(interaction.message))
            private = found.turn.private
            await self.run(Ask(
                id=interaction.id, user_id=user.id, channel=interaction.channel,
                guild_id=interaction.guild_id, channel_id=interaction.channel_id,
                private=private, continuing=continuing,
                surface=PressedSurface(interaction, shown=continuing.shown, private=private,
                                       ttl_s=lambda: self.interaction_ttl_s),
                turn=TurnAsk(location=location_of(interaction), prompt="", author_id=user.id,
                             author_name=display_name(user)),
            ), held)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _open_thread(self, ask: Ask, answer: StoredTurn) -> None:
        """After the reply: a public thread from it, continuing its conversation.

        In the background, so the asker's slot is free the moment the reply is
        done and their first ask in the new thread is never refused as "in progress".
        """
        surface = ask.surface
        if not isinstance(surface, InteractionSurface):
            return
        try:
            message = await surface.first_message()
            # A thread started from a message takes the message's id (Discord documents
            # this), so the conversation is in place before anyone can post in the thread.
            await self.chat.set_head(thread_place(message.id), answer.id)
            thread = await message.create_thread(name=thread_name(ask.turn.prompt))
            if thread.id != message.id:
                await self.chat.set_head(thread_place(thread.id), answer.id)
            await thread.send(wording.THREAD_CONTINUES, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            log.warning("couldn't open a thread for reply %s: %s", ask.id, exc)
            await surface.note(wording.warning(wording.THREAD_REFUSED))

    # --- entries: interactions ---------------------------------------------------------

    async def _interaction_ask(
        self, interaction: discord.Interaction, prompt: str, *, private: bool,
        overrides: Mapping[str, Any] | None = None, again: Knobs | None = None,
        parent_id: int | None = None, explicit: bool = False, open_thread: bool = False,
        speaker: tuple[int, str] | None = None,
        swipe_of: int | None = None, supersedes: discord.Message | None = None,
        files: tuple[TextFile, ...] = (), notes: tuple[str, ...] = (),
        written: tuple[int, ...] = (), shows_in: discord.PartialMessage | None = None,
        surface: InteractionSurface | None = None, held: Slot | None = None,
    ) -> None:
        user = interaction.user
        # Regenerate keeps the question's own speaker: the model would read the
        # presser's name as the asker's when someone else pressed it.
        author_id, author_name = speaker or (user.id, display_name(user))
        dm = interaction.guild_id is None
        prompt = prompt.strip()
        if surface is None:
            surface = self.interaction_surface(interaction, private=private)
        surface.header = quote_prompt(prompt)
        await self.run(Ask(
            id=interaction.id, user_id=user.id, channel=interaction.channel,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id,
            private=private, open_thread=open_thread, swipe_of=swipe_of, notes=notes,
            supersedes=supersedes, shows_in=shows_in, surface=surface,
            turn=TurnAsk(
                location=location_of(interaction), prompt=prompt, author_id=author_id,
                author_name=author_name, parent_id=parent_id,
                # In a DM, an interaction ask starts afresh unless it names its turn.
                explicit=explicit or dm, private=private, direct=dm, shared=True,
                overrides=dict(overrides or {}), again=again, files=files, written=written,
            ),
        ), held)

    def interaction_surface(self, interaction: discord.Interaction, *,
                            private: bool) -> InteractionSurface:
        return InteractionSurface(interaction, private=private, header="",
                                  ttl_s=lambda: self.interaction_ttl_s)

    async def ask_command(
        self, interaction: discord.Interaction, prompt: str, overrides: dict[str, Any], *,
        private: bool = False, thread: bool = False,
        attachments: Sequence[discord.Attachment] = (),
    ) -> None:
        """/ask: a new conversation, or the thread's; `thread` opens one from the answer."""
        if thread:
            if private:
                raise UserFacingError(wording.THREAD_IS_PUBLIC)
            if interaction.guild_id is None:
                raise UserFacingError(wording.THREAD_NOT_IN_DM)
            if isinstance(interaction.channel, discord.Thread):
                raise UserFacingError(wording.THREAD_ALREADY)
        files, notes = await self.read_files(attachments)
        await self._interaction_ask(interaction, prompt, private=private, overrides=overrides,
                                    open_thread=thread, files=files, notes=notes)

    async def read_files(
        self, attachments: Sequence[discord.Attachment]
    ) -> tuple[tuple[TextFile, ...], tuple[str, ...]]:
        """Attached text files within the operator's caps, and notes on those not read."""
        settings = self.app.settings
        return await read_text_files(attachments, max_bytes=settings.file_max_bytes,
                                     max_count=settings.file_max_count)

    async def open_reply(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Reply button: check who may continue, then open the follow-up modal."""
        answer = await self._answer_to_continue(ask_id, interaction.user.id)
        check_where(answer, location_of(interaction))  # and where; again on submit
        await send_stateless(interaction, ReplyModal(ask_id))

    async def ask_followup(self, interaction: discord.Interaction, text: str, ask_id: int) -> None:
        """The Reply modal was sent: a new reply continuing from the answer of `ask_id`.

        Acknowledged before the store is read, as Regenerate is: the "thinking" message
        is as private as the message the box was opened from (a private answer's
        buttons are on an ephemeral one); a refusal found in the store, or an answer
        whose privacy is not that message's, takes it back and is said privately.
        """
        if not text.strip():
            raise UserFacingError(wording.EMPTY_PROMPT)
        dm = interaction.guild_id is None
        private = pressed_privately(interaction) and not dm
        async with self.deferred(interaction, private=private) as (surface, held):
            answer = await self._answer_to_continue(ask_id, interaction.user.id)
            if (answer.private and not dm) != private:
                raise UserFacingError(wording.BUTTON_OTHER_REPLY)
            await self._interaction_ask(interaction, text, private=private,
                                        parent_id=answer.id, explicit=True,
                                        surface=surface, held=held)

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None:
        """Regenerate: the same prompt and knobs, a new sample; that turn only (a sibling answer).

        The persona and the max_new_tokens cap are those in force now: an admin who
        changed them since the first ask must not be overridden by a button.

        Acknowledged before the store is read (reads queue under load, and Discord
        allows 3 s): the "thinking" message is as private as the message pressed, so
        the new reply's privacy is known without the store; a refusal found in the
        store takes that message back and is said privately (`InteractionSurface.withdraw`).
        """
        private = pressed_privately(interaction)
        async with self.deferred(interaction, private=private) as (surface, held):
            await self._again(interaction, ask_id, surface, held)

    async def write_on(self, interaction: discord.Interaction, ask_id: int,
                       written: tuple[int, ...], shows_in: discord.PartialMessage | None,
                       *, held: Slot | None = None) -> None:
        """Inspect's "write on": Regenerate from the reply's first tokens (`written`).

        Whoever may regenerate the reply may; the new version streams on the pressed
        (Inspect) message, which only the presser sees whatever the reply's own
        privacy, and is then shown in `shows_in`, the reply's own message.
        """
        surface = PressedSurface(interaction, private=True, ttl_s=lambda: self.interaction_ttl_s)
        await self._again(interaction, ask_id, surface, held, written=written, shows_in=shows_in)

    async def _again(self, interaction: discord.Interaction, ask_id: int,
                     surface: InteractionSurface, held: Slot | None, *,
                     written: tuple[int, ...] = (),
                     shows_in: discord.PartialMessage | None = None) -> None:
        """A new version of the reply to `ask_id`: Regenerate, or written on from Inspect."""
        parent_id: int | None = None
        explicit = False
        speaker: tuple[int, str] | None = None
        # The question is found from the answer too (a version made by Regenerate
        # has no question of its own), and the new reply is its next version.
        question = await self.chat.question_of_ask(ask_id)
        if question is not None:
            if not question.visible_to(interaction.user.id):
                raise PrivateConversation()
            parent_id, explicit = question.parent_id, True
            speaker = (question.author_id, question.author_name)
        record = await self.chat.asked(ask_id)
        if record is None:
            raise UserFacingError(wording.PROMPT_GONE)
        self.check_regenerate(interaction, record)
        swipe_of = question.id if question is not None and question.role == "user" else None
        if written and swipe_of is None:
            raise UserFacingError(wording.CONVERSATION_GONE)
        if swipe_of is not None:
            await self.chat.room_for_version(swipe_of, user_id=interaction.user.id)
        if not written and record.private != surface.private:
            raise UserFacingError(wording.BUTTON_OTHER_REPLY)  # not pressed on its reply
        await self._interaction_ask(
            interaction, record.prompt, private=record.private,
            again=Knobs.model_validate(record.knobs), parent_id=parent_id, explicit=explicit,
            speaker=speaker, swipe_of=swipe_of, written=written, shows_in=shows_in,
            supersedes=None if written else interaction.message, surface=surface, held=held,
        )

    def check_regenerate(self, interaction: discord.Interaction, record: AskRecord) -> None:
        """Whether the presser may ask this again here, judged from the stored ask.

        The same server and channel as the original ask, so a reply can't be
        re-posted elsewhere (a private ask from #help into #general); a private
        ask, or one in DMs, only by its author; and the new reply is as private
        as the first one (`regenerate` passes `record.private` on).
        """
        if record.guild_id != interaction.guild_id:
            raise UserFacingError(wording.BUTTON_OTHER_SERVER)
        if record.channel_id is not None and record.channel_id != interaction.channel_id:
            raise UserFacingError(wording.BUTTON_OTHER_CHANNEL)
        if (record.private or record.guild_id is None) and interaction.user.id != record.user_id:
            raise UserFacingError(wording.ONLY_ASKER_REGENERATES)

    async def _answer_to_continue(self, ask_id: int, user_id: int) -> StoredTurn:
        answer = await self.chat.answer_for_ask(ask_id)
        if answer is None:
            raise UserFacingError(wording.CONVERSATION_GONE)
        if not answer.visible_to(user_id):
            raise PrivateConversation()
        return answer

    async def stop(self, interaction: discord.Interaction, ask_id: int, owner_id: int) -> None:
        """The Stop button: the asker, or a member with Manage Messages where the reply is.

        Checked against the running reply itself, never against the user id in the
        button's custom id (`owner_id`, kept for old buttons' parsing only): a
        custom id is text a client sends back, and proves nothing.
        """
        active = self.active.get(ask_id)
        if active is None or not active.running:
            raise UserFacingError(wording.ALREADY_FINISHED)
        owner = interaction.user.id == active.user_id
        moderator = (
            not active.private
            and interaction.guild_id is not None
            and interaction.channel_id == active.channel_id
            and interaction.permissions.manage_messages
        )
        if not (owner or moderator):
            raise UserFacingError(wording.ONLY_ASKER_STOPS)
        active.cancel()
        await interaction.response.defer()

    # --- entries: messages (mentions, replies, DMs) -------------------------------------

    async def handle_message(self, message: discord.Message, me: discord.abc.User | None) -> None:
        """on_message: answer mentions, replies to our answers, and DMs; ignore the rest."""
        found = await addressed(self.chat, message, me)
        if found is None:
            return
        if not found.text and not message.attachments:
            await _say(message, HOW_TO_ASK_DM if found.dm else HOW_TO_ASK)
            return
        if asks_for_help(found.text):  # "@bot help" is for us, not the model
            await _say(message, HELP)
            return
        replied = found.replied
        parent_id = replied.id if replied is not None and replied.role == "assistant" else None
        await self.answer_message(message, found.text, parent_id=parent_id, dm=found.dm)

    async def answer_message(
        self, message: discord.Message, text: str, *, parent_id: int | None = None,
        dm: bool = False, place: str | None = None, thread: discord.Thread | None = None,
        attachments_from: Sequence[discord.Message] = (), named: bool = False,
    ) -> None:
        """Answer a member's message (or a burst ending with it) as one turn.

        `place` names the conversation it continues (a followed thread or channel);
        `thread` writes the answer in a thread opened from the message; files come
        from `attachments_from` (every message of a burst), else the message itself.
        """
        user = message.author
        channel: object = thread or message.channel
        channel_id = thread.id if thread is not None else message.channel.id
        guild_id = message.guild.id if message.guild is not None else None
        attachments = [a for m in (attachments_from or [message]) for a in m.attachments]
        files, notes = await self.read_files(attachments)
        if not text.strip() and files:
            text = wording.FILE_ONLY_PROMPT
        surface = ThreadSurface(message, thread) if thread is not None else MessageSurface(message)
        ask = Ask(
            id=message.id, user_id=user.id, surface=surface, channel=channel,
            guild_id=guild_id, channel_id=channel_id, notes=notes,
            turn=TurnAsk(
                location=location(guild_id, channel_id, channel, user.id), prompt=text,
                author_id=user.id, author_name=display_name(user), parent_id=parent_id,
                direct=dm, shared=True, place=place, files=files, named=named,
            ),
        )
        try:
            await self.run(ask)
        except UserFacingError as exc:
            # Once per member per window: a refusal is a channel message.
            if self.quiet_refusals.should_say(user.id):
                await _say(message, wording.warning(exc.message))
        except discord.HTTPException:
            log.exception("reply %s could not be delivered", ask.id)

    # --- shutdown -------------------------------------------------------------------------

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking asks; let replies finish for `grace_s`, then interrupt the rest."""
        self.accepting = False
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for active in list(self.active.values()):
            active.interrupted = True
            active.cancel()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            # Each interrupted reply gets its final "interrupted" edit before we close.
            await asyncio.wait(tasks, timeout=10)


def pressed_privately(interaction: discord.Interaction) -> bool:
    """Whether the pressed message is ephemeral (a private reply's buttons are on one)."""
    message = interaction.message
    return message is not None and message.flags.ephemeral


async def _say(message: discord.Message, text: str) -> None:
    with contextlib.suppress(discord.HTTPException):
        await reply_to(message, text)


def file_notes(turn: PreparedTurn, skipped: Sequence[str]) -> str:
    """The footer's line about files: which were read (and cut), which were not."""
    lines = []
    if turn.files:
        names = ", ".join(f"`{f.name}`" for f in turn.files)
        cut = ", ".join(f"`{name}`" for name in turn.files_cut)
        lines.append(wording.FILE_READ_CUT.format(names=names, cut=cut) if cut
                     else wording.FILE_READ.format(names=names))
    lines.extend(skipped)
    return "\n-# ".join(lines)


async def _retire(message: discord.Message | None) -> None:
    """Take every button off a reply that Regenerate superseded with a new message.

    The new message carries the actions and the ◀ ▶ row over every version, so
    the old one keeps only its text: two live version rows switching the same
    versions would leave a member unsure which message is the conversation.
    """
    if message is None or message.flags.ephemeral:
        return
    if not (message.content or message.embeds or message.attachments):
        return  # only buttons: taking them off would leave nothing to show
    try:
        await message.edit(view=None, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as exc:
        log.warning("couldn't take the buttons off superseded reply %s: %s", message.id, exc)
