"""The steps of `bench/gpu.sh` that are Python: each prints one JSON object on stdout.

Run as a file (`python3 bench/gpu_steps.py STEP ...`), not as `-m bench...`: `record`,
`env` and `cublas` must work before the wheels are installed, so this module imports
only the standard library at the top and everything else inside the step that needs it.

Steps: `env`, `cublas`, `cublas-check`, `imports`, `tokenizer`, `build`, `selfcheck`,
`agree`, `gpu-memory`, `bandwidth`, and `record`, which turns one finished step (exit
status, seconds, its stdout and stderr files) into the JSON line gpu.sh appends to
results.jsonl. The GPU facts these steps rely on are in docs/deploy.md ("The GPU check").
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The functions CTranslate2 4.8.5 looks up with plain dlsym in libcublas.so.12
#: (src/cuda/cublas_stub.cc); their prototypes are the same in cuBLAS 12.6 and 13.x.
CUBLAS_SYMBOLS = (
    "cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasGetMathMode",
    "cublasSgemm_v2", "cublasSgemmStridedBatched", "cublasGemmEx",
    "cublasGemmStridedBatchedEx", "cublasGetProperty",
)

#: Nominal memory bandwidth (bytes/s) by the name nvidia-smi reports (datasheets).
NOMINAL_BANDWIDTH = {
    "H200": 4.8e12, "H100 SXM": 3.35e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12,
    "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100-SXM4-40GB": 1.555e12,
    "L40S": 8.64e11, "L4": 3.0e11, "A10": 6.0e11, "RTX 4090": 1.008e12,
}

#: Model shapes: Llama-3-8B's layers around the embedded tokenizer's vocabulary, a small
#: model for the functional steps, and the two the CPU rehearsal uses instead.
SHAPES: dict[str, dict[str, Any]] = {
    "8b": {"n_layers": 32, "d_model": 4096, "n_heads": 32, "n_kv_heads": 8, "ffn": 14336,
           "tied": False, "context_length": 8192, "rope_base": 500000.0},
    "small": {"n_layers": 4, "d_model": 512, "n_heads": 8, "n_kv_heads": 4, "ffn": 1536,
              "tied": True, "context_length": 4096, "rope_base": 10000.0},
    "rehearse-big": {"n_layers": 2, "d_model": 128, "n_heads": 4, "n_kv_heads": 2, "ffn": 256,
                     "tied": False, "context_length": 1024, "rope_base": 10000.0},
    "rehearse-small": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn": 128,
                       "tied": True, "context_length": 1024, "rope_base": 10000.0},
}


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _smi(query: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-gpu=QUERY`, or None where there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- record


def _last_json(text: str) -> Any:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def step_record(args: argparse.Namespace) -> None:
    """One results.jsonl line: how the step ended, its JSON (or text), its error tail."""
    out = Path(args.stdout).read_text(errors="replace") if Path(args.stdout).is_file() else ""
    err = Path(args.stderr).read_text(errors="replace") if Path(args.stderr).is_file() else ""
    rc = int(args.rc)
    line: dict[str, Any] = {
        "step": args.name,
        "ok": rc == 0 and not args.skipped,
        "rc": rc,
        "timed_out": rc in (124, 137),
        "limit_s": args.limit,
        "seconds": round(float(args.seconds), 2),
        "started": args.started,
        "ended": round(time.time(), 2),
    }
    if args.skipped:
        line["skipped"] = args.skipped
    result = _last_json(out)
    if result is not None:
        line["result"] = result
    elif out.strip():
        line["text"] = out.strip()[-2000:]
    if rc != 0 and not args.skipped:
        line["error"] = err.strip()[-3000:]
    if args.note:
        line["note"] = args.note
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(json.dumps(line, ensure_ascii=False), flush=True)


# --------------------------------------------------------------------------- environment


def step_env(_args: argparse.Namespace) -> None:
    """What the host offers, checked rather than assumed: Python, tools, packages, GPU."""
    import importlib.metadata as md
    import importlib.util

    packages: dict[str, str | None] = {}
    for name in ("torch", "transformers", "tokenizers", "sentencepiece", "numpy", "jinja2",
                 "prometheus-client", "pyyaml", "tqdm", "typing-extensions", "pip",
                 "ctranslate2", "pydantic", "pydantic-settings", "aiosqlite", "gguf",
                 "discord.py", "requests", "nvidia-cublas", "nvidia-cublas-cu12"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tools": {t: shutil.which(t) is not None for t in ("timeout", "nvidia-smi", "ldconfig")},
        "pip_module": importlib.util.find_spec("pip") is not None,
        "packages": packages,
        "gpu": _smi("name,driver_version,memory.total,memory.used"),
    }
    if packages["torch"] is not None:
        try:
            import torch  # type: ignore[import-not-found,unused-ignore]

            info["torch_cuda"] = {"available": torch.cuda.is_available(),
                                  "version": torch.version.cuda,
                                  "devices": torch.cuda.device_count()}
        except Exception as exc:  # a broken torch is a finding, not a crash
            info["torch_cuda"] = {"error": repr(exc)}
    _emit(info)


def _site_dirs() -> list[str]:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


def _find(name: str, extra: list[str], only: list[str] | None = None) -> str | None:
    """A directory holding the library file `name`: the loader's path, pip's nvidia dirs.

    `only` replaces the whole search (pip-style site directories, searched the same way).
    """
    if only is not None:
        for base in only:
            if os.path.exists(os.path.join(base, name)):
                return base
            hits = sorted(glob.glob(os.path.join(base, "nvidia", "**", name), recursive=True))
            if hits:
                return os.path.dirname(hits[0])
        return None
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") + extra:
        if d and os.path.exists(os.path.join(d, name)):
            return d
    for base in _site_dirs():
        hits = sorted(glob.glob(os.path.join(base, "nvidia", "**", name), recursive=True))
        if hits:
            return os.path.dirname(hits[0])
    if shutil.which("ldconfig"):
        try:
            cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                                   timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            cache = ""
        for line in cache.splitlines():
            if line.strip().startswith(name + " ") and "=>" in line:
                return os.path.dirname(line.split("=>", 1)[1].strip())
    return None


def step_cublas(args: argparse.Namespace) -> None:
    """Find cuBLAS 12, else expose CUDA 13's under the .so.12 names CTranslate2 opens.

    Writes a shell file setting LD_LIBRARY_PATH for the later steps and prints which
    route it took. libcublas.so.13 NEEDS libcublasLt.so.13 and has no RUNPATH, so its
    own directory goes on the path too.
    """
    extra = [*glob.glob("/usr/local/cuda*/lib64"), *glob.glob("/usr/local/cuda*/targets/*/lib"),
             "/usr/lib/x86_64-linux-gnu"]
    shim = Path(args.shim)
    prepend: list[str] = []
    only = args.search_dir or None
    found12 = _find("libcublas.so.12", extra, only)
    lt12 = _find("libcublasLt.so.12", extra, only)
    result: dict[str, Any]
    if found12 is not None and lt12 is not None:
        prepend = list(dict.fromkeys([found12, lt12]))
        result = {"route": "cublas12", "dir": found12}
    else:
        found13 = _find("libcublas.so.13", extra, only)
        lt13 = _find("libcublasLt.so.13", extra, only)
        if found13 is None or lt13 is None:
            result = {"route": "missing", "looked_in": only or extra + _site_dirs()}
        else:
            shim.mkdir(parents=True, exist_ok=True)
            for old, new in (("libcublas.so.13", "libcublas.so.12"),
                             ("libcublasLt.so.13", "libcublasLt.so.12")):
                source = os.path.join(found13 if old.startswith("libcublas.") else lt13, old)
                link = shim / new
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(os.path.realpath(source))
            prepend = list(dict.fromkeys([str(shim), found13, lt13]))
            result = {"route": "cublas13-as-12", "dir": found13, "shim": str(shim),
                      "links": {p.name: os.readlink(p) for p in sorted(shim.iterdir())}}
    current = os.environ.get("LD_LIBRARY_PATH", "")
    value = ":".join([*prepend, current] if current else prepend)
    Path(args.env_file).write_text(
        f"export LD_LIBRARY_PATH='{value}'\n" if prepend else "", encoding="utf-8"
    )
    result["ld_library_path_prepend"] = prepend
    _emit(result)
    if result["route"] == "missing" and args.require:
        sys.exit(1)


def step_cublas_check(args: argparse.Namespace) -> None:
    """dlopen `libcublas.so.12` as CTranslate2 does; resolve its nine symbols; ask its version."""
    try:
        lib = ctypes.CDLL("libcublas.so.12")
    except OSError as exc:
        _emit({"loaded": False, "error": str(exc)})
        sys.exit(1 if args.require else 0)
    missing = [s for s in CUBLAS_SYMBOLS if not hasattr(lib, s)]
    version = []
    for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int(-1)
        lib.cublasGetProperty(prop, ctypes.byref(value))
        version.append(value.value)
    _emit({"loaded": True, "missing_symbols": missing,
           "version": ".".join(str(v) for v in version)})
    if missing:
        sys.exit(1)


def step_imports(args: argparse.Namespace) -> None:
    """The project's import closure for the benches, and what CTranslate2 sees of the GPU."""
    import importlib

    before = set(sys.modules)
    import ctranslate2

    for module in ("bot.cli", "bot.app", "bench.engine_bench", "bench.mixed_bench",
                   "bot.model.gguf_convert", "bot.store.store"):
        importlib.import_module(module)
    loaded = set(sys.modules) - before
    out: dict[str, Any] = {
        "ctranslate2": ctranslate2.__version__,
        "ctranslate2_file": ctranslate2.__file__,
        "discord_imported": "discord" in loaded,
        "modules": len(loaded),
        "cuda_devices": ctranslate2.get_cuda_device_count(),
    }
    if out["cuda_devices"] > 0:
        out["cuda_compute_types"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
    out["cpu_compute_types"] = sorted(ctranslate2.get_supported_compute_types("cpu"))
    _emit(out)
    if args.require_cuda and out["cuda_devices"] == 0:
        sys.exit(1)


# --------------------------------------------------------------------------- models


def step_tokenizer(args: argparse.Namespace) -> None:
    """The rehearsal's stand-in for the take-along tokenizer folder: a tiny ChatML one."""
    from bot.model.chat import BUILTIN_TEMPLATES
    from testing.model_factory import TEMPLATE_TOKENS, byte_bpe_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = TEMPLATE_TOKENS["chatml"]
    byte_bpe_tokenizer(t.all).save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(BUILTIN_TEMPLATES["chatml"], encoding="utf-8")
    tokens = {"bos_token": t.bos, "eos_token": t.eos, "unk_token": t.unk,
              "end_tokens": [t.eos], "add_bos_token": t.add_bos_token}
    (out / "tokens.json").write_text(json.dumps(tokens), encoding="utf-8")
    _emit({"dir": str(out), **tokens})


def _random_weights(
    params: Any, tied: bool, device: str, seed: int
) -> dict[str, Any]:
    """float16 weights under GGUF names, [out, in], scaled 1/sqrt(in): torch on CUDA if it can.

    numpy's generator makes 8B normals in minutes; torch on the GPU in seconds.
    """
    import numpy as np

    d, hd = params.d_model, params.d_model // params.n_heads
    use_torch = False
    if device == "cuda":
        try:
            import torch  # type: ignore[import-not-found,unused-ignore]

            use_torch = torch.cuda.is_available()
        except ImportError:
            use_torch = False
    if use_torch:
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def mat(rows: int, cols: int, scale: float) -> Any:
            t = torch.randn(rows, cols, device="cuda", dtype=torch.float16, generator=gen)
            return t.mul_(scale / cols**0.5).cpu().numpy()
    else:
        rng = np.random.default_rng(seed)

        def mat(rows: int, cols: int, scale: float) -> Any:
            a = rng.standard_normal((rows, cols), dtype=np.float32)
            a *= scale / cols**0.5
            return a.astype(np.float16)

    ones = np.ones(d, dtype=np.float16)
    w: dict[str, Any] = {"token_embd.weight": mat(params.vocab_size, d, d**0.5),
                         "output_norm.weight": ones}
    if not tied:
        w["output.weight"] = mat(params.vocab_size, d, 1.0)
    for i in range(params.n_layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = ones
        w[p + "attn_q.weight"] = mat(params.n_heads * hd, d, 2.0)
        w[p + "attn_k.weight"] = mat(params.n_kv_heads * hd, d, 2.0)
        w[p + "attn_v.weight"] = mat(params.n_kv_heads * hd, d, 1.0)
        w[p + "attn_output.weight"] = mat(d, params.n_heads * hd, 1.0)
        w[p + "ffn_norm.weight"] = ones
        w[p + "ffn_gate.weight"] = mat(params.ffn, d, 1.0)
        w[p + "ffn_up.weight"] = mat(params.ffn, d, 1.0)
        w[p + "ffn_down.weight"] = mat(d, params.ffn, 1.0)
    return w


def step_build(args: argparse.Namespace) -> None:
    """A model directory in our converter's layout from random float16 weights, no download.

    The spec builder the GGUF converter uses (transformers' q/k layout, so
    `rotary_interleave=False`), saved as float16: CTranslate2 quantizes at load to
    whatever compute type a step asks for.
    """
    import tokenizers

    from bot.model.gguf_convert import FORMAT_VERSION, LlamaParams, build_llama_spec

    shape = SHAPES[args.shape]
    tok_dir = Path(args.tokenizer)
    tokenizer = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    vocab = [str(tokenizer.id_to_token(i)) for i in range(tokenizer.get_vocab_size())]
    tokens = json.loads((tok_dir / "tokens.json").read_text(encoding="utf-8"))
    params = LlamaParams(
        n_layers=shape["n_layers"], d_model=shape["d_model"], n_heads=shape["n_heads"],
        n_kv_heads=shape["n_kv_heads"], ffn=shape["ffn"], vocab_size=len(vocab),
        context_length=shape["context_length"], rope_base=shape["rope_base"], rms_eps=1e-5,
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    weights = _random_weights(params, shape["tied"], args.device, args.seed)
    timings["weights_s"] = time.perf_counter() - t0
    n_params = sum(int(a.size) for a in weights.values())
    t0 = time.perf_counter()
    spec = build_llama_spec(params, weights, vocab, bos_token=tokens["bos_token"],
                            eos_token=tokens["eos_token"], unk_token=tokens["unk_token"],
                            rotary_interleave=False)
    del weights
    spec.validate()
    spec.optimize(quantization="float16")
    timings["spec_s"] = time.perf_counter() - t0
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    spec.save(str(out))
    del spec
    timings["save_s"] = time.perf_counter() - t0
    shutil.copy(tok_dir / "tokenizer.json", out / "tokenizer.json")
    if (tok_dir / "chat_template.jinja").is_file():
        shutil.copy(tok_dir / "chat_template.jinja", out / "chat_template.jinja")
    bot_model = {
        "name": f"random-llama-{args.shape}",
        "display_name": f"Random Llama ({args.shape} shapes)",
        "source": None,
        "quantization": "float16",
        "context_length": params.context_length,
        "bos_token": tokens["bos_token"],
        "eos_token": tokens["eos_token"],
        "unk_token": tokens["unk_token"],
        "end_tokens": tokens.get("end_tokens") or [tokens["eos_token"]],
        "add_bos_token": bool(tokens.get("add_bos_token", False)),
        "license": None,
        "architecture": params.to_json(),
        "tied": shape["tied"],
        "format_version": FORMAT_VERSION,
    }
    (out / "bot_model.json").write_text(json.dumps(bot_model, indent=2) + "\n", encoding="utf-8")
    _emit({"dir": str(out), "shape": args.shape, "params": n_params,
           "model_bin_bytes": (out / "model.bin").stat().st_size,
           **{k: round(v, 2) for k, v in timings.items()}})


# --------------------------------------------------------------------------- checks


def step_selfcheck(_args: argparse.Namespace) -> None:
    """The start-up path (`open_app`), which runs the GPU self-check on CUDA.

    On the CPU (the rehearsal) the same check is called once more by hand, so the
    step exercises it wherever it runs.
    """
    import asyncio

    from bot.app import open_app
    from bot.config import load_settings
    from bot.engine.device_check import gpu_self_check

    async def go() -> dict[str, Any]:
        settings = load_settings(None)
        t0 = time.perf_counter()
        async with open_app(settings, progress=lambda m: print(m, file=sys.stderr)) as app:
            opened = time.perf_counter() - t0
            info = app.engine.info
            t1 = time.perf_counter()
            if info.device != "cuda":
                await gpu_self_check(app.engine)
            return {"device": info.device, "compute_type": info.compute_type,
                    "model": info.model_name, "load_s": round(info.load_s, 2),
                    "open_s": round(opened, 2),
                    "check_again_s": round(time.perf_counter() - t1, 3), "passed": True}

    _emit(asyncio.run(go()))


def step_agree(args: argparse.Namespace) -> None:
    """Greedy tokens of the device against the CPU on one small model, per compute type pair.

    Random weights give wide logits, so float32 on both sides should agree for the whole
    run; int8 sides quantize activations differently and are reported, not required.
    """
    import ctranslate2

    from bot.model.bundle import load_model_bundle

    bundle = load_model_bundle(Path(args.model))
    ids = bundle.encode_chat(None, "Say something about the sea and the stars, please.")
    tokens = [bundle.tokenizer.id_to_token(i) for i in ids]
    n = args.tokens
    out: dict[str, Any] = {"device": args.device, "prompt_tokens": len(ids), "new_tokens": n,
                           "pairs": []}

    def greedy(device: str, compute_type: str) -> list[int]:
        gen = ctranslate2.Generator(args.model, device=device, compute_type=compute_type)
        try:
            res = gen.generate_batch([tokens], max_length=n, min_length=n, sampling_topk=1,
                                     include_prompt_in_result=False, end_token=[])
            return [int(i) for i in res[0].sequences_ids[0]]
        finally:
            del gen

    failed = False
    for dev_type, cpu_type in zip(args.device_types.split(","), args.cpu_types.split(","),
                                  strict=True):
        pair: dict[str, Any] = {"device_compute_type": dev_type, "cpu_compute_type": cpu_type}
        try:
            a, b = greedy(args.device, dev_type), greedy("cpu", cpu_type)
            same = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), n)
            pair.update({"agree_prefix": same, "agree_all": same == n,
                         "device_head": a[:8], "cpu_head": b[:8]})
        except Exception as exc:  # one failing compute type must not hide the others
            pair["error"] = f"{type(exc).__name__}: {exc}"
            failed = True
        out["pairs"].append(pair)
    _emit(out)
    if failed or not out["pairs"][0].get("agree_all"):
        sys.exit(1)


def _results(path: str) -> list[dict[str, Any]]:
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def step_gpu_memory(args: argparse.Namespace) -> None:
    """Peak GPU memory while each step ran, from nvidia-smi's samples (taken every 0.5 s)."""
    from datetime import datetime

    samples: list[tuple[float, float, float]] = []
    path = Path(args.samples)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            # "2026/12/03 11:40:15.288, 1234, 143771" (local time, MiB, MiB)
            parts = [p.strip() for p in line.split(",")]
            try:
                stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((stamp, float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue
    now = _smi("memory.used,memory.total")
    out: dict[str, Any] = {"available": now is not None, "samples": len(samples),
                           "now_mib": now}
    if samples:
        out["total_mib"] = samples[-1][2]
        out["peak_mib"] = max(s[1] for s in samples)
        per_step = {}
        for rec in _results(args.results):
            start, end = rec.get("started"), rec.get("ended")
            if start is None or end is None:
                continue
            window = [s[1] for s in samples if start <= s[0] <= end]
            if window:
                per_step[rec["step"]] = max(window)
        out["peak_mib_by_step"] = per_step
    _emit(out)


def _weight_bytes_per_token(arch: dict[str, Any], tied: bool, bytes_per_weight: float) -> float:
    """Bytes of weights one decoding step reads: every linear once, plus one embedding row.

    int8 weights carry one float32 scale per output row; norms are counted at 4 bytes.
    The KV cache read is left out (a few tens of MB at these lengths).
    """
    d, f, layers = arch["d_model"], arch["ffn"], arch["n_layers"]
    hd = d // arch["n_heads"]
    q_kv_o = d * (arch["n_heads"] * hd + 2 * arch["n_kv_heads"] * hd) + arch["n_heads"] * hd * d
    per_layer = q_kv_o + 3 * d * f
    rows = layers * (arch["n_heads"] * hd + 2 * arch["n_kv_heads"] * hd + d + 2 * f + d)
    linear = layers * per_layer + arch["vocab_size"] * d  # projection (tied or not)
    scales = 4 * (rows + arch["vocab_size"]) if bytes_per_weight == 1 else 0
    norms = 4 * d * (2 * layers + 1)
    return float(linear * bytes_per_weight + scales + norms + d * bytes_per_weight)


def _measured_bandwidth(device: str) -> tuple[float | None, str]:
    """Bytes/s of a large device-to-device copy (read + write), torch on CUDA, numpy on CPU."""
    if device == "cuda":
        try:
            import torch  # type: ignore[import-not-found,unused-ignore]

            a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
            b = torch.empty_like(a)
            b.copy_(a)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                b.copy_(a)
            torch.cuda.synchronize()
            return 2 * 10 * a.numel() / (time.perf_counter() - t0), "torch copy, 1 GiB x 10"
        except Exception as exc:
            return None, f"torch copy failed: {exc!r}"
    import numpy as np

    a = np.ones(1 << 27, dtype=np.uint8)  # 128 MiB
    b = np.empty_like(a)
    np.copyto(b, a)
    t0 = time.perf_counter()
    for _ in range(5):
        np.copyto(b, a)
    return 2 * 5 * a.nbytes / (time.perf_counter() - t0), "numpy copy, 128 MiB x 5"


def step_bandwidth(args: argparse.Namespace) -> None:
    """One stream's share of the bandwidth bound, per compute type the bench measured.

    bound tok/s = bandwidth / bytes of weights per token; share = measured / bound. Both
    the card's nominal bandwidth (by name) and a measured copy bandwidth are given.
    """
    meta = json.loads((Path(args.model) / "bot_model.json").read_text(encoding="utf-8"))
    arch, tied = meta["architecture"], bool(meta.get("tied", True))
    names = _smi("name")
    gpu_name = names[0][0] if names else None
    nominal = next((bw for key, bw in NOMINAL_BANDWIDTH.items()
                    if gpu_name and key.lower() in gpu_name.lower()), None)
    if args.nominal_gbs:
        nominal = args.nominal_gbs * 1e9
    measured, how = _measured_bandwidth(args.device)
    out: dict[str, Any] = {"gpu": gpu_name, "nominal_gb_s": nominal and round(nominal / 1e9),
                           "measured_copy_gb_s": measured and round(measured / 1e9, 1),
                           "measured_how": how, "by_step": {}}
    for rec in _results(args.results):
        res = rec.get("result")
        if not (rec.get("ok") and str(rec.get("step", "")).startswith("bench_")
                and isinstance(res, dict) and "raw_decode_tok_s" in res):
            continue  # one stream (lanes 1) only
        ct = str(res.get("compute_type", ""))
        bpw = 1.0 if ct.startswith("int8") else 4.0 if ct == "float32" else 2.0
        per_token = _weight_bytes_per_token(arch, tied, bpw)
        entry: dict[str, Any] = {"compute_type": ct, "weight_bytes_per_token": int(per_token)}
        for key in ("decode_tok_s", "raw_decode_tok_s"):
            rate = float(res[key])
            if not 0 < rate < 1e6:  # raw: decode time within the clock's noise (tiny models)
                continue
            entry[key] = rate
            entry[f"ms_per_token_{key}"] = round(1000 / rate, 3) if rate else None
            for label, bw in (("nominal", nominal), ("measured", measured)):
                if bw and rate:
                    entry[f"fraction_{label}_{key}"] = round(rate * per_token / bw, 4)
        out["by_step"][rec["step"]] = entry
    _emit(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/gpu_steps.py", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)
    r = sub.add_parser("record")
    for name in ("name", "rc", "seconds", "started", "stdout", "stderr", "results"):
        r.add_argument(name)
    r.add_argument("--limit", type=float)
    r.add_argument("--skipped")
    r.add_argument("--note")
    sub.add_parser("env")
    c = sub.add_parser("cublas")
    c.add_argument("--shim", required=True)
    c.add_argument("--env-file", required=True)
    c.add_argument("--require", action="store_true")
    c.add_argument("--search-dir", action="append",
                   help="look only here (repeatable): a lib folder or a site-packages")
    cc = sub.add_parser("cublas-check")
    cc.add_argument("--require", action="store_true")
    i = sub.add_parser("imports")
    i.add_argument("--require-cuda", action="store_true")
    t = sub.add_parser("tokenizer")
    t.add_argument("out")
    b = sub.add_parser("build")
    b.add_argument("--shape", choices=sorted(SHAPES), required=True)
    b.add_argument("--tokenizer", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--device", default="cuda")
    b.add_argument("--seed", type=int, default=0)
    sub.add_parser("selfcheck")
    a = sub.add_parser("agree")
    a.add_argument("--model", required=True)
    a.add_argument("--device", default="cuda")
    a.add_argument("--device-types", default="float32,int8_float16")
    a.add_argument("--cpu-types", default="float32,int8")
    a.add_argument("--tokens", type=int, default=64)
    m = sub.add_parser("gpu-memory")
    m.add_argument("--samples", required=True)
    m.add_argument("--results", required=True)
    w = sub.add_parser("bandwidth")
    w.add_argument("--model", required=True)
    w.add_argument("--results", required=True)
    w.add_argument("--device", default="cuda")
    w.add_argument("--nominal-gbs", type=float)
    args = parser.parse_args(argv)
    steps = {"record": step_record, "env": step_env, "cublas": step_cublas,
             "cublas-check": step_cublas_check, "imports": step_imports,
             "tokenizer": step_tokenizer, "build": step_build, "selfcheck": step_selfcheck,
             "agree": step_agree, "gpu-memory": step_gpu_memory, "bandwidth": step_bandwidth}
    steps[args.step](args)


if __name__ == "__main__":
    main()
