"""Continue and swipes for every front-end: extend an answer, record why one stopped.

Continue gives a reply that stopped at its budget one more: the question is
prepared exactly as the first ask was (history, persona, the same knobs under
today's cap, fitted by `bot.chat.turns.prepare_turn`), then the answer so far is
appended to the prompt as plain text *inside the open assistant turn* (no
end-of-turn marker), so the model carries on the same sentence rather than
answering again. The budget is the knobs' `max_new_tokens`, shortened to what
the window has left; a window already full is refused before anything is queued.

No Discord here: the Discord runner and the console's `/continue` both call
`prepare_continue`, then `SwipeStore.extend` with what came back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bot.chat.turns import PreparedTurn, TurnAsk, prepare_turn
from bot.engine import FinishReason, GenerationResult
from bot.errors import UserFacingError
from bot.hosting.host import OnWait
from bot.knobs import Knobs
from bot.store.scopes import Location
from bot.store.swipes import Answer

if TYPE_CHECKING:
    from bot.app import App

#: `GenerationResult.finish_reason` as `SwipeStore` records it.
_FINISH = {
    FinishReason.END: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.MAX_TOKENS: "length",
    FinishReason.CANCELLED: "cancelled",
    FinishReason.ERROR: "error",
}


def finish_of(result: GenerationResult) -> str:
    """Why a reply stopped, in the stored words ('length' is what Continue is for)."""
    return "error" if result.error else _FINISH[result.finish_reason]


async def prepare_continue(
    app: App, answer: Answer, *, location: Location, user_id: int, knobs: Knobs | None,
    shared: bool = True, on_wait: OnWait | None = None,
) -> PreparedTurn:
    """The request that carries `answer` on (checks: `SwipeStore.check_continue` first)."""
    question = await app.turns.get(answer.turn.parent_id) if answer.turn.parent_id else None
    if question is None:
        raise UserFacingError("I no longer have the question of this reply to continue it.")
    turn = await prepare_turn(app, TurnAsk(
        location=location, prompt=question.text, author_id=question.author_id,
        author_name=question.author_name, parent_id=question.parent_id, explicit=True,
        private=question.private, shared=shared, again=knobs,
    ), on_wait)
    engine = turn.engine  # the model the conversation uses (issue 23), not the default
    tokenizer = engine.bundle.tokenizer
    # The answer is people's text to the tokenizer (what the model said is never
    # read back as a control token), appended after the template's assistant opener.
    extra = [tokenizer.id_to_token(i) for i in tokenizer.encode(answer.turn.text)]
    tokens = [*turn.prepared.tokens, *extra]
    room = engine.info.context_length - len(tokens)
    if room <= 0:
        raise UserFacingError(
            "This reply fills the model's context window; ask a follow-up instead."
        )
    budget = turn.request.knobs.max_new_tokens
    prepared = replace(turn.prepared, tokens=tokens, max_new_tokens=min(budget, room),
                       clamped=budget > room)
    return replace(turn, prepared=prepared)
