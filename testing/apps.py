"""The App for tests, built one way: through the composition root, `bot.app.open_app`.

`story_settings` are the settings a story starts from (a SQLite file in the test's
folder, the CPU, quick edits); `story_engine` is the engine it runs on, real
weights or a scripted model over the directory's tokenizer (`testing.scripted`);
`core_app` is both handed to `open_app`, for tests of the core without Discord.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import App, engine_options, load_engine, open_app
from bot.config import Settings, load_settings
from bot.engine import Engine
from testing.backends import ScriptedGenerator
from testing.scripted import Script, load_bundle, scripted_engine


def story_settings(model_dir: Path, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own database, the CPU, one replica of one thread, quick edits."""
    values: dict[str, Any] = {
        "database_path": tmp_path / "bot.sqlite3",
        "model_dir": model_dir,
        "device": "cpu",
        "edit_interval_s": 0.2,
        "batch_wait_ms": 5,
        "cpu_threads": 1,
        "inter_threads": 1,  # one replica: queue positions and batching as the stories expect
        "settings_write_limit": 0,  # stories change settings quickly; tests of the limit set it
    }
    values.update(overrides)
    return load_settings(None, **values)


@contextlib.asynccontextmanager
async def story_engine(
    settings: Settings, model_dir: Path, script: Script | None = None, delay: float = 0.005,
    *, weights: bool = False,
) -> AsyncIterator[Engine]:
    """The engine over `model_dir`, closed on the way out.

    With no `script` it is the real model. With one, the model says `script`: without
    loading any weights unless `weights=True` (for what reads the real model's
    probabilities while the replies stay scripted).
    """
    if script is not None and not weights:
        # Reading the tokenizer and template is CPU work: off the event loop, as the bot's
        # own engine load is.
        options = engine_options(settings)
        engine = scripted_engine(model_dir, script, delay=delay, options=options,
                                 bundle=await load_bundle(model_dir, options))
    else:
        engine = await load_engine(settings, model_dir)
        if script is not None:
            engine.set_backend(ScriptedGenerator(engine.bundle.tokenizer, script, delay))
    try:
        yield engine
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def core_app(
    model_dir: Path, tmp_path: Path, script: Script | None = None, delay: float = 0.005,
    *, weights: bool = False, engine: Engine | None = None, **overrides: Any,
) -> AsyncIterator[App]:
    """The App over `model_dir` (or a given `engine`) and a SQLite file, no Discord."""
    settings = story_settings(model_dir, tmp_path, **overrides)
    if engine is not None:
        async with open_app(settings, engine=engine) as app:
            yield app
        return
    async with (
        story_engine(settings, model_dir, script, delay, weights=weights) as own,
        open_app(settings, engine=own) as app,
    ):
        yield app
