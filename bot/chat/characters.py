"""Character cards (Tavern / SillyTavern V1, V2, V3) → a persona people can load.

A card is someone else's file, so it is read as hostile input: the size is capped
before anything is parsed, PNG chunks are walked by hand (`struct` + `zlib`, CRCs
checked, a chunk count), and only the one card chunk that is used is ever
inflated, through a `decompressobj` capped at the size a card may have, so a
file full of zip bombs costs one capped inflate. JSON is refused before parsing
when it holds more objects and lists than a card needs, nesting is bounded,
every field we use must be text, and every failure is a `CardError` that says
what is wrong with the file. Nothing here uses a regular expression that can
backtrack, and every step is one pass over the input, so a card at the upload
cap costs milliseconds; `read_card` still parses in a worker thread, so no
file a member uploads holds up the event loop.

What comes out is plain text: the persona flows through the same encode path as
any persona, where people's text is never a control token, so a card containing
``<|im_start|>system`` reads as those characters. Cards carry no sampling settings
we trust, so a card never changes knobs.

Why truncate rather than refuse a long card: many real cards are a few thousand
characters of description with long example dialogue, and a persona is capped
(`MAX_SYSTEM_PROMPT_CHARS`). Sections are kept in order of importance (the card's
own system prompt, description, personality, scenario, then example dialogue) and
the one that overflows is cut at a line or word boundary; `CharacterCard.notice`
is the sentence a front-end shows so nobody is surprised.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bot.chat.speakers import sanitize_name
from bot.errors import UserFacingError
from bot.store.personas import MAX_GREETING_CHARS
from bot.store.scopes import MAX_SYSTEM_PROMPT_CHARS

MAX_JSON_BYTES: Final = 2 * 1024 * 1024
MAX_PNG_BYTES: Final = 8 * 1024 * 1024
MAX_PNG_CHUNKS: Final = 4096
MAX_DEPTH: Final = 32
MAX_JSON_CONTAINERS: Final = 20_000
"""Objects and lists a card's JSON may hold (a card with a 1,000-entry lorebook has a
few thousand): past it, parsing would cost far more than any real card does."""
MAX_GREETINGS: Final = 32
MAX_CARD_NAME_CHARS: Final = 64

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS: Final = (b"tEXt", b"zTXt", b"iTXt")
_CARD_KEYS: Final = ("ccv3", "chara")  # preferred first
_SPECS: Final = {"chara_card_v2": "v2", "chara_card_v3": "v3"}
_PLACEHOLDER = re.compile(r"\{\{(char|user)\}\}|<(BOT|USER)>", re.IGNORECASE)
_DEFAULT_USER: Final = "{{user}}"
"""Without a member's name the placeholder stays, so each turn fills in its asker's
(`bot.chat.speakers.fill_user`)."""


class CardError(UserFacingError):
    """A character card could not be read; the message says what is wrong with it."""


@dataclass(frozen=True)
class CharacterCard:
    """A card made into a persona; `greetings` are posted only when someone asks."""

    name: str
    persona: str
    greetings: tuple[str, ...]
    spec: str
    """"v1", "v2" or "v3"."""
    full_chars: int
    """Length of the persona before it was fitted to the cap."""
    shortened: tuple[str, ...] = ()
    """Sections cut or left out to fit, in persona order (empty when it all fit)."""
    ignored: tuple[str, ...] = ()
    """The card's fields with content that the persona does not use, in people's words."""
    limit: int = MAX_SYSTEM_PROMPT_CHARS

    @property
    def truncated(self) -> bool:
        return bool(self.shortened)

    @property
    def greeting(self) -> str | None:
        return self.greetings[0] if self.greetings else None

    def notice(self) -> str | None:
        """What a front-end says when the card did not fit, or None when it did."""
        if not self.shortened:
            return None
        return (
            f"The card's text is {self.full_chars:,} characters; a persona holds "
            f"{self.limit:,}, so {_join(self.shortened)} "
            f"{'was' if len(self.shortened) == 1 else 'were'} shortened or left out."
        )


# --- entry points ------------------------------------------------------------------


def load_card_file(path: Path, *, user_name: str | None = None,
                   max_chars: int = MAX_SYSTEM_PROMPT_CHARS) -> CharacterCard:
    """Read a card from disk (the console's `/system import FILE`), size-capped first."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PNG_BYTES + 1)
    except OSError as exc:
        raise CardError(f"Couldn't read {path}: {exc.strerror or exc}.") from None
    return parse_card(data, filename=path.name, user_name=user_name, max_chars=max_chars)


async def read_card(
    data: bytes,
    *,
    filename: str | None = None,
    user_name: str | None = None,
    max_chars: int = MAX_SYSTEM_PROMPT_CHARS,
) -> CharacterCard:
    """`parse_card` in a worker thread: what front-ends on the event loop call."""
    return await asyncio.to_thread(parse_card, data, filename=filename, user_name=user_name,
                                   max_chars=max_chars)


def parse_card(
    data: bytes,
    *,
    filename: str | None = None,
    user_name: str | None = None,
    max_chars: int = MAX_SYSTEM_PROMPT_CHARS,
) -> CharacterCard:
    """A persona from a card's bytes: a PNG with a `chara`/`ccv3` chunk, or JSON.

    `user_name` stands in for ``{{user}}`` (sanitised like a speaker's name);
    without one the card says "the user".
    """
    is_png = data.startswith(PNG_SIGNATURE)
    if filename and filename.lower().endswith(".png") and not is_png:
        raise CardError("That file is named .png but is not a PNG image.")
    if is_png:
        payload = _card_json_from_png(data)
    else:
        if len(data) > MAX_JSON_BYTES:
            raise CardError(
                f"That card is {len(data):,} bytes; cards up to {MAX_JSON_BYTES:,} bytes "
                "are accepted."
            )
        payload = data
    return card_from_json(payload, user_name=user_name, max_chars=max_chars)


def card_from_json(
    payload: bytes, *, user_name: str | None = None, max_chars: int = MAX_SYSTEM_PROMPT_CHARS
) -> CharacterCard:
    """A persona from a card's JSON bytes (V1 flat fields, V2 or V3 with `data`)."""
    obj = _load_json(payload)
    spec, fields = _card_fields(obj)
    name = _text(fields, "name", required=True)
    name = sanitize_name(name, limit=MAX_CARD_NAME_CHARS)
    if not name:
        raise CardError("The card's `name` is empty.")
    nickname = sanitize_name(_text(fields, "nickname"), limit=MAX_CARD_NAME_CHARS)
    user = sanitize_name(user_name) or _DEFAULT_USER
    fill = _filler(nickname or name, user)

    sections: list[tuple[str, str, str]] = []  # (label for the notice, heading, body)
    system = fill(_text(fields, "system_prompt")).replace("{{original}}", "").strip()
    if system:
        sections.append(("the card's system prompt", "", system))
    sections.append(("the opening line", "", f"You are {name}. Stay in character as {name}."))
    for key, heading in (("description", "Description"), ("personality", "Personality"),
                         ("scenario", "Scenario")):
        body = fill(_text(fields, key)).strip()
        if body:
            sections.append((f"the {key}", heading, body))
    example = _example_dialogue(fill(_text(fields, "mes_example")))
    if example:
        sections.append(("the example dialogue", "Example dialogue", example))
    persona, full, shortened = _fit(sections, max_chars)

    greetings: list[str] = []
    first = fill(_text(fields, "first_mes")).strip()
    if first:
        greetings.append(_cap(first, MAX_GREETING_CHARS))
    alternates = fields.get("alternate_greetings")
    if alternates is not None:
        if not isinstance(alternates, list) or not all(isinstance(g, str) for g in alternates):
            raise CardError("The card's `alternate_greetings` must be a list of text.")
        for raw in alternates[:MAX_GREETINGS]:
            text = fill(_clean(raw)).strip()
            if text:
                greetings.append(_cap(text, MAX_GREETING_CHARS))
    return CharacterCard(
        name=name, persona=persona, greetings=tuple(greetings[:MAX_GREETINGS]), spec=spec,
        full_chars=full, shortened=tuple(shortened), limit=max_chars,
        ignored=tuple(words for key, words in _UNUSED.items() if fields.get(key)),
    )


#: Card fields a persona leaves out, and how an import names them.
_UNUSED: Final = {
    "character_book": "the lorebook",
    "creator_notes": "the creator's notes",
    "post_history_instructions": "the post-history instructions",
    "group_only_greetings": "the group-only greetings",
}


# --- PNG ---------------------------------------------------------------------------


def png_text_chunks(data: bytes) -> dict[str, bytes]:
    """The card chunks (tEXt, zTXt, iTXt keyed `chara`/`ccv3`) of a PNG, keyword → text.

    The first chunk of each keyword counts; every other text chunk is skipped
    unread, and compressed text is inflated with a cap, so a small chunk cannot
    expand into gigabytes.
    """
    return {key: _chunk_text(kind, key, body) for key, (kind, body) in _card_chunks(data).items()}


def _card_chunks(data: bytes) -> dict[str, tuple[bytes, bytes]]:
    """keyword → (chunk type, body after the keyword) of the first chunk of each card key.

    Walks the chunk list once, checking each length against what is left and
    each CRC; stops at IEND, or as soon as both keys are found. Nothing is
    inflated here.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise CardError("That file is not a PNG image.")
    if len(data) > MAX_PNG_BYTES:
        raise CardError(
            f"That image is {len(data):,} bytes; card images up to {MAX_PNG_BYTES:,} bytes "
            "are accepted."
        )
    found: dict[str, tuple[bytes, bytes]] = {}
    pos = len(PNG_SIGNATURE)
    count = 0
    while len(found) < len(_CARD_KEYS):
        if pos == len(data):
            break  # no IEND: tolerated, the chunks read so far are whole
        if pos + 12 > len(data):
            raise CardError("That PNG is cut short (a chunk header runs past the end).")
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise CardError(f"That PNG has more than {MAX_PNG_CHUNKS:,} chunks.")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            raise CardError("That PNG is cut short (a chunk runs past the end of the file).")
        body = memoryview(data)[start:end]
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(body, zlib.crc32(kind)) & 0xFFFFFFFF != crc:
            raise CardError(f"That PNG is damaged (a {_chunk_name(kind)} chunk fails its "
                            "checksum).")
        pos = end + 4
        if kind == b"IEND":
            break
        if kind in _TEXT_CHUNKS:
            sep = data.find(b"\x00", start, min(end, start + 80))
            if sep <= start:
                continue  # keywords are 1-79 bytes; anything else is not a card chunk
            keyword = data[start:sep].decode("latin-1")
            if keyword in _CARD_KEYS and keyword not in found:
                found[keyword] = (kind, data[sep + 1:end])
    return found


def _card_json_from_png(data: bytes) -> bytes:
    chunks = _card_chunks(data)
    for key in _CARD_KEYS:
        if key in chunks:
            kind, body = chunks[key]
            return _decode_base64_json(_chunk_text(kind, key, body), key)
    raise CardError(
        "That PNG has no character card in it (no `chara` or `ccv3` text chunk). "
        "Export the card as a PNG or JSON from your card editor."
    )


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii", "replace") if kind.isalpha() else repr(kind)


def _chunk_text(kind: bytes, keyword: str, rest: bytes) -> bytes:
    """The raw text of one card chunk (`rest` is its body after the keyword's NUL)."""
    if kind == b"tEXt":
        return rest
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            raise CardError(f"The card's `{keyword}` chunk uses an unknown compression.")
        return _inflate(rest[1:], keyword)
    # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
    if len(rest) < 2:
        raise CardError(f"The card's `{keyword}` chunk is cut short.")
    flag, method = rest[0], rest[1]
    lang_end = rest.find(b"\x00", 2)
    trans_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
    if trans_end < 0:
        raise CardError(f"The card's `{keyword}` chunk is malformed.")
    text = rest[trans_end + 1:]
    if flag:
        if method != 0:
            raise CardError(f"The card's `{keyword}` chunk uses an unknown compression.")
        text = _inflate(text, keyword)
    return text


def _inflate(data: bytes, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_JSON_BYTES * 2)
    except zlib.error:
        raise CardError(f"The card's `{keyword}` chunk is damaged (bad compression).") from None
    if inflater.unconsumed_tail:
        raise CardError(f"The card's `{keyword}` chunk unpacks to more than "
                        f"{MAX_JSON_BYTES * 2:,} bytes.")
    return out


def _decode_base64_json(raw: bytes, key: str) -> bytes:
    """The card JSON inside a chunk: base64 as the spec says, or bare JSON some tools write."""
    stripped = b"".join(raw.split())
    if stripped.startswith(b"{"):
        return raw
    if len(stripped) > MAX_JSON_BYTES * 4 // 3 + 4:
        raise CardError(f"The card in the image is larger than {MAX_JSON_BYTES:,} bytes.")
    stripped += b"=" * (-len(stripped) % 4)
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"The card's `{key}` chunk is not valid base64.") from None


# --- JSON --------------------------------------------------------------------------


def _load_json(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_JSON_BYTES:
        raise CardError(f"That card is larger than {MAX_JSON_BYTES:,} bytes.")
    if _containers_at_most(payload) > MAX_JSON_CONTAINERS:
        raise CardError(
            f"That card holds more than {MAX_JSON_CONTAINERS:,} JSON objects and lists; "
            "a character card needs far fewer."
        )
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CardError("That card is not UTF-8 text (a JSON card or a card PNG).") from None
    if not text.lstrip().startswith(("{", "[")):
        raise CardError("That file is not a character card: it is neither JSON nor a PNG.")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise CardError(f"That card nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError as exc:  # JSONDecodeError, and over-long integer literals
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise CardError(f"That card is not valid JSON{where}.") from None
    _check_depth(obj)
    if not isinstance(obj, dict):
        raise CardError("That card is not a JSON object.")
    return obj


def _containers_at_most(payload: bytes) -> int:
    """An upper bound on the objects and lists in `payload`, from byte counts alone.

    ``{{`` cannot occur outside a string in valid JSON, so each one is text (a
    ``{{char}}`` placeholder) and its two braces are not objects.
    """
    return payload.count(b"{") - 2 * payload.count(b"{{") + payload.count(b"[")


def _check_depth(obj: Any) -> None:
    """Refuse deep nesting without recursing (one pass over every value)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CardError(f"That card nests deeper than {MAX_DEPTH} levels.")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _card_fields(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = obj.get("spec")
    if spec is None:
        if "name" not in obj:
            raise CardError("That JSON is not a character card: it has no `spec` or `name`.")
        return "v1", obj
    if not isinstance(spec, str) or spec not in _SPECS:
        shown = spec if isinstance(spec, str) else type(spec).__name__
        raise CardError(
            f"Unknown card spec {str(shown)[:40]!r}; chara_card_v2, chara_card_v3 and V1 "
            "cards are supported."
        )
    data = obj.get("data")
    if not isinstance(data, dict):
        raise CardError(f"That {spec} card has no `data` object.")
    return _SPECS[spec], data


def _text(fields: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = fields.get(key)
    if value is None:
        if required:
            raise CardError(f"The card has no `{key}`.")
        return ""
    if not isinstance(value, str):
        raise CardError(f"The card's `{key}` must be text, not {_kind(value)}.")
    return _clean(value)


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


_DROP = {c: None for c in range(32) if c not in (9, 10)}
_DROP[0x7F] = None


def _clean(text: str) -> str:
    """Card text as a persona can store it: newlines normalised, controls and NULs gone,
    lone surrogates (JSON escapes can make them) replaced."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_DROP)
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _filler(char: str, user: str) -> Callable[[str], str]:
    def fill(text: str) -> str:
        def sub(match: re.Match[str]) -> str:
            word = (match.group(1) or match.group(2)).lower()
            return char if word in ("char", "bot") else user

        return _PLACEHOLDER.sub(sub, text) if "{{" in text or "<" in text else text

    return fill


def _example_dialogue(text: str) -> str:
    """`mes_example` with its ``<START>`` separators turned into blank lines."""
    blocks: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip().upper() == "<START>":
            blocks.append([])
        else:
            blocks[-1].append(line.rstrip())
    parts = ["\n".join(b).strip() for b in blocks]
    return "\n\n".join(p for p in parts if p)


def _fit(sections: list[tuple[str, str, str]], limit: int) -> tuple[str, int, list[str]]:
    """Join the sections within `limit` characters, cutting the one that overflows."""
    rendered = [(label, f"{heading}:\n{body}" if heading else body)
                for label, heading, body in sections]
    full = sum(len(text) for _, text in rendered) + 2 * max(0, len(rendered) - 1)
    out: list[str] = []
    used = 0
    shortened: list[str] = []
    for label, text in rendered:
        sep = 2 if out else 0
        room = limit - used - sep
        if len(text) <= room:
            out.append(text)
            used += sep + len(text)
            continue
        shortened.append(label)
        if room > 80 and not shortened[:-1]:
            out.append(_cap(text, room))
            used = limit
    return "\n\n".join(out), full, shortened


def _cap(text: str, limit: int) -> str:
    """`text` within `limit` characters, cut at a line or word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[:max(0, limit - 1)]
    for boundary in ("\n", " "):
        at = cut.rfind(boundary)
        if at >= limit // 2:
            cut = cut[:at]
            break
    return cut.rstrip() + "…"


def _join(items: tuple[str, ...]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
