"""Benchmarks: measured numbers printed as JSON; never part of the installed bot.

`python -m bench [--discord|--soak|--mixed|--conversation|--prepare|--models|--lab|--finish|
--cards|--convert|--burst]
--json` or `python -m bench speakers --json`, from the root of a source checkout
(`python -m bot bench ...` there hands its flags here);
`bench/store_bench.py` and `bench/gpu.sh` run on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from bot.config import Settings, env_file_warning, load_settings
from bot.errors import ConfigError, UserFacingError
from bot.ops.logs import setup_logging

__all__ = ["build_parser", "main", "run"]

log = logging.getLogger("bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Measure the bot and print JSON.")
    parser.add_argument("bench", nargs="?", choices=("speakers",),
                        help="speakers: how often replies in a shared thread speak as members")
    parser.add_argument("--env-file", default=".env", help="dotenv file (default: .env)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--discord", action="store_true", help="through the fake Discord API")
    parser.add_argument("--soak", action="store_true", help="bounded soak through the fake")
    parser.add_argument("--conversation", action="store_true",
                        help="time to first text at turns 1, 5, 10 (600-token persona)")
    parser.add_argument("--prepare", action="store_true",
                        help="prepare time for 10/100/500-turn chains, event-loop stall")
    parser.add_argument("--mixed", action="store_true",
                        help="mixed prompt lengths, personas, joins, timeslices, open loop")
    parser.add_argument("--models", action="store_true",
                        help="two models: load, switching cost, both serving at once")
    parser.add_argument("--first-text", action="store_true",
                        help="with --discord: only submit → first visible text, one ask at a time")
    parser.add_argument("--finish", action="store_true",
                        help="share of everyday answers that end on their own per default")
    parser.add_argument("--minutes", type=float, help="soak length (default 10); --mixed: 2")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--flood", action="store_true",
                        help="ack latency of a flood of button presses while decoding")
    parser.add_argument("--presses", type=int, help="--flood: how many presses (default 1000)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--fake-same-loop", action="store_true",
                       help="--flood: the fake Discord on the bot's event loop (measured "
                            "with it) instead of a process of its own")
    where.add_argument("--fake-thread", action="store_true",
                       help="--flood: the fake Discord on a thread of the bot's process "
                            "(sharing its GIL) instead of a process of its own")
    parser.add_argument("--burst", action="store_true",
                        help="a burst in a followed channel answered together; file tokens")
    parser.add_argument("--convert", action="store_true",
                        help="bot convert: time and peak RSS, embedded GGUF and a 1B checkpoint")
    parser.add_argument("--convert-sizes",
                        help="with --convert: agreement,embedded,1b,300m (comma list; "
                        "default agreement,embedded,1b)")
    parser.add_argument("--lab", action="store_true",
                        help="probabilities step vs TTFT, chart render, compare of 3 vs one ask")
    parser.add_argument("--cards", action="store_true",
                        help="event-loop stall while hostile character cards are imported")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Settings from the environment and the dotenv file, as the bot reads them; one bench."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    warning = env_file_warning(args.env_file)
    if warning is not None:
        log.warning("%s", warning)
    try:
        out = asyncio.run(run(settings, args))
    except UserFacingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Dispatch to the bench the flags ask for."""
    if getattr(args, "bench", None) == "speakers":
        from bench.speakers_bench import run_speakers_bench

        return await run_speakers_bench(settings, args)
    if getattr(args, "cards", False):
        from bench.cards_bench import run_cards_bench

        return await run_cards_bench(settings, args)
    if getattr(args, "models", False):
        from bench.models_bench import run_models_bench

        return await run_models_bench(settings, args)
    if getattr(args, "convert", False):
        from bench.convert_bench import run_convert_bench

        return await run_convert_bench(settings, args)
    if getattr(args, "prepare", False):
        from bench.prepare_bench import run_prepare_bench

        return await run_prepare_bench(settings, args)
    if getattr(args, "finish", False):
        from bench.finish_bench import run_finish_bench

        return await run_finish_bench(settings, args)
    if getattr(args, "flood", False):
        from bench.flood_bench import run_flood_bench

        return await run_flood_bench(settings, args)
    if getattr(args, "burst", False):
        from bench.burst_bench import run_burst_bench

        return await run_burst_bench(settings, args)
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
