"""Fairness between users: replies in progress per user and a cooldown.

The engine's queue bounds the total; this keeps one person from filling it.
Kept apart from Discord so the console and benchmarks can use it too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from bot.errors import UserFacingError


class AskGate:
    def __init__(self, per_user_limit: int = 1, cooldown_s: float = 0.0) -> None:
        self.per_user_limit = per_user_limit
        self.cooldown_s = cooldown_s
        self._active: dict[int, int] = {}
        self._last: dict[int, float] = {}

    def check(self, user_id: int) -> None:
        """Raise a polite error if this user may not ask right now."""
        active = self._active.get(user_id, 0)
        if active >= self.per_user_limit:
            if self.per_user_limit == 1:
                raise UserFacingError(
                    "You already have a reply in progress; wait for it to finish or press Stop."
                )
            raise UserFacingError(
                f"You already have {active} replies in progress (the limit is "
                f"{self.per_user_limit}); wait for one to finish."
            )
        if self.cooldown_s > 0:
            since = time.monotonic() - self._last.get(user_id, -1e9)
            if since < self.cooldown_s:
                raise UserFacingError(
                    f"Slow down a little: try again in {self.cooldown_s - since:.0f} s."
                )

    @contextmanager
    def hold(self, user_id: int) -> Iterator[None]:
        """Count a reply in progress for `user_id` until the block ends."""
        self.check(user_id)
        self._active[user_id] = self._active.get(user_id, 0) + 1
        self._last[user_id] = time.monotonic()
        try:
            yield
        finally:
            left = self._active.get(user_id, 1) - 1
            if left > 0:
                self._active[user_id] = left
            else:
                self._active.pop(user_id, None)

    def active(self, user_id: int) -> int:
        return self._active.get(user_id, 0)
