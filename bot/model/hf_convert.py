"""Convert a Hugging Face checkpoint directory (safetensors) into a model directory, no torch.

Covers the Llama family (Llama 2, 3, 3.1, 3.2, Mistral, SmolLM) and Qwen2, built by
the GGUF route's spec code. Safetensors are memory-mapped and read one tensor at a
time, each layer quantized once filled, so peak memory stays near one copy of the
output. Transformers keep q/k in `rotate_half` layout (`rotary_interleave=False`).
Llama 3.1's `rope_scaling` is written into every attention layer (CTranslate2's own
converter drops it). The checkpoint's config.json is kept as `hf_config.json`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from bot.model.gguf_convert import (
    FORMAT_VERSION,
    ConversionError,
    FloatArray,
    LlamaParams,
    RopeScaling,
    build_llama_spec,
    check_quantization,
    check_shapes,
    save_model_dir,
)
from bot.model.tokenizer import TokenizerError, load_tokenizer

#: config.json `model_type`s this converter reads.
MODEL_TYPES: Final = ("llama", "mistral", "qwen2")
#: Files copied beside the weights when the checkpoint has them.
COPIED_FILES: Final = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)
_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")
}

_LAYER_NAMES: Final = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES: Final = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str | None:
    """The llama.cpp name of a transformers tensor name, or None for one we do not use."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        suffix = _LAYER_NAMES.get(parts[3])
        if suffix is not None:
            return f"blk.{parts[2]}.{suffix}"
    return None


def hf_name(name: str) -> str:
    """The transformers name of a llama.cpp tensor name (for messages)."""
    for hf, ours in _TOP_NAMES.items():
        if ours == name:
            return hf
    _, layer, suffix = name.split(".", 2)
    for hf, ours in _LAYER_NAMES.items():
        if ours == suffix:
            return f"model.layers.{layer}.{hf}"
    return name


class _Entry:
    """Where one tensor lies in a safetensors file."""

    __slots__ = ("dtype", "end", "path", "shape", "start")

    def __init__(
        self, path: Path, dtype: str, shape: tuple[int, ...], start: int, end: int
    ) -> None:
        self.path, self.dtype, self.shape, self.start, self.end = path, dtype, shape, start, end


def read_safetensors_header(path: Path) -> dict[str, _Entry]:
    """The tensors a safetensors file holds, by name, without reading their data."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its header")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise ValueError("header length out of range")
            header = json.loads(f.read(length))
        size = path.stat().st_size
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"Cannot read {path.name} as safetensors: {exc}") from exc
    base = 8 + length
    out: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            if gguf_name(name) is None:
                continue
            raise ConversionError(
                f"{path.name}: tensor {name} is stored as {dtype}; checkpoints convert from "
                f"{', '.join(_DTYPES)} weights (not pre-quantized ones)."
            )
        start, end = (int(v) for v in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        if base + end > size or end - start != int(np.prod(shape)) * _DTYPES[dtype].itemsize:
            raise ConversionError(f"{path.name}: tensor {name} lies outside the file or has "
                                  "the wrong size; the file is truncated or damaged.")
        out[name] = _Entry(path, dtype, shape, base + start, base + end)
    return out


def _load(entry: _Entry, start: int = 0, stop: int | None = None) -> FloatArray:
    """Rows [start, stop) of one tensor as a fresh, writable float32 array."""
    rows = entry.shape[0] if entry.shape else 1
    stop = rows if stop is None else stop
    row = int(np.prod(entry.shape[1:]))
    dtype = _DTYPES[entry.dtype]
    count = (stop - start) * row
    raw = np.fromfile(entry.path, dtype=dtype, count=count,
                      offset=entry.start + start * row * dtype.itemsize)
    if entry.dtype == "BF16":
        # bfloat16 is the upper half of a float32: little-endian, the odd halves.
        halves = np.zeros(2 * count, dtype=np.uint16)
        halves[1::2] = raw
        array: FloatArray = halves.view(np.float32)
    else:
        array = raw.astype(np.float32, copy=entry.dtype != "F32")
    return array.reshape((stop - start, *entry.shape[1:]) if entry.shape else ())


class SafetensorsWeights(Mapping[str, FloatArray]):
    """A checkpoint's tensors under llama.cpp names, each read only when asked for."""

    def __init__(self, entries: Mapping[str, _Entry]) -> None:
        self._entries = {
            ours: entry for name, entry in entries.items() if (ours := gguf_name(name))
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self._entries.items()}

    def __getitem__(self, name: str) -> FloatArray:
        return _load(self._entries[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def read_rows(self, name: str, start: int, stop: int) -> FloatArray:
        return _load(self._entries[name], start, stop)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _read_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{source} has no config.json: give a Hugging Face model directory or a .gguf file."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConversionError(f"{path} should hold a JSON object.")
    return config


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConversionError(f"config.json: {key} should be a positive number, not {value!r}.")
    return value


def rope_scaling_from_config(config: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """The rotary base and Llama 3.1 scaling, from wherever the config keeps them.

    Older configs have `rope_theta` at the top and `rope_scaling`; newer ones gather
    both in `rope_parameters`. Only `default` and `llama3` convert.
    """
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConversionError("config.json: rope_scaling should be an object.")
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise ConversionError(
            f"config.json asks for {kind!r} RoPE scaling; the converter supports none and "
            "Llama 3.1's (llama3)."
        )
    try:
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_window=int(rope["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"config.json: llama3 rope_scaling lacks {exc}.") from None
    if scaling.high_freq_factor <= scaling.low_freq_factor or scaling.factor < 1:
        raise ConversionError("config.json: llama3 rope_scaling has impossible factors.")
    return float(theta), scaling


def params_from_config(config: Mapping[str, Any]) -> LlamaParams:
    """Architecture numbers from a transformers config.json, refusing what won't convert."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(
            f"config.json describes a {model_type or 'unknown'!s} model; the converter reads "
            "Llama-family checkpoints (llama: Llama 2, 3, 3.1, 3.2, SmolLM; mistral) and "
            "qwen2."
        )
    if config.get("quantization_config"):
        raise ConversionError(
            "The checkpoint is already quantized (quantization_config in config.json); "
            "convert the original float16/bfloat16 weights."
        )
    act = config.get("hidden_act", "silu")
    if act != "silu" or config.get("mlp_bias"):
        raise ConversionError(
            f"config.json: hidden_act {act!r}{' with mlp_bias' if config.get('mlp_bias') else ''}"
            " is not the Llama feed-forward (silu, no bias)."
        )
    theta, scaling = rope_scaling_from_config(config)
    n_heads = _int(config, "num_attention_heads")
    d_model = _int(config, "hidden_size")
    head_dim = config.get("head_dim")
    window = config.get("sliding_window")
    use_window = config.get("use_sliding_window", model_type == "mistral")
    return LlamaParams(
        n_layers=_int(config, "num_hidden_layers"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=_int(config, "num_key_value_heads", n_heads),
        ffn=_int(config, "intermediate_size"),
        vocab_size=_int(config, "vocab_size"),
        context_length=_int(config, "max_position_embeddings", 4096),
        rope_base=theta,
        rms_eps=float(config.get("rms_norm_eps", 1e-5)),
        head_dim=int(head_dim) if isinstance(head_dim, int) else None,
        rope_scaling=scaling,
        sliding_window=int(window) if use_window and isinstance(window, int) else None,
    )


def _safetensors_files(source: Path) -> list[Path]:
    files = sorted(source.glob("*.safetensors"))
    if not files:
        other = [p.name for p in source.glob("*.bin")] + [p.name for p in source.glob("*.pth")]
        hint = f" (found {', '.join(sorted(other)[:3])}: PyTorch pickles are not read)" if other \
            else ""
        raise ConversionError(f"{source} has no *.safetensors weights{hint}.")
    return files


def convert_checkpoint(
    source: Path,
    out_dir: Path,
    quantization: str = "int8",
    progress: Callable[[str], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert a Hugging Face model directory into a model directory the bot serves.

    `on_layer(done, total)` follows the layers (the command's progress bar). The
    directory is written atomically; an existing `out_dir` is replaced.
    """
    say = progress or (lambda _msg: None)
    check_quantization(quantization)
    config = _read_config(source)
    params = params_from_config(config)
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as exc:
        raise ConversionError(f"{source}: {exc}") from exc
    if tokenizer.vocab_size > params.vocab_size:
        raise ConversionError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's "
            f"vocab_size is {params.vocab_size}."
        )
    entries: dict[str, _Entry] = {}
    for path in _safetensors_files(source):
        entries |= read_safetensors_header(path)
    weights = SafetensorsWeights(entries)
    check_shapes(weights.shapes(), params, source.name, metadata="config.json", name_of=hf_name)
    tied = "output.weight" not in weights
    if tied and config.get("tie_word_embeddings") is False:
        raise ConversionError(f"{source} lacks lm_head.weight (tie_word_embeddings is false).")
    # Padding rows (Qwen2: 151,936 rows for 151,646 tokens) get names of their own.
    vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    vocabulary += [f"<unused_{i}>" for i in range(len(vocabulary), params.vocab_size)]
    scaling = params.rope_scaling
    say(
        f"Architecture: {config['model_type']}, {params.n_layers} layers, d_model "
        f"{params.d_model}, {params.n_heads} heads ({params.n_kv_heads} KV), vocab "
        f"{params.vocab_size}"
        + ("" if scaling is None else f", llama3 RoPE scaling x{scaling.factor:g}")
    )
    spec = build_llama_spec(
        params,
        weights,
        vocabulary,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=None,
        rotary_interleave=False,
        quantization=quantization,
        on_layer=None if on_layer is None else lambda i: on_layer(i + 1, params.n_layers),
    )
    files: dict[str, str | bytes | Path] = {
        name: source / name for name in COPIED_FILES if (source / name).is_file()
    }
    files["hf_config.json"] = source / "config.json"
    bot_model: dict[str, Any] = {
        "name": source.resolve().name.lower(),
        "display_name": source.resolve().name,
        "source": source.resolve().name,
        "quantization": quantization,
        "context_length": params.context_length,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "end_tokens": [],
        "license": config.get("license"),
        "architecture": params.to_json(),
        "format_version": FORMAT_VERSION,
    }
    return save_model_dir(spec, out_dir, files=files, bot_model=bot_model, progress=say)
