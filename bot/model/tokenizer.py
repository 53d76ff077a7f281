"""One tokenizer interface over the two formats Llama-family checkpoints ship with.

Hugging Face checkpoints carry either a `tokenizer.json` (the `tokenizers` library;
Llama 3, SmolLM, and anything our GGUF converter writes) or a SentencePiece
`tokenizer.model` (Llama 2, Mistral). The engine must not care which: it needs ids for a
rendered chat prompt, the token strings CTranslate2's vocabulary uses, and cheap,
deterministic decoding for incremental streaming.

Two rules hold for both backends, because the chat template already writes every
special token into the prompt text:

* `encode` never adds a BOS token, and special-token strings in the text (`<s>`,
  `<|im_start|>`, `<|eot_id|>`, a control `[INST]`) become their single ids;
* `decode` drops special/control tokens, so they never reach a user.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
        """Ids for `text`: no automatic BOS, special-token strings map to their ids."""
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


def _token_content(value: Any) -> str | None:
    """A special token from `tokenizer_config.json`: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class HFTokenizer:
    """A `tokenizers` (tokenizer.json) backend.

    The `tokenizers` library already splits added tokens out of the text before the
    model runs, so special-token strings map to their ids; `add_special_tokens=False`
    turns off the post-processor, which is what would prepend a BOS (Llama 3).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self._tok = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_token: str | None = bos_token
        self.eos_token: str | None = eos_token
        added = tokenizer.get_added_tokens_decoder()
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

    def encode(self, text: str) -> list[int]:
        """Ids for `text` without BOS; added tokens in the text map to their ids."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

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

    SentencePiece never maps control-token strings in the text to their ids, so
    `encode` splits the text on them first and encodes the pieces between separately.
    Each piece gets SentencePiece's usual dummy-prefix space, which matches Meta's and
    Mistral's reference prompt encoding (and transformers' "legacy" Llama tokenizer).
    """

    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
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
        self._special_to_id = special
        self.special_tokens: frozenset[str] = frozenset(special)
        self.special_ids: frozenset[int] = frozenset(special.values())
        self._split_re: re.Pattern[str] | None = (
            re.compile(
                "(" + "|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)) + ")"
            )
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

    def encode(self, text: str) -> list[int]:
        """Ids for `text`, special-token strings mapped to single ids, no BOS."""
        if self._split_re is None:
            return [int(i) for i in self._sp.encode(text)]
        ids: list[int] = []
        for part in self._split_re.split(text):
            if not part:
                continue
            special = self._special_to_id.get(part)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(int(i) for i in self._sp.encode(part))
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
        bos = _token_content(data.get("bos_token"))
        eos = _token_content(data.get("eos_token"))
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
