"""The local console: the product's /ask, /system and /knobs without Discord.

It runs the same core (engine, settings store, knob parsing) against the same
database as the bot, in a server and channel scope of its own, so anyone can
try the bot without a token and an operator can check a persona before going
live. Commands mirror the slash commands; `--server` acts on the console's
server scope instead of its channel scope.

The console holds one conversation: each line continues it, `/new` starts a
fresh one, `/history` shows what the next ask will send. Its turns live in the
database (place ``console:<channel>``), so the conversation survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from bot.app import App, open_app
from bot.asks import footer, persona, resolve_conversation, resolve_request
from bot.config import Settings
from bot.conversation import history_of, history_report
from bot.engine import Finished, Queued, TextDelta
from bot.engine.streaming import token_pieces
from bot.errors import UserFacingError
from bot.knobs import (
    KNOB_NAMES,
    PRESETS,
    build_knobs,
    display_knob,
    format_knob,
    parse_knob_text,
)
from bot.settings.scopes import Location, Scope, ScopeKind
from bot.settings.turns import NewExchange, TurnStore

# Ids of the console's own scopes. Discord snowflakes are far larger, so these
# never collide with a real server sharing the same database.
CONSOLE_GUILD_ID = 1
CONSOLE_CHANNEL_ID = 2
CONSOLE_USER_ID = 3

HELP = """\
Commands (a line without a slash is an /ask; each ask continues the conversation):
  /ask <prompt>                 stream a reply
  /new                          start a new conversation
  /history                      the turns the next ask sends, with token counts
  /system show                  the persona in effect here
  /system set <text> [--server] set the persona for this channel (or the server)
  /system reset [--server]      remove it
  /knobs show                   every sampling setting and where it comes from
  /knobs set k=v ... [--server] e.g. /knobs set temperature=0.9 top_k=40 stop="\\n\\n"
  /knobs reset [knob ...] [--server]
  /knobs preset precise|balanced|creative [--server]
  /tokens <text>                how the model's tokenizer splits text
  /help, /quit                  (Ctrl-C stops a reply; at the prompt, Ctrl-C, Ctrl-D
                                or /quit leaves)"""


@dataclass
class Console:
    app: App
    out: TextIO = field(default_factory=lambda: sys.stdout)
    location: Location = field(
        default_factory=lambda: Location(guild_id=CONSOLE_GUILD_ID, channel_id=CONSOLE_CHANNEL_ID,
                                         user_id=CONSOLE_USER_ID)
    )
    current: Any = None  # the Generation being streamed, for Ctrl-C
    turns: TurnStore = field(init=False)

    def __post_init__(self) -> None:
        self.turns = TurnStore(self.app.store.db)

    @property
    def place(self) -> str:
        """Where the console's current conversation is remembered in the database."""
        return f"console:{self.location.channel_id}"

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def scope(self, server: bool) -> Scope:
        if server:
            return Scope(ScopeKind.SERVER, CONSOLE_GUILD_ID, guild_id=CONSOLE_GUILD_ID)
        return Scope(ScopeKind.CHANNEL, CONSOLE_CHANNEL_ID, guild_id=CONSOLE_GUILD_ID)

    async def handle(self, line: str) -> bool:
        """Run one line; return False when the console should exit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            line = "/ask " + line
        cmd, _, rest = line.partition(" ")
        try:
            if cmd in ("/quit", "/exit"):
                return False
            if cmd == "/help":
                self.write(HELP + "\n")
            elif cmd == "/ask":
                await self.ask(rest)
            elif cmd == "/new":
                await self.turns.set_head(self.place, None)
                self.write("Started a new conversation.\n")
            elif cmd == "/history":
                await self.history()
            elif cmd == "/system":
                await self.system(rest)
            elif cmd == "/knobs":
                await self.knobs(rest)
            elif cmd == "/tokens":
                self.tokens(rest)
            else:
                self.write(f"Unknown command {cmd}. Type /help.\n")
        except UserFacingError as exc:
            self.write(f"error: {exc.message}\n")
        return True

    async def ask(self, prompt: str) -> None:
        if not prompt.strip():
            raise UserFacingError("Ask something: /ask <prompt>.")
        head = await self.turns.head(self.place)
        history = history_of(await self.turns.chain(head), names=False)
        fitted = await resolve_conversation(self.app, self.location, prompt, history)
        gen = self.app.engine.submit(fitted.request)
        self.current = gen
        result = None
        try:
            async for event in gen.events():
                if isinstance(event, Queued) and event.ahead:
                    self.write(f"(queued, {event.ahead} ahead)\n")
                elif isinstance(event, TextDelta):
                    self.write(event.text)
                elif isinstance(event, Finished):
                    result = event.result
                    if result.error:
                        self.write(f"\nerror: {result.error}")
                    self.write(f"\n[{footer(result, fitted.dropped_turns)}]\n")
        finally:
            self.current = None
        if result is not None and not result.error:  # an empty answer is a turn too
            loc = self.location
            await self.turns.add_exchange(NewExchange(
                parent_id=head, question=prompt, answer=result.text, author_id=CONSOLE_USER_ID,
                author_name="you", ask_id=None, guild_id=loc.guild_id, channel_id=loc.channel_id,
                private=False, head=self.place,
            ))

    async def history(self) -> None:
        """The turns the next ask sends, each with its token count; left-out ones marked.

        The next question is unknown, so a one-token stand-in is measured in its place.
        """
        head = await self.turns.head(self.place)
        history = history_of(await self.turns.chain(head), names=False)
        if not history:
            self.write("No conversation yet: the next line starts one.\n")
            return
        engine = self.app.engine
        base = await resolve_request(self.app, self.location, "?")
        request = replace(base, history=history)
        tokenizer = engine.bundle.tokenizer
        lines = history_report(engine, request, lambda text: len(tokenizer.encode(text)))
        kept = sum(line.kept for line in lines)
        self.write(
            f"{len(lines)} turns; the next ask sends {kept} (context window "
            f"{engine.info.context_length} tokens, {request.knobs.max_new_tokens} kept for "
            "the reply):\n"
        )
        for line in lines:
            who = "you" if line.role == "user" else "bot"
            flat = " ".join(line.text.split())
            shown = flat if len(flat) <= 60 else flat[:59] + "…"
            mark = "" if line.kept else "  [left out]"
            self.write(f"  {who:<3} {line.tokens:>5} tokens  {shown}{mark}\n")

    def interrupt(self) -> bool:
        """Ctrl-C: stop the reply being written, if any."""
        if self.current is not None and not self.current.done:
            self.current.cancel()
            return True
        return False

    async def system(self, rest: str) -> None:
        words, server = _flag(rest, "--server")
        sub, _, text = words.partition(" ")
        scope = self.scope(server)
        if sub in ("", "show"):
            eff = await self.app.resolve(self.location)
            text_in_force, src = persona(eff, self.app.settings.system_prompt)
            if src == "default":
                shown = text_in_force or "(none: the model's own default applies)"
                self.write(f"System prompt (default): {shown}\n")
            else:
                self.write(f"System prompt (from {src}):\n{text_in_force}\n")
        elif sub == "set":
            if not text.strip():
                raise UserFacingError("Give the text: /system set <text>.")
            await self.app.store.set_system_prompt(scope, text.strip(), actor_id=CONSOLE_USER_ID)
            self.write(f"System prompt set for this {_scope_word(server)}.\n")
        elif sub == "reset":
            changed = await self.app.store.reset_system_prompt(scope, actor_id=CONSOLE_USER_ID)
            self.write(
                f"System prompt reset for this {_scope_word(server)}.\n" if changed
                else f"This {_scope_word(server)} had no system prompt of its own.\n"
            )
        else:
            raise UserFacingError("Use /system show, /system set <text> or /system reset.")

    async def knobs(self, rest: str) -> None:
        words, server = _flag(rest, "--server")
        sub, _, args = words.partition(" ")
        scope = self.scope(server)
        if sub in ("", "show"):
            eff = await self.app.resolve(self.location)
            for name in KNOB_NAMES:
                value = getattr(eff.knobs, name)
                src = eff.sources.get(name, "default")
                self.write(f"  {name:<19} {display_knob(name, value):<12} ({src})\n")
        elif sub == "set":
            values = _parse_assignments(args)
            await self.app.store.set_knobs(scope, values, actor_id=CONSOLE_USER_ID)
            shown = ", ".join(f"{k}={format_knob(k, v)}" for k, v in values.items())
            self.write(f"Set {shown} for this {_scope_word(server)}.\n")
        elif sub == "reset":
            names = args.split() or None
            reset = await self.app.store.reset_knobs(scope, names, actor_id=CONSOLE_USER_ID)
            self.write(
                f"Reset {', '.join(reset)} for this {_scope_word(server)}.\n" if reset
                else "Nothing to reset.\n"
            )
        elif sub == "preset":
            name = args.strip()
            if name not in PRESETS:
                raise UserFacingError(f"Presets: {', '.join(PRESETS)}.")
            build_knobs(PRESETS[name])
            await self.app.store.set_knobs(scope, dict(PRESETS[name]), actor_id=CONSOLE_USER_ID)
            self.write(f"Applied the {name} preset to this {_scope_word(server)}.\n")
        else:
            raise UserFacingError("Use /knobs show, /knobs set k=v, /knobs reset or /knobs preset.")

    def tokens(self, text: str) -> None:
        pieces = token_pieces(self.app.engine.bundle.tokenizer, text)
        shown = "|".join(p for _, p in pieces)
        self.write(
            f"{len(pieces)} token{'' if len(pieces) == 1 else 's'} "
            f"(context window {self.app.engine.info.context_length}):\n"
            f"{shown}\n"
        )


def _scope_word(server: bool) -> str:
    return "server" if server else "channel"


def _flag(text: str, flag: str) -> tuple[str, bool]:
    parts = text.split(" ")
    present = flag in parts
    return " ".join(p for p in parts if p != flag).strip(), present


def _parse_assignments(text: str) -> dict[str, Any]:
    """`temperature=0.9 stop="\\n\\n"` → validated values, one clear error per bad knob."""
    try:
        items = shlex.split(text, posix=True)
    except ValueError as exc:
        raise UserFacingError(f"Couldn't read that: {exc}.") from None
    if not items:
        raise UserFacingError("Give knob=value pairs, e.g. /knobs set temperature=0.9.")
    values: dict[str, Any] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq:
            raise UserFacingError(f"Expected knob=value, got {item!r}.")
        values[name] = parse_knob_text(name, raw)
    return values


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
                console.write("error: that line is not valid UTF-8; nothing was run.\n")
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
        print("Preparing the model… (first start converts the embedded model, about 10 s)",
              file=sys.stderr, flush=True)
    restore_terminal = _save_terminal() if interactive else (lambda: None)
    save_history = _setup_history() if interactive else (lambda: None)
    async with open_app(settings, progress=lambda s: print(s, file=sys.stderr, flush=True)) as app:
        await TurnStore(app.store.db).prune(settings.conversation_retention_days)
        info = app.engine.info
        print(
            f"{info.model_name} on {info.device} ({info.compute_type}). Local console: no "
            "Discord token is configured (set DISCORD_TOKEN in .env to run the bot).\n"
            "Type /help for commands; a plain line asks the model.",
            flush=True,
        )
        try:
            await console_loop(app, interactive)
        finally:
            save_history()
            restore_terminal()
    return 0


