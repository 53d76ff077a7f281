"""A GPU host works from the first reply, or fails to start saying what is missing.

No GPU in the test environment: the backends here raise CTranslate2 4.x's own error
strings (what the wheel says without libcublas.so.12, or out of GPU memory), and the
engine is labelled "cuda" so the start-up path takes its CUDA branch on the CPU.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from bot.app import open_app
from bot.config import load_settings
from bot.engine import Engine
from bot.engine.device_check import DeviceCheckError, explain_device_error, gpu_self_check
from testing.backends import Failing

NO_CUBLAS = "Library libcublas.so.12 is not found or cannot be loaded"
CUDA_OOM = "CUDA failed with error out of memory"
OLD_DRIVER = (
    "CUDA failed with error CUDA driver version is insufficient for CUDA runtime version"
)
BAD_COMPUTE = (
    "Requested int8_float16 compute type, but the target device or backend do not support "
    "efficient int8_float16 computation."
)


def on_cuda(engine: Engine) -> Engine:
    engine.info = dataclasses.replace(engine.info, device="cuda", compute_type="int8_float16")
    return engine


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (NO_CUBLAS, ["libcublas.so.12", "nvidia-cublas-cu12", "LD_LIBRARY_PATH",
                     "docs/deploy.md"]),
        (CUDA_OOM, ["out of memory", "int8_float16", "BOT_COMPUTE_TYPE"]),
        (OLD_DRIVER, ["driver is too old"]),
    ],
)
async def test_self_check_names_what_is_missing(
    tiny_engine: Engine, message: str, says: list[str]
) -> None:
    failing = Failing(message)
    real = tiny_engine.set_backend(failing)
    with pytest.raises(DeviceCheckError) as caught:
        await gpu_self_check(on_cuda(tiny_engine))
    for words in says:
        assert words in caught.value.message
    assert message in caught.value.message  # CTranslate2's own words, for searching
    assert tiny_engine.backend is failing  # the check restores what it found
    (call,) = failing.calls
    assert call["max_length"] == 4  # one short generation with the default knobs
    assert call["sampling_temperature"] == 0.7
    tiny_engine.set_backend(real)


async def test_self_check_passes_on_a_working_device(tiny_engine: Engine) -> None:
    backend = tiny_engine.backend
    await gpu_self_check(on_cuda(tiny_engine))
    assert tiny_engine.backend is backend


def test_load_errors_are_explained() -> None:
    reason = explain_device_error(ValueError(BAD_COMPUTE), "int8_float16")
    assert reason is not None and "BOT_COMPUTE_TYPE" in reason
    assert explain_device_error(ValueError("some other problem"), "int8") is None


def _settings(model_dir: Path, tmp_path: Path, **extra: Any) -> Any:
    return load_settings(None, model_dir=model_dir, database_path=tmp_path / "bot.sqlite3",
                         device="cpu", cpu_threads=1, **extra)


def failing_cuda_loader(message: str) -> Any:
    import bot.app

    load = bot.app.load_engine
    loaded: list[Engine] = []

    async def load_on_cuda(settings: Any, model_dir: Path) -> Engine:
        engine = on_cuda(await load(settings, model_dir))
        engine.set_backend(Failing(message))
        loaded.append(engine)
        return engine

    load_on_cuda.loaded = loaded  # type: ignore[attr-defined]
    return load_on_cuda


async def test_open_app_fails_before_serving_and_closes_the_engine(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = failing_cuda_loader(NO_CUBLAS)
    monkeypatch.setattr("bot.app.load_engine", loader)
    with pytest.raises(DeviceCheckError, match=r"libcublas\.so\.12"):
        async with open_app(_settings(tiny_model_dir, tmp_path), progress=lambda _m: None):
            pytest.fail("served without a working GPU")
    (engine,) = loader.loaded
    assert engine.closing


async def test_no_ready_before_a_failed_gpu_check(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd sees the start fail with the reason, never READY=1 then broken replies."""
    from bot.discord.client import run_bot

    path = tmp_path / "n.sock"
    if len(str(path)) >= 100:
        pytest.skip("tmp_path too long for an AF_UNIX socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setattr("bot.app.load_engine", failing_cuda_loader(NO_CUBLAS))
    try:
        with pytest.raises(DeviceCheckError, match="nvidia-cublas-cu12"):
            await run_bot(_settings(tiny_model_dir, tmp_path, discord_token="x.y.z"))
        received = []
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        sock.close()
    assert received == ["STATUS=loading the model"]


async def test_load_failure_on_an_unsupported_compute_type_is_explained(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The CPU cannot run float16: CTranslate2's ValueError becomes a start-up error."""
    settings = _settings(tiny_model_dir, tmp_path, compute_type="float16")
    with pytest.raises(DeviceCheckError, match="BOT_COMPUTE_TYPE"):
        async with open_app(settings, progress=lambda _m: None):
            pytest.fail("loaded float16 on the CPU")


ROOT = Path(__file__).resolve().parents[2]


def test_unit_and_guide_agree_on_cublas_and_versions() -> None:
    """The unit's library path is the one the guide fills; models convert with the runtime."""
    unit = (ROOT / "systemd" / "llamacord.service").read_text(encoding="utf-8")
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (path,) = [line.split("=", 2)[2] for line in unit.splitlines()
               if line.startswith("Environment=LD_LIBRARY_PATH=")]
    assert path == "/opt/llamacord/.venv/cuda-lib"
    assert "pip install 'nvidia-cublas-cu12==12.*'" in guide
    assert ".venv/cuda-lib" in guide and "libcublas.so.12" in guide
    runtime = next(line.split("==")[1].strip('",') for line in pyproject.splitlines()
                   if '"ctranslate2==' in line)
    # Models are converted by the bot itself, with the runtime's own CTranslate2.
    assert "python -m bot convert" in guide and f"ctranslate2 {runtime}" in guide
    assert "hf download" in guide and "huggingface-cli download" not in guide
    assert "python3.11" in guide and "22.04" in guide
    assert "hf_config.json" in guide
