"""Reading a member's attachments (a character card, text files as context), size-capped.

The cap is checked twice: against the `size` Discord reports before anything
is downloaded, and again while the body streams in, so a file larger than it
claimed (or a CDN that sends more) stops at the cap instead of filling memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import discord

from bot import wording
from bot.chat.files import Skipped, TextFile, Upload, admit, clean_name, decode_upload
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


async def read_text_files(
    attachments: Sequence[discord.Attachment], *, max_bytes: int, max_count: int
) -> tuple[tuple[TextFile, ...], tuple[str, ...]]:
    """The text files among `attachments`, read; and a one-line note for each one not read.

    Never raises for a file: a download that fails, a binary file, invalid UTF-8
    or one over the caps becomes a note under the reply, and the ask goes on.
    """
    if not attachments or max_count <= 0:
        return (), tuple(Skipped(clean_name(a.filename), wording.FILE_TOO_MANY.format(
            count=wording.plural(0, "file"))).note for a in attachments)
    pairs = [(Upload(a.filename, a.size, a.content_type), a) for a in attachments]
    taken, skipped = admit([u for u, _ in pairs], max_bytes=max_bytes, max_count=max_count)
    files: list[TextFile] = []
    notes = [s.note for s in skipped]
    for upload in taken:
        attachment = next(a for u, a in pairs if u is upload)
        try:
            data = await read_attachment(attachment, max_bytes)
        except UserFacingError as exc:
            notes.append(Skipped(clean_name(upload.name), exc.message.rstrip(".")).note)
            continue
        read = decode_upload(upload, data)
        if isinstance(read, Skipped):
            notes.append(read.note)
        else:
            files.append(read)
    return tuple(files), tuple(notes)
