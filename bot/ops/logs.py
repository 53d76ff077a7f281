"""Logging for a service that journald collects: one line per record, level first.

When stderr is the journal stream, timestamps are left to journald and every line
(a traceback's too, since journald files each line apart) is prefixed with its
syslog priority (`<3>` for errors). Registered secrets (the Discord token) are
masked in the final text of every record, tracebacks included.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
MASK = "***"


class RedactFilter(logging.Filter):
    """Replace any registered secret in a record's final message with ***.

    The formatters also mask their whole output (a filter cannot reach a traceback);
    the filter serves any other handler added to the root logger.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret and secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        masked = self.redact(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


REDACT = RedactFilter()


class _RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, traceback, stack) never holds a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return REDACT.redact(super().format(record))


class _JournalFormatter(_RedactingFormatter):
    """`<priority>level logger: message`, the priority repeated on every line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """Whether stderr is connected to journald, as systemd.exec(5) says to check.

    `$JOURNAL_STREAM` is the `device:inode` systemd connected; a redirected stderr
    inherits the variable, so it counts only when stderr's own device and inode match.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str = "INFO") -> None:
    """One stderr handler on the root logger; discord.py's chatter kept at INFO or above.

    `level` filters at the handler; loggers still pass WARNING records on, because
    `bot.ops.metrics.LogCounter` learns of Discord's 429s only from discord.py's
    warnings. Python warnings go through logging, for the same prefix and masking.
    """
    threshold = logging.getLevelName(level)
    if not isinstance(threshold, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(threshold)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(threshold, logging.WARNING))
    logging.getLogger("discord").setLevel(max(logging.INFO, min(threshold, logging.WARNING)))
    # aiosqlite logs every statement with its parameters at DEBUG: members' prompts
    # (saved for Regenerate) would land in the journal. BOT_LOG_LEVEL=DEBUG is for our code.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, min(threshold, logging.WARNING)))
    logging.captureWarnings(True)


def register_secret(secret: str) -> None:
    """Mask `secret` in every log line from now on (call before anything can log it)."""
    if secret:
        REDACT.secrets.add(secret)
