"""The console's commands: the product's /ask, /system and /knobs without Discord.

They run the same core (engine, settings store, knob parsing, conversation
turns) against the same database as the bot, in a server and channel scope of
their own, so anyone can try the bot without a token and an operator can check
a persona before going live. Commands mirror the slash commands; `--server`
acts on the console's server scope instead of its channel scope.

The console holds one conversation: each line continues it, `/new` starts a
fresh one, `/history` shows what the next ask will send. Its turns live in the
database (place ``console:<channel>``), so the conversation survives a restart.
A turn is prepared and recorded by `bot.chat.service.Chat`, as on Discord; `stream_reply`
is the console's one streaming loop, which `python -m bot ask` uses too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from bot.app import App
from bot.chat.characters import load_card_file
from bot.chat.reasoning import ReasoningFilter
from bot.chat.request import footer, persona
from bot.chat.turns import PreparedTurn, TurnAsk
from bot.engine import Engine, Finished, Generation, GenerationResult, Queued, TextDelta
from bot.engine.streaming import token_pieces
from bot.errors import UserFacingError
from bot.hosting.host import model_lines
from bot.knobs import (
    KNOB_NAMES,
    PRESETS,
    Knobs,
    build_knobs,
    display_knob,
    format_knob,
    parse_assignments,
)
from bot.lab.compare import Comparison
from bot.lab.help import help_lines
from bot.store.scopes import Location, Scope, ScopeKind
from bot.store.swipes import Answer

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
  /system import FILE [--server] [--greeting]  a persona from a character card
  /system save NAME [--knobs]   save the persona in effect by name (with this channel's knobs)
  /system load NAME [--server]  use a saved persona; /system list shows them
  /system reasoning on|off|inherit [--server]  split <think> reasoning from the answer
  /swipe [prev|next]            browse the versions of the last answer (/regen makes one)
  /regen                        another version of the last answer
  /continue                     carry on the last answer when it stopped at its budget
  /knobs show                   every sampling setting and where it comes from
  /knobs set k=v ... [--server] e.g. /knobs set temperature=0.9 top_k=40 stop="\\n\\n"
  /knobs reset [knob ...] [--server]
  /knobs preset precise|balanced|creative [--server]
  /tokens <text>                how the model's tokenizer splits text
  /model [list]                 the models served, the one in effect here
  /model set <name> [--server]  choose the model answering here (or in the server)
  /model reset [--server]       remove that choice
  /compare <prompt> [| knobs | knobs ...]   one prompt under 2-4 settings (knob strings
                                or presets; none: these settings vs a contrasting temperature)
  /probs <prompt> [| knobs]     the next-token candidates, raw and after the knobs
  /try <knob>                   your last prompt: the knob's value here vs a contrasting one
  /help, /quit                  (Ctrl-C stops a reply; at the prompt, Ctrl-C, Ctrl-D
                                or /quit leaves)"""


async def stream_reply(
    gen: Generation, write: Callable[[str], None], *, show_queue: bool = True,
    text_filter: ReasoningFilter | None = None,
) -> GenerationResult:
    """Write a generation's text as it arrives (and its queue position); return the result.

    With `text_filter` (reasoning on) the reasoning is not written:
    "(thinking…)" once, then the answer; the result's text is the answer alone
    and `text_filter.reasoning` keeps the rest.
    """
    result: GenerationResult | None = None
    thinking_said = False
    async for event in gen.events():
        if isinstance(event, Queued) and event.ahead and show_queue:
            write(f"(queued, {event.ahead} ahead)\n")
        elif isinstance(event, TextDelta):
            if text_filter is None:
                write(event.text)
                continue
            shown, thinking = text_filter.feed(event.text)
            if thinking and not thinking_said:
                write("(thinking…)\n")
                thinking_said = True
            if shown:
                write(shown)
        elif isinstance(event, Finished):
            result = event.result
    assert result is not None
    if text_filter is not None:
        split = text_filter.finish()
        text_filter.reasoning = split.reasoning
        if not split.answer and split.unfinished:
            write(split.shown_answer())
        result = replace(result, text=split.answer)
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
                # What each knob does, from the lab's one table.
                self.write("\nWhat the knobs do:\n" + "\n".join(
                    "  " + line for line in help_lines()) + "\n")
            elif cmd == "/ask":
                await self.ask(rest)
            elif cmd == "/new":
                await self.app.chat.set_head(self.place, None)
                self.write("Started a new conversation.\n")
            elif cmd == "/history":
                await self.history()
            elif cmd == "/system":
                await self.system(rest)
            elif cmd == "/knobs":
                await self.knobs(rest)
            elif cmd == "/tokens":
                await self.tokens(rest)
            elif cmd == "/model":
                await self.model(rest)
            elif cmd in ("/continue", "/swipe", "/regen"):
                await getattr(self, cmd[1:].replace("continue", "continue_"))(rest)
            elif cmd in ("/compare", "/probs", "/try"):  # the knobs lab
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
        chat = self.app.chat
        turn = await chat.prepare(TurnAsk(
            location=self.location, prompt=prompt, author_id=CONSOLE_USER_ID,
            author_name="you", place=self.place,
        ), on_wait=lambda waiting: self.write(f"({waiting.message})\n"))
        text_filter = ReasoningFilter() if turn.reasoning else None
        result = await self._stream(turn, text_filter)
        if not result.error:  # an empty answer is a turn too
            await chat.record(turn, result, reasoning=text_filter.reasoning
                              if text_filter is not None else "")

    async def _stream(self, turn: PreparedTurn, text_filter: ReasoningFilter | None = None,
                      ) -> GenerationResult:
        gen = turn.engine.submit(turn.request, turn.prepared)
        self.current = gen
        try:
            result = await stream_reply(gen, self.write, text_filter=text_filter)
        finally:
            self.current = None
        if result.error:
            self.write(f"\nerror: {result.error}")
        self.write(f"\n[{footer(result, turn.dropped_turns, turn.footer_model, operator=True)}]\n")
        return result

    # --- /continue, /swipe, /regen ------------------------------------------

    async def _last_answer(self) -> Answer:
        head = await self.app.chat.head(self.place)
        found = await self.app.chat.answer(head) if head is not None else None
        if found is None:
            raise UserFacingError("No answer yet: ask something first.")
        return found

    async def continue_(self, rest: str) -> None:
        """One more budget for the last answer, printed after what it said."""
        chat = self.app.chat
        last = await self._last_answer()
        answer, turn = await chat.continue_(last.turn.id, location=self.location,
                                            user_id=CONSOLE_USER_ID, shared=False)
        self.write(answer.turn.text)
        result = await self._stream(turn)
        if not result.error:
            await chat.extend(answer.turn.id, result.text, result, user_id=CONSOLE_USER_ID)

    async def regen(self, rest: str) -> None:
        """Another version of the last answer (the conversation continues from it)."""
        chat = self.app.chat
        last = await self._last_answer()
        question = await chat.get(last.turn.parent_id) if last.turn.parent_id else None
        if question is None:
            raise UserFacingError("I no longer have the question of the last answer.")
        turn = await chat.prepare(TurnAsk(
            location=self.location, prompt=question.text, author_id=CONSOLE_USER_ID,
            author_name="you", parent_id=question.parent_id, explicit=True,
        ))
        text_filter = ReasoningFilter() if turn.reasoning else None
        result = await self._stream(turn, text_filter)
        if not result.error and result.text.strip():
            swipes = await chat.record(
                turn, result, swipe_of=question.id,
                reasoning=text_filter.reasoning if text_filter is not None else "")
            assert swipes is not None
            await chat.set_head(self.place, swipes.current.turn.id)
            self.write(f"[version {swipes.label()}; /swipe prev|next browses them]\n")

    async def swipe(self, rest: str) -> None:
        """Show the previous or next version of the last answer; later asks continue it."""
        way = rest.strip() or "next"
        if way not in ("prev", "next"):
            raise UserFacingError("Use /swipe prev or /swipe next.")
        last = await self._last_answer()
        swipes = await self.app.chat.step(last.turn.id, -1 if way == "prev" else 1,
                                          user_id=CONSOLE_USER_ID)
        await self.app.chat.set_head(self.place, swipes.current.turn.id)
        self.write(f"[version {swipes.label()}]\n{swipes.current.turn.text}\n")

    async def history(self) -> None:
        """The turns the next ask sends, each with its token count; left-out ones marked.

        The next question is unknown, so a one-token stand-in is measured in its place.
        """
        chat = self.app.chat
        chain = await chat.conversation_here(self.place, None, CONSOLE_USER_ID)
        if not chain:
            self.write("No conversation yet: the next line starts one.\n")
            return
        view = await chat.view(self.location, chain, CONSOLE_USER_ID)
        self.write(
            f"{len(view.turns)} turns; the next ask sends {len(view.turns) - view.left_out} "
            f"(context window {view.context_length} tokens, {view.reply_tokens} kept for "
            "the reply):\n"
        )
        for line in view.turns:
            who = "you" if line.role == "user" else "bot"
            mark = "  [left out]" if line.left_out else ""
            self.write(f"  {who:<3} {line.tokens:>5} tokens  {line.preview(60)}{mark}\n")
        # The window's use, from the real tokenizer (the next question a stand-in).
        usage = await self.app.chat.usage(TurnAsk(
            location=self.location, prompt="?", author_id=CONSOLE_USER_ID,
            author_name="you", place=self.place))
        self.write(f"This conversation {usage.usage_text()}.\n")

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
        turn = await self.app.chat.prepare(TurnAsk(
            location=self.location, prompt=prompt, author_id=CONSOLE_USER_ID,
            author_name="you", explicit=True,
            overrides=plan_variants(texts, Knobs())[-1].overrides if cmd == "/probs" and texts
            else {},
        ))
        if cmd == "/probs":
            self.write(f"(model {turn.model.name})\n"
                       + format_table(await probs_step(turn.engine, turn.request)) + "\n")
            return
        variants = (knob_variants(name, turn.request.knobs) if cmd == "/try"
                    else plan_variants(texts, turn.request.knobs))
        comparison = start_compare(turn.engine, turn.request, variants)
        self.comparing = comparison
        try:
            self.write(f"(comparing {len(variants)} settings on model {turn.model.name}, seed "
                       f"{comparison.seed}: the same for each; CTranslate2 has no per-call "
                       "seed)\n")
            for r in await comparison.results():
                self.write(f"=== {r.label} ===\n{r.text}\n[{footer(r.result, operator=True)}]\n")
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
            await self.app.scope_settings.set_persona(scope, text.strip(),
                                                      actor_id=CONSOLE_USER_ID)
            self.write(f"System prompt set for this {_scope_word(server)}.\n")
        elif sub == "reset":
            change = await self.app.scope_settings.reset_persona(scope, actor_id=CONSOLE_USER_ID)
            self.write(
                f"System prompt reset for this {_scope_word(server)}.\n" if change.changed
                else f"This {_scope_word(server)} had no system prompt of its own.\n"
            )
        elif sub in ("import", "save", "load", "list", "reasoning"):
            await self.system_more(sub, text.strip(), scope, server)
        else:
            raise UserFacingError("Use /system show, /system set <text> or /system reset.")

    async def system_more(self, sub: str, arg: str, scope: Scope, server: bool) -> None:
        """/system import FILE, save NAME, load NAME, list, reasoning on|off."""
        settings = self.app.scope_settings
        where = f"this {_scope_word(server)}"
        if sub == "import":
            arg, greeting = _flag(arg, "--greeting")
            if not arg:
                raise UserFacingError("Give the card's file: /system import FILE.")
            path = arg
            card = await asyncio.to_thread(lambda: load_card_file(Path(path).expanduser()))
            done = await settings.import_card(scope, card, guild_id=CONSOLE_GUILD_ID,
                                              actor_id=CONSOLE_USER_ID)
            kept = (f"saved as {done.saved_as!r}" if done.saved_as
                    else f"not saved by name: {done.not_saved}")
            self.write(f"Imported {card.name} as the persona for {where} ({kept}).\n")
            if (notice := card.notice()) is not None:
                self.write(notice + "\n")
            if greeting and card.greeting:
                self.write(card.greeting + "\n")
        elif sub == "save":
            arg, with_knobs = _flag(arg, "--knobs")
            saved, replaced = await settings.save_persona(
                self.location, CONSOLE_GUILD_ID, arg, actor_id=CONSOLE_USER_ID,
                with_knobs=with_knobs)
            self.write(f"{'Replaced' if replaced else 'Saved'} the persona {saved.name!r}.\n")
        elif sub == "load":
            saved, _ = await settings.load_persona(scope, CONSOLE_GUILD_ID, arg,
                                                   actor_id=CONSOLE_USER_ID)
            self.write(f"Loaded {saved.name!r} for {where}.\n")
        elif sub == "list":
            names = [p.name for p in await settings.saved_personas(CONSOLE_GUILD_ID)]
            self.write(("Saved personas: " + ", ".join(names)) if names
                       else "No saved personas yet.")
            self.write("\n")
        else:
            modes = {"on": True, "off": False, "inherit": None}
            if arg not in modes:
                raise UserFacingError("Use /system reasoning on, off or inherit.")
            await settings.set_reasoning(scope, modes[arg], actor_id=CONSOLE_USER_ID)
            self.write(f"Reasoning is {arg} for {where}.\n")

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
            await self.app.scope_settings.set_knobs(scope, values, actor_id=CONSOLE_USER_ID)
            shown = ", ".join(f"{k}={format_knob(k, v)}" for k, v in values.items())
            self.write(f"Set {shown} for this {_scope_word(server)}.\n")
        elif sub == "reset":
            names = args.split() or None
            reset = (await self.app.scope_settings.reset_knobs(
                scope, names, actor_id=CONSOLE_USER_ID)).names
            self.write(
                f"Reset {', '.join(reset)} for this {_scope_word(server)}.\n" if reset
                else "Nothing to reset.\n"
            )
        elif sub == "preset":
            name = args.strip()
            if name not in PRESETS:
                raise UserFacingError(f"Presets: {', '.join(PRESETS)}.")
            build_knobs(PRESETS[name])
            await self.app.scope_settings.set_knobs(scope, dict(PRESETS[name]),
                                                    actor_id=CONSOLE_USER_ID)
            self.write(f"Applied the {name} preset to this {_scope_word(server)}.\n")
        else:
            raise UserFacingError("Use /knobs show, /knobs set k=v, /knobs reset or /knobs preset.")

    async def engine_here(self) -> Engine:
        """The engine of the model in effect here, loaded first if needed."""
        models = self.app.models
        name = models.choice(await self.app.resolve(self.location)).name
        return await models.engine(name, lambda waiting: self.write(f"({waiting.message})\n"))

    async def tokens(self, text: str) -> None:
        engine = await self.engine_here()
        pieces = token_pieces(engine.bundle.tokenizer, text)
        shown = "|".join(p for _, p in pieces)
        self.write(
            f"{len(pieces)} token{'' if len(pieces) == 1 else 's'} "
            f"(context window {engine.info.context_length}):\n"
            f"{shown}\n"
        )

    async def model(self, rest: str) -> None:
        """/model list|set|reset, as on Discord, on the console's scopes."""
        words, server = _flag(rest, "--server")
        sub, _, name = words.partition(" ")
        scope = self.scope(server)
        app = self.app
        if sub in ("", "list"):
            in_use: dict[str, list[str]] = {}
            for chosen, where in await app.scope_settings.model_choices(CONSOLE_GUILD_ID):
                in_use.setdefault(chosen, []).append(f"the {where.kind.value}")
            for line in model_lines(app.models, in_use):
                self.write(f"  {line}\n")
            choice = app.models.choice(await app.resolve(self.location))
            self.write(f"Here: {choice.describe()}\n")
        elif sub == "set":
            if not name.strip():
                raise UserFacingError("Give the model: /model set <name> (see /model list).")
            # The console's user is the operator: a model that unloads others is theirs to pick.
            change = await app.scope_settings.set_model(scope, name.strip(),
                                                        actor_id=CONSOLE_USER_ID,
                                                        manage_server=True)
            self.write(f"`{change.value}` now answers in this {_scope_word(server)}.\n")
        elif sub == "reset":
            reset = await app.scope_settings.reset_model(scope, actor_id=CONSOLE_USER_ID)
            self.write(
                f"Model choice removed for this {_scope_word(server)}.\n" if reset.changed
                else f"This {_scope_word(server)} had no model of its own.\n"
            )
        else:
            raise UserFacingError("Use /model list, /model set <name> or /model reset.")


def _scope_word(server: bool) -> str:
    return "server" if server else "channel"


def _flag(text: str, flag: str) -> tuple[str, bool]:
    parts = text.split(" ")
    present = flag in parts
    return " ".join(p for p in parts if p != flag).strip(), present


def _parse_assignments(text: str) -> dict[str, Any]:
    """`/knobs set`'s arguments: the one knob-line parser, with the console's own hint."""
    if not text.strip():
        raise UserFacingError("Give knob=value pairs, e.g. /knobs set temperature=0.9.")
    return parse_assignments(text)


