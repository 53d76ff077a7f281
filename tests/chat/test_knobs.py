"""The knobs model: ranges, messages, parsing and the CTranslate2 mapping."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import InvalidKnobs
from bot.knobs import (
    KNOB_SPECS,
    Knobs,
    build_knobs,
    escape_stop,
    parse_knob_text,
    unescape_stop,
)


def test_defaults_follow_the_guide() -> None:
    k = Knobs()
    assert (k.temperature, k.top_p, k.top_k) == (0.7, 0.95, -1)
    # max_new_tokens: 512, measured for chat (the guide's demos use 128).
    assert (k.max_new_tokens, k.min_new_tokens, k.stop, k.repetition_penalty) == (512, -1, (), 0.0)


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("temperature", 0.1, 5), ("top_p", 0, 1), ("top_k", -1, 50), ("max_new_tokens", 1, 1024),
     ("min_new_tokens", -1, 1024), ("repetition_penalty", 0, 2)],
)
def test_ranges_are_the_single_source_of_truth(name: str, lo: float, hi: float) -> None:
    spec = KNOB_SPECS[name]
    assert (spec.minimum, spec.maximum) == (lo, hi)
    values: dict[str, Any] = {"max_new_tokens": 1024} if name == "min_new_tokens" else {}
    build_knobs({**values, name: lo})
    build_knobs({**values, name: hi})
    with pytest.raises(InvalidKnobs, match=name):
        build_knobs({**values, name: hi + 1})
    with pytest.raises(InvalidKnobs, match=name):
        build_knobs({**values, name: lo - 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "hot", None, [1]])
def test_nonsense_values_are_rejected_with_the_knob_named(bad: Any) -> None:
    with pytest.raises(InvalidKnobs, match="temperature") as info:
        build_knobs({"temperature": bad})
    assert "0.1 to 5" in info.value.message


def test_min_above_max_is_an_error() -> None:
    with pytest.raises(InvalidKnobs, match="min_new_tokens"):
        build_knobs({"max_new_tokens": 10, "min_new_tokens": 11})


@pytest.mark.parametrize(
    "stop", [["a"] * 5, [""], ["x" * 65], ["ok\x00"], ["\ud800"], [3]],
)
def test_bad_stop_sequences(stop: list[Any]) -> None:
    with pytest.raises(InvalidKnobs, match="stop"):
        build_knobs({"stop": stop})


def test_unknown_knob_named() -> None:
    with pytest.raises(InvalidKnobs, match="`temprature`"):
        build_knobs({"temprature": 1.0})


def test_ct2_mapping() -> None:
    assert Knobs().ct2_sampling() == {
        "sampling_temperature": 0.7, "sampling_topk": 0, "sampling_topp": 0.95,
        "repetition_penalty": 1.0, "min_length": 0,
    }
    k = Knobs(top_k=40, repetition_penalty=0.3, min_new_tokens=5)
    kw = k.ct2_sampling()
    assert kw["sampling_topk"] == 40
    assert kw["repetition_penalty"] == pytest.approx(1.3)
    assert kw["min_length"] == 5
    # top_p = 0 keeps only the most likely token.
    assert Knobs(top_p=0).ct2_sampling()["sampling_topk"] == 1


def test_parse_text_and_escapes() -> None:
    assert parse_knob_text("temperature", " 0.9 ") == 0.9
    assert parse_knob_text("top_k", "40") == 40
    assert parse_knob_text("stop", r"\n\n|END") == ("\n\n", "END")
    assert parse_knob_text("stop", r"a\|b") == ("a|b",)
    assert parse_knob_text("stop", "none") == ()
    with pytest.raises(InvalidKnobs, match="whole number"):
        parse_knob_text("top_k", "4.5")
    with pytest.raises(InvalidKnobs, match="Unknown"):
        parse_knob_text("nope", "1")


@given(st.text(max_size=30))
def test_escape_round_trip(text: str) -> None:
    assert unescape_stop(escape_stop(text)) == text


@given(st.one_of(st.floats(), st.integers(), st.text(max_size=8), st.none(), st.booleans()))
def test_any_value_either_validates_or_raises_invalid_knobs(value: Any) -> None:
    for name in KNOB_SPECS:
        try:
            build_knobs({name: value} if name != "min_new_tokens" else
                        {name: value, "max_new_tokens": 1024})
        except InvalidKnobs as exc:
            assert name in exc.message
