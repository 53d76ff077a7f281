"""The engine's vocabulary: what goes in, what comes out, and the backend seam.

Frozen dataclasses, so a result shared by a front-end, a metric hook and a test
cannot change under any of them. Nothing here imports CTranslate2.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.knobs import Knobs


class FinishReason(enum.StrEnum):
    END = "end"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class Turn:
    """An earlier turn of a conversation: who spoke ("user" or "assistant") and what."""

    role: str
    text: str


@dataclass(frozen=True)
class GenerationRequest:
    """One ask, already resolved against the settings store.

    `history` is the conversation before `prompt`, oldest first, alternating
    user/assistant and starting with a user turn; empty for a single-turn ask. An
    empty first user turn means nobody spoke before the assistant (a character's
    greeting opened the conversation); the chat template renders it away.
    `speakers` are the labels (people's and the persona's names) a reply in a
    shared conversation must not open with: a leading ``Name:`` is removed from
    what is streamed and returned.
    """

    prompt: str
    knobs: Knobs = field(default_factory=Knobs)
    system_prompt: str | None = None
    history: tuple[Turn, ...] = ()
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    decode_tok_s: float | None
    total_s: float
    finish_reason: FinishReason
    max_new_tokens: int
    clamped_to_context: bool = False
    error: str | None = None
    token_ids: tuple[int, ...] = ()
    """The ids the model wrote, end token excluded: the reply as generated, before a
    stop sequence or a speaker's label is cut from `text` (what Inspect walks)."""


@dataclass(frozen=True)
class Queued:
    """The request is waiting; `ahead` requests are before it."""

    ahead: int


@dataclass(frozen=True)
class Started:
    """Decoding of the request has begun (its prompt is being read)."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


Event = Queued | Started | TextDelta | Finished


class GeneratorBackend(Protocol):
    """The part of `ctranslate2.Generator` the engine uses; tests may wrap it."""

    def generate_batch(self, start_tokens: list[list[str]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PreparedPrompt:
    tokens: list[str]
    max_new_tokens: int
    clamped: bool
    prefix_tokens: int = 0
    """Leading tokens that are the rendered persona, read once per batch as CTranslate2's
    `static_prompt`; 0 when too short to matter."""


@dataclass(frozen=True)
class EngineInfo:
    model_name: str
    model_path: Path
    device: str
    compute_type: str
    inter_threads: int
    cpu_threads: int
    context_length: int
    load_s: float
    vocab_size: int = 0
    kv_bytes_per_token: int = 0
    """Bytes of decoder state one cached prompt token keeps; 0 if unknown."""


@dataclass(frozen=True)
class EngineOptions:
    """How one model is loaded and scheduled; built from `Settings`, one per model."""

    device: str = "auto"
    """"cpu", "cuda" or "auto" (CUDA when CTranslate2 sees a GPU)."""
    device_index: tuple[int, ...] = (0,)
    """GPUs to load a replica set on; replicas = `inter_threads` x GPUs."""
    compute_type: str | None = None
    """CTranslate2's compute type; None: int8_float16 on CUDA, int8 on the CPU."""
    cpu_threads: int = 0
    """Threads per replica on the CPU; 0 = the cores left per replica."""
    inter_threads: int = 1
    """Replicas sharing the weights; 0 = auto (1 on CUDA, 1 per core up to 4)."""
    decode_nice: int = 0
    """How much lower CTranslate2's own threads run than the loop (Linux nice; 0 = the same)."""
    max_batch_size: int = 8
    queue_size: int = 32
    """Requests allowed to wait; one more is refused with `QueueFull`."""
    batch_wait_ms: int = 15
    """How long a free replica waits for a burst to fill its batch."""
    timeslice_s: float = 2.0
    """A batch yields to waiting requests with other settings after this; 0 = never."""
    seed: int | None = None
    """Seeds the sampler once per process (CTranslate2 seeds when a Generator is built)."""
    context_length: int | None = None
    """The model's context window, overriding its files."""
    persona_cache_mb: float = 512.0
    """Bound on personas' decoder state kept between asks; 0 = keep none."""
