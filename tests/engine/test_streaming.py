"""The incremental detokenizer and the stop-sequence matcher, on their own."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from bot.engine.streaming import IncrementalDetokenizer, StopMatcher


def byte_decode(ids: Sequence[int]) -> str:
    """A byte-level 'tokenizer': one token per UTF-8 byte, like byte-level BPE's worst case."""
    return bytes(ids).decode("utf-8", errors="replace")


def stream_bytes(text: str) -> list[str]:
    detok = IncrementalDetokenizer(byte_decode)
    deltas = [detok.push(b) for b in text.encode("utf-8")]
    deltas.append(detok.flush())
    return deltas


def test_multibyte_characters_are_never_split() -> None:
    text = "café 東京 👩‍💻 ok"
    deltas = stream_bytes(text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # The 4-byte emoji arrives in one piece, not as four partial deltas.
    assert "👩" in deltas


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_unicode_round_trips_without_replacement(text: str) -> None:
    deltas = stream_bytes(text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas if "\ufffd" not in text)


def feed_all(stops: list[str], chunks: list[str]) -> tuple[str, StopMatcher]:
    m = StopMatcher(stops)
    out = "".join(m.feed(c) for c in chunks)
    out += m.flush()
    return out, m


def test_stop_sequence_cuts_before_and_is_never_shown() -> None:
    out, m = feed_all(["\n\nUser:"], ["Hello", " there", "\n", "\nUs", "er:", " more"])
    assert out == "Hello there"
    assert m.stopped and m.matched == "\n\nUser:"


def test_partial_match_is_held_then_released() -> None:
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc "  # "E" could start END: held back
    assert m.feed("N") == ""
    assert m.feed("d") == "ENd"  # it was not END after all
    assert not m.stopped


def test_earliest_of_several_stops_wins() -> None:
    out, m = feed_all(["world", "lo w"], ["hello world"])
    assert out == "hel"
    assert m.matched == "lo w"


def test_held_tail_is_released_at_the_end() -> None:
    out, m = feed_all(["STOP"], ["the end ST"])
    assert out == "the end ST"
    assert not m.stopped


@given(
    st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=20),
    st.text(min_size=1, max_size=4),
)
def test_streamed_equals_whole_text_cut(chunks: list[str], stop: str) -> None:
    whole = "".join(chunks)
    out, _ = feed_all([stop], chunks)
    idx = whole.find(stop)
    assert out == (whole if idx == -1 else whole[:idx])
