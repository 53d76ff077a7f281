"""Model directories of both kinds load into a bundle with the right prompt and limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ctranslate2
import pytest

from bot.model.bundle import DEFAULT_CONTEXT_LENGTH, ModelFilesError, load_model_bundle
from bot.model.chat import ChatTemplate, ChatTemplateError
from testing.model_factory import TEMPLATE_TOKENS, make_tiny_model

BACKENDS = ["tokenizers", "sentencepiece"]
TEMPLATES = ["chatml", "llama2", "llama3", "mistral"]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

EXPECTED_PROMPTS = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] Be brief.\n\nHi! [/INST]",  # no system role: folded
}


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_bundle_renders_and_encodes(tmp_path: Path, template: str, backend: str) -> None:
    model_dir = make_tiny_model(tmp_path, template=template, tokenizer=backend)  # type: ignore[arg-type]
    bundle = load_model_bundle(model_dir)
    tok = bundle.tokenizer
    specials = TEMPLATE_TOKENS[template]

    prompt = bundle.chat.render("Be brief.", "Hi!")
    assert prompt == EXPECTED_PROMPTS[template]
    ids = bundle.encode_chat("Be brief.", "Hi!")
    assert ids[0] == bundle.bos_token_id == tok.token_to_id(specials.bos)
    assert ids.count(ids[0]) == (3 if template == "chatml" else 1)  # BOS is never doubled
    for name in specials.extra:
        if name in prompt:
            assert tok.token_to_id(name) in ids
    if template == "chatml":
        assert ids.count(tok.token_to_id("<|im_end|>") or -1) == 2

    expected_ends = [specials.eos] + (["<|eot_id|>"] if template == "llama3" else [])
    assert bundle.end_tokens == tuple(expected_ends)
    assert bundle.end_token_ids == tuple(tok.token_to_id(t) for t in expected_ends)
    assert bundle.context_length == 256
    assert bundle.kind == (
        "converted" if (template, backend) == ("chatml", "tokenizers") else "ctranslate2"
    )


GUESSED = {  # template family of the tiny model → built-in template chosen without one
    "chatml": ("chatml", EXPECTED_PROMPTS["chatml"]),
    "llama3": ("llama3", EXPECTED_PROMPTS["llama3"]),
    "llama2": ("llama2", EXPECTED_PROMPTS["llama2"]),
    # The tiny "mistral" vocabulary has [INST] as a control token, as Mistral v0.3's does.
    "mistral": ("mistral-v3", "<s>[INST] Be brief.\n\nHi![/INST]"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_template_guessed_when_missing(tmp_path: Path, template: str, backend: str) -> None:
    model_dir = make_tiny_model(
        tmp_path,
        template=template,  # type: ignore[arg-type]
        tokenizer=backend,  # type: ignore[arg-type]
        layout="hf",
        chat_template_in="none",
    )
    if template == "llama2":  # Llama 2 and Mistral v0.1 look alike without the config
        with pytest.raises(ModelFilesError, match=r"chat_template\.jinja.*hf_config\.json"):
            load_model_bundle(model_dir)
        (model_dir / "hf_config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    bundle = load_model_bundle(model_dir)
    kind, expected = GUESSED[template]
    assert bundle.chat.name == kind
    assert bundle.chat.render("Be brief.", "Hi!") == expected


# Shapes of the real checkpoints' config.json (kept as hf_config.json) and the
# model_max_length of their tokenizer_config.json; int(1e30) is transformers' "no limit".
NO_LIMIT = 1000000000000000019884624838656
REAL_SHAPES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "llama-2-7b-chat": ("llama2", "sentencepiece", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 1,
        "eos_token_id": 2, "max_position_embeddings": 4096, "num_hidden_layers": 32,
        "rope_scaling": None,
    }, NO_LIMIT),
    "llama-3-8b-instruct": ("llama3", "tokenizers", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
        "eos_token_id": 128009, "max_position_embeddings": 8192, "num_hidden_layers": 32,
        "rope_scaling": None, "rope_theta": 500000.0,
    }, NO_LIMIT),
    "llama-3.1-8b-instruct": ("llama3", "tokenizers", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "max_position_embeddings": 131072,
        "num_hidden_layers": 32, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }, 131072),
    "mistral-7b-instruct-v0.3": ("mistral", "sentencepiece", {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1,
        "eos_token_id": 2, "max_position_embeddings": 32768, "num_hidden_layers": 32,
        "rope_theta": 1000000.0, "sliding_window": None,
    }, NO_LIMIT),
}
EXPECTED_SHAPES = {  # context window, built-in template when none ships
    "llama-2-7b-chat": (4096, "llama2"),
    "llama-3-8b-instruct": (8192, "llama3"),
    "llama-3.1-8b-instruct": (131072, "llama3.1"),
    "mistral-7b-instruct-v0.3": (32768, "mistral-v3"),
}


@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_real_checkpoint_shapes(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    template, backend, hf_config, max_length = REAL_SHAPES[name]
    model_dir = make_tiny_model(
        tmp_path, template=template, tokenizer=backend, layout="hf",  # type: ignore[arg-type]
        chat_template_in="none",
    )
    _edit_json(model_dir / "tokenizer_config.json", model_max_length=max_length)
    ct2_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert "max_position_embeddings" not in ct2_config  # as ct2-transformers-converter writes
    if template == "llama2":  # could as well be Mistral v0.1: refused until the config says
        with pytest.raises(ModelFilesError, match=r"hf_config\.json"):
            load_model_bundle(model_dir)
    elif max_length == NO_LIMIT:  # the old fallback: 4,096 whatever the model
        assert load_model_bundle(model_dir).context_length == DEFAULT_CONTEXT_LENGTH
    (model_dir / "hf_config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    if hf_config.get("rope_scaling"):
        # These weights lack the scaling the config asks for (CTranslate2's converter
        # drops it): refused. The rest reads the files of a correctly converted one.
        with pytest.raises(ModelFilesError, match="python -m bot convert"):
            load_model_bundle(model_dir)
        monkeypatch.setattr("bot.model.bundle._require_rope_scaling", lambda *_: None)
    bundle = load_model_bundle(model_dir)
    window, kind = EXPECTED_SHAPES[name]
    assert (bundle.context_length, bundle.chat.name, bundle.num_layers) == (window, kind, 32)
    assert load_model_bundle(model_dir, context_length=2048).context_length == 2048
    if kind == "llama3.1":
        prompt = bundle.chat.render(None, "Hi!")
        assert "Cutting Knowledge Date: December 2023\nToday Date: " in prompt
        assert bundle.end_tokens == ("<|end_of_text|>", "<|eot_id|>")


def test_mistral_v01_without_template_gets_no_sys_block(tmp_path: Path) -> None:
    """Mistral v0.1/v0.2: [INST] is plain text and there is no system role to mark."""
    model_dir = make_tiny_model(
        tmp_path, template="llama2", tokenizer="sentencepiece", layout="hf",
        chat_template_in="none",
    )
    (model_dir / "hf_config.json").write_text(
        json.dumps({"model_type": "mistral", "max_position_embeddings": 32768}), encoding="utf-8"
    )
    bundle = load_model_bundle(model_dir)
    assert bundle.chat.name == "mistral"
    assert bundle.chat.render("Be brief.", "Hi!") == "<s>[INST] Be brief.\n\nHi! [/INST]"
    assert bundle.context_length == 32768


def test_chat_template_jinja_file_is_read(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, template="llama3", layout="hf", chat_template_in="jinja")
    bundle = load_model_bundle(model_dir)
    assert bundle.chat.render(None, "Hi!").startswith("<|begin_of_text|><|start_header_id|>user")
    assert bundle.end_tokens == ("<|end_of_text|>", "<|eot_id|>")


def test_generation_config_eos_list(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, template="llama3", tokenizer="sentencepiece")
    bundle = load_model_bundle(model_dir)
    eot = bundle.tokenizer.token_to_id("<|eot_id|>")
    eos = bundle.tokenizer.token_to_id("<|end_of_text|>")
    _edit_json(model_dir / "generation_config.json", eos_token_id=[eot, eos])
    assert load_model_bundle(model_dir).end_token_ids == (eot, eos)


def test_context_length_sources(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, template="llama2", tokenizer="sentencepiece")
    _edit_json(model_dir / "tokenizer_config.json", model_max_length=int(1e30))
    assert load_model_bundle(model_dir).context_length == DEFAULT_CONTEXT_LENGTH
    # CTranslate2's own config.json is not where the window lives.
    _edit_json(model_dir / "config.json", max_position_embeddings=1024)
    assert load_model_bundle(model_dir).context_length == DEFAULT_CONTEXT_LENGTH
    (model_dir / "hf_config.json").write_text('{"max_position_embeddings": 2048}')
    assert load_model_bundle(model_dir).context_length == 2048
    assert load_model_bundle(model_dir, context_length=512).context_length == 512
    # ct2 ignores files and keys it does not know: the model still loads.
    ctranslate2.Generator(str(model_dir), device="cpu")


def test_add_bos_token_adds_only_a_missing_bos(tmp_path: Path) -> None:
    bundle = load_model_bundle(make_tiny_model(tmp_path, template="llama2"))
    assert bundle.add_bos_token
    assert bundle.with_bos(bundle.tokenizer.encode("hello"))[0] == bundle.bos_token_id
    assert bundle.with_bos(bundle.tokenizer.encode_template("<s>hello")).count(
        bundle.bos_token_id
    ) == 1
    assert bundle.encode_chat(None, "hello").count(bundle.bos_token_id) == 1


def test_tiny_model_generates_until_end_token(tmp_path: Path) -> None:
    for template in TEMPLATES:
        bundle = load_model_bundle(make_tiny_model(tmp_path, template=template))  # type: ignore[arg-type]
        generator = ctranslate2.Generator(str(bundle.path), device="cpu")
        ids = bundle.encode_chat(None, "Hello")
        result = generator.generate_batch(
            [[bundle.tokenizer.id_to_token(i) for i in ids]],
            max_length=8,
            end_token=list(bundle.end_token_ids),
            include_prompt_in_result=False,
        )
        assert 0 < len(result[0].sequences_ids[0]) <= 8


@pytest.mark.parametrize(
    ("remove", "corrupt", "match"),
    [
        ("model.bin", None, r"model\.bin"),
        ("config.json", None, r"config\.json"),
        ("tokenizer.json", None, r"tokenizer\.json or tokenizer\.model"),
        (None, "tokenizer.json", r"tokenizer\.json"),
        (None, "config.json", r"config\.json"),
        (None, "tokenizer_config.json", r"tokenizer_config\.json"),
        (None, "generation_config.json", r"generation_config\.json"),
    ],
)
def test_broken_directories_name_the_file(
    tmp_path: Path, remove: str | None, corrupt: str | None, match: str
) -> None:
    model_dir = make_tiny_model(tmp_path, template="llama3")
    if remove:
        (model_dir / remove).unlink()
    if corrupt:
        (model_dir / corrupt).write_text("{broken", encoding="utf-8")
    with pytest.raises(ModelFilesError, match=match):
        load_model_bundle(model_dir)


def test_not_a_directory_and_bad_format_version(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match="not found"):
        load_model_bundle(tmp_path / "nowhere")
    model_dir = make_tiny_model(tmp_path)  # our converter's layout
    _edit_json(model_dir / "bot_model.json", format_version=99)
    with pytest.raises(ModelFilesError, match=r"bot_model\.json.*Convert the model again"):
        load_model_bundle(model_dir)


def test_broken_template_is_reported(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path, template="llama2", layout="hf")
    (model_dir / "chat_template.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ModelFilesError, match="does not compile"):
        load_model_bundle(model_dir)


def test_converted_dir_without_jinja_falls_back(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path)
    (model_dir / "chat_template.jinja").unlink()
    bundle = load_model_bundle(model_dir)
    assert bundle.chat.name == "chatml"
    assert bundle.end_tokens == ("<|im_end|>",)


def test_copy_of_tiny_model_is_independent(tmp_path: Path) -> None:
    first = make_tiny_model(tmp_path / "a")
    shutil.rmtree(first)
    assert load_model_bundle(make_tiny_model(tmp_path / "b")).name


# --------------------------------------------------------------------------- ChatTemplate


def test_default_system_prompt_applies_when_none_given() -> None:
    chat = ChatTemplate(SMOLLM2_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")
    for system in (None, ""):
        prompt = chat.render(system, "Hi")
        assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" not in chat.render("Answer in French.", "Hi")


def test_system_prompt_is_folded_when_rejected() -> None:
    chat = ChatTemplate.builtin("mistral", bos_token="<s>", eos_token="</s>")
    assert chat.render("Be terse.", "Why?") == "<s>[INST] Be terse.\n\nWhy? [/INST]"
    assert chat.render(None, "Why?") == "<s>[INST] Why? [/INST]"


def test_template_rejecting_a_user_message_is_an_error() -> None:
    chat = ChatTemplate("{{ raise_exception('nope') }}", name="strict")
    with pytest.raises(ChatTemplateError, match="strict chat template rejects"):
        chat.render(None, "Hi")


def test_trim_blocks_and_helpers_like_transformers() -> None:
    source = (
        "{% for message in messages %}\n"
        "    {% if message.role == 'user' %}\n"
        "{{ message.content | tojson }}\n"
        "    {% endif %}\n"
        "{% endfor %}"
    )
    assert ChatTemplate(source).render(None, "héllo") == '"héllo"\n'


def test_sandbox_blocks_unsafe_templates() -> None:
    chat = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        chat.render(None, "x")


def test_unknown_builtin() -> None:
    with pytest.raises(ChatTemplateError, match=r"known: chatml, llama2, llama3, llama3\.1, mis"):
        ChatTemplate.builtin("vicuna")
