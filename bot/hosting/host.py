"""The models one host serves, as the front-ends see them.

`App.models` is a `ModelHost`: the catalog, the registry and the rules the ask
path needs on top of them, so no front-end touches the registry: which model
answers where (`choice`, `turn_model`), its engine loaded on first use with
`on_wait` told while it loads, one queue bound across models, and one `on_result`
list shared by every engine (metrics see all models; each result pokes the
registry).

Under a tight budget, a model that does not fit beside the default unloads the
model everyone else uses. So choosing one needs Manage Server (`swaps_default`),
and loading a model that unloads others is limited to once per `swap_cooldown_s`
per server or DM member (`check_swap`). `ModelHost.single` serves one engine:
never unloaded, and footers do not name the model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from bot import wording
from bot.config import model_slug
from bot.errors import QueueFull, UserFacingError
from bot.hosting.catalog import MB, ModelCatalog, ModelSpec
from bot.hosting.choice import (
    ModelChoice,
    ScopedSettings,
    TurnModel,
    model_for_turn,
    model_in_effect,
)
from bot.hosting.registry import ModelRegistry, ModelState, ModelStatus, Waiting

if TYPE_CHECKING:
    from bot.engine import Engine, GenerationResult

OnWait = Callable[[Waiting], None]

#: How often one server (or one DM member) may load a model that unloads others.
SWAP_COOLDOWN_S: Final = 120.0


def swapper_of(guild_id: int | None, user_id: int) -> str:
    """Who a model swap is counted against: the server, or the member in their DMs."""
    return f"server:{guild_id}" if guild_id is not None else f"dm:{user_id}"


class ModelSwapTooSoon(UserFacingError):
    """Loading this model would unload others' model again too soon after the last swap."""


class ModelHost:
    """Catalog + registry of `Engine`s, with the choice rules and a total queue bound."""

    def __init__(
        self, catalog: ModelCatalog, registry: ModelRegistry[Engine], *, queue_size: int,
        on_result: list[Callable[[GenerationResult], None]] | None = None,
        swap_cooldown_s: float = SWAP_COOLDOWN_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.swap_cooldown_s = swap_cooldown_s
        self._clock = clock
        #: When each server ("server:ID") or DM member ("dm:ID") last swapped a model in.
        self._swaps: dict[str, float] = {}
        self.registry = registry
        self.queue_size = queue_size
        #: Shared by every engine this host loads (see `adopt`).
        self.on_result: list[Callable[[GenerationResult], None]] = (
            on_result if on_result is not None else []
        )
        #: Called with (name, engine) whenever a model's engine is ready (App keeps
        #: `app.engine` on the default model's current engine this way).
        self.on_loaded: list[Callable[[str, Engine], None]] = []
        #: A one-engine host's engine, read at every use (see `single`).
        self._only: Callable[[], Engine] | None = None

    @classmethod
    def single(
        cls, engine: Engine, *, queue_size: int, current: Callable[[], Engine] | None = None
    ) -> ModelHost:
        """A host serving one engine that is already loaded (and closed by its owner).

        `current` returns the engine to use now (`App` passes its `engine` field, so
        a test or bench that swaps `app.engine` is served by the new one).
        """
        info = engine.info
        spec = ModelSpec(
            name=model_slug(info.model_name), dir=info.model_path,
            device="cuda" if info.device == "cuda" else "cpu",
            files_context_length=info.context_length,
        )

        async def no_reload(_spec: ModelSpec) -> Engine:
            raise RuntimeError("this host's only model was closed by its owner")

        async def owner_closes(_engine: Engine) -> None:
            return None

        registry: ModelRegistry[Engine] = ModelRegistry(
            [spec], load=no_reload, unload=owner_closes
        )
        host = cls(ModelCatalog(specs=(spec,), default=spec.name), registry,
                   queue_size=queue_size, on_result=engine.on_result)
        registry.adopt(spec.name, engine)
        host._only = current
        return host

    # -- what is served --------------------------------------------------------------

    @property
    def default(self) -> str:
        return self.catalog.default

    @property
    def names(self) -> tuple[str, ...]:
        return self.catalog.names

    @property
    def several(self) -> bool:
        """More than one model: only then do footers and /settings name the model."""
        return len(self.catalog) > 1

    @property
    def closing(self) -> bool:
        """Stopping: new asks are refused. One engine's own close counts on a one-model host."""
        if self.registry.closed:
            return True
        return not self.several and any(e.closing for e in self.engines().values())

    def statuses(self) -> list[ModelStatus]:
        return self.registry.statuses()

    def loaded(self, name: str) -> Engine | None:
        if self._only is not None and self.registry.loaded(name) is not None:
            return self._only()
        return self.registry.loaded(name)

    def engines(self) -> dict[str, Engine]:
        """Every loaded engine by model name."""
        if self._only is not None:
            return {self.default: self._only()}
        return self.registry.ready()

    def queue_depth(self) -> int:
        """Asks waiting across every model: the engines' queues and those waiting for a load."""
        return sum(e.queue_depth for e in self.engines().values()) + self.registry.waiting()

    def active(self) -> int:
        return sum(e.active for e in self.engines().values())

    # -- which model answers ---------------------------------------------------------

    def choice(self, effective: ScopedSettings) -> ModelChoice:
        """The model in effect where `effective` was resolved, and where that comes from."""
        return model_in_effect(effective, known=self.names, default=self.default)

    def turn_model(self, previous: str | None, effective: ScopedSettings) -> TurnModel:
        """The model of a turn continuing one answered by `previous` (None: a new one)."""
        return model_for_turn(previous, self.choice(effective), known=self.names)

    def swaps_default(self, name: str) -> bool:
        """Whether `name` cannot be loaded beside the default model (loading it unloads it)."""
        return name != self.default and not self.registry.fits_beside(name, self.default)

    def check_swap(self, name: str, swapper: str) -> None:
        """Refuse loading `name` for `swapper` when it would unload other models and
        `swapper` did so less than `swap_cooldown_s` ago; else count this swap."""
        if name == self.default or self.swap_cooldown_s <= 0:
            return
        pushed = self.registry.displaced_by(name)
        if not pushed:
            return
        now = self._clock()
        last = self._swaps.get(swapper)
        if last is not None and now - last < self.swap_cooldown_s:
            raise ModelSwapTooSoon(wording.model_swap_too_soon(
                name, pushed, self.swap_cooldown_s - (now - last)))
        if len(self._swaps) > 10_000:  # forget swaps whose cooldown is over
            self._swaps = {k: t for k, t in self._swaps.items()
                           if now - t < self.swap_cooldown_s}
        self._swaps[swapper] = now

    async def engine(self, name: str, on_wait: OnWait | None = None, *,
                     swapper: str | None = None) -> Engine:
        """The engine of `name`, loading it first if needed; submit to it before awaiting.

        `swapper` (the asking server or DM member) is held to `check_swap`.
        """
        self._admit(name, swapper)
        engine = await self.registry.acquire(name, on_wait)
        return self._only() if self._only is not None else engine

    def _admit(self, name: str, swapper: str | None) -> None:
        """With several models, asks waiting for a load count towards `BOT_QUEUE_SIZE`
        with the engines' queues (each engine still enforces its own bound)."""
        if self.several and self.queue_depth() >= self.queue_size:
            raise QueueFull(self.queue_size)
        if swapper is not None and self.several:
            self.check_swap(name, swapper)

    @contextlib.asynccontextmanager
    async def lease(self, name: str, on_wait: OnWait | None = None, *,
                    swapper: str | None = None) -> AsyncIterator[Engine]:
        """`engine`, kept loaded until the block ends (a turn's fitting awaits a thread)."""
        self._admit(name, swapper)
        async with self.registry.use(name, on_wait) as engine:
            yield self._only() if self._only is not None else engine

    def context_length(self, name: str) -> int | None:
        """`name`'s context window: its engine's when loaded, else what its files say."""
        engine = self.loaded(name)
        return engine.info.context_length if engine is not None else self.catalog.spec(name).window

    def adopt(self, name: str, engine: Engine) -> None:
        """Wire a freshly loaded engine in: shared result hooks, the registry's poke."""
        engine.on_result = self.on_result
        for hook in self.on_loaded:
            hook(name, engine)

    async def close(self) -> None:
        """Refuse new asks and unload every model (each engine gets the shutdown grace)."""
        await self.registry.close()


def model_lines(host: ModelHost, in_use: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """`/model list` and the console's: one line per model, in the operator's order.

    Name (and whether it is the default), weights, context window, loaded or
    not (busy, or why it failed and when it is retried), and where it is chosen
    (`in_use`: model name → the scopes, in the front-end's words).
    """
    lines: list[str] = []
    for status in host.statuses():
        spec = status.spec
        engine = host.loaded(status.name)
        window = engine.info.context_length if engine is not None else spec.window
        parts = [f"`{status.name}`" + (" (default)" if status.name == host.default else "")]
        parts.append(f"{spec.weight_bytes / MB:,.0f} MB" if spec.weight_bytes else "size unknown")
        parts.append(f"context {window:,} tokens" if window else "context unknown")
        if status.state is ModelState.FAILED:
            retry = round(status.retry_in_s or 0)
            parts.append(f"failed to load: {status.error} (retried in {retry} s)")
        elif status.state is ModelState.READY:
            parts.append("loaded, answering" if status.busy else "loaded")
        else:
            parts.append(status.state.value)
        if host.swaps_default(status.name):
            parts.append(wording.model_swaps(host.default, host.swap_cooldown_s))
        where = list((in_use or {}).get(status.name, ()))
        if where:
            parts.append("chosen in " + ", ".join(where))
        lines.append(" · ".join(parts))
    return lines
