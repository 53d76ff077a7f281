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
from typing import Any, Protocol, runtime_checkable

import discord

from bot.discord.errors import send_error
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
                          thread: bool = False) -> None: ...

    async def stop(self, interaction: discord.Interaction, ask_id: int, owner_id: int) -> None: ...

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None: ...

    async def open_reply(self, interaction: discord.Interaction, ask_id: int) -> None: ...

    async def ask_followup(self, interaction: discord.Interaction, text: str,
                           ask_id: int) -> None: ...


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
        return cls(int(match["ask"]), int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
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
        return cls(int(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
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
        return cls(int(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).open_reply(interaction, self.ask_id)
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
        await runner_of(interaction).ask_followup(interaction, self.text.value, self.ask_id)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception
    ) -> None:
        await send_error(interaction, error)


#: Every control that answers clicks after a restart (the client registers them).
DYNAMIC_ITEMS = (StopButton, RegenerateButton, ReplyButton, *LAB_ITEMS)


def reply_view(ask_id: int, *, stop_for: int | None = None,
               reply: bool = False) -> discord.ui.View:
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
        # --- issue 19, the knobs lab: Probabilities and Confidence on every finished
        # reply (they rebuild its prompt from the ask log; bot/discord/lab.py).
        for item in reply_lab_buttons(ask_id):
            view.add_item(item)
    view.stop()
    return view
