"""The knobs lab on Discord: `/compare` in one embed, `/probs` with Step buttons, and the
Probabilities / Confidence buttons under finished replies.

The numbers come from `bot.lab` (no Discord there); this module shapes them for
Discord's limits and keeps the little state a walk or a comparison needs:

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
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import discord

from bot.chat.request import FINISH_WORDS
from bot.chat.turns import TurnAsk
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.errors import send_error
from bot.discord.pages import CoalescingEditor, quote_prompt
from bot.engine import Finished, GenerationRequest, TextDelta
from bot.errors import UserFacingError
from bot.knobs import Knobs
from bot.lab.chart import MAX_PNG_BYTES, render_png
from bot.lab.compare import Comparison, Variant, VariantResult, knob_variants, start_compare
from bot.lab.confidence import legend, render_ansi, score_reply, surprising_lines
from bot.lab.help import help_lines
from bot.lab.probs import ProbsStep, format_knobs, format_table, probs_step

if TYPE_CHECKING:
    from bot.app import App
    from bot.limits import AskGate

log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_LIMIT = 1024
EMBED_LIMIT = 6000
FIELD_NAME_LIMIT = 256
MESSAGE_LIMIT = 2000
WALKS = 500
WALK_TTL_S = 900.0
COMPARES = 200
STEP_BUTTONS = 5
SEED_NOTE = (
    "Same seed for every variant, so the knob is the only difference asked. CTranslate2 "
    "has no per-call seed: the seed fixes the lab's own draws, not a replay of the bot's."
)

CSTOP_ID = "lab:cstop:{cid}"
CREGEN_ID = "lab:cregen:{cid}"
STEP_ID = "lab:step:{walk}:{rank}"
PROBS_ID = "lab:probs:{ask_id}"
CONF_ID = "lab:conf:{ask_id}"
KNOB_HELP_ID = "lab:knobhelp"
TRY_ID = "lab:try:{knob}"
TRY_KNOBS = ("temperature", "top_p", "top_k", "repetition_penalty", "min_new_tokens")


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
                  note: str = "") -> tuple[dict[str, Any], bool]:
    """The comparison as one embed (a dict) within Discord's limits; True when a text was cut."""
    description = (quote_prompt(prompt) + f"\nseed **{seed}** · {SEED_NOTE}")[:1500]
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
    parts = [f"# Compare\n\nPrompt: {prompt}\n\nSeed: {seed}\n"]
    for r in results:
        parts.append(f"## {r.label}\n\n{r.text}\n\n({r.result.new_tokens} tokens, "
                     f"{FINISH_WORDS[r.result.finish_reason]})\n")
    return "\n".join(parts)


def probs_content(step: ProbsStep, header: str, reply_so_far: str) -> str:
    """The text beside the chart: what was asked, the step, the table (the accessible view)."""
    ids = ",".join(str(i) for i in step.generated) or "none yet"
    so_far = reply_so_far.replace("```", "`\u200b``")
    top = (f"**Next-token probabilities** · step {step.step + 1} · `{format_knobs(step.knobs)}`"
           f" · seed {step.seed} (the lab's own draw)\n{header}\n")
    mid = f"Reply so far: `{so_far[-300:] or '∅'}` (ids: {ids})\n" if step.generated else ""
    room = MESSAGE_LIMIT - len(top) - len(mid) - 8
    table, _ = clean_cut(format_table(step).replace("```", "`\u200b``"), room)
    return f"{top}{mid}```\n{table}\n```"


# --------------------------------------------------------------------------- state


@dataclass
class Walk:
    """One /probs view a member steps through: the request and the reply so far."""

    id: str
    user_id: int
    request: GenerationRequest
    step: ProbsStep
    header: str
    private: bool
    choices: tuple[int, ...] = ()
    created: float = field(default_factory=time.monotonic)


class Expiring(Generic[T]):
    """A bounded LRU of recent views (walks, comparisons); old or surplus ones are dropped."""

    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, key: str, value: T) -> None:
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, key: str) -> T | None:
        found = self._items.get(key)
        if found is None:
            return None
        if time.monotonic() - found[0] > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return found[1]

    def __len__(self) -> int:
        return len(self._items)


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
    comparison: Comparison | None = None


# --------------------------------------------------------------------------- the runner


class LabRunner:
    """The lab's Discord side: compares, walks, and the buttons under replies."""

    def __init__(self, app: App, gate: AskGate, *, edit_interval_s: float | None = None) -> None:
        self.app = app
        self.gate = gate
        self.edit_interval_s = (app.settings.edit_interval_s if edit_interval_s is None
                                else edit_interval_s)
        self.walks: Expiring[Walk] = Expiring(WALKS, WALK_TTL_S)
        self.compares: Expiring[CompareAsk] = Expiring(COMPARES, WALK_TTL_S)

    # --- requests ---------------------------------------------------------------------

    async def fresh_request(self, interaction: discord.Interaction, prompt: str,
                            overrides: dict[str, Any] | None = None) -> GenerationRequest:
        """A new conversation's request here: persona, knobs and caps as /ask resolves them."""
        user = interaction.user
        turn = await self.app.chat.prepare(TurnAsk(
            location=location_of(interaction), prompt=prompt.strip(), author_id=user.id,
            author_name=getattr(user, "display_name", user.name), explicit=True,
            overrides=dict(overrides or {}),
        ))
        return turn.request

    async def request_of_ask(self, interaction: discord.Interaction,
                             ask_id: int) -> tuple[GenerationRequest, str, bool]:
        """The exact request a finished reply was generated from: (request, reply, private).

        Rebuilt through the same core turn code (`Chat.prepare`) from the stored ask
        and its conversation turns (earlier turns and speaker names included), with
        the reply's stored knobs and the persona stored with the ask (not today's).
        Refused for another server or channel, and for anyone but the author of a
        private ask. The history is fitted to the context with today's persona before
        the stored one replaces it: they differ only if the persona changed since, and
        then a reply that filled the context could be refused as too long here.
        """
        app = self.app
        record = await app.ask_log.load(ask_id)
        if record is None:
            raise UserFacingError("I no longer have this prompt (it may have expired). Ask again!")
        if record.guild_id != interaction.guild_id:
            raise UserFacingError("This button belongs to another server.")
        if record.channel_id is not None and record.channel_id != interaction.channel_id:
            raise UserFacingError("This button belongs to another channel.")
        if (record.private or record.guild_id is None) and interaction.user.id != record.user_id:
            raise UserFacingError("Only the person who asked can look inside this reply.")
        question = await app.turns.question_for_ask(ask_id)
        answer = await app.turns.answer_for_ask(ask_id)
        if question is not None and not question.visible_to(interaction.user.id):
            raise UserFacingError("Only the person who asked can look inside this reply.")
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
            location=where, prompt=record.prompt, author_id=record.user_id, author_name=name,
            parent_id=question.parent_id if question is not None else None, explicit=True,
            private=record.private, direct=record.guild_id is None, shared=True,
            again=Knobs.model_validate(record.knobs),
        ))
        request = replace(turn.request, system_prompt=record.system_prompt)
        return request, answer.text if answer is not None else "", record.private

    # --- /compare -----------------------------------------------------------------------

    async def compare(self, interaction: discord.Interaction, ask: CompareAsk, *,
                      seed: int | None = None) -> None:
        """Run a comparison as one ask of the member's: their slot, then the engine's queue.

        It edits the interaction's original response throughout; a comparison is a few
        hundred tokens per variant, well inside the 15-minute interaction token, so it
        has no channel-message fallback as `ReplyWriter` does (an expired token ends
        the comparison, logged as undelivered).
        """
        if self.app.engine.closing:
            raise UserFacingError("I'm restarting, try again in a moment.")
        with self.gate.hold(ask.user_id):
            # All variants or none (QueueFull, PromptTooLong raise here, before the ack).
            comparison = start_compare(self.app.engine, ask.request, ask.variants, seed=seed)
            ask.comparison = comparison
            cid = str(interaction.id)
            self.compares.put(cid, ask)
            try:
                await interaction.response.defer(ephemeral=ask.private, thinking=True)
            except BaseException:
                comparison.cancel()
                raise
            try:
                await self._stream_compare(interaction, cid, ask, comparison)
            except discord.HTTPException:
                comparison.cancel()
                log.exception("comparison %s could not be delivered", cid)
            finally:
                comparison.cancel()  # no-op when finished; on a cancelled task, stops all

    async def _stream_compare(self, interaction: discord.Interaction, cid: str, ask: CompareAsk,
                              comparison: Comparison) -> None:
        views = [VariantView(v.label) for v in comparison.variants]
        state: dict[str, Any] = {"final": False, "file": None}
        running = discord.ui.View(timeout=None)
        running.add_item(CompareStopButton(cid))
        running.stop()

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
            return json.dumps(compare_embed(ask.prompt, comparison.seed, views)[0])

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
            embed, cut = compare_embed(ask.prompt, comparison.seed, views)
            if cut:
                embed, _ = compare_embed(ask.prompt, comparison.seed, views,
                                         note="Some texts were cut: the full texts are attached.")
                data = full_texts(ask.prompt, comparison.seed, results).encode()
                state["file"] = discord.File(io.BytesIO(data), filename="compare.md")
            state["final"] = True
            await editor.finish(json.dumps(embed), force=True)
        except BaseException:
            await editor.abort()
            raise

    async def stop_compare(self, interaction: discord.Interaction, cid: str) -> None:
        """Stop stops every variant: the asker, or a moderator where a public one runs."""
        ask = self.compares.get(cid)
        if ask is None or ask.comparison is None:
            raise UserFacingError("This comparison has already finished.")
        owner = interaction.user.id == ask.user_id
        moderator = (not ask.private and interaction.guild_id is not None
                     and interaction.channel_id == ask.channel_id
                     and interaction.permissions.manage_messages)
        if not (owner or moderator):
            raise UserFacingError("Only the person who asked (or a moderator) can stop this.")
        ask.comparison.cancel()
        await interaction.response.defer()

    async def regenerate_compare(self, interaction: discord.Interaction, cid: str) -> None:
        """The same prompt and variants, a new seed; as private as the first one."""
        ask = self.compares.get(cid)
        if ask is None:
            raise UserFacingError(
                "I no longer have this comparison (they are kept 15 minutes). Run /compare again!"
            )
        if ask.guild_id != interaction.guild_id or ask.channel_id != interaction.channel_id:
            raise UserFacingError("This button belongs to another channel.")
        if ask.private and interaction.user.id != ask.user_id:
            raise UserFacingError("Only the person who asked can regenerate this.")
        again = replace(ask, user_id=interaction.user.id, comparison=None)
        await self.compare(interaction, again)

    # --- /probs and its steps --------------------------------------------------------------

    async def probs(self, interaction: discord.Interaction, request: GenerationRequest, *,
                    private: bool, header: str, seed: int | None = None,
                    generated: tuple[int, ...] = ()) -> None:
        """The first view of a walk: chart + table, ephemeral unless asked public."""
        with self.gate.hold(interaction.user.id):
            await interaction.response.defer(ephemeral=private, thinking=True)
            walk_seed = seed if seed is not None else secrets.randbelow(2**31 - 1) + 1
            step = await probs_step(self.app.engine, request, generated=generated,
                                    seed=walk_seed)
            walk = Walk(secrets.token_hex(4), interaction.user.id, request, step, header,
                        private)
            self.walks.put(walk.id, walk)
            content, file, view = await self._walk_message(walk)
            await interaction.followup.send(content, file=file, view=view, ephemeral=private,
                                            allowed_mentions=NO_MENTIONS)

    async def step(self, interaction: discord.Interaction, walk_id: str, rank: int) -> None:
        """A Step button: append the chosen token and show the next step (author only)."""
        walk = self.walks.get(walk_id)
        if walk is None:
            raise UserFacingError("This walk has expired (walks are kept 15 minutes). "
                                  "Run /probs again.")
        if interaction.user.id != walk.user_id:
            raise UserFacingError("Only the person who opened this view can step it.")
        if not 0 <= rank < len(walk.choices):
            raise UserFacingError("That button is out of date: step from the latest view.")
        generated = walk.step.then(walk.choices[rank])
        with self.gate.hold(interaction.user.id):
            await interaction.response.defer()
            walk.step = await probs_step(self.app.engine, walk.request, generated=generated,
                                         seed=walk.step.seed)
            content, file, view = await self._walk_message(walk)
            await interaction.edit_original_response(
                content=content, attachments=[file], view=view, allowed_mentions=NO_MENTIONS)

    async def _walk_message(self, walk: Walk) -> tuple[str, discord.File, discord.ui.View]:
        step = walk.step
        png = await asyncio.to_thread(render_png, step)
        if len(png) > MAX_PNG_BYTES:  # never expected: a few dozen bars
            raise UserFacingError("The chart came out too large to send.")
        tok = self.app.engine.bundle.tokenizer
        so_far = tok.decode(list(step.generated)) if step.generated else ""
        content = probs_content(step, walk.header, so_far)
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
        labels = {c.id: c.text for c in step.candidates}
        for rank, token_id in enumerate(walk.choices):
            label = (labels.get(token_id) or str(token_id))[:70]
            view.add_item(StepButton(walk.id, rank, label=f"+ {label}"))
        view.stop()
        return content, discord.File(io.BytesIO(png), filename="probs.png"), view

    async def probs_of_ask(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Probabilities button: the reply's own prompt, its first step (presser only)."""
        request, _, _ = await self.request_of_ask(interaction, ask_id)
        header = ("The prompt this reply was generated from (its persona, knobs and earlier "
                  "turns, as stored with the ask).")
        # Always ephemeral: the view is for the presser, whoever could see the reply.
        await self.probs(interaction, request, private=True, header=header)

    async def confidence_of_ask(self, interaction: discord.Interaction, ask_id: int) -> None:
        """The Confidence button: the reply coloured by the model's probability of each token."""
        request, reply, _ = await self.request_of_ask(interaction, ask_id)
        if not reply.strip():
            raise UserFacingError("I no longer have this reply's text, so I can't score it.")
        with self.gate.hold(interaction.user.id):
            await interaction.response.defer(ephemeral=True, thinking=True)
            conf = await score_reply(self.app.engine, request, reply)
            block, shown = render_ansi(conf)
            more = f" (the first {shown} of {len(conf.tokens)} tokens)" if shown < len(
                conf.tokens) else ""
            lines = "\n".join(f"• {line}" for line in surprising_lines(conf))
            text = (f"**Confidence**{more} · mean {conf.mean_prob * 100:.0f}% · {legend()}\n"
                    f"```ansi\n{block}\n```")
            rest, _ = clean_cut(f"Most surprising:\n{lines}", MESSAGE_LIMIT - len(text) - 2)
            await interaction.followup.send(f"{text}\n{rest}", ephemeral=True,
                                            allowed_mentions=NO_MENTIONS)


    # --- knob help ----------------------------------------------------------------------

    async def knob_help(self, interaction: discord.Interaction) -> None:
        """"What do these do?": every knob in a line or two, and a "try it" per knob."""
        embed = discord.Embed(title="What the knobs do",
                              description="\n".join(f"• {line}" for line in help_lines())[:4096])
        embed.set_footer(text="Try one: your last prompt here, with the knob's value here "
                              "against a contrasting one (/compare).")
        view = discord.ui.View(timeout=None)
        for name in TRY_KNOBS:
            view.add_item(TryKnobButton(name))
        view.stop()
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    async def try_knob(self, interaction: discord.Interaction, name: str) -> None:
        """"Try it on my last prompt": a comparison of the knob's value against a contrast."""
        if name not in TRY_KNOBS:
            raise UserFacingError("That button is not valid.")
        ask_id = await self.app.ask_log.latest_id(interaction.user.id, interaction.channel_id)
        if ask_id is None:
            raise UserFacingError("Ask something here first (/ask): this reruns your last prompt.")
        request, _, _ = await self.request_of_ask(interaction, ask_id)
        record = await self.app.ask_log.load(ask_id)
        prompt = record.prompt if record is not None else request.prompt
        await self.compare(interaction, CompareAsk(
            user_id=interaction.user.id, guild_id=interaction.guild_id,
            channel_id=interaction.channel_id, prompt=prompt, request=request,
            variants=knob_variants(name, request.knobs), private=True,
        ))


def lab_of(interaction: discord.Interaction) -> LabRunner:
    """The lab of the client that received `interaction` (its cog holds it)."""
    get_cog: Callable[[str], object] | None = getattr(interaction.client, "get_cog", None)
    cog = get_cog("Lab") if get_cog is not None else None
    lab = getattr(cog, "lab", None)
    if not isinstance(lab, LabRunner):
        raise UserFacingError("The knobs lab is not available on this bot.")
    return lab


# --------------------------------------------------------------------------- buttons


class _LabButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
                 template=r"lab:never"):
    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.run(lab_of(interaction), interaction)
        except Exception as exc:
            await send_error(interaction, exc)


def _ask_id(match: re.Match[str]) -> int:
    value = int(match["ask"])
    if not 0 < value < 2**64:
        raise UserFacingError("That button is not valid.")
    return value


class ProbabilitiesButton(_LabButton, template=r"lab:probs:(?P<ask>[0-9]{1,20})"):
    """Under a finished reply: the next-token view of the exact prompt it came from."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(discord.ui.Button(label="Probabilities",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=PROBS_ID.format(ask_id=ask_id)))
        self.ask_id = ask_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ProbabilitiesButton:
        return cls(_ask_id(match))

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.probs_of_ask(interaction, self.ask_id)


class ConfidenceButton(_LabButton, template=r"lab:conf:(?P<ask>[0-9]{1,20})"):
    """Under a finished reply: the reply coloured by how likely the model found each token."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(discord.ui.Button(label="Confidence",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=CONF_ID.format(ask_id=ask_id)))
        self.ask_id = ask_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ConfidenceButton:
        return cls(_ask_id(match))

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.confidence_of_ask(interaction, self.ask_id)


class StepButton(_LabButton, template=r"lab:step:(?P<walk>[0-9a-f]{8}):(?P<rank>[0-9])"):
    """Append this candidate to the walk's reply and show the next step."""

    def __init__(self, walk_id: str, rank: int, label: str = "step") -> None:
        super().__init__(discord.ui.Button(label=label or "step",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=STEP_ID.format(walk=walk_id, rank=rank)))
        self.walk_id = walk_id
        self.rank = rank

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> StepButton:
        return cls(match["walk"], int(match["rank"]))

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.step(interaction, self.walk_id, self.rank)


class CompareStopButton(_LabButton, template=r"lab:cstop:(?P<cid>[0-9]{1,20})"):
    def __init__(self, cid: str) -> None:
        super().__init__(discord.ui.Button(label="Stop", style=discord.ButtonStyle.danger,
                                           custom_id=CSTOP_ID.format(cid=cid)))
        self.cid = cid

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> CompareStopButton:
        return cls(match["cid"])

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.stop_compare(interaction, self.cid)


class CompareRegenerateButton(_LabButton, template=r"lab:cregen:(?P<cid>[0-9]{1,20})"):
    def __init__(self, cid: str) -> None:
        super().__init__(discord.ui.Button(label="Regenerate", style=discord.ButtonStyle.secondary,
                                           custom_id=CREGEN_ID.format(cid=cid)))
        self.cid = cid

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> CompareRegenerateButton:
        return cls(match["cid"])

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.regenerate_compare(interaction, self.cid)


class KnobHelpButton(_LabButton, template=r"lab:knobhelp"):
    """Under /knobs show: what each knob does."""

    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="What do these do?",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=KNOB_HELP_ID))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> KnobHelpButton:
        return cls()

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.knob_help(interaction)


class TryKnobButton(_LabButton, template=r"lab:try:(?P<knob>[a-z_]{1,30})"):
    """Compare this knob's value here against a contrasting one, on the last prompt."""

    def __init__(self, knob: str) -> None:
        super().__init__(discord.ui.Button(label=f"Try {knob}",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=TRY_ID.format(knob=knob)))
        self.knob = knob

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> TryKnobButton:
        return cls(match["knob"])

    async def run(self, lab: LabRunner, interaction: discord.Interaction) -> None:
        await lab.try_knob(interaction, self.knob)


def knob_help_view() -> discord.ui.View:
    """The "What do these do?" button for /knobs show."""
    view = discord.ui.View(timeout=None)
    view.add_item(KnobHelpButton())
    view.stop()
    return view


#: The lab's controls that answer clicks after a restart (walks and compares do not
#: survive one; their buttons then say so).
LAB_ITEMS = (ProbabilitiesButton, ConfidenceButton, StepButton, CompareStopButton,
             CompareRegenerateButton, KnobHelpButton, TryKnobButton)


def reply_lab_buttons(ask_id: int) -> list[discord.ui.Item[Any]]:
    """The lab's buttons under a finished reply (buttons.py's builder adds them)."""
    return [ProbabilitiesButton(ask_id), ConfidenceButton(ask_id)]


__all__ = ["LAB_ITEMS", "LabRunner", "compare_embed", "knob_help_view", "lab_of",
           "reply_lab_buttons"]
