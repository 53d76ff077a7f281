"""Fixtures of the Discord stories: a second model, for hosts serving several."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.model_factory import make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model other than the embedded one (another tokenizer, another window)."""
    return make_tiny_model(tmp_path_factory.mktemp("second"), seed=3)
