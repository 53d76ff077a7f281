"""Pagination of long replies and edit coalescing, without Discord."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.discord.pages import CoalescingEditor, Paginator, quote_prompt


def fences_balanced(page: str) -> bool:
    return sum(1 for line in page.split("\n") if line.strip().startswith("```")) % 2 == 0


def test_short_text_is_one_page() -> None:
    assert Paginator(100).pages("hello") == ["hello"]


def test_split_at_paragraph_then_line_then_word() -> None:
    text = ("word " * 30).strip() + "\n\n" + ("more " * 30).strip()
    pages = Paginator(200).pages(text)
    assert pages[0].endswith("word")
    assert pages[1].startswith("more")
    for page in pages:
        assert len(page) <= 200


def test_never_splits_inside_a_word() -> None:
    words = [random.Random(i).choice(["alpha", "beta", "gamma", "delta"]) for i in range(400)]
    text = " ".join(words)
    pages = Paginator(150).pages(text)
    rebuilt = " ".join(p.strip() for p in pages).split()
    assert rebuilt == words
    assert all(len(p) <= 150 for p in pages)


def test_code_fence_closed_and_reopened_across_pages() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(60))
    text = "Here:\n```python\n" + code + "\n```\nDone."
    pages = Paginator(300).pages(text)
    assert len(pages) > 2
    for page in pages:
        assert fences_balanced(page), page
        assert len(page) <= 300
    assert pages[1].startswith("```python\n")


def test_frozen_pages_never_change_as_text_grows() -> None:
    pag = Paginator(120)
    text = ""
    seen: list[str] = []
    for i in range(200):
        text += f"token{i} "
        pages = pag.pages(text)
        for j, old in enumerate(seen[:-1]):
            assert pages[j] == old
        seen = pages
    assert "".join(p.replace(" ", "") for p in seen) == text.replace(" ", "")


@settings(max_examples=60)
@given(st.text(alphabet=st.sampled_from(list("ab \n`é")), max_size=1500),
       st.integers(min_value=60, max_value=400))
def test_pages_respect_the_limit_and_keep_the_text(text: str, limit: int) -> None:
    pages = Paginator(limit).pages(text, reserve_last=20)
    assert all(len(p) <= limit for p in pages[:-1])
    assert len(pages[-1]) + 20 <= limit + 8 or len(pages) == 1
    squashed = "".join(text.split())
    got = "".join("".join(p.split()) for p in pages)
    # Only fence markers may have been added.
    assert got.replace("`", "") == squashed.replace("`", "")


def test_quote_prompt_is_one_trimmed_line() -> None:
    q = quote_prompt("line one\nline two " + "x" * 500, limit=50)
    assert q.startswith("> ") and "\n" not in q and len(q) <= 52 and q.endswith("…")


async def test_coalescing_editor_sends_few_edits_and_the_final_text() -> None:
    sent: list[str] = []
    in_flight = 0
    max_in_flight = 0

    async def send(content: str) -> None:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        await asyncio.sleep(0.02)
        sent.append(content)
        in_flight -= 1

    editor = CoalescingEditor(send, interval=0.1)
    text = ""
    for i in range(100):
        text += f"{i} "
        editor.update(text)
        await asyncio.sleep(0.005)
    await editor.finish(text + "[done]")
    assert sent[-1] == text + "[done]"
    assert len(sent) <= 10  # ~0.5 s of updates at one edit per 0.1 s, not 100
    assert max_in_flight == 1
    assert all(sent[i] != sent[i + 1] for i in range(len(sent) - 1))
