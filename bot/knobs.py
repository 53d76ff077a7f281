"""The sampling knobs: one pydantic model that is the single source of truth.

Names, defaults and ranges follow the guide our users learn from; the console,
the store, the slash-command ranges and the engine all read them from here.
Mapping to CTranslate2, which is not one-to-one:

- ``top_k = -1`` (no limit) becomes ``sampling_topk = 0`` (full distribution).
- ``top_p = 0`` keeps only the most likely token, which CTranslate2 expresses as
  ``sampling_topk = 1``; it has no notion of a zero nucleus.
- ``repetition_penalty`` is additive from 0 in the guide; CTranslate2's is a
  multiplicative factor where 1 means "off", so we pass ``1 + value``.
- ``min_new_tokens = -1`` (off) becomes ``min_length = 0``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.errors import InvalidKnobs

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64

KnobName = Literal[
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "min_new_tokens",
    "stop",
    "repetition_penalty",
]
KNOB_NAMES: tuple[str, ...] = get_args(KnobName)


def _reject_bool_and_nonfinite(value: Any) -> Any:
    """Booleans are ints to Python and NaN is a float; neither is a sensible knob."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class Knobs(BaseModel):
    """A complete set of sampling settings with the guide's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: Annotated[float, Ge(0.1), Le(5.0)] = Field(
        0.7, description="Scales the distribution; low = near-deterministic."
    )
    top_p: Annotated[float, Ge(0.0), Le(1.0)] = Field(
        0.95, description="Nucleus sampling; 0 keeps only the most likely token."
    )
    top_k: Annotated[int, Ge(-1), Le(50)] = Field(
        -1, description="Sample among the k most likely tokens; -1 = no limit."
    )
    # 512: 85% of the embedded model's answers to 20 everyday prompts end on their
    # own by then, 35% by 128 (median 222 tokens; `python -m bench --finish`).
    max_new_tokens: Annotated[int, Ge(1), Le(1024)] = Field(
        512, description="The reply never exceeds this many tokens."
    )
    min_new_tokens: Annotated[int, Ge(-1), Le(1024)] = Field(
        -1, description="The end token is held back until this many tokens; -1 = off."
    )
    stop: tuple[str, ...] = Field(
        (), description="Up to 4 strings; the reply ends before the first one."
    )
    repetition_penalty: Annotated[float, Ge(0.0), Le(2.0)] = Field(
        0.0, description="0 = no penalty; higher discourages repeating tokens."
    )

    @field_validator(
        "temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens",
        "repetition_penalty", mode="before",
    )
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _reject_bool_and_nonfinite(value)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of strings")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(
                f"takes up to {MAX_STOP_SEQUENCES} sequences, not {len(value)}"
            )
        for item in value:
            if not isinstance(item, str):
                raise ValueError("takes only text")
            if not 1 <= len(item) <= MAX_STOP_LENGTH:
                raise ValueError(
                    f"sequences must be 1 to {MAX_STOP_LENGTH} characters long"
                )
            if "\x00" in item:
                raise ValueError("sequences cannot contain NUL characters")
            _require_encodable(item)
        return tuple(value)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Knobs:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) cannot be above "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        return self

    # --- CTranslate2 mapping -------------------------------------------------

    def ct2_sampling(self) -> dict[str, Any]:
        """Keyword arguments for `Generator.generate_batch` (see module docstring)."""
        topk = 0 if self.top_k == -1 else self.top_k
        topp = self.top_p
        if topp <= 0.0:
            topk, topp = 1, 1.0
        return {
            "sampling_temperature": self.temperature,
            "sampling_topk": topk,
            "sampling_topp": topp,
            "repetition_penalty": 1.0 + self.repetition_penalty,
            "min_length": max(0, self.min_new_tokens),
        }


def _require_encodable(text: str) -> None:
    """Lone surrogates cannot be sent anywhere or tokenized; say so up front."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("contains characters that are not valid Unicode") from exc


@dataclass(frozen=True)
class KnobSpec:
    """What a front-end needs to offer one knob: type, range, default, help."""

    name: str
    kind: type
    minimum: float | None
    maximum: float | None
    default: Any
    description: str

    def range_text(self) -> str:
        if self.name == "stop":
            return f"up to {MAX_STOP_SEQUENCES} strings of 1–{MAX_STOP_LENGTH} characters"
        return f"{_fmt(self.minimum)} to {_fmt(self.maximum)}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)


def _spec(name: str) -> KnobSpec:
    field = Knobs.model_fields[name]
    minimum: float | None = None
    maximum: float | None = None
    for meta in field.metadata:
        if isinstance(meta, Ge):
            minimum = float(meta.ge)  # type: ignore[arg-type]
        elif isinstance(meta, Le):
            maximum = float(meta.le)  # type: ignore[arg-type]
    kind: type = field.annotation if isinstance(field.annotation, type) else tuple
    return KnobSpec(name, kind, minimum, maximum, field.default, field.description or "")


KNOB_SPECS: dict[str, KnobSpec] = {name: _spec(name) for name in KNOB_NAMES}

PRESETS: dict[str, dict[str, Any]] = {
    "precise": {"temperature": 0.2, "top_p": 0.5, "top_k": 10, "repetition_penalty": 0.1},
    "balanced": {"temperature": 0.7, "top_p": 0.95, "top_k": -1, "repetition_penalty": 0.0},
    "creative": {"temperature": 1.1, "top_p": 0.98, "top_k": -1, "repetition_penalty": 0.15},
}


def describe_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's report into one polite sentence per problem, naming the knob."""
    parts: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        msg = str(err["msg"])
        msg = msg.removeprefix("Value error, ")
        spec = KNOB_SPECS.get(loc)
        if spec is not None and spec.kind in (int, float):
            # Range, type and parse errors read as one sentence: what it takes, what it got.
            parts.append(_must_be(spec, err.get("input")))
        elif spec is not None:
            parts.append(f"`{loc}` {_soften(msg)}.")
        elif loc:
            parts.append(f"`{loc}`: {_soften(msg)}.")
        else:
            parts.append(f"{_soften(msg)}.")
    return " ".join(parts) or "Those settings are not valid."


def _soften(msg: str) -> str:
    return msg[0].lower() + msg[1:] if msg else msg


def _must_be(spec: KnobSpec, got: Any) -> str:
    kind = "a whole number" if spec.kind is int else "a number"
    return f"`{spec.name}` must be {kind} from {spec.range_text()}, not {got!r}."


def _known(name: str) -> KnobSpec:
    spec = KNOB_SPECS.get(name)
    if spec is None:
        raise InvalidKnobs(f"Unknown setting `{name}`. Known: {', '.join(KNOB_NAMES)}.")
    return spec


def knobs_from_generation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The knob values a checkpoint's `generation_config.json` recommends.

    Only what the file states: temperature, top_p and top_k when it samples
    (`do_sample` true; transformers ignores them otherwise), and repetition_penalty
    (transformers' factor, 1 = off, becomes our additive value). A value outside a
    knob's range is left out rather than bent into it.
    """
    wanted: dict[str, Any] = {}
    if config.get("do_sample") is True:
        for name in ("temperature", "top_p", "top_k"):
            if name in config:
                wanted[name] = config[name]
    factor = config.get("repetition_penalty")
    if isinstance(factor, int | float) and not isinstance(factor, bool):
        wanted["repetition_penalty"] = round(float(factor) - 1.0, 6)
    out: dict[str, Any] = {}
    for name, value in wanted.items():
        try:
            out[name] = getattr(Knobs.model_validate({name: value}), name)
        except ValidationError:
            continue
    return out


def build_knobs(values: dict[str, Any], base: Knobs | None = None) -> Knobs:
    """Validate `values` layered over `base`, raising `InvalidKnobs` with a clear message."""
    unknown = sorted(set(values) - set(KNOB_NAMES))
    if unknown:
        raise InvalidKnobs(
            f"Unknown setting {', '.join(f'`{u}`' for u in unknown)}. "
            f"Known: {', '.join(KNOB_NAMES)}."
        )
    merged = (base or Knobs()).model_dump()
    merged.update(values)
    try:
        return Knobs.model_validate(merged)
    except ValidationError as exc:
        raise InvalidKnobs(describe_validation_error(exc)) from None


def validate_knob(name: str, value: Any) -> Any:
    """Validate one knob on its own (the cross-knob min/max rule is checked when merged)."""
    _known(name)
    probe: dict[str, Any] = {name: value}
    if name == "min_new_tokens":
        probe["max_new_tokens"] = KNOB_SPECS["max_new_tokens"].maximum
    try:
        return getattr(Knobs.model_validate(probe), name)
    except ValidationError as exc:
        raise InvalidKnobs(describe_validation_error(exc)) from None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def unescape_stop(text: str) -> str:
    r"""Turn the escapes people type in a one-line field (``\n``, ``\t``, ``\\``) into characters.

    Unknown escapes are kept as typed, so a Windows path or a regex survives.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def escape_stop(text: str) -> str:
    """The inverse of `unescape_stop`, for showing stop sequences on one line."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def parse_knob_text(name: str, raw: str) -> Any:
    """Parse a knob typed as text (console, `/knobs set stop:`) into a validated value."""
    spec = _known(name)
    if name == "stop":
        raw = raw.strip()
        if raw in ("", "none", "[]"):
            return validate_knob(name, ())
        parts = [unescape_stop(p) for p in _split_stop_list(raw)]
        return validate_knob(name, parts)
    text = raw.strip()
    try:
        value: Any = int(text) if spec.kind is int else float(text)
    except ValueError:
        raise InvalidKnobs(_must_be(spec, raw)) from None
    return validate_knob(name, value)


def parse_assignments(text: str) -> dict[str, Any]:
    r"""`temperature=0.9 stop="\n\n"` (the /knobs set syntax) → validated values.

    One clear error per bad knob. Shared by `/compare` variants and anything else
    that takes knobs as one line of text.
    """
    try:
        items = shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidKnobs(f"Couldn't read that: {exc}.") from None
    if not items:
        raise InvalidKnobs("Give knob=value pairs, e.g. temperature=0.9.")
    values: dict[str, Any] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq:
            raise InvalidKnobs(f"Expected knob=value, got {item!r}.")
        values[name] = parse_knob_text(name, raw)
    return values


def _split_stop_list(raw: str) -> list[str]:
    r"""Several stop sequences are separated by ``|`` (escape a literal bar as ``\|``)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if raw[i] == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(raw[i])
        i += 1
    parts.append("".join(cur))
    return parts


def format_knob(name: str, value: Any) -> str:
    """A knob's value as people read it (stop sequences escaped and quoted)."""
    if name == "stop":
        return ", ".join(f'"{escape_stop(s)}"' for s in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


#: How /knobs show and the console word the sentinel values the knobs model uses.
_SENTINELS: dict[tuple[str, Any], str] = {
    ("top_k", -1): "no limit",
    ("min_new_tokens", -1): "off",
    ("repetition_penalty", 0.0): "off",
    ("stop", ()): "none",
}


def display_knob(name: str, value: Any) -> str:
    """A knob's value as a member reads it: "no limit" / "off" rather than -1 / 0."""
    key = (name, tuple(value) if isinstance(value, list | tuple) else value)
    word = _SENTINELS.get(key)
    return word if word is not None else format_knob(name, value)
