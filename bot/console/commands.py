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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from bot import wording
from bot.app import App
from bot.chat.characters import load_card_file
from bot.chat.request import footer, persona
from bot.chat.speakers import fill_user
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
from bot.model.reasoning import ReasoningFilter
from bot.store.scopes import Location, Scope, ScopeKind
from bot.store.swipes import Answer

# Ids of the console's own scopes. Discord snowflakes are far larger, so these
# never collide with a real server sharing the same database.
CONSOLE_GUILD_ID = 1
CONSOLE_CHANNEL_ID = 2
CONSOLE_USER_ID = 3

HELP = wording.CONSOLE_HELP


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
            write(wording.console_queued(event.ahead) + "\n")
        elif isinstance(event, TextDelta):
            if text_filter is None:
                write(event.text)
                continue
            shown, thinking = text_filter.feed(event.text)
            if thinking and not thinking_said:
                write(wording.CONSOLE_THINKING + "\n")
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
                self.write(wording.CONSOLE_KNOBS_HELP + "\n".join(
                    "  " + line for line in help_lines()) + "\n")
            elif cmd == "/ask":
                await self.ask(rest)
            elif cmd == "/new":
                await self.app.chat.set_head(self.place, None)
                self.write(wording.CONSOLE_NEW + "\n")
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
                self.write(wording.console_unknown(cmd) + "\n")
        except UserFacingError as exc:
            self.write(wording.console_error(exc.message) + "\n")
        return True

    async def ask(self, prompt: str) -> None:
        if not prompt.strip():
            raise UserFacingError(wording.CONSOLE_ASK_USAGE)
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
            self.write("\n" + wording.console_error(result.error))
        self.write(f"\n[{footer(result, turn.dropped_turns, turn.footer_model, operator=True)}]\n")
        return result

    # --- /continue, /swipe, /regen ------------------------------------------

    async def _last_answer(self) -> Answer:
        head = await self.app.chat.head(self.place)
        found = await self.app.chat.answer(head) if head is not None else None
        if found is None:
            raise UserFacingError(wording.CONSOLE_NO_ANSWER)
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
            raise UserFacingError(wording.CONSOLE_QUESTION_GONE)
        if question.opening:
            raise UserFacingError(wording.CONSOLE_GREETING_NO_QUESTION)
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
            self.write(wording.console_version(swipes.label(), hint=True) + "\n")

    async def greet(self, greetings: Sequence[str]) -> None:
        """A card's greeting as the conversation's first answer here (its alternate
        greetings are versions of it: /swipe), printed like an answer."""
        texts = [fill_user(g, None, default="you") or g for g in greetings]
        swipes = await self.app.chat.record_greeting(texts, self.location, ask_id=None,
                                                     place=self.place)
        self.write(swipes.current.turn.text + "\n")
        if len(swipes.answers) > 1:
            self.write(wording.console_version(swipes.label(), hint=True) + "\n")

    async def swipe(self, rest: str) -> None:
        """Show the previous or next version of the last answer; later asks continue it."""
        way = rest.strip() or "next"
        if way not in ("prev", "next"):
            raise UserFacingError(wording.CONSOLE_SWIPE_USAGE)
        last = await self._last_answer()
        swipes = await self.app.chat.step(last.turn.id, -1 if way == "prev" else 1,
                                          user_id=CONSOLE_USER_ID)
        await self.app.chat.set_head(self.place, swipes.current.turn.id)
        self.write(f"{wording.console_version(swipes.label())}\n{swipes.current.turn.text}\n")

    async def history(self) -> None:
        """The turns the next ask sends, each with its token count; left-out ones marked.

        The next question is unknown, so a one-token stand-in is measured in its place.
        """
        chat = self.app.chat
        chain = await chat.conversation_here(self.place, None, CONSOLE_USER_ID)
        if not chain:
            self.write(wording.CONSOLE_NO_CONVERSATION + "\n")
            return
        view = await chat.view(self.location, chain, CONSOLE_USER_ID)
        self.write(wording.console_history_head(
            len(view.turns), len(view.turns) - view.left_out, view.context_length,
            view.reply_tokens) + "\n")
        for line in view.turns:
            who = "you" if line.role == "user" else "bot"
            self.write(wording.console_history_line(who, line.tokens, line.preview(60),
                                                    left_out=line.left_out) + "\n")
        # The window's use, from the real tokenizer (the next question a stand-in).
        usage = await self.app.chat.usage(TurnAsk(
            location=self.location, prompt="?", author_id=CONSOLE_USER_ID,
            author_name="you", place=self.place))
        self.write(wording.console_usage(usage.usage_text()) + "\n")

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
                raise UserFacingError(wording.console_try_takes(
                    [n for n in KNOB_NAMES if n != "stop"]))
            if self.last_prompt is None:
                raise UserFacingError(wording.CONSOLE_TRY_FIRST)
            prompt, texts = self.last_prompt, []
        else:
            prompt, *texts = [part.strip() for part in rest.split(" | ")]
        if not prompt:
            raise UserFacingError(wording.console_lab_usage(cmd))
        if cmd == "/probs" and len(texts) > 1:
            raise UserFacingError(wording.CONSOLE_PROBS_ONE_SET)
        turn = await self.app.chat.prepare(TurnAsk(
            location=self.location, prompt=prompt, author_id=CONSOLE_USER_ID,
            author_name="you", explicit=True,
            overrides=plan_variants(texts, Knobs())[-1].overrides if cmd == "/probs" and texts
            else {},
        ))
        if cmd == "/probs":
            self.write(wording.console_model_of(turn.model.name) + "\n"
                       + format_table(await probs_step(turn.engine, turn.request)) + "\n")
            return
        variants = (knob_variants(name, turn.request.knobs) if cmd == "/try"
                    else plan_variants(texts, turn.request.knobs))
        comparison = start_compare(turn.engine, turn.request, variants)
        self.comparing = comparison
        try:
            self.write(wording.console_comparing(len(variants), turn.model.name, comparison.seed)
                       + "\n")
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
            self.write(wording.console_system_prompt(text_in_force, src) + "\n")
        elif sub == "set":
            if not text.strip():
                raise UserFacingError(wording.CONSOLE_SYSTEM_SET_USAGE)
            await self.app.scope_settings.set_persona(scope, text.strip(),
                                                      actor_id=CONSOLE_USER_ID)
            self.write(wording.console_system_set(_scope_word(server)) + "\n")
        elif sub == "reset":
            change = await self.app.scope_settings.reset_persona(scope, actor_id=CONSOLE_USER_ID)
            self.write(wording.console_system_reset(_scope_word(server), changed=change.changed)
                       + "\n")
        elif sub in ("import", "save", "load", "list", "reasoning"):
            await self.system_more(sub, text.strip(), scope, server)
        else:
            raise UserFacingError(wording.CONSOLE_SYSTEM_USAGE)

    async def system_more(self, sub: str, arg: str, scope: Scope, server: bool) -> None:
        """/system import FILE, save NAME, load NAME, list, reasoning on|off."""
        settings = self.app.scope_settings
        where = f"this {_scope_word(server)}"
        if sub == "import":
            arg, greeting = _flag(arg, "--greeting")
            if not arg:
                raise UserFacingError(wording.CONSOLE_CARD_USAGE)
            path = arg
            card = await asyncio.to_thread(lambda: load_card_file(Path(path).expanduser()))
            done = await settings.import_card(scope, card, guild_id=CONSOLE_GUILD_ID,
                                              actor_id=CONSOLE_USER_ID)
            self.write(wording.console_card_imported(card.name, where, done.saved_as,
                                                     done.not_saved) + "\n")
            if (notice := card.notice()) is not None:
                self.write(notice + "\n")
            if greeting and card.greetings:
                await self.greet(card.greetings)
        elif sub == "save":
            arg, with_knobs = _flag(arg, "--knobs")
            saved, replaced = await settings.save_persona(
                self.location, CONSOLE_GUILD_ID, arg, actor_id=CONSOLE_USER_ID,
                with_knobs=with_knobs)
            self.write(wording.console_persona_named(saved.name, replaced=replaced) + "\n")
        elif sub == "load":
            arg, greeting = _flag(arg, "--greeting")
            saved, _ = await settings.load_persona(scope, CONSOLE_GUILD_ID, arg,
                                                   actor_id=CONSOLE_USER_ID)
            self.write(wording.console_persona_loaded(saved.name, where) + "\n")
            if greeting and saved.greeting:
                await self.greet([saved.greeting])
        elif sub == "list":
            names = [p.name for p in await settings.saved_personas(CONSOLE_GUILD_ID)]
            self.write(wording.console_saved_personas(names) + "\n")
        else:
            modes = {"on": True, "off": False, "inherit": None}
            if arg not in modes:
                raise UserFacingError(wording.CONSOLE_REASONING_USAGE)
            await settings.set_reasoning(scope, modes[arg], actor_id=CONSOLE_USER_ID)
            self.write(wording.reasoning_is(arg, where) + "\n")

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
            shown = {k: format_knob(k, v) for k, v in values.items()}
            self.write(wording.console_knobs_set(shown, _scope_word(server)) + "\n")
        elif sub == "reset":
            names = args.split() or None
            reset = (await self.app.scope_settings.reset_knobs(
                scope, names, actor_id=CONSOLE_USER_ID)).names
            self.write(wording.console_knobs_reset(reset, _scope_word(server)) + "\n")
        elif sub == "preset":
            name = args.strip()
            if name not in PRESETS:
                raise UserFacingError(wording.console_presets(list(PRESETS)))
            build_knobs(PRESETS[name])
            await self.app.scope_settings.set_knobs(scope, dict(PRESETS[name]),
                                                    actor_id=CONSOLE_USER_ID)
            self.write(wording.console_preset_applied(name, _scope_word(server)) + "\n")
        else:
            raise UserFacingError(wording.CONSOLE_KNOBS_USAGE)

    async def engine_here(self) -> Engine:
        """The engine of the model in effect here, loaded first if needed."""
        models = self.app.models
        name = models.choice(await self.app.resolve(self.location)).name
        return await models.engine(name, lambda waiting: self.write(f"({waiting.message})\n"))

    async def tokens(self, text: str) -> None:
        engine = await self.engine_here()
        pieces = token_pieces(engine.bundle.tokenizer, text)
        shown = "|".join(p for _, p in pieces)
        self.write(wording.console_tokens(len(pieces), engine.info.context_length, shown) + "\n")

    async def model(self, rest: str) -> None:
        """/model list|set|reset, as on Discord, on the console's scopes."""
        words, server = _flag(rest, "--server")
        sub, _, name = words.partition(" ")
        scope = self.scope(server)
        app = self.app
        if sub in ("", "list"):
            in_use: dict[str, list[str]] = {}
            for chosen, where in await app.scope_settings.model_choices(CONSOLE_GUILD_ID):
                in_use.setdefault(chosen, []).append(wording.console_model_use(where.kind.value))
            for line in model_lines(app.models, in_use):
                self.write(f"  {line}\n")
            choice = app.models.choice(await app.resolve(self.location))
            self.write(wording.console_model_here(choice.describe()) + "\n")
        elif sub == "set":
            if not name.strip():
                raise UserFacingError(wording.CONSOLE_MODEL_SET_USAGE)
            # The console's user is the operator: a model that unloads others is theirs to pick.
            change = await app.scope_settings.set_model(scope, name.strip(),
                                                        actor_id=CONSOLE_USER_ID,
                                                        manage_server=True)
            self.write(wording.console_model_chosen(change.value, _scope_word(server)) + "\n")
        elif sub == "reset":
            reset = await app.scope_settings.reset_model(scope, actor_id=CONSOLE_USER_ID)
            self.write(wording.console_model_reset(_scope_word(server), changed=reset.changed)
                       + "\n")
        else:
            raise UserFacingError(wording.CONSOLE_MODEL_USAGE)


def _scope_word(server: bool) -> str:
    return "server" if server else "channel"


def _flag(text: str, flag: str) -> tuple[str, bool]:
    parts = text.split(" ")
    present = flag in parts
    return " ".join(p for p in parts if p != flag).strip(), present


def _parse_assignments(text: str) -> dict[str, Any]:
    """`/knobs set`'s arguments: the one knob-line parser, with the console's own hint."""
    if not text.strip():
        raise UserFacingError(wording.CONSOLE_KNOB_PAIRS_USAGE)
    return parse_assignments(text)


