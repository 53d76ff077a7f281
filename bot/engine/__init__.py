"""The generation engine: (persona, prompt, knobs) in, a stream of text out.

Knows nothing of Discord. Modules: `types` (requests, results, events, the
backend protocol), `generation` (one request's handle and decoding state),
`scheduler` (`Engine`: batching, preemption, lanes), `loading` (device choice
and CTranslate2 weights), `streaming` (incremental detokenizer, stop matcher).
"""

from bot.engine.generation import Generation
from bot.engine.loading import cpu_layout, default_compute_type, resolve_device
from bot.engine.scheduler import Engine
from bot.engine.types import (
    EngineInfo,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GeneratorBackend,
    PreparedPrompt,
    Queued,
    Started,
    TextDelta,
    Turn,
)

__all__ = [
    "Engine",
    "EngineInfo",
    "Event",
    "FinishReason",
    "Finished",
    "Generation",
    "GenerationRequest",
    "GenerationResult",
    "GeneratorBackend",
    "PreparedPrompt",
    "Queued",
    "Started",
    "TextDelta",
    "Turn",
    "cpu_layout",
    "default_compute_type",
    "resolve_device",
]
