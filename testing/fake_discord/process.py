"""A `FakeDiscord` served from a process of its own, driving a scenario there.

In one process the fake's Python competes with the bot's for the GIL however the
loops are arranged, and a latency measured there includes the fake. Discord is
another machine: here the fake runs in a child process on 127.0.0.1, runs a whole
scenario on its own loop (injecting, waiting, computing what it measured) and hands
the result back. The bot, in the parent, still receives real gateway events and
makes real HTTP calls to the fake.

The two talk in lines over the child's stdin and stdout. The child writes JSON
objects, each with an ``"event"``: first ``listening`` (with ``api_base`` and
``gateway_url``), then any the scenario marks (answered by the parent with ``ok``
once it has done what it does at that point), last ``result`` (with ``result``).
The parent closing the child's stdin tells the child to stop: the child closes
the fake and exits; an end of stdin before the result (the parent failed or was
killed) cancels the scenario, so no fake is left serving.

Parent::

    async with FakeProcess("bench.flood_fake", "--presses", "20") as remote:
        bot = build_client(LlamaBot, app=app)   # discord.py points at the child
        async with running_client(bot):
            while (event := await remote.event(timeout=600))["event"] != "result":
                await remote.send("ok")

Child (``python -m bench.flood_fake``)::

    sys.exit(asyncio.run(serve_for_parent(options, scenario)))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from testing.fake_discord.server import FakeDiscord, discord_pointed_at

log = logging.getLogger(__name__)

#: The source checkout's root, where `python -m <module>` finds the child's module.
CHECKOUT = Path(__file__).resolve().parents[2]
STOP_WAIT_S = 10.0


class FakeProcess:
    """Start `python -m module *args` (a child calling `serve_for_parent`) and point
    discord.py at the fake it serves; on exit stop the child, killing it if it lingers."""

    def __init__(self, module: str, *args: str) -> None:
        self._argv = [sys.executable, "-m", module, *args]
        self._proc: asyncio.subprocess.Process | None = None
        self._stack = contextlib.ExitStack()
        self.api_base = ""
        self.gateway_url = ""

    async def __aenter__(self) -> FakeProcess:
        # stderr is inherited: the child's logs and tracebacks land beside ours.
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, cwd=CHECKOUT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            first = await self.event(timeout=60)
            if first.get("event") != "listening":
                raise RuntimeError(f"the fake's process began with {first!r}")
            self.api_base, self.gateway_url = str(first["api_base"]), str(first["gateway_url"])
            self._stack.enter_context(discord_pointed_at(self.api_base, self.gateway_url))
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            await self._stop()

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has ended (None while it runs)."""
        return None if self._proc is None else self._proc.returncode

    async def send(self, line: str) -> None:
        """One line to the child's stdin (``ok`` answers a mark)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        await self._proc.stdin.drain()

    async def event(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - a bound on each wait
        """The child's next JSON line; its end of output is an error with its exit code."""
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            if not raw:
                code = await asyncio.wait_for(self._proc.wait(), STOP_WAIT_S)
                raise RuntimeError(f"the fake's process ended early (exit {code})")
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("fake process: %s", raw.decode(errors="replace").rstrip())
                continue
            if isinstance(event, dict):
                return event

    async def _stop(self) -> None:
        """Close the child's stdin (it stops by itself), then terminate, then kill.

        Shielded: a Ctrl-C cancelling the parent must not leave the child serving."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        await asyncio.shield(_stop_process(proc))


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    for step in (None, proc.terminate, proc.kill):
        if step is not None:
            with contextlib.suppress(ProcessLookupError):
                step()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
            return


# ------------------------------------------------------------------------- the child's side

#: How long a scenario whose parent left may take to end before the child exits anyway.
ORPHAN_GRACE_S = 5.0


class ParentPipe:
    """The child's end: JSON events out on stdout, the parent's lines in from stdin."""

    def __init__(self, lines: asyncio.Queue[str | None]) -> None:
        self._lines = lines

    def emit(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def mark(self, event: str) -> None:
        """Tell the parent where the scenario is and wait until it answers ``ok``."""
        self.emit(event)
        line = await self._lines.get()
        if line != "ok":
            raise RuntimeError(f"the parent answered {event!r} with {line!r}")


Scenario = Callable[[FakeDiscord, ParentPipe], Coroutine[Any, Any, dict[str, Any]]]


async def serve_for_parent(options: dict[str, Any], scenario: Scenario) -> int:
    """Serve a `FakeDiscord(**options)` on 127.0.0.1, run `scenario` and report its result.

    Returns the exit code: 0 once the result is out and the parent closed stdin, 1
    when stdin ended first (the scenario is cancelled and the fake closed)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    parent_gone = asyncio.Event()

    async def read_lines() -> None:
        while raw := await reader.readline():
            await lines.put(raw.decode().strip())
        parent_gone.set()
        await lines.put(None)

    pipe = ParentPipe(lines)
    reading = asyncio.create_task(read_lines())
    try:
        async with FakeDiscord(**options) as fake:
            pipe.emit("listening", api_base=fake.api_base, gateway_url=fake.gateway_url)
            running = asyncio.create_task(scenario(fake, pipe))
            gone = asyncio.create_task(parent_gone.wait())
            await asyncio.wait({running, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                log.warning("the parent went away before the scenario ended")
                await _cancel_or_exit(running)
                return 1
            gone.cancel()
            pipe.emit("result", result=running.result())
            # The parent closes its bot first, then our stdin: only then stop serving.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(parent_gone.wait(), 60)
            return 0
    finally:
        reading.cancel()


async def _cancel_or_exit(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it ends; past `ORPHAN_GRACE_S`, leave the process at once.

    Cancelling once is not enough on Python 3.11: `asyncio.wait_for` swallows a
    cancellation that arrives as its inner wait completes, and the fake's `wait_for`
    re-waits every 50 ms, so a scenario waiting for presses nobody will answer could
    outlive its parent by minutes, still serving."""
    deadline = asyncio.get_running_loop().time() + ORPHAN_GRACE_S
    while not task.done():
        if asyncio.get_running_loop().time() > deadline:
            log.error("the scenario ignored cancellation; exiting without cleanup")
            os._exit(1)
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
