"""Shared fixtures: a factory of real simulators on loopback, and a client on them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
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
