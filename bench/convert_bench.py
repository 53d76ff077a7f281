"""`python -m bench --convert --json`: what `bot convert` costs in time and memory.

Each conversion runs in a child process of its own, so its peak resident memory
(`wait4`'s ru_maxrss) is the conversion's and nothing else's; a child that only
imports the converter gives the baseline. Sources: the embedded SmolLM2 GGUF, a tiny
safetensors checkpoint, and a synthetic checkpoint shaped like Llama 3.2 1B (bfloat16,
2 shards, tied head, llama3 RoPE scaling) whose weights are a repeated random block:
the converter reads every byte the same way whatever the values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bot.config import Settings

#: config.json of the synthetic checkpoints, by size name.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": {  # Llama 3.2 1B
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
        "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
    "300m": {  # the same family at a quarter of the width of every matrix but the vocabulary
        "hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
        "num_key_value_heads": 4, "intermediate_size": 4096, "vocab_size": 128256,
        "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
}


def _tensors(config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    d, hd, ffn = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (config["vocab_size"], d)
    yield "model.norm.weight", (d,)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (ffn, d)
        yield p + "mlp.up_proj.weight", (ffn, d)
        yield p + "mlp.down_proj.weight", (d, ffn)


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], block: bytes) -> None:
    """A bfloat16 safetensors shard written a block at a time (never a tensor in memory)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, _ in tensors:
            left = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            while left:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)


def write_synthetic(out: Path, size: str) -> int:
    """A Llama-shaped checkpoint directory; returns its parameter count."""
    from testing.model_factory import TEMPLATE_TOKENS, byte_bpe_tokenizer

    config = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, **SHAPES[size]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    small = (rng.standard_normal(1 << 20) * 0.02).astype(np.float32)
    block = (small.view(np.uint32) >> 16).astype("<u2").tobytes()  # 2 MiB of bfloat16
    tensors = list(_tensors(config))
    half = len(tensors) // 2
    _write_shard(out / "model-00001-of-00002.safetensors", tensors[:half], block)
    _write_shard(out / "model-00002-of-00002.safetensors", tensors[half:], block)
    specials = TEMPLATE_TOKENS["llama3"]
    byte_bpe_tokenizer(specials.all).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": specials.bos, "eos_token": specials.eos}))
    return sum(int(np.prod(shape)) for _, shape in tensors)


_CHILD = """
import sys, time
from pathlib import Path
from bot.model.convert import convert
if sys.argv[1] != "-":
    start = time.perf_counter()
    convert(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
    print(time.perf_counter() - start)
"""


def _child(source: str, dest: str, quantization: str) -> dict[str, float]:
    """Run one conversion in a fresh interpreter; its wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, source, dest, quantization],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion failed: {err.strip()[-500:]}")
    result = {"process_s": round(time.perf_counter() - start, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if out.strip():
        result["convert_s"] = round(float(out.strip().splitlines()[-1]), 1)
    return result


def agreement(root: Path) -> dict[str, Any]:
    """Logits of tiny converted checkpoints against the numpy reference, 300 positions.

    Per architecture: as converted (float32), and for Llama 3.1 also a conversion
    with the RoPE scaling left out (what CTranslate2's own converter produces) and
    the same checkpoint through a GGUF file with `rope_freqs`.
    """
    import ctranslate2

    from bot.model.convert import convert
    from testing.reference_llama import reference_logits, write_checkpoint, write_gguf

    def compare(model_dir: Path, reference: Any, ids: list[int]) -> dict[str, float]:
        generator = ctranslate2.Generator(str(model_dir), device="cpu")
        ours = np.asarray(generator.forward_batch([ids]))[0]
        return {"max_abs_dlogit": float(np.abs(ours - reference).max()),
                "argmax_agreement": float((ours.argmax(-1) == reference.argmax(-1)).mean())}

    out: dict[str, Any] = {"positions": 300}
    rng = np.random.default_rng(7)
    for arch in ("llama3.1", "qwen2", "mistral"):
        source = root / f"agree-{arch}"
        config, weights = write_checkpoint(source, arch, seed=5)  # type: ignore[arg-type]
        ids = [int(i) for i in rng.integers(8, config.vocab_size - 8, size=300)]
        reference = reference_logits(config, weights, ids)
        entry = {"converted": compare(convert(source, root / f"out-{arch}", "float32"),
                                      reference, ids)}
        if arch == "llama3.1":
            plain = json.loads((source / "config.json").read_text())
            plain["rope_scaling"] = None
            (source / "config.json").write_text(json.dumps(plain))
            entry["unscaled"] = compare(convert(source, root / "out-unscaled", "float32"),
                                        reference, ids)
            gguf_path = write_gguf(root / "agree.gguf", config, weights)
            entry["gguf_rope_freqs"] = compare(convert(gguf_path, root / "out-gguf", "float32"),
                                               reference, ids)
        out[arch] = entry
    return out


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


async def run_convert_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Convert each source at int8 and report time, peak RSS and sizes."""
    from bot.model.embedded import embedded_gguf_path

    sizes = [s for s in (args.convert_sizes or "agreement,embedded,1b").split(",") if s]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1),
                              "baseline_import": _child("-", "-", "int8")}
    with tempfile.TemporaryDirectory(prefix="convert-bench-") as tmp:
        root = Path(tmp)
        for size in sizes:
            if size == "agreement":
                report["agreement"] = agreement(root)
                continue
            entry: dict[str, Any] = {"quantization": "int8"}
            if size == "embedded":
                source = embedded_gguf_path()
                entry["source_mb"] = round(source.stat().st_size / 2**20, 1)
            else:
                source = root / f"synthetic-{size}"
                start = time.perf_counter()
                entry["params"] = write_synthetic(source, size)
                entry["write_source_s"] = round(time.perf_counter() - start, 1)
                entry["source_mb"] = _dir_mb(source)
            dest = root / f"out-{size}"
            entry |= _child(str(source), str(dest), "int8")
            entry["output_mb"] = _dir_mb(dest)
            report[size] = entry
            if source.parent == root:
                shutil.rmtree(source)
            shutil.rmtree(dest)
    return report
