"""Fairness between users: replies in progress per user, a cooldown, settings writes.

The engine's queue bounds the total; `AskGate` keeps one person from filling
it, and `SettingsWriteLimiter` keeps one member from flooding the settings
database and its audit trail. Kept apart from Discord so the console and
benchmarks can use them too; `bot.app.App` builds one of each kind it needs.

One host (SQLite) keeps this state in memory: no SQL on an ask. Several hosts
on one PostgreSQL database pass a `SharedLimits` (`bot.store.member_limits`),
so a member's limits hold across every host; the in-memory count still runs
first and refuses this host's own duplicates without a round trip.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot import wording
from bot.errors import UserFacingError

#: Members tracked before those with no write left in the window are forgotten.
_TRACKED_LIMIT = 10_000


@dataclass(frozen=True)
class Claim:
    """A shared claim's answer: the slot taken (None when refused), the member's live
    slots on every host (this one included), and the cooldown left when that refused."""

    slot_id: int | None
    active: int
    wait_s: float


@dataclass(frozen=True)
class WriteTaken:
    """A settings write counted for `actor_id`: its stamp here, or its row on every host."""

    actor_id: int
    at: float | None = None
    shared_id: int | None = None


class SharedLimits(Protocol):
    """Limits kept where every host sees them (`bot.store.member_limits.MemberLimits`)."""

    async def claim(self, member: int, limit: int, cooldown_s: float) -> Claim: ...

    def accepted(self, member: int) -> None: ...

    def release(self, member: int, slot_id: int) -> None: ...

    async def write_wait(self, member: int, limit: int, window_s: float) -> float | None: ...

    async def write_take(self, member: int, limit: int, window_s: float,
                         ) -> tuple[int | None, float]: ...

    async def write_refund(self, write_id: int) -> None: ...


class Slot:
    """One reply in progress for a member, held until `release` (or the `with` block ends)."""

    def __init__(self, gate: AskGate, user_id: int) -> None:
        self.gate = gate
        self.user_id = user_id
        self.shared_id: int | None = None
        self._held = True

    async def share(self) -> None:
        """Claim this slot on every host (no-op on one host, or once claimed); refused as
        this host would refuse, the slot then freed."""
        shared = self.gate.shared
        if shared is None or self.shared_id is not None or not self._held:
            return
        gate = self.gate
        try:
            claim = await shared.claim(self.user_id, gate.per_user_limit, gate.cooldown_s)
        except BaseException:
            self.release()
            raise
        if claim.slot_id is None:
            self.release()
            if claim.wait_s > 0:
                raise UserFacingError(wording.slow_down(claim.wait_s))
            raise UserFacingError(wording.in_progress(claim.active, gate.per_user_limit))
        if not self._held:  # released while the claim was in flight: free it there too
            shared.release(self.user_id, claim.slot_id)
            return
        self.shared_id = claim.slot_id

    def release(self) -> None:
        """Free the slot (again is a no-op): here at once, on other hosts just after."""
        if not self._held:
            return
        self._held = False
        self.gate._drop(self.user_id)
        if self.shared_id is not None and self.gate.shared is not None:
            self.gate.shared.release(self.user_id, self.shared_id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AskGate:
    def __init__(self, per_user_limit: int = 1, cooldown_s: float = 0.0,
                 shared: SharedLimits | None = None) -> None:
        self.per_user_limit = per_user_limit
        self.cooldown_s = cooldown_s
        self.shared = shared
        self._active: dict[int, int] = {}
        self._last: dict[int, float] = {}

    def check(self, user_id: int) -> None:
        """Raise a polite error if this user may not ask right now (as far as this host knows)."""
        active = self._active.get(user_id, 0)
        if active >= self.per_user_limit:
            raise UserFacingError(wording.in_progress(active, self.per_user_limit))
        if self.cooldown_s > 0:
            since = time.monotonic() - self._last.get(user_id, -1e9)
            if since < self.cooldown_s:
                raise UserFacingError(wording.slow_down(self.cooldown_s - since))

    def hold(self, user_id: int) -> Slot:
        """Count a reply in progress for `user_id` on this host, or refuse it politely.

        No await: two asks of one member here never both pass. With `shared`, the
        slot counts on other hosts only once `Slot.share` has claimed it; a press
        that acknowledges first (Discord's 3 s) holds, acknowledges, then shares.
        """
        self.check(user_id)
        self._active[user_id] = self._active.get(user_id, 0) + 1
        return Slot(self, user_id)

    async def take(self, user_id: int) -> Slot:
        """`hold`, then with `shared` the one round trip that takes the slot on every
        host (or refuses it as this host would have)."""
        slot = self.hold(user_id)
        await slot.share()
        return slot

    def accepted(self, user_id: int) -> None:
        """The ask was taken (queued): its cooldown starts now.

        Not at `take`: an ask refused after the slot was taken (a prompt too long,
        a full queue, bad knobs) must not make its asker wait.
        Bounded: the oldest cooldown stamps go first.
        """
        self._last.pop(user_id, None)
        while len(self._last) >= _TRACKED_LIMIT:
            self._last.pop(next(iter(self._last)))
        self._last[user_id] = time.monotonic()
        if self.shared is not None and self.cooldown_s > 0:
            self.shared.accepted(user_id)

    def _drop(self, user_id: int) -> None:
        left = self._active.get(user_id, 1) - 1
        if left > 0:
            self._active[user_id] = left
        else:
            self._active.pop(user_id, None)

    def active(self, user_id: int) -> int:
        """Replies in progress for `user_id` on this host."""
        return self._active.get(user_id, 0)


class SettingsWriteLimiter:
    """At most `limit` settings writes per member in any `window_s` seconds.

    The store accepts every valid write; a front-end open to anyone (Discord,
    where every DM user may write their own DM settings) takes a slot here
    first, so one member cannot flood the database or its audit trail. In
    memory on one host (a restart forgets it, which costs at most one more
    burst); in `shared` with several. A `limit` or `window_s` of 0 turns it off
    (`BOT_SETTINGS_WRITE_LIMIT=0`).
    """

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic,
        shared: SharedLimits | None = None,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.shared = shared
        self._clock = clock
        self._recent: dict[int, deque[float]] = {}

    @property
    def off(self) -> bool:
        return self.limit <= 0 or self.window_s <= 0

    async def take(self, actor_id: int) -> WriteTaken | None:
        """Count a write by `actor_id` (None when the limit is off), or refuse it with
        when to try again. The check and the count are one step, here and across
        hosts, so two writes at once never both take a member's last one; `refund`
        uncounts a write that changed nothing."""
        if self.off:
            return None
        if self.shared is not None:
            write_id, wait = await self.shared.write_take(actor_id, self.limit, self.window_s)
            if write_id is None:
                raise TooManyWrites(max(1, round(wait)))
            return WriteTaken(actor_id, shared_id=write_id)
        await self.check(actor_id)  # no await inside: the check and the count are one step
        stamp = self._stamp(actor_id)
        return WriteTaken(actor_id, at=stamp)

    async def refund(self, taken: WriteTaken | None) -> None:
        """Uncount `taken`: the write it was for changed nothing, or failed."""
        if taken is None:
            return
        if taken.shared_id is not None and self.shared is not None:
            await self.shared.write_refund(taken.shared_id)
            return
        recent = self._recent.get(taken.actor_id)
        if recent is not None and taken.at is not None and taken.at in recent:
            recent.remove(taken.at)

    async def check(self, actor_id: int) -> None:
        """Refuse (`TooManyWrites`) if `actor_id` has no write left in the window; count nothing.

        For what counts nothing, such as opening an edit box; a write itself is
        counted by `take` (and given back by `refund` when it changed nothing).
        """
        if self.off:
            return
        if self.shared is not None:
            wait = await self.shared.write_wait(actor_id, self.limit, self.window_s)
            if wait is not None:
                raise TooManyWrites(max(1, round(wait)))
            return
        now = self._clock()
        recent = self._recent.setdefault(actor_id, deque())
        while recent and now - recent[0] >= self.window_s:
            recent.popleft()
        if len(recent) >= self.limit:
            wait_s = max(1, round(self.window_s - (now - recent[0])))
            raise TooManyWrites(wait_s)

    def _stamp(self, actor_id: int) -> float:
        now = self._clock()
        self._recent.setdefault(actor_id, deque()).append(now)
        if len(self._recent) > _TRACKED_LIMIT:
            # Forget members whose writes are all out of the window.
            self._recent = {
                k: v for k, v in self._recent.items() if v and now - v[-1] < self.window_s
            }
        return now


class QuietRefusals:
    """Say a refusal once per member per window, then stay quiet.

    A refusal to a message (a mention, a reply, a DM) is a new channel message on
    the same send budget live replies need: 30 mentions while a reply runs gave
    30 "already in progress" messages. Interactions still get their (ephemeral)
    answer, since Discord requires one; only the message path asks here. Bounded:
    the oldest members are forgotten first.
    """

    def __init__(self, window_s: float = 30.0, *, limit: int = _TRACKED_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.limit = limit
        self.clock = clock
        self._said: dict[int, float] = {}  # member → when they were last told, oldest first

    def should_say(self, user_id: int) -> bool:
        """True (and remembered) when `user_id` was not refused within the window."""
        now = self.clock()
        said = self._said.get(user_id)
        if said is not None and now - said < self.window_s:
            return False
        self._said.pop(user_id, None)
        while len(self._said) >= self.limit:
            self._said.pop(next(iter(self._said)))
        self._said[user_id] = now
        return True

    def __len__(self) -> int:
        return len(self._said)


class TooManyWrites(UserFacingError):
    """Too many settings changes; `retry_in_s` says when the next one is allowed."""

    def __init__(self, retry_in_s: int) -> None:
        super().__init__(wording.settings_too_fast_in(retry_in_s))
        self.retry_in_s = retry_in_s
