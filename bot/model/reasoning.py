"""Reasoning models: split ``<think>…</think>`` from the answer while it streams.

Models such as the DeepSeek-R1 distills of Llama write their reasoning first,
between ``<think>`` and ``</think>``, then the answer. A front-end shows
"thinking…" while the model is in the first part and the answer alone after it,
with the reasoning behind a button or spoiler; later turns must see the answer
only (`strip_reasoning`), or the model would read its old thoughts as things it
said.

The tags arrive as text pieces of any size, so a tag can be split across
pieces: the splitter holds back the end of what it has seen while it could
still be the start of a tag, and never shows a half tag. Some distills' chat
templates put ``<think>`` in the prompt, so the reply starts inside the
reasoning and only ``</think>`` appears: `ReasoningSplitter(implicit_open=True)`
(the default, for a scope where reasoning is on) starts in the thinking phase
and also accepts an explicit ``<think>`` at the start.

Sane rules for odd output, since models do write it: the first ``</think>``
ends the reasoning (no nesting count, so a literal ``<think>`` inside the
reasoning cannot trap the answer); a repeated ``<think>`` inside the reasoning
is dropped; a ``<think>`` later in the answer starts another reasoning block
(it never counts as answer); a stray ``</think>`` in the answer is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

OPEN: Final = "<think>"
CLOSE: Final = "</think>"
_TAGS: Final = (OPEN, CLOSE)
UNFINISHED_NOTE: Final = (
    "The model was still thinking when it stopped, so there is no answer yet."
)


class Phase(Enum):
    START = "start"
    """Nothing but whitespace yet (explicit mode): a ``<think>`` may still come."""
    THINKING = "thinking"
    ANSWER = "answer"


@dataclass(frozen=True)
class SplitDelta:
    """What one piece added: new reasoning text, new answer text, and the phase now."""

    reasoning: str
    answer: str
    phase: Phase


@dataclass(frozen=True)
class SplitResult:
    """A finished reply split in two; `unfinished` when it stopped mid-thought."""

    reasoning: str
    answer: str
    unfinished: bool

    def shown_answer(self) -> str:
        """The answer, or the note saying there is none because thinking never ended."""
        return self.answer if self.answer else (UNFINISHED_NOTE if self.unfinished else "")


class ReasoningSplitter:
    """Feed streamed text with `feed`; read `phase`, `reasoning`, `answer`; end with `final`."""

    def __init__(self, *, implicit_open: bool = True) -> None:
        self._phase = Phase.THINKING if implicit_open else Phase.START
        self._pending = ""
        self._reasoning: list[str] = []
        self._answer: list[str] = []
        self._reasoning_started = False
        self._answer_started = False

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning).rstrip()

    @property
    def answer(self) -> str:
        return "".join(self._answer).rstrip()

    def feed(self, piece: str) -> SplitDelta:
        buf = self._pending + piece
        self._pending = ""
        reasoning: list[str] = []
        answer: list[str] = []
        while buf:
            if self._phase is Phase.START:
                lead = buf.lstrip()
                if not lead:
                    buf = ""  # leading whitespace of the answer is never shown
                elif lead.startswith(OPEN):
                    self._phase = Phase.THINKING
                    buf = lead[len(OPEN):]
                elif OPEN.startswith(lead):
                    self._pending = lead  # could still become <think>
                    buf = ""
                else:
                    self._phase = Phase.ANSWER
                    buf = lead
                continue
            at, tag = _first_tag(buf)
            if tag is None:
                keep = _partial_tag_len(buf)
                self._emit(buf[:len(buf) - keep], reasoning, answer)
                self._pending = buf[len(buf) - keep:]
                break
            self._emit(buf[:at], reasoning, answer)
            buf = buf[at + len(tag):]
            if tag == CLOSE and self._phase is Phase.THINKING:
                self._phase = Phase.ANSWER
            elif tag == OPEN and self._phase is Phase.ANSWER:
                self._phase = Phase.THINKING
                if self._reasoning_started:
                    self._emit("\n\n", reasoning, answer)
            # else: a repeated <think> while thinking or a stray </think> is dropped
        return SplitDelta("".join(reasoning), "".join(answer), self._phase)

    def flush(self) -> SplitDelta:
        """The end of the stream: what was held back (a half tag at the very end is text)."""
        pending, self._pending = self._pending, ""
        if self._phase is Phase.START:
            self._phase = Phase.ANSWER
            pending = pending.lstrip()
        reasoning: list[str] = []
        answer: list[str] = []
        self._emit(pending, reasoning, answer)
        return SplitDelta("".join(reasoning), "".join(answer), self._phase)

    def final(self) -> SplitResult:
        """Flush and finish: the reasoning, the answer, and whether thinking never ended."""
        self.flush()
        return SplitResult(self.reasoning.strip(), self.answer.strip(),
                           unfinished=self._phase is Phase.THINKING)

    def _emit(self, text: str, reasoning: list[str], answer: list[str]) -> None:
        if not text:
            return
        if self._phase is Phase.THINKING:
            if not self._reasoning_started:
                text = text.lstrip()
                if not text:
                    return
                self._reasoning_started = True
            self._reasoning.append(text)
            reasoning.append(text)
        else:
            if not self._answer_started:
                text = text.lstrip()
                if not text:
                    return
                self._answer_started = True
            self._answer.append(text)
            answer.append(text)


def _first_tag(buf: str) -> tuple[int, str | None]:
    best, found = len(buf), None
    for tag in _TAGS:
        at = buf.find(tag)
        if 0 <= at < best:
            best, found = at, tag
    return best, found


def _partial_tag_len(buf: str) -> int:
    """How many characters at the end of `buf` could be the start of a tag."""
    longest = max(len(t) for t in _TAGS) - 1
    start = buf.rfind("<", max(0, len(buf) - longest))
    if start < 0:
        return 0
    tail = buf[start:]
    return len(tail) if any(t.startswith(tail) for t in _TAGS) else 0


def split_reasoning(text: str) -> SplitResult:
    """Split a whole stored reply; the opening tag is implicit when ``</think>`` comes first."""
    close, open_ = text.find(CLOSE), text.find(OPEN)
    implicit = close >= 0 and (open_ < 0 or close < open_)
    splitter = ReasoningSplitter(implicit_open=implicit)
    splitter.feed(text)
    return splitter.final()


def strip_reasoning(text: str) -> str:
    """The answer alone, for later turns: reasoning never counts as something said.

    A reply that ended mid-thought has no answer and gives "".
    """
    if OPEN not in text and CLOSE not in text:
        return text
    return split_reasoning(text).answer


class ReasoningFilter:
    """The streaming loops' text filter: what to show while a reply streams.

    `feed` returns the answer text a piece added (nothing while the model thinks)
    and whether it is thinking now, so a front-end shows "thinking…" and then the
    answer alone; `finish` gives the split reply: the answer to show and store,
    the reasoning for its button. One small piece both the Discord `ReplyWriter`
    and the console's `stream_reply` call, instead of two forks of their loops.
    """

    def __init__(self) -> None:
        self.splitter = ReasoningSplitter(implicit_open=True)
        self.reasoning = ""  # set by the loop that finished it, for storing

    def feed(self, piece: str) -> tuple[str, bool]:
        delta = self.splitter.feed(piece)
        return delta.answer, delta.phase is not Phase.ANSWER

    def finish(self) -> SplitResult:
        return self.splitter.final()
