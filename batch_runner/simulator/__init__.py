"""The built-in Z-Image simulator: the far side of the wire, with fault injection.

It shares no code with `batch_runner.wire`, so it checks the client rather than
agreeing with it.
"""

from batch_runner.simulator.app import (
    RunningSimulator,
    SimulatorConfig,
    make_app,
    start_simulator,
)

__all__ = ["RunningSimulator", "SimulatorConfig", "make_app", "start_simulator"]
