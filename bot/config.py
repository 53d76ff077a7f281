"""Process configuration from the environment and a `.env` file.

Loaded once at start-up by `load_settings()` and passed down; nothing reads the
environment at import time, so tests and the console never need a token.
Every variable is documented in `.env.example`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError

ENV_PREFIX = "BOT_"

#: What a model may be called: what `/model set` takes and a scope stores.
MODEL_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: The `dir` of a BOT_MODEL_DIRS entry that means the model shipped with the bot.
EMBEDDED_DIR: Final = "embedded"
#: The weight types CTranslate2 can store (the converters' and BOT_QUANTIZATION's choices).
QUANTIZATIONS: Final = (
    "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
    "float32",
)
#: BOT_COMPUTE_TYPE's choices: a weight type, or CTranslate2's own pick.
COMPUTE_TYPES: Final = frozenset({"default", "auto", *QUANTIZATIONS})
#: The URL schemes that select PostgreSQL.
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def model_slug(text: str) -> str:
    """A model name from a folder or a converter's name: lowercase, `-` for the rest."""
    keep = "".join(c.lower() if (c.isascii() and c.isalnum()) or c in "._" else "-" for c in text)
    slug = "-".join(part for part in keep.split("-") if part).lstrip("._-")
    return slug[:64].rstrip("-") or "model"


class ModelEntry(BaseModel):
    """One model of BOT_MODEL_DIRS: a converted folder and what to load it with.

    Every field but `dir` is optional: the name defaults to the folder's
    bot_model.json name (else the folder's name), compute type, context window
    and device to the global BOT_COMPUTE_TYPE, BOT_CONTEXT_LENGTH and BOT_DEVICE /
    BOT_DEVICE_INDEX, and the weight size to model.bin's size on disk (what the
    memory budget is charged; set `weight_mb` when the compute type changes it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path | None = None
    """None (written `"embedded"`): the embedded model, converted into BOT_MODELS_ROOT."""
    name: str | None = None
    compute_type: str | None = None
    context_length: int | None = Field(None, ge=16)
    device: Literal["auto", "cpu", "cuda"] | None = None
    device_index: tuple[int, ...] | None = None
    weight_mb: float | None = Field(None, gt=0)

    @field_validator("dir", mode="before")
    @classmethod
    def _embedded(cls, value: object) -> object:
        return None if value == EMBEDDED_DIR else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not MODEL_NAME_RE.fullmatch(value):
            raise ValueError(
                "must be 1-64 characters: lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("compute_type")
    @classmethod
    def _compute_type(cls, value: str | None) -> str | None:
        return _known_compute_type(value)

    @field_validator("device_index")
    @classmethod
    def _indices(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or min(value) < 0):
            raise ValueError("must list at least one GPU index, none negative")
        return value

    @property
    def embedded(self) -> bool:
        return self.dir is None


def _known_compute_type(value: str | None) -> str | None:
    if value is None or value in COMPUTE_TYPES:
        return value
    raise ValueError(f"must be one of {', '.join(sorted(COMPUTE_TYPES))}")


def parse_model_dirs(value: object) -> list[ModelEntry] | None:
    """BOT_MODEL_DIRS: a JSON list of folders (strings) or objects; errors name the entry.

    Parsed here rather than by pydantic-settings so a mistyped list gives one
    sentence saying which entry and which field, not a JSON decoder's trace.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                'must be a JSON list, e.g. ["/models/a", {"dir": "/models/b", "name": "b"}] '
                f"({exc.msg} at character {exc.pos})"
            ) from None
    if not isinstance(value, list | tuple):
        raise ValueError("must be a JSON list of model folders or objects")
    if not value:
        raise ValueError(
            "lists no model; leave it unset to serve BOT_MODEL_DIR or the embedded one"
        )
    entries: list[ModelEntry] = []
    for number, item in enumerate(value, 1):
        raw = {"dir": item} if isinstance(item, str | Path) else item
        if isinstance(raw, ModelEntry):
            entries.append(raw)
            continue
        if not isinstance(raw, dict):
            raise ValueError(f"entry {number} must be a folder (text) or an object with a dir")
        if "dir" not in raw:
            raise ValueError(f'entry {number} has no "dir" (a folder, or "{EMBEDDED_DIR}")')
        try:
            entries.append(ModelEntry.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(f"entry {number}: {problems}") from None
    return entries


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
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host/db: the store on a PostgreSQL "
        "server shared by several hosts, instead of the SQLite file at BOT_DATABASE_PATH.",
    )
    models_root: Path = Path("data/models")
    model_dir: Path | None = Field(
        None, description="A CTranslate2 model directory; default: the embedded model."
    )
    context_length: int | None = Field(
        None, ge=16, description="The model's context window, overriding its files."
    )
    model_dirs: Annotated[list[ModelEntry] | None, NoDecode] = Field(
        None, description="Several models: a JSON list of folders or objects (see .env.example)."
    )
    default_model: str | None = Field(
        None, description="The model served where no scope chooses one; default: the first."
    )
    model_memory_budget_mb: float = Field(
        0.0, ge=0.0, le=1e9,
        description="Weights (MB) the loaded models may hold per device; 0 = no limit.",
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
    decode_nice: int = Field(
        10, ge=0, le=19,
        description="How much lower than the event loop CTranslate2's decoding threads run "
        "(Linux nice); 0 = the same.",
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
    http_connections: int = Field(
        64, ge=1, le=1000,
        description="Connections kept open to Discord's API; a flood of presses reuses "
                    "them instead of opening (and TLS-handshaking) one per request.",
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
        True, description="In shared conversations: stop the reply at a line that starts "
        "another speaker's turn (\\nName:), so the model never writes members' lines.",
    )

    # Talking without @ and files as context
    message_content: bool = Field(
        False, description="Read members' messages in followed threads and channels (needs "
        "the privileged Message Content intent switched on in the Developer Portal).",
    )
    file_max_bytes: int = Field(
        100_000, ge=1_000, le=8_000_000, description="Largest text file read as context."
    )
    file_max_count: int = Field(3, ge=0, le=10, description="Files read per ask; 0 = none.")

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _model_dirs(cls, value: object, info: ValidationInfo) -> list[ModelEntry] | None:
        entries = parse_model_dirs(value)
        if entries is not None and info.data.get("model_dir") is not None:
            raise ValueError("set BOT_MODEL_DIR (one model) or BOT_MODEL_DIRS, not both")
        return entries

    @field_validator("default_model")
    @classmethod
    def _default_model(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().lower()
        if not MODEL_NAME_RE.fullmatch(value):
            raise ValueError("is not a model name (lowercase letters, digits, '.', '_', '-')")
        return value

    def model_entries(self) -> list[ModelEntry]:
        """The models to serve: BOT_MODEL_DIRS, else BOT_MODEL_DIR, else the embedded one."""
        if self.model_dirs:
            return list(self.model_dirs)
        return [ModelEntry(dir=self.model_dir)]

    @field_validator("compute_type")
    @classmethod
    def _compute_type(cls, value: str | None) -> str | None:
        return _known_compute_type(value)

    @field_validator("quantization")
    @classmethod
    def _known_quantization(cls, value: str) -> str:
        if value in QUANTIZATIONS:
            return value
        raise ValueError(f"must be one of {', '.join(sorted(QUANTIZATIONS))}")

    @field_validator("database_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: object) -> object:
        """Empty means unset (SQLite); anything else must be a postgresql:// URL."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if not isinstance(raw, str) or not raw.strip().startswith(POSTGRES_SCHEMES):
            raise ValueError("must be a postgresql://user:password@host:port/database URL")
        return raw.strip()

    @property
    def database_target(self) -> Path | str:
        """What `bot.store.connect.open_database` takes: the PostgreSQL URL, else the file."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.database_path

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
