"""Inspect: a finished reply's own tokens, in one view for the presser.

Word odds first (the reply coloured and marked by how expected each token was),
a select to jump to any token (25 at a time, paged), the alternatives at that
token with their raw and final probabilities (those the knobs removed marked),
Back, and a select to write on from there with another token: the runner's
`write_on` entry turns that into a new version of the reply.

The tokens are the ids the model wrote, kept with the ask (`AskRecord.reply_ids`),
not the text encoded again nor a new generation; a reply stored before they were
kept is read from its text, and the view says so. A view's state lives here,
keyed by the Inspect press's id (its controls carry only that), for 15 minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot import wording
from bot.discord.buttons import (
    InspectBackButton,
    InspectPageButton,
    InspectTokenSelect,
    WriteOnSelect,
)
from bot.discord.common import NO_MENTIONS
from bot.discord.lab_state import AskedReply, Expiring, LabTurn
from bot.discord.pages import MESSAGE_LIMIT
from bot.errors import UserFacingError
from bot.lab.confidence import Confidence, legend, render_ansi, score_reply, surprising_lines
from bot.lab.probs import STAGE_WORDS, ProbsStep, format_table, probs_step
from bot.limits import Slot

if TYPE_CHECKING:
    from bot.app import App
    from bot.discord.runner import AskRunner

#: How a view finds a finished reply's request and text (the lab's `request_of_ask`).
AskedOf = Callable[[discord.Interaction, int], Awaitable[AskedReply]]

#: A select holds at most 25 options: the reply's tokens are offered 25 at a time.
OPTIONS = 25


@dataclass
class Inspection:
    """One Inspect view: whose, which reply (its tokens), and what it shows now."""

    id: int
    user_id: int
    ask_id: int
    turn: LabTurn
    reply: tuple[int, ...]
    labels: tuple[str, ...]
    """Each token as the select names it: its place, its text, its odds."""
    overview: str
    """The Word odds text, shown first and again on Back."""
    message: discord.Message | None
    """The reply's own message, where a version written on is shown (None: ephemeral)."""
    window: int = 0
    at: int | None = None
    write: tuple[discord.SelectOption, ...] = ()
    """The alternatives the write-on select offers at `at`: a choice must be one."""
    content: str = ""

    @property
    def offered(self) -> tuple[int, ...]:
        return tuple(int(o.value) for o in self.write)


def _pct(p: float) -> str:
    return f"{p * 100:.1f}%" if p >= 0.0005 else "<0.1%"


def overview_text(conf: Confidence, model: str, *, from_text: bool) -> str:
    """Word odds: the coloured reply, the note on what it measures, the surprises."""
    block, shown = render_ansi(conf)
    count = len(conf.tokens)
    more = wording.inspect_first_tokens(shown, count) if shown < count else ""
    head = (f"**{wording.WORD_ODDS}**{more} · model `{model}` · "
            f"mean {conf.mean_prob * 100:.0f}% · {legend()}\n{wording.WORD_ODDS_NOTE}\n")
    if from_text:
        head += f"-# {wording.INSPECT_OLD_SPELLING}\n"
    text = f"{head}```ansi\n{block}\n```"
    lines = "\n".join(f"• {line}" for line in surprising_lines(conf))
    rest = f"{wording.INSPECT_SURPRISING}\n{lines}\n{wording.INSPECT_HOW}"
    room = MESSAGE_LIMIT - len(text) - 1
    if len(rest) > room:
        rest = wording.INSPECT_HOW if len(wording.INSPECT_HOW) <= room else ""
    return f"{text}\n{rest}" if rest else text


def token_text(insp: Inspection, step: ProbsStep, so_far: str) -> str:
    """A token's view: the reply before it, how the model rated the token taken, and
    every alternative with its raw and final probability (removed ones marked)."""
    at = step.step
    taken = insp.reply[at]
    by_raw = sorted(step.candidates, key=lambda c: -c.raw)
    mine = next(c for c in by_raw if c.id == taken)
    head = (f"**{wording.INSPECT}** · model `{insp.turn.model}`\n"
            + wording.inspect_token(at + 1, len(insp.reply), mine.text, by_raw.index(mine) + 1,
                                    mine.raw, mine.final) + "\n")
    shown = so_far.replace("```", "`\u200b``")[-300:]
    if shown:
        head += wording.inspect_so_far(shown) + "\n"
    budget = insp.turn.request.knobs.max_new_tokens
    tail = (f"\n{wording.WRITE_ON_HOW}" if insp.offered
            else f"\n{wording.write_on_past_budget(budget)}" if at + 1 >= budget else "")
    room = MESSAGE_LIMIT - len(head) - len(tail) - 8
    table = format_table(step).replace("```", "`\u200b``")
    if len(table) > room:
        table = table[: room - 1] + "…"
    return f"{head}```\n{table}\n```{tail}"


def write_on_options(insp: Inspection, step: ProbsStep) -> list[discord.SelectOption]:
    """The alternatives to write on with: every candidate but the reply's own token and
    the tokens that would end it; those the knobs removed say so. None from the reply's
    last allowed token on (a continued reply runs past it): nothing would be left to write."""
    if step.step + 1 >= insp.turn.request.knobs.max_new_tokens:
        return []
    taken = insp.reply[step.step]
    out: list[discord.SelectOption] = []
    for c in step.candidates:
        if c.id == taken or c.id in step.end_ids or c.special:
            continue
        removed = f" · {wording.removed_by(STAGE_WORDS[c.removed_by])}" if c.removed_by else ""
        out.append(discord.SelectOption(
            label=f"{c.text} · raw {_pct(c.raw)} · final {_pct(c.final)}{removed}"[:100],
            value=str(c.id)))
    return out[:OPTIONS]


def inspect_view(insp: Inspection) -> discord.ui.View:
    """The token select (one window of 25), its pages, and at a token Back and write on."""
    count = len(insp.reply)
    start = insp.window
    end = min(count, start + OPTIONS)
    view = discord.ui.View(timeout=None)
    options = [discord.SelectOption(label=insp.labels[n][:100], value=str(n),
                                    default=n == insp.at) for n in range(start, end)]
    view.add_item(InspectTokenSelect(
        insp.id, options=options,
        placeholder=wording.inspect_window(start + 1, end, count) if count > OPTIONS else None))
    if count > OPTIONS:
        view.add_item(InspectPageButton(insp.id, word="prev", label="◀", disabled=start <= 0))
        view.add_item(InspectPageButton(insp.id, word="next", label="▶", disabled=end >= count))
    if insp.at is not None:
        view.add_item(InspectBackButton(insp.id))
        if insp.write:
            view.add_item(WriteOnSelect(insp.id, options=insp.write))
    view.stop()
    return view


class Inspector:
    """Inspect views for the lab: opening one, moving in it, writing on from it."""

    def __init__(self, app: App, runner: AskRunner, asked: AskedOf,
                 views: Expiring[Inspection]) -> None:
        self.app = app
        self.runner = runner
        self.gate = runner.gate
        self.asked = asked
        self.views = views

    async def open(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Inspect button: Word odds on the reply's own tokens (the presser only)."""
        # Acknowledged before the store is read (it can queue; Discord allows 3 s): a
        # refusal found there takes the "thinking" message back and is said privately.
        surface = self.runner.interaction_surface(interaction, private=True)
        with self.gate.hold(interaction.user.id) as slot:
            await surface.defer()
            try:
                insp = await self._open(interaction, ask_id, slot)
            except Exception as exc:
                if not await surface.withdraw(exc):
                    raise
                return
        await interaction.followup.send(insp.content, view=inspect_view(insp), ephemeral=True,
                                        allowed_mentions=NO_MENTIONS)

    async def _open(self, interaction: discord.Interaction, ask_id: int,
                    slot: Slot) -> Inspection:
        """The view of the reply to `ask_id`, kept for its presses."""
        await slot.share()
        of = await self.asked(interaction, ask_id)
        if not of.ids and not of.text.strip():
            raise UserFacingError(wording.WORD_ODDS_EMPTY)
        engine = await self.app.models.engine(of.turn.model)
        conf = await score_reply(engine, of.turn.request, of.text, ids=of.ids or None)
        reply = tuple(t.id for t in conf.tokens)
        labels = tuple(f"#{n} {t.label or '∅'} · {_pct(t.prob)}"
                       for n, t in enumerate(conf.tokens, 1))
        pressed = interaction.message
        insp = Inspection(
            id=interaction.id, user_id=interaction.user.id, ask_id=ask_id, turn=of.turn,
            reply=reply, labels=labels,
            overview=overview_text(conf, of.turn.model, from_text=not of.ids),
            message=pressed if pressed is not None and not pressed.flags.ephemeral else None,
        )
        insp.content = insp.overview
        self.views.put(str(insp.id), insp)
        return insp

    def own(self, interaction: discord.Interaction, view_id: int) -> Inspection:
        insp = self.views.get(str(view_id))
        if insp is None:
            raise UserFacingError(wording.INSPECT_GONE)
        if interaction.user.id != insp.user_id:
            raise UserFacingError(wording.INSPECT_NOT_YOURS)
        return insp

    async def token(self, interaction: discord.Interaction, view_id: int, at: int) -> None:
        """The select: token `at` (0-based) and its alternatives, from one forward pass."""
        insp = self.own(interaction, view_id)
        if not 0 <= at < len(insp.reply):
            raise UserFacingError(wording.INSPECT_NOT_IN_REPLY)
        with await self.gate.take(interaction.user.id):
            await interaction.response.defer()
            engine = await self.app.models.engine(insp.turn.model)
            before = insp.reply[:at]
            step = await probs_step(engine, insp.turn.request, generated=before,
                                    include=insp.reply[at:at + 1])
            so_far = engine.bundle.tokenizer.decode(list(before)) if before else ""
            insp.at, insp.window = at, at - at % OPTIONS
            insp.write = tuple(write_on_options(insp, step))
            insp.content = token_text(insp, step, so_far)
            view = inspect_view(insp)
        # The slot is free before the edit: a press made on seeing it is never refused.
        await interaction.edit_original_response(content=insp.content, view=view,
                                                 allowed_mentions=NO_MENTIONS)

    async def page(self, interaction: discord.Interaction, view_id: int, delta: int) -> None:
        """◀ / ▶: the select's previous or next 25 tokens; what is shown stays."""
        insp = self.own(interaction, view_id)
        last = max(0, len(insp.reply) - 1)
        insp.window = max(0, min(last - last % OPTIONS, insp.window + delta * OPTIONS))
        await interaction.response.edit_message(view=inspect_view(insp),
                                                allowed_mentions=NO_MENTIONS)

    async def back(self, interaction: discord.Interaction, view_id: int) -> None:
        """Back: from a token to the whole reply's Word odds."""
        insp = self.own(interaction, view_id)
        insp.at, insp.write, insp.content = None, (), insp.overview
        await interaction.response.edit_message(content=insp.content, view=inspect_view(insp),
                                                allowed_mentions=NO_MENTIONS)

    async def write_on(self, interaction: discord.Interaction, view_id: int,
                       token_id: int) -> None:
        """Write on from the token shown with `token_id`: a new version, through the runner.

        Whoever may not regenerate the reply is refused as Regenerate refuses them,
        before anything else is said about the view.
        """
        insp = self.views.get(str(view_id))
        if insp is None:
            raise UserFacingError(wording.INSPECT_GONE)
        runner = self.runner
        # Acknowledged (a deferred update: the version streams in this view) before the
        # store is read, as Regenerate is; a refusal then comes as a private follow-up.
        with runner.early_ack(interaction) as held:
            await interaction.response.defer()
            record = await self.app.chat.asked(insp.ask_id)
            if record is None:
                raise UserFacingError(wording.PROMPT_GONE)
            runner.check_regenerate(interaction, record)
            insp = self.own(interaction, view_id)
            if insp.at is None or token_id not in insp.offered:
                raise UserFacingError(wording.INSPECT_NOT_OFFERED)
            written = (*insp.reply[:insp.at], token_id)
            await runner.write_on(interaction, insp.ask_id, written, insp.message, held=held)

