"""Reading a member's attachment (a character card for `/system import`), size-capped.

The cap is checked twice: against the `size` Discord reports before anything
is downloaded, and again while the body streams in, so a file larger than it
claimed (or a CDN that sends more) stops at the cap instead of filling memory.
"""

from __future__ import annotations

import aiohttp
import discord

from bot import wording
from bot.errors import UserFacingError

CHUNK = 64 * 1024
TIMEOUT_S = 30.0


def _too_big(size: int, limit: int) -> UserFacingError:
    return UserFacingError(wording.file_too_big(size, limit))


async def read_attachment(attachment: discord.Attachment, limit: int) -> bytes:
    """The attachment's bytes, at most `limit` of them (else a polite refusal)."""
    if attachment.size > limit:
        raise _too_big(attachment.size, limit)
    body = bytearray()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            attachment.url
        ) as response:
            if response.status != 200:
                raise UserFacingError(wording.download_refused(response.status))
            async for chunk in response.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise UserFacingError(wording.file_larger_than(limit))
    except (aiohttp.ClientError, TimeoutError):
        raise UserFacingError(wording.DOWNLOAD_FAILED) from None
    return bytes(body)
