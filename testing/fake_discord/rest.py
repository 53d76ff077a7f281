"""REST routes: the endpoints discord.py calls, with the rules Discord enforces on each.

Each handler answers as Discord does, with its error codes: 10062 for an interaction
answered after 3 s or unknown, 40060 for a second acknowledgement, 50027 for an
expired token, 10015/10008 for unknown webhooks and messages, 50006 for an empty
message, 50035 with per-field errors for content over Discord's limits, and the
thread rules (no thread from an ephemeral message, none inside a thread, one per
message).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from testing.fake_discord.gateway import Gateway
from testing.fake_discord.http import Http, HTTPError, json_response, length_errors
from testing.fake_discord.world import (
    API_PREFIX,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_GUILD_MESSAGES,
    FakeChannel,
    FakeInteraction,
    FakeUser,
    InteractionCallback,
    JSONDict,
    StoredMessage,
)


def has_body(data: Mapping[str, Any], files: Sequence[tuple[str, int]]) -> bool:
    """Discord refuses a message with nothing to show (50006)."""
    return bool(
        data.get("content")
        or data.get("embeds")
        or data.get("components")
        or data.get("sticker_ids")
        or data.get("poll")
        or files
    )


class Rest(Http, Gateway):
    """Route handlers over the shared world; they dispatch gateway events where Discord does."""

    def _setup_rest(self, *, callback_deadline: float | None) -> None:
        self.callback_deadline = callback_deadline
        #: Attachment bytes by id, served at `cdn_url` (see `Inject.attachment`).
        self.cdn_files: dict[int, bytes] = {}
        #: A size the CDN lies about (id → claimed size) to test streaming caps.
        self.cdn_claimed_sizes: dict[int, int] = {}

    def _add_rest_routes(self, router: web.UrlDispatcher) -> None:
        p = API_PREFIX
        r = router
        r.add_get(p + "/users/@me", self._users_me)
        r.add_get(p + "/oauth2/applications/@me", self._application_info)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway_bot)
        r.add_route("*", p + "/applications/{application_id}/commands", self._commands)
        r.add_route(
            "*", p + "/applications/{application_id}/guilds/{guild_id}/commands", self._commands
        )
        r.add_post(p + "/interactions/{webhook_id}/{webhook_token}/callback", self._callback)
        r.add_route(
            "*",
            p + "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
            self._webhook_message,
        )
        r.add_route(
            "*",
            p + "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
            self._webhook_message,
        )
        r.add_post(p + "/webhooks/{webhook_id}/{webhook_token}", self._followup)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        r.add_post(p + "/channels/{channel_id}/messages", self._channel_message)
        r.add_route("*", p + "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        r.add_post(p + "/channels/{channel_id}/messages/{message_id}/threads", self._start_thread)
        # The CDN, for attachments (`/system import`).
        r.add_get("/cdn/attachments/{attachment_id}/{filename}", self._cdn)

    async def _users_me(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        data = self.bot_user.to_payload()
        data.update(verified=True, mfa_enabled=False, flags=0, locale="en-US")
        return json_response(data)

    async def _application_info(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        owner = FakeUser(self.application_id + 1, "owner")
        return json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner.to_payload(),
                "verify_key": "0" * 64,
                "flags": 0,
                "flags_new": "0",
                "type": None,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "role_connections_verification_url": None,
                "approximate_guild_count": len(self.guilds),
                "approximate_user_install_count": 0,
                "approximate_user_authorization_count": 0,
                "explicit_content_filter": 0,
                "eligible_oauth2_scopes": [],
                "team": None,
                "bot": self.bot_user.to_payload(),
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return json_response(
            {
                "url": self.bot_gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": self.max_concurrency,
                },
            }
        )

    async def _commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite (PUT) or list (GET) global or guild commands; ids stay stable per name."""
        self._check_auth(request)
        if int(request.match_info["application_id"]) != self.application_id:
            raise HTTPError(403, "Missing Access", 50001)
        guild_id = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        if request.method == "GET":
            return json_response(self.commands.get(guild_id, []))
        if request.method != "PUT":
            raise HTTPError(405, "405: Method Not Allowed", 0)
        record = self._current(request)
        payload = record.json
        if not isinstance(payload, list):
            raise HTTPError(400, "Invalid Form Body", 50035)
        echoed: list[JSONDict] = []
        for command in payload:
            key = (guild_id, f"{command.get('type', 1)}:{command['name']}")
            command_id = self._command_ids.setdefault(key, self._ids.next())
            data: JSONDict = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                **command,
                "id": str(command_id),
                "application_id": str(self.application_id),
                "version": str(self._ids.next()),
            }
            if data.get("integration_types") is None:
                data["integration_types"] = [0]
            if data["default_member_permissions"] is not None:  # Discord answers a string
                data["default_member_permissions"] = str(data["default_member_permissions"])
            if guild_id is not None:
                data["guild_id"] = str(guild_id)
            echoed.append(data)
        self.commands[guild_id] = echoed
        return json_response(echoed)


    def _interaction_for(self, request: web.Request, *, webhook: bool) -> FakeInteraction:
        """Resolve the interaction named by a callback or webhook path, as Discord would."""
        token = request.match_info["webhook_token"]
        itx = self._by_token.get(token)
        if webhook:
            if int(request.match_info["webhook_id"]) != self.application_id or itx is None:
                raise HTTPError(404, "Unknown Webhook", 10015)
        elif itx is None or itx.id != int(request.match_info["webhook_id"]):
            raise HTTPError(404, "Unknown interaction", 10062)
        if itx.expired:
            raise HTTPError(401, "Invalid Webhook Token", 50027)
        return itx

    def cdn_url(self, attachment_id: int, filename: str) -> str:
        return f"http://127.0.0.1:{self.port}/cdn/attachments/{attachment_id}/{filename}"

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """An attachment's bytes, streamed in pieces like a CDN (no length promised)."""
        try:
            data = self.cdn_files[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            raise HTTPError(404, "Not Found", 0) from None
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start:start + 64 * 1024])
        await response.write_eof()
        return response

    async def _callback(self, request: web.Request) -> web.Response:
        """Interaction response: record it, create/update the message it implies."""
        itx = self._interaction_for(request, webhook=False)
        record = self._current(request)
        body = record.json if isinstance(record.json, dict) else {}
        kind = int(body.get("type", 0))
        data: JSONDict = body.get("data") or {}
        if (
            self.callback_deadline is not None
            and time.monotonic() - itx.created > self.callback_deadline
        ):
            raise HTTPError(404, "Unknown interaction", 10062)
        if itx.callbacks:
            raise HTTPError(400, "Interaction has already been acknowledged.", 40060)
        if kind not in (1, 4, 5, 6, 7, 8, 9, 10, 12):
            raise HTTPError(400, "Invalid Form Body", 50035)
        if kind in (6, 7) and itx.type not in (3, 5):
            raise HTTPError(
                400, "Interaction response type is invalid for this interaction", 50035
            )
        if kind in (4, 7):
            errors = length_errors(data)
            if errors:
                raise HTTPError(400, "Invalid Form Body", 50035, errors)
        if kind == 4 and not has_body(data, record.files):
            raise HTTPError(400, "Cannot send an empty message", 50006)

        itx.callbacks.append(InteractionCallback(kind, data, time.monotonic()))
        message: StoredMessage | None = None
        flags = int(data.get("flags") or 0)
        if kind in (4, 5):
            message = self._new_message(
                itx.payload["channel"]["id"],
                content=str(data.get("content") or "") if kind == 4 else "",
                data=data if kind == 4 else {},
                flags=(flags & FLAG_EPHEMERAL) | (FLAG_LOADING if kind == 5 else 0),
                files=record.files,
                itx=itx,
            )
            itx.original_id = message.id
        elif kind in (6, 7):
            target = itx.payload.get("message", {}).get("id")
            message = self.messages.get(int(target)) if target else None
            if message is not None:
                itx.original_id = message.id
                if kind == 7:
                    self._apply_edit(message, data, record.files)

        if "with_response" not in request.query:
            return web.Response(status=204)
        info: JSONDict = {"id": str(itx.id), "type": itx.type}
        if message is not None:
            info.update(
                response_message_id=str(message.id),
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(message.flags & FLAG_EPHEMERAL),
            )
        result: JSONDict = {"interaction": info}
        # Only a message sent or updated is a resource; deferrals and modals have none.
        if kind in (4, 7) and message is not None:
            result["resource"] = {"type": kind, "message": message.to_payload()}
        return json_response(result)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        """GET/PATCH/DELETE of an interaction's original or follow-up message."""
        itx = self._interaction_for(request, webhook=True)
        raw_id = request.match_info.get("message_id", "@original")
        if raw_id == "@original":
            message = itx.original
        else:
            try:
                wanted = int(raw_id)
            except ValueError:
                raise HTTPError(404, "Unknown Message", 10008) from None
            allowed = wanted in itx.followup_ids or wanted == itx.original_id
            message = self.messages.get(wanted) if allowed else None
        if message is None or message.deleted:
            raise HTTPError(404, "Unknown Message", 10008)
        return self._message_verb(request, message)

    def _message_verb(self, request: web.Request, message: StoredMessage) -> web.Response:
        if request.method == "GET":
            return json_response(message.to_payload())
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            record = self._current(request)
            data = record.json if isinstance(record.json, dict) else {}
            errors = length_errors(data)
            if errors:
                raise HTTPError(400, "Invalid Form Body", 50035, errors)
            self._apply_edit(message, data, record.files)
            return json_response(message.to_payload())
        raise HTTPError(405, "405: Method Not Allowed", 0)

    async def _followup(self, request: web.Request) -> web.Response:
        itx = self._interaction_for(request, webhook=True)
        record = self._current(request)
        data = record.json if isinstance(record.json, dict) else {}
        if not itx.callbacks:
            raise HTTPError(404, "Unknown Webhook", 10015)
        errors = length_errors(data)
        if errors:
            raise HTTPError(400, "Invalid Form Body", 50035, errors)
        if not has_body(data, record.files):
            raise HTTPError(400, "Cannot send an empty message", 50006)
        message = self._new_message(
            itx.payload["channel"]["id"],
            content=str(data.get("content") or ""),
            data=data,
            flags=int(data.get("flags") or 0) & FLAG_EPHEMERAL,
            files=record.files,
            itx=itx,
        )
        itx.followup_ids.append(message.id)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message.to_payload())
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        if self.find_channel(channel_id) is None and channel_id not in self._dm_channels:
            raise HTTPError(404, "Unknown Channel", 10003)
        return web.Response(status=204)

    async def _channel_message(self, request: web.Request) -> web.Response:
        """Messages sent outside interactions: POST creates, GET/PATCH/DELETE by id."""
        self._check_auth(request)
        channel_id = int(request.match_info["channel_id"])
        found = self.find_channel(channel_id)
        if found is None and channel_id not in self._dm_channels:
            raise HTTPError(404, "Unknown Channel", 10003)
        record = self._current(request)
        if "message_id" in request.match_info:
            message = self.messages.get(int(request.match_info["message_id"]))
            if message is None or message.deleted or message.channel_id != channel_id:
                raise HTTPError(404, "Unknown Message", 10008)
            return self._message_verb(request, message)
        data = record.json if isinstance(record.json, dict) else {}
        errors = length_errors(data)
        if errors:
            raise HTTPError(400, "Invalid Form Body", 50035, errors)
        if not has_body(data, record.files):
            raise HTTPError(400, "Cannot send an empty message", 50006)
        message = self._new_message(
            str(channel_id),
            content=str(data.get("content") or ""),
            data=data,
            flags=0,
            files=record.files,
        )
        self._attach_reference(message, data.get("message_reference"))
        payload = message.to_payload()
        if message.guild_id is not None:
            await self.dispatch(
                "MESSAGE_CREATE", payload, guild_id=message.guild_id, intent=INTENT_GUILD_MESSAGES
            )
        return json_response(payload)

    def _attach_reference(self, message: StoredMessage, reference: Any) -> None:
        """A reply to a message that exists; one that is gone (allowed by
        `fail_if_not_exists: false`, see `validation`) is sent as a plain message."""
        if not isinstance(reference, Mapping) or reference.get("type", 0) != 0:
            return
        raw = str(reference.get("message_id"))
        target = self.messages.get(int(raw)) if raw.isdigit() else None
        if target is None or target.deleted:
            return
        message.type = 19
        message.reference = {
            "type": 0,
            "message_id": str(target.id),
            "channel_id": str(target.channel_id),
            **({"guild_id": str(target.guild_id)} if target.guild_id is not None else {}),
        }

    async def _start_thread(self, request: web.Request) -> web.Response:
        """Start a public thread from a message: the thread's id is the message's, as on Discord.

        The thread joins its guild's channels (so interactions and messages can be
        injected into it) and THREAD_CREATE is dispatched, as Discord does.
        """
        self._check_auth(request)
        channel_id = int(request.match_info["channel_id"])
        message_id = int(request.match_info["message_id"])
        found = self.find_channel(channel_id)
        message = self.messages.get(message_id)
        if found is None:
            raise HTTPError(404, "Unknown Channel", 10003)
        guild, parent = found
        if message is None or message.deleted or message.channel_id != channel_id:
            raise HTTPError(404, "Unknown Message", 10008)
        if message.flags & FLAG_EPHEMERAL:
            raise HTTPError(400, "Cannot start a thread from an ephemeral message", 50035)
        if parent.is_thread:
            raise HTTPError(400, "Cannot start a thread inside a thread", 50024)
        if guild.channel(message_id) is not None:
            raise HTTPError(400, "A thread has already been created for this message", 160004)
        body = self._current(request).json
        data = body if isinstance(body, dict) else {}
        name = str(data.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise HTTPError(400, "Invalid Form Body", 50035)
        thread = FakeChannel(message_id, name, 11, parent_id=channel_id)
        guild.channels.append(thread)
        owner = self.bot_user.id
        payload = thread.to_payload(guild.id, owner)
        await self.dispatch("THREAD_CREATE", {**payload, "newly_created": True}, guild_id=guild.id)
        return json_response(payload, 201)
