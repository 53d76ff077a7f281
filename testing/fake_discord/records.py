"""What the fake saw: every REST request, the counters, and the queries tests ask of them.

Tests assert on what reached "Discord" (routes, bodies, statuses, the content after
each edit), never on what the bot meant to send, so the records are taken at the
HTTP layer before any fault or rate limit is applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testing.fake_discord.world import API_PREFIX, FakeInteraction, JSONDict, StoredMessage, World

FILE_HEAD_BYTES = 64
"""How much of each uploaded file is kept: enough for a signature, not a soak's memory."""


class Routes:
    """discord.py's route templates, so tests need not spell them out."""

    USERS_ME = "GET /users/@me"
    APPLICATION_INFO = "GET /oauth2/applications/@me"
    GATEWAY_BOT = "GET /gateway/bot"
    SYNC_GLOBAL = "PUT /applications/{application_id}/commands"
    SYNC_GUILD = "PUT /applications/{application_id}/guilds/{guild_id}/commands"
    CALLBACK = "POST /interactions/{webhook_id}/{webhook_token}/callback"
    GET_ORIGINAL = "GET /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    EDIT_ORIGINAL = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    DELETE_ORIGINAL = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
    EDIT_FOLLOWUP = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    DELETE_FOLLOWUP = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    SEND_MESSAGE = "POST /channels/{channel_id}/messages"
    EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
    DELETE_MESSAGE = "DELETE /channels/{channel_id}/messages/{message_id}"
    TYPING = "POST /channels/{channel_id}/typing"
    START_THREAD = "POST /channels/{channel_id}/messages/{message_id}/threads"


@dataclass
class RecordedRequest:
    """One REST request as the fake saw it. `route` is discord.py's path template."""

    method: str
    path: str
    route: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    time: float
    files: list[tuple[str, int]] = field(default_factory=list)
    file_heads: list[bytes] = field(default_factory=list)  # each file's first bytes (signatures)
    status: int | None = None
    finished: float | None = None  # time.monotonic() when the response was ready

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


@dataclass
class FakeStats:
    """Counters a test or the benchmark can assert on."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0  # 429s the fake's own buckets answered
    faults: int = 0  # responses forced by fail_next
    gateway_connections: int = 0
    identifies: int = 0
    resumes: int = 0
    resume_rejected: int = 0


def route_matcher(
    route: str | Callable[[RecordedRequest], bool],
) -> Callable[[RecordedRequest], bool]:
    """Accept "METHOD /template", "/template" or a predicate on the recorded request."""
    if callable(route):
        return route
    method, _, template = route.partition(" ") if " " in route else ("", "", route)
    template = template.removeprefix(API_PREFIX)

    def match(req: RecordedRequest) -> bool:
        return req.route == template and (not method or req.method == method.upper())

    return match


class Records(World):
    """The request log and the lookups tests and the benchmark use."""

    def _setup_records(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.gateway_received: list[JSONDict] = []
        self.gateway_paths: list[str] = []
        self.stats = FakeStats()

    def requests_for(self, route: str | Callable[[RecordedRequest], bool]) -> list[RecordedRequest]:
        """Recorded requests matching "METHOD /template", "/template" or a predicate."""
        match = route_matcher(route)
        return [r for r in self.requests if match(r)]

    def interaction(self, token_or_id: str | int) -> FakeInteraction:
        if isinstance(token_or_id, int):
            return self.interactions[token_or_id]
        return self._by_token[token_or_id]

    def message(self, message_id: int | str) -> StoredMessage:
        return self.messages[int(message_id)]

    def original(self, token: str) -> StoredMessage | None:
        """The interaction's original response as it stands now (None if never sent)."""
        return self._by_token[token].original

    def edits(self, token: str, message_id: int | str = "@original") -> list[str]:
        """The content after each successful edit of that message, in order.

        Creation (e.g. the deferred "thinking" message) is not an edit; 429'd or failed
        attempts are not counted, since users never saw them.
        """
        itx = self._by_token[token]
        target = itx.original_id if message_id == "@original" else int(message_id)
        if target is None:
            return []
        return [rev["content"] for rev in self.messages[target].revisions[1:]]

    def channel_messages(self, channel_id: int) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def forget_interaction(self, token: str) -> None:
        """Drop a finished interaction, its token and its messages from every store.

        A long soak would otherwise keep every reply the fake ever saw, and the
        benchmark's memory samples would show the fake's growth as the bot's.
        """
        itx = self._by_token.pop(token, None)
        if itx is None:
            return
        for message_id in [itx.original_id, *itx.followup_ids]:
            if message_id is not None:
                self.messages.pop(message_id, None)
        self.interactions.pop(itx.id, None)
