"""Shared fixtures: a tiny model, the embedded model, engines and a settings store.

Each test reads as a short story: ask for `tiny_engine` (milliseconds per
token, random weights, a real tokenizer) when behaviour does not depend on
what the model says, `smol_scripted` when it needs the embedded model's
tokenizer and template but scripts what it says (no weights loaded), and
`smol_engine` (the embedded SmolLM2, converted once and kept across runs) when
the real model's words matter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import discord.http
import discord.webhook.async_
import pytest

from bot.app import App
from bot.engine import Engine, EngineOptions
from bot.store.store import SettingsStore
from testing.apps import core_app
from testing.model_factory import embedded_model_dir, make_tiny_model
from testing.scripted import Script, load_bundle, scripted_engine
from testing.stories import QuickAsyncio


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def smol_model_dir() -> Path:
    """The embedded model, converted to int8 by our converter once and kept across runs.

    Shared by every test and worker: read it, never write into it."""
    return embedded_model_dir()


@pytest.fixture
async def tiny_engine(tiny_model_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.load(
        tiny_model_dir, EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=5)
    )
    yield engine
    await engine.close()


@pytest.fixture
async def smol_engine(smol_model_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.load(smol_model_dir, EngineOptions(device="cpu", batch_wait_ms=5))
    yield engine
    await engine.close()


@pytest.fixture
async def smol_scripted(smol_model_dir: Path) -> AsyncIterator[Callable[..., Engine]]:
    """Engines over the embedded model's tokenizer and chat template whose model says a
    script (`testing.scripted`): no weights loaded. Call it with the script (a text, or
    a function of the prompt's tokens) and optionally `delay` per token; closed after."""
    engines: list[Engine] = []
    # The tokenizer and template are read once, in a worker thread (off the event loop).
    bundle = await load_bundle(smol_model_dir, EngineOptions(device="cpu", cpu_threads=1))

    def make(script: Script, delay: float = 0.0) -> Engine:
        engines.append(scripted_engine(smol_model_dir, script, delay=delay, bundle=bundle))
        return engines[-1]

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SettingsStore]:
    s = await SettingsStore.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


@pytest.fixture
async def app(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[App]:
    """The core App over the tiny model's tokenizer and a real SQLite file, no Discord: for
    tests of turn preparation (the model writes a fixed script, so what is measured is the
    core)."""
    async with core_app(tiny_model_dir, tmp_path, "word " * 20, 0.0) as app:
        yield app


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py's retries after a 5xx or a 429 wait at most 50 ms (`QuickAsyncio`)."""
    quick = QuickAsyncio()
    monkeypatch.setattr(discord.webhook.async_, "asyncio", quick)
    monkeypatch.setattr(discord.http, "asyncio", quick)
