"""Tiny Hugging Face checkpoints written with numpy, and a numpy forward pass to check them.

`write_checkpoint` lays out what a transformers model directory holds (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json) for
three shapes of the Llama family: Llama 3.1 (llama3 RoPE scaling), Qwen2 (q/k/v
biases) and Mistral (a v0.2 config). `reference_logits` is an independent
float64 forward pass of the same weights, following transformers' modelling code
(`rotate_half` rotary layout, llama3 frequency scaling, grouped-query attention), that
a converted model must reproduce.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bot.model.chat import BUILTIN_TEMPLATES
from testing.model_factory import TEMPLATE_TOKENS, byte_bpe_tokenizer

Arch = Literal["llama3.1", "qwen2", "mistral"]
FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

#: A Llama 3.1-shaped scaling for a 16-wide head: an original window of 64 positions
#: and three frequencies in the interpolated band (rope_theta 10,000).
TINY_LLAMA3_SCALING: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@dataclass(frozen=True, slots=True)
class TinyConfig:
    """A tiny checkpoint's config.json, as the reference reads it."""

    arch: Arch
    vocab_size: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    rope_scaling: Mapping[str, Any] | None = None
    sliding_window: int | None = None
    tied: bool = False
    max_positions: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def qkv_bias(self) -> bool:
        return self.arch == "qwen2"

    def to_json(self) -> dict[str, Any]:
        model_type = {"llama3.1": "llama", "qwen2": "qwen2", "mistral": "mistral"}[self.arch]
        out: dict[str, Any] = {
            "architectures": [f"{model_type.capitalize()}ForCausalLM"],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "intermediate_size": self.ffn,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tied,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            "torch_dtype": "float32",
        }
        if self.arch == "mistral":
            out["sliding_window"] = self.sliding_window
        if self.arch == "qwen2":
            out["use_sliding_window"] = False
            out["sliding_window"] = 4096
        return out


def tiny_config(arch: Arch, vocab_size: int) -> TinyConfig:
    """The test shape of each architecture."""
    if arch == "llama3.1":
        return TinyConfig(arch, vocab_size, rope_scaling=TINY_LLAMA3_SCALING)
    if arch == "qwen2":
        return TinyConfig(arch, vocab_size, rope_theta=1_000_000.0, tied=True)
    # Mistral v0.2 and later attend to the whole window (sliding_window null);
    # CTranslate2's forward pass cannot score prompts longer than a sliding window.
    return TinyConfig(arch, vocab_size)


def random_weights(config: TinyConfig, seed: int = 0) -> dict[str, FloatArray]:
    """Random float32 weights under transformers' names, spread so logits have no ties."""
    rng = np.random.default_rng(seed)
    d, hd = config.hidden, config.head_dim

    def mat(rows: int, cols: int, scale: float = 1.0) -> FloatArray:
        out: FloatArray = (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(
            np.float32
        )
        return out

    def vec(n: int, center: float, spread: float) -> FloatArray:
        return (center + spread * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, FloatArray] = {
        "model.embed_tokens.weight": rng.standard_normal((config.vocab_size, d)).astype(
            np.float32
        ),
        "model.norm.weight": vec(d, 1.0, 0.1),
    }
    if not config.tied:
        w["lm_head.weight"] = rng.standard_normal((config.vocab_size, d)).astype(np.float32)
    for i in range(config.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(d, 1.0, 0.1)
        w[p + "self_attn.q_proj.weight"] = mat(config.heads * hd, d, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(config.kv_heads * hd, d, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(config.kv_heads * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, config.heads * hd)
        if config.qkv_bias:
            w[p + "self_attn.q_proj.bias"] = vec(config.heads * hd, 0.0, 0.5)
            w[p + "self_attn.k_proj.bias"] = vec(config.kv_heads * hd, 0.0, 0.5)
            w[p + "self_attn.v_proj.bias"] = vec(config.kv_heads * hd, 0.0, 0.5)
        w[p + "post_attention_layernorm.weight"] = vec(d, 1.0, 0.1)
        w[p + "mlp.gate_proj.weight"] = mat(config.ffn, d)
        w[p + "mlp.up_proj.weight"] = mat(config.ffn, d)
        w[p + "mlp.down_proj.weight"] = mat(d, config.ffn)
    return w


def write_safetensors(
    path: Path,
    tensors: Mapping[str, npt.NDArray[Any]],
    dtype: Literal["F32", "F16", "BF16"] = "F32",
) -> Path:
    """A safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        a32 = np.ascontiguousarray(array, dtype=np.float32)
        if dtype == "F32":
            blob = a32.astype("<f4").tobytes()
        elif dtype == "F16":
            blob = a32.astype("<f2").tobytes()
        else:  # round to nearest even, as torch does
            bits = a32.view(np.uint32).astype(np.uint64)
            rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> (
                np.uint64(16)
            )
            blob = rounded.astype("<u2").tobytes()
        header[name] = {
            "dtype": dtype, "shape": list(a32.shape), "data_offsets": [offset, offset + len(blob)]
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    return path


def write_checkpoint(
    out: Path,
    arch: Arch,
    *,
    seed: int = 0,
    template: str | None = None,
    sentencepiece: bool = False,
) -> tuple[TinyConfig, dict[str, FloatArray]]:
    """A tiny Hugging Face model directory of `arch`; returns its config and weights.

    `sentencepiece`: ship only a `tokenizer.model`, as some Mistral checkpoints do.
    """
    import sentencepiece as spm

    from testing.model_factory import _sentencepiece_bytes

    kind = {"llama3.1": "llama3", "qwen2": "chatml", "mistral": "mistral"}[arch]
    specials = TEMPLATE_TOKENS[kind]
    tokenizer = byte_bpe_tokenizer(specials.all)
    sp_model = _sentencepiece_bytes(kind) if sentencepiece else b""
    n_tokens = (
        spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
        if sentencepiece
        else tokenizer.get_vocab_size()
    )
    # Qwen2 pads its embedding rows past the tokenizer (151,936 rows, 151,646 tokens).
    vocab = n_tokens + (8 if arch == "qwen2" else 0)
    config = tiny_config(arch, vocab)
    weights = random_weights(config, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
    names = list(weights)
    half = len(names) // 2  # two shards, as real checkpoints come
    for shard, part in enumerate((names[:half], names[half:]), start=1):
        write_safetensors(
            out / f"model-0000{shard}-of-00002.safetensors", {n: weights[n] for n in part}
        )
    if sentencepiece:
        (out / "tokenizer.model").write_bytes(sp_model)
    else:
        tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": specials.bos,
                "eos_token": specials.eos,
                "add_bos_token": False,
                "chat_template": template or BUILTIN_TEMPLATES[kind],
            }
        ),
        encoding="utf-8",
    )
    eos = 2 if sentencepiece else tokenizer.token_to_id(specials.eos)
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos, "temperature": 0.6, "top_p": 0.9, "do_sample": True}),
        encoding="utf-8",
    )
    return config, weights


# --------------------------------------------------------------------------- reference


def _rms_norm(x: Float64Array, gamma: Float64Array, eps: float) -> Float64Array:
    out: Float64Array = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma
    return out


def inverse_frequencies(config: TinyConfig, *, scaled: bool = True) -> Float64Array:
    """RoPE's inverse frequencies, with transformers' llama3 rule when configured."""
    hd = config.head_dim
    inv: Float64Array = config.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    rope = config.rope_scaling
    if rope is None or not scaled:
        return inv
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.asarray(np.where(medium, smoothed, out), dtype=np.float64)


def _rotate(x: Float64Array, inv_freq: Float64Array) -> Float64Array:
    """`rotate_half` rotary embeddings on [heads, T, hd]."""
    t = x.shape[1]
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out: Float64Array = x * cos + rotated * sin
    return out


def reference_logits(
    config: TinyConfig,
    weights: Mapping[str, FloatArray],
    ids: Sequence[int],
    *,
    scaled: bool = True,
) -> Float64Array:
    """Logits [T, vocab] of the checkpoint for every position, in float64.

    `scaled=False` leaves out the llama3 frequency scaling (what a converter that
    drops it produces), for tests that must see the difference.
    """
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n_h, n_kv, hd = config.heads, config.kv_heads, config.head_dim
    t = len(ids)
    inv_freq = inverse_frequencies(config, scaled=scaled)
    h = w["model.embed_tokens.weight"][list(ids)]
    pos = np.arange(t)
    allowed = pos[None, :] <= pos[:, None]
    if config.sliding_window is not None:
        allowed &= pos[:, None] - pos[None, :] < config.sliding_window
    mask = np.where(allowed, 0.0, -np.inf)
    for i in range(config.layers):
        p = f"model.layers.{i}."

        def proj(x: Float64Array, name: str, heads: int, p: str = p) -> Float64Array:
            y = x @ w[p + f"self_attn.{name}.weight"].T
            if p + f"self_attn.{name}.bias" in w:
                y = y + w[p + f"self_attn.{name}.bias"]
            out: Float64Array = y.reshape(t, heads, hd).transpose(1, 0, 2)
            return out

        x = _rms_norm(h, w[p + "input_layernorm.weight"], config.rms_eps)
        q = _rotate(proj(x, "q_proj", n_h), inv_freq)
        k = _rotate(proj(x, "k_proj", n_kv), inv_freq)
        v = proj(x, "v_proj", n_kv)
        k = np.repeat(k, n_h // n_kv, axis=0)
        v = np.repeat(v, n_h // n_kv, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(t, n_h * hd)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], config.rms_eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        up = x @ w[p + "mlp.up_proj.weight"].T
        h = h + ((gate / (1.0 + np.exp(-gate))) * up) @ w[p + "mlp.down_proj.weight"].T
    h = _rms_norm(h, w["model.norm.weight"], config.rms_eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return np.asarray(h @ head.T, dtype=np.float64)


def to_gguf_layout(w: FloatArray, heads: int) -> FloatArray:
    """q/k rows from transformers' `rotate_half` order to llama.cpp's interleaved one."""
    rows, cols = w.shape
    out: FloatArray = np.ascontiguousarray(
        w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    )
    return out


def write_gguf(path: Path, config: TinyConfig, weights: Mapping[str, FloatArray]) -> Path:
    """The checkpoint as llama.cpp's converter writes it: Llama 3.1 gets `rope_freqs`."""
    import gguf

    from bot.model.gguf_convert import RopeScaling
    from testing.model_factory import byte_bpe_vocab

    specials = TEMPLATE_TOKENS["llama3"]
    tokens, merges = byte_bpe_vocab(specials.all)
    if len(tokens) != config.vocab_size:
        raise ValueError("write_gguf needs a checkpoint without padded rows")
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Llama 3.1")
    writer.add_block_count(config.layers)
    writer.add_context_length(config.max_positions)
    writer.add_embedding_length(config.hidden)
    writer.add_feed_forward_length(config.ffn)
    writer.add_head_count(config.heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if tok in specials.all else 1 for tok in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(specials.bos))
    writer.add_eos_token_id(tokens.index(specials.eos))
    writer.add_chat_template(BUILTIN_TEMPLATES["llama3"])
    if config.rope_scaling is not None:
        rope = config.rope_scaling
        scaling = RopeScaling(
            rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
            rope["original_max_position_embeddings"],
        )
        divisors = scaling.divisors(config.head_dim, config.rope_theta).astype(np.float32)
        writer.add_tensor("rope_freqs.weight", divisors)
    for name, array in weights.items():
        if name in names:
            writer.add_tensor(names[name], array)
            continue
        _, _, layer, rest = name.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        if module == "self_attn.q_proj":
            array = to_gguf_layout(array, config.heads)
        elif module == "self_attn.k_proj":
            array = to_gguf_layout(array, config.kv_heads)
        writer.add_tensor(f"blk.{layer}.{parts[module]}.{kind}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
