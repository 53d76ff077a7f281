"""Speakers in a shared conversation: who said each turn, and who the bot is.

Names go into the prompt only once two or more people take part: a lone
member's turns are plain text, so the model has no ``Name: text`` pattern to
copy. With several people each user turn reads ``Name: text`` (`speaker_text`),
the persona gets one line saying who is who (`who_is_who`), a label the reply
opens with is removed as it streams (the engine's `LeadingLabel`, fed by the
request's `speakers`), and the participants' line starts (``\nName:``) are
stop sequences (`speaker_stops`), so the model ends its turn instead of writing
the members' lines. `shared_request` puts these together for a turn.

A name is inside the message content, which the encode path treats as people's
text, so a display name like ``<|im_start|>assistant`` is those characters and
never a control token; this module keeps each label on one line and short (no
newline can start a fake turn, no 2,000-character name can eat the context).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Final

from bot.engine import GenerationRequest
from bot.engine.streaming import LeadingLabel
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


#: The opening line a character card's persona carries ("You are Marlo. Stay in
#: character as Marlo."), which names the bot's character.
_CARD_OPENING: Final = re.compile(r"You are ([^\n.]{1,64})\. Stay in character as \1\.")
#: What the model calls itself when no persona names it.
ASSISTANT_LABELS: Final = ("Assistant", "assistant")


def several_people(authors: Iterable[int]) -> bool:
    """Whether two or more distinct people take part (by id: names can repeat)."""
    return len(set(authors)) >= 2


def persona_name(system_prompt: str | None) -> str | None:
    """The character a card's persona makes the bot, or None for any other persona."""
    if not system_prompt:
        return None
    match = _CARD_OPENING.search(system_prompt)
    return sanitize_name(match.group(1)) or None if match else None


def _listed(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def who_is_who(names: Sequence[str], persona: str | None) -> str:
    """One line for the system prompt: the members' names and who the bot is."""
    me = persona or "the assistant"
    return (
        f"This is a group conversation between {_listed(list(names))} and you, {me}. "
        "Each member's message starts with their name. Write only your own reply, "
        "without a name in front of it, and never write lines for the members."
    )


def shared_request(request: GenerationRequest, speakers: Sequence[str | None], *,
                   several: bool = True, stops: bool = True) -> GenerationRequest:
    """`request` for a conversation among `speakers` (oldest first, asker last).

    A label the reply opens with (a speaker's, the persona's, "Assistant") is
    stripped and (with `stops`) a line starting with a speaker's name ends the
    reply; with `several` people the persona also gets the who-is-who line.
    """
    people = participants(speakers)
    persona = persona_name(request.system_prompt)
    labels = tuple(dict.fromkeys([*people, *([persona] if persona else []), *ASSISTANT_LABELS]))
    knobs = with_speaker_stops(request.knobs, speakers) if stops else request.knobs
    if not several:
        return replace(request, knobs=knobs, speakers=labels)
    line = who_is_who(list(reversed(people)), persona)
    system = f"{request.system_prompt}\n\n{line}" if request.system_prompt else line
    return replace(request, system_prompt=system, knobs=knobs, speakers=labels)


#: A card's placeholder for the person talking, kept in the persona until each turn.
USER_PLACEHOLDER: Final = "{{user}}"


def fill_user(text: str | None, name: str | None, *, default: str = "the user") -> str | None:
    """`text` with ``{{user}}`` as `name` (sanitised), so a card speaks to the asker.

    A public greeting, read by everyone, passes ``default="you"`` and no name.
    """
    if not text or USER_PLACEHOLDER not in text:
        return text
    return text.replace(USER_PLACEHOLDER, sanitize_name(name) or default)


def strip_label(text: str, labels: Iterable[str]) -> str:
    """`text` without one leading ``Label:`` of `labels` (a stored reply read back)."""
    strip = LeadingLabel(list(labels))
    out = strip.feed(text) + strip.flush()
    return out if strip.stripped else text
