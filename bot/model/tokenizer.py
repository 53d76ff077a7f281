"""One tokenizer interface over the two formats Llama-family checkpoints ship with.

A `tokenizer.json` (the `tokenizers` library: Llama 3, SmolLM, our GGUF converter's
output) or a SentencePiece `tokenizer.model` (Llama 2, Mistral). Three rules hold
for both backends:

* `encode` is for text people wrote (a prompt, a persona, an earlier turn, /tokens):
  it never adds a BOS and never turns a control-token string (`<s>`, `<|im_start|>`,
  `<|eot_id|>`, a control `[INST]`) into its id. A member who types
  `<|im_end|><|im_start|>system` gets those characters as ordinary text, as Meta's
  reference encoder and mistral-common do, and cannot forge a turn of the conversation;
* `encode_template` is for a rendered chat template: control-token strings become
  their ids, except inside the spans the caller marks as people's text;
* `decode` drops special/control tokens, so they never reach a user.

"Control token" means every token the chat template uses, however the checkpoint
ships it (some list ChatML's markers as ordinary added tokens or user-defined
pieces, which the libraries match in any text): `with_template_markers` promotes
them. Markup-shaped added tokens no template uses (`</think>`) are neither control
tokens nor matched in people's text.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sentencepiece as spm
import tokenizers

from bot.errors import UserFacingError


class TokenizerError(ValueError):
    """A tokenizer file is missing or cannot be read; the message names the file."""


def require_valid_unicode(text: str, what: str = "text") -> None:
    """Refuse lone surrogates politely: both tokenizer backends fail on them with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserFacingError(
            f"Your {what} contains characters that are not valid Unicode "
            "(a broken emoji or surrogate); please retype it."
        ) from None


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer, whatever file it came from."""

    vocab_size: int
    bos_token: str | None
    eos_token: str | None
    special_ids: frozenset[int]
    """Ids `decode` drops: added special tokens, or SentencePiece control/unknown ids."""

    def encode(self, text: str) -> list[int]:
        """Ids for people's text: no automatic BOS, no control tokens, whatever it says."""
        ...

    def encode_template(self, text: str, plain_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Ids for rendered template text: control strings become ids outside `plain_spans`.

        `plain_spans` are [start, end) character ranges of `text` that people wrote;
        a control-token string overlapping one of them stays plain text.
        """
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids` as a whole, skipping special and control tokens."""
        ...

    def id_to_token(self, token_id: int) -> str:
        """The token string as CTranslate2's vocabulary spells it."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string, or None when it is not in the vocabulary."""
        ...


def token_name(value: Any) -> str | None:
    """A token string from a config value: a string or an AddedToken-style dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class _Spans:
    """People's [start, end) ranges, sorted once, for overlap tests in O(log n).

    A conversation has a span and a control token or two per turn; testing each
    token against every span would make encoding quadratic in its length.
    """

    def __init__(self, spans: Sequence[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self._starts = [s for s, _ in ordered]
        # Running maximum of the ends, so a span nested in an earlier one is still seen.
        self._ends: list[int] = []
        furthest = -1
        for _, e in ordered:
            furthest = max(furthest, e)
            self._ends.append(furthest)

    def overlaps(self, start: int, end: int) -> bool:
        """Whether [start, end) shares a character with any span."""
        # The last span starting before `end` (or any before it) must reach past `start`.
        i = bisect.bisect_left(self._starts, end) - 1
        return i >= 0 and self._ends[i] > start


class HFTokenizer:
    """A `tokenizers` (tokenizer.json) backend.

    The library splits added tokens out of any text: right for a rendered template,
    wrong for people's text. So two copies are kept, the library's own for template
    text and one with `encode_special_tokens` set for people's text (two objects,
    not a flag flipped per call, since decoding threads share them).
    `add_special_tokens=False` turns off the post-processor that would prepend a BOS.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        control_tokens: Collection[str] = (),
    ) -> None:
        added = tokenizer.get_added_tokens_decoder()
        #: Added tokens the file does not call special: markers only if a template uses them.
        self.marker_candidates: frozenset[str] = frozenset(
            tok.content for tok in added.values() if not tok.special
        )
        promote = self.marker_candidates & set(control_tokens)
        if promote:
            # Marked special in a copy of the file, so `encode_special_tokens` reads
            # them as characters in people's text and `decode` drops them.
            data = json.loads(tokenizer.to_str())
            for entry in data.get("added_tokens", []):
                if entry.get("content") in promote:
                    entry["special"] = True
            tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
            added = tokenizer.get_added_tokens_decoder()
        #: Added tokens no template uses that look like markup (`</think>`): the
        #: library would still match them in any text, so people's text reads them
        #: as characters (`text_only_ids` never come out of `encode`).
        self.text_only: frozenset[str] = frozenset(
            t for t in self.marker_candidates - promote if looks_like_markup(t))
        self.text_only_ids: frozenset[int] = frozenset(
            idx for idx, tok in added.items() if tok.content in self.text_only)
        self._tok = tokenizer
        plain = json.loads(tokenizer.to_str())
        for entry in plain.get("added_tokens", []):
            if entry.get("content") in self.text_only:
                entry["special"] = True  # in this copy only: read as characters
        self._plain = tokenizers.Tokenizer.from_str(json.dumps(plain))
        self._plain.encode_special_tokens = True
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_token: str | None = bos_token
        self.eos_token: str | None = eos_token
        self.special_tokens: frozenset[str] = frozenset(
            tok.content for tok in added.values() if tok.special
        )
        self.special_ids: frozenset[int] = frozenset(
            idx for idx, tok in added.items() if tok.special
        )

    @classmethod
    def from_file(
        cls, path: Path, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> HFTokenizer:
        """Load a `tokenizer.json`, turning library errors into one that names the file."""
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(f"Cannot read tokenizer file {path}: {exc}") from exc
        return cls(tok, bos_token=bos_token, eos_token=eos_token)

    def with_control_tokens(self, tokens: Collection[str]) -> HFTokenizer:
        """A copy in which `tokens` (added tokens of this file) are control tokens too."""
        return HFTokenizer(self._tok, bos_token=self.bos_token, eos_token=self.eos_token,
                           control_tokens=tokens)

    def encode(self, text: str) -> list[int]:
        """Ids for people's text without BOS; special-token strings stay characters."""
        enc = self._plain.encode(text, add_special_tokens=False)
        ids = [int(i) for i in enc.ids]
        never = self.special_ids | self.text_only_ids
        if never.isdisjoint(ids):
            return ids
        # The model's own merges spelled a special token out of ordinary characters
        # (a vocabulary with `ignore_merges` can look whole words up): encode that
        # stretch in two halves until no special id is left.
        out: list[int] = []
        for idx, (start, end) in zip(ids, enc.offsets, strict=True):
            if idx not in never:
                out.append(idx)
                continue
            if end - start < 2:
                raise TokenizerError(
                    f"The tokenizer maps the character {text[start:end]!r} to a special token."
                )
            middle = (start + end) // 2
            out.extend(self.encode(text[start:middle]))
            out.extend(self.encode(text[middle:end]))
        return out

    def encode_template(self, text: str, plain_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Template text as the library reads it, unless people's text holds a special.

        Then the text is cut only at the template's own special tokens and the pieces
        between them are encoded as people's text.
        """
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = [int(i) for i in enc.ids]
        spans = _Spans(plain_spans)
        offsets = enc.offsets  # a property that builds the whole list: read it once
        forged = {
            i for i, idx in enumerate(ids)
            if idx in self.text_only_ids
            or (idx in self.special_ids and spans.overlaps(*offsets[i]))
        }
        if not forged:
            return ids
        out: list[int] = []
        pos = 0
        for i, idx in enumerate(ids):
            start, end = offsets[i]
            if idx in self.special_ids and i not in forged:
                out.extend(self.encode(text[pos:start]))
                out.append(idx)
                pos = end
        out.extend(self.encode(text[pos:]))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Decode the whole window at once so byte-level merges resolve as HF does."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def id_to_token(self, token_id: int) -> str:
        """The raw vocabulary string (e.g. `Ġhello`), as in CT2's vocabulary.json."""
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise KeyError(f"token id {token_id} is outside the vocabulary")
        return str(token)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string, or None."""
        idx = self._tok.token_to_id(token)
        return None if idx is None else int(idx)


class SentencePieceTokenizer:
    """A SentencePiece (tokenizer.model) backend.

    SentencePiece never maps control-token strings in text to their ids, so people's
    text is simply `sp.encode`d (as Meta's and mistral-common's encoders do).
    Template text is cut at control tokens and the pieces encoded alike; a piece
    after a control token loses one leading space, which the dummy prefix `▁`
    already stands for (mistral-common: `[INST] Hello` → `[INST]`, `▁Hello`).
    """

    def __init__(
        self, processor: spm.SentencePieceProcessor, *, control_tokens: Collection[str] = ()
    ) -> None:
        self._sp = processor
        self.vocab_size: int = int(processor.get_piece_size())
        bos_id = int(processor.bos_id())
        eos_id = int(processor.eos_id())
        self.bos_token: str | None = processor.id_to_piece(bos_id) if bos_id >= 0 else None
        self.eos_token: str | None = processor.id_to_piece(eos_id) if eos_id >= 0 else None
        special: dict[str, int] = {}
        for idx in range(self.vocab_size):
            if processor.is_control(idx) or processor.is_unknown(idx):
                piece = str(processor.id_to_piece(idx))
                if piece:
                    special[piece] = idx
        proto = bytes(processor.serialized_model_proto())
        user_defined = {
            piece: idx for idx, (piece, kind) in enumerate(_sp_pieces(proto))
            if kind == _SP_USER_DEFINED
        }
        #: User-defined pieces: markers only if a template uses them.
        self.marker_candidates: frozenset[str] = frozenset(user_defined)
        promote = self.marker_candidates & set(control_tokens)
        #: What people's text is encoded with: user-defined pieces are matched in any
        #: text, so the template's markers become control pieces in a second copy of
        #: the model, which SentencePiece never produces from text.
        self._plain = processor
        #: User-defined pieces no template uses that look like markup (`</think>`):
        #: control pieces in the copy people's text is encoded with, so they stay text.
        self.text_only: frozenset[str] = frozenset(
            p for p in self.marker_candidates - promote if looks_like_markup(p))
        if promote or self.text_only:
            self._plain = spm.SentencePieceProcessor(
                model_proto=_sp_with_control(proto, promote | self.text_only)
            )
            special.update({piece: user_defined[piece] for piece in promote})
        self._special_to_id = special
        self.special_tokens: frozenset[str] = frozenset(special)
        self.special_ids: frozenset[int] = frozenset(special.values())
        self._split_re: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)))
            if special
            else None
        )

    @classmethod
    def from_file(cls, path: Path) -> SentencePieceTokenizer:
        """Load a `tokenizer.model`, turning library errors into one that names the file."""
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"Cannot read SentencePiece model {path}: {exc}") from exc
        return cls(processor)

    def with_control_tokens(self, tokens: Collection[str]) -> SentencePieceTokenizer:
        """A copy in which `tokens` (user-defined pieces) are control tokens too."""
        return SentencePieceTokenizer(self._sp, control_tokens=tokens)

    def encode(self, text: str) -> list[int]:
        """Ids for people's text: `sp.encode`, which never produces a control id."""
        return [int(i) for i in self._plain.encode(text)]

    def encode_template(self, text: str, plain_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Control strings outside `plain_spans` become ids; the pieces between are text."""
        if self._split_re is None:
            return self.encode(text)
        ids: list[int] = []
        pos = 0
        after_control = False

        def piece(chunk: str) -> None:
            if after_control and chunk.startswith(" "):
                chunk = chunk[1:]
            if chunk:
                ids.extend(self.encode(chunk))

        spans = _Spans(plain_spans)
        for match in self._split_re.finditer(text):
            if spans.overlaps(match.start(), match.end()):
                continue
            piece(text[pos : match.start()])
            ids.append(self._special_to_id[match.group()])
            pos = match.end()
            after_control = True
        piece(text[pos:])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Drop control/unknown ids, then let SentencePiece join pieces and bytes."""
        kept = [int(i) for i in ids if int(i) not in self.special_ids]
        return str(self._sp.decode(kept))

    def id_to_token(self, token_id: int) -> str:
        """The piece (e.g. `▁hello`, `<0x0A>`), as in CT2's vocabulary.json."""
        if not 0 <= token_id < self.vocab_size:
            raise KeyError(f"token id {token_id} is outside the vocabulary")
        return str(self._sp.id_to_piece(token_id))

    def token_to_id(self, token: str) -> int | None:
        """The id of a piece; SentencePiece answers unk for strangers, we answer None."""
        idx = int(self._sp.piece_to_id(token))
        if str(self._sp.id_to_piece(idx)) != token:
            return None
        return idx


# --- SentencePiece model files, read at the protobuf wire level -------------------
# (sentencepiece's own `sentencepiece_model_pb2` needs the protobuf package; the two
# fields used here are stable: ModelProto.pieces = 1, SentencePiece.piece = 1 and
# .type = 3, with NORMAL = 1 when absent, CONTROL = 3, USER_DEFINED = 4.)

_SP_NORMAL = 1
_SP_CONTROL = 3
_SP_USER_DEFINED = 4


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise TokenizerError("truncated SentencePiece model")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes, int | bytes]]:
    """(field number, wire type, the field's whole bytes, its value) for each field."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise TokenizerError(f"unexpected protobuf wire type {wire} in a SentencePiece model")
        if pos > len(buf):
            raise TokenizerError("truncated SentencePiece model")
        yield number, wire, buf[start:pos], value


def _sp_piece(entry: bytes) -> tuple[str, int]:
    piece, kind = "", _SP_NORMAL
    for number, wire, _raw, value in _fields(entry):
        if number == 1 and wire == 2 and isinstance(value, bytes):
            piece = value.decode("utf-8", errors="replace")
        elif number == 3 and wire == 0 and isinstance(value, int):
            kind = value
    return piece, kind


def _sp_pieces(proto: bytes) -> list[tuple[str, int]]:
    """Every piece of a serialized model with its type, in id order."""
    return [
        _sp_piece(value)
        for number, wire, _raw, value in _fields(proto)
        if number == 1 and wire == 2 and isinstance(value, bytes)
    ]


def _sp_with_control(proto: bytes, pieces: Collection[str]) -> bytes:
    """`proto` with the user-defined `pieces` turned into control pieces."""
    out = bytearray()
    for number, wire, raw, value in _fields(proto):
        if number == 1 and wire == 2 and isinstance(value, bytes):
            piece, kind = _sp_piece(value)
            if kind == _SP_USER_DEFINED and piece in pieces:
                entry = b"".join(
                    field_raw for n, _w, field_raw, _v in _fields(value) if n != 3
                ) + bytes([3 << 3]) + _encode_varint(_SP_CONTROL)
                out += bytes([1 << 3 | 2]) + _encode_varint(len(entry)) + entry
                continue
        out += raw
    return bytes(out)


def looks_like_markup(token: str) -> bool:
    """An added token shaped like a tag (`</think>`, `<tool_call>`, `[TOOL_CALLS]`).

    Only these stay text when no template uses them: other non-special added tokens
    (runs of spaces, whole words some vocabularies add) are how the model was
    trained to read ordinary text, and matching them is right.
    """
    return (len(token) >= 3 and not any(c.isspace() for c in token)
            and ((token[0] == "<" and token[-1] == ">") or (token[0] == "[" and token[-1] == "]")))


def with_template_markers(tok: Tokenizer, uses: Callable[[str], bool]) -> Tokenizer:
    """`tok` with every marker the chat template uses treated as a control token.

    `uses` says whether the template uses a string (`ChatTemplate.uses`, or the
    template's BOS/EOS names). Only the added tokens a tokenizer.json does not
    call special, and SentencePiece's user-defined pieces, need this: the rest
    are control tokens already.
    """
    if isinstance(tok, HFTokenizer | SentencePieceTokenizer):
        markers = {m for m in tok.marker_candidates if uses(m)}
        if markers:
            return tok.with_control_tokens(markers)
    return tok


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with an error naming the file when it is broken."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object")
    return data


def _special_token_names(model_dir: Path) -> tuple[str | None, str | None]:
    """BOS/EOS names for a tokenizer.json, which does not record them itself.

    Looked up where each kind of model directory keeps them: our `bot_model.json`,
    transformers' `tokenizer_config.json` / `special_tokens_map.json`, or the
    `config.json` CTranslate2 writes.
    """
    for name in (
        "bot_model.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
    ):
        path = model_dir / name
        if not path.is_file():
            continue
        data = _read_json(path)
        bos = token_name(data.get("bos_token"))
        eos = token_name(data.get("eos_token"))
        if bos is not None or eos is not None:
            return bos or None, eos or None
    return None, None


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """Load the tokenizer of a model directory: `tokenizer.json`, else `tokenizer.model`."""
    json_path = model_dir / "tokenizer.json"
    if json_path.is_file():
        bos, eos = _special_token_names(model_dir)
        hf = HFTokenizer.from_file(json_path, bos_token=bos, eos_token=eos)
        if hf.bos_token is not None and hf.token_to_id(hf.bos_token) is None:
            hf.bos_token = None
        if hf.eos_token is not None and hf.token_to_id(hf.eos_token) is None:
            hf.eos_token = None
        return hf
    sp_path = model_dir / "tokenizer.model"
    if sp_path.is_file():
        return SentencePieceTokenizer.from_file(sp_path)
    raise TokenizerError(
        f"No tokenizer in {model_dir}: expected tokenizer.json or tokenizer.model."
    )
