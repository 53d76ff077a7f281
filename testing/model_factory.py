"""Tiny, random Llama models for tests: GGUF files, CTranslate2 directories, a reference.

Nothing here downloads anything. Two kinds of model directory come out of
`make_tiny_model`, matching what `bot.model.bundle.load_model_bundle` accepts:

* `layout="converter"`: a tiny GGUF written in llama.cpp's layout and run through our
  own converter, exactly as the embedded SmolLM2 file is;
* `layout="hf"`: what `ct2-transformers-converter` leaves behind for a Hugging Face
  checkpoint (CT2 files + tokenizer.json or tokenizer.model + tokenizer_config.json +
  generation_config.json, no bot_model.json), built from random numpy weights.

`numpy_llama_logits` is an independent numpy forward pass used as the reference that
the converter's output must reproduce. Builds are cached per process and copied into
each caller's directory, so tests stay fast and cannot spoil each other's models.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import numpy.typing as npt
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from bot.model.chat import BUILTIN_TEMPLATES
from bot.model.gguf_convert import LlamaParams, build_llama_spec, convert_gguf
from testing.model_cache import cached_embedded_model

TemplateKind = Literal["chatml", "llama2", "llama3", "mistral"]
TokenizerKind = Literal["tokenizers", "sentencepiece"]
Layout = Literal["auto", "converter", "hf"]
#: How the template's markers are shipped: as special/control tokens (the usual), or as
#: ordinary ones the libraries still match in any text: non-special added tokens
#: (tokenizers) or user-defined pieces (SentencePiece).
MarkerKind = Literal["special", "plain"]
FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

_TEXT = """\
The quick brown fox jumps over the lazy dog. Paris is the capital of France.
Hello world! How are you today? I am fine, thank you. What is the weather like?
def add(a, b):
    return a + b
for i in range(10):
    print(i * 2)
The year 2024 had 366 days; 3.14159 is pi and 2.71828 is e.
Les élèves étudient à l'école. Größe, Straße, naïve café, résumé.
東京は日本の首都です。北京是中国的首都。
Привет, как дела? Всё хорошо.
Emoji: 😀 🎉 👍 and symbols: © ® ™ € £ ¥.
{"key": "value", "list": [1, 2, 3]}
<html><body><p>Some text</p></body></html>
A system prompt tells the assistant how to behave. The user asks a question.
"""


@dataclass(frozen=True, slots=True)
class TemplateTokens:
    """Special tokens a template family needs, in id order: unk, bos, eos, extras."""

    unk: str
    bos: str
    eos: str
    extra: tuple[str, ...] = ()
    add_bos_token: bool = False

    @property
    def all(self) -> tuple[str, ...]:
        return (self.unk, self.bos, self.eos, *self.extra)


TEMPLATE_TOKENS: dict[str, TemplateTokens] = {
    "chatml": TemplateTokens("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "llama2": TemplateTokens("<unk>", "<s>", "</s>", add_bos_token=True),
    "mistral": TemplateTokens("<unk>", "<s>", "</s>", ("[INST]", "[/INST]"), add_bos_token=True),
    "llama3": TemplateTokens(
        "<unk>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        add_bos_token=True,
    ),
}


def training_lines() -> list[str]:
    """The built-in text the tiny tokenizers are trained on (also handy in tests)."""
    return [line for line in _TEXT.splitlines() if line.strip()]


@functools.cache
def _byte_bpe_json(specials: tuple[str, ...], vocab_size: int = 400) -> str:
    """A byte-level BPE trained on the built-in text, pre-tokenized like SmolLM2's."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    return str(tok.to_str())


def byte_bpe_tokenizer(specials: Sequence[str] = TEMPLATE_TOKENS["chatml"].all) -> Any:
    """A fresh `tokenizers.Tokenizer` (cached training) with `specials` at ids 0..n-1."""
    return tokenizers.Tokenizer.from_str(_byte_bpe_json(tuple(specials)))


def byte_bpe_vocab(specials: Sequence[str]) -> tuple[list[str], list[str]]:
    """Tokens in id order and merges ("a b") of the trained byte-level BPE."""
    data = json.loads(_byte_bpe_json(tuple(specials)))
    vocab: dict[str, int] = data["model"]["vocab"]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, merges


def _plain_markers_json(specials: TemplateTokens) -> str:
    """The byte-level BPE with every marker but unk an added token *not* marked special."""
    data = json.loads(_byte_bpe_json(specials.all))
    for entry in data["added_tokens"]:
        if entry["content"] != specials.unk:
            entry["special"] = False
    return json.dumps(data)


@functools.cache
def _sentencepiece_bytes(kind: str, markers: MarkerKind = "special") -> bytes:
    """A tiny SentencePiece BPE model (byte fallback, digits split), trained in memory.

    `markers="plain"`: the template's markers (ChatML's, say) are user-defined pieces,
    with SentencePiece's usual `<unk>`/`<s>`/`</s>` as unk, BOS and EOS.
    """
    t = TEMPLATE_TOKENS[kind]
    if markers == "plain":
        t = TemplateTokens("<unk>", "<s>", "</s>")
        user_defined = [m for m in TEMPLATE_TOKENS[kind].all if m not in t.all]
    else:
        user_defined = []
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=420,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece=t.unk,
        bos_piece=t.bos,
        eos_piece=t.eos,
        control_symbols=list(t.extra),
        user_defined_symbols=user_defined,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return buf.getvalue()


def tiny_params(
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 128,
    vocab_size: int,
    context_length: int = 256,
    rope_base: float = 10000.0,
) -> LlamaParams:
    """Architecture numbers of the tiny test models."""
    return LlamaParams(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn=ffn,
        vocab_size=vocab_size,
        context_length=context_length,
        rope_base=rope_base,
        rms_eps=1e-5,
    )


def random_llama_weights(
    params: LlamaParams, *, seed: int = 0, tied: bool = True
) -> dict[str, FloatArray]:
    """Random float32 weights under llama.cpp's tensor names, [out, in] shapes.

    Scaled so the logits spread widely: greedy decoding then has no near-ties that
    float rounding could flip between CTranslate2 and numpy.
    """
    rng = np.random.default_rng(seed)
    d, hd = params.d_model, params.d_model // params.n_heads

    def mat(rows: int, cols: int, scale: float = 1.0) -> FloatArray:
        out: FloatArray = (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(
            np.float32
        )
        return out

    def norm(n: int) -> FloatArray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, FloatArray] = {
        "token_embd.weight": rng.standard_normal((params.vocab_size, d)).astype(np.float32),
        "output_norm.weight": norm(d),
    }
    if not tied:
        w["output.weight"] = rng.standard_normal((params.vocab_size, d)).astype(np.float32)
    for i in range(params.n_layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(d)
        w[p + "attn_q.weight"] = mat(params.n_heads * hd, d, 2.0)
        w[p + "attn_k.weight"] = mat(params.n_kv_heads * hd, d, 2.0)
        w[p + "attn_v.weight"] = mat(params.n_kv_heads * hd, d)
        w[p + "attn_output.weight"] = mat(d, params.n_heads * hd)
        w[p + "ffn_norm.weight"] = norm(d)
        w[p + "ffn_gate.weight"] = mat(params.ffn, d)
        w[p + "ffn_up.weight"] = mat(params.ffn, d)
        w[p + "ffn_down.weight"] = mat(d, params.ffn)
    return w


def write_tiny_llama_gguf(
    path: Path,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn: int = 128,
    tokens: Sequence[str] | None = None,
    merges: Sequence[str] | None = None,
    context_length: int = 256,
    tied: bool = True,
    template: TemplateKind = "chatml",
    dtype: Literal["f32", "f16", "q8_0"] = "f32",
    architecture: str = "llama",
) -> Path:
    """Write a random llama GGUF with llama.cpp's names, layout and tokenizer metadata.

    Tokens default to a byte-level BPE (all 256 bytes, a few hundred merges) whose
    first ids are the template's special tokens, marked as control tokens (type 3).
    """
    specials = TEMPLATE_TOKENS[template]
    if tokens is None or merges is None:
        tokens, merges = byte_bpe_vocab(specials.all)
    params = tiny_params(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn=ffn,
        vocab_size=len(tokens),
        context_length=context_length,
    )
    weights = random_llama_weights(params, seed=seed, tied=tied)
    token_types = [3 if tok in specials.all else 1 for tok in tokens]

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"Tiny {template} test model")
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(d_model)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_dimension_count(d_model // n_heads)
    writer.add_rope_freq_base(params.rope_base)
    writer.add_layer_norm_rms_eps(params.rms_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(list(tokens))
    writer.add_token_types(token_types)
    writer.add_token_merges(list(merges))
    writer.add_unk_token_id(tokens.index(specials.unk))
    writer.add_bos_token_id(tokens.index(specials.bos))
    writer.add_eos_token_id(tokens.index(specials.eos))
    writer.add_add_bos_token(specials.add_bos_token)
    writer.add_chat_template(BUILTIN_TEMPLATES[template])
    for name, array in weights.items():
        if dtype == "q8_0" and array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
            continue
        data = array.astype(np.float16) if dtype == "f16" and array.ndim == 2 else array
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf_weights(path: Path) -> dict[str, FloatArray]:
    """Every tensor of a GGUF file as float32 with PyTorch's [out, in] shape."""
    reader = gguf.GGUFReader(str(path))
    out: dict[str, FloatArray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return out


# --------------------------------------------------------------------------- reference


def _rms_norm(x: Float64Array, gamma: Float64Array, eps: float) -> Float64Array:
    out: Float64Array = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma
    return out


def _rope(x: Float64Array, base: float, *, interleaved: bool) -> Float64Array:
    """Rotary embeddings on [heads, T, hd]. Interleaved pairs (2i, 2i+1) = GGUF/Meta."""
    _, t, hd = x.shape
    inv_freq = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = np.cos(angles), np.sin(angles)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x, dtype=np.float64)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : hd // 2], out[..., hd // 2 :] = ra, rb
    return out


def numpy_llama_logits(
    weights: Mapping[str, FloatArray],
    params: LlamaParams,
    ids: Sequence[int],
    *,
    interleaved: bool = True,
) -> npt.NDArray[np.float64]:
    """Logits [T, vocab] of a Llama forward pass in float64 numpy, for every position.

    RMSNorm, rotary embeddings (GGUF's interleaved pairing unless told otherwise),
    grouped-query causal attention, SwiGLU feed-forward, tied or separate output.
    """
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n_h, n_kv = params.n_heads, params.n_kv_heads
    hd = params.d_model // n_h
    t = len(ids)
    h = w["token_embd.weight"][list(ids)]
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for i in range(params.n_layers):
        p = f"blk.{i}."
        x = _rms_norm(h, w[p + "attn_norm.weight"], params.rms_eps)
        q = (x @ w[p + "attn_q.weight"].T).reshape(t, n_h, hd).transpose(1, 0, 2)
        k = (x @ w[p + "attn_k.weight"].T).reshape(t, n_kv, hd).transpose(1, 0, 2)
        v = (x @ w[p + "attn_v.weight"].T).reshape(t, n_kv, hd).transpose(1, 0, 2)
        q = _rope(q, params.rope_base, interleaved=interleaved)
        k = _rope(k, params.rope_base, interleaved=interleaved)
        group = n_h // n_kv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(t, n_h * hd)
        h = h + attn @ w[p + "attn_output.weight"].T
        x = _rms_norm(h, w[p + "ffn_norm.weight"], params.rms_eps)
        gate = x @ w[p + "ffn_gate.weight"].T
        up = x @ w[p + "ffn_up.weight"].T
        h = h + ((gate / (1.0 + np.exp(-gate))) * up) @ w[p + "ffn_down.weight"].T
    h = _rms_norm(h, w["output_norm.weight"], params.rms_eps)
    out = w.get("output.weight", w["token_embd.weight"])
    return np.asarray(h @ out.T, dtype=np.float64)


def numpy_greedy(
    weights: Mapping[str, FloatArray], params: LlamaParams, prompt: Sequence[int], steps: int
) -> list[int]:
    """Greedy continuation of `prompt` by the numpy reference (full recompute per step)."""
    ids = list(prompt)
    new: list[int] = []
    for _ in range(steps):
        nxt = int(np.argmax(numpy_llama_logits(weights, params, ids)[-1]))
        ids.append(nxt)
        new.append(nxt)
    return new


# --------------------------------------------------------------------------- directories


@functools.cache
def _cache_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tiny-models-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build_hf_style(
    out: Path, template: TemplateKind, tokenizer: TokenizerKind, seed: int, chat_template_in: str,
    markers: MarkerKind = "special",
) -> None:
    """A directory as ct2-transformers-converter would leave it, from random weights."""
    specials = TEMPLATE_TOKENS[template]
    out.mkdir(parents=True)
    if tokenizer == "tokenizers":
        tok = byte_bpe_tokenizer(specials.all)
        if markers == "plain":
            tok = tokenizers.Tokenizer.from_str(_plain_markers_json(specials))
        tok.save(str(out / "tokenizer.json"))
        vocabulary = [str(tok.id_to_token(i)) for i in range(tok.get_vocab_size())]
    else:
        model = _sentencepiece_bytes(template, markers)
        if markers == "plain":
            specials = TemplateTokens("<unk>", "<s>", "</s>")
        (out / "tokenizer.model").write_bytes(model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        vocabulary = [str(sp.id_to_piece(i)) for i in range(sp.get_piece_size())]
    params = tiny_params(vocab_size=len(vocabulary))
    weights = random_llama_weights(params, seed=seed)
    spec = build_llama_spec(
        params,
        weights,
        vocabulary,
        bos_token=specials.bos,
        eos_token=specials.eos,
        unk_token=specials.unk,
        rotary_interleave=False,  # transformers' q/k layout
    )
    spec.validate()
    spec.optimize(quantization="float32")
    spec.save(str(out))
    tokenizer_config: dict[str, Any] = {
        "bos_token": specials.bos,
        "eos_token": {"content": specials.eos, "special": True},
        "unk_token": specials.unk,
        "add_bos_token": specials.add_bos_token,
        "model_max_length": params.context_length,
    }
    if chat_template_in == "tokenizer_config":
        tokenizer_config["chat_template"] = BUILTIN_TEMPLATES[template]
    elif chat_template_in == "jinja":
        (out / "chat_template.jinja").write_text(BUILTIN_TEMPLATES[template], encoding="utf-8")
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": vocabulary.index(specials.bos),
            "eos_token_id": vocabulary.index(specials.eos),
        },
    )


def _build_converted(out: Path, template: TemplateKind, seed: int) -> None:
    """A tiny GGUF run through our own converter (float32)."""
    gguf_path = out.parent / f"{out.name}.gguf"
    write_tiny_llama_gguf(gguf_path, seed=seed, template=template)
    convert_gguf(gguf_path, out, quantization="float32")
    gguf_path.unlink()


def make_tiny_model(
    tmp_dir: Path,
    *,
    template: TemplateKind = "chatml",
    tokenizer: TokenizerKind = "tokenizers",
    seed: int = 0,
    layout: Layout = "auto",
    chat_template_in: Literal["tokenizer_config", "jinja", "none"] = "tokenizer_config",
    markers: MarkerKind = "special",
) -> Path:
    """A ready CTranslate2 model directory under `tmp_dir` (random weights, float32).

    `layout="auto"` means our converter's output for a ChatML + tokenizers model (the
    embedded model's shape) and a "converted elsewhere" directory for everything else.
    `chat_template_in` (hf layout only) says where the template is kept; "none" makes
    `load_model_bundle` guess a built-in one. `markers="plain"` (hf layout) ships the
    template's markers as ordinary added tokens or user-defined pieces (`MarkerKind`).
    """
    if layout == "auto":
        layout = (
            "converter"
            if (template, tokenizer) == ("chatml", "tokenizers") and markers == "special"
            else "hf"
        )
    if layout == "converter" and tokenizer != "tokenizers":
        raise ValueError("our converter always writes a tokenizer.json")
    if markers != "special" and layout != "hf":
        raise ValueError("plain markers need the hf layout")
    key = f"tiny-{template}-{tokenizer}-{layout}-{chat_template_in}-s{seed}"
    if markers != "special":
        key += f"-{markers}-markers"
    cached = _cache_root() / key
    if not cached.exists():
        if layout == "converter":
            _build_converted(cached, template, seed)
        else:
            _build_hf_style(cached, template, tokenizer, seed, chat_template_in, markers)
    target = tmp_dir / key
    if not target.exists():
        shutil.copytree(cached, target)
    return target


def embedded_model_dir(quantization: str = "int8") -> Path:
    """The embedded SmolLM2, converted once and kept across runs (`testing.model_cache`)."""
    return cached_embedded_model(quantization)


def iter_special_ids(tok: Any, names: Sequence[str]) -> Iterator[int]:
    """Ids of special-token strings in a bot tokenizer, failing loudly on a stranger."""
    for name in names:
        idx = tok.token_to_id(name)
        assert idx is not None, f"{name} is not in the vocabulary"
        yield int(idx)
