"""A pytest plugin: a callback that blocks the event loop fails the test that ran it.

asyncio's debug mode times every callback around `Handle._run` and logs those over
`loop.slow_callback_duration`. This does the same for every test, without debug
mode's cost, and turns the finding into a failure. It measures the callback's own
work, the CPU time of the thread that ran it (`time.thread_time`), not the wall
clock: on a busy machine a callback can take long without doing much, and that is
not a stall the code can fix. Garbage collection that happens to run inside a
callback is subtracted too: it is the whole process's debt, paid wherever it falls.
Anything over `STALL_CPU_S` is one.

A test that must stall (a known stall, kept visible until it is fixed) says so with
`@pytest.mark.allows_stall(reason)`.

Enabled for the whole suite by `-p testing.stall_guard` (pyproject `addopts`).
"""

from __future__ import annotations

import asyncio
import asyncio.events
import gc
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import AsyncGeneratorType, CoroutineType
from typing import Any

import pytest

STALL_CPU_S = 0.25
"""How much CPU one callback may use before it counts as blocking the loop."""


@dataclass(frozen=True)
class Stall:
    cpu_s: float
    where: str


class _Recorder:
    """Stalls seen since the last `take`, from whichever thread's loop ran them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stalls: list[Stall] = []

    def add(self, stall: Stall) -> None:
        with self._lock:
            self._stalls.append(stall)

    def take(self) -> list[Stall]:
        with self._lock:
            taken, self._stalls = self._stalls, []
        return taken


recorder = _Recorder()


class _GcClock(threading.local):
    """CPU time this thread has spent in the garbage collector."""

    spent = 0.0
    started = 0.0


_gc_clock = _GcClock()


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_clock.started = time.thread_time()
    else:
        _gc_clock.spent += time.thread_time() - _gc_clock.started

_original_run: Callable[[asyncio.Handle], None] | None = None
_installs = 0


def _describe(handle: asyncio.Handle) -> str:
    """Where the stall was: the awaiting chain of the task the callback stepped, if any."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        frames: list[str] = [f"task {task.get_name()!r}"]
        coro: Any = task.get_coro()
        while isinstance(coro, CoroutineType | AsyncGeneratorType):
            code, frame = (coro.cr_code, coro.cr_frame) if isinstance(coro, CoroutineType) \
                else (coro.ag_code, coro.ag_frame)
            line = frame.f_lineno if frame is not None else code.co_firstlineno
            frames.append(f"{code.co_qualname} ({code.co_filename}:{line})")
            awaited = coro.cr_await if isinstance(coro, CoroutineType) else coro.ag_await
            if not isinstance(awaited, CoroutineType) and frame is not None:
                # `async with` over an async generator: step into the generator itself.
                owner = frame.f_locals.get("self")
                awaited = getattr(owner, "gen", awaited)
            coro = awaited
        return " -> ".join(frames)
    return repr(handle)


def _timed_run(handle: asyncio.Handle) -> None:
    assert _original_run is not None
    start, gc_before = time.thread_time(), _gc_clock.spent
    try:
        _original_run(handle)
    finally:
        used = time.thread_time() - start - (_gc_clock.spent - gc_before)
        if used > STALL_CPU_S:
            recorder.add(Stall(used, _describe(handle)))


def install() -> None:
    """Time every callback of every event loop in this process (counted: a nested
    pytest run, as in the guard's own tests, installs and uninstalls in pairs)."""
    global _original_run, _installs
    _installs += 1
    if _original_run is None:
        gc.callbacks.append(_on_gc)
        _original_run = asyncio.events.Handle._run
        setattr(asyncio.events.Handle, "_run", _timed_run)  # noqa: B010


def uninstall() -> None:
    global _original_run, _installs
    _installs -= 1
    if _installs <= 0 and _original_run is not None:
        gc.callbacks.remove(_on_gc)
        setattr(asyncio.events.Handle, "_run", _original_run)  # noqa: B010
        _original_run = None
        _installs = 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allows_stall(reason): the test is known to block the event loop over "
        f"{STALL_CPU_S} s of CPU in one callback; the stall guard lets it pass",
    )
    install()


def pytest_unconfigure(config: pytest.Config) -> None:
    uninstall()


def _guard(item: pytest.Item, phase: str) -> Generator[None, object, object]:
    recorder.take()
    outcome = yield
    stalls = recorder.take()
    if stalls and item.get_closest_marker("allows_stall") is None:
        lines = [f"  {s.cpu_s:.2f} s CPU in {s.where}" for s in stalls]
        pytest.fail(
            f"the event loop was blocked during {phase} by a callback using more than "
            f"{STALL_CPU_S} s of CPU:\n" + "\n".join(lines),
            pytrace=False,
        )
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item, "the test"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item, "teardown"))
