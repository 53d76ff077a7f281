"""Event injection: what members do, delivered to the bot as Discord delivers it.

Slash commands, button and select presses, modal submits and posted messages each
become the INTERACTION_CREATE or MESSAGE_CREATE payload Discord would send, to the
shard that owns the guild. A command carries the id of its last sync so discord.py's
CommandTree finds it; a guild message reaches a bot without the message-content
intent with its content emptied unless the bot is mentioned, as on Discord.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from testing.fake_discord.gateway import Gateway
from testing.fake_discord.world import (
    DEFAULT_MEMBER_PERMISSIONS,
    INTENT_DM_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    FakeGuild,
    FakeInteraction,
    FakeUser,
    JSONDict,
    StoredMessage,
)


class Inject(Gateway):
    """The `inject_*` methods tests drive the bot with."""

    def _interaction_base(
        self,
        kind: int,
        data: JSONDict,
        *,
        guild_id: int | None,
        channel_id: int | None,
        user: FakeUser | None,
        roles: Sequence[int],
        permissions: str,
        locale: str,
        dm: bool,
    ) -> JSONDict:
        interaction_id = self._ids.next()
        payload: JSONDict = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": f"itok{interaction_id}{secrets.token_hex(8)}",
            "version": 1,
            "locale": locale,
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "app_permissions": DEFAULT_MEMBER_PERMISSIONS,
        }
        if dm:
            author = user or FakeUser(self.application_id + 2, "dm-user")
            dm_channel_id = channel_id or author.id + 7
            self._dm_channels.add(dm_channel_id)
            payload.update(
                user=author.to_payload(),
                channel={
                    "id": str(dm_channel_id),
                    "type": 1,
                    "recipients": [author.to_payload()],
                    "flags": 0,
                },
                channel_id=str(dm_channel_id),
                context=1,
                authorizing_integration_owners={"1": str(author.id)},
            )
            return payload
        guild = self.guild(guild_id) if guild_id is not None else self.guilds[0]
        if channel_id is None:
            channel = next(c for c in guild.channels if c.type == 0)
        else:
            found = guild.channel(channel_id)
            if found is None:
                raise KeyError(f"channel {channel_id} is not in guild {guild.id}")
            channel = found
        author = user or (guild.members[0] if guild.members else FakeUser(guild.id + 99, "member"))
        owner = guild.owner_id or (guild.members[0].id if guild.members else self.bot_user.id)
        member = guild.member_payload(author, roles)
        member["permissions"] = permissions
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": "en-US", "features": []},
            guild_locale="en-US",
            channel=channel.to_payload(guild.id, owner),
            channel_id=str(channel.id),
            member=member,
            context=0,
            authorizing_integration_owners={"0": str(guild.id)},
        )
        return payload

    async def _inject(self, payload: JSONDict) -> FakeInteraction:
        itx = FakeInteraction(self, payload)
        self.interactions[itx.id] = itx
        self._by_token[itx.token] = itx
        guild_id = int(payload["guild_id"]) if "guild_id" in payload else None
        itx.created = time.monotonic()
        if not await self.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id):
            raise RuntimeError(
                "no gateway session to deliver the interaction to; is the bot connected?"
            )
        self._notify()
        return itx

    async def inject_interaction(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[JSONDict] | None = None,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
        resolved: JSONDict | None = None,
        autocomplete: str | None = None,
    ) -> FakeInteraction:
        """Send an INTERACTION_CREATE for a slash command, as a member would trigger it.

        With `autocomplete` (an option's name) it is the autocomplete request a client
        sends while that option is typed (type 4, the option marked focused); the
        bot's choices come back as the response (type 8, `data["choices"]`).

        `name` may name a subcommand as Discord shows it: "llama ask" or
        "llama admin reset" (group, then subcommand). `options` is a mapping whose
        value types pick the option type (str 3, int 4, bool 5, float 10) or the raw
        option list. The command id (and `guild_id` for guild commands) is taken from
        the last sync, so discord.py's CommandTree finds the command.
        """
        parts = name.split()
        if isinstance(options, Mapping):
            leaf: list[JSONDict] = [
                {"name": k, "type": option_type(v), "value": v} for k, v in options.items()
            ]
        else:
            leaf = list(options or [])
        if autocomplete is not None:
            leaf = [{**o, "type": 3, "focused": True} if o.get("name") == autocomplete else o
                    for o in leaf]
        if len(parts) == 3:
            leaf = [
                {
                    "name": parts[1],
                    "type": 2,
                    "options": [{"name": parts[2], "type": 1, "options": leaf}],
                }
            ]
        elif len(parts) == 2:
            leaf = [{"name": parts[1], "type": 1, "options": leaf}]
        target_guild = None if dm else (guild_id if guild_id is not None else self.guilds[0].id)
        data: JSONDict = {"name": parts[0], "type": 1, "options": leaf}
        command = self._find_command(parts[0], target_guild)
        if command is not None:
            data["id"] = command["id"]
            if "guild_id" in command:
                data["guild_id"] = command["guild_id"]
        else:
            data["id"] = str(self._ids.next())
        if resolved is not None:
            data["resolved"] = resolved
        payload = self._interaction_base(
            4 if autocomplete is not None else 2,
            data,
            guild_id=target_guild,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        return await self._inject(payload)

    def _find_command(self, name: str, guild_id: int | None) -> JSONDict | None:
        for scope in (guild_id, None) if guild_id is not None else (None,):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command
        return None

    # --- attachments for slash-command options (type 11) -------------------

    def attachment(self, name: str, data: bytes, *, filename: str = "card.json",
                   content_type: str = "application/json",
                   claimed_size: int | None = None) -> tuple[JSONDict, JSONDict]:
        """An ATTACHMENT option and its `resolved` part; the bytes are served by the CDN.

        Pass both to `inject_interaction` (`options=[option]`, `resolved=resolved`).
        `claimed_size` makes the payload's `size` lie, as a hostile client cannot,
        but a CDN file replaced under the same id could: the bot must still stop.
        """
        attachment_id = self._ids.next()
        self.cdn_files[attachment_id] = data  # type: ignore[attr-defined]
        size = len(data) if claimed_size is None else claimed_size
        url = self.cdn_url(attachment_id, filename)  # type: ignore[attr-defined]
        payload = {"id": str(attachment_id), "filename": filename, "size": size, "url": url,
                   "proxy_url": url, "content_type": content_type}
        option = {"name": name, "type": 11, "value": str(attachment_id)}
        return option, {"attachments": {str(attachment_id): payload}}

    async def inject_component(
        self,
        custom_id: str,
        *,
        message_id: int | None = None,
        component_type: int = 2,
        values: Sequence[str] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
    ) -> FakeInteraction:
        """A button press (type 2) or select (type 3, with `values`) on a stored message."""
        data: JSONDict = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        if message_id is not None:
            message = self.message(message_id)
            guild_id = guild_id if guild_id is not None else message.guild_id
            channel_id = channel_id if channel_id is not None else message.channel_id
        payload = self._interaction_base(
            3,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        if message_id is None:
            # A message carrying the pressed component, as Discord would send it.
            button = {"type": component_type, "custom_id": custom_id, "style": 2, "label": "…"}
            message = self._new_message(
                payload["channel"]["id"], content="",
                data={"components": [{"type": 1, "components": [button]}]}, flags=0, files=(),
            )
        payload["message"] = message.to_payload()
        return await self._inject(payload)

    async def inject_modal_submit(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
    ) -> FakeInteraction:
        """A modal submit (type 5): `values` maps each text input's custom_id to its text.

        As Discord does, the answer mirrors the modal the bot opened with that
        `custom_id` (action rows when it sent action rows, Label components when it
        sent labels) and carries `message` when a button on a message opened it.
        A `custom_id` the bot never opened (a forged submit) comes as Labels.
        """
        opener = self._modal_opener(custom_id)
        sent = opener.modal if opener is not None else None
        components = _submitted_components(sent, values)
        data: JSONDict = {"custom_id": custom_id, "components": components}
        payload = self._interaction_base(
            5,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        if opener is not None and "message" in opener.payload:
            opened_on = self.messages.get(int(opener.payload["message"]["id"]))
            if opened_on is not None:
                payload["message"] = opened_on.to_payload()
        return await self._inject(payload)

    def _modal_opener(self, custom_id: str) -> FakeInteraction | None:
        """The latest interaction the bot answered with a modal of that `custom_id`."""
        for itx in reversed(list(self.interactions.values())):
            if itx.modal is not None and itx.modal.get("custom_id") == custom_id:
                return itx
        return None

    async def inject_message(
        self,
        content: str,
        *,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        mention_bot: bool = False,
        reply_to: int | None = None,
        ping: bool = True,
        dm: bool = False,
        files: Sequence[tuple[str, bytes, str | None]] = (),
        mention: FakeUser | None = None,
    ) -> StoredMessage:
        """A member posts a message (MESSAGE_CREATE), as Discord delivers it to the bot.

        `mention_bot` puts ``<@bot>`` in front of the text; `reply_to` makes it a
        reply to a stored message, which pings that message's author unless
        `ping=False`; `dm` posts in the user's DM channel with the bot. Like
        Discord, a guild message reaches a bot without the message-content intent
        with its content emptied unless the bot is mentioned (a reply that pings the
        bot counts); DMs always carry their content. `files` are attachments
        (name, bytes, content type), served at their CDN URL; `mention` mentions
        another member.
        """
        if dm:
            author = user or FakeUser(self.application_id + 2, "dm-user")
            dm_channel_id = channel_id or author.id + 7
            self._dm_channels.add(dm_channel_id)
            guild: FakeGuild | None = None
            target_channel = dm_channel_id
        else:
            if channel_id is None:
                guild = self.guilds[0]
                channel = next(c for c in guild.channels if c.type == 0)
            else:
                found = self.find_channel(channel_id)
                if found is None:
                    raise KeyError(f"unknown channel {channel_id}")
                guild, channel = found
            author = user or (
                guild.members[0] if guild.members else FakeUser(guild.id + 99, "member")
            )
            target_channel = channel.id
        if mention_bot:
            content = f"<@{self.bot_user.id}> {content}"
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=target_channel,
            guild_id=guild.id if guild is not None else None,
            author=author.to_payload(),
            content=content,
        )
        for filename, data, content_type in files:
            attachment_id = self._ids.next()
            self.cdn_files[attachment_id] = data  # type: ignore[attr-defined]
            url = self.cdn_url(attachment_id, filename)  # type: ignore[attr-defined]
            message.attachments.append({
                "id": str(attachment_id), "filename": filename, "size": len(data), "url": url,
                "proxy_url": url, **({"content_type": content_type} if content_type else {}),
            })
        if mention is not None:
            message.content = f"<@{mention.id}> {message.content}"
        message.revisions.append(message.snapshot())
        self.messages[message.id] = message
        payload = message.to_payload()
        mentions: list[JSONDict] = []
        if mention_bot:
            mentions.append(self.bot_user.to_payload())
        if mention is not None:
            mentions.append(mention.to_payload())
        if reply_to is not None:
            referenced = self.message(reply_to)
            payload["type"] = 19
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(referenced.id),
                "channel_id": str(referenced.channel_id),
                **({"guild_id": str(guild.id)} if guild is not None else {}),
            }
            payload["referenced_message"] = referenced.to_payload()
            if ping and referenced.author.get("id") not in {m["id"] for m in mentions}:
                mentions.append(referenced.author)
        payload["mentions"] = mentions
        if guild is None:
            await self.dispatch("MESSAGE_CREATE", payload, intent=INTENT_DM_MESSAGES)
            return message
        payload["member"] = {k: v for k, v in guild.member_payload(author).items() if k != "user"}
        bot_mentioned = any(m["id"] == str(self.bot_user.id) for m in mentions)
        granted = any(
            s.intents & INTENT_MESSAGE_CONTENT for s in self._sessions.values() if s.live
        )
        if not bot_mentioned and not granted:
            payload.update(content="", embeds=[], attachments=[], components=[])
        await self.dispatch(
            "MESSAGE_CREATE", payload, guild_id=guild.id, intent=INTENT_GUILD_MESSAGES
        )
        return message

    # --- a moderator deletes a message -----------------------------

    async def moderator_delete(self, message_id: int) -> None:
        """Someone else deletes a message (the bot's reply): it is gone, as on Discord.

        Every later GET/PATCH/DELETE of it, through the channel or the interaction
        webhook, answers 404 Unknown Message (10008), and MESSAGE_DELETE goes out.
        """
        message = self.message(message_id)
        message.deleted = True
        self._notify()
        payload: JSONDict = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is None:
            await self.dispatch("MESSAGE_DELETE", payload, intent=INTENT_DM_MESSAGES)
            return
        payload["guild_id"] = str(message.guild_id)
        await self.dispatch("MESSAGE_DELETE", payload, guild_id=message.guild_id,
                            intent=INTENT_GUILD_MESSAGES)


def _submitted_components(sent: JSONDict | None, values: Mapping[str, str]) -> list[JSONDict]:
    """A modal's components as Discord submits them: the layout the bot sent, with values."""
    def field(item: Mapping[str, Any], key: str) -> JSONDict:
        return {"type": 4, "id": item.get("id", 0), "custom_id": key, "value": values[key]}

    if sent is None:
        return [
            {"type": 18, "id": index + 1,
             "component": {"type": 4, "id": index + 100, "custom_id": key, "value": value}}
            for index, (key, value) in enumerate(values.items())
        ]
    answered: list[JSONDict] = []
    for index, top in enumerate(sent.get("components") or []):
        top_id = top.get("id", index + 1)
        if top.get("type") == 18:
            child = top.get("component") or {}
            key = str(child.get("custom_id"))
            if key in values:
                answered.append({"type": 18, "id": top_id, "component": field(child, key)})
        elif top.get("type") == 1:
            children = [c for c in top.get("components") or [] if c.get("custom_id") in values]
            if children:
                answered.append({"type": 1, "id": top_id,
                                 "components": [field(c, c["custom_id"]) for c in children]})
    shown = {c["custom_id"] for top in answered
             for c in [top.get("component"), *top.get("components", [])] if c}
    if set(values) - shown:
        raise KeyError(f"the modal has no text input {sorted(set(values) - shown)}")
    return answered


def option_type(value: object) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
