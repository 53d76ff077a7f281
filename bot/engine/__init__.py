"""The generation engine: (persona, prompt, knobs) in, a stream of text out.

Knows nothing of Discord. Modules: `types` (requests, results, events, options,
the backend protocol), `generation` (one request's handle and decoding state),
`engine` (`Engine`: the queue and its lanes), `policy` (batch choice, preemption,
the cost model and persona cache), `worker` (the decoding threads, out-of-memory
retries), `loading` (device choice and CTranslate2 weights), `device_check` (the
start-up generation on a GPU), `streaming` (incremental detokenizer, stop matcher).
"""

from bot.engine.engine import Engine
from bot.engine.generation import Generation
from bot.engine.loading import cpu_layout, default_compute_type, resolve_device
from bot.engine.types import (
    EngineInfo,
    EngineOptions,
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
    "EngineOptions",
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
