"""The systemd files: they parse, they are hardened, and they agree with the bot.

`systemd-analyze verify` exits 0 for most mistakes (an unknown key, a bad value, a
line without `=`): systemd logs "ignoring" and carries on, which is exactly how a
typo in a hardening option silently switches it off. So these tests treat any
diagnostic that names the unit file as a failure, and prove that on deliberately
broken copies.

The tools come with the `systemd` package; `scripts/install-test-tools.sh` (run by
./test.sh) installs it on Debian when it is missing. Only where it is genuinely
unavailable are these tests skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "llamacord.service"
SYSUSERS = ROOT / "systemd" / "llamacord.sysusers.conf"
TMPFILES = ROOT / "systemd" / "llamacord.tmpfiles.conf"
EXEC_START = "/opt/llamacord/.venv/bin/python"
MAX_EXPOSURE = 2.5

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not installed (scripts/install-test-tools.sh installs it on Debian)",
)


def _unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointed at a binary that exists here.

    verify rejects a missing executable, and /opt/llamacord exists only on a deployed
    host; everything else is checked as written.
    """
    source = UNIT.read_text(encoding="utf-8") if text is None else text
    assert f"ExecStart={EXEC_START} " in source
    path = tmp_path / "llamacord.service"
    path.write_text(source.replace(f"ExecStart={EXEC_START} ", f"ExecStart={sys.executable} "),
                    encoding="utf-8")
    return path


def _verify(unit: Path) -> tuple[int, list[str]]:
    """Exit status of `verify` and every diagnostic line about this unit."""
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = (proc.stdout + proc.stderr).splitlines()
    # Other units on the machine may have their own complaints; only ours count.
    mine = [line for line in output if unit.name in line or str(unit) in line]
    return proc.returncode, mine


def _directives(text: str) -> dict[str, list[str]]:
    """`Key` -> values in order (systemd allows repeats), ignoring comments and sections."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.slow
@needs_analyze
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    rc, problems = _verify(_unit_copy(tmp_path))
    assert rc == 0 and problems == [], "\n".join(problems)


@pytest.mark.slow
@needs_analyze
@pytest.mark.parametrize(
    ("description", "old", "new"),
    [
        ("unknown key", "Restart=on-failure", "Restrat=on-failure"),
        ("invalid value", "Type=notify", "Type=notfy"),
        ("invalid time span", "WatchdogSec=60", "WatchdogSec=sixty"),
        ("unknown section", "[Service]", "[Servce]"),
        ("line without =", "NoNewPrivileges=yes", "NoNewPrivileges yes"),
    ],
)
def test_a_broken_unit_fails_verification(
    tmp_path: Path, description: str, old: str, new: str
) -> None:
    """The check above would catch each of these typos (most exit 0 on their own)."""
    text = UNIT.read_text(encoding="utf-8")
    assert old in text
    rc, problems = _verify(_unit_copy(tmp_path, text.replace(old, new, 1)))
    assert rc != 0 or problems, f"{description} went unnoticed"


@pytest.mark.slow
@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _unit_copy(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = proc.stdout + proc.stderr
    if "--offline" in output and ("unrecognized" in output or "unknown option" in output):
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    exposure = float(match[1])
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE, output


def test_unit_agrees_with_the_bot() -> None:
    """Settings the unit and the bot must agree on, checked without systemd."""
    d = _directives(UNIT.read_text(encoding="utf-8"))
    assert d["Type"] == ["notify"]  # the bot sends READY=1 (bot.ops.sdnotify)
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [f"{EXEC_START} -m bot run"]
    assert d["User"] == ["llamacord"]
    assert d["StateDirectory"] == ["llamacord"]
    assert d["EnvironmentFile"] == ["/etc/llamacord/llamacord.env"]
    assert d["KillSignal"] == ["SIGTERM"]
    # The shutdown grace of docs/deploy.md (30 s) and the bot's default must both end
    # well before systemd gives up and sends SIGKILL.
    stop = _seconds(d["TimeoutStopSec"][0])
    assert stop >= 30 + 10
    default_grace = Settings.model_fields["shutdown_grace_s"].default
    assert isinstance(default_grace, float) and default_grace + 10 <= stop
    assert _seconds(d["TimeoutStartSec"][0]) >= 300  # model loading
    assert _seconds(d["WatchdogSec"][0]) == 60
    # /dev/nvidia* must stay visible; the device list is what limits /dev instead.
    assert "PrivateDevices" not in d or d["PrivateDevices"] == ["no"]
    assert d["DevicePolicy"] == ["closed"]
    for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"):
        assert f"{node} rw" in d["DeviceAllow"]
    assert d["CapabilityBoundingSet"] == [""]
    assert "ReadWritePaths" not in d  # the state and cache directories are the only ones


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_system_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                   check=True, capture_output=True, timeout=60)
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                 if line.startswith("llamacord:"))
    _name, _pw, uid, _gid, _gecos, home, shell = entry.split(":")
    assert int(uid) < 1000  # a system user
    assert (home, shell) == ("/var/lib/llamacord", "/usr/sbin/nologin")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles missing")
def test_tmpfiles_creates_private_config_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
                   check=True, capture_output=True, timeout=60)
    assert (root / "etc/llamacord").stat().st_mode & 0o777 == 0o700
    assert (root / "opt/llamacord/models").is_dir()

    broken = tmp_path / "broken.conf"
    broken.write_text(TMPFILES.read_text().replace("0700", "07x0"))
    proc = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(broken)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0, proc.stderr
