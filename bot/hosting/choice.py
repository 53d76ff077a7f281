"""Which model answers: the one a scope chose (server ← channel ← thread, or a DM), and
the one a continuing conversation keeps.

Stored like the persona, a `model` setting per scope. A stored name is checked for
its form only, never against the models configured now: a model an operator
removes and puts back keeps its scopes (the default answers meanwhile, with a
note); `check_choice` checks a name when an admin sets it. A follow-up keeps the
model its conversation used (`turns.model`) unless the choice in force differs,
and then says "switched to …".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from bot.config import MODEL_NAME_RE
from bot.errors import InvalidKnobs

MODEL_KEY: Final = "model"
"""The settings key a scope's model choice is stored and reported under."""

DEFAULT_SOURCE: Final = "default"


def validate_model_name(value: object) -> str:
    """A model name as stored in a scope (its form only); raises `InvalidKnobs`."""
    if not isinstance(value, str):
        raise InvalidKnobs("A model name must be text.")
    name = value.strip().lower()
    if not MODEL_NAME_RE.fullmatch(name):
        raise InvalidKnobs(
            "A model name is 1-64 lowercase letters, digits, '.', '_' or '-' "
            "(see /model list)."
        )
    return name


def check_choice(value: object, known: Collection[str]) -> str:
    """A name an admin wants to set: well formed and configured here; raises `InvalidKnobs`."""
    name = validate_model_name(value)
    if name not in known:
        raise InvalidKnobs(
            f"There is no model called `{name}` here. Models: "
            + ", ".join(f"`{k}`" for k in known) + "."
        )
    return name


class ScopedSettings(Protocol):
    """What the resolution reads from `bot.store.scopes.Effective`.

    `model` is the name the strongest scope chose (None: none chose one) and
    `sources[MODEL_KEY]` where it came from, as for the persona.
    """

    @property
    def model(self) -> str | None: ...

    @property
    def sources(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class ModelChoice:
    """The model in effect somewhere, where that came from, and anything worth saying."""

    name: str
    source: str
    """"default" (BOT_DEFAULT_MODEL), or the scope label: server, channel, thread, dm."""
    requested: str | None = None
    """What the scope asked for, when that is not what is served (a removed model)."""
    note: str | None = None

    def describe(self) -> str:
        """For `/settings` and the console: "`coder` (from the channel)"."""
        where = "the default" if self.source == DEFAULT_SOURCE else f"from the {self.source}"
        text = f"`{self.name}` ({where})"
        return f"{text}; {self.note}" if self.note else text


def resolve_model(
    chosen: str | None, source: str, *, known: Collection[str], default: str
) -> ModelChoice:
    """The model a scope's choice means on this host, falling back to the default."""
    if chosen is None:
        return ModelChoice(name=default, source=DEFAULT_SOURCE)
    name = chosen.strip().lower()
    if name in known:
        return ModelChoice(name=name, source=source)
    return ModelChoice(
        name=default,
        source=DEFAULT_SOURCE,
        requested=name,
        note=(
            f"the {source} chose `{name}`, which this host no longer serves, so the "
            f"default `{default}` answers"
        ),
    )


def model_in_effect(
    effective: ScopedSettings, *, known: Collection[str], default: str
) -> ModelChoice:
    """`resolve_model` over the settings resolved for a location."""
    source = effective.sources.get(MODEL_KEY, DEFAULT_SOURCE)
    return resolve_model(effective.model, source, known=known, default=default)


@dataclass(frozen=True)
class TurnModel:
    """The model a turn uses, and the line its footer carries when that changed."""

    name: str
    switched_from: str | None = None
    note: str | None = None


def model_for_turn(
    previous: str | None, current: ModelChoice, *, known: Collection[str]
) -> TurnModel:
    """Which model answers a turn that continues one answered by `previous`.

    `previous` is the model stored with the turn being continued (None: nothing to
    keep). A differing choice in force means a scope changed it since, so the new
    one answers and says so.
    """
    if previous is None or previous == current.name:
        return TurnModel(name=current.name, note=current.note)
    if previous not in known:
        note = f"switched to `{current.name}`: `{previous}` is no longer served here"
    else:
        note = f"switched to `{current.name}` (the model set for this {current.source})" if (
            current.source != DEFAULT_SOURCE
        ) else f"switched to `{current.name}` (the default model)"
    if current.note:
        note = f"{note}; {current.note}"
    return TurnModel(name=current.name, switched_from=previous, note=note)
