"""Configuration: loaded on demand, documented, failing loudly and never leaking the token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_loads_and_documents_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(__import__("os").environ):
        if var.startswith("BOT_") or var == "DISCORD_TOKEN":
            monkeypatch.delenv(var)
    example = ROOT / ".env.example"
    settings = load_settings(example)
    assert not settings.has_token
    text = example.read_text()
    documented = set(re.findall(r"^#?\s*(BOT_[A-Z_]+|DISCORD_TOKEN)=", text, re.M))
    expected = {"DISCORD_TOKEN"} | {
        "BOT_" + name.upper() for name in Settings.model_fields if name != "discord_token"
    }
    assert expected <= documented, expected - documented


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_QUEUE_SIZE", "-3")
    with pytest.raises(ConfigError, match="BOT_QUEUE_SIZE"):
        load_settings(None)
    monkeypatch.setenv("BOT_QUEUE_SIZE", "4")
    monkeypatch.setenv("BOT_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="BOT_DEVICE"):
        load_settings(None)


def test_token_is_secret_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = "MTIz.secret-token-value.xyz"
    env = tmp_path / ".env"
    env.write_text(f"DISCORD_TOKEN={token}\nBOT_CPU_THREADS=2\n")
    settings = load_settings(env)
    assert settings.has_token and settings.cpu_threads == 2
    assert token not in repr(settings) and token not in str(settings.model_dump())
    monkeypatch.setenv("BOT_EDIT_INTERVAL_S", "nope")
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert token not in str(info.value)
