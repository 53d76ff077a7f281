"""The reply's controls: Stop, Regenerate, Reply and the Reply modal, typed, in one place.

Each button is a `DynamicItem` parsed back from its custom id, so a reply sent
before a restart still answers clicks. The controls know nothing of how replies
run: they find the client's `ReplyControls` (the `AskRunner`) through
`runner_of`, which checks the type instead of trusting an untyped attribute;
the /ask cog reaches the runner the same way. `reply_view` is the one builder
of the buttons under a reply, so every reply shows them in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import discord

from bot.discord.errors import send_error
from bot.discord.guard import parse_id, require_id
from bot.discord.lab import LAB_ITEMS, reply_lab_buttons

STOP_ID = "llm:stop:{ask_id}:{user_id}"
REGEN_ID = "llm:regen:{ask_id}"
REPLY_ID = "llm:reply:{ask_id}"
MODAL_ID = "llm:replymodal:{ask_id}"
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

    # Issue 22: swipes and Continue (bot/discord/swipes.py does the work).
    async def swipe(self, interaction: discord.Interaction, answer_id: int,
                    delta: int) -> None: ...

    async def continue_reply(self, interaction: discord.Interaction, answer_id: int) -> None: ...

    async def show_reasoning(self, interaction: discord.Interaction, answer_id: int) -> None: ...


def runner_of(interaction: discord.Interaction) -> ReplyControls:
    """The runner of the client that received `interaction`."""
    runner = getattr(interaction.client, "runner", None)
    if not isinstance(runner, ReplyControls):
        raise TypeError("this client has no reply runner")
    return runner


class StopButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:stop:(?P<ask>[0-9]+):(?P<user>[0-9]+)",
):
    """Stop a streaming reply; parsed from its custom id, so it survives restarts."""

    def __init__(self, ask_id: int, user_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Stop", style=discord.ButtonStyle.danger,
            custom_id=STOP_ID.format(ask_id=ask_id, user_id=user_id),
        ))
        self.ask_id = ask_id
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> StopButton:
        return cls(parse_id(match["ask"]), parse_id(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            require_id(self.ask_id, self.user_id)  # a crafted id: refused before any lookup
            await runner_of(interaction).stop(interaction, self.ask_id, self.user_id)
        except Exception as exc:
            await send_error(interaction, exc)


class RegenerateButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:regen:(?P<ask>[0-9]+)",
):
    """Ask again with the same prompt and settings; the prompt is kept in the database."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Regenerate", style=discord.ButtonStyle.secondary,
            custom_id=REGEN_ID.format(ask_id=ask_id),
        ))
        self.ask_id = ask_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenerateButton:
        return cls(parse_id(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            require_id(self.ask_id)
            await runner_of(interaction).regenerate(interaction, self.ask_id)
        except Exception as exc:
            await send_error(interaction, exc)


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
        return cls(parse_id(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            require_id(self.ask_id)
            await runner_of(interaction).open_reply(interaction, self.ask_id)
        except Exception as exc:
            await send_error(interaction, exc)


class ReplyModal(discord.ui.Modal, title="Reply"):
    """The follow-up editor: multi-line, up to Discord's 4,000 characters.

    Only the form: it is sent with `send_stateless` and its submission is
    answered by `submit_reply`, after a restart too.
    """

    def __init__(self, ask_id: int) -> None:
        super().__init__(timeout=900, custom_id=MODAL_ID.format(ask_id=ask_id))
        self.ask_id = ask_id
        self.text: discord.ui.TextInput[ReplyModal] = discord.ui.TextInput(
            label="Your reply", style=discord.TextStyle.paragraph,
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


# --- issue 22: swipes (◀ 2/3 ▶) and Continue ------------------------------------------
# The ids name the answer turn the message shows (not the ask): after a swipe the
# buttons are rebuilt for the version on screen. Digits only, parsed by the
# templates, so a forged id can name nothing but a turn, which the runner checks.

SWIPE_ID = "llm:swipe:{answer_id}:{way}"
SWIPE_LABEL_ID = "llm:swipelabel:{answer_id}"
CONTINUE_ID = "llm:cont:{answer_id}"


class SwipeButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:swipe:(?P<answer>[0-9]{1,19}):(?P<way>prev|next)",
):
    """◀ / ▶: show the previous or next version of this answer, editing the message."""

    def __init__(self, answer_id: int, way: str, *, disabled: bool = False) -> None:
        super().__init__(discord.ui.Button(
            label="◀" if way == "prev" else "▶", style=discord.ButtonStyle.secondary,
            custom_id=SWIPE_ID.format(answer_id=answer_id, way=way), disabled=disabled, row=1,
        ))
        self.answer_id = answer_id
        self.delta = -1 if way == "prev" else 1

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> SwipeButton:
        return cls(int(match["answer"]), match["way"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).swipe(interaction, self.answer_id, self.delta)
        except Exception as exc:
            await send_error(interaction, exc)


class ContinueButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:cont:(?P<answer>[0-9]{1,19})",
):
    """Continue a reply that stopped at its token budget, in the same message."""

    def __init__(self, answer_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Continue", style=discord.ButtonStyle.success,
            custom_id=CONTINUE_ID.format(answer_id=answer_id),
        ))
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ContinueButton:
        return cls(int(match["answer"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).continue_reply(interaction, self.answer_id)
        except Exception as exc:
            await send_error(interaction, exc)


REASONING_ID = "llm:think:{answer_id}"


class ReasoningButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:think:(?P<answer>[0-9]{1,19})",
):
    """A reasoning model's thoughts, shown to the presser alone (the answer stays clean)."""

    def __init__(self, answer_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Reasoning", style=discord.ButtonStyle.secondary, emoji="💭",
            custom_id=REASONING_ID.format(answer_id=answer_id),
        ))
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ReasoningButton:
        return cls(int(match["answer"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).show_reasoning(interaction, self.answer_id)
        except Exception as exc:
            await send_error(interaction, exc)


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
        view.add_item(SwipeButton(answer_id, "prev", disabled=shown <= 0))
        view.add_item(discord.ui.Button(
            label=f"{shown + 1}/{count}", disabled=True, row=1,
            custom_id=SWIPE_LABEL_ID.format(answer_id=answer_id),
        ))
        view.add_item(SwipeButton(answer_id, "next", disabled=shown + 1 >= count))


#: Every control that answers clicks after a restart (the client registers them).
DYNAMIC_ITEMS = (StopButton, RegenerateButton, ReplyButton, SwipeButton, ContinueButton,
                 ReasoningButton, *LAB_ITEMS)


def reply_view(ask_id: int, *, stop_for: int | None = None, reply: bool = False,
               answer_id: int | None = None, versions: tuple[int, int] | None = None,
               can_continue: bool = False, reasoning: bool = False) -> discord.ui.View:
    """The buttons under a reply: Stop while it streams; Regenerate, then Reply, once done.

    `stop_for` is the asker (a streaming reply); otherwise the reply is finished
    and `reply` adds Reply (only once its turns are stored, so a press finds them).
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
        if answer_id is not None:  # issue 22: `versions` is (shown index, count)
            _add_answer_controls(view, answer_id, versions, can_continue, reasoning)
        # The knobs lab's Probabilities and Word odds on every finished reply (they
        # rebuild its prompt from the ask log; bot/discord/lab.py), beside the actions
        # in row 0 when they fit (Discord allows five to a row; row 1 is the versions),
        # else in a row of their own. A reply with text is stored (Reply) or has
        # versions; an empty one has neither, so it gets no Word odds.
        lab = reply_lab_buttons(ask_id, has_text=reply or answer_id is not None)
        actions = sum(1 for item in view.children if item.row != 1)
        for item in lab:
            item.row = 0 if actions + len(lab) <= 5 else 2
            view.add_item(item)
    view.stop()
    return view
