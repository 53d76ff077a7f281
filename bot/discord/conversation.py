"""Conversations on Discord: the Reply button, mentions, replies, DMs and threads.

Everything arrives without a privileged intent. Buttons and modals are
interactions; Discord delivers a message's content to a bot without the
message-content intent when the bot is mentioned (a reply that pings the bot
counts) and in DMs. A message that reaches us without content (a reply with the
ping switched off, a bare mention) gets a short "how to ask" instead of an answer.

Where a follow-up continues from:
- the Reply button: the answer it sits under (on an earlier answer: a branch);
- a reply that pings the bot: the answer it replies to;
- a plain DM: the user's current DM conversation (`dm:<user>`);
- `/ask` or a mention inside a thread opened by `/ask thread:true`: the thread's
  conversation (`thread:<id>`);
- anything else starts a new conversation.

Persona and knobs are resolved for the location at every turn. Turns are stored
only once a reply finished (`ConversationRunner._record`), so a failed ask
leaves nothing behind. Private answers stay private: their follow-ups are
ephemeral and nobody else can continue them (`bot.conversation.check_continuable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.asks import resolve_conversation
from bot.conversation import (
    PrivateConversation,
    check_continuable,
    history_of,
    speaker_text,
)
from bot.discord.buttons import RegenerateButton, StopButton
from bot.discord.common import NO_MENTIONS
from bot.discord.errors import send_error
from bot.discord.pages import MESSAGE_LIMIT, CoalescingEditor, Paginator
from bot.discord.reply import ActiveReply, AskRunner, _ReplySession, footer_text
from bot.engine import (
    Finished,
    GenerationRequest,
    GenerationResult,
    Queued,
    Started,
    TextDelta,
)
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.settings.ask_log import AskRecord
from bot.settings.scopes import Location
from bot.settings.turns import NewExchange, StoredTurn, TurnStore

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

REPLY_ID = "llm:reply:{ask_id}"
MODAL_ID = "llm:replymodal:{ask_id}"
FOLLOWUP_LIMIT = 4000  # Discord's limit for a modal text input
PRUNE_EVERY_S = 3600.0

HOW_TO_ASK = (
    "I found no question to answer (Discord shows me the text of a message only when it "
    "mentions me). To ask me, mention me together with your question, reply to one of my "
    "answers with the ping left on, press **Reply** under an answer, or use `/ask`."
)
HOW_TO_ASK_DM = "Send me your question as text (or use `/ask`); I can only answer text."


def dm_place(user_id: int) -> str:
    """The key of a user's current DM conversation."""
    return f"dm:{user_id}"


def thread_place(thread_id: int) -> str:
    """The key of a thread's conversation (the thread `/ask thread:true` opened)."""
    return f"thread:{thread_id}"


def display_name(user: discord.abc.User) -> str:
    return user.display_name or user.name


def strip_mention(content: str, bot_id: int) -> str:
    """The question in a message, without the ``<@bot>`` mentions that addressed it."""
    return re.sub(rf"<@!?{bot_id}>", " ", content).strip()


def thread_name(question: str) -> str:
    """A thread title from the question: one line, at most 90 characters."""
    flat = " ".join(question.split()) or "Conversation"
    return flat if len(flat) <= 90 else flat[:89].rstrip() + "…"


@dataclass
class _Pending:
    """What an interaction ask continues, decided before `AskRunner.ask` runs."""

    parent_id: int | None = None
    explicit: bool = False  # the parent was chosen (None then means "no history")
    open_thread: bool = False


@dataclass
class _Context:
    """What `build_request` decided, kept until the reply finishes and is stored."""

    parent_id: int | None
    question: str
    author_id: int
    author_name: str
    private: bool
    guild_id: int | None
    channel_id: int | None
    head: str | None
    open_thread: bool = False
    answer: StoredTurn | None = None  # once stored


def static_view(*items: discord.ui.Item[Any]) -> discord.ui.View:
    """A stopped view (never stored by discord.py): the dynamic items handle the clicks."""
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    view.stop()
    return view


class ConversationRunner(AskRunner):
    """The ask runner with conversations: history in, turns stored, follow-ups out."""

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.turns = TurnStore(app.store.db)
        self._pending: dict[int, _Pending] = {}
        self._contexts: dict[int, _Context] = {}
        self._pruner: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: Called with each finished answer to a message (mention, reply, DM), as
        #: `on_finish` is for interaction replies; the metrics count asks here.
        self.on_message_finish: list[Callable[[GenerationResult], None]] = []
        self.on_finish.append(self._record)

    # --- entry points ----------------------------------------------------------------

    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        overrides: dict[str, Any],
        *,
        private: bool = False,
        knobs: Knobs | None = None,
        system_prompt: str | None = None,
    ) -> None:
        try:
            await super().ask(interaction, prompt, overrides, private=private, knobs=knobs,
                              system_prompt=system_prompt)
        finally:
            self._pending.pop(interaction.id, None)
            self._contexts.pop(interaction.id, None)

    async def ask_command(
        self,
        interaction: discord.Interaction,
        prompt: str,
        overrides: dict[str, Any],
        *,
        private: bool = False,
        thread: bool = False,
    ) -> None:
        """/ask: a new conversation, or the thread's; `thread` opens one from the answer."""
        if thread:
            if private:
                raise UserFacingError("A thread is public: ask without `private` to open one.")
            if interaction.guild_id is None:
                raise UserFacingError("Threads exist only in servers; here, just keep talking.")
            if isinstance(interaction.channel, discord.Thread):
                raise UserFacingError("This is already a thread: `/ask` here continues it.")
            self._pending[interaction.id] = _Pending(open_thread=True)
        await self.ask(interaction, prompt, overrides, private=private)

    async def open_reply(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Reply button: check who may continue, then open the follow-up modal."""
        await self._answer_to_continue(ask_id, interaction.user.id)
        await interaction.response.send_modal(ReplyModal(ask_id))

    async def ask_followup(self, interaction: discord.Interaction, text: str, ask_id: int) -> None:
        """The Reply modal was sent: a new reply continuing from the answer of `ask_id`."""
        answer = await self._answer_to_continue(ask_id, interaction.user.id)
        self._pending[interaction.id] = _Pending(parent_id=answer.id, explicit=True)
        private = answer.private and interaction.guild_id is not None
        await self.ask(interaction, text, {}, private=private)

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None:
        """Regenerate re-does that turn only: same history, a sibling answer (a branch)."""
        question = await self.turns.question_for_ask(ask_id)
        if question is not None:
            if not question.visible_to(interaction.user.id):
                raise PrivateConversation()
            self._pending[interaction.id] = _Pending(parent_id=question.parent_id, explicit=True)
        await super().regenerate(interaction, ask_id)

    async def _answer_to_continue(self, ask_id: int, user_id: int) -> StoredTurn:
        answer = await self.turns.answer_for_ask(ask_id)
        if answer is None:
            raise UserFacingError(
                "I no longer have this conversation (it may have expired). Ask again!"
            )
        if not answer.visible_to(user_id):
            raise PrivateConversation()
        return answer

    # --- the AskRunner seams ---------------------------------------------------------

    async def build_request(
        self,
        interaction: discord.Interaction,
        prompt: str,
        overrides: dict[str, Any],
        *,
        knobs: Knobs | None,
        system_prompt: str | None,
        private: bool,
    ) -> tuple[GenerationRequest, int]:
        pending = self._pending.pop(interaction.id, None) or _Pending()
        dm = interaction.guild_id is None
        channel = interaction.channel
        place: str | None = None
        parent = pending.parent_id
        if dm:
            place = dm_place(interaction.user.id)  # /ask in a DM starts afresh, then is current
        elif isinstance(channel, discord.Thread):
            head = await self.turns.head(thread_place(channel.id))
            if head is not None:
                place = thread_place(channel.id)
                if not pending.explicit:
                    parent = head
        location = _location(interaction.guild_id, interaction.channel_id or 0, channel,
                             interaction.user.id)
        fitted, context = await self._conversation_request(
            location, prompt, overrides, parent=parent, user=interaction.user, dm=dm,
            private=private, place=place, knobs=knobs, system_prompt=system_prompt,
        )
        context.open_thread = pending.open_thread
        self._contexts[interaction.id] = context
        return fitted

    async def _conversation_request(
        self,
        location: Location,
        prompt: str,
        overrides: dict[str, Any],
        *,
        parent: int | None,
        user: discord.abc.User,
        dm: bool,
        private: bool,
        place: str | None,
        knobs: Knobs | None = None,
        system_prompt: str | None = None,
    ) -> tuple[tuple[GenerationRequest, int], _Context]:
        """History for `parent`, checked for privacy, with names, fitted to the context."""
        chain = await self.turns.chain(parent)
        if check_continuable(chain, user.id) and not (private or dm):
            raise UserFacingError(
                "That conversation is private: it can only be continued privately."
            )
        turn_private = private or dm
        names = self.app.settings.conversation_names and not turn_private
        history = history_of(chain, names=names)
        if not prompt.strip():  # refused before a speaker's name could make it look non-empty
            raise UserFacingError("Ask something: the prompt was empty.")
        model_prompt = speaker_text(prompt, display_name(user)) if names else prompt
        fitted = await resolve_conversation(
            self.app, location, model_prompt, history, overrides,
            knobs=knobs, system_prompt=system_prompt,
        )
        context = _Context(
            parent_id=parent, question=prompt, author_id=user.id, author_name=display_name(user),
            private=turn_private, guild_id=location.guild_id, channel_id=location.channel_id,
            # A private ask inside a thread never becomes the thread's current turn.
            head=place if (dm or not private) else None,
        )
        return (fitted.request, fitted.dropped_turns), context

    async def final_view(
        self, session: _ReplySession, result: GenerationResult, view: discord.ui.View | None
    ) -> discord.ui.View | None:
        """Store the exchange, then add Reply: the button never shows before its turns exist."""
        context = self._contexts.get(session.ask_id)
        if context is None or result.error or not result.text.strip():
            return view
        try:
            ids = await _page_ids(session)
            _, answer = await self.turns.add_exchange(_exchange(
                context, result.text, session.ask_id, answer_ids=ids
            ))
        except Exception:
            log.exception("couldn't store the turns of reply %s", session.ask_id)
            return view
        context.answer = answer
        items = list(view.children) if view is not None else []
        return static_view(*items, ReplyButton(session.ask_id))

    async def _record(self, session: _ReplySession, result: GenerationResult) -> None:
        """on_finish, after the final edit: open the thread if one was asked for."""
        context = self._contexts.pop(session.ask_id, None)
        if context is not None and context.open_thread and context.answer is not None:
            # In the background: the asker's slot is free the moment the reply is done,
            # so their first ask in the new thread is never refused as "in progress".
            task = asyncio.create_task(
                self._open_thread(session, context.answer, context.question)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _open_thread(
        self, session: _ReplySession, answer: StoredTurn, question: str
    ) -> None:
        try:
            first = session.pages[0] if session.pages else None
            message: discord.Message
            if first is not None and first.channel_message is not None:
                message = first.channel_message
            else:
                message = await session.interaction.original_response()
            # A thread started from a message takes the message's id (Discord documents
            # this), so the conversation is in place before anyone can post in the thread.
            await self.turns.set_head(thread_place(message.id), answer.id)
            thread = await message.create_thread(name=thread_name(question))
            if thread.id != message.id:
                await self.turns.set_head(thread_place(thread.id), answer.id)
            await thread.send(
                "This thread continues the conversation: `/ask` here or mention me. "
                "Everyone can join in.", allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            log.warning("couldn't open a thread for reply %s: %s", session.ask_id, exc)
            with contextlib.suppress(discord.HTTPException):
                await session.interaction.followup.send(
                    "⚠️ I couldn't open a thread here (do I have Create Public Threads?).",
                    ephemeral=True, allowed_mentions=NO_MENTIONS,
                )

    # --- messages: mentions, replies, DMs ---------------------------------------------

    async def handle_message(self, message: discord.Message, me: discord.abc.User | None) -> None:
        """on_message: answer mentions, replies to our answers, and DMs; ignore the rest."""
        if me is None or message.author.bot or message.author.id == me.id:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        dm = message.guild is None
        mentioned = any(u.id == me.id for u in message.mentions)
        replied: StoredTurn | None = None
        replied_to_me = False
        ref = message.reference
        if ref is not None and ref.message_id is not None:
            resolved = ref.resolved
            replied_to_me = isinstance(resolved, discord.Message) and resolved.author.id == me.id
            if replied_to_me or mentioned or dm:
                replied = await self.turns.by_message(ref.message_id)
                replied_to_me = replied_to_me or replied is not None
        if not (dm or mentioned or replied_to_me):
            return
        text = strip_mention(message.content, me.id)
        if not text:
            await _say(message, HOW_TO_ASK_DM if dm else HOW_TO_ASK)
            return
        try:
            await self._answer_message(message, text, replied, dm)
        except UserFacingError as exc:
            await _say(message, "⚠️ " + exc.message)

    async def _answer_message(
        self, message: discord.Message, text: str, replied: StoredTurn | None, dm: bool
    ) -> None:
        if not self.accepting or self.app.engine.closing:
            raise UserFacingError("I'm restarting, try again in a moment.")
        user = message.author
        channel = message.channel
        place: str | None = None
        parent: int | None = None
        if replied is not None and replied.role == "assistant":
            parent = replied.id
        if dm:
            place = dm_place(user.id)
        elif isinstance(channel, discord.Thread):
            head = await self.turns.head(thread_place(channel.id))
            if head is not None:
                place = thread_place(channel.id)
        if parent is None and place is not None:
            parent = await self.turns.head(place)
        guild_id = message.guild.id if message.guild is not None else None
        location = _location(guild_id, channel.id, channel, user.id)
        with self.gate.hold(user.id):
            (request, dropped), context = await self._conversation_request(
                location, text, {}, parent=parent, user=user, dm=dm, private=False, place=place,
            )
            gen = self.app.engine.submit(request)
            ask_id = message.id
            with contextlib.suppress(Exception):
                await self.app.ask_log.save(ask_id, AskRecord(
                    prompt=text, knobs=request.knobs.model_dump(mode="json"),
                    system_prompt=request.system_prompt, guild_id=guild_id,
                    channel_id=channel.id, user_id=user.id,
                ))
            active = ActiveReply(gen=gen, user_id=user.id, task=asyncio.current_task(),
                                 channel_id=channel.id)
            self.active[ask_id] = active
            try:
                result, _ = await _MessageReply(self, message, ask_id, dropped, context).run(
                    gen, active
                )
                for hook in self.on_message_finish:
                    hook(result)
            except discord.HTTPException:
                log.exception("reply %s could not be delivered", ask_id)
            finally:
                self.active.pop(ask_id, None)

    # --- retention --------------------------------------------------------------------

    def start_pruning(self) -> None:
        """Prune turns past the retention now and every hour, until `stop_pruning`."""
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_loop(), name="prune-turns")

    def stop_pruning(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            self._pruner = None

    async def prune(self) -> int:
        removed = await self.turns.prune(self.app.settings.conversation_retention_days)
        if removed:
            log.info("pruned %d conversation turns past the retention", removed)
        return removed

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning conversation turns failed")
            await asyncio.sleep(PRUNE_EVERY_S)


def _location(
    guild_id: int | None, channel_id: int, channel: object, user_id: int
) -> Location:
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    return Location(guild_id=guild_id, channel_id=channel_id, parent_channel_id=parent,
                    user_id=user_id)


def _exchange(
    context: _Context, answer: str, ask_id: int, *,
    question_ids: tuple[int, ...] = (), answer_ids: tuple[int, ...] = (),
) -> NewExchange:
    return NewExchange(
        parent_id=context.parent_id, question=context.question, answer=answer,
        author_id=context.author_id, author_name=context.author_name, ask_id=ask_id,
        guild_id=context.guild_id, channel_id=context.channel_id, private=context.private,
        question_message_ids=question_ids, answer_message_ids=answer_ids, head=context.head,
    )


async def _page_ids(session: _ReplySession) -> tuple[int, ...]:
    """The Discord message ids of a finished reply's pages (a reply to any continues it)."""
    ids: list[int] = []
    for page in session.pages:
        if page.channel_message is not None:
            ids.append(page.channel_message.id)
        elif page.webhook_message is not None:
            ids.append(page.webhook_message.id)
        elif page.original and session.original_id is not None:
            ids.append(session.original_id)
        elif page.original:
            with contextlib.suppress(discord.HTTPException):
                ids.append((await session.interaction.original_response()).id)
    return tuple(ids)


async def _say(message: discord.Message, text: str) -> None:
    with contextlib.suppress(discord.HTTPException):
        await message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)


class _MessageReply:
    """Stream an answer to a message: a reply message edited as text arrives, then pages.

    The message-based twin of the interaction reply session: no interaction token
    to expire, so every page is an ordinary channel message.
    """

    def __init__(
        self, runner: ConversationRunner, message: discord.Message, ask_id: int, dropped: int,
        context: _Context,
    ) -> None:
        self.runner = runner
        self.message = message
        self.ask_id = ask_id
        self.dropped = dropped
        self.context = context

    async def store(self, result: GenerationResult, pages: list[discord.Message]) -> bool:
        """Store the exchange before the buttons appear; False if there is nothing to continue."""
        if not result.text.strip():
            return False
        try:
            await self.runner.turns.add_exchange(_exchange(
                self.context, result.text, self.ask_id, question_ids=(self.message.id,),
                answer_ids=tuple(p.id for p in pages),
            ))
        except Exception:
            log.exception("couldn't store the turns of reply %s", self.ask_id)
            return False
        return True

    async def run(
        self, gen: Any, active: ActiveReply
    ) -> tuple[GenerationResult, list[discord.Message]]:
        runner = self.runner
        stop = static_view(StopButton(self.ask_id, self.message.author.id))
        paginator = Paginator(MESSAGE_LIMIT)
        first = await self.message.reply(
            "-# ⏳ reading…", mention_author=False, allowed_mentions=NO_MENTIONS, view=stop,
        )
        pages: list[discord.Message] = [first]
        text = ""

        def make_editor(msg: discord.Message) -> CoalescingEditor:
            async def send(content: str) -> None:
                await msg.edit(content=content, view=stop, allowed_mentions=NO_MENTIONS)
            return CoalescingEditor(send, runner.edit_interval_s)

        editor = make_editor(first)

        def contents(tail: str) -> list[str]:
            out = paginator.pages(text.rstrip(), reserve_last=len(tail) + 1 if tail else 0)
            if tail:
                out[-1] = f"{out[-1]}\n{tail}" if out[-1] else tail
            return out

        async def grow(out: list[str]) -> None:
            nonlocal editor
            while len(out) > len(pages):
                await editor.finish(out[len(pages) - 1])
                page = await self.message.channel.send(
                    out[len(pages)], view=stop, allowed_mentions=NO_MENTIONS
                )
                pages.append(page)
                editor = make_editor(page)

        result: GenerationResult | None = None
        try:
            async for event in gen.events():
                tail = ""
                if isinstance(event, Queued):
                    tail = (f"-# ⏳ queued, {event.ahead} ahead" if event.ahead
                            else "-# ⏳ next in line")
                elif isinstance(event, Started):
                    tail = "-# ✍️ thinking…"
                elif isinstance(event, TextDelta):
                    text += event.text
                    tail = "-# ✍️ writing…"
                elif isinstance(event, Finished):
                    result = event.result
                    continue
                out = contents(tail)
                await grow(out)
                editor.update(out[-1])
            assert result is not None
            tail = footer_text(result, self.dropped)
            if result.error:
                tail = f"⚠️ {result.error}\n{tail}"
            if active.interrupted:
                tail = "⚠️ Interrupted: the bot restarted before this reply finished.\n" + tail
            final = contents(tail)
            await grow(final)
            await editor.abort()
            end_view = None
            if not result.error and await self.store(result, pages):
                end_view = static_view(ReplyButton(self.ask_id), RegenerateButton(self.ask_id))
            for i, page in enumerate(pages[:-1]):
                with contextlib.suppress(discord.HTTPException):
                    await page.edit(content=final[i], view=None, allowed_mentions=NO_MENTIONS)
            await pages[-1].edit(content=final[-1], view=end_view, allowed_mentions=NO_MENTIONS)
            return result, pages
        except BaseException:
            gen.cancel()
            await editor.abort()
            raise


def conversation_runner(interaction: discord.Interaction) -> ConversationRunner:
    """The conversation runner of the client that received `interaction`."""
    runner = getattr(interaction.client, "runner", None)
    if not isinstance(runner, ConversationRunner):
        raise TypeError("this client has no conversation runner")
    return runner


class ReplyButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:reply:(?P<ask>[0-9]+)",
):
    """Continue the conversation from this answer; parsed from its id, so it survives restarts."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Reply", style=discord.ButtonStyle.primary,
            custom_id=REPLY_ID.format(ask_id=ask_id),
        ))
        self.ask_id = ask_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ReplyButton:
        return cls(int(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await conversation_runner(interaction).open_reply(interaction, self.ask_id)
        except Exception as exc:
            await send_error(interaction, exc)


class ReplyModal(discord.ui.Modal, title="Reply"):
    """The follow-up editor: multi-line, up to Discord's 4,000 characters."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(timeout=900, custom_id=MODAL_ID.format(ask_id=ask_id))
        self.ask_id = ask_id
        self.text: discord.ui.TextInput[ReplyModal] = discord.ui.TextInput(
            label="Your reply", style=discord.TextStyle.paragraph,
            max_length=FOLLOWUP_LIMIT, required=True, custom_id="text",
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await conversation_runner(interaction).ask_followup(
            interaction, self.text.value, self.ask_id
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception
    ) -> None:
        await send_error(interaction, error)
