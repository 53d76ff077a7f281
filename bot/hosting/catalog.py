"""Which models this host serves: names, folders, devices and what their weights weigh.

Built at start-up from `BOT_MODEL_DIRS` (or `BOT_MODEL_DIR`, or the embedded model)
from cheap facts only (bot_model.json's name, model.bin's size, the files' context
window): `/model list` describes models not loaded, and a broken folder fails
alone at its first load. The memory budget is charged model.bin's size, what
CTranslate2 holds when the compute type keeps the stored weight type; an entry's
`weight_mb` says otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import MODEL_NAME_RE, ModelEntry, model_slug
from bot.errors import ConfigError, UserFacingError
from bot.model.bundle import read_context_length

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: its name, folder and how to load it; nothing loaded yet.

    `device` is resolved ("cpu" or "cuda", never "auto"): the memory budget is
    kept per device, and a model on several GPUs (`device_index` [0, 1]) holds its
    weights on each of them.
    """

    name: str
    dir: Path
    device: str = "cpu"
    device_index: tuple[int, ...] = (0,)
    compute_type: str | None = None
    context_length: int | None = None
    """The configured override (entry, else BOT_CONTEXT_LENGTH); None: the files decide."""
    weight_bytes: int = 0
    files_context_length: int | None = None
    """The window the folder's files state (read at start-up), for listing."""
    embedded: bool = False

    @property
    def devices(self) -> tuple[str, ...]:
        """The budget keys this model is charged on: "cpu", or "cuda:N" per GPU."""
        if self.device == "cpu":
            return ("cpu",)
        return tuple(f"{self.device}:{i}" for i in self.device_index)

    @property
    def window(self) -> int | None:
        """The context window a load will use, as far as it is known before loading."""
        return self.context_length or self.files_context_length


@dataclass(frozen=True)
class ModelCatalog:
    """The configured models, in the operator's order, and the default one."""

    specs: tuple[ModelSpec, ...]
    default: str

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if not names:
            raise ValueError("a catalog needs at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        if self.default not in names:
            raise ValueError(f"the default {self.default!r} is not one of {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def get(self, name: str) -> ModelSpec | None:
        key = name.strip().lower()
        return next((s for s in self.specs if s.name == key), None)

    def spec(self, name: str) -> ModelSpec:
        """The spec named `name`, or a `UnknownModel` listing the configured ones."""
        found = self.get(name)
        if found is None:
            raise UnknownModel(name, self.names)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


class UnknownModel(UserFacingError):
    """A model name that is not configured on this host."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        shown = name if MODEL_NAME_RE.fullmatch(name.strip().lower()) else "that name"
        super().__init__(
            f"There is no model called `{shown}` here. Models: "
            + ", ".join(f"`{k}`" for k in known) + "."
        )
        self.name = name


def weight_bytes_of(model_dir: Path) -> int:
    """model.bin's size on disk; 0 when it is missing (the load then says why)."""
    try:
        return (model_dir / "model.bin").stat().st_size
    except OSError:
        return 0


def model_name_of(model_dir: Path) -> str:
    """bot_model.json's name (our converter's output), else the folder's, as a model name."""
    try:
        data = json.loads((model_dir / "bot_model.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"].strip():
        return model_slug(data["name"])
    return model_slug(model_dir.name)


def _files_window(model_dir: Path) -> int | None:
    try:
        return read_context_length(model_dir) if model_dir.is_dir() else None
    except UserFacingError as exc:  # unreadable JSON: the load will report it
        log.warning("%s: %s", model_dir, exc)
        return None


def build_catalog(
    entries: Sequence[ModelEntry],
    *,
    default: str | None = None,
    device: str = "auto",
    device_index: Sequence[int] = (0,),
    compute_type: str | None = None,
    context_length: int | None = None,
    prepare_embedded: Callable[[], Path],
    resolve_device: Callable[[str], str],
) -> ModelCatalog:
    """Specs for `entries`, with the global defaults filled in; `ConfigError` on clashes.

    `prepare_embedded` converts the shipped model on first start (about 10 s) and
    returns its folder; `resolve_device` turns "auto" into "cuda" or "cpu".
    """
    if not entries:
        raise ConfigError("No model is configured (BOT_MODEL_DIRS is empty).")
    specs: list[ModelSpec] = []
    where: dict[str, Path] = {}
    for entry in entries:
        embedded = entry.dir is None
        folder = prepare_embedded() if entry.dir is None else entry.dir.expanduser()
        name = entry.name or model_name_of(folder)
        if name in where:
            raise ConfigError(
                f"BOT_MODEL_DIRS: two models are named `{name}` ({where[name]} and {folder}); "
                'give one of them a "name".'
            )
        where[name] = folder
        weight = (
            int(entry.weight_mb * MB) if entry.weight_mb is not None else weight_bytes_of(folder)
        )
        specs.append(
            ModelSpec(
                name=name,
                dir=folder,
                device=resolve_device(entry.device or device),
                device_index=tuple(entry.device_index or device_index),
                compute_type=entry.compute_type or compute_type,
                context_length=entry.context_length or context_length,
                weight_bytes=weight,
                files_context_length=_files_window(folder),
                embedded=embedded,
            )
        )
    chosen = default or specs[0].name
    if chosen not in where:
        raise ConfigError(
            f"BOT_DEFAULT_MODEL: no model is called `{chosen}`; configured: "
            + ", ".join(where) + "."
        )
    return ModelCatalog(specs=tuple(specs), default=chosen)
