"""How one token is shown to people: its text, or its bytes when it is part of a character.

Shared by `/tokens`, the probabilities view and the confidence view, so a token
reads the same everywhere. Tokens that are only part of a character (an emoji's
bytes in a byte-level vocabulary) are shown as their bytes, ``<0xF0>``, since
their text alone is empty: otherwise "20 tokens" would show 12 pieces.
"""

from __future__ import annotations

import re
from functools import cache

from bot.model.tokenizer import Tokenizer

_BYTE_TOKEN = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")

#: Whitespace made visible in tables and charts (a leading space is most of a token's meaning).
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (used by Llama 3, SmolLM2 …): character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(raw: str) -> bytes | None:
    """The bytes a vocabulary entry stands for, when its spelling says so; else None."""
    if _BYTE_TOKEN.fullmatch(raw):  # SentencePiece byte fallback (Llama 2, Mistral)
        return bytes(int(raw[i + 3: i + 5], 16) for i in range(0, len(raw), 6))
    decoder = _byte_decoder()
    if raw and all(c in decoder for c in raw):
        return bytes(decoder[c] for c in raw)
    return None


def piece_label(tokenizer: Tokenizer, token_id: int, text: str) -> str:
    """What to show for one token: its text, or its bytes when it is part of a character."""
    raw = tokenizer.id_to_token(token_id)
    data = token_bytes(raw)
    if data is not None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Whole characters as text (a leading space stays a space), the rest as bytes.
            head = data[: exc.start].decode("utf-8")
            return head + "".join(f"<0x{b:02X}>" for b in data[exc.start:])
    if text and "\ufffd" not in text:
        return text
    return raw or f"<{token_id}>"


def visible(text: str) -> str:
    """`text` with spaces, newlines and tabs drawn (␣ ↵ ⇥), for one-token tables and charts."""
    return "".join(_VISIBLE.get(ch, ch) for ch in text) if text else "∅"


def token_text_in_context(tokenizer: Tokenizer, context: list[int], token_id: int) -> str:
    """The text `token_id` adds after `context` (SentencePiece spacing depends on what precedes).

    Decodes a short window of the context with and without the token; an
    incomplete character comes back as U+FFFD, which `piece_label` turns into bytes.
    """
    tail = context[-4:]
    before = tokenizer.decode(tail)
    after = tokenizer.decode([*tail, token_id])
    return after[len(before):] if after.startswith(before) else tokenizer.decode([token_id])
