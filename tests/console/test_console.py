"""The local console as a user meets it: `python -m bot console` in a real process.

Scripted stories pipe lines into stdin (the console echoes each as `you> line`,
so the transcript reads like a session). The interactive tests give the console
a pseudo-terminal of its own, as a shell would, to check the `you> ` prompt,
that Ctrl-C stops only the reply being written, and that the terminal is left
as it was found.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.processes import ROOT, console_env, knob_table, run_console, transcript

pytestmark = pytest.mark.slow  # every story here runs `python -m bot` in a process

FOOTER = re.compile(r"^\[(\d+) tokens? · [^\]]*\]$", re.MULTILINE)
@pytest.fixture
def env(tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    return console_env(tiny_model_dir, tmp_path / "db" / "bot.sqlite3")


def test_scripted_session_sets_persona_and_knobs_that_survive_a_restart(
    env: dict[str, str],
) -> None:
    first = run_console(env, [
        "/system set You are a pirate.",
        '/knobs set max_new_tokens=5 min_new_tokens=5 temperature=0.3 stop="\\n\\n"',
        "/knobs show",
        "/knobs set --server top_k=7",
        "/knobs show",
        "/ask Tell me about the sea.",
        # The tiny random model likes blank lines, so the stop sequence may end the reply
        # early: drop it to see min_new_tokens = max_new_tokens give exactly 5 tokens.
        "/knobs reset stop",
        "What is a parrot?",
        "/knobs set temperature=9",
        "/knobs set nope=1",
        "/knobs set temperature=abc",
        "/knobs show",
        "/quit",
        "/help",
    ])
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith("bye\n")
    turns = transcript(first.stdout)
    said = dict(turns)
    assert [typed for typed, _ in turns][-1] == "/quit"  # nothing after /quit ran

    assert said["/system set You are a pirate."] == "System prompt set for this channel.\n"
    channel = knob_table(turns[2][1])
    assert channel["temperature"] == ("0.3", "channel")
    assert channel["max_new_tokens"] == ("5", "channel")
    assert channel["min_new_tokens"] == ("5", "channel")
    assert channel["stop"] == ('"\\n\\n"', "channel")
    assert channel["top_k"][1] == "default"
    # Sentinels read as words, as on Discord.
    assert channel["repetition_penalty"] == ("off", "default")
    assert re.search(r"top_k\s+no limit\s+\(default\)", turns[2][1]), turns[2][1]
    assert said["/knobs set --server top_k=7"] == "Set top_k=7 for this server.\n"
    both = knob_table(turns[4][1])
    assert both["top_k"] == ("7", "server")
    assert both["temperature"] == ("0.3", "channel")

    footer = FOOTER.search(said["/ask Tell me about the sea."])
    assert footer is not None and 1 <= int(footer[1]) <= 5, said["/ask Tell me about the sea."]
    plain = said["What is a parrot?"]  # no slash: an /ask
    footer = FOOTER.search(plain)
    assert footer is not None and footer[0].startswith("[5 tokens ·"), plain
    assert "cut at the limit of" in footer[0]

    for typed, knob in [("/knobs set temperature=9", "temperature"),
                        ("/knobs set nope=1", "nope"),
                        ("/knobs set temperature=abc", "temperature")]:
        answer = said[typed]
        assert answer.count("\n") == 1 and answer.startswith("error: "), answer
        assert f"`{knob}`" in answer
    assert knob_table(turns[-2][1]) == {**both, "stop": ("none", "default")}

    # A new process on the same database: the persona and the knobs were saved.
    second = run_console(env, ["/system show", "/knobs show"])
    assert second.returncode == 0, second.stderr
    again = dict(transcript(second.stdout))
    assert again["/system show"] == "System prompt (from channel):\nYou are a pirate.\n"
    shown = knob_table(again["/knobs show"])
    assert shown["temperature"] == ("0.3", "channel")
    assert shown["max_new_tokens"] == ("5", "channel")
    assert shown["top_k"] == ("7", "server")
    assert shown["stop"] == ("none", "default")
    assert second.stdout.endswith("bye\n")  # end of input leaves cleanly


def test_run_without_a_token_opens_the_console_and_says_how_to_add_one(
    env: dict[str, str],
) -> None:
    done = run_console(env, [], command="run")  # stdin is empty: end of input at once
    assert done.returncode == 0, done.stderr
    assert "no Discord token is configured" in done.stdout
    assert "DISCORD_TOKEN" in done.stdout
    assert done.stdout.endswith("bye\n")
    assert "Traceback" not in done.stderr


# --- through a pseudo-terminal ---------------------------------------------------

# The console's own entry point with one change: the engine's generator is the
# harness's scripted one, writing "word " slowly, so a reply is still being written
# when the test presses Ctrl-C (the tiny model would finish within milliseconds).
# The first lines make the terminal the child's controlling terminal, as a shell
# does for a foreground job, so Ctrl-C reaches it as SIGINT.
SLOW_CONSOLE = """\
import fcntl, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
import bot.app
from testing.backends import ScriptedGenerator
load = bot.app.load_engine
async def slow_engine(settings, model_dir):
    engine = await load(settings, model_dir)
    engine.set_backend(ScriptedGenerator(engine.bundle.tokenizer, "word " * 500, delay=0.02))
    return engine
bot.app.load_engine = slow_engine
from bot.cli import main
sys.exit(main(["--env-file", "/dev/null", "console"]))
"""


class Terminal:
    """The console on a pseudo-terminal: type into it and wait for what it prints."""

    def __init__(self, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.cooked = self.lflag()  # as a shell hands the terminal over: echo, line editing
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_CONSOLE], stdin=slave, stdout=slave, stderr=slave,
            env=env, cwd=ROOT, start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Everything printed up to and including `pattern` (which is then consumed)."""
        want = pattern.encode()
        deadline = time.monotonic() + timeout
        while want not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; got {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the console has gone and closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"console exited before {pattern!r}; got {self.seen!r}")
                self.seen += chunk
        end = self.seen.index(want) + len(want)
        out, self.seen = self.seen[:end], self.seen[end:]
        return out.decode(errors="replace").replace("\r\n", "\n")

    def lflag(self) -> int:
        return int(termios.tcgetattr(self.master)[3])

    def modes(self) -> int:
        """Echo and line editing: what a user notices if a program leaves them off."""
        return self.lflag() & (termios.ECHO | termios.ICANON)

    def cooked_modes(self) -> int:
        return self.cooked & (termios.ECHO | termios.ICANON)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminal(env: dict[str, str]) -> Iterator[Terminal]:
    term = Terminal(env)
    try:
        yield term
    finally:
        term.close()


def test_ctrl_c_stops_only_the_reply_and_the_console_carries_on(terminal: Terminal) -> None:
    terminal.expect("you> ")
    terminal.type("/knobs set max_new_tokens=200\r")
    assert "Set max_new_tokens=200 for this channel." in terminal.expect("you> ")

    terminal.type("/ask tell me a long story\r")
    terminal.expect("word word word")
    terminal.type("\x03")
    stopped = terminal.expect("]")
    footer = FOOTER.search(stopped.splitlines()[-1])
    assert footer is not None and "stopped" in footer[0], stopped
    assert int(footer[1]) < 200

    # Still at the prompt, and still answering.
    terminal.expect("you> ")
    terminal.type("/knobs set max_new_tokens=6\r")
    terminal.expect("you> ")
    terminal.type("/ask again\r")
    answer = terminal.expect("you> ")  # the tiny tokenizer spells "word" in 3 tokens
    assert "\nword word\n[6 tokens · " in answer and "cut at the limit of" in answer, answer

    terminal.type("/quit\r")
    terminal.expect("bye")
    assert terminal.proc.wait(timeout=10) == 0
    assert terminal.modes() == terminal.cooked_modes()


def test_ctrl_c_at_the_prompt_leaves_and_gives_the_terminal_back(terminal: Terminal) -> None:
    terminal.expect("you> ")
    assert terminal.modes() == 0  # readline switched echo and line editing off...
    terminal.type("half a line")
    terminal.expect("half a line")
    terminal.type("\x03")
    assert terminal.expect("bye").endswith("\nbye")  # on its own line, not after the typing
    assert terminal.proc.wait(timeout=10) == 0
    # ...and leaving in the middle of its line still gives them back.
    assert terminal.modes() == terminal.cooked_modes()
