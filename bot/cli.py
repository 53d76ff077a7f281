"""Command line: `python -m bot COMMAND`: run, console, ask, prompt, probs, compare, bench ….

`run` (the default) starts the Discord bot when a token is configured and the
local console otherwise, so the README's one run command works for everyone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Settings, env_file_warning, load_settings
from bot.errors import ConfigError, UserFacingError
from bot.knobs import KNOB_SPECS, unescape_stop
from bot.ops.logs import setup_logging
from bot.store.connect import open_database

if TYPE_CHECKING:
    from bot.engine import Engine, GenerationRequest

log = logging.getLogger("bot")

#: What a shell reports for a program ended by SIGPIPE: `bot ask … | head -c1`.
EXIT_BROKEN_PIPE = 128 + 13


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
    ask.add_argument("--file", action="append", default=[], metavar="PATH",
                     help="a text file the model reads with the prompt (repeatable)")
    _add_knob_flags(ask)

    prompt = sub.add_parser(
        "prompt", help="show exactly what the model reads for an ask: text and every token"
    )
    prompt.add_argument("text", help="the prompt, as a member would type it")
    prompt.add_argument("--system", help="persona (default: the console's, as /ask uses)")
    prompt.add_argument("--json", action="store_true", help="one line of JSON")
    prompt.add_argument("--file", action="append", default=[], metavar="PATH",
                        help="a text file read with the prompt, as an attachment (repeatable)")

    _add_lab_parsers(sub)

    # The benches are tooling in the checkout (`python -m bench`); their flags are theirs.
    sub.add_parser("bench", add_help=False,
                   help="from a checkout: the same as `python -m bench ...`")

    prep = sub.add_parser("prepare-model", help="convert the embedded model (idempotent)")
    prep.add_argument("--quantization", help="int8 (default), float32, int8_float16, ...")

    conv = sub.add_parser(
        "convert", help="convert a Hugging Face model directory or a GGUF file for the bot"
    )
    conv.add_argument("source", type=Path, help="model directory (config.json, *.safetensors, "
                      "tokenizer) or .gguf file")
    conv.add_argument("dest", type=Path, help="the model directory to write (replaced if present)")
    conv.add_argument("--quantization", default="int8",
                      choices=["int8", "int8_float16", "float16", "bfloat16", "float32"],
                      help="weight type (default int8; float32 reproduces the checkpoint)")

    forget = sub.add_parser("forget", help="erase what is stored of one user or one server")
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="a Discord user id")
    who.add_argument("--server", type=int, help="a Discord server (guild) id")
    forget.add_argument("--database", type=Path, help="override BOT_DATABASE_PATH")

    st = sub.add_parser("settings", help="move servers' settings between shard hosts")
    st.add_argument("action", choices=["export", "import"])
    st.add_argument("--shard", type=int)
    st.add_argument("--shard-count", type=int)
    st.add_argument("--file", type=Path, help="JSON file (default: stdout / stdin)")

    db = sub.add_parser("db", help="the store's database: copy it between SQLite and PostgreSQL")
    db_sub = db.add_subparsers(dest="db_action", required=True)
    copy = db_sub.add_parser("copy", help="copy every table into an empty database, then "
                             "compare counts and content hashes (stop the bots first)")
    copy.add_argument("source", metavar="FROM", help="sqlite:PATH or postgresql://...")
    copy.add_argument("destination", metavar="TO", help="sqlite:PATH or postgresql://...")
    return parser


def _knob_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in KNOB_SPECS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = [unescape_stop(s) for s in v] if name == "stop" else v
    return values


def _request(settings: Settings, args: argparse.Namespace) -> GenerationRequest:
    """The request `ask`, `probs` and `compare` make: the flags over the default knobs."""
    from bot.chat.request import make_request
    from bot.knobs import Knobs

    system = args.system if args.system is not None else settings.system_prompt or None
    return make_request(
        args.prompt, base=Knobs(), system_prompt=system, overrides=_knob_values(args)
    )


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import load_engine, model_dir_for
    from bot.chat.files import attach, read_paths
    from bot.chat.request import footer
    from bot.console import stream_reply

    request = _request(settings, args)
    files, notes = read_paths(args.file, max_bytes=settings.file_max_bytes,
                              max_count=settings.file_max_count)
    for note in notes:
        print(note, file=sys.stderr)
    engine = await load_engine(settings, model_dir_for(settings, _progress))
    try:
        if files:
            prompt, _, cut = attach(
                request.prompt, files, system=request.system_prompt,
                context_length=engine.context_length,
                max_new_tokens=request.knobs.max_new_tokens, count_tokens=engine.count_tokens,
            )
            request = replace(request, prompt=prompt)
            for name in cut:
                print(f"only the beginning of {name} fits the model's window", file=sys.stderr)
        gen = engine.submit(request)

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        try:
            # stdout carries the reply alone: no queue lines (this engine serves one ask).
            result = await stream_reply(gen, write, show_queue=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader left (`| head -c1`): stop decoding, and point stdout at
            # /dev/null so the interpreter's own flush at exit can't fail again.
            gen.cancel()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE
        ttft = f" · {result.ttft_s * 1000:.0f} ms to first token" if result.ttft_s else ""
        print(f"{footer(result, operator=True)}{ttft} · finish: {result.finish_reason}",
              file=sys.stderr)
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        await engine.close()


async def _forget(settings: Settings, args: argparse.Namespace) -> int:
    """`forget --user ID | --server ID`: one transaction, then what it deleted."""
    from bot.store.retention import forget

    for value in (args.user, args.server):
        if value is not None and value < 0:
            print("error: ids are positive numbers", file=sys.stderr)
            return 2
    if settings.database_url is None and not settings.database_path.is_file():
        # Opening would create an empty database: say so instead of "deleted 0".
        print(f"error: no database at {settings.database_path} (BOT_DATABASE_PATH)",
              file=sys.stderr)
        return 1
    async with await open_database(settings.database_target) as db:
        done = await forget(db, user_id=args.user, guild_id=args.server)
    who = f"user {args.user}" if args.user is not None else f"server {args.server}"
    print(f"{who}: {done.describe()}.")
    return 0


# --- the knobs lab: `probs` and `compare` (bot.lab does the work) ---------------------


def _add_lab_parsers(sub: Any) -> None:
    probs = sub.add_parser(
        "probs", help="the model's next-token candidates, raw and after the knobs"
    )
    probs.add_argument("prompt")
    probs.add_argument("--system", help="system prompt (persona)")
    probs.add_argument("--seed", type=int, help="seed of the sampled pick shown")
    probs.add_argument("--top", type=int, default=10, help="candidates to show (1-40)")
    probs.add_argument("--after", default="",
                       help="the reply so far as token ids, comma-separated (walk a reply)")
    probs.add_argument("--json", action="store_true", help="one line of JSON")
    probs.add_argument("--png", type=Path, help="also write the chart to this PNG file")
    probs.add_argument("--raw", action="store_true",
                       help="continue the text as written, with no chat template or persona")
    _add_knob_flags(probs)
    compare = sub.add_parser(
        "compare", help="one prompt under two to four knob settings, side by side"
    )
    compare.add_argument("prompt")
    compare.add_argument("--variant", action="append", default=[],
                         help='knobs in the /knobs set syntax or a preset (repeat 2-4 times)')
    compare.add_argument("--system", help="system prompt (persona)")
    compare.add_argument("--seed", type=int, help="CTranslate2's seed for this process")
    compare.add_argument("--json", action="store_true", help="a JSON list, one object per variant")
    _add_knob_flags(compare)


async def _lab_command(settings: Settings, args: argparse.Namespace) -> int:
    """`probs` and `compare`: the request an `ask` would make, then the lab."""
    from bot.app import load_engine, model_dir_for

    request = _request(settings, args)
    after = _token_ids(args.after) if args.command == "probs" else []
    engine = await load_engine(settings, model_dir_for(settings, _progress))
    try:
        if args.command == "probs":
            return await _probs(engine, request, args, after)
        return await _compare(engine, request, args)
    finally:
        await engine.close()


def _token_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UserFacingError(
            "--after takes token ids separated by commas, e.g. 504,6783."
        ) from None


async def _probs(
    engine: Engine, request: GenerationRequest, args: argparse.Namespace, after: list[int]
) -> int:
    from bot.lab.chart import render_png
    from bot.lab.probs import format_table, probs_step

    step = await probs_step(engine, request, generated=after, top=args.top, seed=args.seed,
                            raw=args.raw)
    if args.png is not None:
        png = await asyncio.to_thread(lambda: render_png(step, prompt=request.prompt))
        args.png.write_bytes(png)
    if args.json:
        print(json.dumps(step.to_json(), ensure_ascii=False))
    else:
        print(format_table(step))
    return 0


async def _compare(engine: Engine, request: GenerationRequest, args: argparse.Namespace) -> int:
    from bot.chat.request import footer
    from bot.lab.compare import compare, plan_variants

    variants = plan_variants(args.variant, request.knobs)
    seed, results = await compare(engine, request, variants, seed=args.seed)
    if args.json:
        print(json.dumps([r.to_json(seed) for r in results], ensure_ascii=False))
        return 0
    for r in results:
        print(f"=== {r.label} (seed {seed}) ===")
        print(r.text)
        print(f"--- {footer(r.result, operator=True)}")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _convert(args: argparse.Namespace) -> int:
    """`convert SOURCE DEST`: needs no settings, so it runs before .env is read."""
    from bot.model.convert import convert, progress_bar

    try:
        convert(args.source, args.dest, args.quantization, progress=_progress,
                on_layer=progress_bar())
    except UserFacingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _bench(env_file: str, argv: list[str]) -> int:
    """`python -m bot bench ...` from a checkout: hand the flags to `python -m bench`.

    Found only where `bench/` is importable already (`python -m` puts the current
    directory first on the path): the installed bot does not reach into a checkout.
    """
    try:
        from bench import main as bench_main
    except ImportError:
        print("error: the benchmarks live in the source checkout: run `python -m bench ...` "
              "from its root.", file=sys.stderr)
        return 2
    return bench_main(["--env-file", env_file, *argv])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = args.command or "run"
    if command == "bench":
        return _bench(args.env_file, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if command == "convert":
        return _convert(args)
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
    warning = env_file_warning(args.env_file)
    if warning is not None:
        log.warning("%s", warning)
    try:
        if command == "prepare-model":
            from bot.model.embedded import prepare_default_model

            prepare_default_model(
                settings.models_root, args.quantization or settings.quantization, progress=print
            )
            return 0
        if command == "ask":
            return asyncio.run(_ask(settings, args))
        if command == "prompt":
            from bot.console.prompt_report import format_prompt_report, prompt_report

            report = asyncio.run(prompt_report(settings, args.text, args.system, _progress,
                                               files=args.file))
            if args.json:
                print(json.dumps(report, ensure_ascii=False))
            else:
                print("\n".join(format_prompt_report(report)))
            return 0 if report["fits"] else 1
        if command in ("probs", "compare"):
            return asyncio.run(_lab_command(settings, args))
        if command == "forget":
            return asyncio.run(_forget(settings, args))
        if command == "db":
            from bot.store.copy import run_copy

            status, lines = asyncio.run(run_copy(args.source, args.destination))
            print("\n".join(lines))
            return status
        if command == "settings":
            from bot.store.shards import run_settings_command

            return asyncio.run(run_settings_command(settings, args))
        if command == "console" or (command == "run" and not settings.has_token):
            from bot.console import run_console

            return asyncio.run(run_console(settings))
        return _run_discord(settings)
    except UserFacingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug: the traceback goes through the log, whose handler redacts secrets.
        log.exception("stopped by an unexpected error")
        return 1


def _run_discord(settings: Settings) -> int:
    """The bot, with Discord's refusals of the token as one line instead of a traceback."""
    import aiohttp
    import discord

    from bot.discord.client import run_bot

    try:
        return asyncio.run(run_bot(settings))
    except discord.LoginFailure:
        print("error: Discord refused the token (DISCORD_TOKEN): check it in the Developer "
              "Portal, or reset it and update .env.", file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        print("error: Discord refused the connection: this bot asked for a privileged intent "
              "that is not enabled in the Developer Portal.", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: couldn't reach Discord: {exc}", file=sys.stderr)
        return 1
