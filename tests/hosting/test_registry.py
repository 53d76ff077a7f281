"""Several models on one host: loaded on first use, kept within a budget, failing alone.

Real tiny CTranslate2 models (three random ones of the same shape, built here) are
loaded and unloaded by a small real factory (`testing.ct2_models`); "busy" means a
generation really runs on that model, held step by step by the test.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from bot.errors import ShuttingDown, UserFacingError
from bot.hosting.catalog import ModelCatalog, ModelSpec, UnknownModel, weight_bytes_of
from bot.hosting.host import ModelHost, ModelSwapTooSoon
from bot.hosting.registry import (
    ModelLoadFailed,
    ModelRegistry,
    ModelState,
    ModelTooLarge,
    NoRoomForModel,
    Resident,
    Waiting,
    choose_victims,
)
from testing.ct2_models import Ct2Model, load_ct2, unload_ct2
from testing.model_factory import make_tiny_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: make_tiny_model(root, seed=seed) for seed, name in enumerate("abc")}


def specs_for(dirs: dict[str, Path]) -> list[ModelSpec]:
    return [ModelSpec(name=n, dir=d, weight_bytes=weight_bytes_of(d)) for n, d in dirs.items()]


class Counting:
    """The real factory, counting the loads it was asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, spec: ModelSpec) -> Ct2Model:
        self.calls.append(spec.name)
        return await load_ct2(spec)


def registry(
    specs: list[ModelSpec], *, budget: int | None = None, **kwargs: object
) -> tuple[ModelRegistry[Ct2Model], Counting]:
    load = Counting()
    reg: ModelRegistry[Ct2Model] = ModelRegistry(
        specs, load=load, unload=unload_ct2, budget_bytes=budget, poll_s=0.02,
        **kwargs,  # type: ignore[arg-type]
    )
    return reg, load


def two_of_three(dirs: dict[str, Path]) -> int:
    """A budget that holds any two of the (equal-sized) models but not three."""
    size = weight_bytes_of(dirs["a"])
    assert all(weight_bytes_of(d) == size for d in dirs.values())
    return size * 5 // 2


async def test_first_use_loads_once_for_concurrent_askers(model_dirs: dict[str, Path]) -> None:
    reg, load = registry(specs_for(model_dirs))
    assert [s.state for s in reg.statuses()] == [ModelState.UNLOADED] * 3
    told: list[Waiting] = []
    models = await asyncio.gather(*(reg.acquire("a", told.append) for _ in range(5)))
    assert load.calls == ["a"] and reg.loads == 1
    assert all(m is models[0] for m in models)
    assert {w.reason for w in told} == {"loading"} and len(told) == 5
    assert "Loading the model `a`" in told[0].message
    assert reg.state("a") is ModelState.READY
    assert reg.state("b") is ModelState.UNLOADED and reg.state("c") is ModelState.UNLOADED
    assert len(await models[0].generate("hello", 6)) == 6
    again = await reg.acquire("A")  # names are case-insensitive
    assert again is models[0] and load.calls == ["a"]
    assert reg.status("a").load_s is not None
    await reg.close()


async def test_least_recently_used_idle_model_makes_room(model_dirs: dict[str, Path]) -> None:
    budget = two_of_three(model_dirs)
    reg, load = registry(specs_for(model_dirs), budget=budget)
    a = await reg.acquire("a")
    b = await reg.acquire("b")
    await asyncio.gather(a.generate("one"), b.generate("two"))
    await reg.acquire("a")  # a used after b: b is now the least recently used
    c = await reg.acquire("c")
    assert b.unloaded and not a.unloaded
    assert reg.state("b") is ModelState.UNLOADED
    assert set(reg.ready()) == {"a", "c"}
    assert reg.used_bytes("cpu") <= budget
    assert len(await c.generate("three", 4)) == 4
    b2 = await reg.acquire("b")  # now a is the oldest
    assert a.unloaded and not c.unloaded and b2 is not b
    assert set(reg.ready()) == {"b", "c"} and reg.evictions == 2
    assert load.calls == ["a", "b", "c", "b"]
    await reg.close()


async def test_a_busy_model_is_never_unloaded(model_dirs: dict[str, Path]) -> None:
    reg, _ = registry(specs_for(model_dirs), budget=two_of_three(model_dirs))
    a = await reg.acquire("a")
    await reg.acquire("b")  # b used last: a is the least recently used...
    hold_a = threading.Event()
    running_a = asyncio.create_task(a.generate("long", 6, hold=hold_a))
    await asyncio.sleep(0)
    assert a.busy()
    c = await reg.acquire("c")  # ...but busy, so b makes room
    assert reg.state("b") is ModelState.UNLOADED and not a.unloaded
    # Now both loaded models are busy: b has to wait for room.
    hold_c = threading.Event()
    running_c = asyncio.create_task(c.generate("long", 6, hold=hold_c))
    await asyncio.sleep(0)
    told: list[Waiting] = []
    want_b = asyncio.create_task(reg.acquire("b", told.append))
    await asyncio.sleep(0.3)
    assert not want_b.done() and reg.state("b") is ModelState.UNLOADED
    assert reg.waiting("b") == 1 and reg.waiting() == 1 and reg.waiting("a") == 0
    assert [w.reason for w in told] == ["room"] and "`a`" in told[0].message
    assert not a.unloaded and not c.unloaded
    hold_a.set()  # a's generation ends: a is idle, and makes room
    assert len(await running_a) == 6
    b = await asyncio.wait_for(want_b, 30)
    assert a.unloaded and not c.unloaded and reg.state("b") is ModelState.READY
    assert reg.waiting() == 0
    hold_c.set()
    assert len(await running_c) == 6
    assert len(await b.generate("after", 3)) == 3
    await reg.close()


async def test_a_lease_keeps_a_model_loaded_and_room_waits_time_out(
    model_dirs: dict[str, Path],
) -> None:
    reg, _ = registry(specs_for(model_dirs), budget=two_of_three(model_dirs),
                      room_timeout_s=0.3)
    async with reg.use("a") as a, reg.use("b"):
        assert reg.status("a").leases == 1
        with pytest.raises(NoRoomForModel) as info:
            await reg.acquire("c")
        assert "`a`" in info.value.message and "`b`" in info.value.message
        assert not a.unloaded and reg.state("c") is ModelState.UNLOADED
    # Leases over; a lease's end counts as a use, and b's ended first: b goes.
    c = await reg.acquire("c")
    assert not a.unloaded and set(reg.ready()) == {"a", "c"}
    assert len(await c.generate("x", 2)) == 2
    await reg.close()


async def test_a_model_bigger_than_the_budget_is_refused_at_once(
    model_dirs: dict[str, Path],
) -> None:
    size = weight_bytes_of(model_dirs["a"])
    specs = [ModelSpec(name="a", dir=model_dirs["a"], weight_bytes=size),
             ModelSpec(name="huge", dir=model_dirs["b"], weight_bytes=size * 3)]
    reg, load = registry(specs, budget=size * 2)
    with pytest.raises(ModelTooLarge) as info:
        await reg.acquire("huge")
    assert "BOT_MODEL_MEMORY_BUDGET_MB" in info.value.message and "`huge`" in info.value.message
    assert load.calls == []
    a = await reg.acquire("a")  # the other one still serves
    assert len(await a.generate("hi", 2)) == 2
    with pytest.raises(UnknownModel, match="`a`, `huge`"):
        await reg.acquire("nope")
    await reg.close()


def corrupt_copy(good: Path, where: Path) -> Path:
    broken = where / "broken"
    shutil.copytree(good, broken)
    (broken / "model.bin").write_bytes((good / "model.bin").read_bytes()[:1000])
    return broken


async def test_a_broken_model_fails_clearly_while_another_keeps_generating(
    model_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    broken = corrupt_copy(model_dirs["a"], tmp_path)
    specs = [ModelSpec(name="good", dir=model_dirs["b"], weight_bytes=1),
             ModelSpec(name="broken", dir=broken, weight_bytes=1)]
    reg, load = registry(specs)
    good = await reg.acquire("good")
    hold = threading.Event()
    generating = asyncio.create_task(good.generate("keep going", 8, hold=hold))
    await asyncio.sleep(0)
    failures = await asyncio.gather(reg.acquire("broken"), reg.acquire("broken"),
                                    return_exceptions=True)
    hold.set()
    assert len(await generating) == 8
    for failure in failures:
        assert isinstance(failure, ModelLoadFailed) and isinstance(failure, UserFacingError)
        assert "The model `broken` could not be loaded" in failure.message
        assert "invalid payload size" in failure.message  # CTranslate2's own reason
        assert "Other models keep serving" in failure.message
    assert load.calls == ["good", "broken"]  # both askers shared the failing load
    status = reg.status("broken")
    assert status.state is ModelState.FAILED and status.error and status.retry_in_s
    assert len(await (await reg.acquire("good")).generate("still", 3)) == 3
    await reg.close()


async def test_a_failed_model_is_retried_only_after_a_growing_backoff(
    model_dirs: dict[str, Path], tmp_path: Path,
) -> None:
    broken = corrupt_copy(model_dirs["a"], tmp_path)
    now = [1000.0]
    specs = [ModelSpec(name="broken", dir=broken, weight_bytes=1)]
    reg, load = registry(specs, retry_s=10.0, max_retry_s=15.0, clock=lambda: now[0])
    with pytest.raises(ModelLoadFailed, match="again in 10 s"):
        await reg.acquire("broken")
    now[0] += 9
    with pytest.raises(ModelLoadFailed, match="again in 1 s"):
        await reg.acquire("broken")
    assert load.calls == ["broken"]  # no reload during the backoff
    now[0] += 2
    with pytest.raises(ModelLoadFailed, match="again in 15 s"):  # doubled, capped at 15
        await reg.acquire("broken")
    assert load.calls == ["broken"] * 2
    shutil.copy(model_dirs["a"] / "model.bin", broken / "model.bin")  # the operator fixes it
    now[0] += 14
    with pytest.raises(ModelLoadFailed):
        await reg.acquire("broken")
    now[0] += 2
    fixed = await reg.acquire("broken")
    assert load.calls == ["broken"] * 3 and reg.state("broken") is ModelState.READY
    assert len(await fixed.generate("works now", 3)) == 3
    await reg.close()


async def test_close_unloads_everything_and_refuses_new_asks(model_dirs: dict[str, Path]) -> None:
    reg, _ = registry(specs_for(model_dirs))
    loaded = await asyncio.gather(reg.acquire("a"), reg.acquire("b"))
    await reg.close()
    assert all(m.unloaded for m in loaded) and not reg.ready()
    with pytest.raises(ShuttingDown):
        await reg.acquire("c")


def test_room_is_planned_per_device() -> None:
    gpu0 = ModelSpec(name="g", dir=Path("g"), device="cuda", device_index=(0,), weight_bytes=6)
    both = ModelSpec(name="w", dir=Path("w"), device="cuda", device_index=(0, 1), weight_bytes=6)
    cpu = ModelSpec(name="c", dir=Path("c"), device="cpu", weight_bytes=4)
    assert both.devices == ("cuda:0", "cuda:1") and cpu.devices == ("cpu",)
    residents = [
        Resident("old-cpu", ("cpu",), 6, last_used=1.0, evictable=True),
        Resident("gpu0-a", ("cuda:0",), 4, last_used=3.0, evictable=True),
        Resident("gpu0-b", ("cuda:0",), 4, last_used=2.0, evictable=True),
        Resident("gpu1", ("cuda:1",), 8, last_used=4.0, evictable=False),
    ]

    def budget(device: str) -> int | None:
        return 10

    # cuda:0 holds 8 of 10: 4 must go; the older GPU model goes, never the CPU one.
    assert choose_victims(gpu0, residents, budget) == ["gpu0-b"]
    assert choose_victims(cpu, residents, budget) == []  # the CPU has its own room
    # Across two GPUs: cuda:1 is held by a busy model, so nothing is unloaded for nothing.
    assert choose_victims(both, residents, budget) is None
    assert choose_victims(both, residents, {"cuda:0": 10}.get) == ["gpu0-b"]
    assert choose_victims(gpu0, residents, lambda d: None) == []


async def test_the_queue_bound_counts_asks_waiting_for_a_load_across_models(
    model_dirs: dict[str, Path],
) -> None:
    """BOT_QUEUE_SIZE holds across models: asks waiting for `b` to load fill it for `a` too."""
    from bot.engine import Engine, EngineOptions
    from bot.errors import QueueFull
    from bot.hosting.catalog import ModelCatalog
    from bot.hosting.host import ModelHost

    gate = asyncio.Event()

    async def load(spec: ModelSpec) -> Engine:
        if spec.name == "b":
            await gate.wait()  # a slow load, held by the test
        return await Engine.load(spec.dir, EngineOptions(device="cpu", cpu_threads=1))

    async def unload(engine: Engine) -> None:
        await engine.close()

    specs = specs_for({n: model_dirs[n] for n in "ab"})
    reg: ModelRegistry[Engine] = ModelRegistry(specs, load=load, unload=unload)
    host = ModelHost(ModelCatalog(specs=tuple(specs), default="a"), reg, queue_size=2)
    try:
        assert (await host.engine("a")).busy() is False
        told: list[Waiting] = []
        waiting = [asyncio.create_task(host.engine("b", told.append)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert host.queue_depth() == 2 and reg.waiting("b") == 2
        with pytest.raises(QueueFull):
            await host.engine("a")
        gate.set()
        engines = await asyncio.gather(*waiting)
        assert engines[0] is engines[1] and reg.loads == 2
        assert [w.message for w in told] == ["Loading the model `b`…"] * 2
        assert host.queue_depth() == 0 and await host.engine("a") is host.loaded("a")
    finally:
        gate.set()
        await host.close()


async def test_swaps_that_unload_others_are_limited_per_server(
    model_dirs: dict[str, Path],
) -> None:
    """`a` is the default; `b` fits beside it only when `c` is not loaded too."""
    specs = specs_for(model_dirs)
    reg, _ = registry(specs, budget=two_of_three(model_dirs))
    now = [0.0]
    host = ModelHost(ModelCatalog(specs=tuple(specs), default="a"), reg,  # type: ignore[arg-type]
                     queue_size=8, swap_cooldown_s=60.0, clock=lambda: now[0])

    async def load(name: str, swapper: str | None = None) -> None:
        """What `ModelHost.engine` does before handing out the engine."""
        if swapper is not None:
            host.check_swap(name, swapper)
        await reg.acquire(name)

    try:
        assert not host.swaps_default("b") and reg.fits_beside("b", "c")
        await load("a")
        await load("b", swapper="server:1")  # fits: not a swap
        assert reg.displaced_by("c") == ("a",)  # least recently used goes, busy or not
        await load("c", swapper="server:1")  # a swap (`a` goes): counted
        await load("a", swapper="server:1")  # the default always comes back (`b` goes)
        with pytest.raises(ModelSwapTooSoon, match=r"Loading `b` now would unload `c`.*60 s"):
            await load("b", swapper="server:1")
        await load("b", swapper="server:2")  # another server has its own allowance
        now[0] = 61.0
        await load("c", swapper="server:1")  # the cooldown is over
        assert reg.evictions == 4
    finally:
        await reg.close()
