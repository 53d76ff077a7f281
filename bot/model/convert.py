"""`python -m bot convert SOURCE DEST`: one entry for both checkpoint kinds.

A `.gguf` file goes through `gguf_convert`, a Hugging Face model directory through
`hf_convert`; either way DEST is a model directory the bot serves as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.model.gguf_convert import ConversionError, convert_gguf
from bot.model.hf_convert import convert_checkpoint


def progress_bar(stream: TextIO = sys.stderr, width: int = 30) -> Callable[[int, int], None]:
    """A one-line text bar over the layers, redrawn in place; a newline when done."""

    def draw(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} layers")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return draw


def convert(
    source: Path,
    dest: Path,
    quantization: str = "int8",
    progress: Callable[[str], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert a GGUF file or a Hugging Face directory into the model directory `dest`."""
    if not source.exists():
        raise ConversionError(f"Nothing to convert at {source}: no such file or directory.")
    if source.resolve() == dest.resolve() or source.resolve() in dest.resolve().parents:
        raise ConversionError("DEST must be a new directory outside SOURCE.")
    if source.is_dir():
        return convert_checkpoint(source, dest, quantization, progress, on_layer)
    if source.suffix.lower() == ".gguf":
        return convert_gguf(source, dest, quantization, progress, on_layer)
    raise ConversionError(
        f"{source.name} is neither a .gguf file nor a Hugging Face model directory "
        "(config.json, *.safetensors, tokenizer.json or tokenizer.model)."
    )
