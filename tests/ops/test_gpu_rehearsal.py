"""`bench/gpu.sh --rehearse`: the GPU check's steps on the CPU, so the script cannot rot.

The GPU host is lent for minutes at a time and has no network: the script must work the
first time there. Here every step runs on a tiny model and must leave one well-formed
JSON line; the cuBLAS finder and the memory summary, which only a GPU host exercises for
real, are checked on files laid out as the CUDA 12 and CUDA 13 wheels lay them out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_SH = ROOT / "bench" / "gpu.sh"
STEPS_PY = ROOT / "bench" / "gpu_steps.py"

REHEARSAL_STEPS = [
    "env", "wheels", "cublas", "cublas_check", "imports", "tokenizer", "model_small",
    "agree", "model_8b", "selfcheck_int8", "ask", "bench_int8", "bench_float32",
    "mixed_int8", "lanes2_int8", "lanes4_int8", "gpu_memory", "bandwidth", "summary",
]


def _rehearse(out: Path, **env: str) -> tuple[list[dict[str, Any]], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(GPU_SH), "--rehearse"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
        timeout=240,  # a hang guard; the rehearsal takes well under a minute on an idle machine
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # What it printed is what it wrote, line for line (a cut-off run keeps both).
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed == lines
    return lines, seconds


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_records_each(tmp_path: Path) -> None:
    lines, _seconds = _rehearse(tmp_path / "out")
    assert [line["step"] for line in lines] == REHEARSAL_STEPS
    by = {line["step"]: line for line in lines}
    for line in lines[:-1]:
        assert {"step", "ok", "rc", "seconds", "started", "ended"} <= line.keys(), line
    summary = by["summary"]
    assert summary["failed"] == [] and summary["skipped"] == ["wheels"], summary
    assert all(by[s]["ok"] for s in REHEARSAL_STEPS[2:-1]), [
        (s, by[s].get("error")) for s in REHEARSAL_STEPS if not by[s].get("ok")
    ]

    assert by["imports"]["result"]["discord_imported"] is False
    assert by["model_8b"]["result"]["params"] > by["model_small"]["result"]["params"]
    float32_pair = by["agree"]["result"]["pairs"][0]
    assert float32_pair["agree_all"] is True and float32_pair["agree_prefix"] == 16
    assert by["selfcheck_int8"]["result"]["passed"] is True
    assert by["ask"]["text"]  # the reply, streamed to stdout
    # Each compute type really ran as itself, and the lanes as many replicas.
    assert by["bench_int8"]["result"]["compute_type"].startswith("int8")
    assert by["bench_float32"]["result"]["compute_type"] == "float32"
    assert by["lanes2_int8"]["result"]["inter_threads"] == 2
    assert by["lanes4_int8"]["result"]["inter_threads"] == 4
    assert "open_requests" in by["mixed_int8"]["result"]
    bandwidth = by["bandwidth"]["result"]["by_step"]
    assert set(bandwidth) == {"bench_int8", "bench_float32"}
    # float32 reads four bytes a weight, int8 one (plus its row scales).
    ratio = (bandwidth["bench_float32"]["weight_bytes_per_token"]
             / bandwidth["bench_int8"]["weight_bytes_per_token"])
    assert 3.0 < ratio < 4.0
    assert (tmp_path / "out" / "steps" / "ask.err").is_file()


@pytest.mark.slow
def test_a_spent_budget_skips_the_rest_but_records_every_step(tmp_path: Path) -> None:
    """A run cut short by its budget still says, step by step, what it did not do."""
    lines, _ = _rehearse(tmp_path / "out", GPU_BUDGET_S="6")
    steps = [line["step"] for line in lines]
    assert steps[0] == "env" and steps[-1] == "summary"
    skipped = [line for line in lines if "budget" in str(line.get("skipped", ""))]
    assert skipped, steps
    assert "bench_int8" in {line["step"] for line in skipped}
    assert all(line["ok"] is False and line["rc"] == 0 for line in skipped)
    # The cheap summaries run after the budget, from what was measured.
    assert lines[-3]["step"] == "gpu_memory" and lines[-3]["ok"]


def _cublas(
    tmp_path: Path, *search: Path, require: bool = False
) -> tuple[int, dict[str, Any], str]:
    env_file = tmp_path / "cublas.env"
    cmd = [sys.executable, str(STEPS_PY), "cublas", "--shim", str(tmp_path / "shim"),
           "--env-file", str(env_file)]
    for d in search:
        cmd += ["--search-dir", str(d)]
    if require:
        cmd.append("--require")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LD_LIBRARY_PATH": "/opt/x"})
    return proc.returncode, json.loads(proc.stdout), env_file.read_text()


@pytest.mark.slow
def test_cuda13_cublas_is_exposed_under_the_names_ctranslate2_opens(tmp_path: Path) -> None:
    lib = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (lib / name).write_bytes(b"\x7fELF")
    rc, out, env = _cublas(tmp_path, tmp_path / "site")
    assert rc == 0
    assert out["route"] == "cublas13-as-12"
    shim = tmp_path / "shim"
    assert os.readlink(shim / "libcublas.so.12") == str(lib / "libcublas.so.13")
    assert os.readlink(shim / "libcublasLt.so.12") == str(lib / "libcublasLt.so.13")
    # The shim first, then the real folder (libcublas.so.13 NEEDS libcublasLt.so.13 and
    # has no RUNPATH), then whatever was there before.
    assert env == f"export LD_LIBRARY_PATH='{shim}:{lib}:/opt/x'\n"


@pytest.mark.slow
def test_cuda12_cublas_is_used_as_it_is(tmp_path: Path) -> None:
    lib = tmp_path / "cuda12"
    lib.mkdir()
    for name in ("libcublas.so.12", "libcublasLt.so.12", "libcublas.so.13",
                 "libcublasLt.so.13"):
        (lib / name).write_bytes(b"\x7fELF")
    rc, out, env = _cublas(tmp_path, lib)
    assert (rc, out["route"]) == (0, "cublas12")
    assert not (tmp_path / "shim").exists()
    assert env == f"export LD_LIBRARY_PATH='{lib}:/opt/x'\n"


@pytest.mark.slow
def test_no_cublas_is_an_error_on_the_gpu_run_only(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    rc, out, env = _cublas(tmp_path, tmp_path / "empty")
    assert (rc, out["route"], env) == (0, "missing", "")
    rc, out, _ = _cublas(tmp_path, tmp_path / "empty", require=True)
    assert (rc, out["route"]) == (1, "missing")


@pytest.mark.slow
def test_gpu_memory_gives_each_step_its_peak(tmp_path: Path) -> None:
    from datetime import datetime

    base = datetime(2026, 12, 3, 11, 0, 0)
    t0 = base.timestamp()
    samples = tmp_path / "smi.csv"
    rows = [(0.0, 500), (1.0, 9000), (2.0, 700), (5.0, 20000), (6.0, 800)]
    samples.write_text("".join(
        f"{datetime.fromtimestamp(t0 + dt).strftime('%Y/%m/%d %H:%M:%S.%f')[:-3]}, {mib}, 143771\n"
        for dt, mib in rows
    ))
    results = tmp_path / "results.jsonl"
    results.write_text(
        json.dumps({"step": "a", "started": t0, "ended": t0 + 2.5}) + "\n"
        + json.dumps({"step": "b", "started": t0 + 4, "ended": t0 + 6.5}) + "\n"
    )
    proc = subprocess.run(
        [sys.executable, str(STEPS_PY), "gpu-memory", "--samples", str(samples),
         "--results", str(results)], capture_output=True, text=True, timeout=60, check=True,
    )
    out = json.loads(proc.stdout)
    assert out["samples"] == 5 and out["peak_mib"] == 20000 and out["total_mib"] == 143771
    assert out["peak_mib_by_step"] == {"a": 9000, "b": 20000}


def test_gpu_sh_never_asks_a_registry() -> None:
    """Every pip call in the GPU host's script is offline (the host has no network)."""
    text = GPU_SH.read_text()
    calls = [line for line in text.splitlines() if "pip install" in line]
    assert calls and all("--no-index" in line for line in calls)
    assert "scripts/setup.sh" not in text and "pip download" not in text
