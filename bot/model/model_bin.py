"""Read the attributes a CTranslate2 `model.bin` stores, without loading its weights.

Used at start-up to tell what a directory converted elsewhere really holds: the
file lists each variable's name, shape, type and size before its bytes, so the
names and small scalars can be collected by seeking over the data.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Final

_FORMATS: Final = {0: "<f", 1: "<b", 2: "<h", 3: "<i", 4: "<e"}


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length)[:-1].decode("utf-8")


def scalars(path: Path, prefix: str) -> dict[str, float]:
    """Scalar variables whose names start with `prefix`, by the rest of the name.

    Raises OSError or ValueError (struct.error) for a file that is not a model.bin.
    """
    out: dict[str, float] = {}
    with path.open("rb") as f:
        f.read(4)  # binary version
        _string(f)  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            f.seek(4 * rank, 1)
            dtype, size = struct.unpack("<BI", f.read(5))
            if rank == 0 and name.startswith(prefix) and dtype in _FORMATS:
                (value,) = struct.unpack(_FORMATS[dtype], f.read(size))
                out[name[len(prefix):]] = float(value)
            else:
                f.seek(size, 1)
    return out
