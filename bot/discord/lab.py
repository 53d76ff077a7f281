"""The knobs lab on Discord: `/compare` in one embed, `/probs` with Step buttons, and
Inspect under finished replies (bot/discord/inspect.py), each on the turn's model.

Every view names the model it ran on, taken from the host for the scope or
conversation, never the default engine. The numbers come from `bot.lab` (no
Discord there); this module shapes them for Discord's limits and keeps the little
state a walk, a comparison or an Inspect view needs:

- A comparison streams all its variants into ONE message, one embed field per
  variant. It is a second streaming surface beside `ReplyWriter` because its unit
  is an embed of several growing texts, not pages of one text; it still paces
  through the same `CoalescingEditor` (bot/discord/pages.py), whose "content" here
  is the serialised embed, so coalescing and rate pacing are the reply's own.
- Walks (a /probs view stepped token by token) are kept server-side, keyed by a
  short random id (Discord's custom ids hold 100 characters: an ask id plus the
  generated ids would not fit), in a bounded LRU (`WALKS`, `WALK_TTL_S`).
- Custom ids carry only ids; each press is checked against that stored state
  (author, range), never trusted.
- Every send and edit passes `NO_MENTIONS`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import discord

from bot import wording
from bot.chat.request import FINISH_WORDS
from bot.chat.turns import TurnAsk
from bot.discord.buttons import (
    TRY_KNOBS,
    CompareRegenerateButton,
    KnobHelpButton,
    StepButton,
    TryKnobButton,
    WalkBackButton,
)
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.inspect import Inspection, Inspector
from bot.discord.lab_state import AskedReply, Expiring, LabTurn, Walk
from bot.discord.pages import MESSAGE_LIMIT, CoalescingEditor, quote_prompt
from bot.discord.reply import InteractionSurface, Page
from bot.discord.runner import Run
from bot.engine import Engine, Finished, GenerationRequest, GenerationResult, TextDelta
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.lab.chart import MAX_PNG_BYTES, render_png
from bot.lab.compare import Comparison, Variant, VariantResult, knob_variants, start_compare
from bot.lab.help import help_lines
from bot.lab.probs import ProbsStep, format_knobs, format_table, probs_step

if TYPE_CHECKING:
    from bot.app import App
    from bot.discord.runner import AskRunner
    from bot.hosting.host import OnWait

log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_LIMIT = 1024
EMBED_LIMIT = 6000
FIELD_NAME_LIMIT = 256
WALKS = 500
WALK_TTL_S = 900.0
COMPARES = 200
STEP_BUTTONS = 3
"""Alternatives offered as buttons, beside Back."""
SEED_NOTE = wording.COMPARE_SEED_NOTE
"""Said only in the attached file (and the CLI): the embed stays about the texts."""



# --------------------------------------------------------------------------- shaping


def clean_cut(text: str, limit: int) -> tuple[str, bool]:
    """`text` within `limit` characters, cut at a line or word boundary with "…"."""
    if len(text) <= limit:
        return text, False
    room = limit - 1
    window = text[:room]
    for sep in ("\n\n", "\n", " "):
        idx = window.rfind(sep)
        if idx > room // 4:
            window = window[:idx]
            break
    return window.rstrip() + "…", True


def _close_fences(text: str) -> str:
    """An odd number of ``` would swallow the rest of the field: close the last one."""
    return text + "\n```" if text.count("```") % 2 else text


@dataclass
class VariantView:
    label: str
    text: str = ""
    state: str = "queued"  # queued, writing, or the finish words with the token count
    tokens: int = 0


def compare_embed(prompt: str, seed: int, views: list[VariantView], *,
                  note: str = "", model: str = "") -> tuple[dict[str, Any], bool]:
    """The comparison as one embed (a dict) within Discord's limits; True when a text was cut."""
    named = f"\nmodel `{model}`" if model else ""
    description = (quote_prompt(prompt) + named)[:1500]
    if note:
        description = (description + "\n" + note)[:2000]
    fields: list[dict[str, Any]] = []
    cut_any = False
    used = len(description) + len("Compare")
    per_field = min(FIELD_LIMIT, (EMBED_LIMIT - used - 100) // max(1, len(views)) - 60)
    for v in views:
        name = v.label[: FIELD_NAME_LIMIT - 20] or "variant"
        tail = f"\n`{v.state}`"
        body = v.text.strip()
        shown, cut = clean_cut(body, per_field - len(tail) - 4)
        shown = _close_fences(shown)
        cut_any = cut_any or cut
        value = (shown or "…") + tail
        fields.append({"name": name, "value": value[:FIELD_LIMIT], "inline": False})
    return {"title": "Compare", "description": description, "fields": fields}, cut_any


def full_texts(prompt: str, seed: int, results: list[VariantResult]) -> str:
    """Every variant's whole text, for the attachment when the embed had to cut."""
    parts = [f"# Compare\n\nPrompt: {prompt}\n\nSeed: {seed}. {SEED_NOTE}\n"]
    for r in results:
        parts.append(f"## {r.label}\n\n{r.text}\n\n({r.result.new_tokens} tokens, "
                     f"{FINISH_WORDS[r.result.finish_reason]})\n")
    return "\n".join(parts)


def probs_content(step: ProbsStep, header: str, reply_so_far: str, model: str = "") -> str:
    """The text beside the chart: what was asked, the step, the table (the accessible view)."""
    so_far = reply_so_far.replace("```", "`\u200b``")
    named = f" · model `{model}`" if model else ""
    top = wording.probs_title(named, step.step + 1, format_knobs(step.knobs), step.seed,
                              header)
    mid = wording.inspect_so_far(so_far[-300:] or "∅") + "\n" if step.generated else ""
    room = MESSAGE_LIMIT - len(top) - len(mid) - 8
    table, _ = clean_cut(format_table(step).replace("```", "`\u200b``"), room)
    return f"{top}{mid}```\n{table}\n```"


# --------------------------------------------------------------------------- state


@dataclass
class CompareAsk:
    """What Regenerate needs to run a comparison again: the same prompt and variants."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    prompt: str
    request: GenerationRequest
    variants: list[Variant]
    private: bool
    model: str
    comparison: Comparison | None = None


@dataclass(eq=False, kw_only=True)
class CompareRun(Run):
    """/compare (and Try, and its Regenerate) as an entry of the runner's lifecycle."""

    lab: LabRunner
    ask: CompareAsk
    interaction: discord.Interaction
    seed: int | None = None
    comparison: Comparison | None = None

    async def start(self, runner: AskRunner, on_wait: OnWait) -> None:
        engine = await self.lab.app.models.engine(self.ask.model, on_wait)
        # All variants or none (QueueFull, PromptTooLong raise here, before the ack).
        self.comparison = start_compare(engine, self.ask.request, self.ask.variants,
                                        seed=self.seed)
        self.ask.comparison = self.comparison
        self.lab.compares.put(str(self.id), self.ask)

    async def deliver(self, runner: AskRunner, first: Page, stop: discord.ui.View,
                      release: Callable[[], object]) -> GenerationResult | None:
        assert self.comparison is not None
        try:
            await self.lab.stream_compare(self.interaction, self.id, self.ask, self.comparison,
                                          stop, release=release)
        finally:
            self.comparison.cancel()  # no-op when finished; on a cancelled task, stops all
        return None

    def cancel(self) -> None:
        if self.comparison is not None:
            self.comparison.cancel()

    @property
    def running(self) -> bool:
        return self.comparison is not None


# --------------------------------------------------------------------------- the runner


class LabRunner:
    """The lab's Discord side: compares, walks, and the buttons under replies."""

    def __init__(self, app: App, runner: AskRunner, *,
                 edit_interval_s: float | None = None) -> None:
        self.app = app
        self.runner = runner
        self.gate = runner.gate
        self.edit_interval_s = (app.settings.edit_interval_s if edit_interval_s is None
                                else edit_interval_s)
        self.walks: Expiring[Walk] = Expiring(WALKS, WALK_TTL_S)
        self.compares: Expiring[CompareAsk] = Expiring(COMPARES, WALK_TTL_S)
        self.inspections: Expiring[Inspection] = Expiring(WALKS, WALK_TTL_S)
        self.inspector = Inspector(app, runner, self.request_of_ask, self.inspections)

    # --- Inspect (bot/discord/inspect.py) ------------------------------------------------

    async def inspect(self, interaction: discord.Interaction, ask_id: int) -> None:
        await self.inspector.open(interaction, ask_id)

    async def inspect_token(self, interaction: discord.Interaction, view_id: int,
                            at: int) -> None:
        await self.inspector.token(interaction, view_id, at)

    async def inspect_page(self, interaction: discord.Interaction, view_id: int,
                           delta: int) -> None:
        await self.inspector.page(interaction, view_id, delta)

    async def inspect_back(self, interaction: discord.Interaction, view_id: int) -> None:
        await self.inspector.back(interaction, view_id)

    async def write_on(self, interaction: discord.Interaction, view_id: int,
                       token_id: int) -> None:
        await self.inspector.write_on(interaction, view_id, token_id)

    # --- requests ---------------------------------------------------------------------

    async def fresh_request(self, interaction: discord.Interaction, prompt: str,
                            overrides: dict[str, Any] | None = None) -> LabTurn:
        """A new conversation's request here: persona, knobs, caps and model as /ask has them."""
        user = interaction.user
        turn = await self.app.chat.prepare(TurnAsk(
            location=location_of(interaction), prompt=prompt.strip(), author_id=user.id,
            author_name=getattr(user, "display_name", user.name), explicit=True,
            overrides=dict(overrides or {}),
        ))
        return LabTurn(turn.request, turn.model.name)

    async def request_of_ask(self, interaction: discord.Interaction,
                             ask_id: int) -> AskedReply:
        """The exact request a finished reply was generated from, and the reply.

        Rebuilt through the same core turn code (`Chat.prepare`) from the stored ask
        and its conversation turns (earlier turns and speaker names included), with
        the reply's stored knobs and the persona stored with the ask (not today's).
        Refused for another server or channel, and for anyone but the author of a
        private ask. The history is fitted to the context with today's persona before
        the stored one replaces it: they differ only if the persona changed since, and
        then a reply that filled the context could be refused as too long here.
        """
        app = self.app
        record = await app.chat.asked(ask_id)
        if record is None:
            raise UserFacingError(wording.LAB_PROMPT_GONE)
        if record.guild_id != interaction.guild_id:
            raise UserFacingError(wording.BUTTON_OTHER_SERVER)
        if record.channel_id is not None and record.channel_id != interaction.channel_id:
            raise UserFacingError(wording.BUTTON_OTHER_CHANNEL)
        if (record.private or record.guild_id is None) and interaction.user.id != record.user_id:
            raise UserFacingError(wording.LAB_ONLY_ASKER)
        # A version made by Regenerate or write on has no question of its own: its
        # answer's is the one it was generated from, earlier turns and speaker included.
        question = await app.chat.question_of_ask(ask_id)
        answer = await app.chat.answer_for_ask(ask_id)
        if question is not None and not question.visible_to(interaction.user.id):
            raise UserFacingError(wording.LAB_ONLY_ASKER)
        where = replace(location_of(interaction), user_id=record.user_id)
        if question is not None:
            name = question.author_name
        else:
            # No turns were stored (an empty reply): the speaker's name as Discord has it now.
            member = (interaction.guild.get_member(record.user_id)
                      if interaction.guild is not None else None)
            who = member or (interaction.user if interaction.user.id == record.user_id else None)
            name = getattr(who, "display_name", "") if who is not None else ""
        turn = await app.chat.prepare(TurnAsk(
            location=where, prompt=record.prompt,
            author_id=question.author_id if question is not None else record.user_id,
            author_name=name,
            parent_id=question.parent_id if question is not None else None, explicit=True,
            private=record.private, direct=record.guild_id is None, shared=True,
            again=Knobs.model_validate(record.knobs),
        ))
        request = replace(turn.request, system_prompt=record.system_prompt)
        return AskedReply(LabTurn(request, turn.model.name),
                          answer.text if answer is not None else "", record.private,
                          record.reply_ids)

    # --- /compare -----------------------------------------------------------------------

    async def compare(self, interaction: discord.Interaction, ask: CompareAsk, *,
                      seed: int | None = None) -> None:
        """Run a comparison as an entry of the runner's lifecycle: the member's slot and
        cooldown, the engine's queue (all variants or none), the runner's Stop, one error
        tail.

        It edits the interaction's original response throughout; a comparison is a few
        hundred tokens per variant, well inside the 15-minute interaction token, so it
        has no channel-message fallback as `ReplyWriter` does.
        """
        await self.runner.run(CompareRun(
            id=interaction.id, user_id=ask.user_id, guild_id=ask.guild_id,
            channel_id=ask.channel_id, private=ask.private, lab=self, ask=ask, seed=seed,
            interaction=interaction,
            surface=InteractionSurface(interaction, private=ask.private, header="",
                                       ttl_s=lambda: self.runner.interaction_ttl_s),
        ))

    async def stream_compare(self, interaction: discord.Interaction, cid: int, ask: CompareAsk,
                             comparison: Comparison, running: discord.ui.View, *,
                             release: Callable[[], object]) -> None:
        """Every variant into one embed, `running` (Stop) under it until the end."""
        views = [VariantView(v.label) for v in comparison.variants]
        state: dict[str, Any] = {"final": False, "file": None}

        async def send(key: str) -> None:
            embed = discord.Embed.from_dict(json.loads(key))
            if not state["final"]:
                await interaction.edit_original_response(
                    content=None, embed=embed, view=running, allowed_mentions=NO_MENTIONS)
                return
            done = discord.ui.View(timeout=None)
            done.add_item(CompareRegenerateButton(cid))
            done.stop()
            files = [state["file"]] if state["file"] is not None else []
            await interaction.edit_original_response(
                content=None, embed=embed, view=done, attachments=files,
                allowed_mentions=NO_MENTIONS)

        def key() -> str:
            return json.dumps(compare_embed(ask.prompt, comparison.seed, views,
                                            model=ask.model)[0])

        editor = CoalescingEditor(send, self.edit_interval_s)
        try:
            editor.update(key())
            async for index, event in comparison.events():
                view = views[index]
                if isinstance(event, TextDelta):
                    view.text += event.text
                    view.state = "writing…"
                elif isinstance(event, Finished):
                    r = event.result
                    word = FINISH_WORDS[r.finish_reason]
                    view.text = r.text
                    view.state = f"{r.new_tokens} tokens · {word}"
                    if r.error:
                        view.state += f" · {r.error}"[:200]
                editor.update(key())
            results = await comparison.results()
            embed, cut = compare_embed(ask.prompt, comparison.seed, views, model=ask.model)
            if cut:
                embed, _ = compare_embed(ask.prompt, comparison.seed, views, model=ask.model,
                                         note=wording.COMPARE_TEXTS_CUT)
            # The full texts, the seed and what it can do: in the file, not the embed.
            data = full_texts(ask.prompt, comparison.seed, results).encode()
            state["file"] = discord.File(io.BytesIO(data), filename="compare.md")
            state["final"] = True
            # Generation has ended: the member may ask again before the final edit lands,
            # as after a reply.
            release()
            await editor.finish(json.dumps(embed), force=True)
        except BaseException:
            await editor.abort()
            raise

    async def regenerate_compare(self, interaction: discord.Interaction, cid: int) -> None:
        """The same prompt and variants, a new seed; as private as the first one."""
        ask = self.compares.get(str(cid))
        if ask is None:
            raise UserFacingError(wording.COMPARE_GONE)
        if ask.guild_id != interaction.guild_id or ask.channel_id != interaction.channel_id:
            raise UserFacingError(wording.BUTTON_OTHER_CHANNEL)
        if ask.private and interaction.user.id != ask.user_id:
            raise UserFacingError(wording.COMPARE_ONLY_ASKER)
        again = replace(ask, user_id=interaction.user.id, comparison=None)
        await self.compare(interaction, again)

    # --- /probs and its steps --------------------------------------------------------------

    async def probs(self, interaction: discord.Interaction, turn: LabTurn, *,
                    private: bool, header: str, seed: int | None = None,
                    generated: tuple[int, ...] = (), raw: bool = False) -> None:
        """The first view of a walk: chart + table, ephemeral unless asked public."""
        with await self.gate.take(interaction.user.id):
            await interaction.response.defer(ephemeral=private, thinking=True)
            walk_seed = seed if seed is not None else secrets.randbelow(2**31 - 1) + 1
            engine = await self.app.models.engine(turn.model)
            step = await probs_step(engine, turn.request, generated=generated, seed=walk_seed,
                                    raw=raw)
            walk = Walk(interaction.id, interaction.user.id, turn.request, turn.model,
                        step, header, private)
            self.walks.put(str(walk.id), walk)
            content, file, view = await self._walk_message(walk, engine)
        # The slot is free before the view shows, so a Step pressed at once is taken.
        await interaction.followup.send(content, file=file, view=view, ephemeral=private,
                                        allowed_mentions=NO_MENTIONS)

    async def step(self, interaction: discord.Interaction, walk_id: int, rank: int) -> None:
        """A Step button: append the chosen token and show the next step (author only)."""
        walk = self._own_walk(interaction, walk_id)
        if not 0 <= rank < len(walk.choices):
            raise UserFacingError(wording.WALK_STALE_BUTTON)
        await self._move(interaction, walk, walk.step.then(walk.choices[rank]))

    def _own_walk(self, interaction: discord.Interaction, walk_id: int) -> Walk:
        walk = self.walks.get(str(walk_id))
        if walk is None:
            raise UserFacingError(wording.WALK_GONE)
        if interaction.user.id != walk.user_id:
            raise UserFacingError(wording.WALK_NOT_YOURS)
        return walk

    async def back(self, interaction: discord.Interaction, walk_id: int) -> None:
        """Back: the step before this one."""
        walk = self._own_walk(interaction, walk_id)
        if not walk.step.generated:
            raise UserFacingError(wording.WALK_FIRST_STEP)
        await self._move(interaction, walk, walk.step.generated[:-1])

    async def _move(self, interaction: discord.Interaction, walk: Walk,
                    generated: tuple[int, ...]) -> None:
        with await self.gate.take(interaction.user.id):
            await interaction.response.defer()
            engine = await self.app.models.engine(walk.model)
            walk.step = await probs_step(engine, walk.request, generated=generated,
                                         seed=walk.step.seed, raw=walk.step.raw_text)
            content, file, view = await self._walk_message(walk, engine)
        # The member's slot is free before the edit, as a reply's is before its final edit:
        # a press made on seeing the new step is never refused as "in progress".
        await interaction.edit_original_response(
            content=content, attachments=[file], view=view, allowed_mentions=NO_MENTIONS)

    async def _walk_message(self, walk: Walk,
                            engine: Engine) -> tuple[str, discord.File, discord.ui.View]:
        step = walk.step
        tok = engine.bundle.tokenizer
        so_far = tok.decode(list(step.generated)) if step.generated else ""
        png = await asyncio.to_thread(partial(render_png, step, prompt=walk.request.prompt,
                                              so_far=so_far))
        if len(png) > MAX_PNG_BYTES:  # never expected: a few dozen bars
            raise UserFacingError(wording.CHART_TOO_LARGE)
        by_id = {c.id: c for c in step.candidates}
        header = walk.header
        content = probs_content(step, header, so_far, walk.model)
        end_ids = step.end_ids
        choices: list[int] = []
        if not step.at_limit:
            for c in step.candidates:
                if c.id in end_ids or c.special:
                    continue
                choices.append(c.id)
                if len(choices) == STEP_BUTTONS:
                    break
        walk.choices = tuple(choices)
        view = discord.ui.View(timeout=None)
        if step.generated:
            view.add_item(WalkBackButton(walk.id))
        for rank, token_id in enumerate(walk.choices):
            cand = by_id.get(token_id)
            label = (cand.text if cand is not None else str(token_id))[:70]
            removed = cand is not None and cand.removed_by is not None
            view.add_item(StepButton(walk.id, rank + 1, label=f"{'✕' if removed else '+'} {label}"))
        view.stop()
        return content, discord.File(io.BytesIO(png), filename="probs.png"), view

    # --- knob help ----------------------------------------------------------------------

    async def knob_help(self, interaction: discord.Interaction) -> None:
        """"What do these do?": every knob in a line or two, and a "try it" per knob."""
        embed = discord.Embed(title=wording.KNOB_HELP_TITLE,
                              description="\n".join(f"• {line}" for line in help_lines())[:4096])
        embed.set_footer(text=wording.KNOB_HELP_FOOTER)
        view = discord.ui.View(timeout=None)
        for name in TRY_KNOBS:
            view.add_item(TryKnobButton(word=name, label=f"Try {name}"))
        view.stop()
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    async def try_knob(self, interaction: discord.Interaction, name: str) -> None:
        """"Try it on my last prompt": a comparison of the knob's value against a contrast."""
        ask_id = await self.app.chat.latest_ask(interaction.user.id, interaction.channel_id)
        if ask_id is None:
            raise UserFacingError(wording.TRY_NEEDS_AN_ASK)
        turn = (await self.request_of_ask(interaction, ask_id)).turn
        record = await self.app.chat.asked(ask_id)
        prompt = record.prompt if record is not None else turn.request.prompt
        await self.compare(interaction, CompareAsk(
            user_id=interaction.user.id, guild_id=interaction.guild_id,
            channel_id=interaction.channel_id, prompt=prompt, request=turn.request,
            variants=knob_variants(name, turn.request.knobs), private=True, model=turn.model,
        ))


def knob_help_view() -> discord.ui.View:
    """The "What do these do?" button for /knobs show, /help and /settings."""
    view = discord.ui.View(timeout=None)
    view.add_item(KnobHelpButton())
    view.stop()
    return view


__all__ = ["LabRunner", "compare_embed", "knob_help_view"]
