"""The HTTP layer: aiohttp plumbing, Discord's error bodies, rate buckets and planned faults.

Every REST request passes through `_middleware`, in Discord's order: it is
recorded, held if a test asked for a delay, answered with a planned fault if one
matches, counted against its rate bucket, and only then handed to its route. The
429s carry exactly the headers discord.py reads, so its own limiter and retries are
what the tests exercise.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from testing.fake_discord.records import FILE_HEAD_BYTES, RecordedRequest, route_matcher
from testing.fake_discord.validation import Validation
from testing.fake_discord.world import API_PREFIX, JSONDict


@dataclass
class Fault:
    """A planned failure: answer the next `times` matching requests with `status`."""

    match: Callable[[RecordedRequest], bool]
    status: int
    times: int
    retry_after: float
    global_: bool
    message: str | None
    code: int | None
    hits: int = 0


@dataclass
class _Delay:
    match: Callable[[RecordedRequest], bool]
    seconds: float
    times: int | None


@dataclass
class _Bucket:
    limit: int
    window: float
    used: int = 0
    reset_at: float = 0.0


class HTTPError(Exception):
    """Raised by a handler to answer with Discord's error JSON."""

    def __init__(self, status: int, message: str, code: int, errors: JSONDict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response whose Content-Type is exactly `application/json`.

    discord.py compares the header with `==`; aiohttp's `json_response` appends a
    charset, which would make discord.py treat every body as text.
    """
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def error_body(status: int, route: str, message: str | None, code: int | None) -> JSONDict:
    defaults: dict[int, tuple[str, int]] = {
        400: ("400: Bad Request", 0),
        401: ("401: Unauthorized", 0),
        403: ("Missing Permissions", 50013),
        404: ("Unknown Webhook", 10015)
        if "/webhooks/" in route or "/interactions/" in route
        else ("Unknown Message", 10008),
        500: ("500: Internal Server Error", 0),
        502: ("502: Bad Gateway", 0),
        503: ("503: Service Unavailable", 0),
    }
    default_message, default_code = defaults.get(status, (f"{status}: Error", 0))
    return {
        "message": message or default_message,
        "code": default_code if code is None else code,
    }


def length_errors(payload: Mapping[str, Any]) -> JSONDict:
    """Discord's message limits, so over-long LLM output fails here as it would in production."""
    errors: JSONDict = {}

    def too_long(limit: int) -> JSONDict:
        return {
            "_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}
            ]
        }

    content = payload.get("content")
    if isinstance(content, str) and len(content) > 2000:
        errors["content"] = too_long(2000)
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors["embeds"] = too_long(10)
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in (("title", 256), ("description", 4096)):
            value = embed.get(key) or ""
            total += len(value)
            if len(value) > limit:
                errors.setdefault("embeds", {}).setdefault(str(index), {})[key] = too_long(limit)
    if total > 6000 and "embeds" not in errors:
        errors["embeds"] = {
            "_errors": [
                {
                    "code": "MAX_EMBED_SIZE_EXCEEDED",
                    "message": "Embed size exceeds maximum size of 6000",
                }
            ]
        }
    return errors


RECORD_KEY = web.RequestKey("fake_discord_record", RecordedRequest)


class Http(Validation):
    """Faults, delays and rate buckets over the recorded requests."""

    def _setup_http(
        self, *, enforce_buckets: bool, bucket_limit: int, bucket_window: float
    ) -> None:
        self.enforce_buckets = enforce_buckets
        self.bucket_limit = bucket_limit
        self.bucket_window = bucket_window
        self._faults: list[Fault] = []
        self._delays: list[_Delay] = []
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._catch_all: web.AbstractResource | None = None

    def fail_next(
        self,
        route: str | Callable[[RecordedRequest], bool],
        status: int = 500,
        *,
        times: int = 1,
        retry_after: float = 0.1,
        global_: bool = False,
        message: str | None = None,
        code: int | None = None,
    ) -> Fault:
        """Answer the next `times` matching requests with `status` and Discord's error body.

        A 429 carries `retry_after` in the body, `Retry-After`, `X-RateLimit-*`,
        `X-RateLimit-Scope` (`global` or `user`) and `Via: 1.1 google` — without `Via`
        discord.py treats a 429 as a Cloudflare ban and does not retry. Note discord.py
        retries 500/502/504 (after 1 s, 3 s, ...) but raises on 503 from `HTTPClient`.
        """
        fault = Fault(route_matcher(route), status, times, retry_after, global_, message, code)
        self._faults.append(fault)
        return fault

    def delay(
        self,
        route: str | Callable[[RecordedRequest], bool],
        seconds: float,
        *,
        times: int | None = None,
    ) -> None:
        """Hold matching requests for `seconds` before handling them (None: every one)."""
        self._delays.append(_Delay(route_matcher(route), seconds, times))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def expire_token(self, token: str) -> None:
        """Make an interaction token behave as after Discord's 15 minutes (401, 50027)."""
        self._by_token[token].expired = True

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Record, then apply delays, faults and buckets, then the handler."""
        if request.path.startswith("/gateway"):
            return await handler(request)
        record = await self._record(request)
        request[RECORD_KEY] = record
        response = await self._respond(request, record)
        record.status = response.status
        if isinstance(response, web.Response) and response.content_type == "application/json":
            body = response.body
            raw = body if isinstance(body, bytes) else None
            await self._check_answer(record, response.status, raw)
        else:
            await self._check_answer(record, response.status, None)
        record.finished = time.monotonic()
        self.stats.by_status[response.status] += 1
        self._notify()
        return response

    async def _respond(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        for d in list(self._delays):
            if d.match(record):
                if d.times is not None:
                    d.times -= 1
                    if d.times <= 0:
                        self._delays.remove(d)
                await asyncio.sleep(d.seconds)
        for fault in self._faults:
            if fault.times > 0 and fault.match(record):
                fault.times -= 1
                fault.hits += 1
                self.stats.faults += 1
                return self._fault_response(fault, record)
        bucket_headers: dict[str, str] = {}
        key = self._bucket_key(record)
        if key is not None:
            limited, bucket_headers = self._take_bucket(key)
            if limited is not None:
                return limited
        refusal = await self._refusal(record)
        if refusal is not None:
            return json_response(refusal.body(), refusal.status, bucket_headers)
        handler = request.match_info.handler
        try:
            response = await handler(request)
        except HTTPError as exc:
            body = {"message": exc.message, "code": exc.code}
            if exc.errors:
                body["errors"] = exc.errors
            response = json_response(body, exc.status)
        response.headers.update(bucket_headers)
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else ""
        if resource is self._catch_all:
            template = ""
        body: Any = None
        files: list[tuple[str, int]] = []
        heads: list[bytes] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append((part.filename or "", len(data)))
                    heads.append(bytes(data[:FILE_HEAD_BYTES]))
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        record = RecordedRequest(
            method=request.method,
            path=request.path.removeprefix(API_PREFIX),
            route=template.removeprefix(API_PREFIX),
            params=dict(request.match_info),
            query=dict(request.query),
            json=body,
            headers=dict(request.headers),
            time=time.monotonic(),
            files=files,
            file_heads=heads,
        )
        self.requests.append(record)
        self.stats.requests += 1
        return record

    def _fault_response(self, fault: Fault, record: RecordedRequest) -> web.Response:
        if fault.status != 429:
            return json_response(
                error_body(fault.status, record.route, fault.message, fault.code), fault.status
            )
        body: JSONDict = {
            "message": fault.message or "You are being rate limited.",
            "retry_after": fault.retry_after,
            "global": fault.global_,
        }
        if fault.code is not None:
            body["code"] = fault.code
        headers = {
            "Retry-After": str(max(1, math.ceil(fault.retry_after))),
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
            "Via": "1.1 google",
        }
        if fault.global_:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(
                {
                    "X-RateLimit-Limit": "1",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
                }
            )
        return json_response(body, 429, headers)

    def _bucket_key(self, record: RecordedRequest) -> tuple[str, str] | None:
        """Which of the fake's buckets a request falls in, if `enforce_buckets`."""
        if not self.enforce_buckets:
            return None
        if record.method == "PATCH" and record.route.startswith("/webhooks/"):
            return ("webhook-edit", record.params.get("webhook_token", ""))
        if record.route.startswith("/channels/{channel_id}/messages") and record.method in (
            "POST",
            "PATCH",
        ):
            return ("channel-message", record.params.get("channel_id", ""))
        return None

    def _take_bucket(self, key: tuple[str, str]) -> tuple[web.Response | None, dict[str, str]]:
        """Fixed-window counting, as Discord documents it, with Discord's headers."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        # 10 ms of grace: discord.py sleeps exactly Reset-After and asyncio may wake early.
        if bucket is None or now >= bucket.reset_at - 0.01:
            bucket = self._buckets[key] = _Bucket(
                self.bucket_limit, self.bucket_window, 0, now + self.bucket_window
            )
        reset_after = max(0.0, bucket.reset_at - now)
        bucket_hash = {"webhook-edit": "f4k3w3bh00k3d1t", "channel-message": "f4k3ch4nn3lm5g"}[
            key[0]
        ]

        def headers(remaining: int) -> dict[str, str]:
            return {
                "X-RateLimit-Limit": str(bucket.limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{math.ceil(reset_after * 1000) / 1000:.3f}",
                "X-RateLimit-Bucket": bucket_hash,
            }

        if bucket.used >= bucket.limit:
            self.stats.rate_limited += 1
            extra = headers(0)
            extra.update(
                {
                    "Retry-After": str(max(1, math.ceil(reset_after))),
                    "X-RateLimit-Scope": "user",
                    "Via": "1.1 google",
                }
            )
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            return json_response(body, 429, extra), {}
        bucket.used += 1
        return None, headers(bucket.limit - bucket.used)

    def _check_auth(self, request: web.Request) -> None:
        if self.token is not None and request.headers.get("Authorization") != f"Bot {self.token}":
            raise HTTPError(401, "401: Unauthorized", 0)

    def _current(self, request: web.Request) -> RecordedRequest:
        """The record `_middleware` made of this request (its body is already read)."""
        return request[RECORD_KEY]

    async def _unknown(self, request: web.Request) -> web.Response:
        raise HTTPError(404, "404: Not Found", 0)
