"""Edit boxes (modals) answered by their custom id, so a restart loses no typed text.

discord.py keeps a sent modal in memory and drops a submission it has no
object for: a Reply or `/system edit` box open across a restart got no
answer and its text was lost, although buttons survive
restarts. Here every box of ours is routed the way its buttons are: the
modal is only the form we send (and is forgotten at once, so discord.py never
answers it too); its submission arrives as an interaction whose custom id
says what it is for, and `ModalRouter.dispatch` hands it, with its text, to
the route whose pattern matches. Each route checks again who may do it
(a box stays open for minutes, long enough to lose a role, or a restart).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bot.discord.errors import send_error

log = logging.getLogger(__name__)

#: A route: (the interaction, the custom id's match, the text inputs by custom id).
ModalHandler = Callable[[discord.Interaction, re.Match[str], dict[str, str]], Awaitable[None]]


def modal_values(data: Any) -> dict[str, str]:
    """Every text input's value by its custom id, in action rows or labels alike."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == 4 and isinstance(node.get("custom_id"), str):
                found[node["custom_id"]] = str(node.get("value") or "")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk((data or {}).get("components", []))
    return found


async def send_stateless(interaction: discord.Interaction, modal: discord.ui.Modal) -> None:
    """Open `modal` without keeping it: its submission goes through the router.

    One path for a box submitted a second later and one submitted after a
    restart, and no two members' boxes with the same id overwrite each other
    in discord.py's store.
    """
    await interaction.response.send_modal(modal)
    modal.stop()


class ModalRouter:
    """Custom-id patterns → handlers for modal submissions."""

    def __init__(self) -> None:
        self.routes: list[tuple[re.Pattern[str], ModalHandler]] = []

    def add(self, pattern: str, handler: ModalHandler) -> None:
        self.routes.append((re.compile(pattern), handler))

    async def dispatch(self, interaction: discord.Interaction) -> bool:
        """Answer `interaction` if it is one of our modal submissions; True if it was."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return False
        data: Any = interaction.data or {}
        custom_id = str(data.get("custom_id", ""))
        for pattern, handler in self.routes:
            match = pattern.fullmatch(custom_id)
            if match is None:
                continue
            try:
                await handler(interaction, match, modal_values(data))
            except Exception as exc:
                await send_error(interaction, exc)
            return True
        return False
