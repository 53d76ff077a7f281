"""`ScopeSettings`: every settings change a member makes, free of Discord.

The cogs and the console say who changes what where; this service owns the
rest, once: the member's settings-write limit (a write counted as it starts, so
two at once never both take the member's last one, and given back when it
changed nothing or failed), the store write, and a `Change` the front-end
words. Permissions Discord knows (Manage Channels, Manage Server) stay with the
front-end; the rules of the bot's own (a model that unloads others) live here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot import wording
from bot.chat.characters import CharacterCard
from bot.chat.request import persona
from bot.errors import UserFacingError
from bot.hosting.host import ModelHost
from bot.knobs import KNOB_NAMES
from bot.limits import SettingsWriteLimiter
from bot.store.personas import MAX_NAME_CHARS, PersonaStore, SavedPersona, name_key
from bot.store.scopes import (
    MODEL_KEY,
    REASONING_KEY,
    SYSTEM_PROMPT_KEY,
    Location,
    Scope,
    ScopeKind,
)
from bot.store.store import SettingsStore


@dataclass(frozen=True)
class Change:
    """What one settings command did at `scope`.

    `changed`: whether anything stored is different now (what the write limit
    counts). `value`: the value now set there, where one was set. `names`: the
    settings a reset removed. `notes`: what applies meanwhile (a server's ceiling).
    """

    scope: Scope
    changed: bool
    value: Any = None
    names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelChange(Change):
    """A model chosen; `swaps`: it does not fit beside the default and unloads it."""

    swaps: bool = False


@dataclass(frozen=True)
class PersonaDraft:
    """What an edit box opens with: the persona text and its source (None: set at the scope)."""

    text: str
    source: str | None


@dataclass(frozen=True)
class CardImport:
    """A card made the persona at `scope`; `saved_as` its saved name, else `not_saved` why."""

    scope: Scope
    saved_as: str | None
    not_saved: str | None


@dataclass
class _Written:
    changed: bool = False


class ScopeSettings:
    """Settings changes per scope, over the settings and personas of one database."""

    def __init__(self, store: SettingsStore, personas: PersonaStore,
                 limiter: SettingsWriteLimiter, models: ModelHost,
                 default_persona: str) -> None:
        self._store = store
        self._personas = personas
        self._limiter = limiter
        self._models = models
        self._default_persona = default_persona

    async def check_write(self, actor_id: int) -> None:
        """Refuse (`TooManyWrites`) when `actor_id` has no settings write left; count nothing."""
        await self._limiter.check(actor_id)

    @contextlib.asynccontextmanager
    async def _write(self, actor_id: int) -> AsyncIterator[_Written]:
        """A settings write by `actor_id`: counted at once (or refused, `TooManyWrites`),
        so two at once never both take the member's last one; given back when the
        block did not set `changed` (a no-op, or a failure)."""
        taken = await self._limiter.take(actor_id)
        written = _Written()
        try:
            yield written
        finally:
            if not written.changed:
                await self._limiter.refund(taken)

    async def _own(self, scope: Scope) -> dict[str, Any]:
        return await self._store.scope_overrides(scope)

    # --- knobs ---------------------------------------------------------------------

    async def set_knobs(self, scope: Scope, values: Mapping[str, Any], *,
                        actor_id: int) -> Change:
        async with self._write(actor_id) as written:
            before = await self._own(scope)
            notes = await self._store.set_knobs(scope, values, actor_id=actor_id)
            changed = await self._own(scope) != before
            written.changed = changed
        return Change(scope, changed, value=dict(values), notes=tuple(notes))

    async def reset_knobs(self, scope: Scope, names: Sequence[str] | None, *,
                          actor_id: int) -> Change:
        """Stop setting `names` (None: every knob) at `scope`; a reset that finds nothing
        changes nothing."""
        async with self._write(actor_id) as written:
            done = await self._store.reset_knobs(scope, names, actor_id=actor_id)
            written.changed = bool(done)
        return Change(scope, bool(done), names=tuple(done))

    # --- the persona ---------------------------------------------------------------

    async def set_persona(self, scope: Scope, text: str, *, actor_id: int) -> Change:
        async with self._write(actor_id) as written:
            changed = await self._write_persona(scope, text, actor_id)
            written.changed = changed
        return Change(scope, changed, value=text)

    async def _write_persona(self, scope: Scope, text: str, actor_id: int) -> bool:
        before = (await self._own(scope)).get(SYSTEM_PROMPT_KEY)
        await self._store.set_system_prompt(scope, text, actor_id=actor_id)
        return (await self._own(scope)).get(SYSTEM_PROMPT_KEY) != before

    async def reset_persona(self, scope: Scope, *, actor_id: int) -> Change:
        async with self._write(actor_id) as written:
            changed = await self._store.reset_system_prompt(scope, actor_id=actor_id)
            written.changed = changed
        return Change(scope, changed)

    async def persona_draft(self, scope: Scope, location: Location, *,
                            actor_id: int) -> PersonaDraft:
        """What an edit box for `scope` opens with: the persona set there, else the one in
        force (a server's: only the configured default, since a server never inherits a
        channel's). Checked against the write limit, not counted: opening changes nothing."""
        await self.check_write(actor_id)
        own = (await self._own(scope)).get(SYSTEM_PROMPT_KEY)
        if own is not None:
            return PersonaDraft(str(own), None)
        if scope.kind is ScopeKind.SERVER:
            return PersonaDraft(self._default_persona or "", "default")
        text, source = persona(await self._store.resolve(location), self._default_persona)
        return PersonaDraft(text or "", source)

    # --- the model -----------------------------------------------------------------

    async def set_model(self, scope: Scope, name: str, *, actor_id: int,
                        manage_server: bool) -> ModelChange:
        """Choose the model answering at `scope`. One that unloads the default one is
        everyone's business: it takes Manage Server (`manage_server`), and never in DMs."""
        async with self._write(actor_id) as written:
            models = self._models
            wanted = name.strip().lower()
            swaps = wanted in models.names and models.swaps_default(wanted)
            if swaps and scope.kind is ScopeKind.DM:
                raise UserFacingError(wording.MODEL_SWAP_NOT_IN_DMS)
            if swaps and not manage_server:
                raise UserFacingError(wording.MODEL_SWAP_PERMISSION)
            before = (await self._own(scope)).get(MODEL_KEY)
            chosen = await self._store.set_model(scope, name, actor_id=actor_id, known=models.names)
            changed = chosen != before
            written.changed = changed
        return ModelChange(scope, changed, value=chosen, swaps=swaps)

    async def reset_model(self, scope: Scope, *, actor_id: int) -> Change:
        async with self._write(actor_id) as written:
            changed = await self._store.reset_model(scope, actor_id=actor_id)
            written.changed = changed
        return Change(scope, changed)

    async def model_choices(self, guild_id: int) -> list[tuple[str, Scope]]:
        """Which scopes of a server choose which model (for "in use where")."""
        return await self._store.model_choices(guild_id)

    # --- reasoning and how a place is talked in ------------------------------------

    async def set_reasoning(self, scope: Scope, on: bool | None, *, actor_id: int) -> Change:
        """Reasoning on, off, or (None) inherited at `scope`."""
        return await self._set_key(scope, REASONING_KEY, on, actor_id,
                                   lambda: self._store.set_reasoning(scope, on,
                                                                     actor_id=actor_id))

    async def set_mode(self, scope: Scope, key: str, value: bool | str | None, *,
                       actor_id: int) -> Change:
        """Follow, auto-thread or the aside marker at `scope` (None: inherited)."""
        return await self._set_key(scope, key, value, actor_id,
                                   lambda: self._store.set_mode(scope, key, value,
                                                                actor_id=actor_id))

    async def _set_key(self, scope: Scope, key: str, value: Any, actor_id: int,
                       write: Callable[[], Awaitable[object]]) -> Change:
        async with self._write(actor_id) as written:
            before = (await self._own(scope)).get(key)
            await write()
            changed = (await self._own(scope)).get(key) != before
            written.changed = changed
        return Change(scope, changed, value=value)

    # --- character cards and saved personas ------------------------------------------

    async def import_card(self, scope: Scope, card: CharacterCard, *, guild_id: int | None,
                          actor_id: int) -> CardImport:
        """The card's persona at `scope`, and on a server (`guild_id`) saved by its name.

        The persona is set either way; a name already taken gets "name (2)", so an
        import never replaces a saved persona without a word.
        """
        async with self._write(actor_id) as written:
            changed = await self._write_persona(scope, card.persona, actor_id)
            saved_as = not_saved = None
            if guild_id is not None:
                name = await self._free_name(guild_id, card.name)
                try:
                    await self._personas.save(guild_id, name, card.persona, actor_id=actor_id,
                                              greeting=card.greeting)
                    saved_as = name
                except UserFacingError as exc:
                    not_saved = exc.message
            written.changed = changed or saved_as is not None
        return CardImport(scope, saved_as, not_saved)

    async def _free_name(self, guild_id: int, name: str) -> str:
        base = name[:MAX_NAME_CHARS]
        taken = {name_key(p.name) for p in await self._personas.saved(guild_id)}
        candidate, n = base, 1
        while name_key(candidate) in taken:
            n += 1
            suffix = f" ({n})"
            candidate = base[: MAX_NAME_CHARS - len(suffix)] + suffix
        return candidate

    async def save_persona(self, location: Location, guild_id: int, name: str, *,
                           actor_id: int, with_knobs: bool) -> tuple[SavedPersona, bool]:
        """Save the persona in force at `location` (with its own scope's knobs) by name;
        whether it replaced one of that name. Always a write: the saved row is new."""
        async with self._write(actor_id) as written:
            text, _ = persona(await self._store.resolve(location), self._default_persona)
            if not text:
                raise UserFacingError(wording.NO_PERSONA_TO_SAVE)
            bundle = None
            if with_knobs:
                own = await self._own(location.own_scope())
                bundle = {k: v for k, v in own.items() if k in KNOB_NAMES}
            saved, replaced = await self._personas.save(guild_id, name, text, actor_id=actor_id,
                                              knobs=bundle)
            written.changed = True
        return saved, replaced

    async def load_persona(self, scope: Scope, guild_id: int, name: str, *,
                           actor_id: int) -> tuple[SavedPersona, Change]:
        """Use a saved persona (and its knobs) at `scope`."""
        async with self._write(actor_id) as written:
            saved = await self._personas.load(guild_id, name)
            before = await self._own(scope)
            await self._store.set_system_prompt(scope, saved.system_prompt, actor_id=actor_id)
            notes: list[str] = []
            if saved.knobs:
                notes = await self._store.set_knobs(scope, saved.knobs, actor_id=actor_id)
            changed = await self._own(scope) != before
            written.changed = changed
        return saved, Change(scope, changed, value=saved.name, notes=tuple(notes))

    async def delete_persona(self, guild_id: int, name: str, *, actor_id: int) -> str | None:
        """Delete a server's saved persona; its name as saved, or None if none had it."""
        async with self._write(actor_id) as written:
            deleted = await self._personas.remove(guild_id, name)
            written.changed = deleted is not None
        return deleted

    async def saved_personas(self, guild_id: int) -> list[SavedPersona]:
        return await self._personas.saved(guild_id)
