"""Shaping a growing reply into chat messages: pages, code fences, footers, pacing.

Discord-agnostic on purpose (limits are parameters), so the splitting rules are
tested without a client and could serve another chat front-end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
_CLOSE_ROOM = 8  # "\n" plus the longest fence marker we expect
_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")


@dataclass
class _FenceState:
    open: bool = False
    marker: str = "```"
    lang: str = ""

    def reopen(self) -> str:
        return f"{self.marker}{self.lang}\n" if self.open else ""

    def close(self) -> str:
        return f"\n{self.marker}" if self.open else ""


def _scan_fences(text: str, state: _FenceState) -> _FenceState:
    """The fence state after `text`, starting from `state`."""
    st = _FenceState(state.open, state.marker, state.lang)
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if not m:
            continue
        if not st.open:
            st = _FenceState(True, m.group(1), m.group(2).strip().split(" ")[0])
        elif m.group(1).startswith(st.marker[0]) and not m.group(2).strip():
            st = _FenceState(False, "```", "")
    return st


def _cut_point(text: str, limit: int) -> int:
    """Where to cut `text` (len > limit): paragraph, line, then word boundary."""
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        idx = window.rfind(sep)
        if idx > limit // 4:
            return idx + len(sep)
    # A single "word" longer than a message (a URL, a hash): nothing better exists.
    return limit


class Paginator:
    """Split a growing text into pages of at most `limit` characters.

    Pages already cut are frozen, so a page that was sent never changes when
    more text arrives; only the last page grows. A code fence open at a cut is
    closed at the end of that page and reopened (same language) on the next.
    """

    def __init__(self, limit: int = MESSAGE_LIMIT, first_limit: int | None = None) -> None:
        self.limit = limit
        self.first_limit = first_limit if first_limit is not None else limit
        self.frozen: list[str] = []
        self._offset = 0
        self._state = _FenceState()

    def pages(self, text: str, reserve_last: int = 0) -> list[str]:
        """All pages for `text`; `reserve_last` leaves room for a footer on the last one."""
        while True:
            reopen = self._state.reopen()
            limit = (self.first_limit if not self.frozen else self.limit) - len(reopen)
            rest = text[self._offset :]
            if len(rest) + _CLOSE_ROOM + reserve_last <= limit:
                break
            cut = _cut_point(rest, limit - _CLOSE_ROOM)
            chunk = rest[:cut]
            end_state = _scan_fences(chunk, self._state)
            self.frozen.append(reopen + chunk.rstrip() + end_state.close())
            self._offset += cut
            self._state = end_state
        rest = text[self._offset :]
        if not rest and self.frozen:
            return list(self.frozen)
        # Keep the visible last page well-formed while a code block is still streaming.
        last = self._state.reopen() + rest + _scan_fences(rest, self._state).close()
        return [*self.frozen, last]


#: Characters that make markup anywhere in a line: emphasis, spoilers, code, quotes,
#: masked links, and the ``<…>`` forms (mention pills, channels, emoji, timestamps).
_MARKUP = frozenset("\\*_~|`<>@[]()")
#: What makes markup only at the start of a line: headings, lists.
_LINE_START = re.compile(r"^(#|-|\+|\d+\.)")


def escape_markdown(text: str) -> str:
    """`text` shown exactly as typed: markup characters backslash-escaped.

    Chat markdown shows a backslash-escaped punctuation character literally and
    hides the backslash, so this disarms ``**bold**``, ``||spoilers||``, code,
    ``<@id>`` pills, ``<#id>`` channels, ``<t:…>`` timestamps, custom emoji and
    masked links, and a heading or list marker at the start, while ordinary
    punctuation (``?``, ``.``, ``,``) stays as typed.
    """
    out = "".join(f"\\{c}" if c in _MARKUP else c for c in text)
    # A list number is disarmed at its period ("1\\."): a backslash before a digit shows.
    return _LINE_START.sub(
        lambda m: m.group(1)[:-1] + "\\." if m.group(1).endswith(".") else "\\" + m.group(1),
        out, count=1,
    )


def quote_prompt(prompt: str, limit: int = 180) -> str:
    """The asker's prompt as a one-line quote above the answer, trimmed, as plain text.

    Trimmed before escaping, so the limit counts what a member sees. Without the
    escaping, a prompt's ``**bold**``, ``||spoilers||`` or ``<@id>`` pills would be
    rendered in the bot's message as if the bot had written them.
    """
    flat = " ".join(prompt.split())
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return "> " + escape_markdown(flat)


class CoalescingEditor:
    """Coalesce a stream of updates into edits: at most one in flight per message.

    `update()` only records the newest content; a background task sends it no
    sooner than `interval` after the previous edit started, and each edit
    carries everything since the last. discord.py's own rate-limit handling
    paces anything faster. `finish()` always sends the final content.
    """

    def __init__(
        self, send: Callable[[str], Awaitable[None]], interval: float = 1.0,
        sent: str | None = None,
    ) -> None:
        """`sent` is what the message already shows (a follow-up posted with its text),
        so the first update with that same text is not sent again."""
        self._send = send
        self.interval = interval
        self._latest: str | None = sent
        self._sent: str | None = sent
        self._dirty = asyncio.Event()
        self._closed = False
        self._close_evt = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        self.edits = 0
        self.failures = 0
        self.last_error: BaseException | None = None

    def update(self, content: str) -> None:
        if content != self._latest:
            self._latest = content
            self._dirty.set()

    async def _run(self) -> None:
        last_start = 0.0
        while not self._closed:
            await self._dirty.wait()
            wait = self.interval - (time.monotonic() - last_start)
            if wait > 0 and not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._close_evt.wait(), wait)
            if self._closed:
                return
            self._dirty.clear()
            content = self._latest
            if content is None or content == self._sent:
                continue
            last_start = time.monotonic()
            await self._push(content)

    async def _push(self, content: str) -> None:
        try:
            await self._send(content)
            self._sent = content
            self.edits += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed intermediate edit is retried by the next one
            self.failures += 1
            self.last_error = exc
            log.warning("edit failed (%s); the next edit will carry the text", type(exc).__name__)

    async def finish(self, content: str | None = None, *, force: bool = False) -> None:
        """Stop the background task and send the final content (raises if it fails).

        `force` sends it even if the message already shows that text: the caller
        changes something else with it (a page losing its Stop button).
        """
        self._closed = True
        self._close_evt.set()
        self._dirty.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        final = content if content is not None else self._latest
        if final is not None and (force or final != self._sent):
            await self._send(final)
            self._sent = final
            self.edits += 1

    async def abort(self) -> None:
        """Stop without a final edit; an edit already in flight is let finish, not cancelled.

        Cancelling it could leave discord.py's per-webhook rate-limit lock held for
        good: when an edit empties the bucket, discord.py sleeps until the reset
        *before* releasing the lock, and a cancel during that sleep skips the
        release. Every later edit of the message (the footer included) would then
        wait for ever. The background task sees `_closed` and ends after the edit.
        """
        self._closed = True
        self._close_evt.set()
        self._dirty.set()
        with contextlib.suppress(Exception):
            # Shielded: if our caller is cancelled, the edit still completes on its own.
            await asyncio.shield(self._task)
