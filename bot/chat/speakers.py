"""Speakers in a shared conversation: who said each user turn, as plain text.

In a thread or reply chain with several members the model only tells speakers
apart if each question carries its author's name, so a user turn reads
``Name: text``. The name is inside the message content, which the encode path
treats as people's text, so a display name like ``<|im_start|>assistant`` is
those characters and never a control token; all this module has to do is keep
the label on one line and short (no newline can start a fake turn of the
transcript, no 2,000-character name can eat the context).

`speaker_stops` gives the line starts of the participants (``\\nName:``) as stop
sequences, so the model ends its turn instead of writing other members' lines,
within the knobs' limits (`MAX_STOP_SEQUENCES`, `MAX_STOP_LENGTH`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

from bot.knobs import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, Knobs, build_knobs

MAX_NAME_CHARS: Final = 32

#: Characters that would change how the transcript reads rather than what it says:
#: C0/C1 controls, line and paragraph separators, bidirectional overrides and
#: isolates (they can make "Bob" display as someone else's line). Zero-width
#: joiners stay: emoji sequences in names need them.
_BIDI: Final = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {
    0x200E, 0x200F, 0x061C,
}


def sanitize_name(name: str | None, *, limit: int = MAX_NAME_CHARS) -> str:
    """A display name as one short line of plain text ("" when nothing is left).

    Any Unicode letter, symbol or emoji is kept; controls, newlines, tabs and
    other separators become spaces, runs of spaces collapse, bidi overrides and
    lone surrogates go, and the result is cut to `limit` characters.
    """
    if not name:
        return ""
    out: list[str] = []
    space = False
    for ch in name:
        code = ord(ch)
        category = unicodedata.category(ch)
        if code in _BIDI or category == "Cs":
            continue
        if category in ("Cc", "Zl", "Zp", "Zs") or ch.isspace():
            space = bool(out)
            continue
        if space:
            out.append(" ")
            space = False
        out.append(ch)
        if len(out) >= limit:
            break
    return "".join(out)[:limit].rstrip()


def speaker_text(text: str, name: str | None) -> str:
    """A user turn as the model reads it in a shared conversation: ``Name: text``.

    With no usable name the text is left as it is.
    """
    label = sanitize_name(name)
    return f"{label}: {text}" if label else text


def participants(names: Iterable[str | None]) -> list[str]:
    """Distinct sanitised names, most recent first (pass names oldest first)."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in reversed(list(names)):
        label = sanitize_name(raw)
        if label and label not in seen:
            seen.add(label)
            out.append(label)
    return out


def speaker_stops(
    names: Iterable[str | None],
    *,
    existing: Sequence[str] = (),
    limit: int = MAX_STOP_SEQUENCES,
) -> tuple[str, ...]:
    """Stop sequences: `existing` (the member's own, kept first) then ``\\nName:`` lines.

    `names` are the conversation's speakers oldest first (the asker last, so
    the asker's line, the most likely to be made up next, comes first); the
    result never holds more than `limit` sequences or one longer than
    `MAX_STOP_LENGTH`, so it always passes the knobs' validation.
    """
    out = list(dict.fromkeys(existing))[:limit]
    for label in participants(names):
        if len(out) >= limit:
            break
        stop = f"\n{label}:"
        if len(stop) <= MAX_STOP_LENGTH and stop not in out:
            out.append(stop)
    return tuple(out)


def with_speaker_stops(knobs: Knobs, names: Iterable[str | None]) -> Knobs:
    """`knobs` with the speakers' line starts added after the member's own stops."""
    stops = speaker_stops(names, existing=knobs.stop)
    if stops == knobs.stop:
        return knobs
    return build_knobs({"stop": list(stops)}, base=knobs)
