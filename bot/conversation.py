"""Conversations for every front-end: stored turns → history → a request that fits.

No Discord here: the console, the Discord front-end and the benchmark turn a
chain of stored turns into `Turn`s with `history_of`, and make the request fit
the model's context with `fit_history`, which keeps the persona and the newest
turns and leaves out the oldest until the prompt plus `max_new_tokens` fits.

Token counts come from the engine itself (`Engine.prepare` renders the chat
template and encodes exactly as a real ask would), so what `fit_history`
measures is what the model will read; nothing here encodes text on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bot.engine import GenerationRequest, PreparedPrompt, Turn
from bot.errors import UserFacingError
from bot.settings.turns import StoredTurn

# Issue 22: names sanitised (one line, capped); re-exported for the front-ends.
from bot.speakers import speaker_text as speaker_text


class Preparer(Protocol):
    """The part of `Engine` fitting needs: render + count, as a real ask would."""

    def prepare(self, request: GenerationRequest) -> PreparedPrompt: ...


class PrivateConversation(UserFacingError):
    """Someone tried to continue or read a private conversation that is not theirs."""

    def __init__(self) -> None:
        super().__init__("This conversation is private to the person who started it.")


@dataclass(frozen=True)
class Fitted:
    """A request whose history fits, and how many earlier turns were left out for it."""

    request: GenerationRequest
    dropped_turns: int = 0
    prepared: PreparedPrompt | None = None
    """`request` as the engine prepared it while measuring, for `Engine.submit`, so the
    chosen prompt is not encoded again; None when nothing was measured (no history)."""


def history_of(chain: Sequence[StoredTurn], *, names: bool) -> tuple[Turn, ...]:
    """Engine turns for a stored chain, oldest first, alternating from a user turn.

    Retention can cut a chain anywhere, so a leading answer (its question was
    pruned) is left out, as is any turn that would break the alternation the
    chat templates insist on. `names` prefixes each question with its speaker.
    """
    turns: list[Turn] = []
    for stored in chain:
        want = "user" if not turns or turns[-1].role == "assistant" else "assistant"
        if stored.role != want:
            continue
        text = stored.text
        if stored.role == "user" and names:
            text = speaker_text(text, stored.author_name)
        turns.append(Turn(stored.role, text))
    if turns and turns[-1].role == "user":
        turns.pop()  # an unanswered question cannot precede a new one
    return tuple(turns)


def check_continuable(chain: Sequence[StoredTurn], user_id: int) -> bool:
    """Whether `user_id` may continue `chain`; returns True when the result must be private.

    Raises `PrivateConversation` when the chain holds someone else's private
    turn: those are never shown to, quoted for, or continued by anyone else.
    """
    private = False
    for turn in chain:
        if turn.private:
            if turn.author_id != user_id:
                raise PrivateConversation()
            private = True
    return private


def _fits(prepared: PreparedPrompt) -> bool:
    return not prepared.clamped


def fit_history(engine: Preparer, request: GenerationRequest) -> Fitted:
    """Leave out the oldest turns (a question with its answer) until the reply fits.

    Keeps the persona and the newest turns. "Fits" means the prompt plus
    `max_new_tokens` is within the context window, so the reply is never cut
    short for history's sake. With no history left the request goes to the
    engine as today: a prompt too long on its own is refused with both numbers
    (`PromptTooLong`), and a budget that overflows is shortened to fit.
    Binary search over the number of exchanges left out: each probe is one
    render and one encode, so a long conversation costs a handful of them.
    """
    history = request.history
    pairs = len(history) // 2
    if not history:
        return Fitted(request)
    fitting: dict[int, PreparedPrompt] = {}  # each probe that fits, by exchanges left out

    def probe(dropped_pairs: int) -> bool:
        candidate = replace(request, history=history[2 * dropped_pairs:])
        try:
            prepared = engine.prepare(candidate)
        except UserFacingError:  # PromptTooLong: this much history is far too long
            return False
        if _fits(prepared):
            fitting[dropped_pairs] = prepared
            return True
        return False

    if probe(0):
        return Fitted(request, prepared=fitting[0])
    low, high = 1, pairs  # the answer is in [low, high]; `high` (no history) always "fits"
    while low < high:
        mid = (low + high) // 2
        if probe(mid):
            high = mid
        else:
            low = mid + 1
    kept = history[2 * low:]
    # No history left was never probed (it "always fits"): the engine prepares that one.
    return Fitted(replace(request, history=kept), dropped_turns=len(history) - len(kept),
                  prepared=fitting.get(low))


@dataclass(frozen=True)
class HistoryLine:
    """One turn of `/history`: who, what, its token count, and whether it will be sent."""

    role: str
    text: str
    tokens: int
    kept: bool


def history_report(
    engine: Preparer, request: GenerationRequest, count: TokenCounter
) -> list[HistoryLine]:
    """The turns the next ask would send, each with its tokens; dropped ones marked."""
    fitted = fit_history(engine, request)
    dropped = fitted.dropped_turns
    return [
        HistoryLine(turn.role, turn.text, count(turn.text), kept=i >= dropped)
        for i, turn in enumerate(request.history)
    ]


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...
