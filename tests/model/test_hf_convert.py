"""`bot convert` turns Hugging Face checkpoints and GGUF files into models that compute right.

Tiny random checkpoints (safetensors written with numpy, a small byte-level BPE) of
Llama 3.1 (llama3 RoPE scaling), Qwen2 (q/k/v biases, padded vocabulary) and Mistral
go through the command; CTranslate2's logits over 300 positions (well past the tiny
Llama 3.1's original window of 64) must match `testing.reference_llama`. A conversion
that drops the scaling must disagree with the same reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
import pytest

from bot.cli import main
from bot.model import gguf_convert
from bot.model.bundle import ModelFilesError, load_model_bundle
from bot.model.convert import convert
from bot.model.gguf_convert import (
    ConversionError,
    RopeScaling,
    build_llama_spec,
    fit_llama3_scaling,
)
from bot.model.hf_convert import SafetensorsWeights, params_from_config, read_safetensors_header
from testing.reference_llama import (
    Arch,
    reference_logits,
    write_checkpoint,
    write_gguf,
    write_safetensors,
)

ROOT = Path(__file__).resolve().parents[2]
POSITIONS = 300
FloatArray = npt.NDArray[np.float32]


def _ids(vocab: int) -> list[int]:
    rng = np.random.default_rng(7)
    return [int(i) for i in rng.integers(8, vocab - 8, size=POSITIONS)]


def _logits(model_dir: Path, ids: list[int]) -> npt.NDArray[np.float32]:
    generator = ctranslate2.Generator(str(model_dir), device="cpu")
    out: npt.NDArray[np.float32] = np.asarray(generator.forward_batch([ids]))[0]
    return out


class Converted:
    def __init__(self, root: Path, arch: Arch) -> None:
        self.source = root / "checkpoint"
        self.config, self.weights = write_checkpoint(self.source, arch, seed=5)
        self.model_dir = root / "model"
        assert main(["convert", str(self.source), str(self.model_dir),
                     "--quantization", "float32"]) == 0
        self.ids = _ids(self.config.vocab_size)


@pytest.fixture(scope="module", params=["llama3.1", "qwen2", "mistral"])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Converted:
    return Converted(tmp_path_factory.mktemp(str(request.param)), request.param)


def test_logits_match_the_reference_far_past_the_original_window(converted: Converted) -> None:
    ours = _logits(converted.model_dir, converted.ids)
    reference = reference_logits(converted.config, converted.weights, converted.ids)
    assert ours.shape == reference.shape == (POSITIONS, converted.config.vocab_size)
    assert np.abs(ours - reference).max() < 1e-3
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_directory_is_served_as_it_is(converted: Converted) -> None:
    bundle = load_model_bundle(converted.model_dir)
    assert bundle.context_length == converted.config.max_positions
    assert bundle.kind == "converted" and bundle.quantization == "float32"
    assert bundle.num_layers == converted.config.layers
    eos = bundle.tokenizer.token_to_id(bundle.tokenizer.eos_token or "")
    assert eos in bundle.end_token_ids
    names = {p.name for p in converted.model_dir.iterdir()}
    assert {"model.bin", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "hf_config.json", "bot_model.json", "vocabulary.json"} <= names
    ids = bundle.encode_chat("Be brief.", "Hello world!")
    generator = ctranslate2.Generator(str(converted.model_dir), device="cpu")
    tokens = [bundle.tokenizer.id_to_token(i) for i in ids]
    out = generator.generate_batch([tokens], max_length=4, include_prompt_in_result=False)
    assert len(out[0].sequences_ids[0]) >= 1


def _unscaled_copy(converted: Converted, root: Path) -> Path:
    """The checkpoint with rope_scaling left out: what a converter that drops it builds."""
    source = root / "unscaled-checkpoint"
    shutil.copytree(converted.source, source)
    config = json.loads((source / "config.json").read_text())
    config["rope_scaling"] = None
    (source / "config.json").write_text(json.dumps(config))
    out = convert(source, root / "unscaled", "float32")
    return out


def test_a_conversion_without_the_scaling_disagrees(tmp_path: Path) -> None:
    llama = Converted(tmp_path / "scaled", "llama3.1")
    unscaled_dir = _unscaled_copy(llama, tmp_path)
    unscaled = _logits(unscaled_dir, llama.ids)
    reference = reference_logits(llama.config, llama.weights, llama.ids)
    assert np.abs(unscaled - reference).max() > 1.0
    assert (unscaled.argmax(-1) == reference.argmax(-1)).mean() < 0.8
    # ...while matching a reference that leaves the scaling out as well.
    plain = reference_logits(llama.config, llama.weights, llama.ids, scaled=False)
    assert np.abs(unscaled - plain).max() < 1e-3

    # Such weights under a config asking for the scaling are refused at load.
    shutil.copyfile(llama.source / "config.json", unscaled_dir / "hf_config.json")
    with pytest.raises(ModelFilesError, match="python -m bot convert"):
        load_model_bundle(unscaled_dir)
    load_model_bundle(llama.model_dir)


def test_gguf_with_rope_freqs_converts_with_the_scaling(tmp_path: Path) -> None:
    config, weights = write_checkpoint(tmp_path / "checkpoint", "llama3.1", seed=5)
    gguf_path = write_gguf(tmp_path / "tiny-3.1.gguf", config, weights)
    model_dir = convert(gguf_path, tmp_path / "model", "float32")
    ids = _ids(config.vocab_size)
    ours = _logits(model_dir, ids)
    reference = reference_logits(config, weights, ids)
    assert np.abs(ours - reference).max() < 1e-3
    stored = json.loads((model_dir / "bot_model.json").read_text())["architecture"]
    assert stored["rope_scaling"] == dict(config.rope_scaling or {})


def test_llama3_scaling_is_recovered_from_meta_sized_divisors() -> None:
    meta = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_window=8192)
    divisors = meta.divisors(128, 500000.0)
    assert fit_llama3_scaling(divisors, 128, 500000.0, None) == meta
    assert fit_llama3_scaling(divisors, 128, 500000.0, 8192) == meta
    with pytest.raises(ValueError):
        fit_llama3_scaling(np.linspace(1.0, 8.0, 64), 128, 500000.0, None)


def test_half_precision_safetensors_read_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.standard_normal((3, 5)).astype(np.float32)
    for dtype in ("F16", "BF16"):
        path = write_safetensors(tmp_path / f"{dtype}.safetensors",
                                 {"model.norm.weight": array}, dtype)
        got = SafetensorsWeights(read_safetensors_header(path))["output_norm.weight"]
        if dtype == "F16":
            expected = array.astype(np.float16).astype(np.float32)
        else:
            bits = array.view(np.uint32)
            # Round to nearest even on the upper 16 bits, as torch does.
            upper = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
            expected = (upper.astype(np.uint32) << 16).view(np.float32)
        assert got.dtype == np.float32 and got.flags.writeable
        np.testing.assert_array_equal(got, expected)


def test_sentencepiece_only_checkpoint(tmp_path: Path) -> None:
    """A Mistral checkpoint that ships only tokenizer.model converts and is served."""
    config, weights = write_checkpoint(tmp_path / "checkpoint", "mistral", seed=3,
                                       sentencepiece=True)
    assert not (tmp_path / "checkpoint" / "tokenizer.json").exists()
    model_dir = convert(tmp_path / "checkpoint", tmp_path / "model", "float32")
    assert (model_dir / "tokenizer.model").is_file()
    bundle = load_model_bundle(model_dir)
    ids = bundle.encode_chat(None, "Hello world!")
    assert ids[:2] == [bundle.bos_token_id, bundle.tokenizer.token_to_id("[INST]")]
    assert bundle.tokenizer.decode(ids).strip() == "Hello world!"
    reference = reference_logits(config, weights, ids)
    assert np.abs(_logits(model_dir, ids) - reference).max() < 1e-3


def test_int8_conversion_answers(tmp_path: Path) -> None:
    config, _ = write_checkpoint(tmp_path / "checkpoint", "qwen2", seed=1)
    model_dir = convert(tmp_path / "checkpoint", tmp_path / "model")
    assert json.loads((model_dir / "bot_model.json").read_text())["quantization"] == "int8"
    logits = _logits(model_dir, _ids(config.vocab_size)[:20])
    assert np.isfinite(logits).all()


# --- refusals: each names the problem, and only what converts -------------------------


def _edit_config(source: Path, **changes: object) -> None:
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (source / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gemma2"}, "gemma2 model; the converter reads Llama-family"),
        ({"hidden_size": 48}, r"model.embed_tokens.weight has shape \[\d+, 64\], but config"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn' RoPE scaling"),
        ({"quantization_config": {"quant_method": "gptq"}}, "already quantized"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"vocab_size": 10}, "tokenizer has \\d+ tokens but config.json's vocab_size is 10"),
    ],
)
def test_checkpoint_refusals(tmp_path: Path, change: dict[str, object], message: str) -> None:
    source = tmp_path / "checkpoint"
    write_checkpoint(source, "mistral")
    _edit_config(source, **change)
    with pytest.raises(ConversionError, match=message):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    write_checkpoint(source, "mistral")
    with pytest.raises(ConversionError, match=r"neither a \.gguf file"):
        convert(source / "config.json", tmp_path / "out")
    shard = next(source.glob("model-00002-*.safetensors"))
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size - 16)
    with pytest.raises(ConversionError, match="truncated or damaged"):
        convert(source, tmp_path / "out")
    for path in source.glob("*.safetensors"):
        path.unlink()
    with pytest.raises(ConversionError, match=r"no \*.safetensors weights"):
        convert(source, tmp_path / "out")
    (source / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match=r"expected tokenizer\.json or tokenizer\.model"):
        convert(source, tmp_path / "out")


def test_pre_quantized_tensor_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    write_checkpoint(source, "mistral")
    shard = next(source.glob("model-00001-*.safetensors"))
    raw = shard.read_bytes()
    (length,) = np.frombuffer(raw[:8], dtype="<u8")
    header = json.loads(raw[8:8 + int(length)])
    name = next(n for n in header if n.endswith("q_proj.weight"))
    header[name]["dtype"] = "I8"
    header[name]["data_offsets"][1] = header[name]["data_offsets"][0] + int(
        np.prod(header[name]["shape"])
    )
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + int(length):])
    with pytest.raises(ConversionError, match=f"{name} is stored as I8"):
        convert(source, tmp_path / "out")


def test_gguf_shape_against_metadata_and_unknown_tensor_type(tmp_path: Path) -> None:
    import gguf

    config, weights = write_checkpoint(tmp_path / "checkpoint", "llama3.1")
    lying = dataclasses.replace(config, ffn=96)
    bad = write_gguf(tmp_path / "bad.gguf", lying, weights)
    with pytest.raises(ConversionError, match=r"blk.0.ffn_gate.weight has shape \[128, 64\], "
                                              r"but the metadata"):
        convert(bad, tmp_path / "out")

    q81 = tmp_path / "q81.gguf"
    writer = gguf.GGUFWriter(str(q81), "llama")
    reader = gguf.GGUFReader(str(write_gguf(tmp_path / "ok.gguf", config, weights)))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.name == "blk.1.ffn_down.weight":
            row_bytes = shape[1] // 32 * 40  # Q8_1: 40 bytes per block of 32
            writer.add_tensor(t.name, np.zeros((shape[0], row_bytes), dtype=np.uint8),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            writer.add_tensor(t.name, np.asarray(t.data).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match=r"blk\.1\.ffn_down\.weight is stored as Q8_1"):
        convert(q81, tmp_path / "out")


@pytest.mark.slow
def test_command_line_story(tmp_path: Path) -> None:
    """`python -m bot convert` in a shell: a progress bar, then a directory the bot loads."""
    write_checkpoint(tmp_path / "Tiny-Llama-3.1", "llama3.1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "convert", str(tmp_path / "Tiny-Llama-3.1"),
         str(tmp_path / "model")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2/2 layers" in done.stderr and "llama3 RoPE scaling x8" in done.stderr
    bundle = load_model_bundle(tmp_path / "model")
    assert bundle.quantization == "int8" and bundle.name == "tiny-llama-3.1"
    failed = subprocess.run(
        [sys.executable, "-m", "bot", "convert", str(tmp_path / "nowhere"),
         str(tmp_path / "model2")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: Nothing to convert at")
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize("quantization", ["int8", "int8_float16", "float16"])
def test_row_blocks_convert_exactly_as_whole_matrices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantization: str
) -> None:
    """The vocabulary matrices, quantized a few rows at a time, give the same model.bin."""
    source = tmp_path / "checkpoint"
    write_checkpoint(source, "mistral", seed=2)
    monkeypatch.setattr(gguf_convert, "ROW_BLOCK", 7)
    blocks = convert(source, tmp_path / "blocks", quantization)
    entries: dict[str, Any] = {}
    for path in sorted(source.glob("*.safetensors")):
        entries |= read_safetensors_header(path)
    whole_source = SafetensorsWeights(entries)
    weights = {name: whole_source[name] for name in whole_source}  # a plain mapping
    params = params_from_config(json.loads((source / "config.json").read_text()))
    vocabulary = json.loads((blocks / "vocabulary.json").read_text())
    spec = build_llama_spec(params, weights, vocabulary, bos_token="<s>", eos_token="</s>",
                            unk_token=None, rotary_interleave=False, quantization=quantization)
    spec.save(str(tmp_path))
    assert (tmp_path / "model.bin").read_bytes() == (blocks / "model.bin").read_bytes()
