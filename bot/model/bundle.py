"""Everything the engine needs to know about a model directory, read once at start-up.

Ours (`bot_model.json` records what the GGUF said) or a CTranslate2 directory converted
elsewhere, where the facts are spread over `generation_config.json`,
`tokenizer_config.json` and `hf_config.json`: the checkpoint's `config.json` under
another name, since CTranslate2 writes its own `config.json`, which lacks the context
window and end-token ids. One frozen `ModelBundle` keeps that guesswork out of the
engine, and broken files fail at start-up with a message that names the file.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bot.errors import UserFacingError
from bot.knobs import knobs_from_generation_config
from bot.model.chat import ChatTemplate, ChatTemplateError
from bot.model.model_bin import scalars
from bot.model.reasoning import strip_reasoning
from bot.model.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
    token_name,
    with_template_markers,
)

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH: Final = 4096
BOT_MODEL_FORMAT: Final = 1
#: The checkpoint's own config.json, kept under this name beside CTranslate2's.
HF_CONFIG: Final = "hf_config.json"
# transformers writes this sentinel (int(1e30)) when a tokenizer has no length limit.
_NO_LIMIT: Final = 1_000_000

# Turn-end tokens that instruction-tuned models emit instead of (or before) their EOS.
_TURN_END_TOKENS: Final = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")


class ModelFilesError(UserFacingError, ValueError):
    """A model directory is missing a file or has one we cannot read."""


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """A loaded model directory: tokenizer, chat template and generation limits."""

    path: Path
    name: str
    tokenizer: Tokenizer
    chat: ChatTemplate
    context_length: int
    end_token_ids: tuple[int, ...]
    bos_token_id: int | None
    end_tokens: tuple[str, ...] = ()
    """The end tokens as vocabulary strings (CT2's `end_token` takes either)."""
    add_bos_token: bool = False
    """Whether the tokenizer expects a BOS the chat template did not write."""
    quantization: str | None = None
    """The weight type recorded at conversion time (ours only; CT2 does not record it)."""
    source: str | None = None
    """The GGUF file our converter read, or None for directories converted elsewhere."""
    num_layers: int | None = None
    kind: str = "ctranslate2"
    """`converted` for our converter's output, `ctranslate2` for others."""

    def encode_chat(
        self,
        system: str | None,
        user: str,
        history: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        """Prompt ids for a conversation: only the template's own markers are control ids.

        The persona, every earlier turn and the prompt are plain text to the
        tokenizer, whatever they contain, so nobody can forge a system turn by
        typing `<|im_start|>system`. A BOS is added only if one is due and missing.
        Earlier replies go in without their `<think>` reasoning: the model must not
        read old thoughts as things it said, and templates that cut them out
        themselves would otherwise rewrite message text.
        """
        history = [
            (role, strip_reasoning(text) if role == "assistant" else text)
            for role, text in history
        ]
        rendered = self.chat.render_spans(system, user, history)
        return self.with_bos(self.tokenizer.encode_template(rendered.text, rendered.plain_spans))

    def with_bos(self, ids: list[int]) -> list[int]:
        """`ids` with a BOS in front when the tokenizer expects one the template omitted."""
        if (
            self.add_bos_token
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids.insert(0, self.bos_token_id)
        return ids


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any] | None:
    """A JSON object from `path`; None if absent and optional; errors name the file."""
    if not path.is_file():
        if required:
            raise ModelFilesError(
                f"The model directory lacks {path.name} (looked in {path.parent})."
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} should hold a JSON object.")
    return data


def _ids(value: Any) -> list[int]:
    """`eos_token_id` as a list: configs hold an int, a list of ints, or null."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _template_source(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The model's own chat template: `chat_template.jinja`, else tokenizer_config's."""
    jinja_path = model_dir / "chat_template.jinja"
    if jinja_path.is_file():
        try:
            return jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFilesError(f"Cannot read {jinja_path}: {exc}") from exc
    value = tokenizer_config.get("chat_template")
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}]
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        default = named.get("default")
        if isinstance(default, str):
            return default
    return None


def guess_template(
    tokenizer: Tokenizer, hf_config: dict[str, Any] | None = None, model_dir: Path | None = None
) -> str:
    """Pick a built-in template from the vocabulary when a directory ships none.

    The vocabulary tells Llama 3 (`<|eot_id|>`) from 3.1 and later (`<|eom_id|>`, where
    3.0 has a reserved token), ChatML models, and Mistral v0.3 (`[INST]` as a control
    token). Llama 2 and Mistral v0.1/v0.2 share a 32,000-piece SentencePiece layout
    but not a prompt layout, so only the checkpoint's config (`model_type`) can tell
    them apart; without it we refuse rather than give Mistral a `<<SYS>>` block.
    """
    if tokenizer.token_to_id("<|eot_id|>") is not None:
        rope = (hf_config or {}).get("rope_scaling") or {}
        if tokenizer.token_to_id("<|eom_id|>") is not None or (
            isinstance(rope, dict) and rope.get("rope_type") == "llama3"
        ):
            return "llama3.1"
        return "llama3"
    if tokenizer.token_to_id("<|im_start|>") is not None:
        return "chatml"
    if tokenizer.token_to_id("[INST]") is not None:
        return "mistral-v3"
    if isinstance(tokenizer, SentencePieceTokenizer) or tokenizer.token_to_id("<s>") is not None:
        model_type = (hf_config or {}).get("model_type")
        if model_type == "mistral":
            return "mistral"
        if model_type == "llama":
            return "llama2"
        where = model_dir if model_dir is not None else "The model directory"
        raise ModelFilesError(
            f"{where} ships no chat template, and nothing in it says whether it is Llama 2 "
            "or Mistral (same vocabulary layout, different prompt layout). Add the "
            "checkpoint's chat template as chat_template.jinja (or tokenizer_config.json "
            f"with its chat_template), or the checkpoint's config.json as {HF_CONFIG}."
        )
    log.warning("No chat template and no known special tokens; assuming ChatML.")
    return "chatml"


def _window(value: Any) -> int | None:
    """A usable context size, or None for absent values and "no limit" placeholders."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if 0 < value < _NO_LIMIT else None


def _context_length(
    model_dir: Path,
    bot_model: dict[str, Any] | None,
    hf_config: dict[str, Any] | None,
    tokenizer_config: dict[str, Any],
) -> int:
    """Context window: ours, else the checkpoint's, else model_max_length, else 4,096."""
    candidates = [
        (bot_model or {}).get("context_length"),
        (hf_config or {}).get("max_position_embeddings"),
        tokenizer_config.get("model_max_length"),
    ]
    for value in candidates:
        window = _window(value)
        if window is not None:
            return window
    log.warning(
        "%s: no context window found (copy the checkpoint's config.json there as %s, "
        "or set BOT_CONTEXT_LENGTH); assuming %d tokens",
        model_dir, HF_CONFIG, DEFAULT_CONTEXT_LENGTH,
    )
    return DEFAULT_CONTEXT_LENGTH


def _require_rope_scaling(model_dir: Path, hf_config: dict[str, Any] | None) -> None:
    """Refuse weights converted without the llama3 RoPE scaling their config asks for.

    CTranslate2's own converter (4.8) writes neither the factor nor the original
    window, so the runtime scales no frequency and Llama 3.1/3.2 generate wrong text.
    """
    rope = (hf_config or {}).get("rope_scaling") or (hf_config or {}).get("rope_parameters")
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) != "llama3":
        return
    try:
        stored = scalars(model_dir / "model.bin", "decoder/layer_0/self_attention/")
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFilesError(f"Cannot read {model_dir / 'model.bin'}: {exc}") from exc
    if stored.get("rotary_scaling_factor", 1.0) <= 1.0 or not stored.get(
        "original_max_position_embeddings"
    ):
        raise ModelFilesError(
            f"{model_dir}: {HF_CONFIG} asks for Llama 3.1's RoPE scaling, but model.bin "
            "was converted without it (CTranslate2's own converter drops it) and would "
            "generate wrong text. Convert the checkpoint again with `python -m bot convert "
            "CHECKPOINT_DIR DEST`."
        )


def load_model_bundle(model_dir: Path, *, context_length: int | None = None) -> ModelBundle:
    """Read a CTranslate2 model directory (ours or converted elsewhere) into a bundle.

    `context_length`, when given (`BOT_CONTEXT_LENGTH`), overrides what the files say.
    """
    if not model_dir.is_dir():
        raise ModelFilesError(f"Model directory not found: {model_dir}")
    if not (model_dir / "model.bin").is_file():
        raise ModelFilesError(
            f"{model_dir} has no model.bin: it is not a CTranslate2 model directory."
        )
    ct2_config = _read_json(model_dir / "config.json", required=True) or {}
    bot_model = _read_json(model_dir / "bot_model.json")
    if bot_model is not None and bot_model.get("format_version") != BOT_MODEL_FORMAT:
        raise ModelFilesError(
            f"{model_dir / 'bot_model.json'} has format_version "
            f"{bot_model.get('format_version')!r}; this bot reads {BOT_MODEL_FORMAT}. "
            "Convert the model again."
        )
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json") or {}
    hf_config = _read_json(model_dir / HF_CONFIG)
    _require_rope_scaling(model_dir, hf_config)
    generation_config = _read_json(model_dir / "generation_config.json") or {}
    try:
        tokenizer = load_tokenizer(model_dir)
    except TokenizerError as exc:
        raise ModelFilesError(str(exc)) from exc

    bos_token = tokenizer.bos_token or token_name(ct2_config.get("bos_token"))
    eos_token = tokenizer.eos_token or token_name(ct2_config.get("eos_token"))

    source = _template_source(model_dir, tokenizer_config)
    try:
        if source is not None:
            chat = ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)
        else:
            kind = guess_template(tokenizer, hf_config, model_dir)
            log.info("%s ships no chat template; using the built-in %s one", model_dir, kind)
            chat = ChatTemplate.builtin(kind, bos_token=bos_token, eos_token=eos_token)
    except ChatTemplateError as exc:
        raise ModelFilesError(f"{model_dir}: {exc}") from exc
    # Markers the template writes are control tokens even where the files ship them
    # as ordinary added tokens or user-defined pieces (people's text must never
    # encode to them).
    tokenizer = with_template_markers(
        tokenizer, lambda text: chat.uses(text) or text in (bos_token, eos_token)
    )

    end_ids: list[int] = []

    def add_end(token_id: int | None) -> None:
        if token_id is None or not 0 <= token_id < tokenizer.vocab_size:
            return
        if token_id not in end_ids:
            end_ids.append(token_id)

    for name in (bot_model or {}).get("end_tokens", []) or []:
        if isinstance(name, str):
            add_end(tokenizer.token_to_id(name))
    for token_id in _ids(generation_config.get("eos_token_id")):
        add_end(token_id)
    for token_id in _ids((hf_config or {}).get("eos_token_id")):
        add_end(token_id)
    for name in (eos_token, token_name(tokenizer_config.get("eos_token"))):
        if name:
            add_end(tokenizer.token_to_id(name))
    for name in _TURN_END_TOKENS:
        if chat.uses(name):
            add_end(tokenizer.token_to_id(name))
    if not end_ids:
        raise ModelFilesError(
            f"{model_dir}: no end-of-sequence token found in bot_model.json, "
            f"generation_config.json, {HF_CONFIG}, config.json or tokenizer_config.json."
        )

    if bot_model is not None and "add_bos_token" in bot_model:
        add_bos = bool(bot_model["add_bos_token"])
    else:
        add_bos = bool(tokenizer_config.get("add_bos_token", False))
    bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
    architecture = (bot_model or {}).get("architecture") or {}
    num_layers = architecture.get("n_layers") or (hf_config or {}).get("num_hidden_layers")
    name = (bot_model or {}).get("name") or model_dir.name
    return ModelBundle(
        path=model_dir,
        name=str(name),
        tokenizer=tokenizer,
        chat=chat,
        context_length=context_length
        or _context_length(model_dir, bot_model, hf_config, tokenizer_config),
        end_token_ids=tuple(end_ids),
        bos_token_id=bos_id,
        end_tokens=tuple(tokenizer.id_to_token(i) for i in end_ids),
        add_bos_token=add_bos,
        quantization=(bot_model or {}).get("quantization"),
        source=(bot_model or {}).get("source"),
        num_layers=int(num_layers) if isinstance(num_layers, int) else None,
        kind="converted" if bot_model is not None else "ctranslate2",
    )


def read_generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The knob values the model's `generation_config.json` recommends ({} without one).

    Read at every settings lookup (a stat, and a parse only when the file changed),
    so a model that is not loaded yet shows its defaults too.
    """
    path = model_dir / "generation_config.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _GENERATION_DEFAULTS.get(path)
    if cached is not None and cached[0] == stamp:
        return dict(cached[1])
    try:
        config = _read_json(path) or {}
    except ModelFilesError as exc:
        log.warning("%s; the model's recommended sampling is ignored", exc)
        config = {}
    defaults = knobs_from_generation_config(config)
    _GENERATION_DEFAULTS[path] = (stamp, defaults)
    return dict(defaults)


_GENERATION_DEFAULTS: dict[Path, tuple[int, dict[str, Any]]] = {}


def read_context_length(model_dir: Path) -> int:
    """The context window a directory's files state, without loading its tokenizer.

    For listing models that are not loaded yet (`/model list`); the same order
    `load_model_bundle` follows, so the number shown is the one a load will use.
    """
    bot_model = _read_json(model_dir / "bot_model.json")
    hf_config = _read_json(model_dir / HF_CONFIG)
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json") or {}
    return _context_length(model_dir, bot_model, hf_config, tokenizer_config)
