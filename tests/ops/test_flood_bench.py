"""`bench --flood` serves the fake Discord from a process of its own by default, and
that process never outlives the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from discord.http import Route

from testing.fake_discord.process import CHECKOUT, FakeProcess

FLOOD_FIELDS = ("presses", "acknowledged", "refused_in_response", "late_over_3s",
                "ack_ms_min", "ack_ms_p50", "ack_ms_p99", "ack_ms_max",
                "bot_loop_cpu_ms_per_press", "fake_cpu_ms_per_press",
                "tokens_decoded_during_flood", "process_cpu_share", "load_avg_1m")


def _processes_with(marker: str) -> list[str]:
    """Pids of processes whose environment carries `marker` (this test's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in environ:
                found.append(entry.name)
    return found


@pytest.mark.slow
def test_the_flood_bench_runs_the_fake_in_a_process_of_its_own(tiny_model_dir: Path) -> None:
    tag = uuid.uuid4().hex
    marker = f"FLOOD_BENCH_TEST={tag}"
    env = {**os.environ, "FLOOD_BENCH_TEST": tag, "BOT_MODEL_DIR": str(tiny_model_dir),
           "BOT_DEVICE": "cpu", "BOT_CPU_THREADS": "1", "BOT_INTER_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--env-file", "/dev/null", "--flood",
         "--presses", "20", "--json"],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fake_mode"] == "process"
    assert {key: out.get(key) is not None for key in FLOOD_FIELDS} == dict.fromkeys(
        FLOOD_FIELDS, True)
    assert out["presses"] == out["acknowledged"] == 20
    assert out["late_over_3s"] == 0
    assert out["fake_cpu_ms_per_press"] > 0 and out["bot_loop_cpu_ms_per_press"] > 0
    assert not _processes_with(marker)  # the fake's process ended with the bench


@pytest.mark.slow
async def test_the_fake_process_stops_when_its_parent_leaves_before_the_result() -> None:
    base = Route.BASE
    async with FakeProcess("bench.flood_fake", "--presses", "1") as remote:
        assert remote.api_base.startswith("http://127.0.0.1:")
        assert remote.api_base == Route.BASE
        # The scenario waits for the bot; none comes, and the parent leaves.
        assert await remote.event(timeout=30) == {"event": "connected"}
    assert remote.returncode == 1  # it stopped by itself, cancelled, not killed
    assert base == Route.BASE
