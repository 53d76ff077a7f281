"""The <think> splitter: tags split anywhere, implicit opening, odd output, stored text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.model.reasoning import (
    UNFINISHED_NOTE,
    Phase,
    ReasoningSplitter,
    SplitResult,
    split_reasoning,
    strip_reasoning,
)


def run(pieces: list[str], *, implicit_open: bool = True) -> tuple[SplitResult, str, str]:
    """Final result plus the concatenated streamed deltas (must agree with it)."""
    splitter = ReasoningSplitter(implicit_open=implicit_open)
    reasoning, answer = [], []
    for piece in pieces:
        delta = splitter.feed(piece)
        reasoning.append(delta.reasoning)
        answer.append(delta.answer)
        assert "<think>" not in delta.answer and "</think>" not in delta.answer
    last = splitter.flush()
    reasoning.append(last.reasoning)
    answer.append(last.answer)
    result = splitter.final()
    return result, "".join(reasoning), "".join(answer)


TEXT = "<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4."


@pytest.mark.parametrize("implicit_open", [True, False])
def test_tags_split_at_every_position_of_the_reply(implicit_open: bool) -> None:
    for cut in range(len(TEXT) + 1):
        result, streamed_reasoning, streamed_answer = run(
            [TEXT[:cut], TEXT[cut:]], implicit_open=implicit_open)
        assert result == SplitResult("Let me add 2 and 2.", "The answer is 4.", False), cut
        assert streamed_answer.strip() == "The answer is 4."
        assert streamed_reasoning.strip() == "Let me add 2 and 2."


def test_one_character_at_a_time_with_the_phase_as_it_streams() -> None:
    splitter = ReasoningSplitter(implicit_open=False)
    phases = []
    for ch in TEXT:
        splitter.feed(ch)
        phases.append(splitter.phase)
    assert phases[0] is Phase.START
    assert Phase.THINKING in phases
    assert phases[-1] is Phase.ANSWER
    # Thinking is reported from the moment "<think>" is complete, not before.
    assert phases[len("<think>") - 2] is Phase.START
    assert phases[len("<think>") - 1] is Phase.THINKING
    assert splitter.answer == "The answer is 4."
    assert splitter.reasoning == "Let me add 2 and 2."


def test_implicit_open_only_the_closing_tag_appears() -> None:
    result, _, answer = run(["Hmm, 2+2", " is 4.</thi", "nk>", "\n\nIt is 4."])
    assert result == SplitResult("Hmm, 2+2 is 4.", "It is 4.", False)
    assert answer == "It is 4."


def test_explicit_mode_without_tags_is_all_answer() -> None:
    result, _, answer = run(["Just an ", "answer <b>bold</b> a<", "thinker"],
                            implicit_open=False)
    assert result == SplitResult("", "Just an answer <b>bold</b> a<thinker", False)
    assert answer == "Just an answer <b>bold</b> a<thinker"


def test_a_half_tag_at_the_very_end_is_text() -> None:
    result, _, _ = run(["It ends with </thi"], implicit_open=False)
    assert result.answer == "It ends with </thi"
    result, _, _ = run(["<thi"], implicit_open=False)
    assert result.answer == "<thi"


def test_ending_mid_thought_has_no_answer_and_says_so() -> None:
    result, _, answer = run(["<think>I need to consider", " many things"])
    assert result.unfinished and result.answer == "" and answer == ""
    assert result.reasoning == "I need to consider many things"
    assert result.shown_answer() == UNFINISHED_NOTE
    done, _, _ = run(["<think>x</think>ok"])
    assert done.shown_answer() == "ok"


def test_duplicate_nested_and_stray_tags() -> None:
    # A repeated <think> inside the reasoning is dropped; the first </think> ends it.
    result, _, _ = run(["<think>a <think>b</think> answer </think> tail"])
    assert result == SplitResult("a b", "answer  tail", False)
    # A second reasoning block later never counts as answer.
    result, _, answer = run(["<think>one</think>Part 1. <think>two</think>Part 2."])
    assert result.reasoning == "one\n\ntwo"
    assert result.answer == "Part 1. Part 2." and answer == "Part 1. Part 2."
    # ... even when it never closes.
    result, _, _ = run(["<think>one</think>Part 1. <think>still going"])
    assert result.answer == "Part 1." and result.unfinished


def test_leading_whitespace_before_an_explicit_tag() -> None:
    result, _, _ = run(["  \n", " <thi", "nk>why</think> because"], implicit_open=False)
    assert result == SplitResult("why", "because", False)


def test_strip_reasoning_for_stored_turns() -> None:
    assert strip_reasoning(TEXT) == "The answer is 4."
    assert strip_reasoning("thinking without an opening tag</think>\nAnswer.") == "Answer."
    assert strip_reasoning("No reasoning here, <b>tags</b> untouched.  ") == (
        "No reasoning here, <b>tags</b> untouched.  ")
    assert strip_reasoning("<think>never finished") == ""
    assert split_reasoning("a</think>b<think>c</think>d") == SplitResult("a\n\nc", "bd", False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.text(alphabet="ab <>/\n", max_size=20),
    st.text(alphabet="ab <>/\n", max_size=20),
    st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_any_split_of_any_reply_gives_the_same_result(reasoning: str, answer: str,
                                                      cuts: list[int]) -> None:
    text = f"<think>{reasoning}</think>{answer}"
    whole = ReasoningSplitter()
    whole.feed(text)
    expected = whole.final()
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    result, streamed_reasoning, streamed_answer = run(pieces)
    assert result == expected
    assert streamed_answer.strip() == result.answer
    assert streamed_reasoning.strip() == result.reasoning
    assert "<think>" not in result.answer and "</think>" not in result.answer
