"""Convert a GGUF Llama checkpoint into a CTranslate2 model directory, without torch.

CTranslate2's own converters go through transformers and torch, which we do not want
to install for one small embedded model. GGUF holds everything needed: the weights
(dequantized with `gguf.quants`), the architecture and the tokenizer in its metadata.

Two layout facts matter (see docs/engine notes): llama.cpp stores q/k projections in
Meta's interleaved rotary layout, so the spec uses `rotary_interleave=True` and the
weights are kept as they are; and tied models have no `output.weight`, so the output
projection reuses the embedding matrix.

The output directory is written to a temporary sibling and renamed at the end, so an
interrupted conversion never leaves a half model where the bot would look for one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import gguf
import numpy as np
import numpy.typing as npt
from ctranslate2.specs import common_spec, transformer_spec

from bot.errors import UserFacingError

FORMAT_VERSION: Final = 1
QUANTIZATIONS: Final = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL: Final = 1
TOKEN_UNKNOWN: Final = 2
TOKEN_CONTROL: Final = 3
TOKEN_USER_DEFINED: Final = 4

_LLAMA3_SPLIT: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

FloatArray = npt.NDArray[np.float32]


class ConversionError(UserFacingError, ValueError):
    """The GGUF file cannot be converted; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class LlamaParams:
    """The architecture numbers a Llama decoder spec needs."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab_size: int
    context_length: int
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    head_dim: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The numbers as stored under `architecture` in bot_model.json."""
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "ffn": self.ffn,
            "vocab_size": self.vocab_size,
            "context_length": self.context_length,
            "rope_base": self.rope_base,
            "rms_eps": self.rms_eps,
        }


def build_llama_spec(
    params: LlamaParams,
    tensors: Mapping[str, FloatArray],
    vocabulary: Sequence[str],
    *,
    bos_token: str | None,
    eos_token: str | None,
    unk_token: str | None,
    rotary_interleave: bool = True,
) -> transformer_spec.TransformerDecoderModelSpec:
    """A CTranslate2 decoder spec from float arrays named as in llama.cpp.

    `tensors` uses GGUF names (`token_embd.weight`, `blk.0.attn_q.weight`, ...) with
    PyTorch's [out, in] shapes. Keep `rotary_interleave=True` for GGUF's q/k layout;
    weights from a transformers checkpoint need False. Shared with the test factory,
    which builds "converted elsewhere" models from random weights.
    """
    head_dim = params.head_dim
    if head_dim == params.d_model // params.n_heads:
        head_dim = None
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        params.n_layers,
        params.n_heads,
        activation=common_spec.Activation.SWISH,
        pre_norm=True,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=rotary_interleave,
        rotary_base=params.rope_base,
        num_heads_kv=None if params.n_kv_heads == params.n_heads else params.n_kv_heads,
        head_dim=head_dim,
    )
    decoder = spec.decoder
    decoder.scale_embeddings = False
    embeddings = tensors["token_embd.weight"]
    decoder.embeddings.weight = embeddings
    decoder.layer_norm.gamma = tensors["output_norm.weight"]
    # Tied models have no output.weight; the same array lets CT2 alias the variable.
    decoder.projection.weight = tensors.get("output.weight", embeddings)
    for i, layer in enumerate(decoder.layer):
        p = f"blk.{i}."
        attention = layer.self_attention
        attention.layer_norm.gamma = tensors[p + "attn_norm.weight"]
        attention.linear[0].weight = np.concatenate(
            [
                tensors[p + "attn_q.weight"],
                tensors[p + "attn_k.weight"],
                tensors[p + "attn_v.weight"],
            ],
            axis=0,
        )
        attention.linear[1].weight = tensors[p + "attn_output.weight"]
        layer.ffn.layer_norm.gamma = tensors[p + "ffn_norm.weight"]
        layer.ffn.linear_0.weight = tensors[p + "ffn_gate.weight"]
        layer.ffn.linear_0_noact.weight = tensors[p + "ffn_up.weight"]
        layer.ffn.linear_1.weight = tensors[p + "ffn_down.weight"]
    spec.config.bos_token = bos_token or ""
    spec.config.eos_token = eos_token or ""
    spec.config.unk_token = unk_token or ""
    spec.config.layer_norm_epsilon = params.rms_eps
    spec.register_vocabulary(list(vocabulary))
    return spec


class _Metadata:
    """Typed access to a GGUFReader's key/value fields, with errors naming the file."""

    def __init__(self, reader: gguf.GGUFReader, path: Path) -> None:
        self._fields = reader.fields
        self._path = path

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        return field.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConversionError(f"{self._path.name} lacks the GGUF metadata key {key!r}.")
        return value


def _read_params(meta: _Metadata, n_tokens: int) -> LlamaParams:
    """Architecture numbers from `llama.*` metadata."""
    d_model = int(meta.require("llama.embedding_length"))
    n_heads = int(meta.require("llama.attention.head_count"))
    key_length = meta.get("llama.attention.key_length")
    return LlamaParams(
        n_layers=int(meta.require("llama.block_count")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
        ffn=int(meta.require("llama.feed_forward_length")),
        vocab_size=int(meta.get("llama.vocab_size", n_tokens)),
        context_length=int(meta.get("llama.context_length", 4096)),
        rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        head_dim=None if key_length is None else int(key_length),
    )


def _dequantize(tensor: Any) -> FloatArray:
    """A GGUF tensor as float32 in PyTorch's [out, in] order (GGUF lists dims reversed)."""
    shape = tuple(int(d) for d in reversed(tensor.shape))
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    array = np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(shape))
    # F32 tensors come back as read-only views of the memory-mapped file, and
    # CTranslate2's int8 quantizer scales weights in place.
    return array if array.flags.writeable else array.copy()


def _byte_level_pre_tokenizer(pre: str) -> Any:
    """The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` name stands for."""
    from tokenizers import Regex, pre_tokenizers

    if pre in ("smollm", "default", "gpt2", "gpt-2", "starcoder", "refact"):
        steps: list[Any] = []
        if pre in ("smollm", "starcoder", "refact"):
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False))
        return pre_tokenizers.Sequence(steps)
    if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ConversionError(
        f"GGUF pre-tokenizer {pre!r} is not supported yet (known: smollm, gpt2, llama-bpe)."
    )


def build_byte_level_tokenizer(
    tokens: Sequence[str],
    token_types: Sequence[int],
    merges: Sequence[str],
    pre: str = "smollm",
) -> Any:
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's GPT-2 style BPE vocabulary.

    Control tokens become special added tokens (matched in text, skipped on decode);
    user-defined ones become plain added tokens. No post-processor: BOS is never added
    implicitly because chat templates write it themselves.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab = {tok: i for i, tok in enumerate(tokens)}
    merge_pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ConversionError(f"Malformed BPE merge in GGUF: {merge!r}")
        merge_pairs.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab, merge_pairs, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    added: list[AddedToken] = []
    for tok, kind in zip(tokens, token_types, strict=True):
        if kind == TOKEN_CONTROL:
            added.append(AddedToken(tok, special=True, normalized=False))
        elif kind == TOKEN_USER_DEFINED:
            added.append(AddedToken(tok, special=False, normalized=False))
    if added:
        tokenizer.add_tokens(added)
    return tokenizer


def tokenizer_from_gguf(gguf_path: Path) -> Any:
    """Only the `tokenizers.Tokenizer` that `convert_gguf` would write (no weights read)."""
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except Exception as exc:  # gguf raises ValueError, struct errors, OSError ...
        raise ConversionError(f"Cannot read GGUF file {gguf_path}: {exc}") from exc
    meta = _Metadata(reader, gguf_path)
    tokens: list[str] = list(meta.require("tokenizer.ggml.tokens"))
    return build_byte_level_tokenizer(
        tokens,
        list(meta.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))),
        list(meta.get("tokenizer.ggml.merges", [])),
        str(meta.get("tokenizer.ggml.pre", "default")),
    )


def _token_or_none(tokens: Sequence[str], idx: Any) -> str | None:
    """Token string for a metadata id, or None when absent/out of range."""
    if idx is None:
        return None
    i = int(idx)
    return tokens[i] if 0 <= i < len(tokens) else None


def _slug(text: str) -> str:
    """A short lowercase name for bot_model.json's `name`."""
    keep = "".join(c.lower() if c.isalnum() else "-" for c in text)
    return "-".join(part for part in keep.split("-") if part) or "model"


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    quantization: str = "int8",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert a llama-architecture GGUF file into a CTranslate2 model directory.

    Writes model.bin, config.json, vocabulary.json, tokenizer.json,
    chat_template.jinja (when the GGUF has one) and bot_model.json, atomically: the
    directory appears complete or not at all. An existing `out_dir` is replaced.
    """
    say = progress or (lambda _msg: None)
    if quantization not in QUANTIZATIONS:
        raise ConversionError(
            f"Unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}."
        )
    if not gguf_path.is_file():
        raise ConversionError(f"GGUF file not found: {gguf_path}")
    say(f"Reading {gguf_path.name}")
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except Exception as exc:  # gguf raises ValueError, struct errors, OSError ...
        raise ConversionError(f"Cannot read GGUF file {gguf_path}: {exc}") from exc
    meta = _Metadata(reader, gguf_path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConversionError(
            f"{gguf_path.name} is a {arch or 'unknown'!s} model; only the llama "
            "architecture (Llama, SmolLM, Mistral 7B, ...) can be converted."
        )
    tok_model = meta.get("tokenizer.ggml.model")
    if tok_model != "gpt2":
        raise ConversionError(
            f"{gguf_path.name} uses the {tok_model!r} tokenizer; only GPT-2 style "
            "byte-level BPE tokenizers (tokenizer.ggml.model = gpt2) are supported."
        )
    tokens: list[str] = list(meta.require("tokenizer.ggml.tokens"))
    token_types: list[int] = list(
        meta.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))
    )
    merges: list[str] = list(meta.get("tokenizer.ggml.merges", []))
    params = _read_params(meta, len(tokens))
    if meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise ConversionError(
            f"{gguf_path.name} uses RoPE scaling, which this converter does not support."
        )

    tensor_map = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensor_map:
        raise ConversionError(
            f"{gguf_path.name} has rope_freqs (Llama 3.1 RoPE scaling), not supported yet."
        )
    say(
        f"Architecture: {params.n_layers} layers, d_model {params.d_model}, "
        f"{params.n_heads} heads ({params.n_kv_heads} KV), vocab {len(tokens)}"
    )
    tensors: dict[str, FloatArray] = {}
    for name, tensor in tensor_map.items():
        tensors[name] = _dequantize(tensor)
    missing = [name for name in ("token_embd.weight", "output_norm.weight") if name not in tensors]
    if missing:
        raise ConversionError(f"{gguf_path.name} lacks tensors: {', '.join(missing)}")
    tied = "output.weight" not in tensors
    say(f"Dequantized {len(tensors)} tensors ({'tied' if tied else 'separate'} output)")

    bos_token = _token_or_none(tokens, meta.get("tokenizer.ggml.bos_token_id"))
    eos_token = _token_or_none(tokens, meta.get("tokenizer.ggml.eos_token_id"))
    unk_token = _token_or_none(tokens, meta.get("tokenizer.ggml.unknown_token_id"))
    try:
        spec = build_llama_spec(
            params,
            tensors,
            tokens,
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
        )
    except KeyError as exc:
        raise ConversionError(f"{gguf_path.name} lacks tensor {exc.args[0]}") from exc
    del tensors
    tokenizer = build_byte_level_tokenizer(
        tokens, token_types, merges, str(meta.get("tokenizer.ggml.pre", "default"))
    )
    chat_template = meta.get("tokenizer.chat_template")
    end_tokens: list[str] = []
    for candidate in (eos_token, "<|im_end|>", "<|eot_id|>"):
        wanted = candidate == eos_token or bool(chat_template and candidate in chat_template)
        if candidate and wanted and candidate not in end_tokens and candidate in tokens:
            end_tokens.append(candidate)
    bot_model: dict[str, Any] = {
        # "SmolLM2-135M-Instruct.Q4_1.gguf" -> "smollm2-135m-instruct": the file name
        # says more than general.name, which is often a training-run label.
        "name": _slug(gguf_path.name.split(".")[0]),
        "display_name": str(meta.get("general.name") or gguf_path.stem),
        "source": gguf_path.name,
        "quantization": quantization,
        "context_length": params.context_length,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "unk_token": unk_token,
        "end_tokens": end_tokens,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "license": meta.get("general.license"),
        "architecture": params.to_json(),
        "format_version": FORMAT_VERSION,
    }

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        say(f"Optimizing weights ({quantization})")
        spec.validate()
        spec.optimize(quantization=quantization)
        say("Writing model.bin")
        spec.save(str(tmp))
        tokenizer.save(str(tmp / "tokenizer.json"))
        if chat_template:
            (tmp / "chat_template.jinja").write_text(str(chat_template), encoding="utf-8")
        # Written last: its presence marks a complete directory.
        (tmp / "bot_model.json").write_text(
            json.dumps(bot_model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"Model ready in {out_dir}")
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, swapping out any existing directory with two renames."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
