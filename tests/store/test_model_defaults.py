"""The model's `generation_config.json` is the settings layer under the server's.

A knob no scope sets takes the model's recommended value and says "(model)" where
settings are shown; any scope's own value still wins; asks are made with it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from bot.chat.turns import TurnAsk
from bot.config import load_settings
from bot.engine import Engine, EngineOptions
from bot.knobs import Knobs, knobs_from_generation_config
from bot.store.ask_log import AskLog
from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore
from testing.model_factory import make_tiny_model
from testing.processes import console_env, knob_table, run_console, transcript

LOCATION = Location(guild_id=10, channel_id=20, user_id=30)
# Qwen2.5-7B-Instruct's generation_config.json.
QWEN = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "pad_token_id": 151643, "repetition_penalty": 1.05, "temperature": 0.7,
        "top_k": 20, "top_p": 0.8}
LLAMA31 = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
           "temperature": 0.6, "top_p": 0.9}


def test_generation_config_to_knobs() -> None:
    assert knobs_from_generation_config(LLAMA31) == {"temperature": 0.6, "top_p": 0.9}
    assert knobs_from_generation_config(QWEN) == {
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 0.05,
    }
    # Without sampling transformers ignores temperature and friends; the penalty stays.
    assert knobs_from_generation_config({**QWEN, "do_sample": False}) == {
        "repetition_penalty": 0.05
    }
    # Out of a knob's range: left out, not bent into it.
    assert knobs_from_generation_config({"do_sample": True, "top_k": 100, "top_p": 0.5}) == {
        "top_p": 0.5
    }
    assert knobs_from_generation_config({}) == {}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model_dir = make_tiny_model(tmp_path / "m")
    (model_dir / "generation_config.json").write_text(json.dumps(LLAMA31), encoding="utf-8")
    return model_dir


@pytest.fixture
async def app(model_dir: Path, tmp_path: Path) -> AsyncIterator[App]:
    settings = load_settings(None, database_path=tmp_path / "bot.sqlite3",
                             model_dir=model_dir, device="cpu")
    store = await SettingsStore.open(settings.database_path)
    engine = await Engine.load(model_dir, EngineOptions(device="cpu", cpu_threads=1))
    try:
        yield App(settings=settings, engine=engine, store=store, ask_log=AskLog(store.db))
    finally:
        await engine.close()
        await store.close()


async def test_model_layer_under_every_scope(app: App) -> None:
    eff = await app.resolve(LOCATION)
    assert (eff.knobs.temperature, eff.sources["temperature"]) == (0.6, "model")
    assert (eff.knobs.top_p, eff.sources["top_p"]) == (0.9, "model")
    assert (eff.knobs.top_k, eff.sources["top_k"]) == (Knobs().top_k, "default")
    request = (await app.chat.prepare(TurnAsk(LOCATION, "Hi", 30, "Ada"))).request
    assert (request.knobs.temperature, request.knobs.top_p) == (0.6, 0.9)

    await app.store.set_knobs(Scope.server(10), {"temperature": 1.0}, actor_id=1)
    eff = await app.resolve(LOCATION)
    assert (eff.knobs.temperature, eff.sources["temperature"]) == (1.0, "server")
    assert eff.sources["top_p"] == "model"
    request = (await app.chat.prepare(TurnAsk(LOCATION, "Hi", 30, "Ada",
                                              overrides={"top_p": 0.5}))).request
    assert (request.knobs.temperature, request.knobs.top_p) == (1.0, 0.5)


def test_console_shows_model_source(model_dir: Path, tmp_path: Path) -> None:
    env = console_env(model_dir, tmp_path / "db" / "bot.sqlite3")
    done = run_console(env, ["/knobs show", "/knobs set top_p=0.5", "/knobs show", "/quit"])
    assert done.returncode == 0, done.stderr
    turns = transcript(done.stdout)
    before, after = knob_table(turns[0][1]), knob_table(turns[2][1])
    assert before["temperature"] == ("0.6", "model") and before["top_p"] == ("0.9", "model")
    assert before["top_k"][1] == "default"
    assert after["top_p"] == ("0.5", "channel") and after["temperature"] == ("0.6", "model")
