"""`bench --models` runs end to end on two tiny models and reports every figure it promises."""

from __future__ import annotations

from pathlib import Path

from bench.models_bench import models_bench
from bot.config import load_settings
from bot.hosting.catalog import ModelSpec, weight_bytes_of
from testing.model_factory import make_tiny_model


async def test_models_bench_reports_load_switching_and_both_at_once(tmp_path: Path) -> None:
    dirs = [make_tiny_model(tmp_path, seed=s) for s in (0, 1)]
    specs = [ModelSpec(name=n, dir=d, weight_bytes=weight_bytes_of(d))
             for n, d in zip(("one", "two"), dirs, strict=True)]
    settings = load_settings(None, device="cpu", cpu_threads=1, inter_threads=1)
    out = await models_bench(settings, specs, new_tokens=4, repeats=2, streams=2)
    for name in ("one", "two"):
        model = out["models"][name]
        assert model["load_s"] > 0 and model["first_ttft_s"] > 0 and model["warm_ttft_s"] > 0
        assert out["switching"][name]["switch_s"] > 0
        assert out["switching"][name]["first_ttft_after_switch_s"] > 0
        assert len(out["together"]["stream_decode_tok_s"][name]) == 2
        assert out["together"]["per_model_tok_s"][name] > 0
    # Alternating under a one-model budget unloads the other model at every switch.
    assert out["switching"]["evictions"] == 4
    assert out["together"]["aggregate_tok_s"] > 0
