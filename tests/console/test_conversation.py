"""The console's conversation: plain lines continue it, /new, /history, a restart.

The restart story runs `python -m bot console` in real processes against the tiny
model (random weights, a real tokenizer, a 256-token window). The fitting story
runs the console in-process with a scripted model, so every answer has an exact
token count and what fits is decided by arithmetic, not by what a random model says.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from bot.console import Console
from testing.apps import core_app
from testing.processes import console_env, run_bot_cli

HISTORY_ROW = re.compile(r"^  (you|bot)\s+(\d+) tokens  (.*?)(  \[left out\])?$")


def run(env: dict[str, str], lines: list[str]) -> list[tuple[str, str]]:
    """Run the console on `lines`; returns (line typed, what the console answered)."""
    done = run_bot_cli(env, "console", lines=lines)
    assert done.returncode == 0, done.stderr
    said: list[tuple[str, str]] = []
    for chunk in done.stdout.split("you> ")[1:]:
        typed, _, answer = chunk.partition("\n")
        said.append((typed, answer))
    return said


def rows(text: str) -> list[tuple[str, int, str, bool]]:
    """`/history` rows as (who, tokens, text shown, left out)."""
    found = [HISTORY_ROW.match(line) for line in text.splitlines()]
    return [(m[1], int(m[2]), m[3], m[4] is not None) for m in found if m]


@pytest.fixture
def env(tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    return console_env(tiny_model_dir, tmp_path / "db" / "bot.sqlite3", BOT_SEED="7")


@pytest.mark.slow
def test_plain_lines_continue_and_new_starts_afresh_across_a_restart(
    env: dict[str, str],
) -> None:
    said = run(env, [
        "/history",
        "/knobs set max_new_tokens=8 min_new_tokens=8",
        "first question",
        "second question",
        "/history",
    ])
    assert said[0][1] == "No conversation yet: the next line starts one.\n"
    history = rows(said[4][1])
    assert [(who, text) for who, _, text, _ in history][0::2] == [
        ("you", "first question"), ("you", "second question")]
    assert [who for who, *_ in history] == ["you", "bot", "you", "bot"]
    assert all(not out for *_, out in history)
    assert all(tokens > 0 for who, tokens, _, _ in history if who == "you")
    # A new process: the conversation survived; /new starts a fresh one.
    after = run(env, ["/history", "/new", "third question", "/history"])
    assert rows(after[0][1]) == history
    assert after[1][1] == "Started a new conversation.\n"
    fresh = rows(after[3][1])
    assert [who for who, *_ in fresh] == ["you", "bot"] and fresh[0][2] == "third question"


async def test_history_marks_the_turns_that_will_be_left_out(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # In-process with a scripted model, so each answer has an exact token count: about
    # 90-token answers in a 256-token window with 100 kept for the next reply leave
    # room for one earlier exchange, not two.
    answer = "word " * 30
    out = io.StringIO()
    async with core_app(tiny_model_dir, tmp_path, answer, 0.0) as app:
        console = Console(app, out=out)
        tokens = len(app.engine.bundle.tokenizer.encode(answer))
        said = {}
        for line in ["/knobs set max_new_tokens=100", "q one", "q two", "/history", "q three"]:
            out.seek(0)
            out.truncate()
            assert await console.handle(line)
            said[line] = out.getvalue()
    history = rows(said["/history"])
    assert history == [("you", 4, "q one", True), ("bot", tokens, answer.strip()[:59] + "…", True),
                       ("you", 4, "q two", False),
                       ("bot", tokens, answer.strip()[:59] + "…", False)]
    assert said["/history"].splitlines()[0] == (
        "4 turns; the next ask sends 2 (context window 256 tokens, 100 kept for the reply):")
    # The ask that followed really left those two turns out, and its footer says so.
    assert said["q three"].endswith("· 2 earlier turns left out to fit the context]\n")
    assert "left out" not in said["q two"]
