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

from bot.chat.speakers import ASSISTANT_LABELS, participants, strip_label
from bot.chat.speakers import speaker_text as speaker_text
from bot.engine import GenerationRequest, PreparedPrompt, Turn
from bot.errors import PromptTooLong, UserFacingError
from bot.store.turns import StoredTurn


class Preparer(Protocol):
    """The part of `Engine` fitting needs: render + count, as a real ask would."""

    def prepare(self, request: GenerationRequest) -> PreparedPrompt: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` on its own (plain text): a cheap estimate of its share."""
        ...

    @property
    def context_length(self) -> int: ...


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
    chat templates insist on. A conversation a greeting opened starts with an
    empty user turn (nobody asked), which the chat template renders as the
    greeting being the assistant's first turn (`bot.model.chat.ChatTemplate`).
    `names` prefixes each question with its speaker;
    an answer stored with a speaker's label in front is read without it, so
    no reply teaches the model to open with a name.
    """
    labels = [*participants(t.author_name for t in chain if t.role == "user"),
              *ASSISTANT_LABELS]
    turns: list[Turn] = []
    for stored in chain:
        want = "user" if not turns or turns[-1].role == "assistant" else "assistant"
        if stored.role != want:
            continue
        text = stored.text
        if stored.role == "user" and names and not stored.opening:
            text = speaker_text(text, stored.author_name)
        elif stored.role == "assistant":
            text = strip_label(text, labels)
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


@dataclass(frozen=True)
class _Estimate:
    """What each candidate history costs, from each message's own token count.

    Each turn is encoded once, on its own (the engine caches the counts), and a
    candidate's cost is a sum of them: linear in the history's size, and nothing
    rendered. `low[d]` is the candidate that leaves out `d` exchanges: its
    messages' counts, with one token per message allowed for merges at a
    message's edges. A rendered prompt holds every message's text plus the
    template's markers, so `low[d]` never overstates it: a candidate whose `low`
    is over the budget is known too long without rendering it.
    """

    low: list[int]
    messages: list[int]
    budget: int

    @classmethod
    def of(cls, engine: Preparer, request: GenerationRequest, pairs: int) -> _Estimate:
        history = request.history

        def share(turns: Sequence[Turn]) -> int:
            return sum(max(0, engine.count_tokens(turn.text) - 1) for turn in turns)

        fixed = max(0, engine.count_tokens(request.prompt) - 1)
        if request.system_prompt:
            fixed += max(0, engine.count_tokens(request.system_prompt) - 1)
        low = [0] * (pairs + 1)
        low[pairs] = fixed + share(history[2 * pairs:])
        for dropped in range(pairs - 1, -1, -1):
            low[dropped] = low[dropped + 1] + share(history[2 * dropped:2 * dropped + 2])
        messages = [len(history) - 2 * d + 1 + bool(request.system_prompt)
                    for d in range(pairs + 1)]
        budget = engine.context_length - request.knobs.max_new_tokens
        return cls(low, messages, budget)

    def first_fitting(self, overhead: float = 0.0, start: int = 0) -> int:
        """The fewest exchanges left out (from `start`) whose estimate fits the budget,
        with `overhead` tokens of markers per message; len(low) - 1 if none does."""
        for dropped in range(start, len(self.low)):
            if self.low[dropped] + overhead * self.messages[dropped] <= self.budget:
                return dropped
        return len(self.low) - 1


def fit_history(engine: Preparer, request: GenerationRequest) -> Fitted:
    """Leave out the oldest turns (a question with its answer) until the reply fits.

    Keeps the persona and the newest turns. "Fits" means the prompt plus
    `max_new_tokens` is within the context window, so the reply is never cut
    short for history's sake. With no history left the request goes to the
    engine as today: a prompt too long on its own is refused with both numbers
    (`PromptTooLong`), and a budget that overflows is shortened to fit.

    Linear in the history's size (a chain of hundreds of turns must never stall
    the bot): per-message counts (`_Estimate`) rule out every history too long
    before anything is rendered, so only histories about the window's size are
    rendered at all; the first render measures the template's markers per
    message, which points at the answer, and a short galloping and binary search
    around it confirms the fewest exchanges left out that fit. Each probe is one
    render and one encode of at most a window's worth of history.
    """
    history = request.history
    pairs = len(history) // 2
    if not history:
        return Fitted(request)
    fitting: dict[int, PreparedPrompt] = {}  # each probe that fits, by exchanges left out
    measured: dict[int, int] = {}  # prompt tokens of each probe that did not fit

    def probe(dropped_pairs: int) -> bool:
        if dropped_pairs >= pairs:
            return True  # no history left: the engine prepares (or refuses) that one
        candidate = replace(request, history=history[2 * dropped_pairs:])
        try:
            prepared = engine.prepare(candidate)
        except PromptTooLong as exc:  # this much history is far too long
            measured[dropped_pairs] = exc.prompt_tokens
            return False
        except UserFacingError:
            return False
        if _fits(prepared):
            fitting[dropped_pairs] = prepared
            return True
        measured[dropped_pairs] = len(prepared.tokens)
        return False

    estimate = _Estimate.of(engine, request, pairs)
    bound = estimate.first_fitting()  # every count below it is known too long
    if probe(bound):
        low = high = bound
    else:
        # The answer is in [low, high]; `high` (no history) always "fits".
        low, high = bound + 1, pairs
        guess = low
        tokens = measured.get(bound)
        if tokens is not None:  # markers per message, as this template writes them
            overhead = max(0.0, tokens - estimate.low[bound]) / estimate.messages[bound]
            guess = min(pairs, estimate.first_fitting(overhead, low))
        # Gallop from the guess towards the answer, then binary search what is left.
        step = 1
        if probe(guess):
            high = guess
            while high - step >= low:
                if not probe(high - step):
                    low = high - step + 1
                    break
                high -= step
                step *= 2
        else:
            low = guess + 1
            while low + step - 1 < high:
                if probe(low + step - 1):
                    high = low + step - 1
                    break
                low += step
                step *= 2
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
