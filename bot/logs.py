"""Logging for a service that journald collects: one line per record, level first.

journald adds its own timestamps, so when stderr is not a terminal the format
leaves them out and prefixes the syslog priority (`<3>` for errors), which
journald turns into the record's level. A filter masks the Discord token in
case any library ever prints it.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record)


class RedactFilter(logging.Filter):
    """Replace any registered secret in a record's final message with ***."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        changed = False
        for secret in self.secrets:
            if secret and secret in msg:
                msg = msg.replace(secret, "***")
                changed = True
        if changed:
            record.msg, record.args = msg, None
        return True


REDACT = RedactFilter()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    under_journal = bool(os.environ.get("JOURNAL_STREAM")) or bool(os.environ.get("INVOCATION_ID"))
    if under_journal:
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))


def register_secret(secret: str) -> None:
    REDACT.secrets.add(secret)
