"""A dependency-free `sd_notify` client: tell systemd we are ready, alive or stopping.

The unit runs the bot with `Type=notify` and `WatchdogSec=60`: systemd waits for
`READY=1` (model loading takes minutes) and restarts the bot when `WATCHDOG=1`
pings stop. One datagram of `KEY=value` lines per message, to the AF_UNIX socket
in `$NOTIFY_SOCKET`; without it every call is a no-op. A failed first connect
raises (a misconfigured deployment shows at start-up); later send errors are
logged and swallowed, since a lost status line must never take the bot down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

#: How long one send may block. Datagram sends block only while systemd's receive
#: queue is full; bounding it keeps a stuck PID 1 from freezing our event loop.
SEND_TIMEOUT_S: Final = 1.0


def _socket_address(value: str) -> str | bytes:
    """Turn `$NOTIFY_SOCKET` into an address `socket.connect` accepts.

    systemd writes abstract-namespace sockets as `@name`; the kernel wants a leading
    NUL byte instead.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings, or None when systemd expects none.

    Half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends, so one late ping
    does not get the service killed. `$WATCHDOG_PID`, when set, names the process
    the watchdog is meant for; any other process (a child that inherited the
    environment) must not ping.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("Ignoring WATCHDOG_PID=%r: not a number", pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("Ignoring WATCHDOG_USEC=%r: not a number", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends state changes to systemd's notification socket, or does nothing."""

    def __init__(self, address: str | None, *, watchdog_interval_s: float | None = None) -> None:
        """`address` as `$NOTIFY_SOCKET` spells it; None gives a no-op notifier."""
        self.address = address or None
        self._watchdog_interval = watchdog_interval_s
        self._sock: socket.socket | None = None
        self._connected_once = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None
    ) -> Notifier:
        """Build from `$NOTIFY_SOCKET` / `$WATCHDOG_USEC` / `$WATCHDOG_PID`."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), watchdog_interval_s=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (we run under systemd with Type=notify)."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None without a watchdog."""
        return self._watchdog_interval if self.enabled else None

    def notify(self, **fields: object) -> bool:
        """Send `KEY=value` fields in one datagram; True when it was sent.

        Keys are upper-cased (`notify(ready=1)` sends `READY=1`). Newlines in values
        would start a new field, so they are flattened to spaces.
        """
        if self.address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        return self._send("\n".join(lines).encode())

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd marks the unit active and arms the watchdog."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun, so systemd shows "deactivating" rather than a failure."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """One keep-alive ping."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status llamacord`."""
        return self.notify(STATUS=text)

    def close(self) -> None:
        """Release the socket; a later message reconnects."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        assert self.address is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.settimeout(SEND_TIMEOUT_S)
        try:
            sock.connect(_socket_address(self.address))
        except OSError:
            sock.close()
            raise
        return sock

    def _send(self, payload: bytes) -> bool:
        """Send one datagram, reconnecting once: systemd re-binds its socket on re-exec."""
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = self._connect()
                    self._connected_once = True
                self._sock.send(payload)
                return True
            except OSError as exc:
                self.close()
                if not self._connected_once:
                    raise
                if attempt == 2:
                    log.warning("sd_notify to %s failed: %s", self.address, exc)
        return False


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    """Ping `WATCHDOG=1` every `interval` seconds until cancelled.

    A task on the bot's own event loop, not a thread: if the loop hangs, the pings
    stop and systemd restarts the service. Returns at once when not under systemd.
    """
    if not notifier.enabled:
        return
    if interval <= 0:
        raise ValueError("watchdog interval must be positive")
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
