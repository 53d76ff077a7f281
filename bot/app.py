"""Build the long-lived resources once, in one place, and hand them to front-ends.

Both the Discord client and the console receive an `App`; neither builds an
engine or opens a database itself, so tests can build an `App` around a tiny
model and a temporary database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.chat.scope_settings import ScopeSettings
from bot.chat.service import Chat
from bot.config import Settings
from bot.engine import Engine, EngineOptions
from bot.engine.device_check import DeviceCheckError, explain_device_error, gpu_self_check
from bot.errors import UserFacingError
from bot.hosting.catalog import MB, ModelCatalog, ModelSpec, build_catalog
from bot.hosting.host import ModelHost
from bot.hosting.registry import ModelRegistry
from bot.limits import SettingsWriteLimiter, SharedLimits
from bot.model.embedded import prepare_default_model
from bot.store.ask_log import AskLog
from bot.store.connect import open_database
from bot.store.db import Database
from bot.store.personas import PersonaStore
from bot.store.retention import PRUNE_EVERY_S, prune_expired
from bot.store.scopes import Effective, Location
from bot.store.store import SettingsStore
from bot.store.swipes import SwipeStore
from bot.store.turns import TurnStore

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    engine: Engine
    store: SettingsStore
    ask_log: AskLog
    metrics: Any = None  # bot.ops.metrics.Metrics when the Prometheus endpoint is enabled
    #: Members' limits on the shared database (several hosts on PostgreSQL); None keeps
    #: them in this process's memory (one host).
    shared_limits: SharedLimits | None = None
    #: Conversation turns on the store's database: the one TurnStore every front-end uses.
    turns: TurnStore = field(init=False)

    #: One per process, from `BOT_SETTINGS_WRITE_LIMIT`/`_WINDOW_S`: every front-end that
    #: lets members change settings takes a slot here before it writes.
    write_limiter: SettingsWriteLimiter = field(init=False)
    #: Versions of answers / Continue, and named personas, on the same database.
    swipes: SwipeStore = field(init=False)
    personas: PersonaStore = field(init=False)

    #: The models this host serves (`bot.hosting.host`). `open_app` passes
    #: them as `model_host`; an App built around one engine serves just that one.
    #: `engine` stays the default model's engine (kept current if it is reloaded);
    #: an ask uses `models.engine(name)` for the model in effect where it is made.
    models: ModelHost = field(init=False)
    model_host: InitVar[ModelHost | None] = None
    #: Conversations over the stores and models above: what every front-end calls.
    chat: Chat = field(init=False)
    #: Every settings change (persona, knobs, model, modes, saved personas), under the
    #: write limit: what every front-end calls to change settings.
    scope_settings: ScopeSettings = field(init=False)

    def __post_init__(self, model_host: ModelHost | None) -> None:
        self.turns = TurnStore(self.store.db)
        self.swipes = SwipeStore(self.store.db)
        self.personas = PersonaStore(self.store.db)
        self.write_limiter = SettingsWriteLimiter(
            self.settings.settings_write_limit, self.settings.settings_write_window_s,
            shared=self.shared_limits,
        )
        self.models = model_host or ModelHost.single(
            self.engine, queue_size=self.settings.queue_size, current=lambda: self.engine
        )
        self.models.on_loaded.append(self._loaded)
        self.chat = Chat(self.settings, self.store, self.turns, self.swipes, self.ask_log,
                         self.models)
        self.scope_settings = ScopeSettings(self.store, self.personas, self.write_limiter,
                                            self.models, self.settings.system_prompt)

    def _loaded(self, name: str, engine: Engine) -> None:
        if name == self.models.default:
            self.engine = engine

    async def resolve(self, loc: Location) -> Effective:
        """The settings in force at `loc`, over the defaults of the model in effect there."""
        return await self.chat.resolve(loc)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def catalog_from_settings(
    settings: Settings,
    *,
    prepare_embedded: Callable[[], Path] | None = None,
    resolve_device: Callable[[str], str] | None = None,
) -> ModelCatalog:
    """The catalog the settings describe (built here, once, so hosting never imports the engine).

    By default the embedded model is prepared in BOT_MODELS_ROOT at
    BOT_QUANTIZATION, and "auto" asks CTranslate2 whether it sees a GPU (only
    when some model is on "auto": that import is what costs).
    """
    def embedded() -> Path:
        return prepare_default_model(settings.models_root, settings.quantization,
                                     progress=log.info)

    @functools.cache
    def ask_ctranslate2(device: str) -> str:
        if device != "auto":
            return device
        from bot.engine.loading import resolve_device as resolve

        return resolve(device)

    return build_catalog(
        settings.model_entries(),
        default=settings.default_model,
        device=settings.device,
        device_index=settings.device_index,
        compute_type=settings.compute_type,
        context_length=settings.context_length,
        prepare_embedded=prepare_embedded or embedded,
        resolve_device=resolve_device or ask_ctranslate2,
    )


def model_dir_for(settings: Settings, progress: Callable[[str], None] = _to_stderr) -> Path:
    """The configured model directory, preparing the embedded model on first start.

    With BOT_MODEL_DIRS, the default model's (what `ask` and `prompt` on the command
    line use).
    """
    if settings.model_dirs:
        catalog = catalog_from_settings(settings, prepare_embedded=lambda: prepare_default_model(
            settings.models_root, settings.quantization, progress=progress))
        return catalog.spec(catalog.default).dir
    if settings.model_dir is not None:
        return settings.model_dir
    return prepare_default_model(settings.models_root, settings.quantization, progress=progress)


def engine_options(settings: Settings) -> EngineOptions:
    """The engine's options from the settings: the one place one is mapped to the other."""
    return EngineOptions(
        device=settings.device,
        device_index=tuple(settings.device_index),
        compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads,
        inter_threads=settings.inter_threads,
        decode_nice=settings.decode_nice,
        max_batch_size=settings.max_batch_size,
        queue_size=settings.queue_size,
        batch_wait_ms=settings.batch_wait_ms,
        timeslice_s=settings.timeslice_s,
        seed=settings.seed,
        context_length=settings.context_length,
        persona_cache_mb=settings.persona_cache_mb,
    )


async def load_engine(settings: Settings, model_dir: Path) -> Engine:
    return await Engine.load(model_dir, engine_options(settings))


def engine_options_for(settings: Settings, spec: ModelSpec) -> EngineOptions:
    """One model's options: the settings', with its own device, compute type and window."""
    return replace(
        engine_options(settings), device=spec.device, device_index=tuple(spec.device_index),
        compute_type=spec.compute_type, context_length=spec.context_length,
    )


@contextlib.contextmanager
def device_errors_explained(compute_type: str | None) -> Iterator[None]:
    """Turn a device failure while loading weights into a `DeviceCheckError` that says why.

    Our own errors (a broken model directory) already say what is wrong and pass
    through; so does anything `explain_device_error` does not recognise.
    """
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        reason = None if isinstance(exc, UserFacingError) else explain_device_error(
            exc, compute_type or "the default"
        )
        if reason is None:
            raise
        raise DeviceCheckError(reason) from exc


async def load_model(settings: Settings, spec: ModelSpec) -> Engine:
    """Load one model's engine; on CUDA it must generate before it serves.

    The GPU check runs per model, so a model whose device or compute type cannot
    run fails alone (the registry reports it and the others keep serving).
    """
    with device_errors_explained(spec.compute_type):
        engine = await Engine.load(spec.dir, engine_options_for(settings, spec))
    log.info(
        "model %s loaded on %s (%s) in %.1fs",
        spec.name, engine.info.device, engine.info.compute_type, engine.info.load_s,
    )
    try:
        if engine.info.device == "cuda":
            await gpu_self_check(engine)
            log.info("GPU check passed: %s generates (%s)", engine.info.compute_type, spec.name)
    except BaseException:
        await engine.close()
        raise
    return engine


def build_model_host(settings: Settings, catalog: ModelCatalog) -> ModelHost:
    """The registry of `catalog`'s models, loading with `load_model`, within the budget."""
    host: ModelHost | None = None

    async def load(spec: ModelSpec) -> Engine:
        engine = await load_model(settings, spec)
        assert host is not None
        host.adopt(spec.name, engine)
        return engine

    async def unload(engine: Engine) -> None:
        await engine.close(grace_s=settings.shutdown_grace_s)

    budget = int(settings.model_memory_budget_mb * MB) or None
    registry: ModelRegistry[Engine] = ModelRegistry(
        catalog.specs, load=load, unload=unload, budget_bytes=budget
    )
    host = ModelHost(catalog, registry, queue_size=settings.queue_size)
    host.on_result.append(lambda _result: registry.poke())
    return host


async def prune_forever(db: Database, settings: Settings) -> None:
    """Delete asks and turns past their time now and every `PRUNE_EVERY_S`, until cancelled.

    Reads ignore expired rows anyway; this is what keeps an idle bot's file from
    holding a private prompt longer than the README says.
    """
    while True:
        try:
            removed = await prune_expired(
                db, ask_retention_days=settings.ask_retention_days,
                conversation_retention_days=settings.conversation_retention_days,
            )
            if removed:
                log.info("pruned %d asks and turns past their retention", removed)
        except Exception:
            log.exception("pruning expired asks and turns failed")
        await asyncio.sleep(PRUNE_EVERY_S)


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings, progress: Callable[[str], None] = _to_stderr, *,
    engine: Engine | None = None,
) -> AsyncIterator[App]:
    """Open the store and load the engine; close both on the way out, whatever happens.

    On CUDA one short generation runs before anything is served (and so before the
    Discord client reports READY=1): a host missing cuBLAS fails here, naming it,
    instead of at its first reply. An `engine` given by the caller (tests, benches)
    is served as it is, and stays the caller's to close.
    """
    if engine is not None:
        async with _serve(settings, engine, None) as app:
            yield app
        return
    if settings.model_dirs:
        # Several models (BOT_MODEL_DIRS); the default is loaded now.
        async with (
            _open_models(settings, progress) as (engine, host),
            _serve(settings, engine, host) as app,
        ):
            yield app
        return
    model_dir = model_dir_for(settings, progress)
    async with _serve(settings, None, None, model_dir) as app:
        yield app


@contextlib.asynccontextmanager
async def _open_models(
    settings: Settings, progress: Callable[[str], None]
) -> AsyncIterator[tuple[Engine, ModelHost]]:
    """The catalog and registry of BOT_MODEL_DIRS, the default model loaded (and checked).

    The default is loaded before anything is served (so before READY=1), failing
    start-up as a single model would; the others load when first asked for.
    """
    catalog = catalog_from_settings(
        settings, prepare_embedded=lambda: prepare_default_model(
            settings.models_root, settings.quantization, progress=progress),
    )
    host = build_model_host(settings, catalog)
    engine = await load_model(settings, catalog.spec(catalog.default))
    host.registry.adopt(catalog.default, engine)
    host.adopt(catalog.default, engine)
    try:
        yield engine, host
    finally:
        await host.close()


@contextlib.asynccontextmanager
async def _serve(
    settings: Settings, engine: Engine | None, host: ModelHost | None,
    model_dir: Path | None = None,
) -> AsyncIterator[App]:
    """The App around `engine` (or one loaded from `model_dir`), with its store and pruner."""
    db = await open_database(settings.database_target)
    try:
        if engine is not None:
            async with _pruned(db, settings), _shared_limits(db) as limits:
                yield App(settings=settings, engine=engine, model_host=host,
                          shared_limits=limits, **_stores(db, settings))
            return
        assert model_dir is not None
        with device_errors_explained(settings.compute_type):
            engine = await load_engine(settings, model_dir)
        log.info(
            "model %s loaded on %s (%s) in %.1fs",
            engine.info.model_name, engine.info.device, engine.info.compute_type,
            engine.info.load_s,
        )
        try:
            if engine.info.device == "cuda":
                await gpu_self_check(engine)
                log.info("GPU check passed: %s generates", engine.info.compute_type)
            async with _pruned(db, settings), _shared_limits(db) as limits:
                yield App(settings=settings, engine=engine, shared_limits=limits,
                          **_stores(db, settings))
        finally:
            await engine.close(grace_s=settings.shutdown_grace_s)
    finally:
        await db.close()


def _stores(db: Database, settings: Settings) -> dict[str, Any]:
    return {
        "store": SettingsStore(db, history_per_scope=settings.history_per_scope,
                               history_retention_days=settings.history_retention_days,
                               max_new_tokens_ceiling=settings.max_new_tokens_ceiling),
        "ask_log": AskLog(db, retention_days=settings.ask_retention_days),
    }


@contextlib.asynccontextmanager
async def _shared_limits(db: Database) -> AsyncIterator[SharedLimits | None]:
    """Members' limits on the database when hosts share it (PostgreSQL), else None."""
    if db.dialect != "postgresql":
        yield None
        return
    from bot.store.member_limits import MemberLimits
    from bot.store.postgres import PostgresDatabase

    assert isinstance(db, PostgresDatabase)
    limits = await MemberLimits.open(db)
    try:
        yield limits
    finally:
        await limits.close()


@contextlib.asynccontextmanager
async def _pruned(db: Database, settings: Settings) -> AsyncIterator[None]:
    pruner = asyncio.create_task(prune_forever(db, settings), name="prune-expired")
    try:
        yield
    finally:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
