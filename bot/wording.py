"""The words a member reads, in one table, so one thing has one name everywhere.

Rules every string here follows (tests/acceptance/test_first_hour.py walks them): the
thing a scope sets to steer the model is a *persona* (the commands stay
`/system`); a place is named for what it is ("this thread" inside a thread,
never "this channel"); counts go through `plural`, so no "1 requests"; a
warning starts with ⚠️; a reply waiting says so with one of the `WAITING`
words. No Discord here: the console and benchmarks use it too. The cogs and
the console hold no sentence of their own (tests/test_architecture.py checks);
command and option descriptions are the `COMMANDS` and `OPTIONS` tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final


def plural(n: int, one: str, many: str | None = None) -> str:
    """``plural(1, "request")`` → "1 request"; ``plural(3, "request")`` → "3 requests"."""
    word = one if n == 1 else (many if many is not None else one + "s")
    return f"{n:,} {word}"


def warning(text: str) -> str:
    """A warning line: always the ⚠️ first, once."""
    return text if text.startswith("⚠️") else f"⚠️ {text}"


# --- waiting: the status line of a reply before and while it streams -------------------

#: A reply with others ahead of it in the engine's queue.
QUEUED: Final = "-# ⏳ queued, {ahead} ahead"
#: Nobody ahead, but a batch with other settings runs first.
NEXT_IN_LINE: Final = "-# ⏳ next in line"
#: Taken, and the model reads the prompt (no text yet).
READING: Final = "-# ⏳ reading…"
#: Text is arriving.
WRITING: Final = "-# ✍️ writing…"
#: Every waiting word, for tests and for the harness that recognises a status line.
WAITING: Final = (QUEUED, NEXT_IN_LINE, READING, WRITING)


def queued(ahead: int) -> str:
    return QUEUED.format(ahead=f"{ahead:,}")


# --- places: where a setting comes from or applies -----------------------------------

#: The source labels `/settings` and `/system show` print (keys: `Effective.sources`).
SOURCE_LABELS: Final[Mapping[str, str]] = {
    "default": "default",
    "model": "model",
    "operator": "operator",
    "server": "this server",
    "channel": "this channel",
    "thread": "this thread",
    "dm": "your DMs",
}


def source_label(source: str, *, in_thread: bool = False) -> str:
    """A stored source ("server", "channel", …) as a member reads it; unknown ones as is.

    Inside a thread, "channel" is the thread's parent channel, never "this channel".
    """
    if source == "channel" and in_thread:
        return PARENT_CHANNEL
    return SOURCE_LABELS.get(source, source)


def place_word(kind: str, *, in_thread: bool = False) -> str:
    """The scope a change applies to: "this server", "this thread", "your DMs"…"""
    if kind == "channel" and in_thread:
        return SOURCE_LABELS["thread"]
    return SOURCE_LABELS.get(kind, kind)


PARENT_CHANNEL: Final = "the parent channel"

#: The `scope:` choices of the settings commands, as the picker shows them.
SCOPE_CHOICES: Final[Mapping[str, str]] = {
    "channel": "This channel or thread",
    "server": "Whole server",
}
SCOPE_OPTION: Final = "Where it applies: this channel or thread (default), or the whole server"

# --- the persona ------------------------------------------------------------------------

PERSONA: Final = "persona"
PERSONA_NONE: Final = "*(none: the model's own default applies)*"


def persona_saved(where: str) -> str:
    return f"Persona saved for {where}."


def persona_set(where: str) -> str:
    return f"Persona set for {where}."


def persona_reset(where: str) -> str:
    return f"Persona reset for {where}."


def persona_not_set(where: str) -> str:
    return f"{where[:1].upper()}{where[1:]} has no persona of its own."


#: Saved personas are the server's: saving, replacing or deleting one needs Manage Server.
NAMED_PERSONAS_PERMISSION: Final = (
    "You need the Manage Server permission to save or delete this server's saved personas.")
#: `/system import` by a member who may set the persona but not save it by name.
IMPORT_NOT_SAVED: Final = "Not saved by name: that needs the Manage Server permission."


#: `/system save` where no persona is in force.
NO_PERSONA_TO_SAVE: Final = "There is no persona here to save; set one first."


def persona_deleted(name: str) -> str:
    return f"Deleted the saved persona `{name}`."


def persona_not_saved(name: str) -> str:
    return f"There is no saved persona named `{name}`; `/system list` shows them."


# --- models that push others out of memory -----------------------------------------------

#: Choosing a model that does not fit in memory beside the default one.
MODEL_SWAP_PERMISSION: Final = (
    "That model doesn't fit in memory beside the default one, so loading it unloads the "
    "model everyone else here uses: choosing it needs the Manage Server permission.")
MODEL_SWAP_NOT_IN_DMS: Final = (
    "That model doesn't fit in memory beside the default one, so loading it would unload "
    "the model everyone else uses: it can't be chosen for DMs.")


def model_swaps(default: str, cooldown_s: float) -> str:
    """What `/model` says of a model that does not fit beside the default."""
    return (f"it doesn't fit beside `{default}`: loading it unloads it, so only Manage Server "
            f"may choose it, and a server swaps it in at most once every {cooldown_s:,.0f} s")


def model_swap_too_soon(name: str, pushed: tuple[str, ...], retry_in_s: float) -> str:
    held = ", ".join(f"`{p}`" for p in pushed)
    return (f"Loading `{name}` now would unload {held}, which others are using, and models "
            f"were swapped here moments ago. Try again in {max(1, round(retry_in_s))} s, or "
            "ask where the default model answers.")


# --- reply footers --------------------------------------------------------------------------

#: The footer of a reply the model ended on its own at once: nothing but this.
EMPTY_REPLY: Final = "the model returned no text; press Regenerate to try again"
MORE_HINT: Final = "ask with a larger max_new_tokens"
#: When the limit already is the scope's cap, a larger per-ask value can't help.
RAISE_HINT: Final = "/knobs set max_new_tokens raises it"

#: Whose cap it is, as "capped at ___ 128".
CAP_OWNERS: Final[Mapping[str, str]] = {
    "server": "this server's",
    "channel": "this channel's",
    "thread": "this thread's",
    "dm": "your DMs'",
    "operator": "the bot's",
    "default": "the default",
}


def cut_at(limit: int, *, can_ask_more: bool = True) -> str:
    """A reply that used its whole budget, and how to get more."""
    hint = MORE_HINT if can_ask_more else RAISE_HINT
    return f"cut at the limit of {plural(limit, 'token')} — {hint}"


#: A continued reply cut again, with Continue still offered.
CONTINUE_HINT: Final = "press Continue for more"


def times(n: int) -> str:
    """"once", "twice", "3 times"."""
    return {1: "once", 2: "twice"}.get(n, f"{n:,} times")


def continued(total: int, continuations: int) -> str:
    """The whole reply's length after Continue: "60 tokens, continued once"."""
    return f"{plural(total, 'token')}, continued {times(continuations)}"


def capped(source: str, limit: int, asked: int) -> str:
    """A per-ask length above the scope's cap: said, not cut silently."""
    owner = CAP_OWNERS.get(source, "the")
    return f"capped at {owner} {limit:,} (you asked {asked:,})"


def shortened(limit: int) -> str:
    return f"shortened to {plural(limit, 'token')} to fit the context"


def left_out(turns: int) -> str:
    return f"{plural(turns, 'earlier turn')} left out to fit the context"


# --- limits ---------------------------------------------------------------------------------


def settings_too_fast(retry_at: int) -> str:
    """Too many settings changes: when to retry, as a Discord timestamp (`<t:…:R>`)."""
    return f"You're changing settings too quickly; try again <t:{retry_at}:R>."


def settings_too_fast_in(seconds: int) -> str:
    """Too many settings changes, where no client shows a timestamp (the console)."""
    return f"You're changing settings too quickly; try again in {seconds} s."


def slow_down(seconds: float) -> str:
    return f"Slow down a little: try again in {max(1, round(seconds))} s."


def in_progress(active: int, limit: int) -> str:
    """The member's replies in progress (on any host) are at their limit."""
    if limit == 1:
        return "You already have a reply in progress; wait for it to finish or press Stop."
    return (f"You already have {active} replies in progress (the limit is {limit}); "
            "wait for one to finish.")


#: The shared database that holds members' limits (several hosts) cannot be reached.
LIMITS_UNREACHABLE: Final = "I can't reach my database right now; try again in a moment."


def busy(waiting: int) -> str:
    verb = "is" if waiting == 1 else "are"
    return (f"I'm busy: {plural(waiting, 'request')} {verb} already waiting. "
            "Please try again in a moment.")


# --- replies on Discord: their lifecycle and their buttons ----------------------------------

#: A reasoning model inside its <think>: the status line while it thinks.
THINKING: Final = "-# 💭 thinking…"
RESTARTING: Final = "I'm restarting, try again in a moment."
EMPTY_PROMPT: Final = "Ask something: the prompt was empty."
INTERRUPTED: Final = "⚠️ Interrupted: the bot restarted before this reply finished."
REPLY_DELETED: Final = "This reply was deleted, so I stopped writing it."
PRIVATE_REPLY_EXPIRED: Final = "This private reply expired before it finished."
REPLY_MESSAGE_GONE: Final = "This reply's message is gone and I can't post in the channel."
ALREADY_FINISHED: Final = "This reply has already finished."
ONLY_ASKER_STOPS: Final = "Only the person who asked (or a moderator) can stop this reply."
ONLY_ASKER_REGENERATES: Final = "Only the person who asked can regenerate this reply."
PROMPT_GONE: Final = "I no longer have this prompt, so I can't regenerate it. Ask again!"
CONVERSATION_GONE: Final = "I no longer have this conversation (it may have expired). Ask again!"
THREAD_IS_PUBLIC: Final = "A thread is public: ask without `private` to open one."
THREAD_NOT_IN_DM: Final = "Threads exist only in servers; here, just keep talking."
THREAD_ALREADY: Final = "This is already a thread: `/ask` here continues it."
THREAD_CONTINUES: Final = ("This thread continues the conversation: `/ask` here or mention me. "
                        "Everyone can join in.")
THREAD_REFUSED: Final = "I couldn't open a thread here (do I have Create Public Threads?)."
#: A button whose custom id names nothing a reply could carry (crafted, or broken).
BUTTON_INVALID: Final = "This button is not valid (it names no reply I could have sent)."
BUTTON_OTHER_SERVER: Final = "This button belongs to another server."
BUTTON_OTHER_CHANNEL: Final = "This button belongs to another channel."
BUTTON_OTHER_REPLY: Final = "This button belongs to another reply."
NO_REASONING: Final = "*(no reasoning was kept for this reply)*"
REASONING_ATTACHED: Final = "The reasoning is long, so it is attached."
DISCORD_FIXED: Final = (
    THINKING, RESTARTING, EMPTY_PROMPT, INTERRUPTED, REPLY_DELETED, PRIVATE_REPLY_EXPIRED,
    REPLY_MESSAGE_GONE, ALREADY_FINISHED, ONLY_ASKER_STOPS, ONLY_ASKER_REGENERATES,
    PROMPT_GONE, CONVERSATION_GONE, THREAD_IS_PUBLIC, THREAD_NOT_IN_DM, THREAD_ALREADY,
    THREAD_CONTINUES, THREAD_REFUSED, BUTTON_INVALID, BUTTON_OTHER_SERVER, BUTTON_OTHER_CHANNEL,
    BUTTON_OTHER_REPLY, NO_REASONING, REASONING_ATTACHED,
)


def waiting_line(message: str) -> str:
    """A run waiting for its model ("loading model X…"), as a status line."""
    return f"-# ⏳ {message}"


def version_line(label: str) -> str:
    """Under a version shown by ◀ ▶: which one it is ("2/3")."""
    return f"-# version {label}"


def undelivered(status: int) -> str:
    return (f"⚠️ Discord kept failing ({status}) while I was updating this reply, "
            "so it may be incomplete. Please ask again.")


# --- Discord: errors, refusals and files ------------------------------------------------------

GENERIC: Final = "Something went wrong on my side; it has been logged. Please try again."
SERVER_ONLY: Final = "That command only works in a server."
NOT_HERE: Final = "You can't use that here."
OPTIONS_UNREADABLE: Final = "I couldn't read this command's options."
DOWNLOAD_FAILED: Final = "I couldn't download that file; try again."
HOW_TO_ASK: Final = (
    "I found no question to answer (Discord shows me the text of a message only when it "
    "mentions me). To ask me, mention me together with your question, reply to one of my "
    "answers with the ping left on, press **Reply** under an answer, or use `/ask`."
)
HOW_TO_ASK_DM: Final = "Send me your question as text (or use `/ask`); I can only answer text."
#: Option types as a member would name them.
OPTION_KINDS: Final[Mapping[str, str]] = {
    "integer": "a whole number", "number": "a number", "string": "text",
    "boolean": "true or false", "user": "a member", "channel": "a channel", "role": "a role",
    "mentionable": "a member or role", "attachment": "a file",
}
ERROR_FIXED: Final = (GENERIC, SERVER_ONLY, NOT_HERE, OPTIONS_UNREADABLE, DOWNLOAD_FAILED,
                      HOW_TO_ASK, HOW_TO_ASK_DM, *OPTION_KINDS.values())


def needs_permission(perms: str) -> str:
    return f"You need the {perms} permission for that."


def unreadable_option(value: object, kind: str) -> str:
    """A value Discord's transformer refused, and what was expected."""
    return f"I couldn't read `{value}` as {OPTION_KINDS.get(kind, kind.lower())}."


def option_not_text(shown: str) -> str:
    return f"I couldn't read {shown}: it should be text."


def dm_has_no_server(command: str) -> str:
    return f"DMs have no server settings: `/{command}` only works in a server."


def file_too_big(size: int, limit: int) -> str:
    return f"That file is {size:,} bytes; files up to {limit:,} bytes are accepted."


def file_larger_than(limit: int) -> str:
    return f"That file is larger than {limit:,} bytes, the most accepted."


def download_refused(status: int) -> str:
    return f"Discord didn't let me download that file ({status}); try again."


# --- commands: who may change what, and what changed --------------------------------------

PICK_A_SCOPE: Final = "Pick a scope from the list."
DM_SETTINGS_ARE_YOURS: Final = ("DMs have no server settings: your DM settings are your own "
                                "(use scope: This channel or thread).")
NEEDS_MANAGE_SERVER: Final = (
    "You need the Manage Server permission to change this server's settings.")
STATUS_NEEDS_MANAGE_SERVER: Final = "You need the Manage Server permission for /status."
NOTHING_TO_FORGET: Final = "You have no conversation here to forget."
COMMAND_FIXED: Final = (PICK_A_SCOPE, DM_SETTINGS_ARE_YOURS, NEEDS_MANAGE_SERVER,
                        STATUS_NEEDS_MANAGE_SERVER, NOTHING_TO_FORGET)


def needs_manage_channels(*, in_thread: bool) -> str:
    where = "thread" if in_thread else "channel"
    return f"You need the Manage Channels permission to change this {where}'s settings."


def forgot(removed: int) -> str:
    """What `/conversation forget` did."""
    if not removed:
        return NOTHING_TO_FORGET
    return f"Forgot {plural(removed, 'turn')} of your conversation here."


def model_chosen(name: str, where: str) -> str:
    return (f"`{name}` now answers in {where}; conversations already under way "
            "switch at their next turn.")


def model_reset(where: str, *, changed: bool) -> str:
    if changed:
        return f"Model choice removed for {where}."
    return f"{where[:1].upper()}{where[1:]} has no model of its own."

# --- the lab -----------------------------------------------------------------------------

#: /probs in chat mode: what the first step is.
PROBS_CHAT: Final = ("Chat mode: your prompt as a message to me, with this channel's persona; "
                     "step 1 is the first token of my reply.")
#: /probs in raw text mode: the text itself continued.
PROBS_RAW: Final = ("Raw text: your text continued as written, with no chat template and no "
                    "persona; step 1 is the next token of the text itself.")
def card_ignored(parts: tuple[str, ...]) -> str:
    """What an import left out of the persona, said once."""
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"Not used (a persona holds no such parts): {listed}."


def kept_existing(name: str) -> str:
    """An import whose name a saved persona already had: both are kept."""
    return f" A saved persona was already called `{name}`: it is kept as it was."


#: The view of a reply's own tokens opened by Inspect, and its first part's title.
WORD_ODDS: Final = "Word odds"
#: Said once at the top of Word odds: what it measures, and what it does not.
WORD_ODDS_NOTE: Final = ("How expected each token was to the model, not whether it is right: "
                         "⟨marked⟩ tokens had under 10 %.")
#: Inspect pressed under an empty reply (one sent before Inspect left empty replies).
WORD_ODDS_EMPTY: Final = "This reply is empty: there are no words to score."
#: The lab's /probs walk, /compare and knob help (bot/discord/lab.py).
LAB_PROMPT_GONE: Final = "I no longer have this prompt (it may have expired). Ask again!"
LAB_ONLY_ASKER: Final = "Only the person who asked can look inside this reply."
COMPARE_SEED_NOTE: Final = (
    "Same seed for every variant, so the knob is the only difference asked. CTranslate2 "
    "has no per-call seed: the seed fixes the lab's own draws, not a replay of the bot's.")
COMPARE_TEXTS_CUT: Final = "Some texts were cut: the full texts are attached."
COMPARE_GONE: Final = ("I no longer have this comparison (they are kept 15 minutes). "
                       "Run /compare again!")
COMPARE_ONLY_ASKER: Final = "Only the person who asked can regenerate this."
WALK_STALE_BUTTON: Final = "That button is out of date: step from the latest view."
WALK_GONE: Final = "This walk has expired (walks are kept 15 minutes). Run /probs again."
WALK_NOT_YOURS: Final = "Only the person who opened this view can step it."
WALK_FIRST_STEP: Final = "This is the first step: there is nothing before it."
CHART_TOO_LARGE: Final = "The chart came out too large to send."
KNOB_HELP_TITLE: Final = "What the knobs do"
KNOB_HELP_FOOTER: Final = ("Try one: your last prompt here, with the knob's value here "
                           "against a contrasting one (/compare).")
KNOB_HELP_BUTTON: Final = "What do these do?"
TRY_NEEDS_AN_ASK: Final = "Ask something here first (/ask): this reruns your last prompt."
REPLY_BOX_LABEL: Final = "Your reply"
AN_OPTION: Final = "an option"


LAB_FIXED: Final = (
    LAB_PROMPT_GONE, LAB_ONLY_ASKER, COMPARE_SEED_NOTE, COMPARE_TEXTS_CUT, COMPARE_GONE,
    COMPARE_ONLY_ASKER, WALK_STALE_BUTTON, WALK_GONE, WALK_NOT_YOURS, WALK_FIRST_STEP,
    CHART_TOO_LARGE, KNOB_HELP_TITLE, KNOB_HELP_FOOTER, KNOB_HELP_BUTTON, TRY_NEEDS_AN_ASK,
    REPLY_BOX_LABEL,
)


def probs_title(named: str, step: int, knobs: str, seed: int | None, header: str) -> str:
    """The first lines of a /probs view: which model, which step, the knobs and the seed."""
    return (f"**Next-token probabilities**{named} · step {step} · `{knobs}`"
            f" · seed {seed} (the lab's own draw)\n{header}\n")


#: The button under a finished reply, and what its view offers.
INSPECT: Final = "Inspect"
INSPECT_PICK_TOKEN: Final = "Jump to a token of the reply…"
INSPECT_BACK: Final = "◀ Back"
INSPECT_HOW: Final = "Pick a token below to see what else the model could have written there."
WRITE_ON_PICK: Final = "Write on from here with…"
WRITE_ON_HOW: Final = ("Pick another token below to write on from here: the reply up to this "
                       "token, then yours, continued with the reply's own knobs, becomes a new "
                       "version of the reply.")
INSPECT_GONE: Final = ("This view has expired (views are kept 15 minutes): press Inspect "
                       "under the reply again.")
INSPECT_NOT_YOURS: Final = "Only the person who opened this view can use it."
INSPECT_NOT_IN_REPLY: Final = "That token is not in this reply."
INSPECT_NOT_OFFERED: Final = "That token is not one offered here: pick one from the latest view."
INSPECT_OLD_SPELLING: Final = ("This reply was stored before its tokens were kept: these are "
                               "its text's tokens, which may split a word differently.")
WRITE_ON_UNKNOWN_TOKEN: Final = "That reply holds a token this model does not have."
WRITE_ON_NO_ROOM: Final = ("That is the last token this reply's max_new_tokens allows: there "
                           "is nothing left to write after it.")


def inspect_token(n: int, count: int, taken: str, rank: int, raw: float, final: float) -> str:
    """The line above a token's alternatives: which token, and how the model rated it."""
    return (f"Token {n} of {count}: the reply took **{taken}** here (choice #{rank} by the "
            f"model, raw {raw * 100:.1f}%, final {final * 100:.1f}%).")


def inspect_window(first: int, last: int, count: int) -> str:
    """The select's placeholder when the reply has more tokens than it holds."""
    return f"Jump to a token ({first}–{last} of {count})…"


#: Above Word odds' list of the tokens the model least expected.
INSPECT_SURPRISING: Final = "Most surprising:"


def inspect_first_tokens(shown: int, count: int) -> str:
    """After Word odds' title when the reply is longer than one message shows."""
    return f" (the first {shown} of {count} tokens)"


def inspect_so_far(text: str) -> str:
    """Above a token's alternatives: the reply up to it (already quoted as code)."""
    return f"Reply so far: `{text}`"


def removed_by(stage: str) -> str:
    """A write-on choice the knobs would have removed, and which knob."""
    return f"✕ removed by {stage}"


INSPECT_FIXED: Final = (
    WORD_ODDS_NOTE, WORD_ODDS_EMPTY, INSPECT_HOW, WRITE_ON_HOW, INSPECT_GONE, INSPECT_NOT_YOURS,
    INSPECT_NOT_IN_REPLY, INSPECT_NOT_OFFERED, INSPECT_OLD_SPELLING, WRITE_ON_NO_ROOM,
    WRITE_ON_UNKNOWN_TOKEN,
    INSPECT_SURPRISING,
)


#: Every fixed string above, for the test that checks the rules.
ALL_FIXED: Final = (
    *WAITING, *SOURCE_LABELS.values(), PARENT_CHANNEL, *SCOPE_CHOICES.values(), SCOPE_OPTION,
    PERSONA_NONE, NAMED_PERSONAS_PERMISSION, IMPORT_NOT_SAVED, MODEL_SWAP_PERMISSION,
    MODEL_SWAP_NOT_IN_DMS, EMPTY_REPLY, MORE_HINT,
    RAISE_HINT, *CAP_OWNERS.values(), *DISCORD_FIXED,
    *ERROR_FIXED, *COMMAND_FIXED, *INSPECT_FIXED, *LAB_FIXED,
)

HELP: Final = "\n".join([
    "**How to ask**",
    "- `/ask prompt:…` — the reply streams in; `private:true` only you see it, "
    "`thread:true` opens a thread.",
    "- Mention me with your question, or reply to one of my answers (ping on) to continue it.",
    "- In DMs, just write: each message continues our conversation.",
    "- Attach a text file (code, a log, notes) to a mention or `/ask file:` and I read it.",
    "",
    "**Buttons under a reply**",
    "- **Stop** ends it · **Regenerate** asks again · **Reply** continues the conversation.",
    "- **Continue** writes on where a cut reply stopped.",
    "- **◀ ▶** switch between its versions · **Reasoning** shows a reasoning model's thinking.",
    "- **Inspect** shows how expected each word was to the model (not whether it is right), "
    "what else it could have written at any token, and writes on from there.",
    "",
    "**Commands**",
    "- `/settings` — the model, persona and sampling settings in effect here.",
    "- `/conversation show` — your conversation here and its tokens; `forget` deletes it.",
    "- `/probs` — next-token odds, as a chat or (`raw`) as plain text.",
    "- `/compare` — one prompt under 2–4 settings, side by side.",
    "- `/tokens` — how the model splits a text · `/status` — models, queue, speed.",
    "- `/model list` — the models served and where each answers.",
    "- `/system show` — the persona here · `/system list` — the saved personas.",
    "- **What do these do?** below explains every sampling setting · `/help` — this.",
    "",
    "**Admins' checklist**",
    "1. `/system set`, `edit`, `import` (a character card), `save`, `load`, `delete`, "
    "`reset` — the persona here or server-wide.",
    "2. `/knobs show`, `set`, `preset`, `reset` — sampling; a server's `max_new_tokens` caps "
    "its channels.",
    "3. `/model set` / `reset` — which model answers here; `/system reasoning` — split "
    "`<think>`.",
    "4. `/conversation follow`, `autothread`, `marker` — talk without @ here; a thread per "
    "mention; what members start asides with.",
    "5. Channel permissions decide where I may post; I answer only where I'm asked.",
])

#: Said once when the bot joins a server, where it may post; it pings nobody.
JOINED: Final = ("Hello! I answer questions with a language model. Ask with `/ask`, or mention "
                 "me with your question. `/help` lists the commands and an admin's checklist.")

#: What "@bot help" (or "help" in a DM) is: the whole message, case and a "/" aside.
HELP_WORDS: Final = frozenset({"help", "/help", "help?", "!help"})


def asks_for_help(text: str) -> bool:
    return text.strip().lower() in HELP_WORDS


#: `/settings` where the model answering has never been loaded and its files name no window.
CONTEXT_UNKNOWN: Final = "**Context window**: unknown until the model first loads"


def not_loaded(model: str) -> str:
    """`/status` where the model answering has not been loaded yet (it loads at the first ask)."""
    return f"`{model}` (not loaded yet: it loads at the first ask)"


# --- files as context -------------------------------------------------------------

FILE_SKIPPED: Final = "📎 `{name}` not read: {reason}."
FILE_NOT_TEXT: Final = "it isn't a text file"
FILE_NOT_UTF8: Final = "it isn't UTF-8 text (save it as UTF-8 and attach it again)"
FILE_EMPTY: Final = "it is empty"
FILE_TOO_BIG: Final = "it is {size:,} bytes and files up to {limit:,} bytes are read"
FILE_TOO_MANY: Final = "I read {count} per ask"
FILE_CUT: Final = "[… {lines} not shown: the file is longer than the model's window holds]"
FILE_READ: Final = "📎 read {names}"
FILE_READ_CUT: Final = "📎 read {names} (only the beginning of {cut} fits the model's window)"

# --- talking without @ ----------------------------------------------------------------

FOLLOWING: Final = (
    "I'm following {place} now: every message here is for me, no @ needed. Start a message "
    "with `{marker}`, or reply to or mention someone else, to talk among yourselves."
)
NOT_FOLLOWING: Final = "I no longer follow {place}: mention me or reply to my answers to ask."
FOLLOW_NEEDS_CONTENT: Final = (
    "⚠️ Following needs message-content mode: the operator sets BOT_MESSAGE_CONTENT=true and "
    "switches on the Message Content intent (Developer Portal → Bot → Privileged Gateway "
    "Intents). Until then I only answer mentions and replies."
)
AUTO_THREAD_ON: Final = (
    "A mention in this channel now opens a thread of its own, which I follow."
)
AUTO_THREAD_OFF: Final = "Mentions in this channel are answered here again, without a thread."
MARKER_SET: Final = "Messages starting with `{marker}` are left alone in followed places."
THREAD_OPENED: Final = (
    "I'll answer here. Keep talking in this thread, no @ needed; start a message with "
    "`{marker}` to talk among yourselves."
)
THREAD_OPENED_MENTION: Final = (
    "I'll answer here. Mention me in this thread (or reply to my answers) to keep talking."
)
FILE_ONLY_PROMPT: Final = "Here is a file."
CONTENT_MODE_ON: Final = "on: followed threads and channels need no @ (Message Content intent)"
CONTENT_MODE_OFF: Final = "off: mention me or reply to my answers (BOT_MESSAGE_CONTENT=false)"
CONTENT_MODE_REFUSED: Final = (
    "⚠️ off: Discord refused the Message Content intent; switch it on in the Developer Portal "
    "(Bot → Privileged Gateway Intents) and restart"
)
CONTENT_INTENT_REFUSED_LOG: Final = (
    "Discord refused the privileged Message Content intent (close code 4014). Switch it on "
    "in the Developer Portal: your application → Bot → Privileged Gateway Intents → Message "
    "Content Intent, then restart; or set BOT_MESSAGE_CONTENT=false. Running with "
    "message-content mode off: only mentions, replies and DMs are answered."
)
AUTO_THREAD_IN_THREAD: Final = "Auto-threads are a channel's setting: use it in the channel."


# --- the settings commands: what they show and what changed ----------------------------

KNOBS_TITLE: Final = "Sampling settings"
SETTINGS_TITLE: Final = "Settings here"
PICK_A_SETTING: Final = "Pick at least one setting to change."


def knob_list(shown: Mapping[str, str]) -> str:
    """Knobs as `/knobs` lists them: "temperature = `0.3`, top_k = `5`" (values as shown)."""
    return ", ".join(f"{k} = `{v}`" for k, v in shown.items())


def knobs_set(shown: Mapping[str, str], where: str, notes: Sequence[str] = ()) -> str:
    return " ".join([f"Set {knob_list(shown)} for {where}.", *notes])


def knobs_reset(names: Sequence[str], where: str) -> str:
    return f"Reset {', '.join(names)} for {where}."


def nothing_to_reset(knob: str | None, where: str) -> str:
    """A reset that found nothing set at the scope itself (`knob` None: all of them)."""
    what = "sampling setting" if knob is None else knob
    return f"Nothing to reset: no {what} is set for {where} itself."


def preset_applied(name: str, shown: Mapping[str, str], where: str) -> str:
    return f"Applied **{name}** to {where}: {knob_list(shown)}."


def settings_intro(model: str, persona_source: str) -> str:
    """The head of `/settings`: the model answering here and where the persona comes from."""
    return f"**Model** {model}\n**Persona** (from {persona_source})\n"


def reasoning_setting(on: bool) -> str:
    return f"**Reasoning** (`<think>` split): {'on' if on else 'off'}"


def context_in_use(usage: str, dropped: str | None) -> str:
    """`/settings`: how much of the window the member's conversation here uses."""
    return f"**Context**: this conversation {usage}" + (f"; {dropped}" if dropped else "")


def context_window(tokens: int) -> str:
    return f"**Context window**: {plural(tokens, 'token')}"


# --- the persona commands ---------------------------------------------------------------

PERSONA_TITLE: Final = "Persona"
#: The edit box of `/system edit`.
PERSONA_BOX_TITLE: Final = "Edit the persona"
BOX_OPENED_ELSEWHERE: Final = "This edit box was opened somewhere else."
NO_SAVED_PERSONAS: Final = "No saved personas yet: `/system save NAME` or `/system import`."
SAVED_PERSONAS_NEED_A_SERVER: Final = "Saved personas belong to a server: use them there."


def persona_source(source: str) -> str:
    """Under `/system show`: where the persona comes from."""
    return f"from: {source}"


def persona_box_label(where: str, source: str) -> str:
    """The edit box's label: the scope it sets, or where the text it opens with comes from."""
    return f"Persona for {where}" if source == where else f"Persona (now from: {source})"


def persona_box_placeholder(where: str) -> str:
    return f"Saving sets the persona for {where}."


def card_imported(name: str, where: str, note: str = "") -> str:
    """`/system import`: the card's name (markdown escaped by the caller) and a saved note."""
    return f"Imported **{name}** as the persona for {where}.{note}"


def card_saved_as(name: str) -> str:
    return f" Saved as `{name}` (`/system load`)."


def card_not_saved(why: str) -> str:
    return f" (Not saved by name: {why})"


def persona_named(name: str, *, replaced: bool, knobs: int) -> str:
    """`/system save`: saved or replaced, with how many knobs it bundles."""
    extra = f" with {plural(knobs, 'knob')}" if knobs else ""
    return f"{'Replaced' if replaced else 'Saved'} the persona `{name}`{extra}."


def persona_loaded(name: str, where: str, knobs: Mapping[str, object],
                   notes: Sequence[str] = ()) -> str:
    text = f"Loaded `{name}` for {where}."
    if knobs:
        text += " Its knobs: " + ", ".join(f"{k}={v}" for k, v in knobs.items()) + "."
    return text + "".join(f"\n{n}" for n in notes)


def saved_persona_line(name: str, *, knobs: int, greeting: bool) -> str:
    """A line of `/system list`."""
    return (f"• `{name}`" + (f" (+{plural(knobs, 'knob')})" if knobs else "")
            + (" (greeting)" if greeting else ""))


#: `/system reasoning`'s modes as a sentence says them.
REASONING_MODES: Final[Mapping[str, str]] = {"on": "on", "off": "off", "inherit": "inherited"}


def reasoning_is(mode: str, where: str) -> str:
    return f"Reasoning is {REASONING_MODES.get(mode, mode)} for {where}."


# --- /model, /status, /tokens --------------------------------------------------------------

MODELS_TITLE: Final = "Models"
STATUS_TITLE: Final = "Status"
#: `/status`'s fields, by what each shows.
STATUS_FIELDS: Final[Mapping[str, str]] = {
    "model": "Model", "loaded": "Loaded models", "device": "Device", "queue": "Queue",
    "uptime": "Uptime", "speed": "Recent speed", "tokens": "Tokens generated",
    "content": "Talking without @",
}
DEFAULT_MARK: Final = " (default)"
NONE: Final = "none"


def model_here(choice: str) -> str:
    """Under `/model list`: the model answering where it was asked."""
    return f"\n\n**Here:** {choice}"


def model_swap_note(default: str, cooldown_s: float) -> str:
    return f"\nNote: {model_swaps(default, cooldown_s)}."


def recent_speed(median: float, runs: int) -> str:
    return f"{median:.1f} tok/s (median of {runs:,})"


def queue_state(waiting: int, active: int) -> str:
    return f"{waiting:,} waiting · {active:,} active"


def uptime(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {sec}s"


def tokens_head(count: int, shown: int, context: int, model: str | None) -> str:
    """`/tokens`: how many tokens (and how many fit to be shown), the window, the model."""
    more = f" (showing the first {shown:,})" if shown < count else ""
    which = f" · model `{model}`" if model else ""
    return f"**{plural(count, 'token')}**{more} · context window {context} tokens{which}"


# --- the commands and their options, as Discord's picker shows them -------------------------

#: Each command's (and command group's) description, by its name as typed.
COMMANDS: Final[Mapping[str, str]] = {
    "ask": "Ask the model; the reply streams in.",
    "settings": "The persona and sampling settings in effect here.",
    "help": "How to ask, the commands, and an admin's checklist.",
    "status": "Model, device, queue and speed.",
    "tokens": "Show how the model splits text into tokens.",
    "compare": "One prompt under 2-4 knob settings, side by side.",
    "probs": "The model's next-token candidates, raw and after the knobs.",
    "knobs": "Change the sampling settings",
    "knobs show": "Every sampling setting here, and its source.",
    "knobs set": "Change sampling settings here.",
    "knobs reset": "Go back to the inherited value.",
    "knobs preset": "Apply a preset: precise, balanced, creative.",
    "system": "The bot's persona",
    "system show": "Show the persona in effect here.",
    "system set": "Set the persona (one line; see /system edit).",
    "system edit": "Edit the persona in a multi-line box.",
    "system reset": "Remove the persona set here.",
    "system import": "Make a persona from a character card.",
    "system save": "Save the persona in effect here by name.",
    "system delete": "Delete a persona saved on this server.",
    "system load": "Use a saved persona here.",
    "system list": "The personas saved on this server.",
    "system reasoning": "Split a reasoning model's <think> part from the answer.",
    "model": "Which model answers here",
    "model list": "The models served, and where each is used.",
    "model set": "Choose the model that answers here.",
    "model reset": "Remove the model chosen here.",
    "conversation": "Your conversation with the bot here",
    "conversation show": ("Your conversation here: its turns, their tokens, and which the next "
                          "ask leaves out."),
    "conversation forget": ("Delete your turns of the conversation here (in DMs: the whole "
                            "conversation)."),
    "conversation follow": "Answer every message here, no @ needed (admins).",
    "conversation autothread": "A mention in this channel opens a thread of its own (admins).",
    "conversation marker": ("What a message starts with to be left alone where I follow "
                            "(admins)."),
}

_POST_IT: Final = "Post it in the channel (default: only you see it)"
_SCOPE_SHORT: Final = "This channel (default) or the whole server"
_VARIANT: Final = "Knobs in the /knobs set syntax (temperature=1.5 top_p=1) or a preset name"
_SAVED_NAME: Final = "A saved persona (see /system list)"

#: Each command's option descriptions that are not a knob's (knobs take their help's words).
OPTIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "ask": {
        "prompt": "What to ask",
        # Said where it is chosen: a larger value than the scope's is capped.
        "max_new_tokens": ("This ask only: at most this many tokens, up to this channel's or "
                           "server's limit"),
        "stop": r"This ask only: stop sequences, separated by | (\n for a newline)",
        "private": ("Only you see the reply and its follow-ups (only you can stop or "
                    "regenerate it)"),
        "thread": ("Open a public thread from the answer; every /ask or mention there "
                   "continues it"),
        "file": "A text file (code, a log, notes) the model reads with your question",
    },
    "knobs set": {
        "stop": r"Stop sequences separated by | (\n for a newline; 'none' clears them)",
        "scope": SCOPE_OPTION,
    },
    "knobs reset": {"knob": "Which setting (default: all)", "scope": SCOPE_OPTION},
    "knobs preset": {"name": "The preset", "scope": SCOPE_OPTION},
    "system set": {"text": "The persona", "scope": SCOPE_OPTION},
    "system edit": {"scope": SCOPE_OPTION},
    "system reset": {"scope": SCOPE_OPTION},
    "system import": {
        "card": "A character card: V2/V3 JSON, or a PNG with the card inside",
        "scope": _SCOPE_SHORT,
        "greeting": "Also post the card's greeting here; replies to it continue from it",
    },
    "system save": {"name": "1-32 characters", "knobs": "Bundle this channel's own knobs too"},
    "system delete": {"name": _SAVED_NAME},
    "system load": {"name": _SAVED_NAME, "scope": _SCOPE_SHORT,
                    "greeting": "Also post its greeting here, if it has one"},
    "system reasoning": {"mode": "on, off, or inherit (from the server / the default)",
                         "scope": _SCOPE_SHORT},
    "model set": {"name": "A model from /model list", "scope": _SCOPE_SHORT},
    "model reset": {"scope": _SCOPE_SHORT},
    "conversation follow": {"on": "on: every member message here is for me; off: mentions only"},
    "conversation autothread": {
        "on": "on: each mention here gets its own thread; off: answered here"},
    "conversation marker": {"marker": "A few characters, such as // (the default)"},
    "tokens": {"text": "The text to tokenize", "public": _POST_IT},
    "compare": {
        "prompt": "What to ask", "a": _VARIANT, "b": _VARIANT, "c": _VARIANT, "d": _VARIANT,
        "seed": "The seed every variant shares (default: a new one, in the attached file)",
        "public": _POST_IT,
    },
    "probs": {
        "prompt": "The prompt, as you would /ask it",
        "knobs": ("Knobs for this view in the /knobs set syntax, or a preset (default: this "
                  "channel's)"),
        "seed": "Seed of the sampled pick shown (default: a new one)",
        "public": _POST_IT,
        "raw": ("Continue the text as written, with no chat template (default: as a chat "
                "message)"),
    },
}


def ask_only(help_text: str) -> str:
    """A knob option of `/ask`: it applies to this ask alone."""
    return f"This ask only: {help_text}"


# --- the console ----------------------------------------------------------------------------
# The console is the operator's: it names the persona by its command's word, "system prompt".

CONSOLE_HELP: Final = """\
Commands (a line without a slash is an /ask; each ask continues the conversation):
  /ask <prompt>                 stream a reply
  /new                          start a new conversation
  /history                      the turns the next ask sends, with token counts
  /system show                  the persona in effect here
  /system set <text> [--server] set the persona for this channel (or the server)
  /system reset [--server]      remove it
  /system import FILE [--server] [--greeting]  a persona from a character card
  /system save NAME [--knobs]   save the persona in effect by name (with this channel's knobs)
  /system load NAME [--server] [--greeting]  use a saved persona (and post its greeting);
                                /system list shows them
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
CONSOLE_KNOBS_HELP: Final = "\nWhat the knobs do:\n"
CONSOLE_NEW: Final = "Started a new conversation."
CONSOLE_ASK_USAGE: Final = "Ask something: /ask <prompt>."
CONSOLE_NO_ANSWER: Final = "No answer yet: ask something first."
CONSOLE_QUESTION_GONE: Final = "I no longer have the question of the last answer."
CONSOLE_GREETING_NO_QUESTION: Final = ("A greeting has no question to ask again; /swipe shows "
                                       "its other versions.")
CONSOLE_SWIPE_USAGE: Final = "Use /swipe prev or /swipe next."
CONSOLE_NO_CONVERSATION: Final = "No conversation yet: the next line starts one."
CONSOLE_TRY_FIRST: Final = "Ask something first: /try reruns your last prompt."
CONSOLE_PROBS_ONE_SET: Final = "/probs takes one set of knobs: /probs <prompt> | top_k=5"
CONSOLE_THINKING: Final = "(thinking…)"
CONSOLE_SYSTEM_USAGE: Final = "Use /system show, /system set <text> or /system reset."
CONSOLE_SYSTEM_SET_USAGE: Final = "Give the text: /system set <text>."
CONSOLE_CARD_USAGE: Final = "Give the card's file: /system import FILE."
CONSOLE_NO_SAVED_PERSONAS: Final = "No saved personas yet."
CONSOLE_REASONING_USAGE: Final = "Use /system reasoning on, off or inherit."
CONSOLE_NOTHING_TO_RESET: Final = "Nothing to reset."
CONSOLE_KNOBS_USAGE: Final = "Use /knobs show, /knobs set k=v, /knobs reset or /knobs preset."
CONSOLE_KNOB_PAIRS_USAGE: Final = "Give knob=value pairs, e.g. /knobs set temperature=0.9."
CONSOLE_MODEL_SET_USAGE: Final = "Give the model: /model set <name> (see /model list)."
CONSOLE_MODEL_USAGE: Final = "Use /model list, /model set <name> or /model reset."
CONSOLE_NOT_UTF8: Final = "error: that line is not valid UTF-8; nothing was run."
CONSOLE_PREPARING: Final = ("Preparing the model… (first start converts the embedded model, "
                            "about 10 s)")
CONSOLE_LEFT_OUT: Final = "  [left out]"


def console_error(message: str) -> str:
    return f"error: {message}"


def console_unknown(command: str) -> str:
    return f"Unknown command {command}. Type /help."


def console_queued(ahead: int) -> str:
    return f"(queued, {ahead} ahead)"


def console_banner(model: str, device: str, compute_type: str) -> str:
    return (f"{model} on {device} ({compute_type}). Local console: no Discord token is "
            "configured (set DISCORD_TOKEN in .env to run the bot).\n"
            "Type /help for commands; a plain line asks the model.")


def console_models(names: Sequence[str]) -> str:
    return f"Models: {', '.join(names)} (/model list)."


def write_on_past_budget(budget: int) -> str:
    """Inspect at a token from which writing on would leave no room (max_new_tokens)."""
    return (f"Writing on is offered within the reply's first {budget - 1:,} tokens: from "
            f"here, max_new_tokens ({budget:,}) leaves nothing to write.")


def versions_full(cap: int) -> str:
    """Regenerate (or write on) past the cap on an answer's versions."""
    return f"This reply has {cap} versions already; ask again to start afresh."


def console_version(label: str, *, hint: bool = False) -> str:
    """A version of the last answer: made by /regen (`hint`: how to browse) or shown by /swipe."""
    return f"[version {label}; /swipe prev|next browses them]" if hint else f"[version {label}]"


def console_history_head(turns: int, sent: int, window: int, reply: int) -> str:
    return (f"{turns} turns; the next ask sends {sent} (context window {window} tokens, "
            f"{reply} kept for the reply):")


def console_history_line(who: str, tokens: int, preview: str, *, left_out: bool) -> str:
    return f"  {who:<3} {tokens:>5} tokens  {preview}{CONSOLE_LEFT_OUT if left_out else ''}"


def console_usage(usage: str) -> str:
    return f"This conversation {usage}."


def console_try_takes(names: Sequence[str]) -> str:
    return f"/try takes a knob: {', '.join(names)}."


def console_lab_usage(command: str) -> str:
    return f"Usage: {command} <prompt> [| knobs ...]"


def console_model_of(name: str) -> str:
    return f"(model {name})"


def console_comparing(variants: int, model: str, seed: int) -> str:
    return (f"(comparing {variants} settings on model {model}, seed {seed}: the same for each; "
            "CTranslate2 has no per-call seed)")


def console_system_prompt(text: str | None, source: str) -> str:
    """`/system show` in the console: the prompt in force and where it comes from."""
    if source == "default":
        return f"System prompt (default): {text or PERSONA_NONE.strip('*')}"
    return f"System prompt (from {source}):\n{text}"


def console_system_set(where: str) -> str:
    return f"System prompt set for this {where}."


def console_system_reset(where: str, *, changed: bool) -> str:
    if changed:
        return f"System prompt reset for this {where}."
    return f"This {where} had no system prompt of its own."


def console_card_imported(name: str, where: str, saved_as: str | None,
                          not_saved: str | None) -> str:
    kept = f"saved as {saved_as!r}" if saved_as else f"not saved by name: {not_saved}"
    return f"Imported {name} as the persona for {where} ({kept})."


def console_persona_named(name: str, *, replaced: bool) -> str:
    return f"{'Replaced' if replaced else 'Saved'} the persona {name!r}."


def console_persona_loaded(name: str, where: str) -> str:
    return f"Loaded {name!r} for {where}."


def console_saved_personas(names: Sequence[str]) -> str:
    return ("Saved personas: " + ", ".join(names)) if names else CONSOLE_NO_SAVED_PERSONAS


def console_knobs_set(shown: Mapping[str, str], where: str) -> str:
    listed = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"Set {listed} for this {where}."


def console_knobs_reset(names: Sequence[str], where: str) -> str:
    return f"Reset {', '.join(names)} for this {where}." if names else CONSOLE_NOTHING_TO_RESET


def console_presets(names: Sequence[str]) -> str:
    return f"Presets: {', '.join(names)}."


def console_preset_applied(name: str, where: str) -> str:
    return f"Applied the {name} preset to this {where}."


def console_tokens(count: int, context: int, shown: str) -> str:
    return f"{count} token{'' if count == 1 else 's'} (context window {context}):\n{shown}"


def console_model_chosen(name: str, where: str) -> str:
    return f"`{name}` now answers in this {where}."


def console_model_reset(where: str, *, changed: bool) -> str:
    if changed:
        return f"Model choice removed for this {where}."
    return f"This {where} had no model of its own."


def console_model_here(choice: str) -> str:
    return f"Here: {choice}"


def console_model_use(where: str) -> str:
    """Where `/model list` says a model is chosen, in the console's scopes."""
    return f"the {where}"


# --- python -m bot prompt ---------------------------------------------------------------------

PROMPT_TEMPLATE_PERSONA: Final = "persona: the template's own default"
PROMPT_RENDERED: Final = "--- rendered prompt ---"
PROMPT_TOKENS: Final = "--- tokens (id, text; * = control token) ---"


def prompt_totals(tokens: int, control: int, window: int, room: int) -> str:
    return (f"--- {tokens} prompt tokens ({control} control) of a {window}-token context "
            f"window; room for {room} new tokens ---")
