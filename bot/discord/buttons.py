"""Every button and select the bot sends, declared once through one id factory.

A control is a `DynamicItem` parsed back from its custom id, so a message sent
before a restart still answers clicks. A custom id is text a client sends back,
so `id_button` and `id_select` own, for every kind: its format
(``llm:<kind>:<id>[:<id>…][:<word>]``; ``lab:`` for the lab's ids already sent),
its parsing and range checks (`bot.discord.guard.parse_id`, and `parse_choice`
for a select's option: a number past 64 bits, negative or not a number, a
missing or extra part, an unknown word is a plain refusal from `wording`, never
the generic apology), and, for the buttons under one answer (versions,
Continue, Reasoning), the check against the stored binding: the answer they
name belongs to this server and channel, and to the reply on the pressed
message. Only then does the press reach the runner (`ReplyControls`, found by
`runner_of`) or the lab (`LabControls`, found by `lab_of`), each checked by type;
those that acknowledge before their store reads (`ButtonSpec.acks_first`: the
versions, Continue, Reasoning) check the binding once they have.
`reply_view` is the one builder of the buttons under a reply.

A press is routed by `dispatch_press` (the client's `on_interaction`), by its
id's ``<prefix>:<kind>``, not through discord.py's dynamic items: those rebuild
the pressed message's whole view and each of its buttons before the callback
runs, work the id already makes needless, and under a flood of presses it is
what the acknowledgements wait behind. As discord.py did, a press of a control
the pressed message does not show is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import discord

from bot import wording
from bot.discord.common import location_of
from bot.discord.errors import send_error
from bot.discord.guard import BAD_ID, InvalidButton, parse_id, require_id
from bot.errors import UserFacingError
from bot.store.swipes import AnswerGone
from bot.store.turns import StoredTurn

MODAL_ID = "llm:replymodal:{ask_id}"
SWIPE_LABEL_ID = "llm:swipelabel:{answer_id}"
FOLLOWUP_LIMIT = 4000  # Discord's limit for a modal text input


@runtime_checkable
class ReplyControls(Protocol):
    """What the /ask cog, the buttons and the Reply modal ask of the reply runner."""

    async def ask_command(self, interaction: discord.Interaction, prompt: str,
                          overrides: dict[str, Any], *, private: bool = False,
                          thread: bool = False,
                          attachments: Sequence[discord.Attachment] = ()) -> None: ...

    async def stop(self, interaction: discord.Interaction, ask_id: int, owner_id: int) -> None: ...

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None: ...

    async def open_reply(self, interaction: discord.Interaction, ask_id: int) -> None: ...

    async def ask_followup(self, interaction: discord.Interaction, text: str,
                           ask_id: int) -> None: ...

    async def swipe(self, interaction: discord.Interaction, answer_id: int,
                    delta: int) -> None: ...

    async def continue_reply(self, interaction: discord.Interaction, answer_id: int) -> None: ...

    async def show_reasoning(self, interaction: discord.Interaction, answer_id: int) -> None: ...

    async def bound_turns(self, turn_id: int, message_id: int | None,
                          ) -> tuple[StoredTurn | None, StoredTurn | None]:
        """The turn a button names and the turn of the message it was pressed on."""
        ...


def runner_of(interaction: discord.Interaction) -> ReplyControls:
    """The runner of the client that received `interaction`."""
    runner = getattr(interaction.client, "runner", None)
    if not isinstance(runner, ReplyControls):
        raise TypeError("this client has no reply runner")
    return runner


@runtime_checkable
class LabControls(Protocol):
    """What the lab's buttons ask of the lab (`bot.discord.lab.LabRunner`)."""

    async def inspect(self, interaction: discord.Interaction, ask_id: int) -> None: ...

    async def inspect_token(self, interaction: discord.Interaction, view_id: int,
                            at: int) -> None: ...

    async def inspect_page(self, interaction: discord.Interaction, view_id: int,
                           delta: int) -> None: ...

    async def inspect_back(self, interaction: discord.Interaction, view_id: int) -> None: ...

    async def write_on(self, interaction: discord.Interaction, view_id: int,
                       token_id: int) -> None: ...

    async def step(self, interaction: discord.Interaction, walk_id: int, rank: int) -> None: ...

    async def back(self, interaction: discord.Interaction, walk_id: int) -> None: ...

    async def regenerate_compare(self, interaction: discord.Interaction, cid: int) -> None: ...

    async def knob_help(self, interaction: discord.Interaction) -> None: ...

    async def try_knob(self, interaction: discord.Interaction, name: str) -> None: ...


def lab_of(interaction: discord.Interaction) -> LabControls:
    """The lab of the client that received `interaction` (the client holds it)."""
    lab = getattr(interaction.client, "lab", None)
    if not isinstance(lab, LabControls):
        raise TypeError("this client has no lab")
    return lab


# --- the factory -------------------------------------------------------------------------


class ButtonElsewhere(UserFacingError):
    """A press that names an answer of another server, channel or message."""


async def check_binding(interaction: discord.Interaction, runner: ReplyControls,
                        answer_id: int) -> None:
    """Refuse a press whose answer is not this place's, nor the pressed message's reply.

    Turn ids are sequential, so a forged custom id could name any answer: the
    stored answer's own server and channel (a thread of it counts) must be the
    press's, and the pressed message must show a version of the same answer.
    """
    message = interaction.message
    named, shown = await runner.bound_turns(answer_id, message.id if message else None)
    if named is None or named.role != "assistant":
        raise AnswerGone()
    where = location_of(interaction)
    if named.guild_id != where.guild_id:
        raise ButtonElsewhere(wording.BUTTON_OTHER_SERVER)
    if named.channel_id is not None and named.channel_id not in (
        where.channel_id, where.parent_channel_id
    ):
        raise ButtonElsewhere(wording.BUTTON_OTHER_CHANNEL)
    if shown is None or shown.role != "assistant" or (
        shown.id != named.id and shown.parent_id != named.parent_id
    ):
        raise ButtonElsewhere(wording.BUTTON_OTHER_REPLY)


@dataclass(frozen=True)
class Press:
    """A press, parsed: its ids (each checked by `require_id`), its word, if any, and
    for a select the option chosen (`parse_choice`)."""

    ids: tuple[int, ...]
    word: str = ""
    choice: int = -1
    valid: bool = True
    """False when the custom id did not parse (an id-less kind has no `BAD_ID` to carry)."""


#: What a press does once its id checked out: the runner, the interaction, the press.
OnPress = Callable[[ReplyControls, discord.Interaction, Press], Awaitable[None]]


@dataclass(frozen=True)
class ButtonSpec:
    kind: str
    ids: int
    words: tuple[str, ...]
    label: str
    style: discord.ButtonStyle
    on_press: OnPress
    bound: bool
    row: int | None
    emoji: str | None
    prefix: str = "llm"
    acks_first: bool = False
    """A bound press whose handler acknowledges before the store is read and calls
    `check_binding` itself after (reads queue under load; Discord allows 3 s)."""


#: A select's option values are numbers the bot wrote: a token's place or id.
_CHOICE_DIGITS = 9


def parse_choice(interaction: discord.Interaction) -> int:
    """The one option a select sent, as a number; anything else is a plain refusal."""
    data: Any = interaction.data or {}
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, list) or len(values) != 1:
        raise InvalidButton()
    value = values[0]
    if (not isinstance(value, str) or not value.isascii() or not value.isdigit()
            or len(value) > _CHOICE_DIGITS):
        raise InvalidButton()
    return int(value)


def _parse_rest(spec: ButtonSpec, rest: str | None) -> Press:
    """A custom id's ids and word after ``<prefix>:<kind>``; `BAD_ID`s and not `valid`
    when malformed."""
    parts = rest.split(":") if rest is not None else []
    word = parts.pop() if spec.words and parts else ""
    ids = [parse_id(part) for part in parts]
    if len(ids) != spec.ids or (spec.words and word not in spec.words):
        return Press((BAD_ID,) * spec.ids, spec.words[0] if spec.words else "", valid=False)
    return Press(tuple(ids), word)


async def _run_press(spec: ButtonSpec, interaction: discord.Interaction, press: Press) -> None:
    """The checks every press passes, in order, then its handler; errors by the one path."""
    try:
        if not press.valid:
            raise InvalidButton()
        require_id(*press.ids)  # a crafted id: refused before any lookup
        runner = runner_of(interaction)
        if spec.bound and not spec.acks_first:
            await check_binding(interaction, runner, press.ids[0])
        await spec.on_press(runner, interaction, press)
    except Exception as exc:
        await send_error(interaction, exc)


#: Every declared control by its custom id's ``(prefix, kind)``, with its pattern.
_CONTROLS: dict[tuple[str, str], tuple[re.Pattern[str], type[IdButton] | type[IdSelect]]] = {}


def _shows(message: discord.Message, custom_id: str, component_type: object) -> bool:
    """Whether the message carries a component of that type and custom id."""
    todo: list[Any] = list(message.components)
    while todo:
        component = todo.pop()
        if (getattr(component, "custom_id", None) == custom_id
                and component.type.value == component_type):
            return True
        todo.extend(getattr(component, "children", ()) or ())
    return False


async def dispatch_press(interaction: discord.Interaction) -> bool:
    """Answer a press of one of our controls; True if it was one (answered or ignored)."""
    if interaction.type is not discord.InteractionType.component:
        return False
    data: Any = interaction.data or {}
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str):
        return False
    prefix, _, rest = custom_id.partition(":")
    kind = rest.partition(":")[0]
    found = _CONTROLS.get((prefix, kind))
    match = found[0].fullmatch(custom_id) if found is not None else None
    if found is None or match is None:
        return False
    control = found[1]
    message = interaction.message
    if message is None or not _shows(message, custom_id, data.get("component_type")):
        return True
    press = _parse_rest(control.spec, match["rest"])
    if issubclass(control, IdSelect):
        try:
            press = replace(press, choice=parse_choice(interaction))
        except Exception as exc:
            await send_error(interaction, exc)
            return True
    await _run_press(control.spec, interaction, press)
    return True


class IdButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"(?!)"):
    """A button made by `id_button`; its class attribute `spec` says which."""

    spec: ClassVar[ButtonSpec]

    def __init__(self, *ids: int, word: str = "", label: str | None = None,
                 disabled: bool = False, style: discord.ButtonStyle | None = None) -> None:
        spec = self.spec
        parts = [spec.prefix, spec.kind, *map(str, ids), *([word] if spec.words else [])]
        super().__init__(discord.ui.Button(
            label=label or spec.label, style=style or spec.style, emoji=spec.emoji,
            custom_id=":".join(parts), disabled=disabled, row=spec.row,
        ))
        self.press = Press(ids, word)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> IdButton:
        press = _parse_rest(cls.spec, match["rest"])
        made = cls(*press.ids, word=press.word)
        made.press = press
        return made

    async def callback(self, interaction: discord.Interaction) -> None:
        await _run_press(self.spec, interaction, self.press)


class IdSelect(discord.ui.DynamicItem[discord.ui.Select[discord.ui.View]], template=r"(?!)"):
    """A select made by `id_select`: its custom id parsed like a button's, and the option
    chosen parsed by `parse_choice` before its handler sees the press."""

    spec: ClassVar[ButtonSpec]

    def __init__(self, *ids: int, options: Sequence[discord.SelectOption] = (),
                 placeholder: str | None = None) -> None:
        spec = self.spec
        super().__init__(discord.ui.Select(
            placeholder=placeholder or spec.label, row=spec.row,
            custom_id=":".join([spec.prefix, spec.kind, *map(str, ids)]),
            # Discord needs one option at least; a select rebuilt from a press has none.
            options=list(options) or [discord.SelectOption(label="…", value="0")],
        ))
        self.press = Press(ids)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> IdSelect:
        press = _parse_rest(cls.spec, match["rest"])
        made = cls(*press.ids)
        made.press = press
        return made

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            press = replace(self.press, choice=parse_choice(interaction))
        except Exception as exc:
            await send_error(interaction, exc)
            return
        await _run_press(self.spec, interaction, press)


def _template(prefix: str, kind: str) -> str:
    # Anything after ``<prefix>:<kind>:`` matches, so a malformed id still reaches the
    # item and gets a plain refusal instead of no answer at all.
    return rf"{re.escape(prefix)}:{re.escape(kind)}(?::(?P<rest>[\s\S]*))?"


def id_button(kind: str, on_press: OnPress, *, label: str, ids: int = 1,
              words: tuple[str, ...] = (),
              style: discord.ButtonStyle = discord.ButtonStyle.secondary,
              bound: bool = False, row: int | None = None,
              emoji: str | None = None, prefix: str = "llm",
              acks_first: bool = False) -> type[IdButton]:
    """A button class whose custom id is ``<prefix>:<kind>:<id>…[:<word>]``.

    `bound`: the first id is an answer turn, checked by `check_binding` before
    `on_press` (with `acks_first`, by `on_press` once it has acknowledged).
    `prefix` other than ``llm`` is for ids already sent under it.
    """
    spec = ButtonSpec(kind, ids, words, label, style, on_press, bound, row, emoji, prefix,
                      acks_first)

    class Declared(IdButton, template=_template(prefix, kind)):
        pass

    Declared.spec = spec
    Declared.__name__ = Declared.__qualname__ = f"{kind.title()}Button"
    _CONTROLS[(prefix, kind)] = (re.compile(_template(prefix, kind)), Declared)
    return Declared


def id_select(kind: str, on_choose: OnPress, *, placeholder: str, ids: int = 1,
              row: int | None = None) -> type[IdSelect]:
    """A select class whose custom id is ``llm:<kind>:<id>…``; `on_choose` gets the
    press with its `choice`."""
    spec = ButtonSpec(kind, ids, (), placeholder, discord.ButtonStyle.secondary, on_choose,
                      False, row, None)

    class Declared(IdSelect, template=_template(spec.prefix, kind)):
        pass

    Declared.spec = spec
    Declared.__name__ = Declared.__qualname__ = f"{kind.title()}Select"
    _CONTROLS[(spec.prefix, kind)] = (re.compile(_template(spec.prefix, kind)), Declared)
    return Declared


# --- the declarations --------------------------------------------------------------------

StopButton = id_button(
    "stop", lambda runner, itx, p: runner.stop(itx, p.ids[0], p.ids[1]), ids=2,
    label="Stop", style=discord.ButtonStyle.danger)
"""Stop a streaming reply: ``llm:stop:<ask>:<user>`` (the user only for old buttons)."""

RegenerateButton = id_button(
    "regen", lambda runner, itx, p: runner.regenerate(itx, p.ids[0]), label="Regenerate")
"""Ask again with the same prompt and settings (kept in the ask log)."""

ReplyButton = id_button(
    "reply", lambda runner, itx, p: runner.open_reply(itx, p.ids[0]), label="Reply",
    style=discord.ButtonStyle.primary)
"""Continue the conversation from this answer (opens the Reply modal)."""

# The answer's own buttons name the answer turn the message shows (not the ask):
# after a swipe they are rebuilt for the version on screen.
SwipeButton = id_button(
    "swipe", lambda runner, itx, p: runner.swipe(itx, p.ids[0], -1 if p.word == "prev" else 1),
    words=("prev", "next"), label="▶", bound=True, acks_first=True, row=1)
"""◀ / ▶: the previous or next version of this answer, in place."""

ContinueButton = id_button(
    "cont", lambda runner, itx, p: runner.continue_reply(itx, p.ids[0]), label="Continue",
    style=discord.ButtonStyle.success, bound=True, acks_first=True)
"""Continue a reply that stopped at its token budget, in the same message."""

ReasoningButton = id_button(
    "think", lambda runner, itx, p: runner.show_reasoning(itx, p.ids[0]), label="Reasoning",
    emoji="💭", bound=True, acks_first=True)
"""A reasoning model's thoughts, shown to the presser alone."""


InspectButton = id_button(
    "inspect", lambda runner, itx, p: lab_of(itx).inspect(itx, p.ids[0]),
    label=wording.INSPECT)
"""A finished reply's own tokens: Word odds, any token's alternatives, write on from one."""

# Probabilities and Word odds, on replies sent before Inspect took their place, open it.
ProbsButton = id_button(
    "probs", lambda runner, itx, p: lab_of(itx).inspect(itx, p.ids[0]),
    label=wording.INSPECT, prefix="lab")
ConfButton = id_button(
    "conf", lambda runner, itx, p: lab_of(itx).inspect(itx, p.ids[0]),
    label=wording.INSPECT, prefix="lab")

# The Inspect view's controls name the view (kept server-side by the lab), never a token:
# the option chosen is checked against the view's own state.
InspectTokenSelect = id_select(
    "itoken", lambda runner, itx, p: lab_of(itx).inspect_token(itx, p.ids[0], p.choice),
    placeholder=wording.INSPECT_PICK_TOKEN, row=0)
"""Jump to any token of the reply (25 at a time: `InspectPageButton` pages them)."""

InspectPageButton = id_button(
    "ipage", lambda runner, itx, p: lab_of(itx).inspect_page(
        itx, p.ids[0], -1 if p.word == "prev" else 1),
    words=("prev", "next"), label="▶", row=1)
"""The select's previous or next 25 tokens."""

InspectBackButton = id_button(
    "iback", lambda runner, itx, p: lab_of(itx).inspect_back(itx, p.ids[0]),
    label=wording.INSPECT_BACK, row=1)
"""From a token back to the whole reply (Word odds)."""

WriteOnSelect = id_select(
    "iwrite", lambda runner, itx, p: lab_of(itx).write_on(itx, p.ids[0], p.choice),
    placeholder=wording.WRITE_ON_PICK, row=2)
"""Take another token here and write on: a new version of the reply."""


# The knobs lab's other controls (a running /compare has the runner's Stop). Walks and
# comparisons live 15 minutes in the lab's memory, so their ids name that state (a /probs
# or /compare interaction's id), checked there; "What do these do?" and Try keep the ids
# messages already carry.
StepButton = id_button(
    "step", lambda runner, itx, p: lab_of(itx).step(itx, p.ids[0], p.ids[1] - 1), ids=2,
    label="step", prefix="lab")
"""/probs: append this candidate (its rank, 1-based in the id) and show the next step."""

WalkBackButton = id_button(
    "back", lambda runner, itx, p: lab_of(itx).back(itx, p.ids[0]), label="◀ Back",
    prefix="lab")
"""/probs: the step before this one."""

CompareRegenerateButton = id_button(
    "cregen", lambda runner, itx, p: lab_of(itx).regenerate_compare(itx, p.ids[0]),
    label="Regenerate", prefix="lab")
"""/compare: the same variants again, a new seed."""

KnobHelpButton = id_button(
    "knobhelp", lambda runner, itx, p: lab_of(itx).knob_help(itx), ids=0,
    label=wording.KNOB_HELP_BUTTON, prefix="lab")
"""Under /help, /settings and /knobs show: what each knob does."""

#: The knobs a Try button compares (the knob help's view offers one each).
TRY_KNOBS = ("temperature", "top_p", "top_k", "repetition_penalty", "min_new_tokens")

TryKnobButton = id_button(
    "try", lambda runner, itx, p: lab_of(itx).try_knob(itx, p.word), ids=0, words=TRY_KNOBS,
    label="Try", prefix="lab")
"""Compare a knob's value here against a contrasting one, on the presser's last prompt."""


class ReplyModal(discord.ui.Modal, title="Reply"):
    """The follow-up editor: multi-line, up to Discord's 4,000 characters.

    Only the form: it is sent with `send_stateless` and its submission is
    answered by `submit_reply`, after a restart too.
    """

    def __init__(self, ask_id: int) -> None:
        super().__init__(timeout=900, custom_id=MODAL_ID.format(ask_id=ask_id))
        self.ask_id = ask_id
        self.text: discord.ui.TextInput[ReplyModal] = discord.ui.TextInput(
            label=wording.REPLY_BOX_LABEL, style=discord.TextStyle.paragraph,
            max_length=FOLLOWUP_LIMIT, required=True, custom_id="text",
        )
        self.add_item(self.text)


#: The Reply box's submission, routed by its custom id (bot/discord/modals.py), so
#: a box submitted after a restart still continues the conversation.
REPLY_MODAL_PATTERN = r"llm:replymodal:(?P<ask>[0-9]+)"


async def submit_reply(
    interaction: discord.Interaction, match: re.Match[str], values: dict[str, str]
) -> None:
    """The Reply box was submitted: the runner checks who may continue, then replies."""
    ask_id = parse_id(match["ask"])  # client-controlled: thousands of digits refused plainly
    require_id(ask_id)
    await runner_of(interaction).ask_followup(interaction, values.get("text", ""), ask_id)


def _add_answer_controls(view: discord.ui.View, answer_id: int,
                         versions: tuple[int, int] | None, can_continue: bool,
                         reasoning: bool = False) -> None:
    """Continue and Reasoning (row 0, after Reply) and ◀ n/m ▶ (row 1) for an answer."""
    if can_continue:
        view.add_item(ContinueButton(answer_id))
    if reasoning:
        view.add_item(ReasoningButton(answer_id))
    if versions is not None and versions[1] > 1:
        shown, count = versions
        view.add_item(SwipeButton(answer_id, word="prev", label="◀", disabled=shown <= 0))
        view.add_item(discord.ui.Button(
            label=f"{shown + 1}/{count}", disabled=True, row=1,
            custom_id=SWIPE_LABEL_ID.format(answer_id=answer_id),
        ))
        view.add_item(SwipeButton(answer_id, word="next", disabled=shown + 1 >= count))


#: Every control that answers clicks, after a restart too (`dispatch_press` routes them).
DYNAMIC_ITEMS = (StopButton, RegenerateButton, ReplyButton, SwipeButton, ContinueButton,
                 ReasoningButton, InspectButton, ProbsButton, ConfButton, InspectTokenSelect,
                 InspectPageButton, InspectBackButton, WriteOnSelect, StepButton,
                 WalkBackButton, CompareRegenerateButton, KnobHelpButton,
                 TryKnobButton)


def greeting_view(ask_id: int, answer_id: int,
                  versions: tuple[int, int] | None) -> discord.ui.View:
    """Under a character's greeting: Reply, and ◀ n/m ▶ over its alternate greetings.

    No Regenerate and no lab buttons: no prompt produced it, so there is none to
    run again or to inspect.
    """
    view = discord.ui.View(timeout=None)
    view.add_item(ReplyButton(ask_id))
    _add_answer_controls(view, answer_id, versions, can_continue=False)
    view.stop()
    return view


def reply_view(ask_id: int, *, stop_for: int | None = None, reply: bool = False,
               answer_id: int | None = None, versions: tuple[int, int] | None = None,
               can_continue: bool = False, reasoning: bool = False) -> discord.ui.View:
    """The buttons under a reply: Stop while it streams; Regenerate, then Reply, once done.

    `stop_for` is the asker (a streaming reply); otherwise the reply is finished
    and `reply` adds Reply (only once its turns are stored, so a press finds them);
    `answer_id` adds the answer's own buttons, `versions` being (shown index, count).
    A reply with text (stored: Reply, or versions) gets Inspect; an empty one has no
    tokens to inspect. One row of actions (at most five: Regenerate, Reply,
    Continue, Reasoning, Inspect) and the versions' row.
    The view is stopped, so discord.py never stores it: the dynamic items above
    handle the clicks, and thousands of replies do not accumulate views in memory.
    """
    view = discord.ui.View(timeout=None)
    if stop_for is not None:
        view.add_item(StopButton(ask_id, stop_for))
    else:
        view.add_item(RegenerateButton(ask_id))
        if reply:
            view.add_item(ReplyButton(ask_id))
        if answer_id is not None:
            _add_answer_controls(view, answer_id, versions, can_continue, reasoning)
        if reply or answer_id is not None:
            inspect = InspectButton(ask_id)
            inspect.item.row = 0
            view.add_item(inspect)
    view.stop()
    return view
