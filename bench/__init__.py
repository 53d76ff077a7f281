"""Benchmarks: measured numbers printed as JSON; never part of the installed bot.

`python -m bot bench [--discord|--soak|--mixed|--conversation|--lab] --json` reaches `run` from a
source checkout; `bench/store_bench.py` and `bench/gpu.sh` run on their own.
"""

from __future__ import annotations

import argparse
from typing import Any

from bot.config import Settings


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Dispatch to the bench the flags ask for."""
    if getattr(args, "lab", False):
        from bench.lab_bench import run_lab_bench

        return await run_lab_bench(settings, args)
    if getattr(args, "conversation", False):
        from bench.conversation_bench import run_conversation_bench

        return await run_conversation_bench(settings, args)
    if getattr(args, "minutes", None) is None:
        args.minutes = 2.0 if getattr(args, "mixed", False) else 10.0
    if getattr(args, "mixed", False):
        from bench.mixed_bench import run_mixed_bench

        return await run_mixed_bench(settings, args)
    if args.discord or args.soak:
        from bench.discord_bench import discord_bench

        return await discord_bench(settings, args)
    from bench.engine_bench import run_engine_bench

    return await run_engine_bench(settings, args)
