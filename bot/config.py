"""Process configuration from the environment and a `.env` file.

Loaded once at start-up by `load_settings()` and passed down; nothing reads the
environment at import time, so tests and the console never need a token.
Every variable is documented in `.env.example`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

ENV_PREFIX = "BOT_"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


class Settings(BaseSettings):
    """Everything an operator may tune, with defaults that work on a laptop."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # Discord
    discord_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DISCORD_TOKEN", "BOT_DISCORD_TOKEN")
    )
    sync_guild_ids: list[int] = Field(
        default_factory=list,
        description="Sync slash commands to these servers only (instant; for development).",
    )
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None
    discord_api_base: str | None = Field(
        None,
        description="REST base URL instead of Discord's, e.g. http://127.0.0.1:PORT/api/v10 "
        "(tests and API proxies).",
    )
    discord_gateway_url: str | None = Field(
        None, description="Gateway URL instead of Discord's (tests and gateway proxies)."
    )

    # Storage
    database_path: Path = Path("data/bot.sqlite3")
    models_root: Path = Path("data/models")
    model_dir: Path | None = Field(
        None, description="A CTranslate2 model directory; default: the embedded model."
    )
    context_length: int | None = Field(
        None, ge=16, description="The model's context window, overriding its files."
    )

    # Engine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    device_index: list[int] = Field(default_factory=lambda: [0])
    compute_type: str | None = Field(
        None, description="Default int8_float16 on CUDA, int8 on CPU."
    )
    quantization: str = Field(
        "int8", description="Quantization used when preparing the embedded model."
    )
    cpu_threads: int = Field(
        0, ge=0, description="Threads per replica on the CPU; 0 = the cores left per replica."
    )
    inter_threads: int = Field(
        0, ge=0, le=64,
        description="Model replicas sharing the weights; 0 = auto (1 on CUDA, 1 per core up to 4).",
    )
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: int = Field(
        15, ge=0, le=1000, description="How long a free replica waits to fill a batch."
    )
    queue_size: int = Field(32, ge=1, le=10_000, description="Requests allowed to wait.")
    timeslice_s: float = Field(
        2.0, ge=0.0, le=600.0,
        description="A batch yields to waiting asks with other settings after this; 0 = never.",
    )
    seed: int | None = Field(
        None, ge=0, description="Seeds the sampler once per process (repeatable demos)."
    )
    persona_cache_mb: float = Field(
        512.0, ge=0.0, le=1_000_000.0,
        description="Hard bound on personas' decoder state kept between asks (MB); 0 = keep none.",
    )
    system_prompt: str = Field(
        "", description="Default persona; empty keeps the model's own default."
    )

    # Front-end pacing and fairness
    edit_interval_s: float = Field(
        1.25, ge=0.2, le=10.0,
        description="Seconds between edits; 5 edits per 5 s leaves one slot for the footer.",
    )
    per_user_limit: int = Field(1, ge=1, le=100)
    user_cooldown_s: float = Field(0.0, ge=0.0, le=3600.0)
    shutdown_grace_s: float = Field(20.0, ge=0.0, le=600.0)
    settings_write_limit: int = Field(
        10, ge=0, le=10_000,
        description="Settings changes per member per window (every DM user may write); 0 = off.",
    )
    settings_write_window_s: float = Field(60.0, ge=0.0, le=86_400.0)
    max_new_tokens_ceiling: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Most new tokens a reply may have anywhere (servers, channels, DMs); "
        "unset = the knob's own range.",
    )

    # Retention
    history_per_scope: int = Field(
        200, ge=1, le=1_000_000, description="Audit-trail changes kept per scope."
    )
    history_retention_days: float = Field(365.0, gt=0.0, le=36_500.0)
    ask_retention_days: float = Field(
        7.0, gt=0.0, le=3650.0, description="How long Regenerate keeps a prompt."
    )

    # Conversations
    conversation_retention_days: int = Field(
        30, ge=0, le=3650,
        description="Days conversation turns are kept (then pruned); 0 = keep for ever.",
    )
    conversation_names: bool = Field(
        True, description="Prefix each question in a shared conversation with its speaker."
    )
    speaker_stops: bool = Field(
        False, description="With conversation_names: stop the reply at a line that starts "
        "another speaker's turn (\\nName:), so the model never writes members' lines.",
    )

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("compute_type")
    @classmethod
    def _known_compute_type(cls, value: str | None) -> str | None:
        if value is None or value in COMPUTE_TYPES:
            return value
        raise ValueError(f"must be one of {', '.join(sorted(COMPUTE_TYPES))}")

    @field_validator("quantization")
    @classmethod
    def _known_quantization(cls, value: str) -> str:
        if value in COMPUTE_TYPES - {"auto", "default"}:
            return value
        raise ValueError(f"must be one of {', '.join(sorted(COMPUTE_TYPES - {'auto', 'default'}))}")

    @field_validator("discord_api_base", "discord_gateway_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        """Empty means unset; anything else must be a full URL, so a typo fails at start."""
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"^(https?|wss?)://[^/\s]+", value):
            raise ValueError("must be an absolute http(s):// or ws(s):// URL")
        return value

    @property
    def has_token(self) -> bool:
        return self.discord_token is not None and bool(self.discord_token.get_secret_value())


COMPUTE_TYPES = frozenset(
    {
        "default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
        "int16", "float16", "bfloat16", "float32",
    }
)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build the settings, turning a validation failure into one readable `ConfigError`.

    The message names the environment variable, never its value, so a mistyped
    token cannot leak into a log.
    """
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = "DISCORD_TOKEN" if field == "discord_token" else ENV_PREFIX + field.upper()
            problems.append(f"{var}: {err['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None


def env_file_warning(env_file: str | Path | None) -> str | None:
    """A warning when the dotenv file (it holds the bot's token) is readable by others.

    `cp .env.example .env` under a normal umask makes a 0644 file: anyone with a
    shell on the host could read the token. Checked at start rather than fixed,
    since the operator decides who owns the file.
    """
    if env_file is None:
        return None
    path = Path(env_file)
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode) or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{path} can be read by other users of this machine (mode {stat.S_IMODE(mode):04o}) "
        f"and may hold the bot's token: run `chmod 600 {os.fspath(path)}`."
    )
