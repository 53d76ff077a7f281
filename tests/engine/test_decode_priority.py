"""Decoding yields the cores to the event loop: CTranslate2's threads start lowered.

A flood of button presses must be acknowledged while replies decode; on Linux a
thread starts at its creator's nice value, so the weights are loaded on a thread
of their own lowered by `decode_nice`, and no pooled thread is left lowered.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from bot.engine import Engine, EngineOptions
from bot.engine.loading import load_off_loop

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread nice values are Linux's")


def _nice(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@linux_only
async def test_threads_started_by_the_load_inherit_the_lowered_priority() -> None:
    started: list[int] = []
    release = threading.Event()

    def load() -> int:
        worker = threading.Thread(target=lambda: (started.append(threading.get_native_id()),
                                                  release.wait(5)))
        worker.start()
        return threading.get_native_id()

    loader = await load_off_loop(load, nice=5)
    try:
        here = _nice(threading.get_native_id())
        assert loader != threading.get_native_id()
        assert _nice(started[0]) == min(19, here + 5)
        assert os.getpriority(os.PRIO_PROCESS, 0) == here  # this thread is as it was
    finally:
        release.set()


async def test_a_failed_load_raises_in_the_awaiting_task() -> None:
    def load() -> None:
        raise ValueError("broken weights")

    with pytest.raises(ValueError, match="broken weights"):
        await load_off_loop(load, nice=3)


@linux_only
async def test_ctranslate2_decodes_on_lowered_threads(smol_model_dir: Path) -> None:
    before = set(os.listdir("/proc/self/task"))
    engine = await Engine.load(smol_model_dir, EngineOptions(device="cpu", inter_threads=2,
                                                            decode_nice=7))
    try:
        loop_nice = _nice(threading.get_native_id())
        new = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
        lowered = [t for t in new if _nice(t) == min(19, loop_nice + 7)]
        assert len(lowered) >= 2  # a thread per replica, at least
        assert _nice(threading.get_native_id()) == loop_nice
    finally:
        await engine.close()
