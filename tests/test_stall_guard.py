"""The stall guard fails a test whose callback blocks the event loop with its own work."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import asyncio, time
import pytest

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

async def test_burns_the_loop():
    burn(0.4)

async def test_burns_in_small_steps():
    for _ in range(8):
        burn(0.05)
        await asyncio.sleep(0)

async def test_waits_without_working():
    await asyncio.sleep(0.4)

async def test_burns_off_the_loop():
    await asyncio.to_thread(burn, 0.4)

@pytest.mark.allows_stall("known, kept visible")
async def test_known_stall():
    burn(0.4)

@pytest.fixture
async def slow_fixture():
    burn(0.4)
    yield

async def test_stalls_in_its_fixture(slow_fixture):
    pass
'''


def test_a_blocking_callback_fails_its_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("-p", "testing.stall_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1, errors=1)
    failed = {r.nodeid.split("::")[-1] for r in
              result.reprec.getreports("pytest_runtest_logreport") if r.failed}
    assert failed == {"test_burns_the_loop", "test_stalls_in_its_fixture"}
    result.stdout.fnmatch_lines(
        ["*blocked during the test*", "*s CPU in task*test_burns_the_loop*"])
