"""`SettingsStore`: the persona, knobs, model and modes per scope, resolved and audited.

Scopes, weakest to strongest: defaults ← server ← channel ← thread (a thread
inherits from its parent channel), or defaults ← dm, per user. One row per
(scope, key) with a JSON value: a new knob needs no migration, a reset is a
``DELETE``, and a lookup says where each value came from. `resolve` is one
``UNION ALL`` of primary-key lookups (well under a millisecond,
``bench/store_bench.py``), so there is no cache to invalidate. Values are checked
on the way in and out (`bot.store.validation`): a hand-edited bad row is logged
and ignored. Every write is audited in its own transaction (`bot.store.audit`).
`max_new_tokens` has two ceilings: the operator's (`BOT_MAX_NEW_TOKENS_CEILING`:
refused when set, clamped when resolved) and a server's own over its channels.
SQL is formatted only from this package's constants; every value is a parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from bot.errors import InvalidKnobs
from bot.hosting.choice import check_choice
from bot.knobs import KNOB_NAMES, Knobs, build_knobs, describe_validation_error, validate_knob
from bot.store.audit import AuditLog
from bot.store.connect import open_database
from bot.store.db import Database, Tx, utcnow
from bot.store.migration_models import MODEL_CHOICES_IN_GUILD_SQL
from bot.store.scopes import (
    ASIDE_MARKER_KEY,
    AUTO_THREAD_KEY,
    DEFAULT_ASIDE_MARKER,
    FOLLOW_KEY,
    MODE_KEYS,
    MODEL_KEY,
    REASONING_KEY,
    SETTING_KEYS,
    SYSTEM_PROMPT_KEY,
    Change,
    Effective,
    Location,
    Scope,
    ScopeKind,
    check_id,
)
from bot.store.validation import (
    INVALID,
    StoredValues,
    encode_value,
    validate_system_prompt,
    validate_value,
)

log = logging.getLogger(__name__)

#: The knobs a `max_new_tokens` ceiling bounds (the minimum may not exceed it either).
_CEILED: Final = ("max_new_tokens", "min_new_tokens")

# --- SQL (constants only) -----------------------------------------------------

_CHAIN_TERM = (
    "SELECT {rank} AS rank, key, value FROM settings "
    "WHERE scope_kind = ? AND scope_id = ? AND guild_id IS ?"
)
# One statement per chain length (1: DM, 2: channel, 3: thread). Each branch is
# a primary-key range lookup; the guild check keeps a stray row from applying
# in another server.
_RESOLVE_SQL: Final[dict[int, str]] = {
    n: " UNION ALL ".join(_CHAIN_TERM.format(rank=i) for i in range(n)) for n in (1, 2, 3)
}

_UPSERT_SQL: Final = """
    INSERT INTO settings (scope_kind, scope_id, key, value, guild_id, updated_by, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (scope_kind, scope_id, key) DO UPDATE SET
        value = excluded.value, guild_id = excluded.guild_id,
        updated_by = excluded.updated_by, updated_at = excluded.updated_at
"""


class SettingsStore:
    """Settings per server, channel, thread and DM user, in the store's `Database`.

    Build it once at start-up on a `Database` (or with `SettingsStore.open`)
    and close it on shutdown. Every write is one transaction that no other
    writer interleaves (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory
    lock), so several processes may share one database.
    """

    def __init__(
        self,
        db: Database,
        *,
        history_per_scope: int = 200,
        history_retention_days: float = 365.0,
        max_new_tokens_ceiling: int | None = None,
    ) -> None:
        self.db = db
        #: The operator's ceiling on `max_new_tokens` for every scope (None: the knob's range).
        self.max_new_tokens_ceiling = max_new_tokens_ceiling
        self.path = db.path
        self.audit = AuditLog(db, per_scope=history_per_scope,
                              retention_days=history_retention_days)
        self.values = StoredValues()

    @classmethod
    async def open(
        cls, target: Path | str, *, busy_timeout_ms: int = 5000, clock: Any = utcnow,
        **limits: Any,
    ) -> SettingsStore:
        """Open (creating and migrating if needed) a SQLite file or PostgreSQL URL for settings
        alone."""
        return cls(
            await open_database(target, busy_timeout_ms=busy_timeout_ms, clock=clock), **limits
        )

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> SettingsStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lookups ---------------------------------------------------------------

    async def resolve(self, loc: Location) -> Effective:
        """The settings in force at `loc`: one query, invalid rows logged and skipped.

        The server's `max_new_tokens` ceiling applies over its channels, then the
        operator's over everything. If scopes still combine into ``min_new_tokens >
        max_new_tokens``, the minimum is dropped: the maximum is the cost cap.
        """
        chain = loc.labelled_chain()
        params: list[Any] = []
        for _, scope in chain:
            params += (scope.kind.value, scope.id, scope.guild_id)
        rows = await self.db.read(_RESOLVE_SQL[len(chain)], params)
        # Apply weakest first so stronger scopes overwrite; UNION ALL order is
        # not guaranteed, so sort by rank.
        values: dict[str, Any] = {}
        # The model choice has a source only where a scope made one (see `Effective`).
        sources: dict[str, str] = dict.fromkeys(
            (k for k in SETTING_KEYS if k != MODEL_KEY), "default"
        )
        server_max: int | None = None
        for rank, key, raw in sorted(rows, key=lambda r: int(r[0])):
            label, scope = chain[rank]
            value = self.values.checked(scope, key, raw)
            if value is not INVALID:
                values[key] = value
                sources[key] = label
                if label == "server" and key == "max_new_tokens":
                    server_max = value
        prompt = values.pop(SYSTEM_PROMPT_KEY, None)
        model = values.pop(MODEL_KEY, None)
        reasoning = bool(values.pop(REASONING_KEY, False))
        follow = bool(values.pop(FOLLOW_KEY, False))
        auto_thread = bool(values.pop(AUTO_THREAD_KEY, False))
        marker = str(values.pop(ASIDE_MARKER_KEY, DEFAULT_ASIDE_MARKER))
        for key in (REASONING_KEY, *MODE_KEYS):  # `sources` stays the knobs' and the persona's
            sources.pop(key, None)
        if server_max is not None:
            _ceil(values, sources, server_max, "server")
        if self.max_new_tokens_ceiling is not None:
            _ceil(values, sources, self.max_new_tokens_ceiling, "operator")
        try:
            knobs = Knobs.model_validate(values)
        except ValidationError as exc:
            log.warning(
                "settings at %s combine into invalid knobs (%s); ignoring min_new_tokens",
                loc, describe_validation_error(exc),
            )
            values.pop("min_new_tokens", None)
            sources["min_new_tokens"] = "default"
            knobs = Knobs.model_validate(values)
        return Effective(knobs=knobs, system_prompt=prompt, sources=sources, model=model,
                         reasoning=reasoning, follow=follow, auto_thread=auto_thread,
                         aside_marker=marker)

    async def scope_overrides(self, scope: Scope) -> dict[str, Any]:
        """What `scope` itself sets (knobs and ``"system_prompt"``), ignoring invalid rows."""
        rows = await self.db.read(_SCOPE_ROWS, _scope_params(scope))
        out = self.values.valid(scope, rows)
        return {k: out[k] for k in SETTING_KEYS if k in out}

    async def history(self, scope: Scope, limit: int = 20) -> list[Change]:
        """The latest `limit` changes at `scope`, newest first (who, what, when)."""
        return await self.audit.history(scope, limit)

    # -- writes ----------------------------------------------------------------

    async def set_knobs(
        self, scope: Scope, values: Mapping[str, Any], *, actor_id: int
    ) -> list[str]:
        """Set knobs at `scope`; all or nothing. Returns notes for the member (may be empty).

        Checked alone, against the operator's ceiling, then combined with what
        the scope inherits (and, for a server, with its channels' own min/max),
        so ``min_new_tokens`` never ends above ``max_new_tokens``. A channel value
        above the server's `max_new_tokens` is stored, with a note saying what
        applies meanwhile.
        """
        check_id("actor_id", actor_id)
        if not values:
            raise InvalidKnobs("Name at least one setting to change.")
        normalised = {name: validate_knob(name, value) for name, value in values.items()}
        ceiling = self.max_new_tokens_ceiling
        for name in _CEILED:
            if ceiling is not None and name in normalised and normalised[name] > ceiling:
                raise InvalidKnobs(
                    f"{name} = {normalised[name]} is above this bot's limit: its operator "
                    f"allows at most {ceiling} new tokens per reply."
                )

        async def work(conn: Tx) -> list[str]:
            await self._check_combination(conn, scope, normalised)
            await self._upsert(conn, scope, normalised, actor_id)
            if scope.kind is not ScopeKind.CHANNEL or scope.guild_id is None:
                return []
            cap = (await self._rows(conn, Scope.server(scope.guild_id))).get("max_new_tokens")
            over = [n for n in _CEILED if cap is not None and normalised.get(n, -1) > cap]
            if not over:
                return []
            return [
                f"This server's max_new_tokens ({cap}) is a ceiling for its channels, so "
                f"{' and '.join(over)} {'is' if len(over) == 1 else 'are'} {cap} here "
                "until the server's value changes."
            ]

        return await self.db.write(work)

    async def reset_knobs(
        self, scope: Scope, names: Sequence[str] | None, *, actor_id: int
    ) -> list[str]:
        """Stop overriding `names` (None = every knob) at `scope`; returns those that were set.

        A reset is never refused: it is the way back to a known state. If it
        leaves an inherited min above max, `resolve` drops the minimum.
        """
        check_id("actor_id", actor_id)
        if names is None:
            keys = list(KNOB_NAMES)
        else:
            unknown = sorted(set(names) - set(KNOB_NAMES))
            if unknown:
                raise InvalidKnobs(
                    f"Unknown setting {', '.join(f'`{u}`' for u in unknown)}. "
                    f"Known: {', '.join(KNOB_NAMES)}."
                )
            keys = [k for k in KNOB_NAMES if k in set(names)]
        return await self.db.write(lambda conn: self._delete(conn, scope, keys, actor_id))

    async def set_system_prompt(self, scope: Scope, text: str, *, actor_id: int) -> None:
        """Set the persona at `scope` (validated: length, NUL, lone surrogates)."""
        check_id("actor_id", actor_id)
        prompt = validate_system_prompt(text)
        await self.db.write(
            lambda conn: self._upsert(conn, scope, {SYSTEM_PROMPT_KEY: prompt}, actor_id)
        )

    async def reset_system_prompt(self, scope: Scope, *, actor_id: int) -> bool:
        """Stop overriding the persona at `scope`; True if it was set there."""
        check_id("actor_id", actor_id)
        done = await self.db.write(
            lambda conn: self._delete(conn, scope, [SYSTEM_PROMPT_KEY], actor_id)
        )
        return bool(done)

    # -- the model choice ------------------------------------------------

    async def set_model(
        self, scope: Scope, name: str, *, actor_id: int, known: Collection[str]
    ) -> str:
        """Choose the model answering at `scope` (audited); returns the stored name.

        `known` is what this host serves: an admin can only choose one of those
        (a stored name is kept, and falls back to the default, if the operator
        removes that model later).
        """
        check_id("actor_id", actor_id)
        chosen = check_choice(name, known)
        await self.db.write(
            lambda conn: self._upsert(conn, scope, {MODEL_KEY: chosen}, actor_id)
        )
        return chosen

    async def reset_model(self, scope: Scope, *, actor_id: int) -> bool:
        """Stop choosing a model at `scope`; True if it chose one."""
        check_id("actor_id", actor_id)
        done = await self.db.write(lambda conn: self._delete(conn, scope, [MODEL_KEY], actor_id))
        return bool(done)

    async def model_choices(self, guild_id: int) -> list[tuple[str, Scope]]:
        """Which scopes of a server choose which model (`/model list`: "in use where").

        Valid rows only, server first, then channels and threads by id; DM
        choices are per user and never listed.
        """
        rows = await self.db.read(MODEL_CHOICES_IN_GUILD_SQL, (guild_id,))
        out: list[tuple[str, Scope]] = []
        for raw, kind, scope_id in rows:
            scope = Scope(ScopeKind(str(kind)), int(scope_id), guild_id)
            value = self.values.checked(scope, MODEL_KEY, raw)
            if value is not INVALID:
                out.append((str(value), scope))
        return out

    # -- reasoning ---------------------------------------------------------

    async def set_reasoning(self, scope: Scope, on: bool | None, *, actor_id: int) -> bool:
        """Reasoning on/off at `scope`, or None to inherit; True if it changed.

        Off is stored too, so a channel can turn it off under a server that has it on.
        """
        check_id("actor_id", actor_id)
        if on is None:
            done = await self.db.write(
                lambda conn: self._delete(conn, scope, [REASONING_KEY], actor_id)
            )
            return bool(done)
        await self.db.write(
            lambda conn: self._upsert(conn, scope, {REASONING_KEY: bool(on)}, actor_id)
        )
        return True

    # -- how a place is talked in ----------------------------------------------------

    async def set_mode(self, scope: Scope, key: str, value: bool | str | None, *,
                       actor_id: int) -> bool:
        """Follow, auto-thread or the aside marker at `scope` (None: inherit); audited.

        True if a row was written or removed.
        """
        check_id("actor_id", actor_id)
        if key not in MODE_KEYS:
            raise ValueError(f"{key!r} is not a conversation-mode setting")
        if value is None:
            done = await self.db.write(lambda conn: self._delete(conn, scope, [key], actor_id))
            return bool(done)
        checked = validate_value(key, value)
        await self.db.write(lambda conn: self._upsert(conn, scope, {key: checked}, actor_id))
        return True

    # -- checks and row writes ----------------------------------------------------

    async def _rows(self, conn: Tx, scope: Scope) -> dict[str, Any]:
        """Valid values set at `scope`, read through `conn` (inside a write transaction)."""
        rows = await conn.fetchall(_SCOPE_ROWS, _scope_params(scope))
        return self.values.valid(scope, rows)

    async def _check_combination(
        self, conn: Tx, scope: Scope, new: dict[str, Any]
    ) -> None:
        """Refuse values that would make the knobs in force at `scope` inconsistent."""
        chain = [scope]
        if scope.kind is ScopeKind.CHANNEL:
            assert scope.guild_id is not None
            chain.insert(0, Scope.server(scope.guild_id))
        merged: dict[str, Any] = {}
        inherited: set[str] = set()
        for s in chain:
            for key, value in (await self._rows(conn, s)).items():
                if key in KNOB_NAMES:
                    merged[key] = value
                    if s != scope:
                        inherited.add(key)
                    else:
                        inherited.discard(key)
        merged.update(new)
        inherited -= set(new)
        try:
            knobs = build_knobs(merged)
        except InvalidKnobs as exc:
            where = " (from the server settings)" if inherited else ""
            raise InvalidKnobs(
                f"{exc.message.removesuffix('.')}{where}. "
                "Change both together, or the other one first."
            ) from None
        if scope.kind is ScopeKind.SERVER and {"min_new_tokens", "max_new_tokens"} & set(new):
            await self._check_channels(conn, scope, knobs)

    async def _check_channels(
        self, conn: Tx, server: Scope, knobs: Knobs
    ) -> None:
        """A server-wide min/max must not conflict with channels that set the other one."""
        rows = await conn.fetchall(
            "SELECT scope_id, key, value FROM settings WHERE scope_kind = 'channel' "
            "AND guild_id = ? AND key IN ('min_new_tokens', 'max_new_tokens')",
            (server.id,),
        )
        per_channel: dict[int, dict[str, Any]] = {}
        for channel_id, key, raw in rows:
            value = self.values.checked(Scope.channel(int(channel_id), server.id), key, raw)
            if value is not INVALID:
                per_channel.setdefault(int(channel_id), {})[key] = value
        bad = sorted(
            cid for cid, own in per_channel.items()
            if own.get("min_new_tokens", knobs.min_new_tokens)
            > own.get("max_new_tokens", knobs.max_new_tokens)
        )
        if bad:
            raise InvalidKnobs(
                f"That would put min_new_tokens above max_new_tokens in {len(bad)} channel(s) "
                f"that set their own value (channel ids: {', '.join(map(str, bad[:5]))}"
                f"{', …' if len(bad) > 5 else ''}). Change or reset those first."
            )

    async def _upsert(
        self, conn: Tx, scope: Scope, values: dict[str, Any], actor_id: int
    ) -> None:
        """Write `values` at `scope` with one history row each (unchanged values skipped)."""
        now = self.db.now_iso()
        existing = await _stored(conn, scope, values)
        for key, value in values.items():
            encoded = encode_value(value)
            old = existing.get(key)
            if old == encoded:
                continue
            await conn.execute(
                _UPSERT_SQL,
                (scope.kind.value, scope.id, key, encoded, scope.guild_id, actor_id, now),
            )
            await self.audit.record(conn, scope, key, old, encoded, actor_id=actor_id, at=now)
        await self.audit.trim(conn, scope)

    async def _delete(
        self, conn: Tx, scope: Scope, keys: list[str], actor_id: int
    ) -> list[str]:
        """Delete `keys` at `scope`, auditing each; returns the keys that existed."""
        now = self.db.now_iso()
        existing = await _stored(conn, scope, keys)
        done = [k for k in keys if k in existing]
        for key in done:
            await conn.execute(
                "DELETE FROM settings WHERE scope_kind = ? AND scope_id = ? AND key = ?",
                (scope.kind.value, scope.id, key),
            )
            await self.audit.record(conn, scope, key, existing[key], None,
                                    actor_id=actor_id, at=now)
        if done:
            await self.audit.trim(conn, scope)
        return done


_SCOPE_ROWS = (
    "SELECT key, value FROM settings WHERE scope_kind = ? AND scope_id = ? AND guild_id IS ?"
)


def _scope_params(scope: Scope) -> tuple[str, int, int | None]:
    return (scope.kind.value, scope.id, scope.guild_id)


async def _stored(conn: Tx, scope: Scope, keys: Collection[str]) -> dict[str, str]:
    """The raw values `scope` stores for `keys`, read inside a write transaction."""
    placeholders = ", ".join("?" for _ in keys)
    rows = await conn.fetchall(
        "SELECT key, value FROM settings WHERE scope_kind = ? AND scope_id = ? "
        f"AND key IN ({placeholders})",
        (scope.kind.value, scope.id, *keys),
    )
    return {str(k): str(v) for k, v in rows}


def _ceil(values: dict[str, Any], sources: dict[str, str], cap: int, label: str) -> None:
    """Bound the new-token knobs in `values` by `cap`, crediting `label` where it bites."""
    defaults = Knobs()
    for name in _CEILED:
        if values.get(name, getattr(defaults, name)) > cap:
            values[name] = cap
            sources[name] = label


__all__ = [
    "INVALID",
    "Change",
    "Effective",
    "Location",
    "Scope",
    "ScopeKind",
    "SettingsStore",
]
