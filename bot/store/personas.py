"""Named personas per server: `/system save|load|delete NAME`, `/system list`.

A persona is a system prompt under a name, optionally with knobs and a character
card's greeting. Names compare case-insensitively, are kept as first typed, 1–32
characters of one line, at most `MAX_PERSONAS` per server. Knobs are validated in
and out: one that no longer validates is left out of the bundle rather than
failing the load. Applying a persona is the settings store's job, so audit and
permission checks stay in one place.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bot.errors import InvalidKnobs, UserFacingError
from bot.knobs import KNOB_NAMES, build_knobs, validate_knob
from bot.store.db import Database, Tx
from bot.store.validation import validate_system_prompt

log = logging.getLogger(__name__)

MAX_NAME_CHARS: Final = 32
MAX_PERSONAS: Final = 25
MAX_GREETING_CHARS: Final = 4000


class PersonaNotFound(UserFacingError):
    pass


@dataclass(frozen=True)
class SavedPersona:
    guild_id: int
    name: str
    system_prompt: str
    knobs: dict[str, Any] = field(default_factory=dict)
    greeting: str | None = None
    updated_by: int = 0
    updated_at: str = ""


def validate_persona_name(name: object) -> str:
    """The name as stored for display: one line, 1–32 characters, inner spaces collapsed."""
    if not isinstance(name, str):
        raise InvalidKnobs("A persona name must be text.")
    text = " ".join(name.split())
    if not text:
        raise InvalidKnobs("A persona name cannot be empty.")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            raise InvalidKnobs("A persona name must be one line of ordinary characters.")
    if len(text) > MAX_NAME_CHARS:
        raise InvalidKnobs(
            f"A persona name is at most {MAX_NAME_CHARS} characters; {text[:40]!r} has "
            f"{len(text)}."
        )
    return text


def name_key(name: str) -> str:
    """What makes two names the same persona: NFC-normalised and case-folded."""
    return unicodedata.normalize("NFC", validate_persona_name(name)).casefold()


def validate_bundle(knobs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A knobs bundle as stored: each knob valid, and valid together (min ≤ max)."""
    if not knobs:
        return {}
    if not isinstance(knobs, Mapping):
        raise InvalidKnobs("A persona's knobs must be a set of name/value pairs.")
    checked = {str(k): validate_knob(str(k), v) for k, v in knobs.items()}
    build_knobs(checked)  # raises InvalidKnobs for a bundle that contradicts itself
    return {k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}


def _bundle_out(raw: object, guild_id: int, name: str) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        data = json.loads(str(raw))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        log.warning("ignoring unreadable knobs of persona %r in guild %d", name, guild_id)
        return {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KNOB_NAMES:
            continue
        try:
            out[key] = validate_knob(key, value)
        except InvalidKnobs as exc:
            log.warning("ignoring stored knob %s of persona %r: %s", key, name, exc.message)
    try:
        build_knobs(out)
    except InvalidKnobs:
        out.pop("min_new_tokens", None)
    return out


class PersonaStore:
    """Saved personas of each server, through the shared `Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(
        self,
        guild_id: int,
        name: str,
        system_prompt: str,
        *,
        actor_id: int,
        knobs: Mapping[str, Any] | None = None,
        greeting: str | None = None,
    ) -> tuple[SavedPersona, bool]:
        """Save (or replace) a persona; returns it and whether it replaced one."""
        shown = validate_persona_name(name)
        key = name_key(shown)
        prompt = validate_system_prompt(system_prompt)
        bundle = validate_bundle(knobs)
        if greeting is not None:
            greeting = greeting.strip()[:MAX_GREETING_CHARS] or None
            if greeting is not None:
                validate_system_prompt(greeting)  # NUL, lone surrogates
        now = self.db.now_iso()
        payload = json.dumps(bundle, ensure_ascii=False) if bundle else None

        async def work(conn: Tx) -> bool:
            row = await conn.fetchone(
                "SELECT COUNT(*), SUM(CASE WHEN name_key = ? THEN 1 ELSE 0 END) "
                "FROM personas WHERE guild_id = ?",
                (key, guild_id),
            )
            count, exists = (int(row[0]), bool(row[1])) if row else (0, False)
            if not exists and count >= MAX_PERSONAS:
                raise UserFacingError(
                    f"This server has {MAX_PERSONAS} saved personas, the most it can keep; "
                    "delete one first."
                )
            await conn.execute(
                "INSERT INTO personas (guild_id, name_key, name, system_prompt, knobs, "
                "greeting, created_by, updated_by, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (guild_id, name_key) DO UPDATE SET name = excluded.name, "
                "system_prompt = excluded.system_prompt, knobs = excluded.knobs, "
                "greeting = excluded.greeting, updated_by = excluded.updated_by, "
                "updated_at = excluded.updated_at",
                (guild_id, key, shown, prompt, payload, greeting, actor_id, actor_id, now, now),
            )
            return exists

        replaced = await self.db.write(work)
        return SavedPersona(guild_id, shown, prompt, _bundle_out(payload, guild_id, shown),
                            greeting, actor_id, now), replaced

    async def load(self, guild_id: int, name: str) -> SavedPersona:
        """The persona saved under `name` (any case), or a message listing what there is."""
        key = name_key(name)
        rows = await self.db.read(
            "SELECT name, system_prompt, knobs, greeting, updated_by, updated_at "
            "FROM personas WHERE guild_id = ? AND name_key = ?",
            (guild_id, key),
        )
        if not rows:
            names = [p.name for p in await self.saved(guild_id)]
            known = f" Saved: {', '.join(names)}." if names else " None are saved yet."
            raise PersonaNotFound(f"There is no persona named {name.strip()[:40]!r}.{known}")
        shown, prompt, knobs, greeting, by, at = rows[0]
        return SavedPersona(guild_id, str(shown), str(prompt),
                            _bundle_out(knobs, guild_id, str(shown)),
                            None if greeting is None else str(greeting), int(by), str(at))

    async def saved(self, guild_id: int) -> list[SavedPersona]:
        """Every saved persona of the server, by name (case-insensitively)."""
        rows = await self.db.read(
            "SELECT name, system_prompt, knobs, greeting, updated_by, updated_at "
            "FROM personas WHERE guild_id = ? ORDER BY name_key",
            (guild_id,),
        )
        return [
            SavedPersona(guild_id, str(n), str(p), _bundle_out(k, guild_id, str(n)),
                         None if g is None else str(g), int(by), str(at))
            for n, p, k, g, by, at in rows
        ]

    async def delete(self, guild_id: int, name: str) -> bool:
        """Forget a saved persona; True if there was one."""
        return await self.remove(guild_id, name) is not None

    async def remove(self, guild_id: int, name: str) -> str | None:
        """Forget a saved persona; its name as saved, or None if there was none."""
        key = name_key(name)

        async def work(conn: Tx) -> str | None:
            row = await conn.fetchone(
                "DELETE FROM personas WHERE guild_id = ? AND name_key = ? RETURNING name",
                (guild_id, key),
            )
            return None if row is None else str(row[0])

        return await self.db.write(work)
