"""The batching policy on its own: requests in a deque, no engine, no model call, no clock.

Each case builds the queue a scheduler could hold (fresh requests, and replies
already streaming, with the tiny model's real tokenizer behind their decoding
state) and asks the policy what it would do, with a pinned `CostModel`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from bot.engine import Finished, GenerationRequest, PreparedPrompt
from bot.engine.generation import Generation, Slot, cancelled_result
from bot.engine.policy import (
    SKEW_TOKENS,
    STALL_STEPS,
    CostModel,
    PersonaCache,
    compatible,
    fits,
    free_lanes,
    preempt_reason,
    reread_s,
    take_batch,
)
from bot.knobs import Knobs
from bot.model.bundle import ModelBundle, load_model_bundle

PERSONA = [f"▁p{i}" for i in range(40)]


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path) -> ModelBundle:
    return load_model_bundle(tiny_model_dir)


def request(length: int, *, temperature: float = 0.7, persona: list[str] | None = None,
            max_new: int = 64) -> Generation:
    """A submitted request whose prompt reads `length` tokens besides its persona."""
    prefix = persona or []
    tokens = prefix + [f"▁t{i}" for i in range(length)]
    prepared = PreparedPrompt(tokens=tokens, max_new_tokens=max_new, clamped=False,
                              prefix_tokens=len(prefix))
    return Generation(GenerationRequest("hi", Knobs(temperature=temperature)), prepared,
                      on_cancel=lambda gen: None, on_finished=lambda gen: None)


def streaming(bundle: ModelBundle, length: int, *, new_tokens: int = 0,
              persona: list[str] | None = None) -> Generation:
    """A request already decoding: it has a slot and `new_tokens` of its reply."""
    gen = request(length, persona=persona)
    gen.slot = Slot(gen, bundle, frozenset(bundle.end_token_ids))
    gen.slot.new_tokens = new_tokens
    gen.slot.generated = ["▁r"] * new_tokens
    return gen


CHEAP = CostModel(prefill_s=0.0001, step_s=0.03, fixed=True)
DEAR = CostModel(prefill_s=0.01, step_s=0.03, fixed=True)
NO_CACHE = PersonaCache(0, 0)


async def test_compatible_means_same_sampling_and_same_persona() -> None:
    a = request(40)
    assert compatible(a, request(90))
    assert not compatible(a, request(40, temperature=1.1))
    assert not compatible(a, request(40, persona=PERSONA))
    assert compatible(request(10, persona=PERSONA), request(30, persona=PERSONA))


async def test_fits_allows_a_short_skew_and_holds_streaming_replies_to_a_few_steps(
    bundle: ModelBundle,
) -> None:
    assert fits([request(40), request(40 + SKEW_TOKENS)], running=())
    assert not fits([request(40), request(40 + SKEW_TOKENS + 1)], running=())
    # A quarter of a long shortest prompt is allowed too.
    assert fits([request(200), request(250)], running=())
    assert not fits([request(200), request(251)], running=())
    # A reply that is streaming may wait STALL_STEPS steps, not SKEW_TOKENS.
    live = streaming(bundle, 40 + STALL_STEPS + 1)
    assert not fits([live, request(40)], running={live})
    assert fits([live, request(41)], running={live})
    # The same reply resumed after a timeslice (not running, not joining) may wait longer.
    assert fits([live, request(40)], running=())
    assert live.slot is not None
    live.slot.joining = True
    assert not fits([live, request(40)], running=())


async def test_take_batch_takes_the_head_and_compatible_requests_and_keeps_the_rest_in_order(
) -> None:
    same = [request(40) for _ in range(6)]
    other = request(40, temperature=1.1)
    too_long = request(120)
    waiting = deque([same[0], other, same[1], too_long, *same[2:]])
    batch = take_batch(waiting, max_batch=4, lanes=1, running=())
    assert batch == same[:4]
    assert list(waiting) == [other, too_long, *same[4:]]


async def test_take_batch_splits_a_burst_between_free_lanes_unless_others_need_one() -> None:
    same = [request(40) for _ in range(6)]
    waiting = deque(same)
    assert take_batch(waiting, max_batch=8, lanes=2, running=()) == same[:3]
    assert list(waiting) == same[3:]
    # Another kind waits too: it gets the second lane, this kind is not spread over it.
    other = request(40, temperature=1.1)
    waiting = deque([*same, other])
    assert take_batch(waiting, max_batch=8, lanes=2, running=()) == same
    assert list(waiting) == [other]


async def test_free_lanes_counts_a_lane_whose_replies_all_finished_as_free() -> None:
    busy, finished = request(40), request(40)
    finished.emit(Finished(cancelled_result(finished)))
    assert free_lanes(2, [[busy]]) == 1
    assert free_lanes(2, [[finished]]) == 2
    assert free_lanes(2, [[busy], [busy]]) == 1  # the lane asking is free


async def test_reread_cost_counts_prompts_replies_so_far_and_uncached_personas(
    bundle: ModelBundle,
) -> None:
    a = streaming(bundle, 40, new_tokens=10, persona=PERSONA)
    b = streaming(bundle, 30, persona=PERSONA)
    costs = CostModel(prefill_s=0.001, step_s=0.03, fixed=True)
    # 50 + 30 tokens each, plus the shared persona once.
    assert reread_s([a, b], NO_CACHE, costs) == pytest.approx((50 + 30 + 40) * 0.001)
    cache = PersonaCache(10**9, 1)
    assert a.slot is not None and cache.admit(a.slot.prefix())
    assert reread_s([a, b], cache, costs) == pytest.approx((50 + 30) * 0.001)


def decide(batch: list[Generation], waiting: list[Generation], *, costs: CostModel = CHEAP,
           max_batch: int = 4, timeslice_s: float = 2.0, decoding_s: float = 0.5) -> str | None:
    return preempt_reason(batch, deque(waiting), running=set(batch), max_batch=max_batch,
                          timeslice_s=timeslice_s, decoding_s=decoding_s, cache=NO_CACHE,
                          costs=costs)


async def test_a_compatible_newcomer_joins_when_the_reread_is_cheap(bundle: ModelBundle) -> None:
    live = streaming(bundle, 40)
    assert decide([live], []) is None
    assert decide([live], [request(40)]) == "join"
    # Reading 80 tokens at 10 ms each would stall the stream far beyond a few steps.
    assert decide([live], [request(40)], costs=DEAR) is None
    # A batch already at its limit takes nobody.
    assert decide([live], [request(40)], max_batch=1) is None


async def test_a_batch_about_to_finish_never_yields(bundle: ModelBundle) -> None:
    nearly = streaming(bundle, 40, new_tokens=50)  # 14 of 64 tokens left
    assert decide([nearly], [request(40)]) is None
    assert decide([nearly], [request(40, temperature=1.1)], decoding_s=10.0) is None


async def test_other_settings_get_their_turn_after_a_timeslice_that_covers_the_reread(
    bundle: ModelBundle,
) -> None:
    live = streaming(bundle, 40)
    other = request(40, temperature=1.1)
    assert decide([live], [other], decoding_s=1.9) is None
    assert decide([live], [other], decoding_s=2.0) == "timeslice"
    assert decide([live], [other], timeslice_s=0.0, decoding_s=60.0) is None
    # Re-reading 40 tokens at 10 ms is 0.4 s, so the slice lasts at least 1.6 s.
    assert decide([live], [other], costs=DEAR, timeslice_s=0.5, decoding_s=1.55) is None
    assert decide([live], [other], costs=DEAR, timeslice_s=0.5, decoding_s=1.65) == "timeslice"


def test_the_cost_model_ignores_the_first_call_then_follows_measurements() -> None:
    costs = CostModel.for_device("cpu")
    guess = (costs.prefill_s, costs.step_s)
    costs.observe(read_tokens=100, first_s=1.0, steps=10, decode_s=1.0)
    assert (costs.prefill_s, costs.step_s) == guess  # a first call pays one-off set-up
    costs.observe(read_tokens=100, first_s=0.11, steps=10, decode_s=0.1)
    assert costs.step_s == pytest.approx(0.01)
    assert costs.prefill_s == pytest.approx(0.001)
    costs.observe(read_tokens=100, first_s=0.11, steps=10, decode_s=0.2)
    assert costs.step_s == pytest.approx(0.01 + 0.3 * 0.01)
    pinned = CostModel(prefill_s=0.5, step_s=0.5, fixed=True)
    for _ in range(3):
        pinned.observe(read_tokens=100, first_s=0.11, steps=10, decode_s=0.1)
    assert (pinned.prefill_s, pinned.step_s) == (0.5, 0.5)
    assert CostModel.for_device("cuda").step_s < guess[1]
