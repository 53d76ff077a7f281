"""Several models on one host: loaded on first use, kept within a memory budget per device.

`ModelRegistry` owns which models are loaded, not how: it is handed async `load`
and `unload` callables, so its rules are tested with anything that says `busy()`:

- A model loads once when first asked for; concurrent askers share the load and
  hear `on_wait`, so a front-end can say "loading model X…".
- Weights stay within `budget_bytes` per device (a model on two GPUs is charged on
  both): least recently used idle models are unloaded for room; a busy one (work
  queued or running, or a `use` lease) never is, and the newcomer waits up to
  `room_timeout_s`. Room is reserved when a load is planned, so two loads never
  count the same free bytes.
- A failed load raises `ModelLoadFailed` and is retried only after a backoff
  (doubling up to `max_retry_s`), so a broken folder is not re-read at every ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import Generic, Literal, Protocol, TypeVar

from bot.errors import ShuttingDown, UserFacingError
from bot.hosting.catalog import MB, ModelSpec, UnknownModel

log = logging.getLogger(__name__)


class Servable(Protocol):
    """What the registry asks of a loaded model: whether unloading it would cut work off."""

    def busy(self) -> bool: ...


M = TypeVar("M", bound=Servable)


class ModelState(enum.StrEnum):
    UNLOADED = "not loaded"
    LOADING = "loading"
    READY = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelStatus:
    """One model as `/model list` and the console show it."""

    name: str
    spec: ModelSpec
    state: ModelState
    busy: bool
    leases: int
    load_s: float | None
    """How long the last successful load took (None: never loaded)."""
    error: str | None
    """Why the last load failed, while the backoff runs."""
    retry_in_s: float | None
    idle_s: float | None
    """Seconds since last used (None: never used)."""


@dataclass(frozen=True)
class Waiting:
    """Told to an asker whose model is not ready: what it waits for, in words."""

    model: str
    reason: Literal["loading", "room"]
    message: str


class ModelLoadFailed(UserFacingError):
    """A model could not be loaded; others keep serving and it is retried after a pause."""

    def __init__(self, name: str, reason: str, retry_in_s: float) -> None:
        super().__init__(
            f"The model `{name}` could not be loaded: {reason.rstrip('.')}. Other models "
            f"keep serving; I'll try loading it again in {max(1, round(retry_in_s))} s."
        )
        self.name = name
        self.reason = reason
        self.retry_in_s = retry_in_s


class ModelTooLarge(UserFacingError):
    """A model's weights exceed the memory budget of a device on their own."""


class NoRoomForModel(UserFacingError):
    """Busy models held the memory a model needs for longer than the wait allowed."""


@dataclass(frozen=True)
class Resident:
    """A loaded (or loading) model as the room planner sees it."""

    name: str
    devices: tuple[str, ...]
    weight_bytes: int
    last_used: float
    evictable: bool


def choose_victims(
    need: ModelSpec, residents: Sequence[Resident], budget: Callable[[str], int | None]
) -> list[str] | None:
    """Models to unload, least recently used first, so `need` fits on each of its devices.

    [] when it fits as things are; None when even unloading every idle model on
    those devices would not make room (so nothing is unloaded for nothing).
    """
    over: dict[str, int] = {}
    for device in need.devices:
        cap = budget(device)
        if cap is None:
            continue
        used = sum(r.weight_bytes for r in residents if device in r.devices)
        if used + need.weight_bytes > cap:
            over[device] = used + need.weight_bytes - cap
    if not over:
        return []
    victims: list[str] = []
    candidates = sorted(
        (r for r in residents if r.evictable and set(r.devices) & set(over)),
        key=lambda r: r.last_used,
    )
    for resident in candidates:
        if all(excess <= 0 for excess in over.values()):
            break
        victims.append(resident.name)
        for device in resident.devices:
            if device in over:
                over[device] -= resident.weight_bytes
    return victims if all(excess <= 0 for excess in over.values()) else None


def _mb(n: int) -> str:
    return f"{n / MB:,.0f} MB"


def _reason(exc: BaseException) -> str:
    """A load failure in one line: our own message, or CTranslate2's with its type."""
    if isinstance(exc, UserFacingError):
        text = exc.message
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:399] + "…"


class _Slot(Generic[M]):
    """The registry's record of one configured model."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.state = ModelState.UNLOADED
        self.model: M | None = None
        self.task: asyncio.Task[M] | None = None
        self.unloaded: asyncio.Event | None = None
        self.reason: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.last_used: float | None = None
        self.leases = 0
        self.load_s: float | None = None

    def busy(self) -> bool:
        if self.leases:
            return True
        if self.model is None:
            return False
        try:
            return bool(self.model.busy())
        except Exception:  # a model that cannot say is treated as busy: never cut off
            log.exception("model %s could not report whether it is busy", self.spec.name)
            return True


class ModelRegistry(Generic[M]):
    """The models of this host, loaded on demand within a per-device memory budget.

    `budget_bytes`: one number for every device, a mapping from device ("cpu",
    "cuda:0") to bytes (devices it omits have no limit), or None/0 for no limit.
    `clock` is injectable so backoff can be tested without sleeping.
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        *,
        load: Callable[[ModelSpec], Awaitable[M]],
        unload: Callable[[M], Awaitable[None]],
        budget_bytes: int | Mapping[str, int] | None = None,
        retry_s: float = 30.0,
        max_retry_s: float = 600.0,
        room_timeout_s: float = 120.0,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots: dict[str, _Slot[M]] = {}
        for spec in specs:
            if spec.name in self._slots:
                raise ValueError(f"two models are named {spec.name!r}")
            self._slots[spec.name] = _Slot(spec)
        if not self._slots:
            raise ValueError("a registry needs at least one model")
        self._load = load
        self._unload = unload
        self._budget = budget_bytes
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.room_timeout_s = room_timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._change = asyncio.Event()
        self._closed = False
        self.loads = 0
        """Loads started (tests and metrics: concurrent askers share one)."""
        self.evictions = 0
        self._waiting: dict[str, int] = dict.fromkeys(self._slots, 0)
        for spec in self.specs:
            for device in spec.devices:
                cap = self.budget(device)
                if cap is not None and spec.weight_bytes > cap:
                    log.warning(
                        "model %s (%s of weights) is larger than the memory budget on %s "
                        "(%s): it will be refused", spec.name, _mb(spec.weight_bytes),
                        device, _mb(cap),
                    )

    # -- what is configured and loaded ---------------------------------------------

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return tuple(slot.spec for slot in self._slots.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def budget(self, device: str) -> int | None:
        """The weights (bytes) `device` may hold; None: no limit."""
        if self._budget is None:
            return None
        if isinstance(self._budget, int):
            return self._budget or None
        cap = self._budget.get(device)
        return cap or None

    def used_bytes(self, device: str) -> int:
        """Weights loaded or being loaded on `device` (unloading ones are already handed on)."""
        return sum(
            slot.spec.weight_bytes for slot in self._slots.values()
            if slot.state in (ModelState.READY, ModelState.LOADING)
            and device in slot.spec.devices
        )

    def state(self, name: str) -> ModelState:
        return self._slot(name).state

    def displaced_by(self, name: str) -> tuple[str, ...]:
        """The loaded models that loading `name` now would unload, busy ones included
        (the load would wait for them): () when it is loaded, loading, or fits."""
        slot = self._slot(name)
        if slot.state in (ModelState.READY, ModelState.LOADING):
            return ()
        everyone = [replace(r, evictable=True) for r in self._residents() if r.name != name]
        return tuple(choose_victims(slot.spec, everyone, self.budget) or ())

    def fits_beside(self, name: str, other: str) -> bool:
        """Whether `name` and `other` can be loaded at once within the budget."""
        need, there = self._slot(name).spec, self._slot(other).spec
        if name == there.name:
            return True
        resident = Resident(there.name, there.devices, there.weight_bytes, 0.0, evictable=False)
        return choose_victims(need, [resident], self.budget) == []

    def loaded(self, name: str) -> M | None:
        """The loaded model, without loading it or counting a use (None if not ready)."""
        slot = self._slot(name)
        return slot.model if slot.state is ModelState.READY else None

    def ready(self) -> dict[str, M]:
        """Every loaded model by name (metrics, the total queue depth, shutdown)."""
        return {
            name: slot.model for name, slot in self._slots.items()
            if slot.state is ModelState.READY and slot.model is not None
        }

    def waiting(self, name: str | None = None) -> int:
        """Askers waiting for `name` (None: any model) to load or for room to load it.

        They are queued asks the engines cannot see yet: a total queue bound across
        models counts them with the engines' `queue_depth`.
        """
        if name is None:
            return sum(self._waiting.values())
        return self._waiting[self._slot(name).spec.name]

    def status(self, name: str) -> ModelStatus:
        slot = self._slot(name)
        now = self._clock()
        failed = slot.state is ModelState.FAILED
        return ModelStatus(
            name=name,
            spec=slot.spec,
            state=slot.state,
            busy=slot.state is ModelState.READY and slot.busy(),
            leases=slot.leases,
            load_s=slot.load_s,
            error=slot.reason if failed else None,
            retry_in_s=max(0.0, slot.retry_at - now) if failed else None,
            idle_s=None if slot.last_used is None else max(0.0, now - slot.last_used),
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self._slots]

    @property
    def closed(self) -> bool:
        """`close` was called: every ask is refused with `ShuttingDown`."""
        return self._closed

    def adopt(self, name: str, model: M) -> None:
        """Take a model the caller loaded as `name`'s (the default, preloaded at start-up).

        Charged to the budget like any load; it must be unloaded (never loading).
        """
        slot = self._slot(name)
        if slot.state is not ModelState.UNLOADED:
            raise ValueError(f"model {name!r} is already {slot.state.value}")
        slot.model = model
        slot.state = ModelState.READY
        slot.last_used = self._clock()
        slot.load_s = None
        self.poke()

    def poke(self) -> None:
        """Something finished (a generation, a lease): re-check waiting loads now.

        Waiters also re-check every `poll_s`, since `busy()` can turn false unseen.
        """
        self._change.set()
        self._change = asyncio.Event()

    # -- using a model ---------------------------------------------------------------

    async def acquire(self, name: str, on_wait: Callable[[Waiting], None] | None = None) -> M:
        """The loaded model `name`, loading it (and making room) first if needed.

        The model may be unloaded once idle, so submit work to it before the next
        `await`, or hold `use()`. Raises a `UserFacingError` (`UnknownModel`,
        `ModelLoadFailed`, `ModelTooLarge`, `NoRoomForModel`, `ShuttingDown`).
        """
        slot = self._slot(name)
        if slot.state is ModelState.READY and not self._closed:
            assert slot.model is not None
            slot.last_used = self._clock()
            return slot.model
        self._waiting[slot.spec.name] += 1
        try:
            return await self._acquire(slot, on_wait)
        finally:
            self._waiting[slot.spec.name] -= 1

    async def _acquire(self, slot: _Slot[M], on_wait: Callable[[Waiting], None] | None) -> M:
        name = slot.spec.name
        told: set[str] = set()

        def tell(reason: Literal["loading", "room"], message: str) -> None:
            if on_wait is not None and reason not in told:
                told.add(reason)
                on_wait(Waiting(name, reason, message))

        while True:
            if self._closed:
                raise ShuttingDown()
            if slot.state is ModelState.READY:
                assert slot.model is not None
                slot.last_used = self._clock()
                return slot.model
            if slot.state is ModelState.LOADING:
                assert slot.task is not None
                last = f" (it took {slot.load_s:.0f} s last time)" if slot.load_s else ""
                tell("loading", f"Loading the model `{name}`…{last}")
                await asyncio.shield(slot.task)
                continue
            if slot.state is ModelState.UNLOADING:
                assert slot.unloaded is not None
                await slot.unloaded.wait()
                continue
            if slot.state is ModelState.FAILED:
                wait = slot.retry_at - self._clock()
                if wait > 0:
                    raise ModelLoadFailed(name, slot.reason or "unknown error", wait)
            await self._plan_load(slot, tell)

    @contextlib.asynccontextmanager
    async def use(
        self, name: str, on_wait: Callable[[Waiting], None] | None = None
    ) -> AsyncIterator[M]:
        """`acquire`, holding a lease: the model stays loaded until the block ends."""
        model = await self.acquire(name, on_wait)
        slot = self._slots[name]
        slot.leases += 1
        try:
            yield model
        finally:
            slot.leases -= 1
            slot.last_used = self._clock()
            self.poke()

    async def close(self) -> None:
        """Refuse new asks, let loads in progress end, unload every model.

        A load cannot be interrupted (CTranslate2 reads the weights on a worker
        thread), so it is awaited and then unloaded rather than leaked.
        """
        self._closed = True
        loading = [slot.task for slot in self._slots.values() if slot.task is not None]
        await asyncio.gather(*loading, return_exceptions=True)
        unloading = [
            slot.unloaded.wait() for slot in self._slots.values()
            if slot.state is ModelState.UNLOADING and slot.unloaded is not None
        ]
        await asyncio.gather(*unloading)
        ready = [slot for slot in self._slots.values() if slot.state is ModelState.READY]
        await asyncio.gather(*(self._unload_slot(slot) for slot in ready))
        self.poke()

    # -- loading and making room ------------------------------------------------------

    def _slot(self, name: str) -> _Slot[M]:
        slot = self._slots.get(name.strip().lower()) if isinstance(name, str) else None
        if slot is None:
            raise UnknownModel(str(name), tuple(self._slots))
        return slot

    def _residents(self) -> list[Resident]:
        return [
            Resident(
                name=name,
                devices=slot.spec.devices,
                weight_bytes=slot.spec.weight_bytes,
                last_used=slot.last_used or 0.0,
                evictable=slot.state is ModelState.READY and not slot.busy(),
            )
            for name, slot in self._slots.items()
            if slot.state in (ModelState.READY, ModelState.LOADING)
        ]

    def _never_fits(self, spec: ModelSpec) -> str | None:
        for device in spec.devices:
            cap = self.budget(device)
            if cap is not None and spec.weight_bytes > cap:
                return (
                    f"The model `{spec.name}` needs {_mb(spec.weight_bytes)} of weights on "
                    f"{device}, more than the memory budget there ({_mb(cap)}, "
                    "BOT_MODEL_MEMORY_BUDGET_MB), so it cannot be loaded. Ask the operator "
                    "to raise the budget, or choose another model."
                )
        return None

    async def _plan_load(
        self, slot: _Slot[M], tell: Callable[[Literal["loading", "room"], str], None]
    ) -> None:
        """Reserve room for `slot` (unloading idle models) and start its load, or wait.

        Returns once the slot is loading (started here or by another asker);
        the caller then waits on that load.
        """
        spec = slot.spec
        too_big = self._never_fits(spec)
        if too_big is not None:
            raise ModelTooLarge(too_big)
        deadline = self._clock() + self.room_timeout_s
        while slot.state in (ModelState.UNLOADED, ModelState.FAILED):
            if self._closed:
                raise ShuttingDown()
            if slot.state is ModelState.FAILED and slot.retry_at > self._clock():
                return  # another asker's load failed meanwhile: the caller reports it
            victims = choose_victims(spec, self._residents(), self.budget)
            if victims is not None:
                self._start_load(slot, [self._slots[v] for v in victims])
                return
            holders = ", ".join(
                f"`{r.name}`" for r in self._residents() if set(r.devices) & set(spec.devices)
            )
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise NoRoomForModel(
                    f"The model `{spec.name}` cannot be loaded now: the memory it needs is held "
                    f"by models in use ({holders}). Try again in a minute."
                )
            tell("room", f"Waiting for memory to load `{spec.name}` (in use: {holders})…")
            waiter = asyncio.ensure_future(self._change.wait())
            try:
                await asyncio.wait((waiter,), timeout=min(self.poll_s, remaining))
            finally:
                waiter.cancel()

    def _start_load(self, slot: _Slot[M], victims: list[_Slot[M]]) -> None:
        """Mark the victims unloading and `slot` loading now, then do the work in a task.

        Both state changes happen before the first `await`, so no other asker can
        use a victim or count the room twice.
        """
        for victim in victims:
            victim.state = ModelState.UNLOADING
            victim.unloaded = asyncio.Event()
            self.evictions += 1
            log.info("unloading model %s (least recently used, idle) to make room for %s",
                     victim.spec.name, slot.spec.name)
        slot.state = ModelState.LOADING
        slot.reason = None
        self.loads += 1
        task = asyncio.create_task(self._run_load(slot, victims), name=f"load {slot.spec.name}")
        task.add_done_callback(_retrieve)
        slot.task = task

    async def _run_load(self, slot: _Slot[M], victims: list[_Slot[M]]) -> M:
        spec = slot.spec
        try:
            await asyncio.gather(*(self._unload_slot(v) for v in victims))
            started = self._clock()
            log.info("loading model %s from %s on %s", spec.name, spec.dir, ",".join(spec.devices))
            model = await self._load(spec)
        except Exception as exc:
            slot.failures += 1
            backoff = min(self.max_retry_s, self.retry_s * 2 ** (slot.failures - 1))
            slot.retry_at = self._clock() + backoff
            slot.reason = _reason(exc)
            slot.state = ModelState.FAILED
            slot.task = None
            log.warning("model %s failed to load (retry in %.0f s): %s",
                        spec.name, backoff, slot.reason,
                        exc_info=not isinstance(exc, UserFacingError))
            self.poke()
            raise ModelLoadFailed(spec.name, slot.reason, backoff) from exc
        except BaseException:
            slot.state = ModelState.UNLOADED
            slot.task = None
            self.poke()
            raise
        slot.model = model
        slot.load_s = self._clock() - started
        slot.last_used = self._clock()
        slot.failures = 0
        slot.state = ModelState.READY
        slot.task = None
        log.info("model %s loaded in %.1f s", spec.name, slot.load_s)
        self.poke()
        return model

    async def _unload_slot(self, slot: _Slot[M]) -> None:
        """Unload one model; its room is free afterwards even if unloading raised."""
        model, slot.model = slot.model, None
        slot.state = ModelState.UNLOADING
        if slot.unloaded is None:
            slot.unloaded = asyncio.Event()
        try:
            if model is not None:
                await self._unload(model)
        except Exception:
            log.exception("unloading model %s failed; counting its memory as free",
                          slot.spec.name)
        finally:
            slot.state = ModelState.UNLOADED
            event, slot.unloaded = slot.unloaded, None
            event.set()
            self.poke()


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a load's failure as seen: every asker got it; nobody left must not log it twice."""
    if not task.cancelled():
        task.exception()
