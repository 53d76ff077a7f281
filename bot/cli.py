"""Command line: `python -m bot [run|console|ask|bench|prepare-model|settings]`.

`run` (the default) starts the Discord bot when a token is configured and the
local console otherwise, so the README's one run command works for everyone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bot.config import Settings, load_settings
from bot.errors import ConfigError, UserFacingError
from bot.knobs import KNOB_SPECS, unescape_stop
from bot.ops.logs import setup_logging

log = logging.getLogger("bot")


def _add_knob_flags(p: argparse.ArgumentParser) -> None:
    """One flag per knob, named and typed from the knobs model (`--top-p`, `--stop` …)."""
    for name, spec in KNOB_SPECS.items():
        flag = "--" + name.replace("_", "-")
        if name == "stop":
            p.add_argument(flag, action="append", help=r"stop sequence (repeatable; \n escapes)")
        else:
            help_text = f"{spec.description} ({spec.range_text()})"
            p.add_argument(flag, type=spec.kind, dest=name, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("--env-file", default=".env", help="dotenv file (default: .env)")
    sub = parser.add_subparsers(dest="command")

    sub.add_parser("run", help="Discord bot with a token, else the local console")
    console = sub.add_parser("console", help="local console with /ask, /system, /knobs")
    console.add_argument("--database", type=Path, help="override BOT_DATABASE_PATH")

    ask = sub.add_parser("ask", help="stream one reply to stdout")
    ask.add_argument("prompt")
    ask.add_argument("--system", help="system prompt (persona)")
    ask.add_argument("--seed", type=int)
    _add_knob_flags(ask)

    bench = sub.add_parser("bench", help="measure and print JSON")
    bench.add_argument("--json", action="store_true", help="print only the JSON object")
    bench.add_argument("--discord", action="store_true", help="through the fake Discord API")
    bench.add_argument("--soak", action="store_true", help="bounded soak through the fake")
    bench.add_argument("--mixed", action="store_true",
                       help="mixed prompt lengths, personas, joins, timeslices, open loop")
    bench.add_argument("--minutes", type=float, help="soak length (default 10); --mixed: 2")
    bench.add_argument("--new-tokens", type=int, default=128)

    prep = sub.add_parser("prepare-model", help="convert the embedded model (idempotent)")
    prep.add_argument("--quantization", help="int8 (default), float32, int8_float16, ...")

    st = sub.add_parser("settings", help="move servers' settings between shard hosts")
    st.add_argument("action", choices=["export", "import"])
    st.add_argument("--shard", type=int)
    st.add_argument("--shard-count", type=int)
    st.add_argument("--file", type=Path, help="JSON file (default: stdout / stdin)")
    return parser


def _knob_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in KNOB_SPECS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = [unescape_stop(s) for s in v] if name == "stop" else v
    return values


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import load_engine, model_dir_for
    from bot.asks import footer, make_request
    from bot.engine import TextDelta
    from bot.knobs import Knobs

    system = args.system if args.system is not None else settings.system_prompt or None
    request = make_request(
        args.prompt, base=Knobs(), system_prompt=system, overrides=_knob_values(args)
    )
    engine = await load_engine(settings, model_dir_for(settings, _progress))
    try:
        gen = engine.submit(request)
        async for event in gen.events():
            if isinstance(event, TextDelta):
                sys.stdout.write(event.text)
                sys.stdout.flush()
        result = await gen.result()
        sys.stdout.write("\n")
        sys.stdout.flush()
        ttft = f" · {result.ttft_s * 1000:.0f} ms to first token" if result.ttft_s else ""
        print(f"{footer(result)}{ttft} · finish: {result.finish_reason}", file=sys.stderr)
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        await engine.close()


def _bench_runner() -> Any:
    """`bench.run` from the source checkout: benches are tooling, not part of the package.

    `python -m bot` run from the repository root finds `bench/` on the path; from
    anywhere else, look beside the `bot` package this process imported.
    """
    try:
        import bench
    except ImportError:
        root = Path(__file__).resolve().parent.parent
        if not (root / "bench" / "__init__.py").is_file():
            raise UserFacingError(
                "The benchmarks live in the source checkout (bench/); run this from it."
            ) from None
        sys.path.insert(0, str(root))
        import bench
    return bench.run


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    overrides: dict[str, Any] = {}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "database", None) is not None:
        overrides["database_path"] = args.database
    try:
        settings = load_settings(args.env_file, **overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if command == "prepare-model":
            from bot.model.embedded import prepare_default_model

            prepare_default_model(
                settings.models_root, args.quantization or settings.quantization, progress=print
            )
            return 0
        if command == "ask":
            return asyncio.run(_ask(settings, args))
        if command == "bench":
            run_bench = _bench_runner()
            out = asyncio.run(run_bench(settings, args))
            print(json.dumps(out, indent=None if args.json else 2))
            return 0
        if command == "settings":
            from bot.settings.shards import run_settings_command

            return asyncio.run(run_settings_command(settings, args))
        if command == "console" or (command == "run" and not settings.has_token):
            from bot.console import run_console

            return asyncio.run(run_console(settings))
        from bot.discord.client import run_bot

        return asyncio.run(run_bot(settings))
    except UserFacingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
