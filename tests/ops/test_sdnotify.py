"""sd_notify: the messages systemd would receive, read from a socket the test owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.ops.sdnotify import Notifier, watchdog_interval, watchdog_loop

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may themselves run under systemd; never ping the real manager."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def _listener(address: str | bytes) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(5.0)
        yield sock
    finally:
        sock.close()


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path, named by $NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX socket: {path}")
    with _listener(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"llamacord-test-{uuid.uuid4().hex}"
    with _listener(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def _messages(sock: socket.socket, count: int) -> list[dict[str, str]]:
    out = []
    for _ in range(count):
        data = sock.recv(4096).decode()
        out.append(dict(line.split("=", 1) for line in data.split("\n")))
    return out


def test_ready_status_stopping_and_watchdog_reach_the_socket(path_socket: socket.socket) -> None:
    notifier = Notifier.from_env()
    assert notifier.enabled
    try:
        assert notifier.ready(status="Serving 1 model")
        assert notifier.status("Busy:\n3 replies")
        assert notifier.watchdog()
        assert notifier.stopping()
    finally:
        notifier.close()
    assert _messages(path_socket, 4) == [
        {"READY": "1", "STATUS": "Serving 1 model"},
        {"STATUS": "Busy: 3 replies"},  # a newline would have started a bogus field
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]


def test_abstract_namespace_socket(abstract_socket: socket.socket) -> None:
    notifier = Notifier.from_env()
    try:
        assert notifier.ready()
    finally:
        notifier.close()
    assert _messages(abstract_socket, 1) == [{"READY": "1"}]


def test_noop_without_notify_socket() -> None:
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.ready(status="x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval() is None


async def test_watchdog_loop_returns_at_once_without_systemd() -> None:
    await asyncio.wait_for(watchdog_loop(Notifier(None), 0.01), timeout=1.0)


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": mine}) == 1.0
    # Meant for another process (we are a child that inherited the environment).
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None

    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert Notifier.from_env().watchdog_interval() == 30.0


async def test_watchdog_loop_pings_repeatedly_at_the_interval(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # WatchdogSec=0.1 -> ping every 50 ms
    notifier = Notifier.from_env()
    interval = notifier.watchdog_interval()
    assert interval is not None
    assert interval == pytest.approx(0.05)
    path_socket.setblocking(False)
    started = time.monotonic()
    task = asyncio.create_task(watchdog_loop(notifier, interval))
    try:
        await asyncio.sleep(interval * 6.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()
    elapsed = time.monotonic() - started
    pings = []
    with contextlib.suppress(BlockingIOError):
        while True:
            pings.append(path_socket.recv(64))
    assert set(pings) == {b"WATCHDOG=1"}
    # One ping at start, then one per interval; a loaded CI box may lose a tick or two.
    expected = int(elapsed / interval) + 1
    assert 4 <= len(pings) <= expected + 1, (len(pings), elapsed)


async def test_a_blocked_event_loop_stops_the_pings(
    path_socket: socket.socket,
) -> None:
    """The point of pinging from the loop: a hung loop must look dead to systemd."""
    notifier = Notifier(os.environ["NOTIFY_SOCKET"])
    path_socket.setblocking(False)
    task = asyncio.create_task(watchdog_loop(notifier, 0.02))
    try:
        await asyncio.sleep(0)  # first ping
        # Deliberately block the loop, as a hung handler would: ten intervals pass.
        time.sleep(0.2)  # noqa: ASYNC251
        received = []
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(path_socket.recv(64))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()
    assert received == [b"WATCHDOG=1"]


def test_first_connect_failure_raises(tmp_path: Path) -> None:
    """A misconfigured socket should fail loudly at start-up, not be ignored."""
    notifier = Notifier(str(tmp_path / "missing.sock"))
    with pytest.raises(OSError):
        notifier.ready()


def test_send_errors_after_a_good_connect_only_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "n.sock"
    with _listener(str(path)) as sock:
        notifier = Notifier(str(path))
        assert notifier.ready()
        assert sock.recv(64) == b"READY=1"
    path.unlink()  # systemd went away (or re-executed and has not re-bound yet)
    with caplog.at_level(logging.WARNING, logger="bot.ops.sdnotify"):
        assert notifier.watchdog() is False
    assert "sd_notify" in caplog.text
    with _listener(str(path)) as sock:  # back again: the next message reconnects
        assert notifier.status("back")
        assert sock.recv(64) == b"STATUS=back"
    notifier.close()
