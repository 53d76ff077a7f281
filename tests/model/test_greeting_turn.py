"""A conversation a greeting opened: the assistant's turn first, under every template.

`bot.chat.history.history_of` gives such a conversation an empty first user turn;
the chat template renders the greeting as the assistant's first turn, right after
the persona, where the template allows it (ChatML, Llama 3), and after a user turn
of "…" where the template insists on a user turn first (Llama 2, Mistral).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.chat.history import history_of
from bot.model.bundle import load_model_bundle
from bot.model.chat import BUILTIN_TEMPLATES, OPENING_USER_TEXT, ChatTemplate
from bot.store.turns import StoredTurn

GREETING = "Welcome to the lighthouse. Mind the stairs."
REPLY = "Thanks, I brought tea."
PERSONA = "You are Marlo, a lighthouse keeper."
#: Templates that take an assistant turn straight after the persona.
ASSISTANT_FIRST = {"chatml", "llama3", "llama3.1"}


def turn(id_: int, parent: int | None, role: str, text: str, author: int = 0,
         name: str = "") -> StoredTurn:
    return StoredTurn(id=id_, conversation_id=1, parent_id=parent, role=role, text=text,
                      author_id=author, author_name=name, ask_id=None, guild_id=1,
                      channel_id=2, private=False, created_at="2026-01-01T00:00:00.000+00:00")


@pytest.mark.parametrize("persona", [PERSONA, None])
@pytest.mark.parametrize("kind", sorted(BUILTIN_TEMPLATES))
def test_a_greeting_renders_as_the_assistants_first_turn(kind: str, persona: str | None) -> None:
    chat = ChatTemplate.builtin(kind, bos_token="<s>", eos_token="</s>")
    rendered = chat.render_spans(persona, REPLY, [("user", ""), ("assistant", GREETING)])
    pieces = [rendered.text[s:e] for s, e in rendered.plain_spans]
    text = rendered.text
    assert GREETING in pieces and REPLY in "".join(pieces)  # people's text, never markers
    assert text.index(GREETING) < text.index(REPLY)
    if persona is not None:
        assert text.index(PERSONA) < text.index(GREETING) or kind == "mistral-v3"
    before = text[:text.index(GREETING)]
    if kind in ASSISTANT_FIRST:
        assert OPENING_USER_TEXT not in before and "user" not in before
    else:
        assert OPENING_USER_TEXT in pieces[:2] or f"\n\n{OPENING_USER_TEXT}" in pieces[0]
        assert before.count("[INST]") == 1


def test_the_embedded_smollm2_template_reads_the_greeting_as_its_own_turn(
    smol_model_dir: Path
) -> None:
    bundle = load_model_bundle(smol_model_dir)
    ids = bundle.encode_chat(PERSONA, REPLY, [("user", ""), ("assistant", GREETING)])
    special = [i for i in ids if i in bundle.tokenizer.special_ids]
    # <|im_start|> 1, <|im_end|> 2: system, the greeting, the reply, the reply's opener.
    assert special == [1, 2, 1, 2, 1, 2, 1]
    text = bundle.tokenizer.decode(ids)
    assert f"assistant\n{GREETING}" in text and f"user\n{REPLY}" in text
    assert "user\n\n" not in text  # no empty user turn in front of it


def test_history_keeps_the_opening_unnamed_and_first() -> None:
    chain = [turn(1, None, "user", ""), turn(2, 1, "assistant", GREETING),
             turn(3, 2, "user", "Hi!", author=7, name="Ada"), turn(4, 3, "assistant", "Hello.")]
    history = history_of(chain, names=True)
    assert [(t.role, t.text) for t in history] == [
        ("user", ""), ("assistant", GREETING), ("user", "Ada: Hi!"), ("assistant", "Hello.")]
