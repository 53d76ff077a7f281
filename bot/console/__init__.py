"""The local console: `commands` (what a line does) and `terminal` (reading lines, Ctrl-C)."""

from bot.console.commands import (
    CONSOLE_CHANNEL_ID,
    CONSOLE_GUILD_ID,
    CONSOLE_USER_ID,
    HELP,
    Console,
    stream_reply,
)
from bot.console.terminal import console_loop, run_console

__all__ = [
    "CONSOLE_CHANNEL_ID",
    "CONSOLE_GUILD_ID",
    "CONSOLE_USER_ID",
    "HELP",
    "Console",
    "console_loop",
    "run_console",
    "stream_reply",
]
