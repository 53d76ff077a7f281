"""What the model reads for an ask in the console's scope: the `prompt` report.

Built here, in the core, so the command line only parses and prints: the
console's stored persona and knobs (or a given persona), the model's own
template, and the same encoder the engine uses, so a control token shows as one
here exactly when the model would see one. Only the tokenizer and template are
loaded, not the weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from bot import wording
from bot.app import model_dir_for
from bot.chat.files import TextFile, attach, read_paths
from bot.chat.request import persona
from bot.config import Settings
from bot.console import CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID, CONSOLE_USER_ID
from bot.engine.streaming import IncrementalDetokenizer
from bot.errors import UserFacingError
from bot.model.bundle import load_model_bundle
from bot.model.chat import ChatTemplateError
from bot.model.tokenizer import require_valid_unicode
from bot.store.scopes import Location
from bot.store.store import SettingsStore

__all__ = ["format_prompt_report", "prompt_report"]


async def prompt_report(
    settings: Settings, text: str, system: str | None, progress: Callable[[str], None],
    *, files: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as data (what `--json` prints): the rendered text, every token, totals.

    `system` overrides the console's persona; `progress` hears about a first-use
    conversion of the embedded model; `files` are paths read as an ask's
    attachments are (the same caps, the same cut to the window).
    """
    require_valid_unicode(text, "prompt")
    model_dir = model_dir_for(settings, progress)
    bundle = load_model_bundle(model_dir, context_length=settings.context_length)
    store = await SettingsStore.open(settings.database_target)
    try:
        effective = await store.resolve(
            Location(guild_id=CONSOLE_GUILD_ID, channel_id=CONSOLE_CHANNEL_ID,
                     user_id=CONSOLE_USER_ID)
        )
    finally:
        await store.close()
    source = "--system"
    if system is None:
        system, source = persona(effective, settings.system_prompt)
    system = system or None
    read, notes = read_paths(files, max_bytes=settings.file_max_bytes,
                             max_count=settings.file_max_count)
    asked = text
    kept: list[TextFile] = []
    cut: list[str] = []
    if read:
        asked, kept, cut = attach(
            text, read, system=system, context_length=bundle.context_length,
            max_new_tokens=effective.knobs.max_new_tokens,
            count_tokens=lambda s: len(bundle.tokenizer.encode(s)),
        )
    try:
        rendered = bundle.chat.render_spans(system, asked)
        ids = bundle.encode_chat(system, asked)
    except ChatTemplateError as exc:
        raise UserFacingError(str(exc)) from exc
    tok = bundle.tokenizer
    detok = IncrementalDetokenizer(tok.decode)
    tokens: list[dict[str, Any]] = []
    for token_id in ids:
        special = token_id in tok.special_ids
        piece = tok.id_to_token(token_id)
        shown = piece if special else detok.push(token_id)
        tokens.append({"id": token_id, "text": shown, "special": special, "piece": piece})
    if tokens:
        tail = detok.flush()
        if tail and not tokens[-1]["special"]:
            tokens[-1]["text"] += tail
    context = bundle.context_length
    return {
        "model": bundle.name,
        "template": bundle.chat.name,
        "system_prompt": system,
        "system_prompt_source": source if system else "template",
        "text": rendered.text,
        "tokens": tokens,
        "prompt_tokens": len(ids),
        "special_tokens": sum(1 for t in tokens if t["special"]),
        "context_window": context,
        "max_new_tokens": max(0, min(effective.knobs.max_new_tokens, context - len(ids))),
        "fits": len(ids) < context,
        "files": [{"name": f.name, "chars": len(f.text), "cut": f.name in cut} for f in kept],
        "file_notes": notes,
        "file_tokens": len(ids) - len(bundle.encode_chat(system, text)) if kept else 0,
    }


def format_prompt_report(report: dict[str, Any]) -> list[str]:
    """The report for people: the text, one line per token, then the totals."""
    persona_line = (
        f"persona ({report['system_prompt_source']}): {report['system_prompt']!r}"
        if report["system_prompt"] else wording.PROMPT_TEMPLATE_PERSONA
    )
    lines = [
        f"model {report['model']} · template {report['template']} · {persona_line}",
        wording.PROMPT_RENDERED,
        report["text"],
        wording.PROMPT_TOKENS,
    ]
    for token in report["tokens"]:
        mark = "*" if token["special"] else " "
        lines.append(f"{token['id']:>8} {mark} {json.dumps(token['text'], ensure_ascii=False)}")
    lines.append(wording.prompt_totals(report["prompt_tokens"], report["special_tokens"],
                                       report["context_window"], report["max_new_tokens"]))
    return lines
