"""The fake Discord's side of `python -m bench --flood`, in a process of its own.

Started by the flood bench (`python -m bench.flood_fake --presses N`), never by
hand: it serves the flood's fake on 127.0.0.1, runs `flood_on_fake` on its own loop
and writes the result for the bench to merge (`testing.fake_discord.process`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from bench.flood_bench import flood_fake_options, flood_on_fake
from testing.fake_discord import FakeDiscord
from testing.fake_discord.process import ParentPipe, serve_for_parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood_fake")
    parser.add_argument("--presses", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    options, members = flood_fake_options()

    async def scenario(fake: FakeDiscord, pipe: ParentPipe) -> dict[str, object]:
        # The whole process is the fake: its CPU time is the fake's.
        return await flood_on_fake(fake, members, args.presses, pipe.mark, time.process_time)

    try:
        return asyncio.run(serve_for_parent(options, scenario))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
