"""One or two plain lines per knob: what it does, its range, its default, a typical value.

The words are written here once; the range and the default come from the knobs
model (`KNOB_SPECS`), so they cannot go stale. `/knobs show`'s "What do these
do?", the console's `/help` and the README's table all read `KNOB_HELP` (a test
checks the README against `markdown_table()`). Each knob also has a contrasting
value, so "try it on my last prompt" can open a compare of the current value
against one that shows the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.knobs import KNOB_NAMES, KNOB_SPECS, Knobs, display_knob, escape_stop


@dataclass(frozen=True)
class KnobHelp:
    name: str
    what: str
    typical: str

    @property
    def range_text(self) -> str:
        return KNOB_SPECS[self.name].range_text()

    @property
    def default_text(self) -> str:
        return display_knob(self.name, KNOB_SPECS[self.name].default)

    def option(self, limit: int = 100) -> str:
        """A slash option's description: the help's first clause and the range, in `limit`.

        Discord holds 100 characters; the words are this knob's help, so an option
        never describes a knob differently from "What do these do?".
        """
        first = self.what.split(". ")[0].rstrip(".")
        text = f"{first} ({self.range_text})"
        if len(text) <= limit:
            return text
        clause = first.split(": ")[0].split(" (")[0].split("; ")[0].rstrip(".")
        text = f"{clause} ({self.range_text})"
        return text if len(text) <= limit else clause[: limit - 1] + "…"

    def line(self) -> str:
        """The knob in one or two lines, as the console and an embed show it."""
        return (f"{self.name}: {self.what} Range {self.range_text}; default "
                f"{self.default_text}; typical {self.typical}.")


_WORDS: dict[str, tuple[str, str]] = {
    "temperature": (
        "Divides the model's scores before sampling: below 1 the likeliest tokens win "
        "more often, above 1 unlikely ones get a real chance.",
        "0.7 for chat, 0.2 for facts and code, 1.0–1.3 for brainstorming",
    ),
    "top_p": (
        "Samples only among the likeliest tokens whose probabilities add up to p "
        "(after temperature); 0 keeps just the best token.",
        "0.9–0.95",
    ),
    "top_k": (
        "Samples only among the k likeliest tokens; -1 means no limit.",
        "40, or 1 for always the likeliest token",
    ),
    "max_new_tokens": (
        "The longest a reply may be, in tokens (a token is about three quarters of a "
        "word); a server's or channel's value is also the most anyone may ask for there.",
        "128–512",
    ),
    "min_new_tokens": (
        "Holds back the end of the reply until this many tokens are written; -1 is off.",
        "off, or 50 to force a longer answer",
    ),
    "stop": (
        "Text that ends the reply where it first appears (the stop text itself is not "
        "shown).",
        "\\n\\n for a single paragraph",
    ),
    "repetition_penalty": (
        "Lowers the score of every token the reply has already used (a positive score "
        "is divided by 1 + value, a negative one multiplied); 0 is off.",
        "0.1–0.3; above 1 text soon turns odd",
    ),
}

KNOB_HELP: dict[str, KnobHelp] = {
    name: KnobHelp(name, *_WORDS[name]) for name in KNOB_NAMES
}


def contrasting(name: str, knobs: Knobs) -> Any:
    """A value of `name` that visibly differs from the one in `knobs` (for "try it")."""
    value = getattr(knobs, name)
    if name == "temperature":
        return 1.5 if value < 1.0 else 0.2
    if name == "top_p":
        return 0.5 if value > 0.7 else 1.0
    if name == "top_k":
        return 5 if value == -1 or value > 10 else -1
    if name == "max_new_tokens":
        return max(knobs.min_new_tokens, 32) if value > 64 else 256
    if name == "min_new_tokens":
        return min(64, knobs.max_new_tokens) if value < 1 else -1
    if name == "stop":
        return () if value else ("\n",)
    if name == "repetition_penalty":
        return 0.5 if value < 0.25 else 0.0
    raise KeyError(name)


def assignment(name: str, value: Any) -> str:
    """`name=value` in the /knobs set syntax, readable back by `parse_assignments`."""
    if name == "stop":
        joined = "|".join(escape_stop(s).replace("|", "\\|") for s in value)
        return f'stop="{joined}"' if value else "stop=none"
    if isinstance(value, float):
        return f"{name}={value:g}"
    return f"{name}={value}"


def help_lines() -> list[str]:
    """Every knob in one or two lines each: the console's `/help` and "What do these do?"."""
    return [h.line() for h in KNOB_HELP.values()]


def markdown_table() -> str:
    """The README's knob table, generated from `KNOB_HELP` and the knobs model."""
    rows = ["| knob | what it does | range | default | typical |",
            "|---|---|---|---|---|"]
    for h in KNOB_HELP.values():
        rows.append(f"| `{h.name}` | {h.what} | {h.range_text} | {h.default_text} "
                    f"| {h.typical} |")
    return "\n".join(rows)
