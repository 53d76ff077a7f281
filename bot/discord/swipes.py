"""Swipes (◀ 2/3 ▶) and Continue on Discord (issue 22), beside the runner.

Both are component interactions, so each press brings a fresh token: browsing
is the press's own ``update_message`` response (it works long after the
15-minute window of the ask that made the reply), and Continue defers the
press and edits the pressed message, with follow-ups for more pages. The
rules (who may browse or continue a private reply, the caps) are
`bot.store.swipes.SwipeStore`'s; the request is `bot.chat.service.Chat.continue_`'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

import discord

from bot.chat.request import continue_footer
from bot.chat.turns import PreparedTurn
from bot.discord.buttons import reply_view
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.pages import MESSAGE_LIMIT, quote_prompt
from bot.discord.reply import (
    InteractionSurface,
    Page,
    ReplyWriter,
    Surface,
    _InteractionPage,
)
from bot.engine import Generation, GenerationResult
from bot.errors import UserFacingError
from bot.store.swipes import MAX_CONTINUATIONS, Answer, AnswerGone, PrivateAnswer, Swipes

if TYPE_CHECKING:
    from bot.app import App
    from bot.limits import AskGate


class AskRunner(Protocol):
    """What these controls use of `bot.discord.runner.AskRunner` (no import cycle)."""

    app: App
    gate: AskGate
    accepting: bool
    interaction_ttl_s: float
    edit_interval_s: float

    def tracking(self, interaction: discord.Interaction, turn: PreparedTurn, gen: Generation,
                 surface: Surface) -> contextlib.AbstractContextManager[None]:
        """Registers a Continue as a running reply (Stop, shutdown) while it streams."""

log = logging.getLogger(__name__)


def answer_view(answer: Answer, swipes: Swipes | None) -> discord.ui.View:
    """The finished buttons for the version on screen: its own ask's Regenerate/Reply."""
    ask_id = answer.turn.ask_id or 0
    versions = (swipes.shown, len(swipes.answers)) if swipes is not None else None
    return reply_view(ask_id, reply=ask_id > 0, answer_id=answer.turn.id, versions=versions,
                      can_continue=answer.can_continue, reasoning=bool(answer.reasoning))


async def show_reasoning(runner: AskRunner, interaction: discord.Interaction,
                         answer_id: int) -> None:
    """The Reasoning button: the thoughts, privately; a file when longer than a message."""
    found = await runner.app.chat.answer(answer_id)
    if found is None:
        raise AnswerGone()
    if not found.turn.visible_to(interaction.user.id):
        raise PrivateAnswer()
    text = found.reasoning or "*(no reasoning was kept for this reply)*"
    if len(text) <= MESSAGE_LIMIT:
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
        return
    data = io.BytesIO(text.encode("utf-8"))
    await interaction.response.send_message(
        "The reasoning is long, so it is attached.", ephemeral=True,
        file=discord.File(data, filename="reasoning.txt"), allowed_mentions=NO_MENTIONS,
    )


def swipe_content(answer: Answer, swipes: Swipes) -> str:
    """One message for a version: the question's quote, its text (cut to fit) and which
    version it is, so every version reads like the reply it replaces."""
    head = quote_prompt(swipes.question.text) + "\n" if swipes.question.text.strip() else ""
    tail = f"-# version {swipes.label()}"
    room = MESSAGE_LIMIT - len(head) - len(tail) - 2
    text = answer.turn.text.rstrip()
    if len(text) > room:
        text = text[: room - 1] + "…"
    return f"{head}{text}\n{tail}" if text else f"{head}{tail}"


async def swipe(runner: AskRunner, interaction: discord.Interaction, answer_id: int,
                delta: int) -> None:
    """◀ / ▶: show another version in place; the conversation continues from it."""
    swipes = await runner.app.chat.step(answer_id, delta, user_id=interaction.user.id)
    shown = swipes.current
    await interaction.response.edit_message(
        content=swipe_content(shown, swipes), view=answer_view(shown, swipes),
        allowed_mentions=NO_MENTIONS,
    )


class _ContinueSurface(InteractionSurface):
    """The pressed message is the first page (its token is the press's, fresh)."""

    async def acknowledge(self, stop: discord.ui.View) -> Page:
        await self.interaction.response.defer()  # deferred update: no new message
        message = self.interaction.message
        self.original_id = message.id if message is not None else None
        first = _InteractionPage(self, None, original=True)
        first.view = stop
        self.first = first
        return first


def _shown_text(message: discord.Message | None) -> str:
    """What the pressed page says above its footer (the text Continue carries on)."""
    if message is None:
        return ""
    lines = message.content.split("\n")
    while lines and lines[-1].startswith("-# "):
        lines.pop()
    return "\n".join(lines)


async def continue_reply(runner: AskRunner, interaction: discord.Interaction,
                         answer_id: int) -> None:
    """Continue: one more budget for the same answer, appended in the same message."""
    app = runner.app
    user_id = interaction.user.id
    if not runner.accepting or app.models.closing:
        raise UserFacingError("I'm restarting, try again in a moment.")
    with runner.gate.hold(user_id):
        answer, turn = await app.chat.continue_(answer_id, location=location_of(interaction),
                                                user_id=user_id)
        gen = turn.engine.submit(turn.request, turn.prepared)
        surface = _ContinueSurface(interaction, private=answer.turn.private, header="",
                                   ttl_s=lambda: runner.interaction_ttl_s)
        stop = reply_view(interaction.id, stop_for=user_id)
        try:
            first = await surface.acknowledge(stop)
        except BaseException:
            gen.cancel()
            raise
        writer = ReplyWriter(surface, gen, first, stop, edit_interval_s=runner.edit_interval_s)
        writer.text = _shown_text(interaction.message)
        before = len(writer.text)
        with runner.tracking(interaction, turn, gen, surface):
            make_footer = partial(continue_footer, earlier_tokens=answer.tokens,
                                  continuations=answer.continuations + 1,
                                  can_continue=answer.continuations + 1 < MAX_CONTINUATIONS,
                                  cap=turn.cap)
            await _finish_continue(runner, writer, surface, answer_id, user_id, before,
                                   make_footer)


async def _finish_continue(runner: AskRunner, writer: ReplyWriter, surface: InteractionSurface,
                           answer_id: int, user_id: int, before: int,
                           make_footer: Callable[[GenerationResult], str]) -> None:
    """Stream the rest, then store it on the same answer and show the answer's buttons."""
    app = runner.app
    try:
        result = await writer.stream()
        tail = "-# " + make_footer(result)
        if result.error:
            tail = f"⚠️ {result.error}\n{tail}"
        await writer.lay_out(tail)
        more = writer.text[before:]
        view = None
        if not result.error:
            try:
                swipes = await app.chat.extend(answer_id, more, result, user_id=user_id,
                                               message_ids=await writer.message_ids())
                extended = next(a for a in swipes.answers if a.turn.id == answer_id)
                view = answer_view(extended, swipes)
            except UserFacingError as exc:
                await surface.note("⚠️ " + exc.message)
        await writer.show_final(view)
    except BaseException:
        await writer.abort()
        raise
