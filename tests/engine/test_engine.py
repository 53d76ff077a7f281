"""The generation engine: streaming, knobs, context, batching, queueing, failures.

Every engine here decodes through `CudaRules`, so a setting a GPU would refuse
(top-p over more than 8,192 classes, a top-k above the vocabulary) fails on the CPU.
"""

from __future__ import annotations

import asyncio
import gc
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.engine import (
    Engine,
    EngineOptions,
    Finished,
    FinishReason,
    GenerationRequest,
    Queued,
    Started,
    TextDelta,
)
from bot.engine.policy import CostModel
from bot.engine.streaming import IncrementalDetokenizer
from bot.errors import PromptTooLong, QueueFull, ShuttingDown, UserFacingError
from bot.knobs import Knobs
from testing.backends import CudaRules, FailsMidway, Slowed

LONG = Knobs(max_new_tokens=200, min_new_tokens=200)


def under_cuda_rules(engine: Engine) -> Engine:
    """Decode through `CudaRules`: what a GPU refuses fails here too."""
    engine.set_backend(CudaRules(engine.backend, engine.info.vocab_size, engine.info.compute_type))
    return engine


async def load(model_dir: Path, **kw: Any) -> Engine:
    return under_cuda_rules(await Engine.load(
        model_dir, EngineOptions(device="cpu", cpu_threads=1, **kw)
    ))


@pytest.fixture
async def tiny_engine(tiny_model_dir: Path) -> AsyncIterator[Engine]:
    """The shared fixture's engine, under CUDA's rules."""
    engine = await load(tiny_model_dir, batch_wait_ms=5)
    yield engine
    await engine.close()


async def slow_engine(model_dir: Path, **kw: Any) -> Engine:
    engine = await load(model_dir, batch_wait_ms=0, max_batch_size=1, **kw)
    engine.set_backend(Slowed(engine.backend))
    return engine


async def collect(engine: Engine, request: GenerationRequest) -> tuple[list[Any], str]:
    gen = engine.submit(request)
    events = [e async for e in gen.events()]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return events, text


async def test_stream_yields_deltas_then_a_result(tiny_engine: Engine) -> None:
    events, text = await collect(tiny_engine, GenerationRequest("hello", Knobs(max_new_tokens=12)))
    assert isinstance(events[-1], Finished)
    assert any(isinstance(e, Started) for e in events)
    result = events[-1].result
    assert result.text == text
    assert 1 <= result.new_tokens <= 12
    assert result.prompt_tokens > 0
    assert result.ttft_s is not None and result.ttft_s > 0
    assert result.finish_reason in (FinishReason.END, FinishReason.MAX_TOKENS)


class Recorder:
    """Record each call's start tokens, then pass the call on."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.starts: list[list[list[str]]] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.starts.append([list(t) for t in start_tokens])
        return self.real.generate_batch(start_tokens, **kw)


async def test_a_submitted_prepared_prompt_is_decoded_as_given_not_rendered_again(
    tiny_engine: Engine,
) -> None:
    """A caller that prepared the prompt already (fitting a conversation measures it)
    hands it over: the engine decodes those tokens and does not encode the request."""
    request = GenerationRequest("hello", Knobs(max_new_tokens=3, min_new_tokens=3, top_k=1))
    other = tiny_engine.prepare(GenerationRequest("a quite different prompt to render"))
    own = tiny_engine.prepare(request)
    assert other.tokens != own.tokens
    recorder = Recorder(tiny_engine.backend)
    tiny_engine.set_backend(recorder)
    result = await tiny_engine.submit(request, other).result()
    assert recorder.starts == [[other.tokens]]
    assert result.prompt_tokens == len(other.tokens)
    await tiny_engine.submit(request).result()  # without one, the request is rendered
    assert recorder.starts[-1] == [own.tokens]


async def test_max_new_tokens_is_a_hard_limit(tiny_engine: Engine) -> None:
    result = await tiny_engine.generate(
        GenerationRequest("count", Knobs(max_new_tokens=7, min_new_tokens=7))
    )
    assert result.new_tokens == 7
    assert result.finish_reason == FinishReason.MAX_TOKENS


async def test_prompt_too_long_is_refused_with_both_numbers(tiny_engine: Engine) -> None:
    ctx = tiny_engine.info.context_length
    with pytest.raises(PromptTooLong) as info:
        tiny_engine.submit(GenerationRequest("word " * (ctx * 2)))
    assert str(ctx) in info.value.message
    assert str(info.value.prompt_tokens) in info.value.message


async def test_reply_is_shortened_to_fit_the_context(tiny_engine: Engine) -> None:
    ctx = tiny_engine.info.context_length
    prompt = "a b " * (ctx // 4)
    prepared = tiny_engine.prepare(GenerationRequest(prompt))
    room = ctx - len(prepared.tokens)
    assert 0 < room < 1024
    result = await tiny_engine.generate(
        GenerationRequest(prompt, Knobs(max_new_tokens=1024, min_new_tokens=1024))
    )
    assert result.clamped_to_context
    assert result.max_new_tokens == room
    assert result.new_tokens == room


async def test_cancel_stops_within_a_token_and_frees_the_engine(tiny_engine: Engine) -> None:
    # At least 5 ms a token, so a busy test machine delaying the consumer's cancel
    # by a few ms cannot let the tiny model run on for 50 tokens.
    tiny_engine.set_backend(Slowed(tiny_engine.backend, delay=0.005))
    gen = tiny_engine.submit(GenerationRequest("go", LONG))
    async for event in gen.events():
        if isinstance(event, TextDelta):
            gen.cancel()
    result = await gen.result()
    assert result.finish_reason == FinishReason.CANCELLED
    assert result.new_tokens < 50
    assert tiny_engine.active == 0
    after = await tiny_engine.generate(GenerationRequest("again", Knobs(max_new_tokens=3)))
    assert after.new_tokens >= 1


async def test_cancel_while_waiting_removes_from_queue(tiny_model_dir: Path) -> None:
    engine = await slow_engine(tiny_model_dir)
    try:
        first = engine.submit(GenerationRequest("one", LONG))
        second = engine.submit(GenerationRequest("two", LONG))
        await asyncio.sleep(0.05)
        second.cancel()
        r2 = await second.result()
        assert r2.finish_reason == FinishReason.CANCELLED and r2.new_tokens == 0
        first.cancel()
        await first.result()
    finally:
        await engine.close()


async def test_concurrent_requests_with_same_knobs_share_a_batch(tiny_engine: Engine) -> None:
    calls: list[int] = []
    real = tiny_engine.backend

    class Spy:
        def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
            calls.append(len(start_tokens))
            return real.generate_batch(start_tokens, **kw)

    tiny_engine.set_backend(Spy())
    gens = [tiny_engine.submit(GenerationRequest(f"prompt {i}", Knobs(max_new_tokens=5)))
            for i in range(4)]
    results = await asyncio.gather(*(g.result() for g in gens))
    assert calls == [4]
    assert all(r.new_tokens >= 1 for r in results)


async def test_each_request_keeps_its_own_max_in_a_batch(tiny_engine: Engine) -> None:
    gens = [
        tiny_engine.submit(GenerationRequest("x", Knobs(max_new_tokens=n, min_new_tokens=3)))
        for n in (3, 9, 20)
    ]
    results = await asyncio.gather(*(g.result() for g in gens))
    assert [r.new_tokens for r in results] == [3, 9, 20]


async def test_queue_positions_are_reported_and_move(tiny_model_dir: Path) -> None:
    engine = await slow_engine(tiny_model_dir)
    try:
        running = engine.submit(GenerationRequest("a", Knobs(max_new_tokens=40, min_new_tokens=40)))
        await asyncio.sleep(0.02)
        b = engine.submit(GenerationRequest("b", Knobs(max_new_tokens=2)))
        c = engine.submit(GenerationRequest("c", Knobs(max_new_tokens=2)))
        c_events = [e async for e in c.events()]
        positions = [e.ahead for e in c_events if isinstance(e, Queued)]
        assert positions[0] == 1 and positions[-1] == 0
        assert (await b.result()).new_tokens >= 1
        await running.result()
    finally:
        await engine.close()


async def test_full_queue_rejects_at_once(tiny_model_dir: Path) -> None:
    engine = await slow_engine(tiny_model_dir, queue_size=2)
    try:
        gens = [engine.submit(GenerationRequest("a", LONG))]
        await asyncio.sleep(0.02)
        gens += [engine.submit(GenerationRequest(f"q{i}", LONG)) for i in range(2)]
        with pytest.raises(QueueFull, match="try again"):
            engine.submit(GenerationRequest("one too many"))
        for g in gens:
            g.cancel()
    finally:
        await engine.close()


async def test_a_failing_model_ends_that_reply_with_an_error_and_keeps_serving(
    tiny_engine: Engine,
) -> None:
    real = tiny_engine.backend
    tiny_engine.set_backend(FailsMidway(real, after=3))  # a CUDA fault three tokens in
    result = await tiny_engine.generate(GenerationRequest("x", LONG))
    assert result.finish_reason == FinishReason.ERROR
    assert result.error and "model failed" in result.error
    assert "CUDA" not in result.error  # internals stay in the log
    tiny_engine.set_backend(real)
    ok = await tiny_engine.generate(GenerationRequest("x", Knobs(max_new_tokens=4)))
    assert ok.error is None and ok.new_tokens >= 1


async def test_event_loop_stays_responsive_while_decoding(tiny_engine: Engine) -> None:
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await tiny_engine.generate(GenerationRequest("x", Knobs(max_new_tokens=300,
                                                            min_new_tokens=300)))
    total = time.perf_counter() - started
    task.cancel()
    # A loop blocked by decoding would show one lag as long as the decode itself; a
    # busy shared machine stretches both, so the bound scales with the decode.
    assert lags and max(lags) < max(0.2, total / 3), (max(lags), total)


async def test_closing_refuses_new_work(tiny_model_dir: Path) -> None:
    engine = await load(tiny_model_dir)
    running = engine.submit(GenerationRequest("a", LONG))
    await engine.close(grace_s=0)
    assert (await running.result()).finish_reason == FinishReason.CANCELLED
    with pytest.raises(ShuttingDown):
        engine.submit(GenerationRequest("b"))


def test_detokenizer_with_the_real_tokenizer(smol_engine_bundle_text: tuple[Any, str]) -> None:
    tokenizer, text = smol_engine_bundle_text
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer.decode)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


@pytest.fixture
def smol_engine_bundle_text(smol_model_dir: Path) -> tuple[Any, str]:
    from bot.model.bundle import load_model_bundle

    bundle = load_model_bundle(smol_model_dir)
    return bundle.tokenizer, "Café 東京 👩‍💻 naïve — 12345 `code()` עברית e\u0301"


async def test_broken_unicode_is_refused_politely(tiny_engine: Engine) -> None:
    with pytest.raises(UserFacingError, match="not valid Unicode"):
        tiny_engine.submit(GenerationRequest("half an emoji \ud83d"))
    with pytest.raises(UserFacingError, match="system prompt"):
        tiny_engine.submit(GenerationRequest("hi", system_prompt="\udfff"))
    odd = "NUL \x00, RTL \u202eabc, zalgo z\u0336\u0337"
    ok = await tiny_engine.generate(GenerationRequest(odd, Knobs(max_new_tokens=3)))
    assert ok.error is None


async def test_newcomer_joins_a_running_batch_and_the_first_reply_is_unchanged(
    tiny_model_dir: Path,
) -> None:
    """A newcomer whose prompt is a little longer than the running reply joins it.

    CTranslate2 reads the shortest prompt in one pass and the rest one token per
    step, so a newcomer at least as long as the running prompt + reply so far costs
    that reply only a re-read: the cost model lets it in.
    """
    greedy = Knobs(top_k=1, max_new_tokens=100)  # no minimum: min_length is per batch
    engine = await load(tiny_model_dir, batch_wait_ms=0, max_batch_size=4)
    engine.set_backend(Slowed(engine.backend, delay=0.03))
    # Pinned costs (a tiny model reads prompts almost for free), so the decision
    # depends on token counts only, not on how busy the test machine is.
    engine.costs = CostModel(prefill_s=0.0001, step_s=0.03, fixed=True)
    try:
        alone = await engine.generate(GenerationRequest("the first question", greedy))
        assert alone.new_tokens == 100  # this prompt does not hit the end token early
        first = engine.submit(GenerationRequest("the first question", greedy))
        async for event in first.events():
            if isinstance(event, TextDelta):
                break
        second = engine.submit(GenerationRequest(
            "a second question, a few words longer than the first one", greedy
        ))
        second_started = None
        async for event in second.events():
            if isinstance(event, TextDelta):
                second_started = time.perf_counter()
                break
        assert not first.done  # the newcomer did not wait for the first reply to end
        r1, r2 = await first.result(), await second.result()
        assert second_started is not None
        assert engine.preemptions >= 1
        assert r1.new_tokens == r2.new_tokens == 100
        assert r1.text == alone.text  # resuming from prompt + tokens so far loses nothing
    finally:
        await engine.close()


async def test_newcomers_do_not_freeze_a_streaming_reply(tiny_model_dir: Path) -> None:
    """Shorter newcomers with the same settings wait for a free lane instead.

    Joining would re-read the running reply's prompt + text one token per step
    (CTranslate2 reads only the shortest prompt in one pass): a visible freeze.
    """
    greedy = Knobs(top_k=1, max_new_tokens=80, min_new_tokens=80)
    engine = await load(tiny_model_dir, batch_wait_ms=0, max_batch_size=4)
    engine.set_backend(Slowed(engine.backend, delay=0.01))
    try:
        first = engine.submit(GenerationRequest("a question that is rather long, " * 4, greedy))
        seen = 0
        async for event in first.events():
            if isinstance(event, TextDelta):
                seen += 1
                if seen == 20:
                    break
        late = [engine.submit(GenerationRequest(f"hi {i}", greedy)) for i in range(3)]
        await first.result()
        assert engine.preemptions == 0
        results = await asyncio.gather(*(g.result() for g in late))
        assert [r.new_tokens for r in results] == [80, 80, 80]
    finally:
        await engine.close()


async def test_default_knobs_decode_under_cuda_rules(smol_model_dir: Path) -> None:
    """Default knobs (top_k -1, top_p 0.95) on a real vocabulary: CUDA's top-p limit holds."""
    engine = await load(smol_model_dir, batch_wait_ms=0)
    try:
        rules = engine.backend
        assert isinstance(rules, CudaRules) and rules.vocab_size == 49152
        unbounded = Knobs().ct2_sampling()
        with pytest.raises(RuntimeError, match="8192 classes"):
            rules.generate_batch([["<|im_start|>"]], max_length=1, **unbounded)
        result = await engine.generate(GenerationRequest("Say hello.", Knobs(max_new_tokens=8)))
        assert result.error is None and result.new_tokens >= 1
        assert rules.calls == 2
    finally:
        await engine.close()


async def test_requests_with_other_settings_get_a_timeslice(tiny_model_dir: Path) -> None:
    engine = await load(tiny_model_dir, batch_wait_ms=0, max_batch_size=4, timeslice_s=0.2)
    engine.set_backend(Slowed(engine.backend, delay=0.01))
    engine.costs = CostModel(prefill_s=0.0001, step_s=0.01, fixed=True)
    try:
        long = engine.submit(GenerationRequest("long", Knobs(max_new_tokens=200,
                                                             min_new_tokens=200)))
        await asyncio.sleep(0.1)
        short = engine.submit(GenerationRequest("short", Knobs(temperature=1.3,
                                                               max_new_tokens=5,
                                                               min_new_tokens=5)))
        r_short = await short.result()
        assert not long.done  # the short one did not wait ~2 s for the long one
        assert r_short.new_tokens == 5
        r_long = await long.result()
        assert r_long.new_tokens == 200 and r_long.finish_reason == FinishReason.MAX_TOKENS
        assert engine.preemptions >= 1
    finally:
        await engine.close()


async def test_closing_an_engine_unloads_only_weights_it_loaded(tiny_model_dir: Path) -> None:
    """`Engine.load` owns its generator and unloads it on close; a second scheduler built
    on those weights (the mixed bench's per-scenario engines) must not unload them for
    everyone when it closes: it did, and the base engine's next batches failed with
    "The model for this translator was unloaded"."""
    base = await Engine.load(
        tiny_model_dir, EngineOptions(device="cpu", cpu_threads=1, batch_wait_ms=5)
    )
    real: Any = base.backend
    knobs = Knobs(max_new_tokens=4, min_new_tokens=4, top_k=1)
    try:
        view = Engine(base.bundle, real, info=base.info)
        assert (await view.generate(GenerationRequest("hi", knobs))).new_tokens == 4
        await view.close()
        assert real.model_is_loaded
        after = await base.generate(GenerationRequest("hi", knobs))
        assert after.error is None and after.new_tokens == 4
    finally:
        await base.close()
    assert not real.model_is_loaded


def _reaches(root: object, target: object) -> bool:
    """Whether `target` can be reached from `root` by references a callback keeps alive.

    Functions are followed through their closures and defaults only (their globals lead
    to every module); classes and modules are not entered.
    """
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if obj is target:
            return True
        if id(obj) in seen or isinstance(obj, type | types.ModuleType):
            continue
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in obj.__closure__ or ())
            stack.extend(obj.__defaults__ or ())
        else:
            stack.extend(gc.get_referents(obj))
    return False


class _KeepsCallbacks:
    """Keeps every callback it is handed, as CTranslate2 does until it frees the job."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.kept: list[Any] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> Any:
        self.kept.append(kw["callback"])
        return self.real.generate_batch(start_tokens, **kw)


async def test_a_callback_ctranslate2_outlives_leads_to_no_generator(tiny_model_dir: Path) -> None:
    """CTranslate2 frees its copy of the callback on the generator's own thread, later.

    If that copy held the last path to the generator, the generator would be destroyed
    on its own worker thread and the process would abort (its thread pool joins itself:
    seen in the suite as 'Fatal Python error: Aborted'). So once a call returns, the
    callback handed to CTranslate2 reaches neither the generator, nor a wrapping
    backend, nor the engine.
    """
    engine = await load(tiny_model_dir, batch_wait_ms=0)
    real = engine.backend
    keeper = _KeepsCallbacks(real)
    slowed = Slowed(keeper, delay=0.0)
    engine.set_backend(slowed)
    try:
        result = await engine.generate(GenerationRequest("hello", Knobs(top_k=1, max_new_tokens=4)))
    finally:
        await engine.close()  # the reply can finish before its call returns: wait for that
    assert result.new_tokens >= 1 and keeper.kept
    for callback in keeper.kept:
        for target in (real, keeper, slowed, engine):
            assert not _reaches(callback, target), type(target).__name__
