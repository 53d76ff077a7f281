"""`python -m bot settings export|import`: move servers' settings between shard hosts.

For hosts with their own SQLite files when the shard layout changes (hosts sharing
PostgreSQL need nothing). The store does the work (`export_shard`, `import_rows`);
this reads the arguments and the file and reports in one line. Exit codes: 0
done, 1 the file or database unusable, 2 a bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.errors import UserFacingError
from bot.store.postgres import redact
from bot.store.store import SettingsStore
from bot.store.transfer import export_shard, import_rows, prepare_import

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _shard_args(args: argparse.Namespace) -> tuple[int, int] | str:
    """The (shard, count) pair, or why it is unusable: both are required, on purpose,
    so an import can never silently take another shard's servers."""
    shard, count = getattr(args, "shard", None), getattr(args, "shard_count", None)
    if shard is None or count is None:
        return "give both --shard N and --shard-count M (N counts from 0)"
    if count < 1:
        return f"--shard-count must be at least 1, not {count}"
    if not 0 <= shard < count:
        return f"--shard must be between 0 and {count - 1} for {count} shards, not {shard}"
    return shard, count


def _owned_by(shard: int, count: int, row: Any) -> bool:
    """Discord routes a guild to shard ``(guild_id >> 22) % count``; DM rows have no guild."""
    if not isinstance(row, Mapping):
        return True  # let the store's validation name the bad row
    gid = row.get("guild_id")
    if gid is None:
        return False  # a DM scope: it belongs to no shard's servers
    if not isinstance(gid, int) or isinstance(gid, bool):
        return True  # let the store's validation name the bad row
    return (gid >> 22) % count == shard


def _read_dump(path: Path | None) -> dict[str, Any]:
    where = str(path) if path is not None else "standard input"
    try:
        text = path.read_text(encoding="utf-8") if path is not None else sys.stdin.read()
    except FileNotFoundError:
        raise UserFacingError(f"{where} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserFacingError(f"Couldn't read {where}: {exc}.") from None
    if not text.strip():
        raise UserFacingError(f"{where} is empty; expected a settings dump (JSON).")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserFacingError(f"{where} is not JSON: {exc}.") from None
    except RecursionError:
        raise UserFacingError(f"{where} is nested too deeply to be a settings dump.") from None
    if not isinstance(data, dict):
        raise UserFacingError(f"{where} is not a settings dump (expected a JSON object).")
    return data


def _write_dump(path: Path | None, dump: Mapping[str, Any]) -> None:
    text = json.dumps(dump, ensure_ascii=False, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        # Write beside the target and rename, so a failed export never leaves half a
        # file; created 0600, as the database it comes from: it holds every persona.
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        tmp.replace(path)
    except OSError as exc:
        raise UserFacingError(f"Couldn't write {path}: {exc.strerror or exc}.") from None


async def _import_into(db: Path | str, prepared: Any, *, created: bool) -> int:
    """Write a validated dump; a database this import `created` is removed if it fails."""
    try:
        async with await SettingsStore.open(db) as store:
            return await import_rows(store, prepared)
    except BaseException:
        if created and isinstance(db, Path):
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise


async def run_settings_command(settings: Settings, args: argparse.Namespace) -> int:
    """Export this host's rows of one shard, or import a dump's rows of one shard."""
    shard_or_error = _shard_args(args)
    if isinstance(shard_or_error, str):
        return _fail(shard_or_error, EXIT_USAGE)
    shard, count = shard_or_error
    path: Path | None = getattr(args, "file", None)
    db = settings.database_target
    # Named in messages without the URL's password.
    where = db if isinstance(db, Path) else redact(db)
    try:
        if args.action == "export":
            if isinstance(db, Path) and not db.exists():
                raise UserFacingError(f"There is no settings database at {db} to export from.")
            async with await SettingsStore.open(db) as store:
                dump = await export_shard(store, shard, count)
            _write_dump(path, dump)
            guilds = {row["guild_id"] for row in dump["settings"]}
            print(
                f"exported {len(dump['settings'])} settings and {len(dump['history'])} "
                f"history rows of {len(guilds)} servers (shard {shard} of {count}) from {where}"
                + (f" to {path}" if path is not None else ""),
                file=sys.stderr,
            )
            return EXIT_OK
        if args.action == "import":
            data = _read_dump(path)
            rows, history = data.get("settings", []), data.get("history", [])
            if not isinstance(rows, list) or not isinstance(history, list):
                raise UserFacingError("The dump's settings and history must be lists.")
            mine = [r for r in rows if _owned_by(shard, count, r)]
            filtered = {
                **data,
                "settings": mine,
                "history": [h for h in history if _owned_by(shard, count, h)],
            }
            # Validated before the database is opened: a bad dump creates nothing.
            prepared = prepare_import(filtered)
            written = await _import_into(
                db, prepared, created=isinstance(db, Path) and not db.exists()
            )
            skipped = len(rows) - len(mine)
            print(
                f"imported {written} settings rows (shard {shard} of {count}) into {where}"
                + (f"; skipped {skipped} of other shards" if skipped else ""),
                file=sys.stderr,
            )
            return EXIT_OK
        return _fail(f"unknown action {args.action!r}: use export or import", EXIT_USAGE)
    except UserFacingError as exc:
        return _fail(exc.message, EXIT_FAILED)
