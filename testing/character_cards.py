"""Character-card files for tests: card JSON and PNGs written chunk by chunk.

The PNGs are real (a 1×1 image a viewer opens), built with struct + zlib so a
test controls every chunk: which text chunk type carries the card, a wrong CRC,
a chunk cut short, a zip bomb.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + body) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", value)


def text_chunk(keyword: str, text: bytes, kind: bytes = b"tEXt") -> bytes:
    key = keyword.encode("latin-1")
    if kind == b"tEXt":
        return chunk(kind, key + b"\x00" + text)
    if kind == b"zTXt":
        return chunk(kind, key + b"\x00\x00" + zlib.compress(text))
    if kind == b"iTXt":
        return chunk(kind, key + b"\x00\x01\x00" + b"en\x00" + b"\x00" + zlib.compress(text))
    raise ValueError(kind)


def png(*extra: bytes) -> bytes:
    """A 1×1 grey PNG with `extra` chunks before its image data."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\x00\x80"))
    return PNG_SIGNATURE + ihdr + b"".join(extra) + idat + chunk(b"IEND", b"")


def card_json(data: dict[str, Any], spec: str | None = "chara_card_v2") -> bytes:
    if spec is None:
        return json.dumps(data).encode("utf-8")
    version = "3.0" if spec.endswith("v3") else "2.0"
    return json.dumps({"spec": spec, "spec_version": version, "data": data}).encode("utf-8")


def card_png(data: dict[str, Any], *, spec: str = "chara_card_v2", kind: bytes = b"tEXt",
             key: str = "chara") -> bytes:
    encoded = base64.b64encode(card_json(data, spec))
    return png(text_chunk(key, encoded, kind))


def hostile_cards(*, cap: int, bomb_bytes: int = 64 * 1024 * 1024) -> dict[str, bytes]:
    """Files a hostile member can upload as a card, each at most `cap` bytes.

    - ``png_full_of_card_bombs``: a PNG at the upload cap made of `chara` zTXt
      chunks that each inflate to just under the 4 MB inflate cap;
    - ``ztxt_zip_bomb``: one `chara` zTXt chunk of `bomb_bytes` zeros;
    - ``json_2mb_empty_objects``: a card whose 2 MB of JSON is empty objects.
    """
    at_cap = zlib.compress(b"A" * (4 * 1024 * 1024), 9)
    one = chunk(b"zTXt", b"chara\x00\x00" + at_cap)
    room = cap - len(png()) - 1
    many = png(*[one] * (room // len(one)))
    bomb = png(chunk(b"zTXt", b"chara\x00\x00" + zlib.compress(bytes(bomb_bytes), 9)))
    head = b'{"name": "Empty", "objects": ['
    n = (2 * 1024 * 1024 - len(head) - 2) // 3
    empties = head + b",".join([b"{}"] * n) + b"]}"
    return {"png_full_of_card_bombs": many, "ztxt_zip_bomb": bomb,
            "json_2mb_empty_objects": empties}
