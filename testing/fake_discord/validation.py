"""Every request checked as Discord checks it, and every refusal kept for the test to answer for.

A body that breaks Discord's OpenAPI schema or one of its documented rules
(`rules`) is refused with 400 and Discord's error body, code 50035 and the errors
per field (50006 for a message left with nothing to show), and the refusal is
recorded. A refusal is a bug in what the bot sent, so leaving the fake with one
unexamined fails the test (`FakeDiscord.__aexit__`); a test that provokes one on
purpose takes it with `take_refusals()`.

The fake's own answers are checked against the response schemas too
(`answer_mismatches`), so it cannot drift from what Discord really sends.

The checks run on the fake's own thread: a command sync takes jsonschema a few
hundred milliseconds, work Discord does on its servers, not on the bot's event
loop (where the stall guard would rightly count it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from testing.fake_discord import rules
from testing.fake_discord.records import RecordedRequest, Records
from testing.fake_discord.schema import JSONDict, merge_errors, put_error, schema_errors, spec
from testing.fake_discord.world import StoredMessage

_MESSAGE_WRITES = frozenset({
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
    "POST /webhooks/{webhook_id}/{webhook_token}",
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original",
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
})
_CALLBACK = "POST /interactions/{webhook_id}/{webhook_token}/callback"
_SEND = "POST /channels/{channel_id}/messages"
_FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
_THREAD = "POST /channels/{channel_id}/messages/{message_id}/threads"


@dataclass
class Refusal:
    """What Discord answers an invalid request: status, message, code and per-field errors."""

    status: int
    message: str
    code: int
    errors: JSONDict | None = None

    def body(self) -> JSONDict:
        data: JSONDict = {"code": self.code, "message": self.message}
        if self.errors:
            data["errors"] = self.errors
        return data


class RefusedRequests(AssertionError):
    """The bot sent requests Discord would have refused."""


class Validation(Records):
    """Checks requests before their route runs, and answers after it."""

    def _setup_validation(self, *, validate: bool) -> None:
        self.validate = validate
        self.refusals: list[tuple[RecordedRequest, Refusal]] = []
        self.answer_mismatches: list[str] = []
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-discord-check")

    def _close_validation(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)

    def take_refusals(self) -> list[tuple[RecordedRequest, Refusal]]:
        """The refusals so far, which the test now answers for (they no longer fail it)."""
        taken, self.refusals = self.refusals, []
        return taken

    def assert_no_refusals(self) -> None:
        if self.refusals:
            lines = [
                f"{record.key}: {refusal.code} {json.dumps(refusal.errors or refusal.message)}"
                for record, refusal in self.refusals
            ]
            self.refusals = []
            raise RefusedRequests(
                "Discord would have refused what the bot sent:\n" + "\n".join(lines)
            )

    # ------------------------------------------------------------------ requests

    async def _refusal(self, record: RecordedRequest) -> Refusal | None:
        """Discord's answer to an invalid request, recorded; None when it is fine."""
        if not self.validate:
            return None
        loop = asyncio.get_running_loop()
        refusal = await loop.run_in_executor(self._checker, self._check, record)
        if refusal is not None:
            self.refusals.append((record, refusal))
        return refusal

    def _check(self, record: RecordedRequest) -> Refusal | None:
        body = record.json
        if body is None or isinstance(body, str):
            return None
        tree: JSONDict = {}
        op = spec().operation(record.method, record.path)
        if op is not None:
            validator = spec().request_validator(op)
            if validator is not None:
                tree = schema_errors(validator, body)
        key = record.key
        if isinstance(body, list):
            if key.startswith("PUT /applications/"):
                merge_errors(tree, rules.commands_errors(body))
            return _invalid(tree)
        if key == _CALLBACK:
            itx = self._by_token.get(record.params.get("webhook_token", ""))
            merge_errors(tree, rules.callback_errors(body, itx.type if itx else 0))
        elif key in _MESSAGE_WRITES:
            merge_errors(tree, rules.message_errors(body))
            if key == _SEND:
                self._reference_errors(tree, body)
        elif key == _THREAD:
            merge_errors(tree, rules.thread_errors(body))
        if tree:
            return _invalid(tree)
        if key in (_SEND, _FOLLOWUP) and not _shows_something(body, record):
            return Refusal(400, "Cannot send an empty message", 50006)
        if record.method == "PATCH" and key in _MESSAGE_WRITES:
            target = self._edit_target(record)
            if target is not None and not _shows_something(_after_edit(target, body), record):
                return Refusal(400, "Cannot send an empty message", 50006)
        return None

    def _reference_errors(self, tree: JSONDict, body: Mapping[str, Any]) -> None:
        reference = body.get("message_reference")
        if not isinstance(reference, Mapping) or reference.get("type", 0) != 0:
            return
        raw = str(reference.get("message_id"))
        message = self.messages.get(int(raw)) if raw.isdigit() else None
        if (message is None or message.deleted) and reference.get("fail_if_not_exists", True):
            put_error(tree, ["message_reference"], "REPLIES_UNKNOWN_MESSAGE", "Unknown message")

    def _edit_target(self, record: RecordedRequest) -> StoredMessage | None:
        raw = record.params.get("message_id")
        if raw is None or raw == "@original" or record.route.endswith("@original"):
            itx = self._by_token.get(record.params.get("webhook_token", ""))
            return itx.original if itx is not None else None
        return self.messages.get(int(raw)) if raw.isdigit() else None

    # ------------------------------------------------------------------ answers

    async def _check_answer(self, record: RecordedRequest, status: int,
                            raw: bytes | None) -> None:
        """Record where the fake's answer departs from Discord's response schema."""
        if not self.validate or status >= 400:
            return
        loop = asyncio.get_running_loop()
        mismatch = await loop.run_in_executor(
            self._checker, self._answer_mismatch, record, status, raw
        )
        if mismatch is not None:
            self.answer_mismatches.append(mismatch)

    def _answer_mismatch(self, record: RecordedRequest, status: int,
                         raw: bytes | None) -> str | None:
        op = spec().operation(record.method, record.path)
        if op is None:
            return None
        if status not in spec().allowed_statuses(op):
            return f"{record.key}: status {status}"
        validator = spec().response_validator(op, status)
        if validator is None or not raw:
            return None
        errors = schema_errors(validator, json.loads(raw))
        return f"{record.key}: {json.dumps(errors)}" if errors else None


def _invalid(tree: JSONDict) -> Refusal | None:
    return Refusal(400, "Invalid Form Body", 50035, tree) if tree else None


def _shows_something(body: Mapping[str, Any], record: RecordedRequest) -> bool:
    return bool(
        body.get("content") or body.get("embeds") or body.get("components")
        or body.get("sticker_ids") or body.get("poll") or body.get("attachments")
        or record.files
    )


def _after_edit(message: StoredMessage, body: Mapping[str, Any]) -> JSONDict:
    """What the message would hold after a PATCH with `body`."""
    result: JSONDict = {
        "content": message.content,
        "embeds": message.embeds,
        "components": message.components,
        "attachments": message.attachments,
    }
    for key in result:
        if key in body:
            result[key] = body[key]
    return result
