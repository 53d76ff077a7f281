"""Versions (◀ 2/3 ▶), Reasoning and what Continue brings to the runner's lifecycle.

Browsing and Reasoning answer with the press's own token (a deferred update then
the pressed message edited, or a private "thinking" message then its text), so
they work long after the ask's 15-minute token. Every press here is acknowledged
before the store is read (reads queue under a flood, and Discord allows 3 s): the
binding check and the store's refusals come after, said privately in a follow-up
(`bot.discord.errors.send_error`), a "thinking" message taken back first. Continue
is an entry of `bot.discord.runner.AskRunner`: this module gives it its surface
(`PressedSurface`: the pressed message is the first page, acknowledged with a
deferred update),
its footer (the whole reply's count) and its record (`Chat.extend` on the same
answer). The rules (who may browse or continue a private reply, the caps) are
`bot.store.swipes.SwipeStore`'s; the request is `bot.chat.service.Chat.continue_`'s.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot import wording
from bot.chat.request import Cap, continue_footer
from bot.discord.buttons import greeting_view, reply_view
from bot.discord.common import NO_MENTIONS
from bot.discord.pages import MESSAGE_LIMIT, quote_prompt
from bot.discord.reply import InteractionSurface, Page, _InteractionPage
from bot.engine import GenerationResult
from bot.store.swipes import MAX_CONTINUATIONS, Answer, AnswerGone, PrivateAnswer, Swipes

if TYPE_CHECKING:
    from bot.app import App


def answer_view(answer: Answer, swipes: Swipes | None) -> discord.ui.View:
    """The finished buttons for the version on screen: its own ask's Regenerate/Reply
    (a greeting's: Reply alone)."""
    ask_id = answer.turn.ask_id or 0
    versions = (swipes.shown, len(swipes.answers)) if swipes is not None else None
    if swipes is not None and swipes.question.opening:
        return greeting_view(ask_id, answer.turn.id, versions)
    return reply_view(ask_id, reply=ask_id > 0, answer_id=answer.turn.id, versions=versions,
                      can_continue=answer.can_continue, reasoning=bool(answer.reasoning))


#: A press's checks against the store (`bot.discord.buttons.check_binding`), run once
#: it is acknowledged.
Check = Callable[[], Awaitable[None]]


async def show_reasoning(app: App, interaction: discord.Interaction, answer_id: int,
                         check: Check) -> None:
    """The Reasoning button: the thoughts, privately; a file when longer than a message."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        await check()
        found = await app.chat.answer(answer_id)
        if found is None:
            raise AnswerGone()
        if not found.turn.visible_to(interaction.user.id):
            raise PrivateAnswer()
    except Exception:
        # The refusal follows privately (the press's error path): no "thinking" left behind.
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
        raise
    text = found.reasoning or wording.NO_REASONING
    if len(text) <= MESSAGE_LIMIT:
        await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
        return
    data = io.BytesIO(text.encode("utf-8"))
    await interaction.edit_original_response(
        content=wording.REASONING_ATTACHED,
        attachments=[discord.File(data, filename="reasoning.txt")], allowed_mentions=NO_MENTIONS,
    )


def swipe_content(answer: Answer, swipes: Swipes) -> str:
    """One message for a version: the question's quote, its text (cut to fit) and which
    version it is, so every version reads like the reply it replaces."""
    return version_content(swipes.question.text, answer.turn.text, swipes.label())


def version_content(question: str, text: str, label: str) -> str:
    """`swipe_content` from its parts: no quote for a greeting, which nobody asked."""
    head = quote_prompt(question) + "\n" if question.strip() else ""
    tail = wording.version_line(label)
    room = MESSAGE_LIMIT - len(head) - len(tail) - 2
    text = text.rstrip()
    if len(text) > room:
        text = text[: room - 1] + "…"
    return f"{head}{text}\n{tail}" if text else f"{head}{tail}"


async def swipe(app: App, interaction: discord.Interaction, answer_id: int, delta: int,
                check: Check) -> None:
    """◀ / ▶: show another version in place; the conversation continues from it.

    A deferred update first: the pressed message stays as it is until the edit, or
    for good if the store refuses.
    """
    await interaction.response.defer()
    await check()
    swipes = await app.chat.step(answer_id, delta, user_id=interaction.user.id)
    shown = swipes.current
    await interaction.edit_original_response(
        content=swipe_content(shown, swipes), view=answer_view(shown, swipes),
        allowed_mentions=NO_MENTIONS,
    )


# --- Continue ---------------------------------------------------------------------------


def shown_text(message: discord.Message | None) -> str:
    """What the pressed page says above its footer (the text Continue carries on)."""
    if message is None:
        return ""
    lines = message.content.split("\n")
    while lines and lines[-1].startswith("-# "):
        lines.pop()
    return "\n".join(lines)


@dataclass
class Continuing:
    """What a Continue entry carries on: the answer (as checked when it starts) and the
    text on the pressed page."""

    answer_id: int
    shown: str
    answer: Answer | None = None

    def footer(self, result: GenerationResult, cap: Cap | None) -> str:
        """The whole reply's count ("60 tokens, continued once") and advice that fits."""
        before = self.answer
        earlier = before.tokens if before is not None else 0
        done = (before.continuations if before is not None else 0) + 1
        return continue_footer(result, earlier_tokens=earlier, continuations=done,
                               can_continue=done < MAX_CONTINUATIONS, cap=cap)


class PressedSurface(InteractionSurface):
    """The pressed message is the first page (its token is the press's, fresh): Continue
    writes on under the text it shows (`shown`), Inspect's write on in its own view."""

    def __init__(self, interaction: discord.Interaction, *, shown: str = "", header: str = "",
                 private: bool, ttl_s: Callable[[], float]) -> None:
        super().__init__(interaction, private=private, header=header, ttl_s=ttl_s)
        self.shown = shown

    async def defer(self) -> None:
        """A deferred update: the pressed message stays the page, no "thinking" message."""
        if not self.interaction.response.is_done():  # Continue acknowledged on its press
            await self.interaction.response.defer()

    async def acknowledge(self, stop: discord.ui.View) -> Page:
        await self.defer()
        message = self.interaction.message
        self.original_id = message.id if message is not None else None
        first = _InteractionPage(self, None, original=True)
        first.view = stop
        self.first = first
        return first

    def status_page(self, status: str) -> str:
        """The text so far stays on screen while a model loads."""
        if not self.shown:
            return super().status_page(status)
        room = MESSAGE_LIMIT - len(status) - 1
        text = self.shown if len(self.shown) <= room else self.shown[: max(0, room - 1)] + "…"
        return f"{text}\n{status}"


async def record_continuation(
    app: App, continuing: Continuing, *, user_id: int, more: str, result: GenerationResult,
    message_ids: tuple[int, ...],
) -> discord.ui.View:
    """The Continue's text on the same answer; the answer's buttons (raises when refused)."""
    swipes = await app.chat.extend(continuing.answer_id, more, result, user_id=user_id,
                                   message_ids=message_ids)
    extended = next(a for a in swipes.answers if a.turn.id == continuing.answer_id)
    return answer_view(extended, swipes)
