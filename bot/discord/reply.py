"""Streaming a generation into Discord: the one place that edits reply messages.

An ask is acknowledged at once (deferred), shows its queue position, then
streams by editing the interaction's original response through a
`CoalescingEditor` (one edit in flight, about one a second). Text past 2,000
characters continues in follow-up messages; a reply that outlives the
interaction token (15 minutes) or whose webhook disappears continues as an
ordinary channel message. Every send and edit disables mentions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot.asks import footer, make_request, resolve_again, resolve_request
from bot.discord.buttons import regen_view, stop_view
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.pages import MESSAGE_LIMIT, CoalescingEditor, Paginator, quote_prompt
from bot.engine import (
    Finished,
    Generation,
    GenerationRequest,
    GenerationResult,
    Queued,
    Started,
    TextDelta,
)
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.limits import AskGate
from bot.settings.ask_log import AskRecord

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

INTERACTION_TTL_S = 15 * 60
NEXT_IN_LINE = "-# ⏳ next in line"
#: How long a reply with nobody ahead may wait before it says "next in line".
NEXT_IN_LINE_AFTER_S = 0.5



def footer_text(result: GenerationResult, dropped_turns: int = 0) -> str:
    """The reply footer in Discord's small-text markdown."""
    return "-# " + footer(result, dropped_turns)


@dataclass
class ActiveReply:
    """A reply being written: Stop checks the presser against this, not the button's id."""

    gen: Generation
    user_id: int
    task: asyncio.Task[Any] | None = None
    interrupted: bool = False
    channel_id: int | None = None
    private: bool = False


def _token_gone(exc: discord.HTTPException) -> bool:
    """Unknown Webhook (404/10015) or Invalid Webhook Token (401/50027): the token is dead."""
    return exc.status in (401, 404) or exc.code in (10015, 50027)


class _Page:
    """One message of a reply: the original response, a follow-up, or a channel message."""

    def __init__(self, reply: _ReplySession, webhook_message: discord.WebhookMessage | None,
                 original: bool) -> None:
        self.reply = reply
        self.webhook_message = webhook_message
        self.original = original
        self.channel_message: discord.Message | None = None
        #: The buttons this page carries while it is the live one (Stop); None once frozen.
        self.view: discord.ui.View | None = None
        #: What the message shows now, so an edit that would change nothing is skipped.
        self.shown: tuple[str, bool] | None = None

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        await self._edit(content, view)
        self.shown = (content, view is not None)

    async def _edit(self, content: str, view: discord.ui.View | None) -> None:
        if self.channel_message is not None:
            await self.channel_message.edit(
                content=content, view=view, allowed_mentions=NO_MENTIONS
            )
            return
        if not self.reply.token_alive():
            await self._move_to_channel(content, view)
            return
        try:
            if self.original:
                await self.reply.interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=NO_MENTIONS
                )
            elif self.webhook_message is not None:
                await self.webhook_message.edit(
                    content=content, view=view, allowed_mentions=NO_MENTIONS
                )
        except discord.HTTPException as exc:
            if not _token_gone(exc):
                raise
            # The interaction token expired or the webhook is gone: carry on in the channel.
            await self._move_to_channel(content, view)

    async def _move_to_channel(self, content: str, view: discord.ui.View | None) -> None:
        if self.reply.private:
            raise UserFacingError("This private reply expired before it finished.")
        channel = self.reply.interaction.channel
        if channel is None or not hasattr(channel, "send"):
            raise UserFacingError("This reply's message is gone and I can't post in the channel.")
        log.info("reply %s continues as a channel message", self.reply.ask_id)
        self.reply.moved_to_channel = True
        self.channel_message = await channel.send(
            content=content, view=view if view is not None else discord.utils.MISSING,
            allowed_mentions=NO_MENTIONS,
        )


@dataclass
class _ReplySession:
    runner: AskRunner
    interaction: discord.Interaction
    gen: Generation
    ask_id: int
    header: str
    private: bool
    started: float = field(default_factory=time.monotonic)
    moved_to_channel: bool = False
    edits: int = 0
    first_text_at: float | None = None
    last_edit_at: float | None = None
    #: Frees the asker's slot; called before the footer is shown (see `run`).
    release: Callable[[], object] = lambda: None
    dropped_turns: int = 0  # earlier conversation turns left out to fit, for the footer
    pages: list[_Page] = field(default_factory=list)  # the messages of this reply, in order
    original_id: int | None = None  # the original response's message id, from the ack

    def token_alive(self) -> bool:
        return time.monotonic() - self.started < self.runner.interaction_ttl_s

    async def run(self) -> GenerationResult:
        body_limit = MESSAGE_LIMIT - len(self.header) - 1
        paginator = Paginator(MESSAGE_LIMIT, first_limit=body_limit)
        # Private replies get Stop too: the "busy" refusal tells their author to press it.
        stop = stop_view(self.ask_id, self.interaction.user.id)
        first = _Page(self, None, original=True)
        first.view = stop
        pages: list[_Page] = [first]
        self.pages = pages
        text = ""
        status = ""

        def make_editor(page: _Page, sent: str | None = None) -> CoalescingEditor:
            async def send(content: str) -> None:
                await page.edit(content, page.view)
                self.edits += 1
                now = time.monotonic()
                self.last_edit_at = now
                if text and self.first_text_at is None:
                    self.first_text_at = now
            return CoalescingEditor(send, self.runner.edit_interval_s, sent=sent)

        editor = make_editor(pages[0])

        def contents(tail: str, reserve: int) -> list[str]:
            # Trailing blank lines of the model's output would stand between the
            # text and the status line or footer.
            out = paginator.pages(text.rstrip(), reserve_last=reserve)
            out[0] = f"{self.header}\n{out[0]}" if out[0] else self.header
            if tail:
                out[-1] = f"{out[-1]}\n{tail}" if out[-1] else tail
            return out

        async def grow(out: list[str]) -> None:
            """A page filled up: freeze it (losing its Stop) and continue in a follow-up."""
            nonlocal editor
            while len(out) > len(pages):
                frozen = pages[-1]
                frozen.view = None
                await editor.finish(out[len(pages) - 1], force=True)
                content = out[len(pages)]
                page = await self._new_page(content, stop)
                page.view = stop
                page.shown = (content, True)
                pages.append(page)
                editor = make_editor(page, sent=content)

        async def show(tail: str) -> None:
            out = contents(tail, len(tail) + 1 if tail else 0)
            await grow(out)
            editor.update(out[-1])

        def still_waiting() -> None:
            # Nobody was ahead, yet the reply has not started: a batch with other
            # settings is running. Now "next in line" is worth an edit.
            nonlocal status
            if status or self.gen.slot is not None or self.gen.done:
                return
            status = NEXT_IN_LINE
            editor.update(contents(status, len(status) + 1)[-1])

        waiting: asyncio.TimerHandle | None = None
        result: GenerationResult | None = None
        try:
            async for event in self.gen.events():
                if waiting is not None and not isinstance(event, Queued):
                    waiting.cancel()
                    waiting = None
                if isinstance(event, Queued):
                    if event.ahead:
                        status = f"-# ⏳ queued, {event.ahead} ahead"
                    elif status:
                        status = NEXT_IN_LINE
                    else:
                        # Nobody ahead: on an idle bot the reply starts within
                        # milliseconds, and "next in line" would cost an edit for
                        # nothing. Say it only if the reply is still waiting later.
                        if waiting is None:
                            waiting = asyncio.get_running_loop().call_later(
                                NEXT_IN_LINE_AFTER_S, still_waiting)
                        continue
                    await show(status)
                elif isinstance(event, Started):
                    status = "-# ✍️ thinking…"
                    await show(status)
                elif isinstance(event, TextDelta):
                    text += event.text
                    status = "-# ✍️ writing…"
                    await show(status)
                elif isinstance(event, Finished):
                    result = event.result
            assert result is not None
            tail = footer_text(result, self.dropped_turns)
            if result.error:
                tail = f"⚠️ {result.error}\n{tail}"
            active = self.runner.active.get(self.ask_id)
            if active is not None and active.interrupted:
                tail = "⚠️ Interrupted: the bot restarted before this reply finished.\n" + tail
            final = contents(tail, len(tail) + 1)
            end_view = None if result.error else regen_view(self.ask_id)
            await grow(final)
            # Every page exists now, so the runner's seam sees all their ids.
            end_view = await self.runner.final_view(self, result, end_view)
            await editor.abort()
            # Pages frozen while streaming already lost their Stop; any other earlier
            # page loses it now, before the footer, so the footer is the last word.
            for i, page in enumerate(pages[:-1]):
                if page.shown != (final[i], False):
                    with contextlib.suppress(discord.HTTPException):
                        await page.edit(final[i], None)
            # The asker may ask again from the moment the footer shows: free the
            # slot first. (Otherwise a drained edit bucket keeps this task asleep
            # in discord.py for up to its reset *after* the footer is visible, and
            # an ask made on seeing it was refused as "already in progress".)
            self.release()
            await pages[-1].edit(final[-1], end_view)
            self.edits += 1
            self.last_edit_at = time.monotonic()
            return result
        except BaseException:
            self.gen.cancel()
            await editor.abort()
            raise
        finally:
            if waiting is not None:
                waiting.cancel()

    async def _new_page(self, content: str, view: discord.ui.View | None) -> _Page:
        if self.token_alive() and not self.moved_to_channel:
            try:
                msg = await self.interaction.followup.send(
                    content=content, view=view if view is not None else discord.utils.MISSING,
                    allowed_mentions=NO_MENTIONS, wait=True, ephemeral=self.private,
                )
                return _Page(self, msg, original=False)
            except discord.HTTPException as exc:
                if not _token_gone(exc):
                    raise
        page = _Page(self, None, original=False)
        await page._move_to_channel(content, view)
        return page


class AskRunner:
    """Runs asks for the bot: fairness checks, the engine, streaming, Stop/Regenerate."""

    def __init__(self, app: App) -> None:
        self.app = app
        settings = app.settings
        self.gate = AskGate(settings.per_user_limit, settings.user_cooldown_s)
        self.edit_interval_s = settings.edit_interval_s
        self.interaction_ttl_s: float = INTERACTION_TTL_S - 30
        self.active: dict[int, ActiveReply] = {}
        self.accepting = True
        self.on_finish: list[
            Callable[[_ReplySession, GenerationResult], Awaitable[None] | None]
        ] = []

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
        """Validate, queue, acknowledge, stream. Errors before the ack raise to the handler."""
        app = self.app
        if not self.accepting or app.engine.closing:
            raise UserFacingError("I'm restarting, try again in a moment.")
        prompt = prompt.strip()
        if not prompt:
            raise UserFacingError("Ask something: the prompt was empty.")
        user_id = interaction.user.id
        # Take the user's slot before the first await: checked here but taken later,
        # two simultaneous asks by one person both passed the check, and the loser's
        # refusal came after its ack, leaving a reply that never finished.
        with contextlib.ExitStack() as slot:
            slot.enter_context(self.gate.hold(user_id))
            await self._run_ask(interaction, prompt, overrides, private=private, knobs=knobs,
                                system_prompt=system_prompt, release=slot.close)

    async def _run_ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        overrides: dict[str, Any],
        *,
        private: bool,
        knobs: Knobs | None,
        system_prompt: str | None,
        release: Callable[[], object] = lambda: None,
    ) -> None:
        """`ask` once the user's slot is held: queue, acknowledge, stream; `release` frees it."""
        app = self.app
        user_id = interaction.user.id
        request, dropped = await self.build_request(
            interaction, prompt, overrides, knobs=knobs, system_prompt=system_prompt,
            private=private,
        )
        gen = app.engine.submit(request)  # QueueFull / PromptTooLong raise here, before the ack
        ask_id = interaction.id
        try:
            ack = await interaction.response.defer(thinking=True, ephemeral=private)
        except BaseException:
            gen.cancel()
            raise
        with contextlib.suppress(Exception):
            await app.ask_log.save(ask_id, AskRecord(
                prompt=prompt,
                knobs=request.knobs.model_dump(mode="json"),
                system_prompt=request.system_prompt,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=user_id,
                private=private,
            ))
        active = ActiveReply(gen=gen, user_id=user_id, task=asyncio.current_task(),
                             channel_id=interaction.channel_id, private=private)
        self.active[ask_id] = active
        session = _ReplySession(
            runner=self, interaction=interaction, gen=gen, ask_id=ask_id,
            header=quote_prompt(prompt), private=private, release=release,
            dropped_turns=dropped, original_id=ack.message_id if ack is not None else None,
        )
        try:
            result = await session.run()
            for finish_hook in self.on_finish:
                maybe = finish_hook(session, result)
                if maybe is not None:
                    await maybe
        except UserFacingError as exc:
            log.info("reply %s ended early: %s", ask_id, exc.message)
        except discord.HTTPException as exc:
            log.exception("reply %s could not be delivered", ask_id)
            await self._say_undelivered(interaction, private, exc)
        finally:
            self.active.pop(ask_id, None)

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
        """The request for an ask and how many earlier turns it leaves out (none here).

        A seam: the conversation runner overrides it to add the history.
        """
        if knobs is None:
            request = await resolve_request(self.app, location_of(interaction), prompt, overrides)
        else:
            request = make_request(prompt, base=knobs, system_prompt=system_prompt)
        return request, 0

    async def final_view(
        self, session: _ReplySession, result: GenerationResult, view: discord.ui.View | None
    ) -> discord.ui.View | None:
        """The finished reply's buttons, just before they appear (a seam: the conversation
        runner stores the turns here, so a Reply pressed at once finds them)."""
        return view

    async def _say_undelivered(
        self, interaction: discord.Interaction, private: bool, exc: discord.HTTPException
    ) -> None:
        """Discord kept refusing this reply's edits even after discord.py's retries.

        Without a word the reply would sit at "writing…" for ever; one new message
        (a follow-up, else a channel message) says it ended. Best effort: if
        Discord refuses that too, the log line above is all there is.
        """
        text = (f"⚠️ Discord kept failing ({exc.status}) while I was updating this reply, "
                "so it may be incomplete. Please ask again.")
        try:
            await interaction.followup.send(text, ephemeral=private, allowed_mentions=NO_MENTIONS)
            return
        except discord.HTTPException:
            if private:
                return
        channel = interaction.channel
        if channel is not None and hasattr(channel, "send"):
            with contextlib.suppress(discord.HTTPException):
                await channel.send(text, allowed_mentions=NO_MENTIONS)

    async def stop(self, interaction: discord.Interaction, ask_id: int, owner_id: int) -> None:
        """The Stop button: the asker, or a member with Manage Messages where the reply is.

        Checked against the running reply itself, never against the user id in the
        button's custom id (`owner_id`, kept for old buttons' parsing only): a
        custom id is text a client sends back, and proves nothing.
        """
        active = self.active.get(ask_id)
        if active is None:
            raise UserFacingError("This reply has already finished.")
        owner = interaction.user.id == active.user_id
        moderator = (
            not active.private
            and interaction.guild_id is not None
            and interaction.channel_id == active.channel_id
            and interaction.permissions.manage_messages
        )
        if not (owner or moderator):
            raise UserFacingError("Only the person who asked (or a moderator) can stop this reply.")
        active.gen.cancel()
        await interaction.response.defer()

    def check_regenerate(self, interaction: discord.Interaction, record: AskRecord) -> None:
        """Whether the presser may ask this again here, judged from the stored ask.

        The same server and channel as the original ask, so a reply can't be
        re-posted elsewhere (a private ask from #help into #general); a private
        ask, or one in DMs, only by its author; and the new reply is as private
        as the first one (`regenerate` passes `record.private` on).
        """
        if record.guild_id != interaction.guild_id:
            raise UserFacingError("This button belongs to another server.")
        if record.channel_id is not None and record.channel_id != interaction.channel_id:
            raise UserFacingError("This button belongs to another channel.")
        if (record.private or record.guild_id is None) and interaction.user.id != record.user_id:
            raise UserFacingError("Only the person who asked can regenerate this reply.")

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Regenerate button: same prompt and settings, a new sample, a new reply."""
        record = await self.app.ask_log.load(ask_id)
        if record is None:
            raise UserFacingError(
                "I no longer have this prompt, so I can't regenerate it. Ask again!"
            )
        self.check_regenerate(interaction, record)
        # The persona and the max_new_tokens cap are those in force now: an admin
        # who changed them since the first ask must not be overridden by a button.
        request = await resolve_again(self.app, location_of(interaction), record.prompt,
                                      Knobs.model_validate(record.knobs))
        await self.ask(interaction, record.prompt, {}, knobs=request.knobs,
                       system_prompt=request.system_prompt, private=record.private)

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking asks; let replies finish for `grace_s`, then interrupt the rest."""
        self.accepting = False
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for active in list(self.active.values()):
            active.interrupted = True
            active.gen.cancel()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            # Each interrupted reply gets its final "interrupted" edit before we close.
            await asyncio.wait(tasks, timeout=10)
