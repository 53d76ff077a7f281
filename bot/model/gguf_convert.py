"""Convert a GGUF Llama checkpoint into a CTranslate2 model directory, without torch.

CTranslate2's own converters need transformers and torch; GGUF holds everything
(weights dequantized with `gguf.quants`, architecture and tokenizer in metadata).
llama.cpp keeps q/k in Meta's interleaved rotary layout (`rotary_interleave=True`);
tied models have no `output.weight` (the embedding is reused); Llama 3.1's scaling
is recovered from `rope_freqs` (`fit_llama3_scaling`). The spec builder, shape
checks and atomic directory writing are shared with `bot.model.hf_convert`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import gguf
import numpy as np
import numpy.typing as npt
from ctranslate2.specs import RotaryScalingType, common_spec, transformer_spec
from ctranslate2.specs.model_spec import OPTIONAL, NumpyVariable

from bot.config import QUANTIZATIONS
from bot.errors import UserFacingError

FORMAT_VERSION: Final = 1

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL: Final = 1
TOKEN_CONTROL: Final = 3
TOKEN_USER_DEFINED: Final = 4

_LLAMA3_SPLIT: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

FloatArray = npt.NDArray[np.float32]


class ConversionError(UserFacingError, ValueError):
    """The GGUF file cannot be converted; the message says which file and why."""


def check_quantization(quantization: str) -> None:
    """Refuse a weight type CTranslate2 cannot write, before any file is read."""
    if quantization not in QUANTIZATIONS:
        raise ConversionError(
            f"Unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}."
        )


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama 3.1's RoPE frequency scaling (`rope_type: llama3` in config.json).

    Frequencies whose wavelength exceeds `original_window / low_freq_factor` are divided
    by `factor`, those shorter than `original_window / high_freq_factor` are kept, and
    the band between is interpolated. CTranslate2 applies it at run time from
    attributes of each attention layer, which its own converter leaves out.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_window: int

    def to_json(self) -> dict[str, Any]:
        """The scaling as config.json spells it."""
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_window,
        }

    def divisors(self, head_dim: int, base: float) -> npt.NDArray[np.float64]:
        """What each rotary frequency is divided by (GGUF's `rope_freqs` tensor)."""
        inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        wavelen = 2 * np.pi / inv_freq
        smooth = (self.original_window / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        scaled = 1.0 / ((1 - smooth) / self.factor + smooth)
        out = np.where(wavelen > self.original_window / self.low_freq_factor, self.factor, scaled)
        out = np.where(wavelen < self.original_window / self.high_freq_factor, 1.0, out)
        return np.asarray(out, dtype=np.float64)


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
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The numbers as stored under `architecture` in bot_model.json."""
        extra: dict[str, Any] = {}
        if self.head_dim is not None:
            extra["head_dim"] = self.head_dim
        if self.rope_scaling is not None:
            extra["rope_scaling"] = self.rope_scaling.to_json()
        if self.sliding_window is not None:
            extra["sliding_window"] = self.sliding_window
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
            **extra,
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
    quantization: str | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> transformer_spec.TransformerDecoderModelSpec:
    """A CTranslate2 decoder spec from float arrays named as in llama.cpp.

    `tensors` uses GGUF names (`token_embd.weight`, `blk.0.attn_q.weight`, ...) with
    PyTorch's [out, in] shapes, and may load each array only when asked for it. Keep
    `rotary_interleave=True` for GGUF's q/k layout; weights from a transformers
    checkpoint need False. Optional q/k/v/output biases (Qwen2) are used when present.

    With `quantization`, each layer is quantized as soon as it is filled and the spec
    is finished, so peak memory stays near one copy of the output, not the whole
    model in float32; without it the caller optimizes.
    """
    head_dim = params.head_dim
    if head_dim == params.d_model // params.n_heads:
        head_dim = None
    scaling = params.rope_scaling
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
        rotary_scaling_type=None if scaling is None else RotaryScalingType.Llama3,
        original_max_position_embeddings=0 if scaling is None else scaling.original_window,
        num_heads_kv=None if params.n_kv_heads == params.n_heads else params.n_kv_heads,
        head_dim=head_dim,
        sliding_window=params.sliding_window,
    )
    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.layer_norm.gamma = tensors["output_norm.weight"]
    tied = "output.weight" not in tensors
    if quantization is not None and isinstance(tensors, RowSource):
        # The vocabulary matrices are the largest by far (128,256 rows for Llama 3):
        # read and quantized a block of rows at a time.
        _set_quantized_rows(decoder.embeddings, tensors, "token_embd.weight", quantization)
        if not tied:
            _set_quantized_rows(decoder.projection, tensors, "output.weight", quantization)
    else:
        embeddings = tensors["token_embd.weight"]
        decoder.embeddings.weight = embeddings
        # Tied models have no output.weight; the same array lets CT2 alias the variable.
        decoder.projection.weight = embeddings if tied else tensors["output.weight"]
    for i, layer in enumerate(decoder.layer):
        p = f"blk.{i}."
        attention = layer.self_attention
        if scaling is not None:
            _set_llama3_scaling(attention, scaling)
        attention.layer_norm.gamma = tensors[p + "attn_norm.weight"]
        attention.linear[0].weight = np.concatenate(
            [
                tensors[p + "attn_q.weight"],
                tensors[p + "attn_k.weight"],
                tensors[p + "attn_v.weight"],
            ],
            axis=0,
        )
        if p + "attn_q.bias" in tensors:
            attention.linear[0].bias = np.concatenate(
                [tensors[p + "attn_q.bias"], tensors[p + "attn_k.bias"], tensors[p + "attn_v.bias"]]
            )
        attention.linear[1].weight = tensors[p + "attn_output.weight"]
        if p + "attn_output.bias" in tensors:
            attention.linear[1].bias = tensors[p + "attn_output.bias"]
        layer.ffn.layer_norm.gamma = tensors[p + "ffn_norm.weight"]
        layer.ffn.linear_0.weight = tensors[p + "ffn_gate.weight"]
        layer.ffn.linear_0_noact.weight = tensors[p + "ffn_up.weight"]
        layer.ffn.linear_1.weight = tensors[p + "ffn_down.weight"]
        if quantization is not None:
            layer.validate()
            layer._quantize(quantization)
        if on_layer is not None:
            on_layer(i)
    spec.config.bos_token = bos_token or ""
    spec.config.eos_token = eos_token or ""
    spec.config.unk_token = unk_token or ""
    spec.config.layer_norm_epsilon = params.rms_eps
    spec.register_vocabulary(list(vocabulary))
    if quantization is not None:
        _finish_spec(spec, quantization, tied=tied)
    return spec


@runtime_checkable
class RowSource(Protocol):
    """Tensors that can also be read a block of rows at a time."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read_rows(self, name: str, start: int, stop: int) -> FloatArray: ...


ROW_BLOCK: Final = 8192


def _set_quantized_rows(layer: Any, tensors: RowSource, name: str, quantization: str) -> None:
    """Fill `layer.weight` (and its scale) from `name`, converted a block of rows at a time.

    Each block goes through CTranslate2's own quantization (per-row scales, so blocks
    are independent) and lands in one preallocated array: the float32 matrix never
    exists whole.
    """
    rows = tensors.shape(name)[0]
    weight: npt.NDArray[Any] | None = None
    scale: npt.NDArray[Any] | None = None
    for start in range(0, rows, ROW_BLOCK):
        stop = min(rows, start + ROW_BLOCK)
        block = common_spec.LinearSpec()
        block.weight = tensors.read_rows(name, start, stop)
        block.validate()
        block._quantize(quantization)
        values = block.weight.numpy()
        if weight is None:
            weight = np.empty((rows, *values.shape[1:]), dtype=values.dtype)
        weight[start:stop] = values
        if not isinstance(block.weight_scale, str):
            scales = block.weight_scale.numpy()
            if scale is None:
                scale = np.empty(rows, dtype=scales.dtype)
            scale[start:stop] = scales
    assert weight is not None
    layer.weight = NumpyVariable(weight)
    if scale is not None:
        layer.weight_scale = NumpyVariable(scale)


def _set_llama3_scaling(attention: Any, scaling: RopeScaling) -> None:
    """Write the llama3 RoPE attributes CTranslate2's runtime reads for one layer.

    The Python spec declares the two frequency factors but not the scaling factor
    (its own converter never writes it, and the runtime then reads 1), so that one
    goes past the spec's guard against unknown attributes.
    """
    attention.rotary_low_freq_factor = np.float32(scaling.low_freq_factor)
    attention.rotary_high_freq_factor = np.float32(scaling.high_freq_factor)
    object.__setattr__(attention, "rotary_scaling_factor", np.float32(scaling.factor))


def _finish_spec(
    spec: transformer_spec.TransformerDecoderModelSpec, quantization: str, *, tied: bool
) -> None:
    """Quantize what lies outside the (already quantized) layers; alias a tied head.

    CTranslate2's `optimize` would compare every pair of variables to find aliases
    and quantize the layers a second time; here the only alias is known.
    """
    done = {name for name, value in spec.variables().items() if isinstance(value, NumpyVariable)}
    if tied:  # validate() would take the alias for a string attribute: set it after
        spec.decoder.projection.weight = OPTIONAL
    spec.validate()
    if tied:
        spec.decoder.projection.weight = "decoder/embeddings/weight"
    spec._quantize(
        quantization,
        variable_filter=lambda name: not name.startswith("decoder/layer_") and name not in done,
    )


def save_model_dir(
    spec: transformer_spec.TransformerDecoderModelSpec,
    out_dir: Path,
    *,
    files: Mapping[str, str | bytes | Path],
    bot_model: Mapping[str, Any],
    optimize: str | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Write a model directory atomically: it appears complete or not at all.

    `files` maps names to text, bytes or a file to copy; bot_model.json is written
    last, its presence marking a complete directory. `optimize` runs CTranslate2's own
    optimization first (for specs built without streaming quantization).
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if optimize is not None:
            progress(f"Optimizing weights ({optimize})")
            spec.validate()
            spec.optimize(quantization=optimize)
        progress("Writing model.bin")
        spec.save(str(tmp))
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            elif isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        (tmp / "bot_model.json").write_text(
            json.dumps(bot_model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"Model ready in {out_dir}")
    return out_dir


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


def _dequantize(tensor: Any, file_name: str) -> FloatArray:
    """A GGUF tensor as float32 in PyTorch's [out, in] order (GGUF lists dims reversed)."""
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        kind = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        raise ConversionError(
            f"{file_name}: tensor {tensor.name} is stored as {kind}, which cannot be "
            f"dequantized here; convertible types: {', '.join(DEQUANTIZABLE)}. Re-quantize "
            "the file to one of them (or convert the Hugging Face checkpoint)."
        ) from None
    array = np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(shape))
    # F32 tensors come back as read-only views of the memory-mapped file, and
    # CTranslate2's int8 quantizer scales weights in place.
    return array if array.flags.writeable else array.copy()


#: GGUF tensor types whose dequantization was checked against transformers.
DEQUANTIZABLE: Final = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q5_0", "Q4_0", "Q4_1"
)


def expected_shapes(params: LlamaParams) -> dict[str, tuple[int, ...]]:
    """Every weight a Llama decoder needs, under GGUF names, with the shape `params` imply.

    The output projection is listed too; a tied model simply lacks it.
    """
    d, hd = params.d_model, params.head_dim or params.d_model // params.n_heads
    q, kv = params.n_heads * hd, params.n_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (params.vocab_size, d),
        "output_norm.weight": (d,),
        "output.weight": (params.vocab_size, d),
    }
    for i in range(params.n_layers):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn_q.weight": (q, d),
            p + "attn_k.weight": (kv, d),
            p + "attn_v.weight": (kv, d),
            p + "attn_output.weight": (d, q),
            p + "ffn_norm.weight": (d,),
            p + "ffn_gate.weight": (params.ffn, d),
            p + "ffn_up.weight": (params.ffn, d),
            p + "ffn_down.weight": (d, params.ffn),
            p + "attn_q.bias": (q,),
            p + "attn_k.bias": (kv,),
            p + "attn_v.bias": (kv,),
            p + "attn_output.bias": (d,),
        }
    return shapes


_OPTIONAL_TENSORS: Final = ("output.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias",
                            "attn_output.bias")


def check_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    params: LlamaParams,
    where: str,
    *,
    metadata: str,
    name_of: Callable[[str], str] = lambda name: name,
) -> None:
    """Refuse missing weights and weights whose shape disagrees with the metadata.

    `shapes` holds the source's tensors under GGUF names; `name_of` turns a GGUF name
    back into the source's own for the message; `metadata` names where the numbers came
    from (GGUF keys or config.json).
    """
    expected = expected_shapes(params)
    missing = [
        name_of(name)
        for name in expected
        if name not in shapes and not name.endswith(_OPTIONAL_TENSORS)
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise ConversionError(f"{where} lacks tensors: {shown}.")
    for name, want in expected.items():
        got = shapes.get(name)
        if got is not None and tuple(got) != want:
            raise ConversionError(
                f"{where}: tensor {name_of(name)} has shape {list(got)}, but {metadata} "
                f"gives {list(want)} (hidden size {params.d_model}, {params.n_heads} heads, "
                f"{params.n_kv_heads} KV heads, feed-forward {params.ffn}, vocabulary "
                f"{params.vocab_size}). The file is inconsistent; it would generate garbage."
            )
    half = "blk.0.attn_q.bias" in shapes
    for i in range(params.n_layers):
        for part in ("attn_k.bias", "attn_v.bias"):
            if (f"blk.{i}.{part}" in shapes) != half:
                raise ConversionError(f"{where}: q, k and v biases must come together.")


def fit_llama3_scaling(
    divisors: npt.NDArray[np.float64],
    head_dim: int,
    base: float,
    original_window: int | None,
) -> RopeScaling:
    """Recover Llama 3.1's scaling numbers from GGUF's per-frequency `rope_freqs`.

    Between the two wavelength bounds the interpolation weight is linear in
    1 / wavelength; two such frequencies give it, and the bounds follow. Only the
    ratios are fixed by the divisors: without the original window in the metadata,
    `low_freq_factor` is taken to be 1 (every Llama 3.x release). The result is
    checked against every divisor.
    """
    f = np.asarray(divisors, dtype=np.float64)
    factor = float(f.max())
    if factor <= 1.0:
        raise ValueError("rope_freqs scales no frequency")
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    medium = (f > 1 + 1e-6) & (f < factor - 1e-6 * factor)
    if medium.sum() < 2:
        raise ValueError("fewer than two interpolated frequencies")
    smooth = (1 / f[medium] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[medium], smooth, 1)
    a, b = float(slope), float(-intercept)
    span = original_window / a if original_window else 1 / b
    window = original_window or round(a * span)
    scaling = RopeScaling(
        factor=factor,
        low_freq_factor=round(b * span, 6),
        high_freq_factor=round((1 + b) * span, 6),
        original_window=int(window),
    )
    if not np.allclose(scaling.divisors(head_dim, base), f, rtol=1e-3):
        raise ValueError("rope_freqs does not follow the llama3 rule")
    return scaling


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


class _GGUFTensors(Mapping[str, FloatArray]):
    """A GGUF file's tensors, each dequantized only when the spec builder asks for it."""

    def __init__(self, tensors: Mapping[str, Any], file_name: str) -> None:
        self._tensors = tensors
        self._file_name = file_name

    def __getitem__(self, name: str) -> FloatArray:
        return _dequantize(self._tensors[name], self._file_name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def read_rows(self, name: str, start: int, stop: int) -> FloatArray:
        tensor = self._tensors[name]
        shape = self.shape(name)
        data = np.asarray(tensor.data).reshape(shape[0], -1)[start:stop]
        try:
            values = gguf.quants.dequantize(data, tensor.tensor_type)
        except NotImplementedError:
            return _dequantize(tensor, self._file_name)[start:stop]  # raises, naming it
        return np.asarray(values, dtype=np.float32).reshape(stop - start, *shape[1:]).copy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _gguf_rope_scaling(
    meta: _Metadata, tensor_map: Mapping[str, Any], params: LlamaParams, name: str
) -> RopeScaling | None:
    """Llama 3.1 scaling from `rope_freqs`; None without it; other kinds refused."""
    kind = meta.get("llama.rope.scaling.type")
    freqs = tensor_map.get("rope_freqs.weight")
    if freqs is None:
        if kind not in (None, "none"):
            raise ConversionError(
                f"{name} uses {kind} RoPE scaling; only Llama 3.1's (rope_freqs) converts."
            )
        return None
    head_dim = params.head_dim or params.d_model // params.n_heads
    divisors = _dequantize(freqs, name).reshape(-1).astype(np.float64)
    if divisors.shape != (head_dim // 2,):
        raise ConversionError(
            f"{name}: tensor rope_freqs.weight has {divisors.size} values, but the metadata's "
            f"head size {head_dim} needs {head_dim // 2}."
        )
    window = meta.get("llama.rope.scaling.original_context_length")
    try:
        return fit_llama3_scaling(
            divisors, head_dim, params.rope_base, None if window is None else int(window)
        )
    except ValueError as exc:
        raise ConversionError(
            f"{name}: rope_freqs is not Llama 3.1's RoPE scaling ({exc}); it cannot be "
            "converted."
        ) from None


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    quantization: str = "int8",
    progress: Callable[[str], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert a llama-architecture GGUF file into a CTranslate2 model directory.

    Writes model.bin, config.json, vocabulary.json, tokenizer.json,
    chat_template.jinja (when the GGUF has one) and bot_model.json atomically,
    replacing an existing `out_dir`. `on_layer(done, total)` follows the layers.
    """
    say = progress or (lambda _msg: None)
    check_quantization(quantization)
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
            f"{gguf_path.name} is a {arch or 'unknown'!s} model. GGUF files convert when "
            "they are of the llama architecture with a byte-level BPE tokenizer (Llama 3, "
            "3.1, 3.2, SmolLM); convert Qwen2 from its Hugging Face checkpoint directory."
        )
    tok_model = meta.get("tokenizer.ggml.model")
    if tok_model != "gpt2":
        raise ConversionError(
            f"{gguf_path.name} uses the {tok_model!r} tokenizer (SentencePiece: Llama 2, "
            "Mistral); GGUF files convert only with a byte-level BPE tokenizer "
            "(tokenizer.ggml.model = gpt2: Llama 3.x, SmolLM). Convert the Hugging Face "
            "checkpoint directory instead: it carries tokenizer.model."
        )
    tokens: list[str] = list(meta.require("tokenizer.ggml.tokens"))
    token_types: list[int] = list(
        meta.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))
    )
    merges: list[str] = list(meta.get("tokenizer.ggml.merges", []))
    params = _read_params(meta, len(tokens))
    tensor_map = {t.name: t for t in reader.tensors}
    scaling = _gguf_rope_scaling(meta, tensor_map, params, gguf_path.name)
    if scaling is not None:
        params = replace(params, rope_scaling=scaling)
    check_shapes(
        {name: tuple(int(d) for d in reversed(t.shape)) for name, t in tensor_map.items()},
        params,
        gguf_path.name,
        metadata="the metadata (llama.embedding_length, llama.attention.head_count, ...)",
    )
    if params.vocab_size != len(tokens):
        raise ConversionError(
            f"{gguf_path.name}: llama.vocab_size is {params.vocab_size} but the tokenizer "
            f"lists {len(tokens)} tokens."
        )
    say(
        f"Architecture: {params.n_layers} layers, d_model {params.d_model}, "
        f"{params.n_heads} heads ({params.n_kv_heads} KV), vocab {len(tokens)}"
        + ("" if scaling is None else f", llama3 RoPE scaling x{scaling.factor:g}")
    )
    tied = "output.weight" not in tensor_map
    bos_token = _token_or_none(tokens, meta.get("tokenizer.ggml.bos_token_id"))
    eos_token = _token_or_none(tokens, meta.get("tokenizer.ggml.eos_token_id"))
    unk_token = _token_or_none(tokens, meta.get("tokenizer.ggml.unknown_token_id"))
    say(f"Converting {len(tensor_map)} tensors ({'tied' if tied else 'separate'} output, "
        f"{quantization})")
    spec = build_llama_spec(
        params,
        _GGUFTensors(tensor_map, gguf_path.name),
        tokens,
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token=unk_token,
        quantization=quantization,
        on_layer=None if on_layer is None else lambda i: on_layer(i + 1, params.n_layers),
    )
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
    files: dict[str, str | bytes | Path] = {"tokenizer.json": tokenizer.to_str()}
    if chat_template:
        files["chat_template.jinja"] = str(chat_template)
    return save_model_dir(spec, out_dir, files=files, bot_model=bot_model, progress=say)


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, swapping out any existing directory with two renames."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
