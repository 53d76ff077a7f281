"""What every bench shares: the prompt, time to first text, and memory readings."""

from __future__ import annotations

import resource
import time

from bot.engine import Engine, GenerationRequest, GenerationResult, TextDelta

BENCH_PROMPT = (
    "You are helping a small community server plan a weekend hiking trip. Explain, in a "
    "friendly and detailed way, how to choose a trail that suits beginners and experienced "
    "hikers alike, what to pack for a day in the mountains in early autumn, how to check the "
    "weather and what to do if it turns, and how to share the plan with the group so that "
    "nobody is left behind. Finish with a short checklist."
)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def first_text(
    engine: Engine, request: GenerationRequest, missing: float = float("nan")
) -> tuple[float, GenerationResult]:
    """Seconds from submit to the first text (`missing` if none came), and the result."""
    start = time.perf_counter()
    first: float | None = None
    gen = engine.submit(request)
    async for event in gen.events():
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter() - start
    result = await gen.result()
    return (first if first is not None else missing), result
