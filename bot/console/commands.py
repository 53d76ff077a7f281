"""The console's commands: the product's /ask, /system and /knobs without Discord.

They run the same core (engine, settings store, knob parsing, conversation
turns) against the same database as the bot, in a server and channel scope of
their own, so anyone can try the bot without a token and an operator can check
a persona before going live. Commands mirror the slash commands; `--server`
acts on the console's server scope instead of its channel scope.

The console holds one conversation: each line continues it, `/new` starts a
fresh one, `/history` shows what the next ask will send. Its turns live in the
database (place ``console:<channel>``), so the conversation survives a restart.
A turn is prepared and recorded by `bot.turns`, as on Discord; `stream_reply`
is the console's one streaming loop, which `python -m bot ask` uses too.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from bot.app import App
from bot.asks import footer, persona, resolve_request
from bot.conversation import history_of, history_report
from bot.engine import Finished, Generation, GenerationResult, Queued, TextDelta
from bot.engine.streaming import token_pieces
from bot.errors import UserFacingError
from bot.knobs import (
    KNOB_NAMES,
    PRESETS,
    Knobs,
    build_knobs,
    display_knob,
    format_knob,
    parse_knob_text,
)
from bot.lab.compare import Comparison
from bot.lab.help import help_lines
from bot.settings.scopes import Location, Scope, ScopeKind
from bot.turns import TurnAsk, prepare_turn, record_turn

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
  /compare <prompt> [| knobs | knobs ...]   one prompt under 2-4 settings (knob strings
                                or presets; none: these settings vs a contrasting temperature)
  /probs <prompt> [| knobs]     the next-token candidates, raw and after the knobs
  /try <knob>                   your last prompt: the knob's value here vs a contrasting one
  /help, /quit                  (Ctrl-C stops a reply; at the prompt, Ctrl-C, Ctrl-D
                                or /quit leaves)"""


async def stream_reply(
    gen: Generation, write: Callable[[str], None], *, show_queue: bool = True
) -> GenerationResult:
    """Write a generation's text as it arrives (and its queue position); return the result."""
    result: GenerationResult | None = None
    async for event in gen.events():
        if isinstance(event, Queued) and event.ahead and show_queue:
            write(f"(queued, {event.ahead} ahead)\n")
        elif isinstance(event, TextDelta):
            write(event.text)
        elif isinstance(event, Finished):
            result = event.result
    assert result is not None
    return result


@dataclass
class Console:
    app: App
    out: TextIO = field(default_factory=lambda: sys.stdout)
    location: Location = field(
        default_factory=lambda: Location(guild_id=CONSOLE_GUILD_ID, channel_id=CONSOLE_CHANNEL_ID,
                                         user_id=CONSOLE_USER_ID)
    )
    current: Generation | None = None  # the generation being streamed, for Ctrl-C
    comparing: Comparison | None = None  # a /compare running, for Ctrl-C
    last_prompt: str | None = None  # for /try

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
                # Issue 19: what each knob does, from the lab's one table.
                self.write("\nWhat the knobs do:\n" + "\n".join(
                    "  " + line for line in help_lines()) + "\n")
            elif cmd == "/ask":
                await self.ask(rest)
            elif cmd == "/new":
                await self.app.turns.set_head(self.place, None)
                self.write("Started a new conversation.\n")
            elif cmd == "/history":
                await self.history()
            elif cmd == "/system":
                await self.system(rest)
            elif cmd == "/knobs":
                await self.knobs(rest)
            elif cmd == "/tokens":
                self.tokens(rest)
            elif cmd in ("/compare", "/probs", "/try"):  # the knobs lab (issue 19)
                await self.lab(cmd, rest)
            else:
                self.write(f"Unknown command {cmd}. Type /help.\n")
        except UserFacingError as exc:
            self.write(f"error: {exc.message}\n")
        return True

    async def ask(self, prompt: str) -> None:
        if not prompt.strip():
            raise UserFacingError("Ask something: /ask <prompt>.")
        self.last_prompt = prompt
        app = self.app
        turn = await prepare_turn(app, TurnAsk(
            location=self.location, prompt=prompt, author_id=CONSOLE_USER_ID,
            author_name="you", place=self.place,
        ))
        gen = app.engine.submit(turn.request, turn.prepared)
        self.current = gen
        try:
            result = await stream_reply(gen, self.write)
        finally:
            self.current = None
        if result.error:
            self.write(f"\nerror: {result.error}")
        self.write(f"\n[{footer(result, turn.dropped_turns)}]\n")
        if not result.error:  # an empty answer is a turn too
            await record_turn(app.turns, turn, result.text, ask_id=None)

    async def history(self) -> None:
        """The turns the next ask sends, each with its token count; left-out ones marked.

        The next question is unknown, so a one-token stand-in is measured in its place.
        """
        turns = self.app.turns
        history = history_of(await turns.chain(await turns.head(self.place)), names=False)
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
        """Ctrl-C: stop the reply being written (or every variant of a /compare), if any."""
        if self.comparing is not None:
            self.comparing.cancel()
            return True
        if self.current is not None and not self.current.done:
            self.current.cancel()
            return True
        return False

    async def lab(self, cmd: str, rest: str) -> None:
        """/compare, /probs and /try: the knobs lab on a fresh turn in the console's scope."""
        from bot.lab.compare import knob_variants, plan_variants, start_compare
        from bot.lab.probs import format_table, probs_step

        if cmd == "/try":
            name = rest.strip()
            if name not in KNOB_NAMES or name == "stop":
                names = ", ".join(n for n in KNOB_NAMES if n != "stop")
                raise UserFacingError(f"/try takes a knob: {names}.")
            if self.last_prompt is None:
                raise UserFacingError("Ask something first: /try reruns your last prompt.")
            prompt, texts = self.last_prompt, []
        else:
            prompt, *texts = [part.strip() for part in rest.split(" | ")]
        if not prompt:
            raise UserFacingError(f"Usage: {cmd} <prompt> [| knobs ...]")
        if cmd == "/probs" and len(texts) > 1:
            raise UserFacingError("/probs takes one set of knobs: /probs <prompt> | top_k=5")
        turn = await prepare_turn(self.app, TurnAsk(
            location=self.location, prompt=prompt, author_id=CONSOLE_USER_ID,
            author_name="you", explicit=True,
            overrides=plan_variants(texts, Knobs())[-1].overrides if cmd == "/probs" and texts
            else {},
        ))
        if cmd == "/probs":
            self.write(format_table(await probs_step(self.app.engine, turn.request)) + "\n")
            return
        variants = (knob_variants(name, turn.request.knobs) if cmd == "/try"
                    else plan_variants(texts, turn.request.knobs))
        comparison = start_compare(self.app.engine, turn.request, variants)
        self.comparing = comparison
        try:
            self.write(f"(comparing {len(variants)} settings, seed {comparison.seed}: the same "
                       "for each; CTranslate2 has no per-call seed)\n")
            for r in await comparison.results():
                self.write(f"=== {r.label} ===\n{r.text}\n[{footer(r.result)}]\n")
        finally:
            self.comparing = None

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


