"""The console's terminal: reading lines, Ctrl-C, the terminal's modes, readline history.

Lines are read on a daemon thread so the event loop stays free to stream a
reply while the member types, and leaving never hangs on a blocked read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from bot import wording
from bot.app import App, open_app
from bot.config import Settings
from bot.console.commands import Console


class _Unreadable:
    """A line that was not valid UTF-8: said so, skipped, and the console carries on."""


UNREADABLE = _Unreadable()
Line = str | _Unreadable | None


class _LineReader:
    """Read stdin on a daemon thread so the event loop stays free and exit never hangs.

    Piped input is read as bytes and decoded line by line, so one invalid byte
    costs that line only (a text stream's strict decoder would fail for good,
    and the console used to end there with "bye").
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interactive: bool) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Line] = asyncio.Queue()
        self._interactive = interactive
        self._want = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="console-input").start()

    def _read(self) -> Line:
        if self._interactive:
            return input("you> ")
        binary = getattr(sys.stdin, "buffer", None)
        if binary is None:
            text = sys.stdin.readline()
            return None if text == "" else text
        raw: bytes = binary.readline()
        if raw == b"":
            return None
        return raw.decode("utf-8")

    def _run(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            line: Line
            try:
                line = self._read()
            except EOFError:
                line = None
            except UnicodeDecodeError:
                line = UNREADABLE
            except Exception:
                line = None
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
            if line is None:
                return

    async def readline(self) -> Line:
        self._want.set()
        return await self._queue.get()


def _save_terminal() -> Callable[[], None]:
    """Remember the terminal's modes so leaving always gives them back.

    readline switches echo and line buffering off while it waits for a line,
    and a Ctrl-C at the prompt ends the console while the reader thread is
    still inside readline; without this the user's shell would be left with
    no echo.
    """
    try:
        import termios
    except ImportError:  # not a POSIX system
        return lambda: None
    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError, termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore


def _setup_history() -> Callable[[], None]:
    try:
        import readline
    except ImportError:
        return lambda: None
    path = Path(os.environ.get("BOT_CONSOLE_HISTORY", Path.home() / ".llamacord_history"))
    with contextlib.suppress(OSError):
        readline.read_history_file(path)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


async def console_loop(app: App, interactive: bool) -> None:
    console = Console(app)
    loop = asyncio.get_running_loop()
    reader = _LineReader(loop, interactive)
    stop_requested = asyncio.Event()

    def on_sigint() -> None:
        # Only the reply stops while one is being written; at the prompt, Ctrl-C leaves.
        if console.interrupt():
            return
        if not stop_requested.is_set():
            console.write("\n")  # the prompt (and any half-typed line) stays on its own line
        stop_requested.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        while not stop_requested.is_set():
            read = asyncio.ensure_future(reader.readline())
            stopper = asyncio.ensure_future(stop_requested.wait())
            done, _ = await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                stopper.cancel()
                break
            stopper.cancel()
            line = read.result()
            if line is None:
                break
            if isinstance(line, _Unreadable):
                console.write(wording.CONSOLE_NOT_UTF8 + "\n")
                continue
            if not interactive and line.strip():
                console.write(f"you> {line.strip()}\n")
            if not await console.handle(line):
                break
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    console.write("bye\n")


async def run_console(settings: Settings) -> int:
    interactive = sys.stdin.isatty()
    if settings.model_dir is None:
        print(wording.CONSOLE_PREPARING, file=sys.stderr, flush=True)
    restore_terminal = _save_terminal() if interactive else (lambda: None)
    save_history = _setup_history() if interactive else (lambda: None)
    async with open_app(settings, progress=lambda s: print(s, file=sys.stderr, flush=True)) as app:
        info = app.engine.info
        print(wording.console_banner(info.model_name, info.device, info.compute_type),
              flush=True)
        if app.models.several:
            print(wording.console_models(app.models.names), flush=True)
        try:
            await console_loop(app, interactive)
        finally:
            save_history()
            restore_terminal()
    return 0


