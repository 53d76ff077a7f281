"""A template that opens `<think>` itself (DeepSeek-R1 distills) works turn after turn.

The R1-distill template ends the generation prompt inside `<think>` and cuts earlier
replies at `</think>`. Reasoning handling is then on for that model whatever the
scope's setting, and earlier replies reach the template without their thoughts, so
second and later turns render instead of failing on a rewritten message.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from bot.chat.turns import TurnAsk
from bot.config import load_settings
from bot.engine import Engine, EngineOptions, FinishReason, GenerationResult
from bot.model.bundle import load_model_bundle
from bot.model.chat import ChatTemplate, ChatTemplateError
from bot.store.ask_log import AskLog
from bot.store.scopes import Location
from bot.store.store import SettingsStore
from testing.backends import ScriptedGenerator
from testing.model_factory import make_tiny_model

# DeepSeek-R1-Distill-Llama-8B's template (tool calls left out), as its
# tokenizer_config.json ships it.
R1_DISTILL_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, "
    "system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}"
    "{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}"
    "{% endif %}"
)
THOUGHTS = "The user greets me. I should greet back."
REPLY = f"{THOUGHTS}\n</think>\n\nHello! How can I help?"
LOCATION = Location(guild_id=10, channel_id=20, user_id=30)


@pytest.fixture
def r1_model_dir(tmp_path: Path) -> Path:
    model_dir = make_tiny_model(tmp_path / "m", template="llama3", layout="hf")
    (model_dir / "chat_template.jinja").write_text(R1_DISTILL_TEMPLATE, encoding="utf-8")
    return model_dir


def test_opening_think_is_detected() -> None:
    assert ChatTemplate(R1_DISTILL_TEMPLATE).opens_reasoning
    assert not ChatTemplate.builtin("chatml").opens_reasoning
    # Mentioning the tags is not opening them (Qwen3 with thinking off closes at once).
    closes = "{% for m in messages %}{{ m['content'] }}{% endfor %}<think>\n\n</think>\n\n"
    assert not ChatTemplate(closes).opens_reasoning


def test_second_turn_renders_without_the_thoughts(r1_model_dir: Path) -> None:
    bundle = load_model_bundle(r1_model_dir)
    history = [("user", "Hi"), ("assistant", REPLY)]
    # The template rewrites a reply that keeps its thoughts: unusable as it is...
    with pytest.raises(ChatTemplateError, match="changes the text of messages"):
        bundle.chat.render_spans(None, "And you?", history)
    # ...so the bundle hands it the answer alone, whatever was shown.
    ids = bundle.encode_chat(None, "And you?", history)
    text = bundle.tokenizer.decode(ids)
    assert "Hello! How can I help?" in text and THOUGHTS not in text
    assert bundle.chat.render(None, "And you?").rstrip().endswith("<think>")


@pytest.fixture
async def r1_app(r1_model_dir: Path, tmp_path: Path) -> AsyncIterator[App]:
    settings = load_settings(None, database_path=tmp_path / "bot.sqlite3",
                             model_dir=r1_model_dir, device="cpu")
    store = await SettingsStore.open(settings.database_path)
    engine = await Engine.load(
        r1_model_dir, EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=5)
    )
    engine.set_backend(ScriptedGenerator(engine.bundle.tokenizer, "word " * 20, 0.0))
    try:
        yield App(settings=settings, engine=engine, store=store, ask_log=AskLog(store.db))
    finally:
        await engine.close()
        await store.close()
        shutil.rmtree(tmp_path / "m", ignore_errors=True)


def answered(text: str) -> GenerationResult:
    """A finished reply saying `text`, as the engine reports it."""
    return GenerationResult(text=text, prompt_tokens=1, new_tokens=1, ttft_s=None,
                            decode_tok_s=None, total_s=0.0, finish_reason=FinishReason.END,
                            max_new_tokens=1)


async def test_turns_with_reasoning_display_off(r1_app: App) -> None:
    """The scope never turned reasoning on (the default): the model's template does."""
    base = TurnAsk(location=LOCATION, prompt="Hi", author_id=30, author_name="Ada",
                   place="console:20", overrides={"max_new_tokens": 16})
    first = await r1_app.chat.prepare(base)
    assert first.reasoning
    # An answer stored with its thoughts (as a reply recorded unsplit would be).
    await r1_app.chat.record(first, answered(REPLY))
    for prompt in ("And you?", "Third turn"):
        turn = await r1_app.chat.prepare(TurnAsk(
            location=LOCATION, prompt=prompt, author_id=30, author_name="Ada",
            place="console:20", overrides={"max_new_tokens": 16}))
        assert turn.reasoning and turn.request.history
        tokenizer = r1_app.engine.bundle.tokenizer
        ids = [tokenizer.token_to_id(t) for t in turn.prepared.tokens]
        text = tokenizer.decode([i for i in ids if i is not None])
        assert THOUGHTS not in text and "Hello! How can I help?" in text
        await r1_app.chat.record(turn, answered("Fine.\n</think>\nFine, thanks."))
