"""Turning a stream of token ids into text that is safe to show as it grows.

Small pure state machines (no threads, no I/O), cheap enough for CTranslate2's
per-token callback:

- `IncrementalDetokenizer` emits only complete text: a multi-byte character
  split across tokens (emoji, CJK, accents) is held until it is whole, and the
  spacing matches what the tokenizer gives when decoding the whole sequence.
- `StopMatcher` holds back any tail of the text that could still become a stop
  sequence, so a stop sequence never flashes on screen before being removed.
- `LeadingLabel` removes a speaker's label ("Ada:", "**Ada:**") the reply opens
  with, holding the first characters back until they cannot be one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.model.tokenizer import Tokenizer, require_valid_unicode

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Decode ids one at a time, returning the newly completed text each step.

    Decoding a token on its own is wrong for byte-level BPE (half a UTF-8
    character) and for SentencePiece (the leading-space marker depends on the
    previous token), so each step decodes a short window that starts a few
    tokens back and returns only what the new token added (as Hugging Face's
    TextStreamer and vLLM do), so each step costs O(window), not O(reply).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # ids[:read] have been emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            delta = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held at the end (e.g. a truncated multi-byte character)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        if len(new_text) > len(prefix_text):
            return new_text[len(prefix_text) :]
        return ""


class StopMatcher:
    """Cut text at the first stop sequence, holding back possible partial matches.

    A tail that could begin a stop sequence is held until the next delta settles
    it, so a match is only searched for in the held text plus the new delta.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, delta: str) -> str:
        """Return the text that is now safe to show; set `stopped` on a match."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._pending + delta
        first: tuple[int, str] | None = None
        for stop in self._stops:
            idx = text.find(stop)
            if idx != -1 and (first is None or idx < first[0]):
                first = (idx, stop)
        if first is not None:
            self.stopped = True
            self.matched = first[1]
            self._pending = ""
            return text[: first[0]]
        hold = self._held_suffix(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """At the end of generation the held tail was not a stop after all."""
        if self.stopped:
            return ""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


class LeadingLabel:
    """Strip one leading ``Label:`` (also bold, ``**Label:**``) from a streamed reply.

    In a shared conversation the model reads ``Name: text`` turns and may open its
    own with a name; that label is not part of the reply. Text is held while what
    came so far (after leading spaces) could still be a label, then released
    either untouched or without the label and the spaces after it.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        forms: list[str] = []
        for label in labels:
            if label:
                forms += [f"{label}:", f"**{label}:**", f"**{label}**:"]
        self._forms = tuple(forms)
        self._pending = ""
        self._done = not self._forms
        self._trim = False  # a label was removed: drop the spaces that follow it
        self.stripped: str | None = None

    def feed(self, delta: str) -> str:
        if self._trim:
            delta = delta.lstrip()
            if delta:
                self._trim = False
            return delta
        if self._done:
            return delta
        text = self._pending + delta
        bare = text.lstrip()
        for form in self._forms:
            if bare.startswith(form):
                self._done = True
                self.stripped = form
                self._pending = ""
                rest = bare[len(form):].lstrip()
                self._trim = not rest
                return rest
        if bare and any(form.startswith(bare) for form in self._forms):
            self._pending = text
            return ""
        if not bare:
            self._pending = text
            return ""
        self._done = True
        self._pending = ""
        return text

    def flush(self) -> str:
        """At the end: whatever was held was not a label after all."""
        out, self._pending = self._pending, ""
        self._done = True
        return out


def token_pieces(tokenizer: Tokenizer, text: str) -> list[tuple[int, str]]:
    """(id, text) per token, for showing how the model sees a string (/tokens)."""
    require_valid_unicode(text, "text")
    pieces: list[tuple[int, str]] = []
    detok = IncrementalDetokenizer(tokenizer.decode)
    for i in tokenizer.encode(text):
        pieces.append((i, detok.push(i)))
    if pieces:
        last_id, last_text = pieces[-1]
        pieces[-1] = (last_id, last_text + detok.flush())
    return pieces
