"""The gateway: HELLO, IDENTIFY and READY, heartbeats, RESUME with replay, sharding, closes.

Sessions outlive their sockets, as on Discord: a client that drops (or is told to
RECONNECT) RESUMEs on READY's `resume_gateway_url` and gets every event it missed,
numbered as before. Close codes 4007/4009 and a client's own 1000/1001 end the
session, so the next connection must IDENTIFY again. A guild is seen by the shard
``(guild_id >> 22) % shard_count`` only, and an event needing an intent reaches only
sessions that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from testing.fake_discord.records import Records
from testing.fake_discord.world import PRIVILEGED_INTENTS, JSONDict

# Gateway close codes after which Discord refuses a RESUME of the same session.
NON_RESUMABLE_CLOSE_CODES = frozenset({4007, 4009})


@dataclass
class GatewaySession:
    """One IDENTIFYed session: its shard, sequence, socket (None between connections)
    and the events sent, kept so a RESUME can replay what the client missed."""

    session_id: str
    shard: tuple[int, int] | None
    intents: int
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    resumable: bool = True
    history: deque[JSONDict] = field(default_factory=lambda: deque(maxlen=1000))

    @property
    def live(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def covers(self, guild_id: int | None) -> bool:
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return ((guild_id or 0) >> 22) % count == shard_id


class Gateway(Records):
    """The websocket side of the fake: sessions, dispatch and the ops tests trigger."""

    def _setup_gateway(self, *, heartbeat_interval_ms: int, privileged_intents: int = 0) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.privileged_intents = privileged_intents
        self._sessions: dict[str, GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._server_closed: set[web.WebSocketResponse] = set()

    @property
    def gateway_url(self) -> str:
        """Where a plain Client connects first (`DiscordWebSocket.DEFAULT_GATEWAY`)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """READY's resume URL: a separate path so tests can tell resumes apart."""
        return f"ws://127.0.0.1:{self.port}/gateway/resume"

    @property
    def bot_gateway_url(self) -> str:
        """The URL `GET /gateway/bot` hands to an AutoShardedClient."""
        return f"ws://127.0.0.1:{self.port}/gateway/sharded"

    @property
    def sessions(self) -> list[GatewaySession]:
        """Every gateway session so far, oldest first."""
        return list(self._sessions.values())

    def _add_gateway_routes(self, router: web.UrlDispatcher) -> None:
        for path in ("/gateway", "/gateway/resume", "/gateway/sharded"):
            router.add_get(path, self._gateway)

    async def _close_sockets(self) -> None:
        """Close every socket as a restarting Discord would (1001), without ending sessions."""
        for ws in list(self._sockets):
            self._server_closed.add(ws)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"fake shutting down"), 2)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """One gateway connection: HELLO, then IDENTIFY or RESUME, heartbeats, member requests."""
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.gateway_paths.append(request.path)
        self.stats.gateway_connections += 1
        session: GatewaySession | None = None
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_received.append(frame)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    session = await self._identify(ws, data)
                elif op == 6:
                    session = await self._resume(ws, data)
                elif op == 8 and session is not None:
                    await self._request_members(session, data)
                self._notify()
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                # A client that closes with 1000/1001 ends its session (Discord drops it);
                # discord.py closes with 4000 when it means to RESUME.
                if ws not in self._server_closed and ws.close_code in (1000, 1001):
                    session.resumable = False
            self._server_closed.discard(ws)
            self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        if self.token is not None and data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        asked = int(data.get("intents") or 0)
        if asked & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard_data = data.get("shard")
        shard: tuple[int, int] | None = None
        if shard_data is not None:
            shard = (int(shard_data[0]), int(shard_data[1]))
            if not 0 <= shard[0] < shard[1]:
                await ws.close(code=4010, message=b"Invalid shard.")
                return None
        self.stats.identifies += 1
        session = GatewaySession(secrets.token_hex(16), shard, int(data.get("intents") or 0), ws=ws)
        self._sessions[session.session_id] = session
        guilds = [g for g in self.guilds if session.covers(g.id)]
        ready: JSONDict = {
            "v": 10,
            "user": {
                **self.bot_user.to_payload(),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        await self._send_dispatch(session, "READY", ready)
        for guild in guilds:
            await self._send_dispatch(session, "GUILD_CREATE", guild.to_payload(self.bot_user))
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        session = self._sessions.get(str(data.get("session_id")))
        if (
            session is None
            or not session.resumable
            or (self.token is not None and data.get("token") != self.token)
        ):
            self.stats.resume_rejected += 1
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return None
        if session.ws is not None and session.ws is not ws and not session.ws.closed:
            await session.ws.close(code=4000)
        session.ws = ws
        self.stats.resumes += 1
        seen = int(data.get("seq") or 0)
        for frame in list(session.history):
            if frame["s"] > seen:
                await ws.send_str(json.dumps(frame))
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})
        return session

    async def _request_members(self, session: GatewaySession, data: JSONDict) -> None:
        guild_id = int(
            data["guild_id"] if not isinstance(data["guild_id"], list) else data["guild_id"][0]
        )
        guild = self.guild(guild_id)
        members = [guild.member_payload(self.bot_user)] + [
            guild.member_payload(m) for m in guild.members
        ]
        chunk: JSONDict = {
            "guild_id": str(guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _send_dispatch(self, session: GatewaySession, event: str, data: JSONDict) -> None:
        """Number the event, keep it for RESUME replays, send it if a socket is attached."""
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.history.append(frame)
        if session.live:
            assert session.ws is not None
            with contextlib.suppress(ConnectionResetError):
                await session.ws.send_str(json.dumps(frame))

    def _sessions_for(
        self, guild_id: int | None, *, shard_id: int | None = None
    ) -> list[GatewaySession]:
        """Newest resumable session per shard that covers the guild (or the given shard)."""
        chosen: dict[int, GatewaySession] = {}
        for session in self._sessions.values():
            if not session.resumable:
                continue
            sid = session.shard[0] if session.shard else 0
            if shard_id is not None and sid != shard_id:
                continue
            if guild_id is not None and not session.covers(guild_id):
                continue
            if sid not in chosen or session.live or not chosen[sid].live:
                chosen[sid] = session
        return list(chosen.values())

    async def dispatch(
        self, event: str, data: JSONDict, *, guild_id: int | None = None, intent: int | None = None
    ) -> int:
        """Send a DISPATCH to the session(s) that would receive it; returns how many did.

        If the session is between connections the event is kept and replayed on RESUME,
        as Discord does.
        """
        sessions = (
            self._sessions_for(guild_id)
            if guild_id is not None
            else self._sessions_for(None, shard_id=0)
        )
        sent = 0
        for session in sessions:
            if intent is not None and not session.intents & intent:
                continue
            await self._send_dispatch(session, event, data)
            sent += 1
        return sent

    async def wait_session(self, shard_id: int | None = None, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - tests read better with timeout=
        """Wait until a live gateway session exists (for the shard, if given)."""

        def live() -> bool:
            return any(
                s.live and (shard_id is None or (s.shard[0] if s.shard else 0) == shard_id)
                for s in self._sessions.values()
            )

        await self.wait_for(live, timeout=timeout)

    async def send_reconnect(self, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs on READY's resume URL."""
        await self._send_op(7, None, shard_id)

    async def invalidate_session(
        self, resumable: bool = False, shard_id: int | None = None
    ) -> None:
        """Send op 9; with `resumable=False` the session is gone and the client re-IDENTIFYs."""
        for session in self._live_sessions(shard_id):
            if not resumable:
                session.resumable = False
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": 9, "d": resumable}))

    async def close_gateway(self, code: int = 4000, shard_id: int | None = None) -> None:
        """Close live gateway sockets with `code` (4007/4009 also end the session)."""
        for session in self._live_sessions(shard_id):
            if code in NON_RESUMABLE_CLOSE_CODES:
                session.resumable = False
            assert session.ws is not None
            self._server_closed.add(session.ws)
            await session.ws.close(code=code, message=b"fake close")

    def _live_sessions(self, shard_id: int | None) -> list[GatewaySession]:
        return [
            s
            for s in self._sessions.values()
            if s.live and (shard_id is None or (s.shard[0] if s.shard else 0) == shard_id)
        ]

    async def _send_op(self, op: int, data: Any, shard_id: int | None) -> None:
        for session in self._live_sessions(shard_id):
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": op, "d": data}))
