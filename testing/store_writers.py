"""Several processes writing one scope at once, and the check that nothing was lost.

Each writer process opens the store (SQLite file or PostgreSQL URL), says
``ready``, waits for ``go`` on stdin (so all of them start together), then
sets the same scope's persona `writes` times, all concurrently, each to a text
no other write uses. Every write reads the value it replaces and records it in
the audit trail in the same transaction, so a lost update shows: two trail
rows replacing the same old value, a missing row, or a final value that is not
the last one recorded. `check_writes` reads the trail back and checks all three.

Run one writer: ``python -m testing.store_writers TARGET INDEX WRITES``.
`run_writers` starts several and returns their wall time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bot.store.db import Database
from bot.store.scopes import Scope
from bot.store.store import SettingsStore

#: The one scope every writer writes.
SCOPE = Scope.channel(4242, 77)
ROOT = Path(__file__).resolve().parent.parent


def text_of(index: int, i: int) -> str:
    return f"writer {index} write {i}"


async def _write(target: str, index: int, writes: int) -> None:
    store = await SettingsStore.open(
        target if target.startswith("postgres") else Path(target),
        history_per_scope=1_000_000, busy_timeout_ms=60_000,
    )
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(
            store.set_system_prompt(SCOPE, text_of(index, i), actor_id=index + 1)
            for i in range(writes)
        ))
    finally:
        await store.close()


def run_writers(target: str, processes: int, writes: int, timeout_s: float = 600) -> float:
    """Start `processes` writers, let them go at once; seconds from go to the last exit."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "testing.store_writers", target, str(i), str(writes)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a writer did not start (said {line!r})")
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            if p.wait(timeout=timeout_s) != 0:
                raise RuntimeError(f"a writer failed with status {p.returncode}")
        return time.perf_counter() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def check_writes(db: Database, processes: int, writes: int) -> dict[str, Any]:
    """What the trail and the setting say about the writes; `lost` is 0 when none was lost."""
    trail = await db.read(
        "SELECT old_value, new_value FROM settings_history WHERE scope_kind = ? "
        "AND scope_id = ? AND key = 'system_prompt' ORDER BY id",
        (SCOPE.kind.value, SCOPE.id),
    )
    final = await db.read(
        "SELECT value FROM settings WHERE scope_kind = ? AND scope_id = ? "
        "AND key = 'system_prompt'",
        (SCOPE.kind.value, SCOPE.id),
    )
    expected = {json.dumps(text_of(p, i)) for p in range(processes) for i in range(writes)}
    recorded = [str(new) for _, new in trail]
    broken_links = sum(
        1 for before, (old, _) in zip([None, *recorded], trail, strict=False) if old != before
    )
    missing = len(expected - set(recorded))
    final_value = str(final[0][0]) if final else None
    return {
        "writes": processes * writes,
        "trail_rows": len(trail),
        "missing": missing,
        "broken_links": broken_links,
        "final_is_last": bool(recorded) and final_value == recorded[-1],
        "lost": missing + broken_links + (len(trail) - len(expected)),
    }


if __name__ == "__main__":
    asyncio.run(_write(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
