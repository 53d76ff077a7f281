"""Read the index of a CTranslate2 `model.bin` without loading its weights.

CTranslate2 does not expose what a converted directory holds (layer widths, RoPE
scaling), but the file lists each variable's name, shape, type and size before its
bytes, so shapes and small scalars can be collected by seeking over the data.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Final

#: Scalar formats by CTranslate2 DataType: float32, int8, int16, int32, float16.
_FORMATS: Final = {0: "<f", 1: "<b", 2: "<h", 3: "<i", 4: "<e"}


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length)[:-1].decode("utf-8")


def read_index(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, float]]:
    """Each array variable's shape and each scalar variable's value.

    Raises OSError, ValueError or struct.error for a file that is not a model.bin
    of format 4 or later (the first with typed variables).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    values: dict[str, float] = {}
    with path.open("rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 4:
            raise ValueError(f"model.bin format {version} predates typed variables")
        _string(f)  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
            dtype, size = struct.unpack("<BI", f.read(5))
            if rank == 0 and dtype in _FORMATS:
                (value,) = struct.unpack(_FORMATS[dtype], f.read(size))
                values[name] = float(value)
            else:
                shapes[name] = dims
                f.seek(size, 1)
    return shapes, values


def scalars(path: Path, prefix: str) -> dict[str, float]:
    """Scalar variables whose names start with `prefix`, by the rest of the name."""
    _, values = read_index(path)
    return {name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)}
