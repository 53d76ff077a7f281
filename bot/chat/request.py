"""The one path of an ask, shared by Discord, the console and the CLI.

(where, prompt, per-ask overrides) → a `GenerationRequest`: stored settings for
the location, then the overrides, then the configured default persona when no
scope sets one. An admin's `max_new_tokens` is a cap: a member's per-ask value may
narrow it, never widen it, and Regenerate applies the persona and cap in force
when it is pressed, not those of the original ask.
`bot.chat.service.Chat.request` applies these to the settings it resolved.
And the one footer every front-end prints under a reply, so the words for
"why it ended" are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bot import wording
from bot.chat.usage import ContextUsage
from bot.engine import FinishReason, GenerationRequest, GenerationResult
from bot.errors import UserFacingError
from bot.knobs import Knobs, build_knobs
from bot.store.scopes import SYSTEM_PROMPT_KEY, Effective

#: How each front-end words the reason a reply ended. Each is also the start of
#: what the footer shows, so "is this the footer?" is a substring test; a reply
#: cut at its budget says which budget ("cut at the limit of 128 tokens").
FINISH_WORDS: Final[Mapping[FinishReason, str]] = {
    FinishReason.END: "done",
    FinishReason.MAX_TOKENS: "cut at the limit",
    FinishReason.STOP_SEQUENCE: "stop sequence",
    FinishReason.CANCELLED: "stopped",
    FinishReason.ERROR: "error",
}


def persona(effective: Effective, default: str) -> tuple[str | None, str]:
    """The persona in force and where it comes from ("default" when no scope sets one).

    `default` is the configured `BOT_SYSTEM_PROMPT`; empty means the model's own
    template decides (None).
    """
    if effective.system_prompt is not None:
        return effective.system_prompt, effective.sources.get(SYSTEM_PROMPT_KEY, "default")
    return (default or None), "default"


def make_request(
    prompt: str,
    *,
    base: Knobs,
    system_prompt: str | None,
    overrides: Mapping[str, Any] | None = None,
) -> GenerationRequest:
    """Validate the prompt and apply per-ask knob overrides on top of `base`."""
    if not prompt.strip():
        raise UserFacingError("Ask something: the prompt was empty.")
    knobs = build_knobs(dict(overrides), base=base) if overrides else base
    return GenerationRequest(prompt=prompt, knobs=knobs, system_prompt=system_prompt)


def within_cap(overrides: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """Per-ask overrides with `max_new_tokens` (and `min_new_tokens`) at most `cap`.

    The cap is the scope's value, so admins decide how long replies in their server
    may be. Values of the wrong type are left for validation to refuse.
    """
    values = dict(overrides)
    for name in ("max_new_tokens", "min_new_tokens"):
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            values[name] = cap
    return values


@dataclass(frozen=True)
class Cap:
    """The scope's `max_new_tokens` cap and what the ask asked for, for the footer.

    A per-ask length above the cap is lowered to it; the footer says so ("capped
    at this channel's 128 (you asked 500)") instead of a silent "cut at the
    limit", and a reply cut at its limit says how to get more.
    """

    source: str  # where the cap comes from: "server", "channel", "thread", "dm", "operator"…
    cap: int
    asked: int | None = None  # the per-ask max_new_tokens, when one was given

    @property
    def lowered(self) -> bool:
        return self.asked is not None and self.asked > self.cap


def cap_of(effective: Effective, overrides: Mapping[str, Any] | None) -> Cap:
    asked = (overrides or {}).get("max_new_tokens")
    if not isinstance(asked, int) or isinstance(asked, bool):
        asked = None
    source = effective.sources.get("max_new_tokens", "default")
    return Cap(source, effective.knobs.max_new_tokens, asked)


def footer(
    result: GenerationResult, dropped_turns: int = 0, model: str | None = None,
    context_length: int | None = None, *, cap: Cap | None = None, operator: bool = False,
) -> str:
    """The one footer under a reply, e.g. ``12 tokens · done``.

    A member's (chat replies): only what tells them something: a cut reply says
    how to get more, or that the scope's cap lowered what was asked; "shortened
    to fit the context" only when that shortening is what ended the reply; an
    empty reply says so and points at Regenerate. An operator's (`operator`: the
    console, the command line, the lab) adds the decoding speed, when there is
    one, and the plain finish words. Both name the earlier turns left out and,
    on hosts serving several, the model.
    """
    parts = [wording.plural(result.new_tokens, "token")]
    if operator and result.decode_tok_s:
        parts.append(f"{result.decode_tok_s:.1f} tok/s")
    reason = result.finish_reason
    limit = result.max_new_tokens
    if reason is FinishReason.MAX_TOKENS and operator:
        parts.append(f"{FINISH_WORDS[reason]} of {wording.plural(limit, 'token')}")
    elif reason is FinishReason.MAX_TOKENS:
        if cap is not None and cap.lowered and limit == cap.cap:
            assert cap.asked is not None
            parts.append(wording.capped(cap.source, cap.cap, cap.asked))
        else:
            parts.append(wording.cut_at(limit, can_ask_more=cap is None or limit < cap.cap))
    elif reason is FinishReason.END and not operator and not result.text.strip():
        parts.append(wording.EMPTY_REPLY)
    else:
        parts.append(FINISH_WORDS[reason])
    if result.clamped_to_context and (operator or reason is FinishReason.MAX_TOKENS):
        parts.append(wording.shortened(limit))
    if dropped_turns and context_length:
        # How many, and the window's size ("3 earlier turns left out · 2,048 tokens").
        parts.append(ContextUsage(0, context_length, dropped_turns).dropped_text() or "")
    elif dropped_turns:
        parts.append(wording.left_out(dropped_turns))
    if model:  # the model (or "switched to …"), on hosts serving several
        parts.append(model)
    return " · ".join(parts)


def continue_footer(
    result: GenerationResult, *, earlier_tokens: int, continuations: int,
    can_continue: bool, cap: Cap | None = None,
) -> str:
    """A continued reply's footer: the whole reply's count, and advice that fits.

    "60 tokens, continued once · cut at the limit of 20 tokens — press Continue for
    more"; with no Continue left, the advice is the scope's (`footer`'s).
    """
    parts = [wording.continued(earlier_tokens + result.new_tokens, continuations)]
    if result.finish_reason is FinishReason.MAX_TOKENS and can_continue:
        parts.append(f"{FINISH_WORDS[FinishReason.MAX_TOKENS]} of "
                     f"{wording.plural(result.max_new_tokens, 'token')} — "
                     f"{wording.CONTINUE_HINT}")
    else:
        parts.append(footer(result, cap=cap).split(" · ", 1)[1])
    return " · ".join(parts)
