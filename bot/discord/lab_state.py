"""What the lab keeps between presses: the turn a view runs, the reply asked about,
/probs walks, and the bounded store of recent views they live in.

Apart from the lab's runner (bot/discord/lab.py) so that the views it opens
(bot/discord/inspect.py) can name these without importing the runner.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bot.engine import GenerationRequest
from bot.lab.probs import ProbsStep

T = TypeVar("T")


@dataclass(frozen=True)
class LabTurn:
    """What a lab view runs: the request as an ask here makes it, and the turn's model."""

    request: GenerationRequest
    model: str
    """The model the scope (or the conversation) uses, as `/model list` names it."""


@dataclass
class Walk:
    """One /probs view a member steps through: the request and the reply so far."""

    id: int
    """The /probs interaction's id, which its buttons carry."""
    user_id: int
    request: GenerationRequest
    model: str
    step: ProbsStep
    header: str
    private: bool
    choices: tuple[int, ...] = ()
    created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class AskedReply:
    """A finished reply as its ask left it: the request it came from, its text, its ids."""

    turn: LabTurn
    text: str
    private: bool
    ids: tuple[int, ...]
    """The ids the model wrote (empty for a reply stored before they were kept)."""


class Expiring(Generic[T]):
    """A bounded LRU of recent views (walks, comparisons); old or surplus ones are dropped."""

    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, key: str, value: T) -> None:
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, key: str) -> T | None:
        found = self._items.get(key)
        if found is None:
            return None
        if time.monotonic() - found[0] > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return found[1]

    def __len__(self) -> int:
        return len(self._items)
