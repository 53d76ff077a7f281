"""What stories read off the fake Discord, and the scripted models they talk to.

Helpers several test files share: the custom ids and labels of a message's buttons,
a reply's finished message and its text, an order check on a prompt, a scripted
model that remembers what it read (`RecordingModel`), a script chosen by the
prompt's text (`use_script`), and discord.py with its retry sleeps cut short
(`QuickAsyncio`, behind the `quick_retries` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import discord

from bot.engine import Engine, GenerationRequest, PreparedPrompt
from bot.model.tokenizer import Tokenizer, load_tokenizer
from bot.store.db import Database
from bot.store.turns import NewExchange
from bot.wording import GENERIC
from testing.backends import ScriptedGenerator
from testing.discord_harness import Harness, is_final
from testing.fake_discord import FLAG_EPHEMERAL, FakeInteraction, FakeUser, StoredMessage


def buttons(msg: StoredMessage | dict[str, Any]) -> list[str]:
    """The custom ids of a message's components (a stored message or a payload)."""
    rows = msg.components if isinstance(msg, StoredMessage) else msg.get("components") or []
    return [c.get("custom_id", "") for row in rows for c in row.get("components", [])]


def labels(msg: StoredMessage) -> list[str]:
    return [c.get("label", "") for row in msg.components for c in row.get("components", [])]


def button(msg: StoredMessage, prefix: str) -> str:
    """The custom id of the message's first button starting with `prefix`; fails if none."""
    found = [c for c in buttons(msg) if c.startswith(prefix)]
    assert found, f"no {prefix} button on {msg.content!r}: {buttons(msg)}"
    return found[0]


def final_message(itx: FakeInteraction) -> StoredMessage:
    """The last message of a reply that carries its footer."""
    msgs = [m for m in [itx.original, *itx.followups] if m is not None]
    return next(m for m in reversed(msgs) if is_final(m.content))


def body(itx: FakeInteraction) -> str:
    """The reply's text without the quoted prompt and the footer."""
    assert itx.original is not None
    return itx.original.content.split("\n", 1)[1].rsplit("\n-# ", 1)[0]


def in_order(text: str, *parts: str) -> bool:
    """Whether every part occurs in `text`, each after the previous one."""
    at = 0
    for part in parts:
        found = text.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


class RecordingModel:
    """A script that remembers each prompt it read, as text and as token ids.

    Its N-th answer is `answer(N)` ("Answer N." unless told), so a story knows what
    the model "said" and can check which turns a follow-up carried to it.
    """

    def __init__(self, model_dir: Path, answer: Callable[[int], str] | None = None) -> None:
        self.model_dir = model_dir
        self.prompts: list[str] = []
        self.ids: list[list[int]] = []
        self.lengths: list[int] = []
        self.answer = answer or (lambda n: f"Answer {n}.")

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """Loaded on first use, on the engine's thread: not on the test's event loop."""
        return load_tokenizer(self.model_dir)

    def __call__(self, tokens: list[str]) -> str:
        ids = [i for i in (self.tokenizer.token_to_id(t) for t in tokens) if i is not None]
        self.ids.append(ids)
        self.prompts.append(self.tokenizer.decode(ids))
        self.lengths.append(len(tokens))
        return self.answer(len(self.prompts))

    @property
    def last(self) -> str:
        return self.prompts[-1]


def scripted(engine: Engine, text_for: Callable[[str], str], delay: float) -> ScriptedGenerator:
    """Scripted replies chosen by the prompt's text; they resume after a preemption."""
    return ScriptedGenerator(engine.bundle.tokenizer, lambda toks: text_for("".join(toks)), delay)


def use_script(engine: Engine, text_for: Callable[[str], str], delay: float) -> None:
    """From the next batch on, the engine's model answers `text_for(prompt text)`."""
    engine.set_backend(scripted(engine, text_for, delay))


class QuickAsyncio(ModuleType):
    """`asyncio` as discord.py sees it, with its retry sleeps capped at 50 ms."""

    def __init__(self) -> None:
        super().__init__("asyncio")

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(min(delay, 0.05), result)


def _private_refusal(itx: FakeInteraction) -> dict[str, Any] | None:
    """The refusal's message data once it is there: the response itself, or an
    ephemeral follow-up after a deferral whose "thinking" message was deleted."""
    resp = itx.response
    if resp is None:
        return None
    if resp.type == 4:
        return resp.data
    original = itx.original
    if resp.type == 5 and original is not None and not original.deleted:
        return None
    return next(({"content": m.content, "flags": m.flags} for m in itx.followups
                 if m.flags & FLAG_EPHEMERAL), None)


async def refused(itx: FakeInteraction, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 - tests read better with timeout=
    """The private refusal a press got, as message data (`content`, `flags`).

    A press answered in memory is refused in its response; one acknowledged before
    its store reads (Regenerate) is refused in an ephemeral follow-up, its deferred
    "thinking" message deleted.
    """
    data = await itx.fake.wait_for(lambda: _private_refusal(itx), timeout=timeout)
    assert int(data.get("flags") or 0) & FLAG_EPHEMERAL, data
    return data


def refusal_of(itx: FakeInteraction) -> str:
    """The private refusal an interaction got (never the generic apology)."""
    resp = itx.response
    assert resp is not None, "the interaction was never answered"
    data = _private_refusal(itx)
    assert data is not None and data["flags"] & FLAG_EPHEMERAL, resp
    text = str(data["content"])
    assert GENERIC not in text
    return text


#: Two members of the stories' conversations, by id.
ADA, BEN = 101, 202


def exchange(parent: int | None, q: str, a: str, *, author: int = ADA, private: bool = False,
             head: str | None = None, messages: tuple[int, ...] = ()) -> NewExchange:
    """A question and its answer as the turn store takes them (Ada's unless `author`)."""
    return NewExchange(parent_id=parent, question=q, answer=a, author_id=author,
                       author_name="Ada" if author == ADA else "Ben", ask_id=None,
                       guild_id=1, channel_id=2, private=private, head=head,
                       answer_message_ids=messages)


def watch_prepares(engine: Engine, monkeypatch: Any) -> list[GenerationRequest]:
    """Every request the engine renders and encodes from now on (a pytest monkeypatch)."""
    seen: list[GenerationRequest] = []
    real = engine.prepare

    def prepare(request: GenerationRequest) -> PreparedPrompt:
        seen.append(request)
        return real(request)

    monkeypatch.setattr(engine, "prepare", prepare)
    return seen


#: Manage Channels and Manage Server: may import a card and save it by name.
CARD_ADMIN = str(discord.Permissions(manage_channels=True, manage_guild=True).value)


async def import_card(h: Harness, data: bytes, *, filename: str = "card.json",
                      greeting: bool = False, claimed: int | None = None,
                      permissions: str = CARD_ADMIN, channel_id: int | None = None,
                      dm: FakeUser | None = None) -> FakeInteraction:
    """`/system import card:<attachment> [greeting:true]` in #general (or `channel_id`,
    or the DM of `dm`)."""
    option, resolved = h.fake.attachment("card", data, filename=filename, claimed_size=claimed)
    options = [option]
    if greeting:
        options.append({"name": "greeting", "type": 5, "value": True})
    if dm is not None:
        return await h.fake.inject_interaction("system import", options, resolved=resolved,
                                               dm=True, user=dm)
    return await h.fake.inject_interaction("system import", options, resolved=resolved,
                                           channel_id=channel_id or h.general,
                                           permissions=permissions)


@contextlib.asynccontextmanager
async def reads_held(db: Database) -> AsyncIterator[asyncio.Task[object]]:
    """Every read of `db` waits until the block ends: its read connection runs a query
    that does not return until then (the reads queue behind it, as under load)."""
    release = threading.Event()
    reader = db._reader  # type: ignore[attr-defined]  # the SQLite reader: its queue is the point

    def held() -> int:
        release.wait(30)
        return 1

    await reader.create_function("held", 0, held)
    holding = asyncio.create_task(db.read("SELECT held()", ()))
    try:
        yield holding
    finally:
        release.set()
        await holding
