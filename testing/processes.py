"""`python -m bot ...` in a real process, as an operator or a shell user runs it.

The environment a test gives the bot starts from this process's minus anything that
configures the bot (`clean_env`), so a developer's own `BOT_*` settings or token can
never leak into a test; `console_env` adds what the console and the other
command-line tools need; `run_bot_cli` runs one command to its end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: the bot's processes run here, as `run.sh` runs them."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without `BOT_*` and `DISCORD_TOKEN`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_") and k != "DISCORD_TOKEN"}
    env.update(extra)
    return env


def console_env(model_dir: Path, db: Path, **extra: str) -> dict[str, str]:
    """The console's environment: the model, a database, the CPU, one thread."""
    return clean_env(
        BOT_MODEL_DIR=str(model_dir),
        BOT_DATABASE_PATH=str(db),
        BOT_DEVICE="cpu",
        BOT_CPU_THREADS="1",
        BOT_BATCH_WAIT_MS="5",
        BOT_CONSOLE_HISTORY=str(db.parent / "history"),
        PYTHONUNBUFFERED="1",
        **extra,
    )


def run_bot_cli(env: dict[str, str], *args: str, lines: list[str] | None = None,
                stdin: str | None = None, timeout: float = 120,
                ) -> subprocess.CompletedProcess[str]:
    """`python -m bot --env-file /dev/null ARGS`, fed `lines` (or `stdin`), to its end."""
    if lines is not None:
        stdin = "".join(line + "\n" for line in lines)
    return subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", *args],
        input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
        check=False,
    )


#: A `/knobs show` row: the knob, its value, (its source).
KNOB_ROW = re.compile(r"^\s+(\w+)\s+(.+?)\s+\((\w+)\)$")


def run_console(env: dict[str, str], lines: list[str], command: str = "console",
                ) -> subprocess.CompletedProcess[str]:
    return run_bot_cli(env, command, lines=lines, timeout=60)


def transcript(stdout: str) -> list[tuple[str, str]]:
    """(line typed, what the console answered) in order; the banner is dropped."""
    turns = []
    for chunk in stdout.split("you> ")[1:]:
        typed, _, answer = chunk.partition("\n")
        turns.append((typed, answer))
    return turns


def knob_table(text: str) -> dict[str, tuple[str, str]]:
    """`/knobs show` output as {knob: (shown value, source)}."""
    rows = [KNOB_ROW.match(line) for line in text.splitlines()]
    return {m[1]: (m[2], m[3]) for m in rows if m}
