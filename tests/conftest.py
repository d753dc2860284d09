"""Shared fixtures (a factory of real simulators on loopback, a client on them) and
the test tiers: every test is marked pure, integration or subprocess.

`pytest -m pure` runs the fast tier alone. A test's tier is its own mark if it
has one, else what its fixtures need, else its file's. A pure test that opens a
socket or starts a process fails, so the tier cannot silently rot.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import settings

from batch_runner.simulator.app import (
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)

# Shared, noisy machines: a property test must fail on a wrong answer, never on a
# slow example (hypothesis's default per-example deadline is 200 ms).
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")

KEY = "test-key-0123456789"

SimFactory = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def sim() -> AsyncIterator[SimFactory]:
    """`await sim(knob=value, ...)` starts a simulator; all are closed after."""
    started: list[RunningSimulator] = []

    async def start(**knobs: Any) -> RunningSimulator:
        knobs.setdefault("key", KEY)
        knobs.setdefault("generation_time", 0.0)
        running = await start_simulator(SimulatorConfig(**knobs))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


TIERS = ("pure", "integration", "subprocess")
#: fixtures that put a test in a tier (and `slow`, for the heavy ones)
_FIXTURE_TIERS = {
    "sim": ("integration",),
    "session": ("integration",),
    "start": ("integration",),
    "http": ("integration",),
    "finished_run": ("integration",),
    "finished": ("integration",),
    "browser": ("subprocess", "slow"),
    "hf": ("slow",),
    # moto's S3 server on loopback (started once per session, as a child process)
    "moto_endpoint": ("integration",),
    "s3_bucket": ("integration",),
}
#: files whose tests all need more than the process they run in
_FILE_TIERS = {
    "test_bench_smoke.py": ("subprocess", "slow"),
    "test_cli.py": ("subprocess", "slow"),
    "test_torture.py": ("subprocess", "slow"),
    "test_slurm.py": ("subprocess", "slow"),
    "test_bucket_run.py": ("subprocess", "slow"),
    "test_ops.py": ("integration",),
    "test_client.py": ("integration",),
    "test_runner.py": ("integration",),
    "test_simulator.py": ("integration",),
    "test_engine_defects.py": ("integration",),
    "test_library.py": ("integration",),
    # the CLI on --mock; the tests without Pillow run as child processes
    "test_image_formats.py": ("integration",),
}


#: single tests whose file says less than they need: in-process tests that still
#: take seconds (big inputs, deep hypothesis runs), and child processes
_TEST_TIERS = {
    "test_deep_nesting": ("slow",),
    "test_a_big_ledger_gives_a_bounded_page": ("slow",),
    "test_csv_and_yaml_round_trip": ("slow",),
    "test_late_first_values_still_load_beyond_the_first_10mb": ("slow",),
    "test_a_second_run_on_the_same_ledger_exits_4": ("subprocess", "slow"),
    "test_short_key_run_stores_prompts_exactly_and_logs_whole_words": ("integration",),
    "test_client_redacts_echoed_key_in_errors_and_results": ("integration",),
    "test_every_run_reading_command_accepts_ledger": ("integration",),
    "test_status_and_failed_take_the_shard_from_the_environment": ("integration",),
    "test_bad_paths_exit_2_with_one_line": ("integration",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test a tier: its own mark, else its fixtures', else its file's."""
    for item in items:
        marks = set(_TEST_TIERS.get(getattr(item, "originalname", item.name), ()))
        fixtures = getattr(item, "fixturenames", ())
        for name in fixtures:
            marks.update(_FIXTURE_TIERS.get(name, ()))
        if not any(item.get_closest_marker(t) for t in TIERS):
            if not marks & set(TIERS):
                marks.update(_FILE_TIERS.get(item.path.name, ("pure",)))
        elif item.get_closest_marker("pure") is None:
            marks.discard("pure")
        if {"integration", "subprocess"} & marks or any(
            item.get_closest_marker(t) for t in ("integration", "subprocess")
        ):
            marks.discard("pure")
        for mark in sorted(marks):
            item.add_marker(mark)


class _NotPure(Exception):
    """Raised where a pure test reaches for a socket or a process."""


@pytest.fixture(autouse=True)
def _guard_pure_tier(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test marked pure gets no network and no child processes."""
    if request.node.get_closest_marker("pure") is None:
        yield
        return
    touched: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def guard(*args: Any, **kwargs: Any) -> Any:
            touched.append(what)
            raise _NotPure(f"a test marked pure used {what}; mark it integration")

        return guard

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("subprocess"))
    yield
    if touched:
        pytest.fail(f"a test marked pure used {', '.join(sorted(set(touched)))}")


# a real S3-compatible server (moto) for the object-storage tests
from tests.s3server import moto_endpoint, s3_bucket  # noqa: E402, F401
