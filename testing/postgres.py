"""A throwaway PostgreSQL server for tests: started once per test process, stopped at its end.

`PostgresServer.start` runs ``initdb`` into a fresh temporary folder and
``postgres`` on 127.0.0.1 at a free port (its unix socket in that folder too,
``fsync=off``: nothing in it must survive the run), trusting local
connections. Each test gets a database of its own (`fresh_url`), so tests never
see each other's rows or advisory locks. Under pytest-xdist every worker is a
process with its own session, and so its own server: nothing is shared.

PostgreSQL refuses to run as root: as root the server runs as ``nobody``
(through ``runuser``), owning only its own temporary folder.

The binaries are looked up on PATH, then in Debian's
``/usr/lib/postgresql/<version>/bin`` (``scripts/install-postgres.sh``
installs the package where it is missing). Where no server can be had, the
tests that need one are skipped with the reason, except on CI (``CI`` set, or
``LLAMACORD_REQUIRE_POSTGRES=1``), where they fail instead: CI must run them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Set either to make a missing server a failure rather than a skip.
REQUIRE_ENV = ("CI", "LLAMACORD_REQUIRE_POSTGRES")
_BINARIES = ("initdb", "pg_ctl", "postgres")


def required() -> bool:
    """True on CI: a server that cannot be had fails the tests instead of skipping them."""
    return any(os.environ.get(name, "").strip() not in ("", "0", "false") for name in REQUIRE_ENV)


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if all((folder / name).is_file() for name in _BINARIES):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresUnavailable(RuntimeError):
    """No server could be started here; the message says why."""


class PostgresServer:
    """One running cluster, owned by this process."""

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = port
        self.run_as = run_as
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False,
            cwd=self.root,
        )

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb and start a server; raises `PostgresUnavailable` saying why not."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
                "/usr/lib/postgresql/*/bin; run scripts/install-postgres.sh as root"
            )
        run_as: str | None = None
        root = Path(tempfile.mkdtemp(prefix="llamacord-pg-"))
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable("running as root and runuser is missing")
            run_as = "nobody"
            shutil.chown(root, user=run_as)
        server = cls(bin_dir, root, _free_port(), run_as)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _init_and_start(self) -> None:
        done = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
        for attempt in range(3):
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            done = self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                str(self.root / "server.log"), "-o", options, "-w", "-t", "120", "start",
            )
            if done.returncode == 0:
                return
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else done.stderr
            if "already in use" not in tail or attempt == 2:
                raise PostgresUnavailable(f"the server did not start: {tail.strip()}")
            self.port = _free_port()

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str) -> None:
        """Run one statement on the maintenance database (asyncpg, in a thread of its own,
        so it works whether or not the caller's event loop is running)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()


def unavailable(reason: str) -> None:
    """Skip (here) or fail (on CI) the test that needed a server."""
    if required():
        pytest.fail(f"PostgreSQL is required on CI but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This test process's server, started on first use and stopped at the session's end."""
    try:
        server = PostgresServer.start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1")
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                unavailable("the server started but does not accept connections")
            time.sleep(0.2)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A URL of a new, empty database on the session's server (one per test)."""
    return postgres_server.create_database()
