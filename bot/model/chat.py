"""Render a model's own Jinja chat template into the prompt text it was trained on.

A prompt in the wrong layout still "works" but answers worse, so the model's own
template is rendered as transformers' `apply_chat_template` does (sandboxed Jinja,
`trim_blocks`/`lstrip_blocks`, `raise_exception`); built-in ones serve directories
that ship none. To know which characters people wrote (`RenderedChat.plain_spans`),
each conversation is rendered twice, with the messages and with markers in their
place, and the two lined up; a template that changes message text beyond stripping
whitespace is refused rather than guessed at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.model.reasoning import OPEN


class ChatTemplateError(ValueError):
    """A chat template is broken, or rejects even a single user message."""


CHATML: Final = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA2: Final = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

LLAMA3: Final = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Mistral-7B-Instruct v0.1/v0.2 (mistral-common's tokenizer V1): no system role, and
# [INST] markers that are plain text in a 32,000-piece vocabulary like Llama 2's. A
# reply follows " [/INST]" after a space, as mistral-common encodes it (its own piece).
MISTRAL: Final = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Llama 3.1 and later (3.2, 3.3): Meta's template without tools. Its system turn is
# always there and starts with a knowledge date and today's date; 3.0's has neither.
LLAMA31: Final = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] | trim %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{ 'Today Date: ' + strftime_now('%d %b %Y') + '\\n\\n' }}"
    "{{ system_message }}{{ '<|eot_id|>' }}"
    "{% for message in loop_messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Mistral v0.3 (control tokens [INST]/[/INST], as mistral-common encodes it): no space
# before [/INST]; a system prompt goes before the last user message.
MISTRAL_V3: Final = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.last and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

BUILTIN_TEMPLATES: Final[dict[str, str]] = {
    "chatml": CHATML,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "llama3.1": LLAMA31,
    "mistral": MISTRAL,
    "mistral-v3": MISTRAL_V3,
}


# Markers stand in for message text in the second render: a character from Unicode's
# Supplementary Private Use Area-A, then one more encoding the message's index.
_MARK = "\U000f0000"
_MARK_RE = re.compile("\U000f0000([\U000f0001-\U000ffffd])")


def _marker(index: int) -> str:
    return _MARK + chr(0xF0001 + index)


@dataclass(frozen=True, slots=True)
class RenderedChat:
    """A rendered conversation and the [start, end) ranges of it that people wrote."""

    text: str
    plain_spans: tuple[tuple[int, int], ...]


def _locate(real: str, marked: str, contents: Sequence[str]) -> list[tuple[int, int]] | None:
    """Where each message landed in `real`, by lining it up with the `marked` render.

    None when the two do not line up: the template changed message text beyond
    stripping whitespace, or changed its own text with the messages' content.
    """
    parts = _MARK_RE.split(marked)
    if not real.startswith(parts[0]):
        return None
    pos = len(parts[0])
    spans: list[tuple[int, int]] = []
    for k in range(1, len(parts), 2):
        index = ord(parts[k]) - 0xF0001
        if not 0 <= index < len(contents):
            return None
        after = parts[k + 1]
        last = k + 2 >= len(parts)
        content = contents[index]
        for variant in (content, content.strip(), content.rstrip(), content.lstrip()):
            end = pos + len(variant)
            if not real.startswith(variant, pos) or not real.startswith(after, end):
                continue
            if last and end + len(after) != len(real):
                continue
            if variant:
                spans.append((pos, end))
            pos = end + len(after)
            break
        else:
            return None
    return spans if pos == len(real) else None


class _TemplateRejected(jinja2.exceptions.TemplateError):
    """Raised by a template's own `raise_exception(...)` call."""


def _raise_exception(message: str) -> NoReturn:
    """Templates call this to reject a conversation (e.g. a system role)."""
    raise _TemplateRejected(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    """transformers' `tojson`: no HTML escaping, non-ASCII kept (Jinja's escapes both)."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    """Llama 3.1 templates put today's date in the system header with this."""
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment transformers renders chat templates with."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


#: An empty first user turn: nobody spoke before the assistant (a greeting).
_NOBODY: Final = {"role": "user", "content": ""}
#: What stands in for it with a template that insists on a user turn first
#: (Llama 2, Mistral): an empty one cannot be told apart from the persona that
#: Llama 2 folds into it.
OPENING_USER_TEXT: Final = "…"


class ChatTemplate:
    """A compiled chat template plus the BOS/EOS strings it is rendered with."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        name: str = "model",
    ) -> None:
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.name = name
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"The {name} chat template does not compile (line {exc.lineno}): {exc.message}"
            ) from exc
        self.opens_reasoning = self._opens_reasoning()
        """The generation prompt ends inside `<think>` (DeepSeek-R1 distills): every
        reply starts with reasoning, so the model's replies are always split."""

    def _opens_reasoning(self) -> bool:
        if OPEN not in self.source:
            return False
        try:
            text = self.render_messages([{"role": "user", "content": "Hi"}])
        except (ChatTemplateError, jinja2.exceptions.TemplateError):
            return False  # a template that refuses a lone user turn fails later, clearly
        return text.rstrip().endswith(OPEN)

    @classmethod
    def builtin(
        cls, kind: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> ChatTemplate:
        """One of the fallback templates, for model directories that ship none."""
        try:
            source = BUILTIN_TEMPLATES[kind]
        except KeyError:
            known = ", ".join(sorted(BUILTIN_TEMPLATES))
            raise ChatTemplateError(
                f"Unknown built-in chat template {kind!r}; known: {known}"
            ) from None
        return cls(source, bos_token=bos_token, eos_token=eos_token, name=kind)

    def uses(self, text: str) -> bool:
        """Whether the template source mentions `text` (e.g. `<|eot_id|>`)."""
        return text in self.source

    def render_messages(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool = True,
        now: datetime | None = None,
    ) -> str:
        """Render a whole conversation; the template may reject it.

        `now` fixes the date a template prints (Llama 3.1's `strftime_now`), so two
        renders of one conversation agree even across midnight.
        """
        moment = now or datetime.now()
        try:
            return self._template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                strftime_now=lambda fmt: moment.strftime(fmt),
            )
        except _TemplateRejected:
            raise
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"The {self.name} chat template failed: {exc}") from exc

    def render(
        self,
        system: str | None,
        user: str,
        history: Sequence[tuple[str, str]] = (),
    ) -> str:
        """The prompt text for a user turn, ending where the assistant should speak.

        `history` holds earlier (role, text) turns, oldest first, roles "user" and
        "assistant" alternating from a user turn; an empty first user turn means
        the assistant spoke first (a greeting). No system message is sent when
        `system` is empty, so a template's own default (SmolLM2's, for one) applies.
        A template that refuses a system role gets the system prompt folded into the
        first user message instead, as Mistral's docs advise.
        """
        return self.render_spans(system, user, history).text

    def render_spans(
        self,
        system: str | None,
        user: str,
        history: Sequence[tuple[str, str]] = (),
    ) -> RenderedChat:
        """`render`, plus where every message (persona, turns, prompt) sits in the text.

        Raises `ChatTemplateError` when the template changes message text in a way
        that cannot be lined up, since encoding it would mean guessing which
        characters are the template's.
        """
        turns = [{"role": role, "content": text} for role, text in history]
        turns.append({"role": "user", "content": user})
        try:
            if len(turns) > 2 and turns[0] == _NOBODY and turns[1]["role"] == "assistant":
                # A greeting opened the conversation: the assistant's turn comes first,
                # right after the persona, where the template allows it; a template that
                # wants a user turn first gets one that says only "…".
                try:
                    return self._render_turns(system, turns[1:])
                except _TemplateRejected:
                    turns[0] = {"role": "user", "content": OPENING_USER_TEXT}
            return self._render_turns(system, turns)
        except _TemplateRejected as exc:
            raise ChatTemplateError(
                f"The {self.name} chat template rejects this conversation: {exc}"
            ) from exc

    def _render_turns(self, system: str | None, turns: list[dict[str, str]]) -> RenderedChat:
        """Render with the persona as a system message, or folded into the first user
        message for a template that refuses a system role (as Mistral's docs advise)."""
        if not system:
            return self._render_located(turns)
        try:
            return self._render_located([{"role": "system", "content": system}, *turns])
        except _TemplateRejected:
            if turns[0]["role"] != "user":
                raise
            first = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
            return self._render_located([first, *turns[1:]])

    def _render_located(self, messages: list[dict[str, str]]) -> RenderedChat:
        """Render for real and with markers, at one instant, and line the two up."""
        now = datetime.now()
        real = self.render_messages(messages, now=now)
        marked_messages = [
            {"role": m["role"], "content": _marker(i)} for i, m in enumerate(messages)
        ]
        marked = self.render_messages(marked_messages, now=now)
        spans = _locate(real, marked, [m["content"] for m in messages])
        if spans is None:
            raise ChatTemplateError(
                f"The {self.name} chat template changes the text of messages (more than "
                "trimming spaces), so I can't tell its markers from what people wrote. "
                "Use a template that inserts message text as it is."
            )
        return RenderedChat(real, tuple(spans))
