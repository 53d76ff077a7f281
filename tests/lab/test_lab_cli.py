"""`python -m bot probs` and `python -m bot compare` as a shell user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testing.processes import console_env, run_bot_cli

pytestmark = pytest.mark.slow  # every story here runs `python -m bot` in a process


@pytest.fixture
def env(tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    return console_env(tiny_model_dir, tmp_path / "db" / "bot.sqlite3")


def run_bot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_bot_cli(env, *args)


def test_probs_json_and_png(env: dict[str, str], tmp_path: Path) -> None:
    png = tmp_path / "step.png"
    done = run_bot(env, "probs", "Hello there", "--system", "Be brief.", "--top-k", "5",
                   "--top-p", "1", "--top", "8", "--seed", "9", "--json", "--png", str(png))
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    data = json.loads(line)
    assert data["knobs"]["top_k"] == 5
    candidates = data["candidates"]
    assert len(candidates) >= 8
    assert all({"id", "text", "raw", "final"} <= set(c) for c in candidates)
    assert sum(c["final"] for c in candidates) == pytest.approx(1.0, abs=1e-6)
    assert sum(1 for c in candidates if c["final"] > 0) == data["kept"] == 5
    assert data["seed"] == 9 and data["sample"]["final"] > 0
    assert png.read_bytes().startswith(b"\x89PNG")
    # The same again gives the same numbers and the same seeded pick.
    again = json.loads(run_bot(env, "probs", "Hello there", "--system", "Be brief.",
                               "--top-k", "5", "--top-p", "1", "--top", "8", "--seed", "9",
                               "--json").stdout)
    assert again["candidates"] == candidates and again["sample"] == data["sample"]
    # Walking on: the greedy token appended.
    step2 = json.loads(run_bot(env, "probs", "Hello there", "--system", "Be brief.", "--json",
                               "--after", str(data["greedy"]["id"])).stdout)
    assert step2["step"] == 1 and step2["generated"] == [data["greedy"]["id"]]


def test_probs_table_and_plain_errors(env: dict[str, str]) -> None:
    done = run_bot(env, "probs", "Hello", "--top-p", "0.5")
    assert done.returncode == 0, done.stderr
    assert "raw" in done.stdout and "final" in done.stdout and "greedy picks" in done.stdout
    bad = run_bot(env, "probs", "Hello", "--top", "99")
    assert bad.returncode == 1 and "between 1 and 40" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_compare_json_one_object_per_variant(env: dict[str, str]) -> None:
    done = run_bot(env, "compare", "Hello", "--variant", "temperature=0.1",
                   "--variant", "temperature=1.5 top_p=1", "--variant", "creative",
                   "--seed", "7", "--max-new-tokens", "8", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [o["label"] for o in out] == ["temperature=0.1", "temperature=1.5 top_p=1",
                                         "creative"]
    assert all({"knobs", "text"} <= set(o) for o in out)
    assert [o["knobs"]["temperature"] for o in out] == [0.1, 1.5, 1.1]
    assert {o["seed"] for o in out} == {7}
    assert all(o["new_tokens"] > 0 for o in out)


def test_compare_without_variants_and_with_a_bad_one(env: dict[str, str]) -> None:
    done = run_bot(env, "compare", "Hello", "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    assert "=== current settings" in done.stdout and "=== temperature=1.5" in done.stdout
    bad = run_bot(env, "compare", "Hello", "--variant", "spicy")
    assert bad.returncode == 1 and "neither a preset" in bad.stderr
