"""Crash safety: a writer SIGKILLed mid-write loses nothing it reported as saved.

A child process writes settings in a loop and prints one line after each write
returns (i.e. after COMMIT). The parent kills it with SIGKILL at an arbitrary
moment, then reopens the file: SQLite's integrity check must pass and every
reported write must be there. Two rounds on the same file also exercise
recovery from a WAL left behind by a killed writer.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore

pytestmark = pytest.mark.slow  # every story here runs `python -m bot` in a process

GUILD = 4242 << 22
REPO = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, sys
from pathlib import Path
from bot.store.scopes import Scope
from bot.store.store import SettingsStore

def report(line: str) -> None:
    # One write per line: a short write to a pipe is atomic, so a kill cannot leave
    # half a report (print() writes its pieces separately when unbuffered).
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

async def main() -> None:
    store = await SettingsStore.open(Path(sys.argv[1]))
    guild, i = int(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    while True:
        scope = Scope.channel(1000 + i, guild)
        await store.set_knobs(scope, {"max_new_tokens": 1 + i % 1000, "top_k": i % 50},
                              actor_id=7)
        report(f"knobs {i}")
        await store.set_system_prompt(scope, f"persona {i} " + "x" * 3000, actor_id=7)
        report(f"prompt {i}")
        i += 1

asyncio.run(main())
"""


def _run_and_kill(path: Path, start: int, min_reports: int, rng: random.Random) -> list[str]:
    """Start the writer, let it report `min_reports` commits, SIGKILL it; return its reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(GUILD), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while len(lines) < min_reports:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early: {proc.stderr.read()}")
            if line.strip() != "ready":
                lines.append(line.strip())
            assert time.monotonic() < deadline, "writer too slow"
        time.sleep(rng.uniform(0, 0.02))  # land the kill at an arbitrary point of a write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Lines already printed before the kill are still in the pipe; only whole
        # lines count as reports.
        rest = proc.stdout.read()
        lines += [ln.strip() for ln in rest.splitlines(keepends=True)
                  if ln.endswith("\n") and ln.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


async def _check(path: Path, reports: list[str]) -> None:
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = await SettingsStore.open(path)
    try:
        for report in reports:
            what, number = report.split()
            i = int(number)
            loc = Location(GUILD, 1000 + i)
            eff = await store.resolve(loc)
            if what == "knobs":
                assert eff.knobs.max_new_tokens == 1 + i % 1000, report
                assert eff.knobs.top_k == i % 50, report
            else:
                assert eff.system_prompt is not None, report
                assert eff.system_prompt.startswith(f"persona {i} "), report
        # The store is writable after the crash.
        await store.set_knobs(Scope.server(GUILD), {"temperature": 1.0}, actor_id=1)
    finally:
        await store.close()


def test_sigkill_mid_write_loses_no_reported_commit(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "settings.sqlite3"
    rng = random.Random(7)
    start = 0
    for _ in range(2):
        reports = _run_and_kill(path, start, min_reports=rng.randint(20, 60), rng=rng)
        assert reports, "the writer reported nothing"
        asyncio.run(_check(path, reports))
        start += 10_000
