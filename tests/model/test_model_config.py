"""Configuring several models: BOT_MODEL_DIRS, BOT_MODEL_DIR as one, names, the default.

Parsing errors name the variable, the entry and the field, never a value (a
mistyped token pasted into the wrong line must not reach a log). The catalog
reads real model folders: the embedded SmolLM2 and tiny ones built here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.app import catalog_from_settings
from bot.config import ModelEntry, load_settings, model_slug
from bot.errors import ConfigError
from bot.hosting.catalog import (
    ModelCatalog,
    ModelSpec,
    UnknownModel,
    build_catalog,
    weight_bytes_of,
)
from testing.model_factory import make_tiny_model

TOKEN = "MTIz.secret-token-value.xyz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("BOT_") or var == "DISCORD_TOKEN":
            monkeypatch.delenv(var)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("catalog")
    return make_tiny_model(root, seed=0), make_tiny_model(root, template="llama3", seed=1)


def test_model_dirs_take_folders_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_MODEL_DIRS", json.dumps([
        "/models/llama-3.1-8b",
        {"dir": "/models/qwen-coder", "name": "Coder", "compute_type": "int8_float16",
         "context_length": 16384, "device": "cuda", "device_index": [1], "weight_mb": 7800},
        "embedded",
    ]))
    monkeypatch.setenv("BOT_DEFAULT_MODEL", " CODER ")
    monkeypatch.setenv("BOT_MODEL_MEMORY_BUDGET_MB", "60000")
    settings = load_settings(None)
    first, coder, embedded = settings.model_entries()
    assert first == ModelEntry(dir=Path("/models/llama-3.1-8b")) and not first.embedded
    assert (coder.name, coder.compute_type, coder.context_length) == (
        "coder", "int8_float16", 16384)
    assert (coder.device, coder.device_index, coder.weight_mb) == ("cuda", (1,), 7800)
    assert embedded.embedded and embedded.dir is None
    assert settings.default_model == "coder" and settings.model_memory_budget_mb == 60000


def test_one_model_dir_or_none_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).model_entries() == [ModelEntry(dir=None)]  # the embedded one
    monkeypatch.setenv("BOT_MODEL_DIR", "/models/one")
    assert load_settings(None).model_entries() == [ModelEntry(dir=Path("/models/one"))]
    monkeypatch.setenv("BOT_MODEL_DIRS", "")  # empty means unset
    assert load_settings(None).model_entries() == [ModelEntry(dir=Path("/models/one"))]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["/a", ', "must be a JSON list"),
        ('{"dir": "/a"}', "must be a JSON list of model folders or objects"),
        ("[]", "lists no model"),
        ('["/a", 7]', "entry 2 must be a folder"),
        ('["/a", {"name": "b"}]', 'entry 2 has no "dir"'),
        ('[{"dir": "/a", "compute_type": "int4"}]', "entry 1: compute_type: Value error, must be"),
        ('[{"dir": "/a", "dirr": "/b"}]', "entry 1: dirr: Extra inputs are not permitted"),
        ('[{"dir": "/a", "name": "no spaces"}]', "entry 1: name: Value error, must be 1-64"),
        ('[{"dir": "/a", "context_length": 3}]', "entry 1: context_length"),
        ('[{"dir": "/a", "device_index": []}]', "entry 1: device_index"),
        ('[{"dir": "/a", "device": "tpu"}]', "entry 1: device"),
    ],
)
def test_a_bad_model_list_says_which_entry_and_field(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("BOT_MODEL_DIRS", value.replace("/a", f"/{TOKEN}"))
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    assert message.startswith("Invalid configuration: BOT_MODEL_DIRS: ")
    assert expected in message
    assert TOKEN not in message  # values are never echoed


def test_model_dir_and_model_dirs_together_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_MODEL_DIR", "/models/one")
    monkeypatch.setenv("BOT_MODEL_DIRS", '["/models/two"]')
    with pytest.raises(ConfigError, match=r"BOT_MODEL_DIRS: .*BOT_MODEL_DIR .* not both"):
        load_settings(None)
    monkeypatch.delenv("BOT_MODEL_DIR")
    monkeypatch.setenv("BOT_DEFAULT_MODEL", "bad name!")
    with pytest.raises(ConfigError, match=r"BOT_DEFAULT_MODEL: .*not a model name"):
        load_settings(None)
    monkeypatch.setenv("BOT_DEFAULT_MODEL", "")
    monkeypatch.setenv("BOT_MODEL_MEMORY_BUDGET_MB", "-1")
    with pytest.raises(ConfigError, match="BOT_MODEL_MEMORY_BUDGET_MB"):
        load_settings(None)


def test_names_come_from_bot_model_json_or_the_folder() -> None:
    assert model_slug("SmolLM2 135M Instruct") == "smollm2-135m-instruct"
    assert model_slug("Llama-3.1-8B-Instruct_int8") == "llama-3.1-8b-instruct_int8"
    assert model_slug("..über//model..") == "ber-model.."
    assert model_slug("日本") == "model"


def catalog(entries: list[ModelEntry], smol: Path, **kwargs: object) -> ModelCatalog:
    return build_catalog(entries, prepare_embedded=lambda: smol,
                         resolve_device=lambda d: "cpu" if d == "auto" else d,
                         **kwargs)  # type: ignore[arg-type]


def test_the_catalog_reads_real_folders(
    tiny_dirs: tuple[Path, Path], smol_model_dir: Path
) -> None:
    converted, hf_style = tiny_dirs
    cat = catalog(
        [ModelEntry(dir=None), ModelEntry(dir=converted),
         ModelEntry(dir=hf_style, name="coder", compute_type="float32", context_length=128,
                    device="cuda", device_index=(0, 1))],
        smol_model_dir, compute_type="int8", context_length=None,
    )
    smol, tiny, coder = cat.specs
    assert smol.name == "smollm2-135m-instruct" and smol.embedded  # bot_model.json's name
    assert smol.weight_bytes == (smol_model_dir / "model.bin").stat().st_size > 100 * 2**20
    assert smol.files_context_length == 8192 and smol.window == 8192
    assert (smol.device, smol.compute_type, smol.devices) == ("cpu", "int8", ("cpu",))
    assert tiny.name == json.loads((converted / "bot_model.json").read_text())["name"]
    assert coder.name == "coder" and coder.window == 128 and coder.files_context_length == 256
    assert coder.devices == ("cuda:0", "cuda:1") and coder.compute_type == "float32"
    assert cat.default == smol.name and cat.names == (smol.name, tiny.name, "coder")
    assert cat.spec("CODER") is coder and "coder" in cat and "nope" not in cat
    with pytest.raises(UnknownModel, match="`smollm2-135m-instruct`"):
        cat.spec("nope")
    # The folder's own name when there is no bot_model.json; weight_mb overrides the size.
    plain = catalog([ModelEntry(dir=hf_style, weight_mb=2.5)], smol_model_dir)
    assert plain.specs[0].name == hf_style.name.lower()
    assert plain.specs[0].weight_bytes == int(2.5 * 2**20)
    assert weight_bytes_of(hf_style) == (hf_style / "model.bin").stat().st_size


def test_a_missing_folder_is_listed_and_fails_only_when_loaded(
    tmp_path: Path, smol_model_dir: Path
) -> None:
    cat = catalog([ModelEntry(dir=None), ModelEntry(dir=tmp_path / "Not-There")], smol_model_dir)
    gone = cat.spec("not-there")
    assert gone == ModelSpec(name="not-there", dir=tmp_path / "Not-There", weight_bytes=0)


def test_duplicate_names_and_an_unknown_default_are_refused(
    tiny_dirs: tuple[Path, Path], smol_model_dir: Path
) -> None:
    converted, hf_style = tiny_dirs
    with pytest.raises(ConfigError, match=r"two models are named `x`.*give one of them a"):
        catalog([ModelEntry(dir=converted, name="x"), ModelEntry(dir=hf_style, name="x")],
                smol_model_dir)
    with pytest.raises(ConfigError, match="BOT_DEFAULT_MODEL: no model is called `y`"):
        catalog([ModelEntry(dir=converted, name="x")], smol_model_dir, default="y")
    assert catalog([ModelEntry(dir=converted, name="x"), ModelEntry(dir=hf_style, name="z")],
                   smol_model_dir, default="z").default == "z"


def test_catalog_from_settings_with_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch, smol_model_dir: Path, tiny_dirs: tuple[Path, Path]
) -> None:
    monkeypatch.setenv("BOT_MODELS_ROOT", str(smol_model_dir.parent))  # converted already
    monkeypatch.setenv("BOT_DEVICE", "cpu")
    cat = catalog_from_settings(load_settings(None))
    assert cat.names == ("smollm2-135m-instruct",) and cat.specs[0].dir == smol_model_dir
    monkeypatch.setenv("BOT_MODEL_DIRS", json.dumps(["embedded", str(tiny_dirs[1])]))
    monkeypatch.setenv("BOT_DEFAULT_MODEL", tiny_dirs[1].name)
    monkeypatch.setenv("BOT_CONTEXT_LENGTH", "512")
    cat = catalog_from_settings(load_settings(None))
    assert cat.default == tiny_dirs[1].name.lower() and len(cat) == 2
    assert all(s.context_length == 512 and s.device == "cpu" for s in cat)
