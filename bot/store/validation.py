"""Setting values on the way in and on the way out of the database.

In, a bad value is refused with `InvalidKnobs` naming the knob; out, a row that no
longer validates (a hand edit, a narrowed range) is logged once and skipped, so
a bad row never stops the bot answering. Both use the knobs model's rules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Final

from bot.errors import InvalidKnobs
from bot.hosting.choice import validate_model_name
from bot.knobs import validate_knob
from bot.store.scopes import (
    ASIDE_MARKER_KEY,
    AUTO_THREAD_KEY,
    FOLLOW_KEY,
    MAX_SYSTEM_PROMPT_CHARS,
    MODEL_KEY,
    REASONING_KEY,
    SETTING_KEYS,
    SYSTEM_PROMPT_KEY,
    Scope,
)

# The warnings are the store's (its rows, its logger name, as operators filter them).
log = logging.getLogger("bot.store.store")

#: Distinct bad rows remembered for warn-once; past this the memory starts afresh
#: (a flood of bad rows costs some repeated warnings, never unbounded memory).
_WARNED_LIMIT: Final = 1024


def validate_system_prompt(text: object) -> str:
    """Check a persona before it is stored; raise `InvalidKnobs` saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidKnobs("The system prompt must be text.")
    if not text.strip():
        raise InvalidKnobs("The system prompt is empty; reset it instead to use the default.")
    if len(text) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidKnobs(
            f"The system prompt is {len(text)} characters long; the limit is "
            f"{MAX_SYSTEM_PROMPT_CHARS}."
        )
    if "\x00" in text:
        raise InvalidKnobs("The system prompt cannot contain NUL characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKnobs(
            "The system prompt contains characters that are not valid Unicode."
        ) from None
    return text


MAX_ASIDE_MARKER_CHARS = 8


def validate_aside_marker(value: object) -> str:
    """A short marker with no spaces or mentions (what a message starts with to be ignored)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidKnobs("The marker is a few characters, such as `//`.")
    value = value.strip()
    if len(value) > MAX_ASIDE_MARKER_CHARS or any(c.isspace() for c in value):
        raise InvalidKnobs(
            f"The marker is at most {MAX_ASIDE_MARKER_CHARS} characters, without spaces."
        )
    if "<" in value or "@" in value:
        raise InvalidKnobs("The marker can't contain `<` or `@` (mentions start so).")
    return value


def validate_value(key: str, value: Any) -> Any:
    """Normalise one stored or submitted value (raises `InvalidKnobs`)."""
    if key == SYSTEM_PROMPT_KEY:
        return validate_system_prompt(value)
    if key == MODEL_KEY:  # its form only: whether it is served here is checked when set
        return validate_model_name(value)
    if key in (REASONING_KEY, FOLLOW_KEY, AUTO_THREAD_KEY):
        if not isinstance(value, bool):
            raise InvalidKnobs(f"The {key.replace('_', ' ')} setting is on or off.")
        return value
    if key == ASIDE_MARKER_KEY:
        return validate_aside_marker(value)
    return validate_knob(key, value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_value(raw: object) -> Any:
    """JSON → Python, refusing NaN/Infinity (which `json` accepts by default)."""
    if not isinstance(raw, str):
        raise ValueError("value is not JSON text")
    return json.loads(raw, parse_constant=_reject_constant)


def encode_value(value: Any) -> str:
    """Python → the compact JSON stored in a row (tuples as lists; NaN refused)."""
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_loosely(raw: str | None) -> Any:
    """History values for display: decoded JSON, or the raw text if a hand edit broke it."""
    if raw is None:
        return None
    try:
        return decode_value(raw)
    except ValueError:
        return raw


class Invalid:
    """Marker for a stored value that failed validation (None is a valid JSON value)."""


INVALID: Final = Invalid()


class StoredValues:
    """Validates rows read back from the database, warning once per bad row.

    One per store: the warn-once memory is what keeps a bad row that is read
    on every ask from filling the log.
    """

    def __init__(self) -> None:
        self._warned: set[tuple[str, int, str, str]] = set()

    def checked(self, scope: Scope, key: str, raw: object) -> Any:
        """A stored value validated on the way out, or `INVALID` (logged once per row)."""
        try:
            if key not in SETTING_KEYS:
                raise InvalidKnobs(f"unknown setting `{key}`")
            return validate_value(key, decode_value(raw))
        except (InvalidKnobs, ValueError) as exc:
            signature = (scope.kind.value, scope.id, key, str(raw))
            if signature not in self._warned:
                if len(self._warned) >= _WARNED_LIMIT:
                    self._warned.clear()
                self._warned.add(signature)
                log.warning(
                    "ignoring invalid stored setting %s=%.80r at %s %d: %s",
                    key, raw, scope.kind.value, scope.id, exc,
                )
            return INVALID

    def valid(self, scope: Scope, rows: Iterable[Any]) -> dict[str, Any]:
        """The (key, raw) rows of one scope as key → value, dropping (and logging) bad ones."""
        out: dict[str, Any] = {}
        for key, raw in rows:
            value = self.checked(scope, key, raw)
            if value is not INVALID:
                out[key] = value
        return out
